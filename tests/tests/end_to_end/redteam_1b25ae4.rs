//! Red team: review of 1b25ae4 ("Connection deadlines are checked on
//! writes too; an authenticated challenged Join credits its connection;
//! the SDK retries the per-client connection limit").
//!
//! Each test here failed on 1b25ae4 and passes with its fix: the refusal
//! linger counts from when the connection's last live client ended, and a
//! challenged Join keeps its connection open until the proof's own
//! deadline (the stage timeout), whatever the idle timeout. Each says what
//! it attacks and what the fix makes true.

use std::time::Duration;

use tessera_proto::PROTOCOL_VERSION;
use tessera_proto::v1::{self, aggregator_client::AggregatorClient, client_frame, server_frame};
use tessera_server::ServerConfig;
use tessera_tests::{
    ServerOptions, TestServer, endpoint_via, get_model_with, join_and_prove_after, relay,
};
use tokio_stream::wrappers::ReceiverStream;

/// The preface (and so no-credit) timeout the tests run the server with.
const PREFACE: Duration = Duration::from_millis(1000);
/// Scheduling slack on a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(3);

/// An operator who keeps idle connections short (`idle_timeout_ms` below
/// the stage timeout): accepted by `validate`.
fn short_idle(config: &mut ServerConfig) {
    config.network.preface_timeout = PREFACE;
    config.network.idle_timeout = PREFACE;
}

/// LOW (honest client cut; the fix of the MEDIUM in f4d296b is partial).
/// 1b25ae4 credits the connection of an authenticated challenged Join so
/// that "its proof then has the stage deadline" (docs/operations.md). But
/// credit only swaps the no-credit deadline for the idle deadline
/// (`LiveSlot::credit` is `Activity::fetched`: idle clock restarted, not
/// live), so the proof really has `min(stage_timeout, idle_timeout)`. Any
/// configuration with `idle_timeout_ms` < `stage_timeout_ms` (neither is
/// checked against the other) cuts an honest proof that comes inside its
/// documented stage deadline, `reason="idle_timeout"`.
///
/// Fix: while a proof is pending, hold the connection on the proof's own
/// deadline (e.g. a guard that makes the connection live, or a per-slot
/// "pending until" instant that `Activity::deadline` honours, ended when
/// the proof task ends), or refuse `idle_timeout < stage_timeout` in
/// `ServerConfig::validate`, or document the min.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_an_identity_proof_within_the_stage_deadline_is_cut_by_the_idle_deadline() {
    let dim = 10;
    let ts = TestServer::start(ServerOptions {
        dim,
        min_clients: 3,
        tls_tokens: Some(3),
        identities: Some(3),
        // The proof's documented deadline.
        stage_timeout: Duration::from_secs(10),
        tweak: short_idle,
        ..ServerOptions::default()
    })
    .await;
    let (port, _closed) = relay(ts.server.local_addr()).await;
    let channel = endpoint_via(&ts, port).connect().await.unwrap();
    // 2.5 s: well inside the 10 s stage deadline the proof is given.
    let next = join_and_prove_after(&ts, channel, dim, PREFACE * 5 / 2, SLACK).await;
    assert!(
        matches!(
            next,
            Ok(Ok(Some(v1::ServerFrame {
                frame: Some(server_frame::Frame::Lobby(_)),
            })))
        ),
        "an honest client proved its identity {:?} after its Join, inside the 10 s stage \
         deadline the docs give the proof, and got {next:?} instead of the lobby (idle \
         timeout {PREFACE:?})",
        PREFACE * 5 / 2,
    );
}

/// LOW (honest non-SDK client cut; made deterministic by the write-side
/// check). gRPC clients other than this SDK (grpcio, grpc-go, grpcurl, a
/// tonic `Channel` kept by an app) reuse one connection for every call.
/// On such a connection, one refused call (here a GetModel of a version
/// not published yet, `NOT_FOUND`) sets `refused_since`, and only an OK
/// Aggregator response's trailers lift it. A Join made afterwards on the
/// same connection is admitted and waits in the lobby (live, so no
/// deadline). When the server stops, the lobby tells it "the server is
/// shutting down" (`UNAVAILABLE`, kind `UNAVAILABLE`) and drops its guard:
/// live falls to 0, the refusal deadline (`refused_since + 2 s`) is long
/// past, the reader is woken, and `Admitted::check` now fails the very
/// write of that status (and before it, the read): the client sees the
/// connection reset instead of its status, inside the server's graceful
/// close grace (3 s), i.e. before any cutoff. The same happens to the
/// final RoundResult/abort of a round on such a connection.
///
/// Fix: make the refusal linger count from when the connection last went
/// quiet (`max(refused_since, idle_since) + REFUSED_LINGER`, i.e. reset
/// `refused_since` when a live client ends), or let an admitted client
/// lift the refusal; and on a deadline, let the frames already queued be
/// flushed (fail reads, not writes, for a bounded flush time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_lobby_client_on_a_connection_once_refused_gets_a_reset_instead_of_the_shutdown_status()
 {
    let dim = 10;
    let ts = TestServer::start(ServerOptions {
        dim,
        min_clients: 3,
        tls_tokens: Some(3),
        ..ServerOptions::default()
    })
    .await;
    let (port, closed) = relay(ts.server.local_addr()).await;
    let channel = endpoint_via(&ts, port).connect().await.unwrap();
    // One refused call: a model version not published (yet).
    let refused = get_model_with(&channel, &ts.tokens[0], 999)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    // Then a Join on the same connection, admitted to the lobby.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::ClientFrame {
        frame: Some(client_frame::Frame::Join(v1::Join {
            protocol_version: PROTOCOL_VERSION,
            dim,
            identity_key: Vec::new(),
        })),
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", ts.tokens[0]).parse().unwrap(),
    );
    let mut inbound = AggregatorClient::new(channel)
        .participate(request)
        .await
        .expect("the Join is answered")
        .into_inner();
    let first = inbound.message().await;
    assert!(
        matches!(
            first,
            Ok(Some(v1::ServerFrame {
                frame: Some(server_frame::Frame::Lobby(_)),
            }))
        ),
        "expected the lobby: {first:?}"
    );
    // Past the refusal linger, still waiting in the lobby (live).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let closed_before_stop = closed.is_finished();
    let server = ts.server;
    let stopping = tokio::spawn(server.shutdown());
    let next = tokio::time::timeout(SLACK * 2, async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    let _ = stopping.await;
    let told = match &next {
        Ok(Err(status)) => tessera_proto::error_detail(status)
            .is_some_and(|d| d.kind() == v1::ErrorKind::Unavailable),
        _ => false,
    };
    assert!(
        told,
        "a client waiting in the lobby, on a connection that had one refused call earlier, \
         was not told the server is shutting down (UNAVAILABLE with its detail); it got \
         {next:?} (connection already closed before the stop: {closed_before_stop})"
    );
}
