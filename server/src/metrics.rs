//! Prometheus metrics: round outcomes, stage latency and survivors, bytes,
//! dropouts and refused messages, so an operator can see how rounds go
//! without reading logs.
//!
//! The server calls the typed helpers below ([`round_started`],
//! [`stage_closed`], …). They go through the `metrics` facade: until
//! [`install_prometheus`] installs a recorder they do nothing, so tests and
//! embedders that never install one pay only a few instructions. No helper
//! takes anything secret; labels are stage names, abort reasons and message
//! kinds chosen by the server, never client data.

use std::net::SocketAddr;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// Counter: rounds the server opened.
pub(crate) const ROUNDS_STARTED: &str = "tessera_rounds_started_total";
/// Counter: rounds that published an aggregate.
pub(crate) const ROUNDS_COMPLETED: &str = "tessera_rounds_completed_total";
/// Counter, label [`LABEL_REASON`]: rounds that ended without an aggregate.
pub(crate) const ROUNDS_ABORTED: &str = "tessera_rounds_aborted_total";
/// Histogram, label [`LABEL_STAGE`]: seconds from a stage's start to its close.
pub(crate) const STAGE_SECONDS: &str = "tessera_stage_seconds";
/// Gauge, label [`LABEL_STAGE`]: clients still in the round when the stage
/// last closed.
pub(crate) const CLIENTS_PER_STAGE: &str = "tessera_clients_per_stage";
/// Counter: payload bytes received from clients.
pub(crate) const BYTES_RECEIVED: &str = "tessera_bytes_received_total";
/// Counter: payload bytes sent to clients.
pub(crate) const BYTES_SENT: &str = "tessera_bytes_sent_total";
/// Counter, label [`LABEL_STAGE`]: clients that dropped out during a stage.
pub(crate) const DROPOUTS: &str = "tessera_dropouts_total";
/// Counter, label [`LABEL_KIND`]: messages refused (late, malformed,
/// unauthenticated, …).
pub(crate) const REJECTED_MESSAGES: &str = "tessera_rejected_messages_total";
/// Gauge: clients connected and waiting for the next round.
pub(crate) const LOBBY_CLIENTS: &str = "tessera_lobby_clients";

/// Gauge: network connections the server holds open (both listeners).
pub(crate) const CONNECTIONS_OPEN: &str = "tessera_connections_open";
/// Counter, label [`LABEL_REASON`]: connections closed or refused before they
/// carried a request (cap reached, handshake timeout, accept error).
pub(crate) const CONNECTIONS_REFUSED: &str = "tessera_connections_refused_total";
/// Counter, label [`LABEL_OP`]: failed writes to the data directory.
pub(crate) const STORAGE_WRITE_ERRORS: &str = "tessera_storage_write_errors_total";
/// Counter, label [`LABEL_REASON`]: clients evicted from a round.
pub(crate) const EVICTIONS: &str = "tessera_evictions_total";

/// Label naming the protocol stage.
pub(crate) const LABEL_STAGE: &str = "stage";
/// Label naming why a round aborted.
pub(crate) const LABEL_REASON: &str = "reason";
/// Label naming the storage operation that failed (write, fsync, rename).
#[allow(dead_code)] // TODO(issue 13): called by the operations work; drop when it is
pub(crate) const LABEL_OP: &str = "op";
/// Label naming what kind of message was refused.
pub(crate) const LABEL_KIND: &str = "kind";

/// Bucket bounds (seconds) for [`STAGE_SECONDS`]: from a fast local stage to
/// a stage that waits out a ten-minute deadline for slow devices.
pub(crate) const STAGE_SECONDS_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Why the Prometheus exporter could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The listener could not bind.
    #[error("cannot listen for Prometheus scrapes on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why the bind failed.
        source: std::io::Error,
    },
    /// A recorder was already installed, or no thread could serve scrapes.
    #[error("cannot start the Prometheus exporter on {addr}: {source}")]
    Install {
        /// The address asked for.
        addr: SocketAddr,
        /// What the exporter reported.
        source: BuildError,
    },
}

/// Installs the process-wide Prometheus recorder and serves it over HTTP on
/// `addr` (any path, conventionally `/metrics`); returns the bound address,
/// with the real port when `addr` asked for port 0.
///
/// Binds before returning, so a busy port is reported here. Works inside a
/// tokio runtime (the endpoint runs as a task on it) or outside one (it gets
/// its own thread). Only one recorder can exist per process: a second call
/// fails.
pub(crate) fn install_prometheus(addr: SocketAddr) -> Result<SocketAddr, MetricsError> {
    let bind_err = |source| MetricsError::Bind { addr, source };
    // The exporter's own listener does not say which port it bound, so the
    // endpoint binds here and serves the recorder's handle itself.
    let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(STAGE_SECONDS.to_owned()),
            STAGE_SECONDS_BUCKETS,
        )
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|source| MetricsError::Install { addr, source })?;
    describe();
    let serve = async move {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => endpoint::serve(listener, handle).await,
            Err(e) => tracing::error!("metrics endpoint {bound} stopped: {e}"),
        }
    };
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(serve);
    } else {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| MetricsError::Install {
                addr,
                source: BuildError::FailedToCreateRuntime(e.to_string()),
            })?;
        std::thread::Builder::new()
            .name("tessera-metrics".into())
            .spawn(move || runtime.block_on(serve))
            .map_err(|e| MetricsError::Install {
                addr,
                source: BuildError::FailedToCreateRuntime(e.to_string()),
            })?;
    }
    tracing::info!("metrics at http://{bound}/metrics");
    Ok(bound)
}

