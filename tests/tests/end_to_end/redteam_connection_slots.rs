//! Red team: holding connection-cap slots with connections that have
//! nothing live (the "still open" item of the review of the `NOT_ELIGIBLE`
//! fix).
//!
//! A refusal ended the gRPC stream, not the connection, and a connection
//! was kept as long as it answered HTTP/2 keepalive pings. So a client
//! refused at the door (a bad token here; `NOT_ELIGIBLE` and
//! `PERMISSION_DENIED` end the same way), or anyone who completes the TLS
//! handshake and sends one request, could keep its connection, and a few
//! of them held every slot under `max_connections`. The SDK drops its
//! connection after each call; an attacker need not.
//!
//! Each attacker here keeps its connection open the way a hostile client
//! would: a tonic channel that stays alive (answering pings), or raw
//! HTTP/2. Each channel dials the server through a one-connection TCP
//! relay, so the test sees the moment the server closes the attacker's
//! connection, and the channel cannot quietly reconnect. The server now
//! closes a connection `REFUSED_LINGER` (2 s) after a refusal however often
//! the refusal is repeated, one that never showed credentials (no client
//! admitted, no OK GetModel) `preface_timeout` after its first request, and
//! one with no live client (one the service admitted to the lobby or a
//! round) for `idle_timeout`; a client waiting in the lobby is live. One
//! token holds at most four connections (`MAX_CONNECTIONS_PER_CLIENT`).

use std::time::{Duration, Instant};

use tessera_client::RetryPolicy;
use tessera_proto::v1::{self, aggregator_client::AggregatorClient};
use tessera_server::ServerConfig;
use tessera_tests::{
    ScriptedClient, ServerOptions, TestServer, endpoint_via, get_model_with, relay,
    unanswered_call, update,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The server's linger after a refusal (`listener::activity::REFUSED_LINGER`).
const LINGER: Duration = Duration::from_secs(2);
/// The idle timeout the idle tests run the server with: short, so the
/// tests stay short.
const IDLE: Duration = Duration::from_millis(1000);
/// Scheduling slack on a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(3);

/// A TLS channel to the server through the relay on `port`, connected.
async fn channel_via(ts: &TestServer, port: u16) -> Channel {
    endpoint_via(ts, port)
        .connect()
        .await
        .expect("connect through the relay")
}

/// How long `closed` took to report the server's close, counted from
/// `since`; `None` if the connection was still open after `limit`.
async fn closed_after(
    closed: &mut JoinHandle<Instant>,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    tokio::time::timeout(limit, closed)
        .await
        .ok()
        .map(|at| at.unwrap().saturating_duration_since(since))
}

fn tls_cap(config: &mut ServerConfig) {
    config.network.max_connections = Some(3);
}

fn tls_cap_short_idle(config: &mut ServerConfig) {
    config.network.max_connections = Some(3);
    config.network.idle_timeout = IDLE;
}

fn short_idle(config: &mut ServerConfig) {
    config.network.idle_timeout = IDLE;
}

/// [`short_idle`], and a preface timeout as short: a connection that never
/// shows credentials is closed a preface timeout after its first request
/// (since the session review), not an idle timeout.
fn short_idle_and_preface(config: &mut ServerConfig) {
    config.network.idle_timeout = IDLE;
    config.network.preface_timeout = IDLE;
}

/// A Participate with a token the server does not know: refused
/// `UNAUTHENTICATED` on the channel, which the caller keeps.
async fn refused_participate(channel: &Channel) {
    let mut bad = ScriptedClient::new(update(10, 1), 1);
    bad.token = Some("tsk_not-a-token-of-this-server".to_owned());
    let outcome = bad.run(channel.clone()).await;
    let status = outcome.status.expect("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
}

/// Three refused clients hold every slot of a cap of three, keeping their
/// connections and sending the refused Participate again every 500 ms (so
/// that a deadline counted from the last request would never pass). Each
/// connection is closed about REFUSED_LINGER after its first refusal, long
/// before the 60 s idle timeout, and an honest client then gets a slot.
/// Before the fix the attackers' connections stayed open for as long as
/// they answered pings, and the honest client was refused at the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_refused_clients_that_keep_their_connections_lose_their_cap_slots() {
    let ts = TestServer::start(ServerOptions {
        min_clients: 3,
        tls_tokens: Some(3),
        tweak: tls_cap,
        ..ServerOptions::default()
    })
    .await;
    let mut attackers = Vec::new();
    for _ in 0..3 {
        let (port, closed) = relay(ts.server.local_addr()).await;
        let channel = channel_via(&ts, port).await;
        refused_participate(&channel).await;
        let first_refusal = Instant::now();
        // Refused again and again on the same connection while it lasts.
        let again = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut bad = ScriptedClient::new(update(10, 1), 1);
                bad.token = Some("tsk_not-a-token-of-this-server".to_owned());
                // Unavailable once the relay is gone: the channel is kept.
                let _ = bad.run(channel.clone()).await;
            }
        });
        attackers.push((first_refusal, closed, again));
    }
    for (i, (first_refusal, closed, again)) in attackers.iter_mut().enumerate() {
        let took = closed_after(closed, *first_refusal, LINGER + SLACK)
            .await
            .unwrap_or_else(|| panic!("attacker {i} still holds its slot"));
        assert!(
            took >= LINGER - Duration::from_millis(100),
            "attacker {i} closed {took:?} after its refusal: before the linger"
        );
        again.abort();
    }
    // Every slot is free again: an honest client that does not retry gets
    // in at once.
    let honest = ts
        .client_builder(Some(0))
        .retry(RetryPolicy::NONE)
        .build()
        .unwrap();
    honest
        .latest_model()
        .await
        .expect("an honest client gets a slot");
}

