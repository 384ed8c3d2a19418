//! Who takes part in a round, over the real service: the server samples
//! each round's cohort from the clients waiting in its lobby; those not
//! chosen keep waiting, kept alive by Lobby frames, and take part in a
//! later round; the SDK does not time out while the keep-alives come; the
//! connection cap counts the clients waiting; and the ledger claims no
//! amplification from the sampling.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tessera_client::{ClientError, Progress, RetryPolicy};
use tessera_dp::ledger::Mechanism;
use tessera_server::ServerConfig;
use tessera_server::config::DpMode;
use tessera_server::store::{CohortRecord, inspect};
use tessera_tests::{ServerOptions, TestServer, update};

const DIM: u32 = 20;

/// Six clients wait, cohorts of three are sampled, a Lobby frame every
/// 100 ms; the lobby stays open up to 3 s for all six, and the server adds
/// central DP noise (to check what the ledger charges).
fn cohorts_of_three(config: &mut ServerConfig) {
    config.round.max_clients = 6;
    config.round.cohort_size = Some(3);
    config.round.join_window = Duration::from_secs(3);
    config.round.lobby_keepalive = Duration::from_millis(100);
    config.dp.mode = DpMode::Central;
    config.dp.noise_multiplier = 1.0;
    config.dp.epsilon_budget = 1000.0;
}

/// Six clients join at once; each round takes three of them. None is
/// dropped: the three not chosen for the first round stay in the lobby,
/// receive keep-alives all the while, and make up the second round. The
/// round records say how each cohort was chosen, and the ledger charges
/// both rounds without any sampling rate below 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_not_sampled_keep_waiting_with_keep_alives_and_take_part_later() {
    let ts = TestServer::start(ServerOptions {
        dim: DIM,
        min_clients: 3,
        rounds: Some(2),
        tweak: cohorts_of_three,
        ..ServerOptions::default()
    })
    .await;
    let lobby_frames: Vec<Arc<AtomicU32>> = (0..6).map(|_| Arc::default()).collect();
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let frames = Arc::clone(&lobby_frames[i]);
            let client = ts
                .client_builder(None)
                .on_progress(move |p| {
                    if matches!(p, Progress::Lobby { .. }) {
                        frames.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .build()
                .unwrap();
            let u = update(DIM, i as u64);
            tokio::spawn(async move { client.participate(&u).await })
        })
        .collect();
    let mut rounds = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let outcome = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("client {i} was dropped: {e}"));
        assert_eq!(outcome.survivors, 3, "client {i}");
        rounds.push(outcome.round_id);
    }
    let first = *rounds.iter().min().unwrap();
    let in_first = rounds.iter().filter(|&&r| r == first).count();
    assert_eq!(in_first, 3, "rounds by client: {rounds:?}");
    assert!(
        rounds.iter().all(|&r| r == first || r == first + 1),
        "{rounds:?}"
    );
    // The second round's clients waited through the first round and the
    // second's 3 s window: about 30 keep-alives at 100 ms. The first
    // Lobby frame answers the Join; more than three means keep-alives.
    for (i, round) in rounds.iter().enumerate() {
        let frames = lobby_frames[i].load(Ordering::Relaxed);
        assert!(frames >= 1, "client {i}: {frames} Lobby frames");
        if *round != first {
            assert!(
                frames > 3,
                "client {i}, left waiting: {frames} Lobby frames"
            );
        }
    }

    let on_disk = inspect(ts.data_dir()).unwrap();
    let cohorts: Vec<_> = on_disk.rounds.iter().map(|r| r.cohort.clone()).collect();
    let cohort = |waiting| {
        Some(CohortRecord {
            rule: "size:3".into(),
            waiting,
            selected: 3,
        })
    };
    assert_eq!(cohorts, [cohort(6), cohort(3)]);
    // The server chose the cohort: no entry is charged as a subsample.
    let ledger = on_disk.ledger.expect("DP keeps a ledger");
    assert_eq!(ledger.entries().len(), 2);
    for entry in ledger.entries() {
        let unamplified = match entry.mechanism {
            Mechanism::Gaussian { sampling_rate, .. } => sampling_rate == 1.0,
            Mechanism::DiscreteGaussian { .. }
            | Mechanism::Skellam { .. }
            | Mechanism::TreeAggregation { .. } => true,
        };
        assert!(unamplified, "{entry:?}");
    }
}

