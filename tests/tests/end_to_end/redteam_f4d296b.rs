//! Red team: review of f4d296b ("Connections are live only while the
//! service holds an admitted client; no credit, no idle timeout; at most 4
//! connections per principal").
//!
//! Each test here failed on f4d296b (and on 1e72b80, its tree at review
//! time) and passes with its fix: the listener checks its deadlines on
//! writes too, a challenged Join that authenticated credits its
//! connection, and the SDK retries the per-client connection limit like
//! the cap. Each says what it attacks and what the fix makes true.

use std::time::{Duration, Instant};

use tessera_client::{ClientError, RetryPolicy};
use tessera_proto::v1;
use tessera_server::ServerConfig;
use tessera_tests::{
    ServerOptions, TestServer, endpoint_via, get_model_with, join_and_prove_after, relay,
    unanswered_call,
};
use tokio::io::AsyncWriteExt as _;
use tokio::task::JoinHandle;

/// The preface (and so no-credit) timeout the tests run the server with.
const PREFACE: Duration = Duration::from_millis(1000);
/// Scheduling slack on a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(3);

fn cap3_short_preface(config: &mut ServerConfig) {
    config.network.max_connections = Some(3);
    config.network.preface_timeout = PREFACE;
    config.network.idle_timeout = PREFACE;
}

/// A party without credentials opens a plain connection with a tiny
/// receive buffer, sends one request's HEADERS, then PING frames without
/// end and never reads. The server's PONGs fill the socket; h2 then stops
/// reading (it reads a frame only once the last PONG is buffered), so the
/// listener's `Admitted::poll_read`, the only place its deadlines fire, is
/// never called again. Returns when the server's close makes a write fail.
async fn ping_flooder(server: std::net::SocketAddr) -> JoinHandle<Instant> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    stream
        .write_all(&unanswered_call("/grpc.health.v1.Health/Check"))
        .await
        .unwrap();
    let ping: [u8; 17] = [0, 0, 8, 0x6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let chunk = ping.repeat(256);
    tokio::spawn(async move {
        loop {
            if stream.write_all(&chunk).await.is_err() {
                return Instant::now();
            }
        }
    })
}

/// HIGH. The no-credit (and preface, and refusal) deadlines are checked
/// only when hyper reads the connection. A party without credentials that
/// makes the server write (PING floods: each PING is answered by a PONG)
/// and never reads stalls the server's writes; h2 then never reads again,
/// so no deadline fires, and hyper's keepalive timeout only queues a
/// GOAWAY that can never be flushed either. Three such sockets hold every
/// slot of a cap of three, with no credentials, well past the "about two
/// preface timeouts" the docs promise (here: past the 20 s + 20 s
/// keepalive too), and an honest client is shut out at the cap.
///
/// Fix: arm the deadlines outside the read path (a per-connection task or
/// a timer in `Admitted::poll_write`/`poll_flush` as well as `poll_read`,
/// failing writes once a deadline passed), so a connection whose writes
/// are stalled is closed all the same; and/or bound the write stall (a
/// write that makes no progress for N seconds fails the IO).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_ping_flood_that_never_reads_holds_a_slot_without_credentials() {
    let ts = TestServer::start(ServerOptions {
        min_clients: 3,
        tweak: cap3_short_preface,
        ..ServerOptions::default()
    })
    .await;
    let mut flooders = Vec::new();
    for _ in 0..3 {
        flooders.push(ping_flooder(ts.server.local_addr()).await);
    }
    let started = Instant::now();
    // About two preface timeouts, with slack: far inside the server's
    // keepalive interval and timeout (20 s + 20 s), so hyper's keepalive
    // cannot be what closes them.
    let limit = PREFACE * 2 + SLACK;
    let _ = tokio::time::timeout(limit, async {
        for flooder in &mut flooders {
            let _ = flooder.await;
        }
    })
    .await;
    let still_open = flooders.iter().filter(|f| !f.is_finished()).count();
    let honest = ts
        .client_builder(None)
        .retry(RetryPolicy::NONE)
        .build()
        .unwrap()
        .latest_model()
        .await;
    assert!(
        still_open == 0 && honest.is_ok(),
        "{still_open} PING flooders without credentials still held their slots {:?} after \
         their first request (preface timeout {PREFACE:?}); an honest client got: {:?}",
        started.elapsed(),
        honest.map(|m| m.version)
    );
}

