//! Connections an attacker opens and never uses, and tokens an operator
//! takes back: idle sockets, a dripped HTTP/2 preface and a stalled TLS
//! handshake are closed within their deadlines, a connection over the cap
//! is closed at once, honest clients still finish a round while the cap is
//! full of idle attackers, and a token removed from the tokens file or past
//! its expiry is refused without a restart.

use std::time::{Duration, Instant};

use tessera_client::ClientError;
use tessera_server::ServerConfig;
use tessera_server::auth;
use tessera_tests::{ServerOptions, TestServer, update};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The deadlines these tests run the server with: small, so the tests stay
/// short.
const DEADLINE: Duration = Duration::from_millis(400);
/// Scheduling slack on a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(3);

fn tight_deadlines(config: &mut ServerConfig) {
    config.network.preface_timeout = DEADLINE;
    config.network.tls_handshake_timeout = DEADLINE;
}

fn tight_deadlines_and_cap(config: &mut ServerConfig) {
    tight_deadlines(config);
    config.network.max_connections = Some(6);
}

fn addr(ts: &TestServer) -> std::net::SocketAddr {
    ts.server.local_addr()
}

/// Reads (and discards what the server sends, such as its HTTP/2
/// SETTINGS) until the server closes the connection; how long that took,
/// or `None` if it was still open after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|()| start.elapsed())
}

