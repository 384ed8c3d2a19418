//! Soak: 200 SDK clients against a real `tessera serve` process for 50
//! rounds, with clients killed (their task aborted mid-round) and restarted
//! all along, and the server SIGKILLed and restarted on the same data
//! directory twice. Afterwards every published model must verify against
//! its round record, and the privacy ledger must hold every completed
//! round (and nothing but those and the rounds the crashes interrupted).
//!
//! The check that a model is right without knowing who survived: every
//! client sends the same update `u` every round, so FedAvg over any set of
//! contributors moves the model by exactly `u`, plus the central DP noise
//! (N(0, (z C)^2) on the sum, so z C / survivors on the mean) and
//! fixed-point rounding. A model that missed a round's update, counted one
//! twice, or was torn by a crash is off by a whole `u`.
//!
//! Figures (rounds completed, aborted, interrupted; mean round time) are
//! printed at the end: `cargo test -p tessera --test soak -- --nocapture`.

#![cfg(unix)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use common::{Server, inspect, scratch_dir};
use serde_json::Value;
use tessera_client::{Client, RetryPolicy};

const CLIENTS: usize = 200;
const ROUNDS: usize = 50;
const DIM: usize = 16;
const NOISE_MULTIPLIER: f64 = 0.5;
const CLIP_NORM: f64 = 1.0;
/// The update every client sends: norm 0.4, inside the clip norm.
const U: f32 = 0.1;

/// The server, on `data_dir`, and its URL.
fn start_server(data_dir: &Path) -> (Server, String) {
    let dim = DIM.to_string();
    let z = NOISE_MULTIPLIER.to_string();
    let clip = CLIP_NORM.to_string();
    let server = Server::start(
        data_dir,
        &[
            "--dim",
            &dim,
            "--min-clients",
            "120",
            "--max-clients",
            "200",
            "--join-window-ms",
            "300",
            "--stage-timeout-ms",
            "4000",
            "--dp",
            "central",
            "--noise-multiplier",
            &z,
            "--clip-norm",
            &clip,
            "--epsilon-budget",
            "1e9",
            "--log",
            "warn",
        ],
    );
    let url = format!("http://{}", server.addr);
    (server, url)
}

/// The round records of an inspection with the given outcome.
fn rounds_with<'a>(state: &'a Value, outcome: &str) -> Vec<&'a Value> {
    state["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == outcome)
        .collect()
}

fn client(url: &str) -> Client {
    Client::builder(url.to_owned())
        .round_timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(2))
        .retry(RetryPolicy::NONE)
        .build()
        .expect("client builds")
}

