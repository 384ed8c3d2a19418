//! DP-FTRL when a charged tree step cannot be made durable (red team,
//! issue 15, finding 1): the server must go on with a new tree, never
//! stop as if the budget were spent, and never release the step twice.

use std::time::Duration;

use tessera_client::{ClientError, RoundOutcome};
use tessera_server::config::DpMode;
use tessera_server::files::{Failure, FaultPlan, Op};
use tessera_tests::{ServerOptions, TestServer, update};
use tokio::task::JoinHandle;

const DIM: u32 = 20;

fn ftrl(config: &mut tessera_server::ServerConfig) {
    config.dp.mode = DpMode::Ftrl;
    config.dp.noise_multiplier = 0.5;
    config.dp.epsilon_budget = 1000.0;
    // One tree for the whole test: every round is a step of tree 0.
    config.dp.ftrl_epoch_rounds = 8;
}

fn options(plan: &FaultPlan) -> ServerOptions {
    ServerOptions {
        dim: DIM,
        min_clients: 3,
        tls_tokens: Some(12),
        stage_timeout: Duration::from_secs(20),
        tweak: ftrl,
        faults: Some(plan.clone()),
        ..ServerOptions::default()
    }
}

/// Clients `ids` (token indices) join and send their updates.
fn join(ts: &TestServer, ids: &[usize]) -> Vec<JoinHandle<Result<RoundOutcome, ClientError>>> {
    ids.iter()
        .map(|&i| {
            let client = ts.client(Some(i));
            let u = update(DIM, i as u64);
            tokio::spawn(async move { client.participate(&u).await })
        })
        .collect()
}

async fn results(
    tasks: Vec<JoinHandle<Result<RoundOutcome, ClientError>>>,
) -> Vec<Result<RoundOutcome, ClientError>> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("the round ends within a minute")
                .unwrap(),
        );
    }
    out
}

/// How many writes of `ftrl.json` the disk has seen.
fn ftrl_writes(plan: &FaultPlan) -> usize {
    plan.log()
        .iter()
        .filter(|(op, path)| *op == Op::Write && path.to_string_lossy().contains("ftrl.json"))
        .count()
}

/// Round 2's charge is durable but the tree's state after the release
/// cannot be written (a full disk for one write, or a crash there). The
/// disk recovers; the next round must run as the tree's next step (or a
/// new tree). On the merged code the ledger is one step ahead of the tree
/// forever and the server refused every round as "budget spent" (red
/// team, issue 15); now the tree closes and the next round starts a new
/// one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charged_step_whose_tree_state_was_not_written_closes_the_tree_and_the_server_goes_on() {
    let plan = FaultPlan::new();
    let ts = TestServer::start(options(&plan)).await;
    for r in results(join(&ts, &[0, 1, 2])).await {
        assert_eq!(r.expect("round 1 completes").round_id, 1);
    }

    // Round 2: once its participants are on disk (the first ftrl.json
    // write of the round), the next ftrl.json write (the release) fails.
    let before = ftrl_writes(&plan);
    let round2 = join(&ts, &[3, 4, 5]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ftrl_writes(&plan) == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "round 2 never began"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    plan.fail_matching(Some(Op::Write), "ftrl.json", Failure::StorageFull);
    for r in results(round2).await {
        assert!(r.is_err(), "round 2 cannot be stored: {r:?}");
    }
    plan.clear();

    // The disk has recovered: round 3 must run.
    for r in results(join(&ts, &[6, 7, 8])).await {
        let outcome = r.expect(
            "after the disk recovers the DP-FTRL server goes on (a charged, unreleased step must close the tree, not stop the server as if the budget were spent)",
        );
        assert!(outcome.round_id >= 3);
    }
    ts.server.shutdown().await.unwrap();
}
