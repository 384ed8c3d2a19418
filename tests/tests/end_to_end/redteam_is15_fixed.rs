//! Red team, issue 15: the attacks that succeeded on the code as first
//! merged (branch `is15-redteam`, `tests/tests/redteam_is15_open.rs`), now
//! fixed, kept as regression tests. Each asserts the safe behaviour and
//! fails on the code before its fix.
//!
//! - Clients that already took part in the current DP-FTRL tree and come
//!   back used to wait in the lobby, holding connection-cap slots, so
//!   enough of them stalled the tree. Now the server turns them away
//!   (`NOT_ELIGIBLE`, with the rounds the tree has left) at the door and
//!   from the lobby.
//! - Under mutual TLS a client was named by its certificate's digest, so a
//!   renewed certificate took part twice in one tree. Now it is named by
//!   the certificate's subject.
//! - Central DP and DP-FTRL decoded the ring sum before adding noise, so
//!   colluders at the wrap point amplified an honest update past the
//!   sensitivity. Now the noise is added in the ring (the distinguishers
//!   are `tessera-dp`'s
//!   `tree::tests::colluders_at_the_wrap_point_learn_no_more_than_the_noise_allows`
//!   and `mechanism::tests::central_release_next_to_the_wrap_point_hides_one_honest_update`;
//!   the one below runs the tree over several steps through the public API).

use std::time::Duration;

use tessera_client::{ClientError, RoundOutcome};
use tessera_server::config::DpMode;
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

/// Three clients take tree step 1 and come straight back, ineligible for
/// the rest of the tree; the connection cap has room for four. On the old
/// code they waited in the lobby holding three of the four slots, and the
/// three eligible clients step 2 needs could not all get in: the tree
/// stalled. Now each is told at once that it is not eligible, with the
/// rounds the tree has left, and step 2 runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_ftrl_clients_waiting_out_their_tree_no_longer_fill_the_connection_cap() {
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
    for r in results(join(&ts, &[0, 1, 2])).await {
        match r {
            Err(ClientError::NotEligible { rounds_left, .. }) => assert_eq!(rounds_left, 7),
            other => panic!("a client already in the tree is turned away, got {other:?}"),
        }
    }
    let fresh = join(&ts, &[3, 4, 5]);
    let step2 = tokio::time::timeout(Duration::from_secs(20), results(fresh))
        .await
        .expect("the eligible clients take tree step 2 within 20 s");
    for r in step2 {
        assert_eq!(r.expect("step 2 completes").round_id, 2);
    }
    ts.server.shutdown().await.unwrap();
}

/// Where the mTLS test's client CA is written (a `tweak` is a plain `fn`).
static CLIENT_CA: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Once per tree under mutual TLS: alice takes tree step 1, then comes
/// back with a renewed certificate (same CA, same subject). Named by the
/// certificate's digest she was a new client and took part again; named
/// by its subject she is turned away until the tree ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_ftrl_a_renewed_client_certificate_does_not_take_part_twice_in_one_tree() {
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
    let first = vec![
        run(with_cert("alice"), 0),
        run(with_cert("bob"), 1),
        run(with_cert("carol"), 2),
    ];
    for r in results(first).await {
        assert_eq!(r.expect("round 1 completes").round_id, 1);
    }
    // Alice with a renewed certificate for the same subject.
    let renewed = run(with_cert("alice"), 11);
    match tokio::time::timeout(Duration::from_secs(20), renewed)
        .await
        .expect("answered at once")
        .unwrap()
    {
        Err(ClientError::NotEligible { message, .. }) => {
            assert!(message.contains("cert:CN=alice"), "{message}")
        }
        other => panic!("alice took part again in tree 0 with a renewed certificate: {other:?}"),
    }
    // Three other subjects take step 2.
    let second = vec![
        run(with_cert("dave"), 20),
        run(with_cert("erin"), 21),
        run(with_cert("frank"), 22),
    ];
    for r in results(second).await {
        assert_eq!(r.expect("round 2 completes").round_id, 2);
    }
    ts.server.shutdown().await.unwrap();
}

/// DP-FTRL's tree over several steps: colluders park coordinate 0 of
/// step 3's leaf right below the ring's wrap point, and the honest client
/// (`+1.0`, norm `C`) takes part in step 3 or not. A model consumer reads
/// the sign of the released step (`S_3 - S_2`). Decoding before noising,
/// that sign gave the honest client away every time; noised in the ring,
/// its advantage is at most the Gaussian mechanism's
/// `2 Φ(1 / (2z)) - 1 = 0.197` at `z = 2`.
#[test]
fn redteam_ftrl_colluders_near_the_ring_boundary_gain_no_more_than_the_noise_allows() {
    use tessera_dp::encoding::FixedPoint;
    use tessera_dp::mechanism::CentralDp;
    use tessera_dp::tree::{TreeNoise, TreeSeed, TreeState};

    let fp = FixedPoint::new(1.0, 8, 32).unwrap();
    let tree = TreeNoise::new(
        TreeSeed::from_bytes([7; 32]),
        CentralDp::new(fp, 2.0, 1).unwrap(),
    );
    let park = (1u32 << 31) - 1;
    let trials = 2000u64;
    let step3_negative = |honest: u32| {
        (0..trials)
            .filter(|&epoch| {
                // A fresh tree (epoch) per trial: fresh node noise.
                let s1 = tree
                    .add_leaf(&TreeState::new(epoch, 1), &fp, &[700])
                    .unwrap();
                let s2 = tree.add_leaf(&s1, &fp, &[300]).unwrap();
                let s3 = tree
                    .add_leaf(&s2, &fp, &[park.wrapping_add(honest)])
                    .unwrap();
                s3.noisy_prefix[0] - s2.noisy_prefix[0] < 0
            })
            .count() as f64
            / trials as f64
    };
    let advantage = step3_negative(256) - step3_negative(0);
    assert!(
        advantage < 0.197 + 0.08,
        "the released step gives the honest client away: advantage {advantage:.3}"
    );
    assert!(advantage > 0.08, "the test has power: {advantage:.3}");
}