/// One client: joins round after round, whatever happens to the server.
async fn client_loop(url: Arc<RwLock<String>>, stop: Arc<AtomicBool>, joined: Arc<AtomicU64>) {
    let update = vec![U; DIM];
    while !stop.load(Ordering::Relaxed) {
        let current = url.read().unwrap().clone();
        match client(&current).participate(&update).await {
            Ok(_) => {
                joined.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_fifty_rounds_with_kills_and_two_server_crashes() {
    let started = Instant::now();
    let dir = scratch_dir("soak");
    let (mut server, server_url) = start_server(&dir);
    let url = Arc::new(RwLock::new(server_url.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let joined = Arc::new(AtomicU64::new(0));
    let spawn = |url: &Arc<RwLock<String>>| {
        tokio::spawn(client_loop(
            Arc::clone(url),
            Arc::clone(&stop),
            Arc::clone(&joined),
        ))
    };
    let tasks = Arc::new(Mutex::new(
        (0..CLIENTS).map(|_| spawn(&url)).collect::<Vec<_>>(),
    ));

    // Chaos: every 150 ms one client, chosen by a fixed sequence, is
    // killed wherever it is (lobby or mid-round) and a fresh one started.
    let kills = Arc::new(AtomicU64::new(0));
    let chaos = {
        let (tasks, url, kills, stop) = (
            Arc::clone(&tasks),
            Arc::clone(&url),
            Arc::clone(&kills),
            Arc::clone(&stop),
        );
        let joined = Arc::clone(&joined);
        tokio::spawn(async move {
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(150)).await;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x % CLIENTS as u64) as usize;
                let fresh = tokio::spawn(client_loop(
                    Arc::clone(&url),
                    Arc::clone(&stop),
                    Arc::clone(&joined),
                ));
                let old = std::mem::replace(&mut tasks.lock().unwrap()[i], fresh);
                old.abort();
                kills.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // The server is SIGKILLed after round 15 and after round 32 opened, and
    // restarted on the same data directory (on a new port).
    let mut crashes = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            Instant::now() < deadline,
            "50 rounds did not finish in 10 minutes"
        );
        let rounds = inspect(&dir)["rounds"].as_array().unwrap().len();
        if rounds >= ROUNDS {
            break;
        }
        if (crashes == 0 && rounds >= 15) || (crashes == 1 && rounds >= 32) {
            server.child.kill().expect("SIGKILL the server");
            server.child.wait().unwrap();
            crashes += 1;
            let (restarted, restarted_url) = start_server(&dir);
            server = restarted;
            *url.write().unwrap() = restarted_url;
        }
    }
    stop.store(true, Ordering::Relaxed);
    chaos.abort();
    for task in tasks.lock().unwrap().drain(..) {
        task.abort();
    }

    // Every published model, fetched from the running server.
    let state = inspect(&dir);
    let reader = client(&url.read().unwrap().clone());
    let models = state["models"].as_array().unwrap();
    let mut previous = reader.model(1).await.expect("initial model").flatten();
    assert!(previous.iter().all(|v| *v == 0.0));
    for (i, entry) in models.iter().enumerate() {
        let version = entry["version"].as_u64().unwrap();
        assert_eq!(version, i as u64 + 1, "versions are consecutive");
        if version == 1 {
            continue;
        }
        // Its round record: completed, publishing this version, same count.
        let round = entry["round"].as_u64().unwrap();
        let record = state["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["round"].as_u64() == Some(round))
            .unwrap_or_else(|| panic!("model v{version} has no round record {round}"));
        assert_eq!(record["outcome"], "completed", "round {round}");
        assert_eq!(record["model_version"], version, "round {round}");
        assert_eq!(record["survivors"], entry["survivors"], "round {round}");
        // Its values: the previous model moved by u, within the noise.
        let survivors = entry["survivors"].as_f64().unwrap();
        let tolerance = (6.0 * NOISE_MULTIPLIER * CLIP_NORM / survivors) as f32 + 1e-4;
        let model = reader.model(version).await.expect("model").flatten();
        for (j, (now, before)) in model.iter().zip(&previous).enumerate() {
            let step = now - before;
            assert!(
                (step - U).abs() <= tolerance,
                "v{version}[{j}] moved by {step}, expected {U} +- {tolerance}"
            );
        }
        previous = model;
    }

    // The ledger holds every completed round, and each model's epsilon is
    // the ledger's running total at its round. It may also hold a round the
    // server was killed in after charging the ledger and before publishing
    // (the ledger is written first so privacy is never under-counted): such
    // a round must be one of the interrupted ones.
    let completed: Vec<u64> = rounds_with(&state, "completed")
        .into_iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    let entries = state["ledger"]["entries"].as_array().unwrap();
    let ledger_rounds: Vec<u64> = entries
        .iter()
        .map(|e| e["round"].as_u64().unwrap())
        .collect();
    let interrupted: Vec<u64> = rounds_with(&state, "interrupted")
        .into_iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    for round in &completed {
        assert!(
            ledger_rounds.contains(round),
            "round {round} is not in the ledger"
        );
    }
    for round in &ledger_rounds {
        assert!(
            completed.contains(round) || interrupted.contains(round),
            "the ledger charges round {round}, which neither completed nor was interrupted"
        );
    }
    for entry in models.iter().skip(1) {
        let round = entry["round"].as_u64().unwrap();
        let spent = entries
            .iter()
            .find(|e| e["round"].as_u64() == Some(round))
            .unwrap()["epsilon_spent"]
            .as_f64()
            .unwrap();
        assert_eq!(entry["epsilon"].as_f64().unwrap(), spent, "round {round}");
    }
    assert_eq!(models.len(), completed.len() + 1);

    let outcomes = |o: &str| rounds_with(&state, o).len();
    let seconds: Vec<f64> = rounds_with(&state, "completed")
        .into_iter()
        .map(|r| r["seconds"].as_f64().unwrap())
        .collect();
    let mean = seconds.iter().sum::<f64>() / seconds.len().max(1) as f64;
    eprintln!(
        "soak: {} rounds: {} completed, {} aborted, {} interrupted by the {crashes} server crashes, \
         {} still running at the end; mean completed round {mean:.2} s; {} client kills, \
         {} client rounds completed; {:.0} s in all",
        state["rounds"].as_array().unwrap().len(),
        outcomes("completed"),
        outcomes("aborted"),
        outcomes("interrupted"),
        outcomes("started"),
        kills.load(Ordering::Relaxed),
        joined.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(crashes, 2);
    assert!(outcomes("interrupted") <= 2, "only the crashed rounds");
    assert!(
        outcomes("completed") >= ROUNDS * 3 / 4,
        "most rounds complete despite the kills"
    );
    server.child.kill().unwrap();
    let _ = server.child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