/// The passive holder: a client with a valid token fetches the model once
/// and then keeps its connection, answering pings. It is closed about
/// `idle_timeout` after the response, and its slot goes to an honest
/// client; before the fix it was kept for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_connection_that_fetched_the_model_and_idles_is_closed_after_the_idle_timeout() {
    let ts = TestServer::start(ServerOptions {
        min_clients: 3,
        tls_tokens: Some(3),
        tweak: tls_cap_short_idle,
        ..ServerOptions::default()
    })
    .await;
    let mut holders = Vec::new();
    for i in 0..3 {
        let (port, closed) = relay(ts.server.local_addr()).await;
        let channel = channel_via(&ts, port).await;
        let mut request = tonic::Request::new(v1::GetModelRequest { version: 0 });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", ts.tokens[i]).parse().unwrap(),
        );
        AggregatorClient::new(channel.clone())
            .get_model(request)
            .await
            .expect("GetModel with a valid token");
        holders.push((Instant::now(), closed, channel));
    }
    for (i, (answered, closed, _channel)) in holders.iter_mut().enumerate() {
        let took = closed_after(closed, *answered, IDLE + SLACK)
            .await
            .unwrap_or_else(|| panic!("holder {i} still holds its slot"));
        assert!(
            took >= IDLE / 2,
            "holder {i} closed {took:?} after its response: before the idle timeout"
        );
    }
    let honest = ts
        .client_builder(Some(0))
        .retry(RetryPolicy::NONE)
        .build()
        .unwrap();
    honest
        .latest_model()
        .await
        .expect("an honest client gets a slot");
}

/// No false positive: two clients wait in the lobby for three idle
/// timeouts (a round needs three), on connections the test watches; their
/// Participate streams are live, so the connections stay, and the round
/// completes when the third client comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_waiting_in_the_lobby_keep_their_connections_past_the_idle_timeout() {
    let dim = 10;
    let ts = TestServer::start(ServerOptions {
        dim,
        min_clients: 3,
        tls_tokens: Some(3),
        tweak: short_idle,
        ..ServerOptions::default()
    })
    .await;
    let mut waiting = Vec::new();
    for i in 0..2 {
        let (port, closed) = relay(ts.server.local_addr()).await;
        let channel = channel_via(&ts, port).await;
        let mut client = ScriptedClient::new(update(dim, i), i);
        client.token = Some(ts.tokens[i as usize].clone());
        waiting.push((tokio::spawn(client.run(channel)), closed));
    }
    tokio::time::sleep(IDLE * 3).await;
    for (i, (_, closed)) in waiting.iter().enumerate() {
        assert!(!closed.is_finished(), "client {i} was cut while waiting");
    }
    let third = ts
        .client(Some(2))
        .participate(&update(dim, 2))
        .await
        .expect("the third client completes the round");
    assert_eq!(third.survivors, 3);
    for (i, (run, _)) in waiting.into_iter().enumerate() {
        let outcome = run.await.unwrap();
        assert!(outcome.result.is_some(), "client {i}: {outcome:?}");
    }
}

