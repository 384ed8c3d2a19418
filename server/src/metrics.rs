//! Prometheus metrics: round outcomes, stage latency and survivors, bytes,
//! dropouts and refused messages, reconstruction, connections, storage
//! errors and the privacy budget, so an operator can see how rounds go
//! without reading logs.
//!
//! Each metric answers one question an on-call engineer asks (its doc
//! comment and its HELP text say which); `deploy/grafana/tessera.json` draws
//! them and `deploy/prometheus/alerts.yml` alerts on them, and
//! `docs/operations.md` says what to do when one fires. Every labelled
//! series whose label values form a known, fixed set is registered at zero
//! when the exporter starts ([`preregister`]): a counter that first appears
//! at 1 shows no `increase()`, so an alert on the first abort, eviction or
//! write error would never fire.
//!
//! The server calls the typed helpers below ([`round_started`],
//! [`stage_closed`], …). They go through the `metrics` facade: until
//! [`install_prometheus`] installs a recorder they do nothing, so tests and
//! embedders that never install one pay only a few instructions. No helper
//! takes anything secret; labels are stage names, abort reasons and message
//! kinds chosen by the server, never client data.

use std::net::SocketAddr;

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};
use tessera_aggregation::Stage;
use tessera_aggregation::messages::AbortReason;
use tessera_dp::ledger::{Adversary, PrivacyLedger};
use tessera_proto::convert::abort_reason_name;
use tessera_proto::v1::ErrorKind;

/// Counter: rounds the server opened. Is the server running rounds at all?
pub(crate) const ROUNDS_STARTED: &str = "tessera_rounds_started_total";
/// Counter: rounds that published an aggregate. How many rounds succeed (and
/// per hour)?
pub(crate) const ROUNDS_COMPLETED: &str = "tessera_rounds_completed_total";
/// Counter, label [`LABEL_REASON`]: rounds that ended without an aggregate.
/// Why do rounds fail?
pub(crate) const ROUNDS_ABORTED: &str = "tessera_rounds_aborted_total";
/// Histogram, label [`LABEL_OUTCOME`]: seconds from a round's opening to its
/// end. How long does a whole round take?
pub(crate) const ROUND_SECONDS: &str = "tessera_round_seconds";
/// Histogram, label [`LABEL_STAGE`]: seconds from a stage's start to its
/// close. Which stage is slow, and how close is it to its deadline?
pub(crate) const STAGE_SECONDS: &str = "tessera_stage_seconds";
/// Gauge, label [`LABEL_STAGE`]: the configured stage deadline in seconds.
/// What may a stage take before the server stops waiting for stragglers?
pub(crate) const STAGE_DEADLINE: &str = "tessera_stage_deadline_seconds";
/// Gauge, label [`LABEL_STAGE`]: clients still in the round when the stage
/// last closed. How many clients make it through each stage?
pub(crate) const CLIENTS_PER_STAGE: &str = "tessera_clients_per_stage";
/// Histogram: seconds the server spent unmasking a sum (Shamir
/// reconstruction and mask removal). Is the one CPU-heavy step getting slow?
pub(crate) const UNMASKING_SECONDS: &str = "tessera_unmasking_seconds";
/// Counter, label [`LABEL_REASON`]: unmaskings that failed (too few shares,
/// or a rebuilt key that does not match its advert). Did the server fail to
/// rebuild a secret it needed?
pub(crate) const RECONSTRUCTION_FAILURES: &str = "tessera_reconstruction_failures_total";
/// Counter: payload bytes received from clients. How much traffic does a
/// round bring in?
pub(crate) const BYTES_RECEIVED: &str = "tessera_bytes_received_total";
/// Counter: payload bytes sent to clients. How much traffic does a round
/// send out?
pub(crate) const BYTES_SENT: &str = "tessera_bytes_sent_total";
/// Counter, label [`LABEL_STAGE`]: clients that dropped out during a stage.
/// Are more clients dropping than the round was planned for, and where?
pub(crate) const DROPOUTS: &str = "tessera_dropouts_total";
/// Counter, label [`LABEL_KIND`]: messages refused (late, malformed,
/// unauthenticated, …). Is a client (or a client release) sending bad
/// messages?
pub(crate) const REJECTED_MESSAGES: &str = "tessera_rejected_messages_total";
/// Gauge: clients connected and waiting for the next round. Are enough
/// clients waiting to open one?
pub(crate) const LOBBY_CLIENTS: &str = "tessera_lobby_clients";