fn keep_alive_every_100ms(config: &mut ServerConfig) {
    config.round.lobby_keepalive = Duration::from_millis(100);
}

fn keep_alive_every_minute(config: &mut ServerConfig) {
    config.round.lobby_keepalive = Duration::from_secs(60);
}

/// One client waits 5 s for the others with a round timeout of 2 s: it
/// finishes its round, since each keep-alive restarts its clock. The same
/// client of a server whose keep-alives come only every minute times out
/// (the test would pass without the restart otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_does_not_time_out_in_the_lobby_while_keep_alives_arrive() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    for (tweak, kept_alive) in [
        (keep_alive_every_100ms as fn(&mut ServerConfig), true),
        (keep_alive_every_minute, false),
    ] {
        let ts = TestServer::start(ServerOptions {
            dim: DIM,
            min_clients: 3,
            tweak,
            ..ServerOptions::default()
        })
        .await;
        let early = ts
            .client_builder(None)
            .round_timeout(TIMEOUT)
            .build()
            .unwrap();
        let started = Instant::now();
        let waiting = tokio::spawn(async move { early.participate(&update(DIM, 0)).await });
        tokio::time::sleep(TIMEOUT * 5 / 2).await;
        let others: Vec<_> = (1..3)
            .map(|i| {
                let client = ts.client(None);
                tokio::spawn(async move { client.participate(&update(DIM, i)).await })
            })
            .collect();
        let result = waiting.await.unwrap();
        if kept_alive {
            let outcome = result.expect("kept alive in the lobby, then took part");
            assert_eq!(outcome.survivors, 3);
            assert!(started.elapsed() > TIMEOUT * 2);
            for other in others {
                other.await.unwrap().expect("the others took part");
            }
        } else {
            assert_eq!(
                result.unwrap_err(),
                ClientError::RoundTimeout { after: TIMEOUT }
            );
        }
    }
}

/// A cap of four connections, a round that opens at three and a lobby
/// that then stays open 60 s for more: four clients waiting in the lobby
/// fill the cap.
fn cap_of_four(config: &mut ServerConfig) {
    config.network.max_connections = Some(4);
    config.round.max_clients = 10;
    config.round.join_window = Duration::from_secs(60);
}

/// Clients waiting in the lobby hold connections, and the cap counts them:
/// with the cap full of waiting clients a new client is refused, saying
/// why; once one waiting client leaves, a new one gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_counts_clients_waiting_in_the_lobby() {
    let ts = TestServer::start(ServerOptions {
        dim: DIM,
        min_clients: 3,
        tweak: cap_of_four,
        ..ServerOptions::default()
    })
    .await;
    let mut waiting = Vec::new();
    for i in 0..4 {
        let joined = Arc::new(AtomicU32::new(0));
        let seen = Arc::clone(&joined);
        let client = ts
            .client_builder(None)
            .on_progress(move |p| {
                if matches!(p, Progress::Lobby { .. }) {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build()
            .unwrap();
        waiting.push(tokio::spawn(async move {
            client.participate(&update(DIM, i)).await
        }));
        // One at a time, each in the lobby (its Lobby frame came) before
        // the next dials.
        let deadline = Instant::now() + Duration::from_secs(10);
        while joined.load(Ordering::Relaxed) == 0 {
            assert!(
                Instant::now() < deadline,
                "client {i} never reached the lobby"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let late = ts
        .client_builder(None)
        .retry(RetryPolicy::NONE)
        .build()
        .unwrap();
    let err = late.participate(&update(DIM, 9)).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Unreachable { message, .. } if message.contains("connection cap")),
        "{err}"
    );
    // A waiting client leaves: its slot frees, and the late client gets in
    // (to the lobby: the round has not opened, so it waits too).
    waiting.pop().unwrap().abort();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let late = ts
            .client_builder(None)
            .retry(RetryPolicy::NONE)
            .round_timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        match late.participate(&update(DIM, 9)).await {
            Err(ClientError::RoundTimeout { .. }) => break,
            other => assert!(
                Instant::now() < deadline,
                "the freed slot never admitted the late client: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
