//! Red team, issue 15: attacks on DP-FTRL and cohorts that SUCCEED on the
//! code as merged. Each test asserts the safe behaviour, so each fails
//! until the coordinator fixes the code (see the red-team report).
//!
//! 1. Durable state (the first two tests). The common root: a tree step
//!    can be *charged* in the ledger without `ftrl.json` recording it as
//!    released (the charge is written first, the tree's state second, the
//!    model third), and nothing reconciles the two.
//!    - In a running server, a charge whose tree state is not written
//!      leaves the ledger one step ahead of the tree: every later step
//!      "does not follow" its tree, `can_spend` answers false, and the
//!      server stops for good saying the privacy budget is spent.
//!    - In the data directory, a release whose model was never published
//!      is invisible to `ftrl.json`'s rollback check (it looks only at
//!      published versions), so the copy from before that release is
//!      accepted again, against README's "an edited or rolled-back copy is
//!      refused". Its step would be released a second time with the same
//!      (durable) node noise over a different sum, revealing the
//!      difference of the two sums to whoever kept the first copy; today
//!      only the ledger's step-continuity check stands in the way (the
//!      server then stops, as above), and rolling the ledger back with it
//!      is refused by the store.
//!
//! 2. Cohort + DP-FTRL: clients waiting out their tree hold the connection
//!    cap's slots and stall the tree.
//!
//! 3. Decoding before noising: colluding clients near the ring's wrap point
//!    amplify one honest update far past the sensitivity the server's
//!    noise covers (DP-FTRL, and central DP which shares the decoding).
//!
//! 4. Once per tree under mutual TLS: a renewed client certificate is a new
//!    identity, so the same client takes part twice in one tree.

use std::time::Duration;

use tessera_client::{ClientError, RoundOutcome};
use tessera_server::config::DpMode;
use tessera_server::files::{Failure, FaultPlan, Op};
use tessera_server::store::{StateKey, Store};
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
/// forever: the server refuses every round as "budget spent".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_ftrl_a_charged_step_whose_tree_state_was_not_written_stops_the_server_for_good() {
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

/// A copy of a file of the data directory, to put back later.
fn keep(ts: &TestServer, name: &str) -> Vec<u8> {
    std::fs::read(ts.data_dir().join(name)).unwrap()
}

/// Round 2 is charged and released into `ftrl.json` (step 2), but its
/// model cannot be published. Someone with the data directory kept the
/// `ftrl.json` of step 1 (and its ledger) and puts it back. The store must
/// refuse the rollback, as README promises ("an edited or rolled-back copy
/// is refused"): accepting it means releasing step 2's nodes again, with
/// the same noise, over another sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_ftrl_rolling_back_ftrl_json_past_an_unpublished_release_is_accepted() {
    let plan = FaultPlan::new();
    let ts = TestServer::start(options(&plan)).await;
    for r in results(join(&ts, &[0, 1, 2])).await {
        assert_eq!(r.expect("round 1 completes").round_id, 1);
    }
    let old_ftrl = keep(&ts, "ftrl.json");
    let old_ledger = keep(&ts, "ledger.json");

    // Round 2: released into the tree, not published.
    plan.fail_matching(Some(Op::Write), "model-000003", Failure::StorageFull);
    for r in results(join(&ts, &[3, 4, 5])).await {
        assert!(r.is_err(), "round 2's model cannot be stored: {r:?}");
    }
    plan.clear();
    let released: serde_json::Value =
        serde_json::from_slice(&keep(&ts, "ftrl.json")).expect("ftrl.json is JSON");
    assert_eq!(released["step"], 2, "round 2 was released into the tree");
    let (dir, key_path) = (ts.data_dir.clone(), ts.state_key.clone());
    ts.server.shutdown().await.unwrap();
    let key = StateKey::load(&key_path).unwrap();
    Store::open(&dir, &key).expect("the current data directory opens");

    // The rollback of ftrl.json alone, then with the ledger of the same
    // moment (which also lifts the ledger's step check, the only thing
    // that would stop the server from releasing step 2 again).
    std::fs::write(dir.join("ftrl.json"), &old_ftrl).unwrap();
    let alone = Store::open(&dir, &key).is_err();
    std::fs::write(dir.join("ledger.json"), &old_ledger).unwrap();
    let with_ledger = Store::open(&dir, &key).is_err();
    assert!(
        alone && with_ledger,
        "an ftrl.json from before the release of step 2 must be refused: refused alone {alone}, with the ledger of that moment {with_ledger}"
    );
}

