//! Admission of network connections: what a connection must do, and how
//! fast, before the gRPC service spends anything on it, and to keep its
//! slot afterwards.
//!
//! A connection costs a file descriptor, a task and buffers before it has
//! said who it is, and a slot under the cap for as long as it is open, so
//! an attacker who only opens sockets, or who is refused and stays, must
//! not be able to hold them. Every accepted connection goes through these
//! steps, each bounded:
//!
//! 1. **Cap.** At most `max_connections` connections are open at once
//!    (both halves of a TLS connection, handshake included), the clients
//!    waiting in the lobby among them (one each, for as long as they wait).
//!    One over the cap is closed at once, before any TLS, and counted
//!    (`reason="cap"`); the SDK reports it as unreachable, naming the cap,
//!    and retries.
//! 2. **TLS handshake**, on the TLS port: it must finish within
//!    `tls_handshake_timeout`, or the connection is closed
//!    (`reason="tls_handshake_timeout"`).
//! 3. **HTTP/2 preface and first request**: the client must send the
//!    connection preface and the HEADERS frame of its first request within
//!    `preface_timeout` (after the handshake on the TLS port). An idle
//!    socket, a preface dripped one byte a second and a client that only
//!    answers pings are all closed when it passes
//!    (`reason="preface_timeout"`).
//! 4. **Something live, credentials, and nothing refused.** After its
//!    first request a connection is kept only while it is live: while it
//!    carries a client the service admitted to the lobby or a round (after
//!    authentication, and in the malicious-server model after the
//!    identity proof verified), for as long as that client waits or takes
//!    part. Nothing else is live: not a response's OK headers (a challenged
//!    Join gets them before its proof), not a GetModel body the client
//!    never reads, not keepalive pings, requests whose body never comes or
//!    a health `Watch`. With nothing live:
//!    - until it has shown credentials (a client admitted, or an OK
//!      GetModel answer) it is closed `preface_timeout` after its first
//!      request opened (`reason="no_credit"`): a party without credentials
//!      holds a slot for at most about two preface timeouts (plus a TLS
//!      handshake timeout) per TCP and TLS handshake, whatever it sends;
//!    - after that, `idle_timeout` after its last live client ended or its
//!      last OK GetModel answer (`reason="idle_timeout"`): a download has
//!      `idle_timeout` to complete;
//!    - a connection whose request was refused (any non-OK gRPC status: a
//!      bad token, `NOT_ELIGIBLE`, an unknown method) is closed
//!      [`activity::REFUSED_LINGER`] after the refusal (`reason="refused"`),
//!      however often it is refused again.
//!
//!    And each principal (token or certificate name) is counted on at most
//!    [`activity::MAX_CONNECTIONS_PER_CLIENT`] open connections; a request
//!    over that is refused `RESOURCE_EXHAUSTED`, so its connection closes
//!    after the linger. One token therefore holds at most that many slots
//!    for as long as it likes (re-fetching the model every idle timeout),
//!    and no more. The SDK opens a connection per call, so none of these
//!    rules costs an honest client anything. [`activity`] says how the
//!    service tells the connection what is live.
//!
//! When the server stops, connections get a grace period to close by
//! themselves (HTTP/2 GOAWAY); those still open after it (a client that
//! stopped answering) are cut through the `cutoff` signal.
//!
//! Accept errors (the process's file-descriptor limit, `EMFILE`, is the one
//! that matters) never make the loop spin: it waits, doubling the wait from
//! [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`], logs at most once per
//! [`LOG_EVERY`], and the connections already admitted are served all the
//! while by their own tasks (`reason="accept_error"`).
//!
//! The loop is generic over the stream of accepted connections, so tests
//! can inject accept errors without exhausting the process's descriptors.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::metrics;

use self::activity::{Activity, Deadline, Registration};
pub(crate) use self::activity::{Connections, LiveGuard, LiveSlot, TrackLayer};

pub(crate) mod activity;

/// The first wait after an accept error.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// The longest wait between accepts while errors last.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one warning per this long about refused connections or accept
/// errors (each warning says how many it stands for).
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