fn enrolled_short_preface(config: &mut ServerConfig) {
    config.network.preface_timeout = PREFACE;
    config.network.idle_timeout = PREFACE * 4;
}

/// MEDIUM (honest client cut). Malicious-server rounds give the identity
/// proof the stage deadline (docs/operations.md: "proof of possession
/// after Join (malicious-server rounds): the stage deadline"), but the
/// connection of a challenged Join has no credit until the proof verifies,
/// so it is closed `preface_timeout` after its first request
/// (`reason="no_credit"`): a client whose proof takes longer than the
/// preface timeout (default 10 s, against a 30 s stage deadline: a slow
/// device, a signing key behind a user prompt or an HSM, a loaded client)
/// loses its connection although the server would have admitted it.
///
/// Fix: credit the connection when the challenged Join authenticated (the
/// token was checked; the per-principal cap bounds it), or give a pending
/// proof its deadline as the connection's, or make the proof deadline
/// `min(stage_timeout, preface_timeout)` and document it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_an_identity_proof_within_its_deadline_is_cut_by_the_no_credit_deadline() {
    use tessera_proto::v1::server_frame;

    let dim = 10;
    let ts = TestServer::start(ServerOptions {
        dim,
        min_clients: 3,
        tls_tokens: Some(3),
        identities: Some(3),
        // The proof's deadline.
        stage_timeout: Duration::from_secs(10),
        tweak: enrolled_short_preface,
        ..ServerOptions::default()
    })
    .await;
    let (port, _closed) = relay(ts.server.local_addr()).await;
    let channel = endpoint_via(&ts, port).connect().await.unwrap();
    // The proof takes 2.5 preface timeouts: well inside its 10 s deadline.
    let next = join_and_prove_after(&ts, channel, dim, PREFACE * 5 / 2, SLACK).await;
    assert!(
        matches!(
            next,
            Ok(Ok(Some(v1::ServerFrame {
                frame: Some(server_frame::Frame::Lobby(_)),
            })))
        ),
        "an honest client proved its identity {:?} after its Join, inside the {:?} proof \
         deadline, and got {next:?} instead of the lobby",
        PREFACE * 5 / 2,
        Duration::from_secs(10)
    );
}

fn cap10(config: &mut ServerConfig) {
    config.network.max_connections = Some(10);
}

/// LOW (honest client misled). The per-principal refusal is
/// `RESOURCE_EXHAUSTED` with error kind `UNAVAILABLE`, which the SDK's
/// `from_status` maps to `ClientError::ServerUnavailable`, documented as
/// "the server runs no more rounds (privacy budget spent, shutting
/// down)", and never retries; `tessera demo` (cli/src/demo/rounds.rs,
/// `client_outcome`) treats it as the server refusing rounds and ends the
/// run. A client whose four connections are still counted (a leaked token
/// used elsewhere, an app with a few concurrent calls, connections the
/// server has not yet seen close) is told the server has stopped.
///
/// Fix: a kind of its own (e.g. `TOO_MANY_CONNECTIONS`) mapped to an SDK
/// error that says so and is retried with backoff like `Unreachable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_the_sdk_reports_the_per_token_connection_limit_as_the_server_not_running_rounds() {
    let ts = TestServer::start(ServerOptions {
        min_clients: 3,
        tls_tokens: Some(3),
        tweak: cap10,
        ..ServerOptions::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let channel = ts.channel().await;
        get_model_with(&channel, &ts.tokens[0], 0).await.unwrap();
        held.push(channel);
    }
    let err = ts
        .client_builder(Some(0))
        .retry(RetryPolicy::NONE)
        .build()
        .unwrap()
        .latest_model()
        .await
        .expect_err("a fifth connection of the token is refused");
    assert!(
        !matches!(err, ClientError::ServerUnavailable(_)),
        "the SDK reports a per-token connection limit as the server not running rounds: {err}"
    );
    drop(held);
}