/// The scrape endpoint: a minimal HTTP/1.1 responder that answers every
/// request with the current exposition and closes the connection.
mod endpoint {
    use std::time::Duration;

    use metrics_exporter_prometheus::PrometheusHandle;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    /// How long a scraper may take to send its request head.
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    /// The largest request head read; a scrape's is a few hundred bytes.
    const MAX_REQUEST: usize = 16 * 1024;
    /// How often histogram buckets are rotated (the exporter's default).
    const UPKEEP: Duration = Duration::from_secs(5);

    /// Serves scrapes until the runtime stops.
    pub(super) async fn serve(listener: TcpListener, handle: PrometheusHandle) {
        let upkeep = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(UPKEEP).await;
                upkeep.run_upkeep();
            }
        });
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, handle.clone()));
                }
                Err(e) => {
                    // Out of descriptors, typically: wait rather than spin.
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Reads one request head and writes the exposition.
    async fn answer(mut stream: TcpStream, handle: PrometheusHandle) {
        let mut head = Vec::with_capacity(512);
        let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            std::io::Result::Ok(())
        })
        .await;
        if !matches!(read, Ok(Ok(()))) || head.is_empty() {
            return;
        }
        let body = handle.render();
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }
}

/// Registers the HELP text of every metric with the installed recorder.
fn describe() {
    describe_counter!(ROUNDS_STARTED, "Rounds the server opened.");
    describe_counter!(ROUNDS_COMPLETED, "Rounds that published an aggregate.");
    describe_counter!(
        ROUNDS_ABORTED,
        "Rounds that ended without an aggregate, by reason."
    );
    describe_histogram!(
        STAGE_SECONDS,
        metrics::Unit::Seconds,
        "Time from a stage's start to its close, by stage."
    );
    describe_gauge!(
        CLIENTS_PER_STAGE,
        "Clients still in the round when the stage last closed, by stage."
    );
    describe_counter!(
        BYTES_RECEIVED,
        metrics::Unit::Bytes,
        "Payload bytes received from clients."
    );
    describe_counter!(
        BYTES_SENT,
        metrics::Unit::Bytes,
        "Payload bytes sent to clients."
    );
    describe_counter!(
        DROPOUTS,
        "Clients that dropped out during a stage, by stage."
    );
    describe_counter!(REJECTED_MESSAGES, "Messages refused, by kind.");
    describe_gauge!(
        LOBBY_CLIENTS,
        "Clients connected and waiting for the next round."
    );
    describe_gauge!(CONNECTIONS_OPEN, "Network connections held open.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed or refused before serving a request, by reason."
    );
    describe_counter!(
        STORAGE_WRITE_ERRORS,
        "Failed writes to the data directory, by operation."
    );
    describe_counter!(EVICTIONS, "Clients evicted from a round, by reason.");
}

/// Records that a round opened.
pub(crate) fn round_started() {
    counter!(ROUNDS_STARTED).increment(1);
}

/// Records that a round published its aggregate.
pub(crate) fn round_completed() {
    counter!(ROUNDS_COMPLETED).increment(1);
}

/// Records that a round ended without an aggregate. `reason` should come from
/// a small fixed set (e.g. "too_few_clients", "deadline") to keep the number
/// of series bounded.
pub(crate) fn round_aborted(reason: &str) {
    counter!(ROUNDS_ABORTED, LABEL_REASON => reason.to_owned()).increment(1);
}

/// Records a stage's close: how long it took, how many clients are still in
/// the round, and how many dropped out during it.
pub(crate) fn stage_closed(stage: &str, seconds: f64, survivors: u32, dropped: u32) {
    histogram!(STAGE_SECONDS, LABEL_STAGE => stage.to_owned()).record(seconds);
    gauge!(CLIENTS_PER_STAGE, LABEL_STAGE => stage.to_owned()).set(f64::from(survivors));
    counter!(DROPOUTS, LABEL_STAGE => stage.to_owned()).increment(u64::from(dropped));
}

/// Adds to the bytes received from clients.
pub(crate) fn bytes_received(n: u64) {
    counter!(BYTES_RECEIVED).increment(n);
}

/// Adds to the bytes sent to clients.
pub(crate) fn bytes_sent(n: u64) {
    counter!(BYTES_SENT).increment(n);
}

/// Records a refused message. `kind` should come from a small fixed set (e.g.
/// "late", "malformed", "unauthenticated").
pub(crate) fn message_rejected(kind: &str) {
    counter!(REJECTED_MESSAGES, LABEL_KIND => kind.to_owned()).increment(1);
}