/// What the admission steps allow; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Most connections open at once.
    pub(crate) max_connections: usize,
    /// Longest TLS handshake.
    pub(crate) tls_handshake_timeout: Duration,
    /// Longest wait for the HTTP/2 preface and the first request.
    pub(crate) preface_timeout: Duration,
    /// Longest time with nothing live after credit (and the first
    /// request); before credit, `preface_timeout` is.
    pub(crate) idle_timeout: Duration,
}

/// The stream of admitted plain-text connections for tonic.
pub(crate) type PlainIncoming = ReceiverStream<io::Result<Admitted<Slot<tokio::net::TcpStream>>>>;
/// The stream of admitted TLS connections for tonic.
pub(crate) type TlsIncoming =
    ReceiverStream<io::Result<Admitted<TlsStream<Slot<tokio::net::TcpStream>>>>>;

/// Admits plain-text connections from `accepted`, registering each in
/// `connections` (for the [`TrackLayer`] in the same server's router).
pub(crate) fn admit_plain<S>(
    accepted: S,
    limits: Limits,
    cutoff: watch::Receiver<bool>,
    connections: Arc<Connections>,
) -> PlainIncoming
where
    S: Stream<Item = io::Result<tokio::net::TcpStream>> + Send + 'static,
{
    admit(accepted, limits, move |conn| {
        let cutoff = cutoff.clone();
        let tracked = track(&connections, &conn);
        async move { Some(Admitted::new(conn, limits, cutoff, tracked)) }
    })
}

/// Admits TLS connections from `accepted`, each after its handshake,
/// registering each in `connections`.
pub(crate) fn admit_tls<S>(
    accepted: S,
    limits: Limits,
    acceptor: TlsAcceptor,
    cutoff: watch::Receiver<bool>,
    connections: Arc<Connections>,
) -> TlsIncoming
where
    S: Stream<Item = io::Result<tokio::net::TcpStream>> + Send + 'static,
{
    admit(accepted, limits, move |conn| {
        let acceptor = acceptor.clone();
        let cutoff = cutoff.clone();
        let tracked = track(&connections, &conn);
        async move {
            match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(conn)).await {
                Ok(Ok(tls)) => Some(Admitted::new(tls, limits, cutoff, tracked)),
                Ok(Err(e)) => {
                    debug!("TLS handshake failed: {e}");
                    None
                }
                Err(_) => {
                    metrics::connection_refused("tls_handshake_timeout");
                    debug!(
                        "TLS handshake not finished within {:?}: connection closed",
                        limits.tls_handshake_timeout
                    );
                    None
                }
            }
        }
    })
}

/// A new connection's [`Activity`], registered under the addresses tonic
/// will put in its requests' `ConnectInfo` (the same calls on the same
/// socket), so the service side can report to it. A connection whose peer
/// address cannot be read (it is already gone) is not registered: its
/// requests cannot be reported, and its idle deadline runs regardless.
fn track(
    connections: &Arc<Connections>,
    conn: &Slot<tokio::net::TcpStream>,
) -> (Arc<Activity>, Option<Registration>) {
    let activity = Activity::new();
    let registration = conn.io.peer_addr().ok().map(|peer| {
        let key = (conn.io.local_addr().ok(), peer);
        connections.register(key, &activity)
    });
    (activity, registration)
}