/// Gauge: network connections the server holds open (both listeners). How
/// close is the server to its connection cap?
pub(crate) const CONNECTIONS_OPEN: &str = "tessera_connections_open";
/// Counter, label [`LABEL_REASON`]: connections closed or refused before they
/// carried a request (cap reached, handshake timeout, accept error). Is the
/// server turning clients away, and why?
pub(crate) const CONNECTIONS_REFUSED: &str = "tessera_connections_refused_total";
/// Counter, label [`LABEL_OP`]: failed writes to the data directory. Is the
/// disk full, read-only or failing?
pub(crate) const STORAGE_WRITE_ERRORS: &str = "tessera_storage_write_errors_total";
/// Counter, label [`LABEL_REASON`]: clients evicted from a round. Is some
/// client misbehaving, and how?
pub(crate) const EVICTIONS: &str = "tessera_evictions_total";

/// Gauge, labels [`LABEL_ADVERSARY`] and [`LABEL_DELTA`]: the ε spent so far
/// by the job's published models (only with DP on). How much privacy has the
/// job spent, and against whom does that figure hold?
pub(crate) const EPSILON_SPENT: &str = "tessera_epsilon_spent";
/// Gauge, labels [`LABEL_ADVERSARY`] and [`LABEL_DELTA`]: the ε budget minus
/// [`EPSILON_SPENT`]. How many more rounds can the job run?
pub(crate) const EPSILON_REMAINING: &str = "tessera_epsilon_budget_remaining";
/// Gauge, label [`LABEL_DELTA`]: the job's ε budget (only with DP on). What
/// does the server stop at?
pub(crate) const EPSILON_BUDGET: &str = "tessera_epsilon_budget";

/// Label naming the protocol stage.
pub(crate) const LABEL_STAGE: &str = "stage";
/// Label naming why a round aborted, a connection was refused or a client
/// was evicted.
pub(crate) const LABEL_REASON: &str = "reason";
/// Label naming the storage operation that failed (write, fsync, rename).
pub(crate) const LABEL_OP: &str = "op";
/// Label naming what kind of message was refused.
pub(crate) const LABEL_KIND: &str = "kind";
/// Label naming how a round ended: "completed" or "aborted".
pub(crate) const LABEL_OUTCOME: &str = "outcome";
/// Label naming whom an ε holds against: "server" (distributed noise, the
/// server and its colluders never saw an un-noised sum) or
/// "model-consumers" (central noise: only the published model's readers).
pub(crate) const LABEL_ADVERSARY: &str = "adversary";
/// Label giving the δ at which an ε is stated.
pub(crate) const LABEL_DELTA: &str = "delta";

/// Abort reasons a round can end with ([`abort_reason_name`]'s values).
const ABORT_REASONS: [AbortReason; 4] = [
    AbortReason::BelowThreshold,
    AbortReason::SharesMissing,
    AbortReason::Misbehaviour,
    AbortReason::Accusations,
];
/// The abort reason of a round its data directory could not store (the
/// scheduler's, not the protocol's).
pub(crate) const STORAGE_ABORT_REASON: &str = "storage";
/// Reasons a connection is refused (see [`connection_refused`]).
const CONNECTION_REFUSALS: [&str; 6] = [
    "cap",
    "tls_handshake_timeout",
    "preface_timeout",
    "idle_timeout",
    "refused",
    "accept_error",
];
/// Storage operations that can fail (see [`storage_write_failed`]).
const STORAGE_OPS: [&str; 4] = ["write", "fsync", "rename", "remove"];
/// Reasons a client is evicted (see [`client_evicted`]).
const EVICTION_REASONS: [&str; 10] = tessera_aggregation::server::ClientViolation::REASONS;

/// Bucket bounds (seconds) for [`STAGE_SECONDS`]: from a fast local stage to
/// a stage that waits out a ten-minute deadline for slow devices.
pub(crate) const STAGE_SECONDS_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Bucket bounds (seconds) for [`ROUND_SECONDS`]: up to five stages that
/// each wait out a ten-minute deadline.
pub(crate) const ROUND_SECONDS_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3000.0,
];

