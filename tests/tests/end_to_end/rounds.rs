//! Rounds over real gRPC on loopback: many clients with TLS and tokens, and
//! clients that drop out at every stage.

use std::time::Duration;

use tessera_aggregation::Stage;
use tessera_client::ClientError;
use tessera_tests::{Fault, ScriptedClient, ServerOptions, TestServer, mean, update};

/// The largest error FedAvg over fixed point may add per coordinate: each
/// client's value is randomly rounded to a multiple of 2^-16, so the mean
/// is within 2^-16 of the exact mean, plus f32 rounding.
const FIXED_POINT_ERROR: f32 = 1.0 / 65536.0 + 1e-6;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_over_tls_with_tokens_publish_the_fedavg_of_their_updates() {
    let dim = 1000;
    let ts = TestServer::start(ServerOptions {
        dim,
        min_clients: 50,
        tls_tokens: Some(50),
        ..ServerOptions::default()
    })
    .await;
    let mut expected = vec![0.0f32; dim as usize];
    for round in 0..2u64 {
        let updates: Vec<Vec<f32>> = (0..50).map(|i| update(dim, round * 100 + i)).collect();
        let tasks: Vec<_> = updates
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, u)| {
                let client = ts.client(Some(i));
                tokio::spawn(async move { client.participate(&u).await })
            })
            .collect();
        for task in tasks {
            let outcome = task.await.unwrap().expect("every client completes");
            assert_eq!(outcome.survivors, 50);
            assert_eq!(outcome.model_version, round + 2);
        }
        for (e, m) in expected.iter_mut().zip(mean(&updates)) {
            *e += m;
        }
        let model = ts.client(Some(0)).latest_model().await.expect("model");
        assert_eq!(model.version, round + 2);
        let diff = max_diff(&model.flatten(), &expected);
        assert!(
            diff <= FIXED_POINT_ERROR * (round + 1) as f32,
            "round {round}: published model differs from plain FedAvg by {diff}"
        );
    }
    ts.server.shutdown().await.unwrap();
}

/// Runs one round with `honest` SDK clients and scripted clients that hang
/// up before `stage`; returns the honest clients' results.
async fn round_with_dropouts(
    ts: &TestServer,
    honest: u64,
    dying: u64,
    stage: Stage,
    seed: u64,
) -> Vec<Result<tessera_client::RoundOutcome, ClientError>> {
    let dim = 64;
    let mut tasks = Vec::new();
    for i in 0..dying {
        let channel = ts.channel().await;
        let mut c = ScriptedClient::new(update(dim, seed + 1000 + i), seed + i);
        c.fault = Fault::DieBefore(stage);
        tokio::spawn(c.run(channel));
    }
    for i in 0..honest {
        let client = ts.client(None);
        let u = update(dim, seed + i);
        tasks.push(tokio::spawn(async move { client.participate(&u).await }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropouts_at_each_stage_complete_above_the_threshold_and_abort_below() {
    // n = 7 per round, complete graph, t = 4.
    let ts = TestServer::start(ServerOptions {
        dim: 64,
        min_clients: 7,
        stage_timeout: Duration::from_secs(20),
        ..ServerOptions::default()
    })
    .await;
    for (i, stage) in [
        Stage::AdvertiseKeys,
        Stage::ShareKeys,
        Stage::MaskedInput,
        Stage::Unmasking,
    ]
    .into_iter()
    .enumerate()
    {
        let results = round_with_dropouts(&ts, 5, 2, stage, 10 * i as u64).await;
        // Clients that die before unmasking already sent their masked
        // input: it stays in the sum, their self-masks rebuilt from shares.
        let expected_survivors = if stage == Stage::Unmasking { 7 } else { 5 };
        for r in results {
            let outcome = r.unwrap_or_else(|e| panic!("drops before {stage}: {e}"));
            assert_eq!(
                outcome.survivors, expected_survivors,
                "drops before {stage}"
            );
        }
    }
    // Four of seven gone before ShareKeys: three left, below t = 4.
    let results = round_with_dropouts(&ts, 3, 4, Stage::ShareKeys, 99).await;
    for r in results {
        assert!(
            matches!(r, Err(ClientError::RoundAborted { .. })),
            "expected an abort below the threshold, got {r:?}"
        );
    }
    // The next round opens and completes.
    let results = round_with_dropouts(&ts, 7, 0, Stage::Unmasking, 200).await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let rounds = tessera_server::store::inspect(ts.data_dir())
        .unwrap()
        .rounds;
    let outcomes: Vec<String> = rounds
        .iter()
        .map(|r| serde_json_outcome(r.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            "completed",
            "completed",
            "completed",
            "completed",
            "aborted",
            "completed"
        ]
    );
    ts.server.shutdown().await.unwrap();
}

fn serde_json_outcome(o: tessera_server::store::RoundStatus) -> String {
    format!("{o:?}").to_lowercase()
}

/// A round of 3 whose third client falls silent before its masked input
/// would publish the sum of 2, from which each survivor recovers the
/// other's update: it aborts before any share is revealed, publishes
/// nothing, and both clients are told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_of_three_with_one_silent_client_aborts_without_publishing() {
    let ts = TestServer::start(ServerOptions {
        dim: 64,
        min_clients: 3,
        stage_timeout: Duration::from_secs(5),
        ..ServerOptions::default()
    })
    .await;
    let results = round_with_dropouts(&ts, 2, 1, Stage::MaskedInput, 7).await;
    for r in results {
        match r {
            Err(e @ ClientError::RoundAborted { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains("smaller than the minimum"),
                    "the abort does not say why: {message}"
                );
            }
            other => panic!("expected an abort below the minimum aggregate, got {other:?}"),
        }
    }
    let model = ts.client(None).latest_model().await.expect("model");
    assert_eq!(model.version, 1, "nothing is published");
    let rounds = tessera_server::store::inspect(ts.data_dir())
        .unwrap()
        .rounds;
    assert_eq!(rounds.len(), 1);
    assert_eq!(serde_json_outcome(rounds[0].outcome), "aborted");
    assert_eq!(rounds[0].stage.as_deref(), Some("masked-input"));
    ts.server.shutdown().await.unwrap();
}
