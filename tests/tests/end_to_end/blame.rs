//! One bad client over real gRPC: it is evicted, named, and told what it
//! did (a share-bundle garbler proven by its victim's share key, revealed
//! when the server asks); the honest clients finish the round (or, past the
//! threshold's margin, learn that it aborted and who caused it), and none
//! of them is blamed or blames the server.

use tessera_aggregation::messages::AbortReason;
use tessera_client::ClientError;
use tessera_proto::v1::ErrorKind;
use tessera_tests::{Fault, ScriptedClient, ServerOptions, TestServer, mean, update};
use tonic::Code;

const DIM: u32 = 40;
const HONEST: usize = 5;

/// What one round with a bad client left: its outcome, the honest
/// clients' results, the audit log, and the published model.
type Played = (
    tessera_tests::ScriptedOutcome,
    Vec<Result<tessera_client::RoundOutcome, ClientError>>,
    Vec<tessera_server::store::AuditEvent>,
    Option<Vec<f32>>,
);

/// A round of `HONEST` SDK clients and one scripted client with `fault`;
/// returns the scripted client's outcome and the honest clients' results.
async fn round_with(
    fault: Fault,
    seed: u64,
) -> (
    tessera_tests::ScriptedOutcome,
    Vec<Result<tessera_client::RoundOutcome, ClientError>>,
    Vec<tessera_server::store::AuditEvent>,
) {
    let (bad, results, audit, _) = round_tweaked(fault, seed, |_| {}).await;
    (bad, results, audit)
}

/// [`round_with`] on a server with `tweak` applied, also returning the
/// published model if the round completed.
async fn round_tweaked(
    fault: Fault,
    seed: u64,
    tweak: fn(&mut tessera_server::config::ServerConfig),
) -> Played {
    let ts = TestServer::start(ServerOptions {
        dim: DIM,
        min_clients: HONEST as u32 + 1,
        tweak,
        ..ServerOptions::default()
    })
    .await;
    let mut bad = ScriptedClient::new(update(DIM, seed), seed);
    bad.fault = fault;
    let bad = tokio::spawn(bad.run(ts.channel().await));
    let honest: Vec<_> = (0..HONEST)
        .map(|i| {
            let client = ts.client(None);
            let u = update(DIM, seed + 1 + i as u64);
            tokio::spawn(async move { client.participate(&u).await })
        })
        .collect();
    let bad = bad.await.unwrap();
    let mut results = Vec::new();
    for h in honest {
        results.push(h.await.unwrap());
    }
    let audit = ts.audit();
    let model = if results.iter().any(Result::is_ok) {
        Some(
            ts.client(None)
                .latest_model()
                .await
                .expect("model")
                .flatten(),
        )
    } else {
        None
    };
    ts.server.shutdown().await.unwrap();
    (bad, results, audit, model)
}