/// Sets the number of clients waiting in the lobby.
pub(crate) fn lobby(n: u32) {
    gauge!(LOBBY_CLIENTS).set(f64::from(n));
}

/// Records that a connection was admitted (pair with [`connection_closed`]).
#[allow(dead_code)] // TODO(issue 13): called by the operations work; drop when it is
pub(crate) fn connection_opened() {
    gauge!(CONNECTIONS_OPEN).increment(1.0);
}

/// Records that an admitted connection closed.
#[allow(dead_code)] // TODO(issue 13): called by the operations work; drop when it is
pub(crate) fn connection_closed() {
    gauge!(CONNECTIONS_OPEN).decrement(1.0);
}

/// Records a connection refused or closed before serving a request. `reason`
/// comes from a small fixed set ("cap", "tls_handshake_timeout",
/// "preface_timeout", "accept_error").
#[allow(dead_code)] // TODO(issue 13): called by the operations work; drop when it is
pub(crate) fn connection_refused(reason: &'static str) {
    counter!(CONNECTIONS_REFUSED, LABEL_REASON => reason).increment(1);
}

/// Records a failed write to the data directory. `op` is "write", "fsync",
/// "rename" or "remove".
#[allow(dead_code)] // TODO(issue 13): called by the operations work; drop when it is
pub(crate) fn storage_write_failed(op: &'static str) {
    counter!(STORAGE_WRITE_ERRORS, LABEL_OP => op).increment(1);
}

/// Records a client evicted from a round. `reason` comes from a small fixed
/// set (e.g. "invalid_advert", "bad_share_bundle", "false_accusation",
/// "malformed").
pub(crate) fn client_evicted(reason: &'static str) {
    counter!(EVICTIONS, LABEL_REASON => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::time::Duration;

    fn scrape(addr: SocketAddr) -> String {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).unwrap();
        body
    }

    fn line_value(body: &str, series: &str) -> Option<f64> {
        body.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// The only test in the crate that installs the global recorder.
    #[test]
    fn prometheus_endpoint_serves_recorded_metrics() {
        // Port 0: the returned address is the one bound.
        let addr = install_prometheus((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        assert_ne!(addr.port(), 0);
        let again = install_prometheus(addr).unwrap_err();
        assert!(again.to_string().contains(&addr.to_string()), "{again}");
        let free = {
            let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            probe.local_addr().unwrap()
        };
        let twice = install_prometheus(free).unwrap_err();
        assert!(
            matches!(twice, MetricsError::Install { .. }),
            "a second recorder is refused: {twice}"
        );

        round_started();
        round_started();
        round_completed();
        round_aborted("too_few_clients");
        stage_closed("share_keys", 0.3, 9, 1);
        stage_closed("masked_input", 12.0, 7, 2);
        bytes_received(1000);
        bytes_received(24);
        bytes_sent(512);
        message_rejected("late");
        lobby(5);
        connection_opened();
        connection_opened();
        connection_closed();
        connection_refused("cap");
        storage_write_failed("rename");
        client_evicted("invalid_advert");

        let body = scrape(addr);
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        let expect = [
            ("tessera_rounds_started_total", 2.0),
            ("tessera_rounds_completed_total", 1.0),
            (
                "tessera_rounds_aborted_total{reason=\"too_few_clients\"}",
                1.0,
            ),
            ("tessera_clients_per_stage{stage=\"share_keys\"}", 9.0),
            ("tessera_clients_per_stage{stage=\"masked_input\"}", 7.0),
            ("tessera_dropouts_total{stage=\"share_keys\"}", 1.0),
            ("tessera_dropouts_total{stage=\"masked_input\"}", 2.0),
            ("tessera_bytes_received_total", 1024.0),
            ("tessera_bytes_sent_total", 512.0),
            ("tessera_rejected_messages_total{kind=\"late\"}", 1.0),
            ("tessera_lobby_clients", 5.0),
            ("tessera_connections_open", 1.0),
            ("tessera_connections_refused_total{reason=\"cap\"}", 1.0),
            ("tessera_storage_write_errors_total{op=\"rename\"}", 1.0),
            ("tessera_evictions_total{reason=\"invalid_advert\"}", 1.0),
            (
                "tessera_stage_seconds_bucket{stage=\"share_keys\",le=\"0.5\"}",
                1.0,
            ),
            (
                "tessera_stage_seconds_bucket{stage=\"masked_input\",le=\"10\"}",
                0.0,
            ),
            (
                "tessera_stage_seconds_bucket{stage=\"masked_input\",le=\"30\"}",
                1.0,
            ),
            ("tessera_stage_seconds_sum{stage=\"masked_input\"}", 12.0),
            ("tessera_stage_seconds_count{stage=\"share_keys\"}", 1.0),
        ];
        for (series, value) in expect {
            assert_eq!(
                line_value(&body, series),
                Some(value),
                "{series} in:\n{body}"
            );
        }
        assert!(body.contains("# HELP tessera_lobby_clients"), "{body}");
    }
}
