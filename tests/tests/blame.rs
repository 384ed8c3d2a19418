//! One bad client over real gRPC: it is evicted, named, and told what it
//! did; the honest clients finish the round (or, past the threshold's
//! margin, learn that it aborted and who caused it), and none of them is
//! blamed or blames the server.

use tessera_aggregation::messages::AbortReason;
use tessera_client::ClientError;
use tessera_proto::v1::ErrorKind;
use tessera_tests::{Fault, ScriptedClient, ServerOptions, TestServer, update};
use tonic::Code;

const DIM: u32 = 40;
const HONEST: usize = 5;

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
    let ts = TestServer::start(ServerOptions {
        dim: DIM,
        min_clients: HONEST as u32 + 1,
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
    ts.server.shutdown().await.unwrap();
    (bad, results, audit)
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
async fn a_garbage_bundle_costs_only_its_victim_the_round_and_no_key_is_revealed() {
    // The victim cannot prove the garbage without revealing its share key,
    // which no client does by default (a colluding garbler could make many
    // honest clients hand the server more keys than the threshold's margin
    // tolerates): it names the sender and sits the round out; nobody is
    // evicted, and the round completes for everyone else.
    let (bad, results, audit) = round_with(Fault::GarbleBundles(1), 20).await;
    assert!(
        bad.result.is_some(),
        "the bad client hears the end: {bad:?}"
    );
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
                assert!(!*revealed_key, "no share key leaves a client");
            }
            Ok(outcome) => {
                completed += 1;
                assert_eq!(outcome.survivors, HONEST as u32, "{outcome:?}");
                assert!(outcome.evicted.is_empty(), "{:?}", outcome.evicted);
            }
            Err(e) => panic!("unexpected error for an honest client: {e}"),
        }
    }
    assert_eq!((accusers, completed), (1, HONEST - 1));
    assert!(
        !audit
            .iter()
            .any(|e| matches!(e, tessera_server::store::AuditEvent::Evicted { .. })),
        "{audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_for_every_neighbour_aborts_the_round_below_threshold_with_no_key_revealed() {
    // Garbage for every neighbour: every honest client accuses and sits
    // out, no key is revealed, and too few inputs remain: the round aborts
    // before any unmasking.
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