/// The accept loop: takes connections from `accepted` under the cap, runs
/// `setup` (the TLS handshake, the deadline) on each in its own task, and
/// hands the ready ones to tonic through the returned stream. The loop
/// ends when tonic drops that stream (shutdown) or `accepted` ends.
fn admit<S, IO, F, Fut, Out>(
    accepted: S,
    limits: Limits,
    setup: F,
) -> ReceiverStream<io::Result<Out>>
where
    S: Stream<Item = io::Result<IO>> + Send + 'static,
    IO: Send + 'static,
    F: Fn(Slot<IO>) -> Fut + Send + 'static,
    Fut: Future<Output = Option<Out>> + Send + 'static,
    Out: Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        let mut accepted = std::pin::pin!(accepted);
        let mut backoff = Backoff::default();
        let mut cap_log = RateLimited::default();
        loop {
            let next = tokio::select! {
                next = accepted.next() => next,
                () = tx.closed() => break,
            };
            let io = match next {
                None => break,
                Some(Ok(io)) => io,
                Some(Err(e)) => {
                    metrics::connection_refused("accept_error");
                    let wait = backoff.failed();
                    if let Some(more) = backoff.log.tick() {
                        warn!(
                            "cannot accept connections ({e}{}); waiting {wait:?} between attempts, \
                             admitted connections are still served",
                            suppressed(more)
                        );
                    }
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        () = tx.closed() => break,
                    }
                }
            };
            backoff.succeeded();
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                metrics::connection_refused("cap");
                if let Some(more) = cap_log.tick() {
                    warn!(
                        "connection cap reached: {} connections are open (clients waiting in the \
                         lobby included), a new one was closed{} (raise --max-connections if honest \
                         clients are refused)",
                        limits.max_connections,
                        suppressed(more)
                    );
                }
                drop(io);
                continue;
            };
            let conn = Slot::new(io, permit);
            let tx = tx.clone();
            let ready = setup(conn);
            tokio::spawn(async move {
                if let Some(conn) = ready.await {
                    // tonic has stopped accepting if this fails; the
                    // connection closes with it.
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

fn suppressed(more: u64) -> String {
    if more == 0 {
        String::new()
    } else {
        format!("; {more} more since the last warning")
    }
}

/// A warning that fires at most once per [`LOG_EVERY`].
#[derive(Debug, Default)]
struct RateLimited {
    last: Option<Instant>,
    /// Events since the last warning.
    skipped: u64,
}

impl RateLimited {
    /// `Some(events skipped since the last warning)` if a warning is due.
    fn tick(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now < last + LOG_EVERY) {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

/// The wait after consecutive accept errors: doubling from
/// [`FIRST_BACKOFF`] to [`MAX_BACKOFF`], reset by a successful accept.
#[derive(Debug, Default)]
struct Backoff {
    next: Option<Duration>,
    log: RateLimited,
}

impl Backoff {
    fn failed(&mut self) -> Duration {
        let wait = self.next.unwrap_or(FIRST_BACKOFF);
        self.next = Some((wait * 2).min(MAX_BACKOFF));
        wait
    }

    fn succeeded(&mut self) {
        self.next = None;
    }
}

/// A connection holding one of the cap's slots: the slot is given back and
/// the open-connections gauge lowered when the connection is dropped.
#[derive(Debug)]
pub(crate) struct Slot<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
}

impl<IO> Slot<IO> {
    fn new(io: IO, permit: OwnedSemaphorePermit) -> Self {
        metrics::connection_opened();
        Slot {
            io,
            _permit: permit,
        }
    }
}

impl<IO> Drop for Slot<IO> {
    fn drop(&mut self) {
        metrics::connection_closed();
    }
}

impl<IO: Connected> Connected for Slot<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Slot<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Slot<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The HTTP/2 connection preface every client sends first (RFC 9113,
/// section 3.4).
const PREFACE_LEN: usize = 24;
/// An HTTP/2 frame header: 24-bit length, type, flags, stream id.
const FRAME_HEADER_LEN: usize = 9;
/// The frame type that opens a request.
const HEADERS: u8 = 0x1;

/// Where the reader is in the client's first bytes: the preface, then
/// frames (skipped) until the first HEADERS frame, which opens a request.
/// The bytes are not checked here (hyper does that); they are only
/// counted, so a frame's length is trusted as far as it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opening {
    Preface {
        seen: usize,
    },
    Header {
        buf: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    Payload {
        left: usize,
    },
    Request,
}

impl Opening {
    /// Feeds the bytes the client sent next; true once a request opened.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match self {
                Opening::Preface { seen } => {
                    let take = (PREFACE_LEN - *seen).min(bytes.len());
                    *seen += take;
                    bytes = &bytes[take..];
                    if *seen == PREFACE_LEN {
                        *self = Opening::Header {
                            buf: [0; FRAME_HEADER_LEN],
                            have: 0,
                        };
                    }
                }
                Opening::Header { buf, have } => {
                    let take = (FRAME_HEADER_LEN - *have).min(bytes.len());
                    buf[*have..*have + take].copy_from_slice(&bytes[..take]);
                    *have += take;
                    bytes = &bytes[take..];
                    if *have == FRAME_HEADER_LEN {
                        if buf[3] == HEADERS {
                            *self = Opening::Request;
                        } else {
                            let left = usize::from(buf[0]) << 16
                                | usize::from(buf[1]) << 8
                                | usize::from(buf[2]);
                            *self = Opening::Payload { left };
                        }
                    }
                }
                Opening::Payload { left } => {
                    let take = (*left).min(bytes.len());
                    *left -= take;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        *self = Opening::Header {
                            buf: [0; FRAME_HEADER_LEN],
                            have: 0,
                        };
                    }
                }
                Opening::Request => return true,
            }
        }
        *self == Opening::Request
    }
}

/// Why an admitted connection was closed: every read fails after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closed {
    /// No first request within `preface_timeout`.
    Preface,
    /// No credit within `preface_timeout` of the first request.
    Uncredited,
    /// Nothing live for `idle_timeout`.
    Idle,
    /// A refusal, [`activity::REFUSED_LINGER`] ago, and nothing live.
    Refused,
    /// The server's cutoff after its shutdown grace period.
    Cutoff,
}

