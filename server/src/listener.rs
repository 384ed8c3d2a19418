//! Admission of network connections: what a connection must do, and how
//! fast, before the gRPC service spends anything on it.
//!
//! A connection costs a file descriptor, a task and buffers before it has
//! said who it is, so an attacker who only opens sockets must not be able
//! to hold them. Every accepted connection goes through these steps, each
//! bounded:
//!
//! 1. **Cap.** At most `max_connections` connections are open at once
//!    (both halves of a TLS connection, handshake included). One over the
//!    cap is closed at once and counted (`reason="cap"`); a client retries.
//! 2. **TLS handshake**, on the TLS port: it must finish within
//!    `tls_handshake_timeout`, or the connection is closed
//!    (`reason="tls_handshake_timeout"`).
//! 3. **HTTP/2 preface and first request**: the client must send the
//!    connection preface and the HEADERS frame of its first request within
//!    `preface_timeout` (after the handshake on the TLS port). An idle
//!    socket, a preface dripped one byte a second and a client that only
//!    answers pings are all closed when it passes
//!    (`reason="preface_timeout"`). After its first request a connection is
//!    kept while it answers HTTP/2 keepalive pings (a client waits in the
//!    lobby on one stream).
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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::metrics;

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
}

/// The stream of admitted plain-text connections for tonic.
pub(crate) type PlainIncoming = ReceiverStream<io::Result<FirstRequest<Slot<tokio::net::TcpStream>>>>;
/// The stream of admitted TLS connections for tonic.
pub(crate) type TlsIncoming =
    ReceiverStream<io::Result<FirstRequest<TlsStream<Slot<tokio::net::TcpStream>>>>>;

/// Admits plain-text connections from `accepted`.
pub(crate) fn admit_plain<S>(accepted: S, limits: Limits) -> PlainIncoming
where
    S: Stream<Item = io::Result<tokio::net::TcpStream>> + Send + 'static,
{
    admit(accepted, limits, move |conn| async move {
        Some(FirstRequest::new(conn, limits.preface_timeout))
    })
}

/// Admits TLS connections from `accepted`, each after its handshake.
pub(crate) fn admit_tls<S>(accepted: S, limits: Limits, acceptor: TlsAcceptor) -> TlsIncoming
where
    S: Stream<Item = io::Result<tokio::net::TcpStream>> + Send + 'static,
{
    admit(accepted, limits, move |conn| {
        let acceptor = acceptor.clone();
        async move {
            match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(conn)).await {
                Ok(Ok(tls)) => Some(FirstRequest::new(tls, limits.preface_timeout)),
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

/// The accept loop: takes connections from `accepted` under the cap, runs
/// `setup` (the TLS handshake, the deadline) on each in its own task, and
/// hands the ready ones to tonic through the returned stream. The loop
/// ends when tonic drops that stream (shutdown) or `accepted` ends.
fn admit<S, IO, F, Fut, Out>(accepted: S, limits: Limits, setup: F) -> ReceiverStream<io::Result<Out>>
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
                        "connection cap reached: {} connections are open, a new one was closed{} \
                         (raise --max-connections if honest clients are refused)",
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
    Preface { seen: usize },
    Header { buf: [u8; FRAME_HEADER_LEN], have: usize },
    Payload { left: usize },
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

/// A connection that must open its first request before a deadline (see
/// the module docs): reads fail with `TimedOut` once it passes, and hyper
/// closes the connection.
#[derive(Debug)]
pub(crate) struct FirstRequest<IO> {
    io: IO,
    /// `None` once the first request opened.
    watch: Option<(Opening, Pin<Box<Sleep>>)>,
    expired: bool,
}

impl<IO> FirstRequest<IO> {
    fn new(io: IO, timeout: Duration) -> Self {
        FirstRequest {
            io,
            watch: Some((
                Opening::Preface { seen: 0 },
                Box::pin(tokio::time::sleep(timeout)),
            )),
            expired: false,
        }
    }

    fn timed_out() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "no HTTP/2 request within the preface timeout",
        )
    }
}

impl<IO: Connected> Connected for FirstRequest<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FirstRequest<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(Err(Self::timed_out()));
        }
        // The deadline first: a client that drips bytes always has one
        // ready, and must not outrun it that way.
        if let Some((_, deadline)) = &mut this.watch
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.watch = None;
            this.expired = true;
            metrics::connection_refused("preface_timeout");
            debug!("no HTTP/2 request within the preface timeout: connection closed");
            return Poll::Ready(Err(Self::timed_out()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if let Some((opening, _)) = &mut this.watch
            && opening.feed(&buf.filled()[before..])
        {
            this.watch = None;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FirstRequest<IO> {
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