/// Bucket bounds (seconds) for [`UNMASKING_SECONDS`]: from a handful of
/// clients to thousands of clients with a large model.
pub(crate) const UNMASKING_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
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
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(ROUND_SECONDS.to_owned()),
                ROUND_SECONDS_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(UNMASKING_SECONDS.to_owned()),
                UNMASKING_SECONDS_BUCKETS,
            )
        })
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|source| MetricsError::Install { addr, source })?;
    describe();
    preregister();
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

/// Registers the HELP text of every metric with the installed recorder:
/// what it counts and the question it answers.
fn describe() {
    describe_counter!(
        ROUNDS_STARTED,
        "Rounds opened. Is the server running rounds at all?"
    );
    describe_counter!(
        ROUNDS_COMPLETED,
        "Rounds that published an aggregate. How many rounds succeed, and how many per hour?"
    );
    describe_counter!(
        ROUNDS_ABORTED,
        "Rounds that ended without an aggregate, by reason. Why do rounds fail?"
    );
    describe_histogram!(
        ROUND_SECONDS,
        metrics::Unit::Seconds,
        "Time from a round's opening to its end, by outcome. How long does a whole round take?"
    );
    describe_histogram!(
        STAGE_SECONDS,
        metrics::Unit::Seconds,
        "Time from a stage's start to its close, by stage. Which stage is slow, and how close to its deadline?"
    );
    describe_gauge!(
        STAGE_DEADLINE,
        metrics::Unit::Seconds,
        "The configured stage deadline, by stage. How long may a stage wait for stragglers?"
    );
    describe_gauge!(
        CLIENTS_PER_STAGE,
        "Clients still in the round when the stage last closed, by stage. How many clients make it through each stage?"
    );
    describe_histogram!(
        UNMASKING_SECONDS,
        metrics::Unit::Seconds,
        "Time spent rebuilding secrets and removing masks. Is unmasking getting slow?"
    );
    describe_counter!(
        RECONSTRUCTION_FAILURES,
        "Unmaskings that failed, by reason. Did the server fail to rebuild a secret it needed?"
    );
    describe_counter!(
        BYTES_RECEIVED,
        metrics::Unit::Bytes,
        "Payload bytes received from clients. How much traffic does a round bring in?"
    );
    describe_counter!(
        BYTES_SENT,
        metrics::Unit::Bytes,
        "Payload bytes sent to clients. How much traffic does a round send out?"
    );
    describe_counter!(
        DROPOUTS,
        "Clients that dropped out during a stage, by stage. Are more clients dropping than planned, and where?"
    );
    describe_counter!(
        REJECTED_MESSAGES,
        "Messages refused, by kind. Is some client sending bad messages?"
    );
    describe_gauge!(
        LOBBY_CLIENTS,
        "Clients connected and waiting for the next round. Are enough clients waiting to open one?"
    );
    describe_gauge!(
        CONNECTIONS_OPEN,
        "Network connections held open. How close is the server to its connection cap?"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused, closed before serving a request, or closed holding a slot with nothing under way (idle or refused), by reason. Is the server turning clients away, and why?"
    );
    describe_counter!(
        STORAGE_WRITE_ERRORS,
        "Failed writes to the data directory, by operation. Is the disk full, read-only or failing?"
    );
    describe_counter!(
        EVICTIONS,
        "Clients evicted from a round, by reason. Is some client misbehaving, and how?"
    );
    describe_gauge!(
        EPSILON_SPENT,
        "Epsilon spent by the published models, at delta, against the adversary it holds against (+Inf: no guarantee against it). How much privacy has the job spent?"
    );
    describe_gauge!(
        EPSILON_REMAINING,
        "Epsilon budget minus epsilon spent, by adversary and delta. How many more rounds can the job run?"
    );
    describe_gauge!(
        EPSILON_BUDGET,
        "The job's epsilon budget, at delta. What does the server stop at?"
    );
}