/// An attacker that sends the HTTP/2 preface one byte every 50 ms, then
/// zero bytes forever: each byte arrives well within any per-read timeout.
fn drip(stream: TcpStream) -> tokio::net::tcp::OwnedReadHalf {
    let (read, mut write) = stream.into_split();
    tokio::spawn(async move {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        for byte in preface.iter().chain(std::iter::repeat(&0u8)) {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_and_a_dripped_preface_are_closed_within_the_preface_timeout() {
    let ts = TestServer::start(ServerOptions {
        min_clients: 3,
        tweak: tight_deadlines,
        ..ServerOptions::default()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(TcpStream::connect(addr(&ts)).await.unwrap());
    }
    let mut dripping = drip(TcpStream::connect(addr(&ts)).await.unwrap());
    for (i, socket) in idle.iter_mut().enumerate() {
        let took = closed_within(socket, DEADLINE + SLACK).await;
        assert!(took.is_some(), "idle socket {i} still open");
    }
    let start = Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(DEADLINE + SLACK, async {
        while !matches!(dripping.read(&mut buf).await, Ok(0) | Err(_)) {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "the dripping client was still connected after {:?}",
        start.elapsed()
    );

    // An honest client right after is served.
    ts.client(None).latest_model().await.expect("GetModel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_is_closed_within_the_handshake_timeout() {
    let ts = TestServer::start(ServerOptions {
        min_clients: 3,
        tls_tokens: Some(3),
        tweak: tight_deadlines,
        ..ServerOptions::default()
    })
    .await;
    let mut silent = TcpStream::connect(addr(&ts)).await.unwrap();
    // A TLS record header announcing a ClientHello that never comes.
    let mut partial = TcpStream::connect(addr(&ts)).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    for (what, socket) in [("silent", &mut silent), ("partial hello", &mut partial)] {
        let took = closed_within(socket, DEADLINE + SLACK).await;
        assert!(took.is_some(), "{what}: the handshake was never cut");
    }
    ts.client(Some(0))
        .latest_model()
        .await
        .expect("GetModel over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_clients_finish_a_round_while_idle_attackers_fill_the_connection_cap() {
    let dim = 50;
    let ts = TestServer::start(ServerOptions {
        dim,
        min_clients: 3,
        tls_tokens: Some(3),
        tweak: tight_deadlines_and_cap,
        ..ServerOptions::default()
    })
    .await;
    // Six idle attackers hold every slot.
    let mut attackers = Vec::new();
    for _ in 0..6 {
        attackers.push(TcpStream::connect(addr(&ts)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // One more is closed at once, long before any deadline.
    let mut over = TcpStream::connect(addr(&ts)).await.unwrap();
    let took = closed_within(&mut over, DEADLINE / 2)
        .await
        .expect("a connection over the cap is closed at once");
    assert!(took < DEADLINE / 2, "{took:?}");

    // Honest clients dial while the cap is full; the deadlines free the
    // attackers' slots and the clients' retries get in.
    let start = Instant::now();
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            let client = ts.client(Some(i));
            let u = update(dim, i as u64);
            tokio::spawn(async move { client.participate(&u).await })
        })
        .collect();
    for task in tasks {
        let outcome = task.await.unwrap().expect("the honest client completes");
        assert_eq!(outcome.survivors, 3);
    }
    assert!(start.elapsed() < Duration::from_secs(60));
    for socket in &mut attackers {
        assert!(closed_within(socket, SLACK).await.is_some());
    }
}

/// A tokens file with clients `client-0..3` (tokens returned), the last
/// one expired.
fn tokens_with_an_expired_one(path: &std::path::Path) -> Vec<String> {
    use rand::SeedableRng as _;
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let past = auth::Expiry::parse("2001-01-01T00:00:00Z").unwrap();
    let future = auth::Expiry::after(std::time::SystemTime::now(), Duration::from_secs(3600));
    let mut tokens = Vec::new();
    for (i, expires) in [None, Some(future), None, Some(past)]
        .into_iter()
        .enumerate()
    {
        let token = auth::generate_token(&mut rng);
        auth::append_token_expiring(path, &format!("client-{i}"), &token, expires).unwrap();
        tokens.push(token.expose().to_owned());
    }
    tokens
}

fn client_with(ts: &TestServer, token: &str) -> tessera_client::Client {
    tessera_client::Client::builder(ts.url.clone())
        .tls_ca_pem(ts.ca_pem.clone().unwrap())
        .token(token.to_owned())
        .retry(tessera_client::RetryPolicy::NONE)
        .build()
        .unwrap()
}

fn refusal(result: Result<tessera_client::GlobalModel, ClientError>) -> String {
    match result {
        Ok(_) => panic!("the token was accepted"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_after_a_reload_and_an_expired_one_always() {
    let ts = TestServer::start(ServerOptions {
        min_clients: 3,
        tls_tokens: Some(1),
        ..ServerOptions::default()
    })
    .await;
    let path = ts.data_dir().parent().unwrap().join("tokens.txt");
    std::fs::remove_file(&path).unwrap();
    let tokens = tokens_with_an_expired_one(&path);
    let control = ts.server.control();
    let reload = control.reload_tokens().unwrap().unwrap();
    assert_eq!(reload.clients, 4);

    // An expired token: a clear refusal that does not echo the token.
    let expired = refusal(client_with(&ts, &tokens[3]).latest_model().await);
    assert!(
        expired.contains("expired at 2001-01-01T00:00:00Z"),
        "{expired}"
    );
    assert!(!expired.contains(&tokens[3]), "{expired}");
    // A token that expires later works.
    client_with(&ts, &tokens[1]).latest_model().await.unwrap();

    // Revoke client-0: delete its line and reload.
    client_with(&ts, &tokens[0]).latest_model().await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with("client-0 "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, kept).unwrap();
    let reload = control.reload_tokens().unwrap().unwrap();
    assert_eq!(reload.removed, ["client-0"]);
    let revoked = refusal(client_with(&ts, &tokens[0]).latest_model().await);
    assert!(revoked.contains("not valid"), "{revoked}");
    assert!(!revoked.contains(&tokens[0]), "{revoked}");

    // A broken file keeps the tokens in force and says why.
    std::fs::write(&path, "client-1 sha256:nothex\n").unwrap();
    let err = control.reload_tokens().unwrap_err().to_string();
    assert!(err.contains("line 1"), "{err}");
    client_with(&ts, &tokens[2]).latest_model().await.unwrap();
    assert!(refusal(client_with(&ts, &tokens[0]).latest_model().await).contains("not valid"));

    // The audit log records each reload that took effect (two), not the
    // broken one.
    let audit = ts.audit();
    let reloads = audit
        .iter()
        .filter(|e| matches!(e, tessera_server::store::AuditEvent::TokensReloaded { .. }))
        .count();
    assert_eq!(reloads, 2, "{audit:?}");
}