impl Closed {
    /// The `reason` label it is counted under (`None`: not counted, the
    /// server is stopping).
    fn reason(self) -> Option<&'static str> {
        match self {
            Closed::Preface => Some("preface_timeout"),
            Closed::Uncredited => Some("no_credit"),
            Closed::Idle => Some("idle_timeout"),
            Closed::Refused => Some("refused"),
            Closed::Cutoff => None,
        }
    }

    /// The error hyper's reads get, which makes it drop the connection.
    fn error(self) -> io::Error {
        match self {
            Closed::Preface => io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 request within the preface timeout",
            ),
            Closed::Uncredited => io::Error::new(
                io::ErrorKind::TimedOut,
                "no credentials shown within the preface timeout of the first request",
            ),
            Closed::Idle => io::Error::new(
                io::ErrorKind::TimedOut,
                "no live request within the idle timeout",
            ),
            Closed::Refused => io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection's request was refused",
            ),
            Closed::Cutoff => {
                io::Error::new(io::ErrorKind::ConnectionAborted, "the server stopped")
            }
        }
    }
}

/// An admitted connection under the deadlines of steps 3 and 4 (see the
/// module docs): reads fail once one passes, and hyper then closes the
/// connection. Reads also fail once the server's cutoff fires. Reads are
/// where a deadline can act: hyper polls them whenever the connection's
/// task runs, and the deadline's timer wakes that task.
pub(crate) struct Admitted<IO> {
    io: IO,
    /// Where the client is in its opening; `None` once its first request
    /// opened.
    opening: Option<Opening>,
    /// The preface deadline while `opening` is `Some`, then the no-credit,
    /// idle or refusal deadline [`Activity::deadline`] gives.
    deadline: Pin<Box<Sleep>>,
    /// The instant `deadline` is set to.
    armed: Instant,
    idle_timeout: Duration,
    preface_timeout: Duration,
    /// What the service side reports about this connection's requests.
    activity: Arc<Activity>,
    /// Its entry in the shared map, removed when the connection drops.
    _registration: Option<Registration>,
    closed: Option<Closed>,
    cutoff: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl<IO: std::fmt::Debug> std::fmt::Debug for Admitted<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("io", &self.io)
            .field("opening", &self.opening)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl<IO> Admitted<IO> {
    fn new(
        io: IO,
        limits: Limits,
        mut cutoff: watch::Receiver<bool>,
        (activity, registration): (Arc<Activity>, Option<Registration>),
    ) -> Self {
        let armed = Instant::now() + limits.preface_timeout;
        Admitted {
            io,
            opening: Some(Opening::Preface { seen: 0 }),
            deadline: Box::pin(tokio::time::sleep_until(armed)),
            armed,
            idle_timeout: limits.idle_timeout,
            preface_timeout: limits.preface_timeout,
            activity,
            _registration: registration,
            closed: None,
            cutoff: Box::pin(async move {
                // A dropped sender (a server handle dropped without
                // waiting) cuts nothing: the connection lives on.
                if cutoff.wait_for(|cut| *cut).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }),
        }
    }

    /// The deadline that applies now, armed; `None` while a request is
    /// live.
    fn due(&mut self, cx: &Context<'_>) -> Option<Closed> {
        if self.opening.is_some() {
            return Some(Closed::Preface);
        }
        let (at, why) =
            self.activity
                .deadline(self.idle_timeout, self.preface_timeout, cx.waker())?;
        if at != self.armed {
            self.deadline.as_mut().reset(at);
            self.armed = at;
        }
        Some(match why {
            Deadline::Uncredited => Closed::Uncredited,
            Deadline::Idle => Closed::Idle,
            Deadline::Refused => Closed::Refused,
        })
    }

    /// Closes the connection for `why`: this call and every later read or
    /// write fail.
    fn close(&mut self, why: Closed) -> io::Error {
        self.closed = Some(why);
        if let Some(reason) = why.reason() {
            metrics::connection_refused(reason);
            debug!("connection closed ({reason})");
        }
        why.error()
    }

    /// Whether the connection may go on: an error once it was closed, the
    /// server's cutoff fired or its deadline passed. Checked on reads and
    /// on writes alike: a client that floods PINGs and never reads fills
    /// the socket, and h2 then reads nothing until its PONGs are written,
    /// so a deadline checked on reads alone would never fire (red-team
    /// review of f4d296b). The deadline's timer wakes the connection's
    /// task, which polls the write it is blocked in, and that fails here.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(why) = self.closed {
            return Err(why.error());
        }
        if self.cutoff.as_mut().poll(cx).is_ready() {
            return Err(self.close(Closed::Cutoff));
        }
        // The deadline first: a client that drips bytes always has one
        // ready, and must not outrun it that way.
        if let Some(why) = self.due(cx)
            && self.deadline.as_mut().poll(cx).is_ready()
        {
            return Err(self.close(why));
        }
        Ok(())
    }
}