/// Cohort + DP-FTRL: clients that already took part in the current tree
/// are ineligible until the next one, but they wait in the lobby with
/// keep-alives, and every waiting client holds a slot of the connection
/// cap. Clients that took part (colluders, or honest SDK clients that
/// simply come back) fill the cap; the eligible clients the tree needs
/// are closed at the cap, and the tree never takes another step. Safe
/// behaviour: the eligible clients get in (an ineligible client is told to
/// come back for the next tree, or does not count against the slots
/// eligible clients need).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_ftrl_clients_waiting_out_their_tree_fill_the_connection_cap_and_stall_it() {
    let ts = TestServer::start(ServerOptions {
        dim: DIM,
        min_clients: 3,
        tls_tokens: Some(9),
        tweak: |config| {
            ftrl(config);
            // Room for the round's three clients and one more.
            config.network.max_connections = Some(4);
        },
        ..ServerOptions::default()
    })
    .await;
    for r in results(join(&ts, &[0, 1, 2])).await {
        assert_eq!(r.expect("round 1 completes").round_id, 1);
    }
    // The three come straight back: ineligible for the rest of the tree.
    let back = join(&ts, &[0, 1, 2]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Three eligible clients arrive for step 2.
    let fresh = join(&ts, &[3, 4, 5]);
    let step2 = tokio::time::timeout(Duration::from_secs(20), async {
        let mut out = Vec::new();
        for t in fresh {
            out.push(t.await.unwrap());
        }
        out
    })
    .await
    .expect("the eligible clients take tree step 2 within 20 s (the waiting ineligible clients must not hold the slots they need)");
    for r in step2 {
        assert_eq!(r.expect("step 2 completes").round_id, 2);
    }
    for t in back {
        t.abort();
    }
    ts.server.shutdown().await.unwrap();
}

/// DP-FTRL (and central DP, which it inherits the decoding from): the
/// server decodes the exact ring sum to signed integers *before* it adds
/// its noise (`tessera_dp::tree::decode_signed`, then `TreeNoise::add_leaf`;
/// `CentralDp::release` likewise). Masking hides each input, so colluding
/// clients can send raw ring values (README: "a client that writes raw
/// ring values is unbounded") and put a coordinate of the sum just below
/// the wrap point. One honest client's clipped update then decides whether
/// the sum wraps: the released prefix sum moves by about 2^bits, not by
/// the sensitivity Δ the noise and the ledger are calibrated for, and the
/// consumer reads that client's sign from the published model. Safe
/// behaviour: one client's update moves the release by at most Δ whatever
/// the others send (add the noise in the ring, mod 2^bits, and decode
/// after: decoding is then post-processing).
#[test]
fn attack_ftrl_colluders_near_the_ring_boundary_amplify_one_honest_update_past_the_sensitivity() {
    use tessera_dp::encoding::FixedPoint;
    use tessera_dp::mechanism::CentralDp;
    use tessera_dp::tree::{TreeNoise, TreeSeed, TreeState, decode_signed};

    let dim = 4;
    let fp = FixedPoint::new(1.0, 8, 32).unwrap();
    let central = CentralDp::new(fp, 1.0, dim).unwrap();
    let delta = central.l2_sensitivity();
    let tree = TreeNoise::new(TreeSeed::from_bytes([7; 32]), central);
    // The honest client's update: 1.0 on coordinate 0, within C = 1
    // (2^8 in units of 2^-8).
    let honest = [256u32, 0, 0, 0];
    // The colluders' raw ring values sum to just below 2^31 there.
    let colluders = [(1u32 << 31) - 1, 0, 0, 0];
    let with: Vec<u32> = colluders
        .iter()
        .zip(honest)
        .map(|(c, h)| c.wrapping_add(h) & fp.value_mask())
        .collect();
    // Zero-out-one: the same round without the honest client.
    let without = colluders.to_vec();
    // The same tree (the same node noise) over the two neighbouring sums.
    let start = TreeState::new(0, dim);
    let a = tree.add_leaf(&start, &decode_signed(&fp, &with)).unwrap();
    let b = tree
        .add_leaf(&start, &decode_signed(&fp, &without))
        .unwrap();
    let moved = a
        .noisy_prefix
        .iter()
        .zip(&b.noisy_prefix)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        moved <= delta,
        "one honest client moved the released prefix sum by {moved:.0} (units of 2^-8), the noise covers Δ = {delta:.0}"
    );
}