/// Nobody honest reports that the server broke the protocol.
fn nobody_blames_the_server(results: &[Result<tessera_client::RoundOutcome, ClientError>]) {
    for r in results {
        assert!(
            !matches!(r, Err(ClientError::ServerMisbehaved { .. })),
            "an honest client blamed the server: {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_advert_evicts_its_sender_by_name_and_the_others_finish() {
    let (bad, results, audit) = round_with(Fault::SameKeysAdvert, 10).await;
    let status = bad.status.expect("the bad client is told");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad.kind, Some(ErrorKind::BadAdvert));
    assert!(
        status.message().contains("advert: c_pk equals s_pk"),
        "{status:?}"
    );
    nobody_blames_the_server(&results);
    for r in results {
        let outcome = r.expect("honest clients complete");
        assert_eq!(outcome.survivors, HONEST as u32);
        assert_eq!(outcome.evicted.len(), 1, "{:?}", outcome.evicted);
        assert_eq!(outcome.evicted[0].reason, "invalid_advert");
        assert!(outcome.evicted[0].detail.contains("c_pk equals s_pk"));
    }
    // The operator's record names the client and what it did.
    let evicted: Vec<_> = audit
        .iter()
        .filter_map(|e| match e {
            tessera_server::store::AuditEvent::Evicted { reason, proof, .. } => {
                Some((reason.as_str(), proof.clone().unwrap_or_default()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(evicted.len(), 1, "{audit:?}");
    assert_eq!(evicted[0].0, "invalid_advert");
    assert!(evicted[0].1.contains("c_pk equals s_pk"), "{evicted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_threshold_a_garbage_bundle_costs_its_sender_the_round_not_the_others() {
    // The server's default threshold for six clients leaves room for one
    // exposed holder: the victim accuses without a key, is asked for it
    // (once, before anyone hears who survived), and the key proves the
    // garbage. The garbler alone is evicted; the other honest clients
    // complete and are told who it was.
    let (bad, results, audit) = round_with(Fault::GarbleBundles(1), 20).await;
    assert_eq!(bad.kind, Some(ErrorKind::BadShares), "{bad:?}");
    nobody_blames_the_server(&results);
    let mut accusers = 0;
    let mut completed = 0;
    for r in &results {
        match r {
            Err(ClientError::AccusedNeighbours {
                accused,
                revealed_key,
                ..
            }) => {
                accusers += 1;
                assert_eq!(accused.len(), 1);
                assert!(*revealed_key, "asked within the margin, it proved it");
            }
            Ok(outcome) => {
                completed += 1;
                assert_eq!(outcome.survivors, HONEST as u32, "{outcome:?}");
                assert_eq!(outcome.evicted.len(), 1, "{:?}", outcome.evicted);
                assert_eq!(outcome.evicted[0].reason, "bad_share_bundle");
            }
            Err(e) => panic!("unexpected error for an honest client: {e}"),
        }
    }
    assert_eq!((accusers, completed), (1, HONEST - 1));
    let evictions = audit
        .iter()
        .filter(|e| matches!(e, tessera_server::store::AuditEvent::Evicted { reason, .. } if reason == "bad_share_bundle"))
        .count();
    assert_eq!(evictions, 1, "{audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_for_every_neighbour_aborts_the_round_below_threshold_with_no_key_revealed() {
    // Garbage for every neighbour: every honest client accuses and sits
    // out, and too few inputs remain: the masked input stage closes below
    // the floor, so the round aborts before any key is asked for or any
    // share unmasked.
    let (bad, results, _) = round_with(Fault::GarbleBundles(HONEST), 30).await;
    assert!(
        bad.status.is_some() || bad.result.is_some(),
        "the bad client hears the end: {bad:?}"
    );
    nobody_blames_the_server(&results);
    for r in results {
        match r {
            Err(ClientError::RoundAborted {
                reason, evicted, ..
            }) => {
                assert_eq!(reason, Some(AbortReason::BelowThreshold));
                assert!(evicted.is_empty(), "{evicted:?}");
            }
            other => panic!("expected the abort, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbler_is_proven_by_its_asked_victim_and_evicted_and_the_round_sums_the_rest() {
    // t = 3 of 6 leaves the threshold slack for two exposed holders, so
    // the server asks the one victim (a default SDK client: no opt-in) for
    // its share key before telling anyone who survived; the key proves the
    // garbage, the garbler is evicted by name, and the round completes.
    // The garbler's masked input was already in the sum when the key came:
    // it stays there, unmasked like a dropout's, so the published model is
    // the mean of every input but the victim's.
    let seed = 40;
    let (bad, results, audit, model) = round_tweaked(Fault::GarbleBundles(1), seed, |c| {
        c.round.threshold = tessera_server::config::ThresholdRule::Count(3);
    })
    .await;
    let status = bad.status.expect("the garbler is told");
    assert_eq!(bad.kind, Some(ErrorKind::BadShares), "{status:?}");
    assert!(
        status
            .message()
            .contains("proved by revealing its share key"),
        "{status:?}"
    );
    nobody_blames_the_server(&results);
    let mut inputs = vec![update(DIM, seed)];
    let mut accusers = 0;
    for (i, r) in results.iter().enumerate() {
        match r {
            Err(ClientError::AccusedNeighbours {
                accused,
                revealed_key,
                ..
            }) => {
                accusers += 1;
                assert_eq!(accused.len(), 1);
                assert!(*revealed_key, "asked, the victim proved it");
            }
            Ok(outcome) => {
                inputs.push(update(DIM, seed + 1 + i as u64));
                assert_eq!(outcome.survivors, HONEST as u32, "{outcome:?}");
                assert_eq!(outcome.evicted.len(), 1, "{:?}", outcome.evicted);
                assert_eq!(outcome.evicted[0].reason, "bad_share_bundle");
            }
            Err(e) => panic!("unexpected error for an honest client: {e}"),
        }
    }
    assert_eq!(accusers, 1);
    let model = model.expect("the round published");
    let expected = mean(&inputs);
    let diff = model
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff <= 1.0 / 65536.0 + 1e-6, "model off the sum by {diff}");
    // The operator's record names the garbler with the proof, and no key.
    let evicted: Vec<_> = audit
        .iter()
        .filter_map(|e| match e {
            tessera_server::store::AuditEvent::Evicted { reason, proof, .. } => {
                Some((reason.as_str(), proof.clone().unwrap_or_default()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(evicted.len(), 1, "{audit:?}");
    assert_eq!(evicted[0].0, "bad_share_bundle");
    assert!(
        evicted[0].1.contains("proved by revealing its share key"),
        "{evicted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unasked_share_keys_evicts_its_sender_once() {
    // A client sends its masked input, then share keys nobody asked for,
    // over and over. The first evicts it; the rest come from a client
    // already out of the round and are nobody's eviction: the round
    // result every honest client receives, the audit log and the eviction
    // metric each name it once (otherwise one client could grow the
    // result past what a client will decode, and fill the audit log).
    let (bad, results, audit) = round_with(Fault::FloodShareKeys(200), 50).await;
    assert_eq!(bad.kind, Some(ErrorKind::BadAccusation), "{bad:?}");
    nobody_blames_the_server(&results);
    for r in results {
        let outcome = r.expect("honest clients complete");
        assert_eq!(outcome.survivors, HONEST as u32 + 1, "{outcome:?}");
        assert_eq!(outcome.evicted.len(), 1, "{:?}", outcome.evicted);
        assert_eq!(outcome.evicted[0].reason, "bad_accusation");
    }
    let evictions = audit
        .iter()
        .filter(|e| matches!(e, tessera_server::store::AuditEvent::Evicted { .. }))
        .count();
    assert_eq!(evictions, 1, "{audit:?}");
}