/// A health `Watch` stream is open to anyone and never ends; it does not
/// keep a connection (only a client the service admitted does), nor
/// credit it. Closed about `preface_timeout` after it started (set to the
/// idle timeout here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_health_watch_does_not_hold_a_connection() {
    let ts = TestServer::start(ServerOptions {
        min_clients: 3,
        tls_tokens: Some(3),
        tweak: short_idle_and_preface,
        ..ServerOptions::default()
    })
    .await;
    let (port, mut closed) = relay(ts.server.local_addr()).await;
    let channel = channel_via(&ts, port).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let started = Instant::now();
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("anyone may watch")
        .into_inner();
    assert!(watch.message().await.expect("a status").is_some());
    let took = closed_after(&mut closed, started, IDLE + SLACK)
        .await
        .expect("a health watcher held its connection");
    assert!(took >= IDLE / 2, "closed after {took:?}");
}

/// A request that reaches the service but never gets an answer (its body
/// never comes) is not live: nothing before a response counts, as nothing
/// before the handler is authenticated. The connection, never credited,
/// is closed about `preface_timeout` after its request (set to the idle
/// timeout here), where counting the request from its arrival would have
/// let it hold the slot for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_request_whose_body_never_comes_does_not_hold_a_connection() {
    let ts = TestServer::start(ServerOptions {
        min_clients: 3,
        tweak: short_idle_and_preface,
        ..ServerOptions::default()
    })
    .await;
    let mut attacker = TcpStream::connect(ts.server.local_addr()).await.unwrap();
    attacker
        .write_all(&unanswered_call("/tessera.v1.Aggregator/GetModel"))
        .await
        .unwrap();
    let sent = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(IDLE + SLACK, async {
        // The server's SETTINGS and its ACK of ours, then the close.
        while !matches!(attacker.read(&mut buf).await, Ok(0) | Err(_)) {}
    })
    .await;
    let took = sent.elapsed();
    assert!(closed.is_ok(), "the unfinished request held its connection");
    assert!(took >= IDLE / 2, "closed after {took:?}");
}

fn cap10(config: &mut ServerConfig) {
    config.network.max_connections = Some(10);
}

/// One token may hold at most four connections (each credited by an OK
/// GetModel, so each would otherwise be kept for the idle timeout, and
/// kept for ever by a model fetch every idle timeout): a fifth request
/// with it on a fifth connection is refused `RESOURCE_EXHAUSTED`, and that
/// connection closes after the refusal linger. Another token is not
/// affected, and once one of the four closes the token may open another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_holds_at_most_four_connections() {
    let ts = TestServer::start(ServerOptions {
        min_clients: 3,
        tls_tokens: Some(3),
        tweak: cap10,
        ..ServerOptions::default()
    })
    .await;
    let mut held = Vec::new();
    for i in 0..4 {
        let (port, closed) = relay(ts.server.local_addr()).await;
        let channel = channel_via(&ts, port).await;
        get_model_with(&channel, &ts.tokens[0], 0)
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e:?}"));
        held.push((closed, channel));
    }
    let (port, mut closed) = relay(ts.server.local_addr()).await;
    let fifth = channel_via(&ts, port).await;
    let refused = get_model_with(&fifth, &ts.tokens[0], 0)
        .await
        .expect_err("a fifth connection of one token");
    let at = Instant::now();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("connections"), "{refused:?}");
    closed_after(&mut closed, at, LINGER + SLACK)
        .await
        .expect("the refused connection is closed after the linger");
    // The four are still open, and another token is served.
    assert!(held.iter().all(|(closed, _)| !closed.is_finished()));
    let (port, _other_closed) = relay(ts.server.local_addr()).await;
    let other = channel_via(&ts, port).await;
    get_model_with(&other, &ts.tokens[1], 0)
        .await
        .expect("another token is not affected");
    // One of the four goes away: the token may open another connection.
    let (closed, channel) = held.remove(0);
    drop(channel);
    tokio::time::timeout(SLACK, closed)
        .await
        .expect("the dropped channel's connection closes")
        .unwrap();
    let started = Instant::now();
    loop {
        let (port, _closed) = relay(ts.server.local_addr()).await;
        let channel = channel_via(&ts, port).await;
        match get_model_with(&channel, &ts.tokens[0], 0).await {
            Ok(()) => break,
            // The server may not have seen the close yet.
            Err(e) if started.elapsed() < SLACK => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("a slot freed by a closed connection: {e:?}"),
        }
    }
}