/// Where the mTLS test's client CA is written (a `tweak` is a plain `fn`).
static CLIENT_CA: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Once-per-tree under mutual TLS: the server names an mTLS client by the
/// digest of its leaf certificate, so the same client with a renewed
/// certificate (same CA, same subject: routine rotation, or a second
/// certificate its CA is willing to issue) is a new identity and takes
/// part twice in one tree, which the tree's accounting does not cover.
/// Safe behaviour: the identity is what the CA vouches for (the subject),
/// so the renewed certificate waits for the next tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_ftrl_a_renewed_client_certificate_takes_part_twice_in_one_tree() {
    let ca = tessera_server::tls::CertificateAuthority::new("redteam client CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("client-ca.pem");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    CLIENT_CA.set(ca_path).unwrap();
    let ts = TestServer::start(ServerOptions {
        dim: DIM,
        min_clients: 3,
        tls_tokens: Some(0),
        tweak: |config| {
            ftrl(config);
            config.network.tokens_file = None;
            config.network.tls_client_ca = CLIENT_CA.get().cloned();
        },
        ..ServerOptions::default()
    })
    .await;
    let client_of = |issued: &tessera_server::tls::SelfSigned| {
        ts.client_builder(None)
            .tls_identity(
                issued.cert_pem.clone().into_bytes(),
                issued.key_pem.as_bytes().to_vec(),
            )
            .build()
            .unwrap()
    };
    let with_cert = |name: &str| client_of(&ca.issue_client(name).unwrap());
    let run = |client: tessera_client::Client, seed: u64| {
        let u = update(DIM, seed);
        tokio::spawn(async move { client.participate(&u).await })
    };
    // Tree 0, step 1: alice, bob, carol.
    let alice_cert = ca.issue_client("alice").unwrap();
    let first = vec![
        run(client_of(&alice_cert), 0),
        run(with_cert("bob"), 1),
        run(with_cert("carol"), 2),
    ];
    for r in results(first).await {
        assert_eq!(r.expect("round 1 completes").round_id, 1);
    }
    // Step 2 of the same tree. Control: alice with the same certificate
    // and two new clients: alice is held back, no round opens.
    let alice_same = run(client_of(&alice_cert), 10);
    let others = vec![run(with_cert("dave"), 20), run(with_cert("erin"), 21)];
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !alice_same.is_finished() && others.iter().all(|t| !t.is_finished()),
        "control: the same certificate waits for the next tree"
    );
    alice_same.abort();
    // The attack: alice with a renewed certificate for the same subject.
    let alice_renewed = run(with_cert("alice"), 11);
    tokio::time::sleep(Duration::from_secs(5)).await;
    if alice_renewed.is_finished() {
        let outcome = alice_renewed.await.unwrap();
        assert!(
            outcome.is_err(),
            "alice took part again in tree 0 with a renewed certificate: {outcome:?}"
        );
    } else {
        alice_renewed.abort();
    }
    for t in others {
        t.abort();
    }
    ts.server.shutdown().await.unwrap();
}