impl<IO: Connected> Connected for Admitted<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Admitted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.check(cx)?;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if let Some(opening) = &mut this.opening
            && opening.feed(&buf.filled()[before..])
        {
            this.opening = None;
            this.activity.opened();
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Admitted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
    use tokio::task::JoinHandle;

    use super::*;

    fn limits(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            tls_handshake_timeout: Duration::from_secs(5),
            preface_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
        }
    }

    /// The file-descriptor limit: every accept fails at once, as
    /// `accept(2)` does with `EMFILE` while the queue holds a connection.
    /// Counts the attempts.
    fn emfile_forever(
        attempts: Arc<AtomicUsize>,
    ) -> impl Stream<Item = io::Result<tokio::net::TcpStream>> {
        tokio_stream::iter(std::iter::repeat_with(move || {
            attempts.fetch_add(1, Ordering::Relaxed);
            Err(io::Error::from_raw_os_error(24))
        }))
    }

    /// tonic's loop retried at once (105% CPU); this one waits, doubling
    /// up to a second: in 1.5 s about ten attempts, not millions.
    #[tokio::test]
    async fn accept_errors_back_off_instead_of_spinning() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let incoming = admit_plain(
            emfile_forever(Arc::clone(&attempts)),
            limits(10),
            watch::channel(false).1,
            Connections::new(),
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let n = attempts.load(Ordering::Relaxed);
        // 5 + 10 + ... + 640 ms = 1.275 s: 9 attempts, one more at most.
        assert!((5..=12).contains(&n), "{n} accept attempts in 1.5 s");
        drop(incoming);
    }

    /// While accepts fail, connections already admitted are served (their
    /// tasks do not wait on the loop), and after the errors a connection is
    /// admitted again.
    #[tokio::test]
    async fn admitted_connections_are_served_through_accept_errors() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let real = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let attempts = Arc::new(AtomicUsize::new(0));
        let errors = emfile_forever(Arc::clone(&attempts)).take(6);
        // One connection first, then the errors, then the listener.
        let mut first = Some(tokio::net::TcpStream::connect(addr).await.unwrap());
        let accepted =
            real.take(1)
                .chain(errors)
                .chain(tokio_stream::wrappers::TcpListenerStream::new(
                    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
                ));
        let (_cut, cutoff) = watch::channel(false);
        let mut incoming = admit_plain(accepted, limits(10), cutoff, Connections::new());
        let mut admitted = incoming.next().await.unwrap().unwrap();
        // Served during the error storm: bytes flow both ways.
        let mut client = first.take().unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        admitted.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        admitted.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        assert!(attempts.load(Ordering::Relaxed) < 6, "still backing off");
    }

    #[test]
    fn the_opening_ends_at_the_first_headers_frame_however_it_is_split() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // SETTINGS with a 6-byte payload, WINDOW_UPDATE (4), then HEADERS.
        bytes.extend_from_slice(&[0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        bytes.extend_from_slice(&[0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        let headers_at = bytes.len();
        bytes.extend_from_slice(&[0, 0, 1, HEADERS, 4, 0, 0, 0, 1, 0x82]);
        for chunk in [1, 2, 7, 9, 64] {
            let mut opening = Opening::Preface { seen: 0 };
            let mut done_at = None;
            for (i, part) in bytes.chunks(chunk).enumerate() {
                if opening.feed(part) {
                    done_at = Some((i + 1) * chunk);
                    break;
                }
            }
            let done_at = done_at.expect("the request is seen");
            // Not before the HEADERS frame's header is complete.
            assert!(
                done_at >= headers_at + FRAME_HEADER_LEN,
                "chunk {chunk}: {done_at}"
            );
        }
        // The preface and SETTINGS alone open no request.
        let mut opening = Opening::Preface { seen: 0 };
        assert!(!opening.feed(&bytes[..headers_at]));
    }

    /// The client's opening: the preface, then a request's HEADERS frame.
    fn opening() -> Vec<u8> {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend_from_slice(&[0, 0, 1, HEADERS, 4, 0, 0, 0, 1, 0x82]);
        bytes
    }

    /// A connection over an in-memory pipe that has just opened its first
    /// request (nothing tracked reports to it but the test), the client's
    /// end (kept open and silent: the attacker answers nothing but pings),
    /// and the connection's activity, as the service side sees it.
    async fn opened(
        idle_timeout: Duration,
    ) -> (Admitted<DuplexStream>, DuplexStream, Arc<Activity>) {
        let (mut client, server) = tokio::io::duplex(1024);
        let activity = Activity::new();
        let limits = Limits {
            idle_timeout,
            ..limits(10)
        };
        let mut conn = Admitted::new(
            server,
            limits,
            watch::channel(false).1,
            (Arc::clone(&activity), None),
        );
        client.write_all(&opening()).await.unwrap();
        let mut buf = vec![0; opening().len()];
        conn.read_exact(&mut buf).await.unwrap();
        assert!(conn.opening.is_none());
        (conn, client, activity)
    }

    /// Reads the connection as hyper does, until a read fails: when (on
    /// tokio's clock) and how.
    fn closing(mut conn: Admitted<DuplexStream>) -> JoinHandle<(Instant, io::Error)> {
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) => panic!("the client hung up"),
                    Ok(_) => {}
                    Err(e) => return (Instant::now(), e),
                }
            }
        })
    }

    /// Waits (at most an hour of paused time) for the connection to close.
    async fn closed(reader: JoinHandle<(Instant, io::Error)>) -> (Instant, io::Error) {
        tokio::time::timeout(Duration::from_secs(3600), reader)
            .await
            .expect("the connection was never closed")
            .unwrap()
    }

    /// `took` is `expected`, up to the timer's millisecond rounding.
    fn about(took: Duration, expected: Duration) {
        assert!(
            took >= expected && took < expected + Duration::from_millis(10),
            "{took:?}, expected {expected:?}"
        );
    }

    /// A handle on the connection's requests, as the service gets one.
    fn slot(activity: &Arc<Activity>) -> activity::LiveSlot {
        activity::LiveSlot::new(activity, &Connections::new())
    }

    /// The passive holder without credentials: one request (whose body
    /// never comes, so nothing answers it), then only keepalive pings. It
    /// is closed `preface_timeout` after its request, not `idle_timeout`.
    #[tokio::test(start_paused = true)]
    async fn a_connection_without_credit_is_closed_a_preface_timeout_after_its_request() {
        let idle = Duration::from_secs(60);
        let (conn, _client, _activity) = opened(idle).await;
        let start = Instant::now();
        let (at, e) = closed(closing(conn)).await;
        about(at - start, limits(10).preface_timeout);
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    }

    /// The passive holder with credentials: an OK GetModel (its body never
    /// read, say), then only keepalive pings. It is closed `idle_timeout`
    /// after the answer.
    #[tokio::test(start_paused = true)]
    async fn a_credited_connection_with_nothing_live_is_closed_after_the_idle_timeout() {
        let idle = Duration::from_secs(60);
        let (conn, _client, activity) = opened(idle).await;
        let reader = closing(conn);
        tokio::time::sleep(Duration::from_secs(1)).await;
        slot(&activity).fetched();
        let start = Instant::now();
        let (at, e) = closed(reader).await;
        about(at - start, idle);
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    }

    /// A client waiting in the lobby for ten idle timeouts keeps its
    /// connection; the idle clock starts when it leaves (the reader,
    /// blocked all the while, is woken to arm it).
    #[tokio::test(start_paused = true)]
    async fn a_live_request_holds_the_connection_past_the_idle_timeout() {
        let idle = Duration::from_secs(60);
        let (conn, _client, activity) = opened(idle).await;
        let lobby = slot(&activity).go_live().unwrap();
        let reader = closing(conn);
        tokio::time::sleep(idle * 10).await;
        assert!(!reader.is_finished(), "closed while a request was live");
        drop(lobby);
        let ended = Instant::now();
        let (at, e) = closed(reader).await;
        about(at - ended, idle);
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    }

    /// The refused client that keeps its connection and sends its refused
    /// Participate again every 300 ms: closed REFUSED_LINGER after the
    /// first refusal, long before the idle timeout, the later refusals
    /// extending nothing.
    #[tokio::test(start_paused = true)]
    async fn a_refused_connection_is_closed_after_the_linger_however_often_it_is_refused() {
        let idle = Duration::from_secs(60);
        let (conn, _client, activity) = opened(idle).await;
        let reader = closing(conn);
        let first = Instant::now();
        while !reader.is_finished() {
            drop(activity.answer(true, Some(activity::Outcome::Refused)));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (at, e) = closed(reader).await;
        about(at - first, activity::REFUSED_LINGER);
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted, "{e}");
    }

    /// A refusal on a connection with another request live waits for it;
    /// if that one ends refused too, the connection closes at once (the
    /// linger has passed).
    #[tokio::test(start_paused = true)]
    async fn a_refusal_waits_for_the_connections_live_request() {
        let idle = Duration::from_secs(60);
        let (conn, _client, activity) = opened(idle).await;
        let lobby = slot(&activity).go_live().unwrap();
        let reader = closing(conn);
        drop(activity.answer(true, Some(activity::Outcome::Refused)));
        tokio::time::sleep(activity::REFUSED_LINGER * 10).await;
        assert!(!reader.is_finished(), "closed while a request was live");
        drop(lobby);
        let ended = Instant::now();
        let (at, _) = closed(reader).await;
        // The linger counts from the live client's end, so its final
        // frames still go out.
        about(at - ended, activity::REFUSED_LINGER);
    }
}