/// Registers at zero every series whose label values come from a fixed
/// set, so dashboards show them and `increase()` sees their first event.
fn preregister() {
    counter!(ROUNDS_STARTED).increment(0);
    counter!(ROUNDS_COMPLETED).increment(0);
    counter!(BYTES_RECEIVED).increment(0);
    counter!(BYTES_SENT).increment(0);
    gauge!(LOBBY_CLIENTS).increment(0.0);
    gauge!(CONNECTIONS_OPEN).increment(0.0);
    for reason in ABORT_REASONS
        .map(abort_reason_name)
        .into_iter()
        .chain([STORAGE_ABORT_REASON])
    {
        counter!(ROUNDS_ABORTED, LABEL_REASON => reason).increment(0);
    }
    for reason in [AbortReason::SharesMissing, AbortReason::Misbehaviour].map(abort_reason_name) {
        counter!(RECONSTRUCTION_FAILURES, LABEL_REASON => reason).increment(0);
    }
    for stage in stage_labels() {
        counter!(DROPOUTS, LABEL_STAGE => stage).increment(0);
    }
    // Every kind the wire protocol can name; the enum is small and closed.
    for kind in (0..64).filter_map(|k| ErrorKind::try_from(k).ok()) {
        counter!(REJECTED_MESSAGES, LABEL_KIND => kind.as_str_name()).increment(0);
    }
    for reason in CONNECTION_REFUSALS {
        counter!(CONNECTIONS_REFUSED, LABEL_REASON => reason).increment(0);
    }
    for op in STORAGE_OPS {
        counter!(STORAGE_WRITE_ERRORS, LABEL_OP => op).increment(0);
    }
    for reason in EVICTION_REASONS {
        counter!(EVICTIONS, LABEL_REASON => reason).increment(0);
    }
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

/// The stage label of the reveal step (semi-honest rounds with
/// accusations): the accusers the server asked for their share keys, between
/// the masked input stage and the unmasking requests. Its "survivors" are
/// the accusers that answered, its "dropouts" those that did not.
pub(crate) const REVEAL_STEP: &str = "reveal-share-keys";

/// Every stage label: the protocol's stages and the reveal step.
fn stage_labels() -> impl Iterator<Item = &'static str> {
    Stage::ALL
        .map(Stage::name)
        .into_iter()
        .chain(std::iter::once(REVEAL_STEP))
}

/// Records a stage's close: how long it took, how many clients are still in
/// the round, and how many dropped out during it.
pub(crate) fn stage_closed(stage: &str, seconds: f64, survivors: u32, dropped: u32) {
    histogram!(STAGE_SECONDS, LABEL_STAGE => stage.to_owned()).record(seconds);
    gauge!(CLIENTS_PER_STAGE, LABEL_STAGE => stage.to_owned()).set(f64::from(survivors));
    counter!(DROPOUTS, LABEL_STAGE => stage.to_owned()).increment(u64::from(dropped));
}

/// Records the stage a round aborted in as closed, with the clients that
/// dropped in it (the ones the abort is about), unless the session already
/// reported that stage closed (an abort found after its close, such as a
/// failed reconstruction). `closed` is the round's closed stages so far
/// (stage, survivors, dropped, seconds); `clients` those invited.
pub(crate) fn stage_aborted(
    stage: Stage,
    seconds: f64,
    survivors: u32,
    closed: &[(Stage, u32, u32, f64)],
    clients: u32,
) {
    let before = match closed.last() {
        Some((last, ..)) if *last == stage => return,
        Some((_, survivors, ..)) => *survivors,
        None => clients,
    };
    stage_closed(
        stage.name(),
        seconds,
        survivors,
        before.saturating_sub(survivors),
    );
}

/// Records a round's end: how long it ran from opening, and whether it
/// published (`completed`) or not.
pub(crate) fn round_ended(completed: bool, seconds: f64) {
    let outcome = if completed { "completed" } else { "aborted" };
    histogram!(ROUND_SECONDS, LABEL_OUTCOME => outcome).record(seconds);
}

/// Sets the configured deadline of every stage (one for all stages today),
/// so a dashboard can draw stage latency against it.
pub(crate) fn stage_deadlines(deadline: Duration) {
    for stage in stage_labels() {
        gauge!(STAGE_DEADLINE, LABEL_STAGE => stage).set(deadline.as_secs_f64());
    }
}

