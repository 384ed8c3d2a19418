//! A disk that fails under a running server, through the storage seam
//! (`tessera_server::files::FaultPlan`; tests run as root, where `chmod`
//! stops nothing). The clients of a round the server cannot store hear
//! UNAVAILABLE with an ErrorDetail saying so, not an OK status without a
//! result; the round is recorded as aborted for `storage`; its privacy is
//! charged once; and the server runs the next round when the disk
//! recovers.

use std::time::Duration;

use tessera_client::{ClientError, RoundOutcome};
use tessera_server::config::DpMode;
use tessera_server::files::{Failure, FaultPlan, Op};
use tessera_server::store::{RoundStatus, inspect};
use tessera_tests::{ServerOptions, TestServer, update};

const DIM: u32 = 16;
const CLIENTS: u64 = 3;

/// One round of [`CLIENTS`] SDK clients; their results.
async fn round(ts: &TestServer, seed: u64) -> Vec<Result<RoundOutcome, ClientError>> {
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let client = ts.client(None);
            let u = update(DIM, seed + i);
            tokio::spawn(async move { client.participate(&u).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results
}

fn assert_not_stored(results: Vec<Result<RoundOutcome, ClientError>>, round_id: u64) {
    for r in results {
        match r {
            Err(ClientError::RoundNotStored {
                round_id: id,
                message,
            }) => {
                assert_eq!(id, round_id, "{message}");
                assert!(message.contains("could not"), "{message}");
                assert!(
                    !message.contains("/tmp"),
                    "no path reaches a client: {message}"
                );
            }
            other => panic!("round {round_id}: expected RoundNotStored, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_the_disk_cannot_store_is_reported_aborted_and_the_next_round_runs() {
    let plan = FaultPlan::new();
    let ts = TestServer::start(ServerOptions {
        dim: DIM,
        min_clients: CLIENTS as u32,
        stage_timeout: Duration::from_secs(20),
        tweak: |config| {
            config.dp.mode = DpMode::Central;
            config.dp.noise_multiplier = 1.0;
            config.dp.epsilon_budget = 100.0;
        },
        faults: Some(plan.clone()),
        ..ServerOptions::default()
    })
    .await;

    // Round 1: the disk is full when the model file is written.
    plan.fail_matching(Some(Op::Write), "model-000002", Failure::StorageFull);
    let results = round(&ts, 0).await;
    for r in &results {
        if let Err(e) = r {
            assert!(e.to_string().contains("No space left on device"), "{e}");
        }
    }
    assert_not_stored(results, 1);
    let seen = inspect(ts.data_dir()).unwrap();
    assert_eq!(seen.models.len(), 1, "nothing published");
    let r1 = &seen.rounds[0];
    assert_eq!(
        (r1.round, r1.outcome, r1.reason.as_deref()),
        (1, RoundStatus::Aborted, Some("storage"))
    );
    let charged = seen.ledger.expect("the sum the server saw is charged");
    assert_eq!(charged.entries().len(), 1);
    assert_eq!(charged.entries()[0].round, 1);

    // Round 2: the whole disk is read-only; the round cannot even record
    // its start, so it does not open.
    plan.clear();
    plan.fail_matching(None, "", Failure::ReadOnly);
    assert_not_stored(round(&ts, 10).await, 2);

    // The disk recovers: the next round completes and publishes version 2.
    plan.clear();
    for r in round(&ts, 20).await {
        let outcome = r.expect("the disk has recovered");
        assert_eq!(outcome.model_version, 2);
    }
    let model = ts.client(None).latest_model().await.unwrap();
    assert_eq!(model.version, 2);
    let seen = inspect(ts.data_dir()).unwrap();
    let ledger = seen.ledger.unwrap();
    let rounds: Vec<u64> = ledger.entries().iter().map(|e| e.round).collect();
    assert_eq!(
        rounds,
        [1, 2],
        "each round that was unmasked is charged once"
    );
    assert_eq!(seen.models[1].round, 2);
    assert_eq!(seen.models[1].epsilon, ledger.spent());
    let outcomes: Vec<_> = seen.rounds.iter().map(|r| (r.round, r.outcome)).collect();
    assert_eq!(
        outcomes,
        [(1, RoundStatus::Aborted), (2, RoundStatus::Completed)]
    );
    let dir = ts.data_dir().to_owned();
    ts.server.shutdown().await.unwrap();
    // And the data directory opens: the failed publication left nothing
    // it refuses.
    let key = tessera_server::store::StateKey::load(&dir.with_file_name("data.state-key"))
        .expect("the state key beside the data directory");
    tessera_server::store::Store::open(&dir, &key).expect("reopens");
}
