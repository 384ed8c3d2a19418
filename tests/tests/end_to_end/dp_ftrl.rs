//! DP-FTRL over real gRPC (`--dp ftrl`): token clients, two trees of two
//! rounds each. The server adds tree noise to each tree's prefix sums,
//! charges every round as a tree step against the model's consumers, and
//! holds every identity to one round per tree: a client that comes back in
//! the same tree is turned away (`NOT_ELIGIBLE`, with the rounds the tree
//! has left) and takes part in the next.

use std::time::Duration;

use tessera_client::{ClientError, RoundOutcome};
use tessera_dp::ledger::{Adversary, Mechanism};
use tessera_server::config::DpMode;
use tessera_server::store::{AuditEvent, TreeStep};
use tessera_tests::{ServerOptions, TestServer, update};
use tokio::task::JoinHandle;

const DIM: u32 = 50;
/// Rounds per tree.
const EPOCH: u64 = 2;

fn ftrl(config: &mut tessera_server::ServerConfig) {
    config.dp.mode = DpMode::Ftrl;
    config.dp.noise_multiplier = 0.5;
    config.dp.epsilon_budget = 1000.0;
    config.dp.ftrl_epoch_rounds = EPOCH;
}

/// Client `i` (token `i`) joins and sends its update.
fn join(ts: &TestServer, i: usize) -> JoinHandle<RoundOutcome> {
    let client = ts.client(Some(i));
    let u = update(DIM, i as u64);
    tokio::spawn(async move { client.participate(&u).await.expect("the client's round") })
}

async fn rounds_of(tasks: Vec<JoinHandle<RoundOutcome>>) -> Vec<u64> {
    let mut rounds = Vec::new();
    for t in tasks {
        rounds.push(t.await.unwrap().round_id);
    }
    rounds
}

/// Who joined each round, from the audit log.
fn joined(ts: &TestServer, round: u64) -> Vec<String> {
    ts.audit()
        .into_iter()
        .find_map(|e| match e {
            AuditEvent::Joined {
                round: r,
                identities,
            } if r == round => Some(identities),
            _ => None,
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_ftrl_trains_over_two_trees_and_holds_each_identity_to_one_round_per_tree() {
    let ts = TestServer::start(ServerOptions {
        dim: DIM,
        min_clients: 3,
        tls_tokens: Some(9),
        rounds: Some(4),
        tweak: ftrl,
        ..ServerOptions::default()
    })
    .await;
    let initial = ts.client(Some(8)).latest_model().await.unwrap().flatten();

    // Tree 0, step 1: clients 0, 1, 2.
    assert_eq!(
        rounds_of((0..3).map(|i| join(&ts, i)).collect()).await,
        [1, 1, 1]
    );

    // Client 0 comes back in the same tree: it may not take part again,
    // and is told so at once, with the one round the tree has left.
    let refused = ts
        .client(Some(0))
        .participate(&update(DIM, 0))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ClientError::NotEligible { rounds_left: 1, .. }),
        "{refused:?}"
    );
    // With two eligible clients no round opens...
    let (three, four) = (join(&ts, 3), join(&ts, 4));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!three.is_finished());
    assert!(joined(&ts, 2).is_empty(), "no round 2 without 3 eligible");
    // ... until a third eligible client comes.
    let five = join(&ts, 5);
    assert_eq!(rounds_of(vec![three, four, five]).await, [2, 2, 2]);
    let mut two = joined(&ts, 2);
    two.sort();
    assert_eq!(two, ["client-3", "client-4", "client-5"]);

    // Tree 1 starts: client 0 is eligible again and takes round 3.
    let rest = rounds_of(vec![join(&ts, 0), join(&ts, 6), join(&ts, 7)]).await;
    assert_eq!(rest, [3, 3, 3]);
    assert!(joined(&ts, 3).contains(&"client-0".to_owned()));
    // Tree 1, step 2: 1, 2 and 8, who all sat out tree 1's first step.
    assert_eq!(
        rounds_of([1, 2, 8].map(|i| join(&ts, i)).into()).await,
        [4, 4, 4]
    );

    // The model moved, and its epsilon holds against its consumers.
    let model = ts.client(Some(8)).latest_model().await.unwrap();
    let last = model.flatten();
    assert!(last.iter().all(|v| v.is_finite()));
    assert!(
        last.iter().zip(&initial).any(|(a, b)| a != b),
        "the model moved"
    );
    assert_eq!(model.epsilon_against, Some(Adversary::ModelConsumers));

    // Every round is charged as a tree step (1-based, restarting with each
    // tree), against the model's consumers; the round records say where.
    let stored = tessera_server::store::inspect(ts.data_dir()).unwrap();
    let ledger = stored.ledger.expect("DP keeps a ledger");
    let steps: Vec<u64> = ledger
        .entries()
        .iter()
        .map(|e| {
            assert_eq!(e.adversary, Adversary::ModelConsumers);
            assert_eq!(e.mechanism.name(), "tree-aggregation");
            match e.mechanism {
                Mechanism::TreeAggregation { step, .. } => step,
                other => panic!("round {} charged as {other:?}", e.round),
            }
        })
        .collect();
    assert_eq!(steps, [1, 2, 1, 2]);
    assert_eq!(model.epsilon, ledger.spent());
    let trees: Vec<Option<TreeStep>> = stored.rounds.iter().map(|r| r.tree).collect();
    let want = [(0, 1), (0, 2), (1, 1), (1, 2)].map(|(epoch, step)| Some(TreeStep { epoch, step }));
    assert_eq!(trees, want);
    ts.server.shutdown().await.unwrap();
}