/// Records an unmasking: how long it took and, if it failed, why
/// (`failed` is the round's abort reason after it).
pub(crate) fn unmasked(seconds: f64, failed: Option<AbortReason>) {
    histogram!(UNMASKING_SECONDS).record(seconds);
    if let Some(reason) = failed {
        counter!(RECONSTRUCTION_FAILURES, LABEL_REASON => abort_reason_name(reason)).increment(1);
    }
}

/// Sets the privacy gauges from the job's ledger (nothing without DP).
///
/// Every ε that holds against the server also holds against the model's
/// consumers, so the `model-consumers` series is always the ledger's total
/// (the figure the budget is enforced on). The `server` series is the same
/// figure while every round used distributed noise, and +Inf once a central
/// round let the server see an un-noised sum.
pub(crate) fn privacy(ledger: Option<&PrivacyLedger>) {
    let Some(ledger) = ledger else {
        return;
    };
    let delta = format!("{:e}", ledger.delta());
    let (spent, budget) = (ledger.spent(), ledger.budget_epsilon());
    gauge!(EPSILON_BUDGET, LABEL_DELTA => delta.clone()).set(budget);
    for adversary in [Adversary::ModelConsumers, Adversary::Server] {
        let holds = ledger
            .holds_against()
            .is_none_or(|weakest| weakest >= adversary);
        let against = if holds { spent } else { f64::INFINITY };
        let labels = [
            (LABEL_ADVERSARY, adversary.name().to_owned()),
            (LABEL_DELTA, delta.clone()),
        ];
        gauge!(EPSILON_SPENT, &labels).set(against);
        gauge!(EPSILON_REMAINING, &labels).set(budget - against);
    }
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
pub(crate) fn connection_opened() {
    gauge!(CONNECTIONS_OPEN).increment(1.0);
}

/// Records that an admitted connection closed.
pub(crate) fn connection_closed() {
    gauge!(CONNECTIONS_OPEN).decrement(1.0);
}

/// Records a connection refused, closed before serving a request, or closed
/// for holding a slot without a live request. `reason` comes from a small
/// fixed set ("cap", "tls_handshake_timeout", "preface_timeout",
/// "idle_timeout", "refused", "accept_error").
pub(crate) fn connection_refused(reason: &'static str) {
    counter!(CONNECTIONS_REFUSED, LABEL_REASON => reason).increment(1);
}

/// Records a failed write to the data directory. `op` is "write", "fsync",
/// "rename" or "remove".
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
        round_ended(true, 3.0);
        round_ended(false, 700.0);
        stage_deadlines(Duration::from_millis(1500));
        unmasked(0.02, None);
        unmasked(0.2, Some(AbortReason::Misbehaviour));
        // Below threshold at share-keys: 5 advertised, 2 shared.
        stage_aborted(
            Stage::ShareKeys,
            2.0,
            2,
            &[(Stage::AdvertiseKeys, 5, 0, 0.1)],
            5,
        );
        // A reconstruction failure after unmasking closed: counted once.
        stage_aborted(
            Stage::Unmasking,
            1.0,
            4,
            &[(Stage::Unmasking, 4, 0, 0.5)],
            5,
        );

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
            (
                "tessera_round_seconds_bucket{outcome=\"completed\",le=\"5\"}",
                1.0,
            ),
            (
                "tessera_round_seconds_bucket{outcome=\"aborted\",le=\"600\"}",
                0.0,
            ),
            (
                "tessera_round_seconds_bucket{outcome=\"aborted\",le=\"1200\"}",
                1.0,
            ),
            (
                "tessera_stage_deadline_seconds{stage=\"masked-input\"}",
                1.5,
            ),
            ("tessera_stage_deadline_seconds{stage=\"unmasking\"}", 1.5),
            ("tessera_unmasking_seconds_count", 2.0),
            ("tessera_unmasking_seconds_bucket{le=\"0.05\"}", 1.0),
            (
                "tessera_reconstruction_failures_total{reason=\"misbehaviour\"}",
                1.0,
            ),
            // Registered at zero before any event, so increase() sees the
            // first one.
            (
                "tessera_reconstruction_failures_total{reason=\"shares-missing\"}",
                0.0,
            ),
            (
                "tessera_rounds_aborted_total{reason=\"shares-missing\"}",
                0.0,
            ),
            ("tessera_rounds_aborted_total{reason=\"accusations\"}", 0.0),
            ("tessera_rounds_aborted_total{reason=\"storage\"}", 0.0),
            ("tessera_dropouts_total{stage=\"unmasking\"}", 0.0),
            ("tessera_dropouts_total{stage=\"reveal-share-keys\"}", 0.0),
            ("tessera_dropouts_total{stage=\"share-keys\"}", 3.0),
            ("tessera_clients_per_stage{stage=\"share-keys\"}", 2.0),
            ("tessera_rejected_messages_total{kind=\"MALFORMED\"}", 0.0),
            (
                "tessera_connections_refused_total{reason=\"preface_timeout\"}",
                0.0,
            ),
            ("tessera_storage_write_errors_total{op=\"fsync\"}", 0.0),
            ("tessera_evictions_total{reason=\"false_accusation\"}", 0.0),
        ];
        for (series, value) in expect {
            assert_eq!(
                line_value(&body, series),
                Some(value),
                "{series} in:\n{body}"
            );
        }
        assert!(body.contains("# HELP tessera_lobby_clients"), "{body}");
        assert!(
            !body.contains("tessera_stage_seconds_count{stage=\"unmasking\"}"),
            "an abort after unmasking closed records no second close: {body}"
        );
        assert!(
            body.contains("# HELP tessera_round_seconds Time from a round's opening"),
            "{body}"
        );
        privacy_gauges_say_whom_the_epsilon_holds_against(addr);
    }

    /// A distributed round's ε holds against the server and so against the
    /// model's consumers; after one central round the server saw an
    /// un-noised sum, and its series says +Inf (no guarantee) while the
    /// consumers' goes on counting. Called from the recorder test above.
    fn privacy_gauges_say_whom_the_epsilon_holds_against(addr: SocketAddr) {
        use tessera_dp::ledger::Mechanism;
        let mut ledger = PrivacyLedger::new(8.0, 1e-5).unwrap();
        privacy(Some(&ledger));
        let body = scrape(addr);
        let series = |name: &str, adversary: &str| {
            format!("{name}{{adversary=\"{adversary}\",delta=\"1e-5\"}}")
        };
        for adversary in ["server", "model-consumers"] {
            assert_eq!(
                line_value(&body, &series(EPSILON_SPENT, adversary)),
                Some(0.0)
            );
            let left = line_value(&body, &series(EPSILON_REMAINING, adversary));
            assert_eq!(left, Some(8.0), "{body}");
        }
        assert_eq!(
            line_value(&body, "tessera_epsilon_budget{delta=\"1e-5\"}"),
            Some(8.0)
        );

        let distributed = Mechanism::DiscreteGaussian {
            sigma: 40.0,
            l2_sensitivity: 10.0,
        };
        ledger.record(1, distributed, Adversary::Server).unwrap();
        let spent = ledger.spent();
        assert!(spent > 0.0 && spent < 8.0, "{spent}");
        privacy(Some(&ledger));
        let body = scrape(addr);
        for adversary in ["server", "model-consumers"] {
            let got = line_value(&body, &series(EPSILON_SPENT, adversary)).unwrap();
            assert!((got - spent).abs() < 1e-9, "{adversary}: {got} vs {spent}");
            let left = line_value(&body, &series(EPSILON_REMAINING, adversary)).unwrap();
            assert!((left - (8.0 - spent)).abs() < 1e-9, "{body}");
        }

        let central = Mechanism::Gaussian {
            noise_multiplier: 5.0,
            sampling_rate: 1.0,
        };
        ledger
            .record(2, central, Adversary::ModelConsumers)
            .unwrap();
        privacy(Some(&ledger));
        let body = scrape(addr);
        let consumers = line_value(&body, &series(EPSILON_SPENT, "model-consumers")).unwrap();
        assert!((consumers - ledger.spent()).abs() < 1e-9, "{body}");
        assert!(consumers > spent, "{body}");
        assert_eq!(
            line_value(&body, &series(EPSILON_SPENT, "server")),
            Some(f64::INFINITY),
            "{body}"
        );
        assert_eq!(
            line_value(&body, &series(EPSILON_REMAINING, "server")),
            Some(f64::NEG_INFINITY),
            "{body}"
        );
    }
}
