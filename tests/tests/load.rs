//! Load: 1,000 concurrent clients on loopback with d = 10,000 complete one
//! round with the SecAgg+ graph the parameter finder picks.
//!
//! Set `TESSERA_LOAD_SERVER=http://HOST:PORT` to aim the clients at a
//! separately started `tessera serve` (to measure the server process's own
//! peak memory, as the README reports); by default the server runs in this
//! process.

use std::time::Instant;

use tessera_tests::{ServerOptions, TestServer, update};

const CLIENTS: u32 = 1000;
const DIM: u32 = 10_000;

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_complete_a_secagg_plus_round() {
    let external = std::env::var("TESSERA_LOAD_SERVER").ok();
    let local = match &external {
        Some(_) => None,
        None => Some(
            TestServer::start(ServerOptions {
                dim: DIM,
                min_clients: CLIENTS,
                graph: "auto",
                stage_timeout: std::time::Duration::from_secs(120),
                ..ServerOptions::default()
            })
            .await,
        ),
    };
    let url = external
        .clone()
        .unwrap_or_else(|| local.as_ref().expect("local server").url.clone());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let client = tessera_client::Client::builder(url.clone())
            .round_timeout(std::time::Duration::from_secs(600))
            .build()
            .expect("client");
        let u = update(DIM, u64::from(i));
        tasks.spawn(async move { (i, client.participate(&u).await) });
    }
    // Results in the order they come, so the first failing client fails
    // the test at once with its own error instead of leaving the others
    // to wait for a round that cannot start.
    let mut survivors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, outcome) = joined.expect("client task");
        match outcome {
            Ok(o) => survivors.push(o.survivors),
            Err(e) => panic!(
                "client {i} failed after {:?}: {e} ({e:?})",
                started.elapsed()
            ),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    assert!(survivors.iter().all(|&s| s == CLIENTS), "{survivors:?}");
    if let Some(ts) = local {
        let rounds = tessera_server::store::inspect(ts.data_dir())
            .unwrap()
            .rounds;
        assert_eq!(rounds.len(), 1);
        assert_eq!(rounds[0].survivors, CLIENTS);
        ts.server.shutdown().await.unwrap();
    }
    println!(
        "load: {CLIENTS} clients, d = {DIM}: round in {seconds:.2} s (join to result); \
         peak RSS of this process {:.0} MiB{}",
        peak_rss_mib().unwrap_or(f64::NAN),
        if external.is_some() {
            " (clients only)"
        } else {
            " (server and clients)"
        }
    );
}
