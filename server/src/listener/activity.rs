//! What the service side sees of a connection's requests, for the
//! listener's deadlines (step 4 of the parent module's docs).
//!
//! The deadlines live in the connection's IO wrapper ([`super::Admitted`]),
//! the only place that can close a connection tonic serves: tonic runs
//! hyper's per-connection task itself and offers no per-connection shutdown
//! hook (only `max_connection_age`, the same for every connection, which
//! would cut clients waiting in the lobby). But only the service knows
//! whether a request carries a client it admitted, and tonic gives a
//! request no handle on its connection, only the connection's
//! `ConnectInfo` (local and peer address) in its extensions, inserted
//! outside the layers added with `Server::builder().layer(..)`. So each
//! admitted connection registers its [`Activity`] under those addresses in
//! [`Connections`], and [`TrackLayer`] finds it there for each request and
//! hands the service a [`LiveSlot`] in the request's extensions (tonic
//! copies them into `tonic::Request::extensions`):
//!
//! - **Live** only when the service says so: a client it admitted to the
//!   lobby (after authentication, and in the malicious-server model after
//!   its identity proof verified) holds a [`LiveGuard`], which the client's
//!   lobby entry and then its round keep. The connection is live while one
//!   of its requests holds a guard; the guard ends when the lobby or the
//!   round drops the client, or when hyper drops the response body (the
//!   client reset its stream, or the stream ended), whichever comes first.
//!   Nothing else is live: not a response's OK headers (a challenged Join
//!   gets them before any proof), not a GetModel body however long it
//!   waits for the client's flow-control window, not a health `Watch`.
//! - **Credit**: a connection that has had a client admitted, or an OK
//!   GetModel answer, has shown credentials; until then it is closed
//!   `preface_timeout` after its first request opened, instead of
//!   `idle_timeout`. An OK GetModel answer also restarts the idle clock
//!   (once, when its handler answers: a download has `idle_timeout` to
//!   complete), and makes nothing live.
//! - **Principals**: each principal (a token's or certificate's name, not
//!   the anonymous names of insecure-dev mode) is counted on the open
//!   connections it authenticated on; a request that would make it more
//!   than [`MAX_CONNECTIONS_PER_CLIENT`] is refused (`RESOURCE_EXHAUSTED`)
//!   and its connection then closes after the refusal linger. So one token
//!   holds at most that many slots, whatever it does.
//! - a response that ends with a non-OK `grpc-status` (in the headers of a
//!   trailers-only response or in the trailers), or whose body fails, is a
//!   **refusal**, on any path. Only an OK Aggregator response (its
//!   trailers) lifts it.
//!
//! A connection with nothing live is closed `preface_timeout` after its
//! first request opened if it has no credit, `idle_timeout` after its last
//! live client ended (or its last OK GetModel answer, or its first
//! request) if it has, and [`REFUSED_LINGER`] after its first refusal not
//! lifted since, whichever is first.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tessera_proto::v1::aggregator_server::SERVICE_NAME;
use tokio::time::Instant;
use tonic::codegen::{Service, http};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower_layer::Layer;

/// How long a connection whose request was refused stays open with nothing
/// live. Not zero: the refusal's frames may still sit in hyper's write
/// buffer when its body is dropped, and a failed read makes hyper drop the
/// connection without flushing them, so the client would see a reset
/// instead of its refusal (and the SDK would report the server unreachable
/// instead of, say, `NOT_ELIGIBLE`). Fixed from the first refusal: a
/// client that keeps sending refused requests does not extend it. (A party
/// without credentials that is never refused, because it never sends a
/// request's message, is closed by the no-credit deadline instead:
/// `preface_timeout` after its first request.)
pub(crate) const REFUSED_LINGER: Duration = Duration::from_secs(2);

/// Most open connections one principal (a token's or a client
/// certificate's name) may have authenticated on at once. An honest client
/// needs one for its round (the SDK opens a connection per call) and one
/// for a model fetch, with room for a few concurrent calls of one app;
/// anything more holds cap slots other clients need. A request over it is
/// refused `RESOURCE_EXHAUSTED`, and its connection closes after the
/// refusal linger.
pub(crate) const MAX_CONNECTIONS_PER_CLIENT: usize = 4;

/// The header and trailer that carry a gRPC call's status.
const GRPC_STATUS: &str = "grpc-status";

/// A connection as tonic names it in a request's extensions: its local and
/// peer addresses. The pair, not the peer alone: a listener on `0.0.0.0`
/// may be reached on two local addresses from one peer port.
type Key = (Option<SocketAddr>, SocketAddr);

/// The open connections' [`Activity`], by address, shared by the listener
/// (which registers each admitted connection) and [`TrackLayer`] (which
/// looks a request's connection up); and how many open connections each
/// principal authenticated on.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    by_addr: Mutex<HashMap<Key, Arc<Activity>>>,
    principals: Mutex<HashMap<String, usize>>,
}

impl Connections {
    /// An empty map.
    pub(crate) fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Registers `activity` under `key` for as long as the returned value
    /// lives (the connection's lifetime).
    pub(crate) fn register(self: &Arc<Self>, key: Key, activity: &Arc<Activity>) -> Registration {
        lock(&self.by_addr).insert(key, Arc::clone(activity));
        Registration {
            connections: Arc::clone(self),
            key,
            activity: Arc::clone(activity),
        }
    }

    /// The activity of the connection a request came on, from the
    /// `ConnectInfo` tonic put in its extensions (plain TCP, or our own TLS
    /// stream over TCP).
    fn find(&self, extensions: &http::Extensions) -> Option<Arc<Activity>> {
        let tcp = extensions.get::<TcpConnectInfo>().or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(TlsConnectInfo::get_ref)
        })?;
        let key = (tcp.local_addr(), tcp.remote_addr()?);
        lock(&self.by_addr).get(&key).cloned()
    }

    /// How many connections are registered (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.by_addr).len()
    }

    /// How many open connections `principal` is counted on (tests).
    #[cfg(test)]
    pub(crate) fn connections_of(&self, principal: &str) -> usize {
        lock(&self.principals).get(principal).copied().unwrap_or(0)
    }
}

/// A connection's entry in [`Connections`]; dropping it removes the entry
/// (unless a newer connection from the same addresses took it over) and
/// the connection's count under each principal it authenticated.
#[derive(Debug)]
pub(crate) struct Registration {
    connections: Arc<Connections>,
    key: Key,
    activity: Arc<Activity>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        {
            let mut map = lock(&self.connections.by_addr);
            if map
                .get(&self.key)
                .is_some_and(|a| Arc::ptr_eq(a, &self.activity))
            {
                map.remove(&self.key);
            }
        }
        let principals = {
            let mut state = lock(&self.activity.state);
            state.closed = true;
            std::mem::take(&mut state.principals)
        };
        let mut counts = lock(&self.connections.principals);
        for principal in principals {
            if let Some(n) = counts.get_mut(&principal) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&principal);
                }
            }
        }
    }
}

/// Why a connection's deadline closes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// No credit, `preface_timeout` after the first request.
    Uncredited,
    /// Nothing live for `idle_timeout`.
    Idle,
    /// A refusal, [`REFUSED_LINGER`] ago.
    Refused,
}

/// How a response ended, as far as its connection's deadlines care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// `grpc-status: 0`.
    Ok,
    /// Any other status, or a body that failed.
    Refused,
    /// No status seen: the body was dropped before its trailers (the client
    /// reset the stream, the connection closed, or a trailers-less OK
    /// response still waits for its window).
    Unfinished,
}

impl Outcome {
    /// The status a header map carries, if it carries one.
    fn of(headers: &http::HeaderMap) -> Option<Outcome> {
        headers.get(GRPC_STATUS).map(|status| {
            if status == "0" {
                Outcome::Ok
            } else {
                Outcome::Refused
            }
        })
    }
}

/// One connection's requests, as the service side reports them and the
/// connection's reader ([`super::Admitted`]) reads them.
#[derive(Debug)]
pub(crate) struct Activity {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Live clients (see the module docs).
    live: usize,
    /// Whether the connection has shown credentials: a client admitted,
    /// or an OK GetModel answer.
    credited: bool,
    /// When `live` last fell to zero, the last OK GetModel answer, or the
    /// first request opened.
    idle_since: Instant,
    /// The first refusal since the last OK Aggregator response (moved to
    /// when the last live client ended, if later: see
    /// [`Activity::live_ended`]).
    refused_since: Option<Instant>,
    /// An identity proof is awaited on this connection until then (see
    /// [`LiveSlot::credit_until`]): the idle deadline is no earlier.
    proof_until: Option<Instant>,
    /// The principals counted on this connection in
    /// [`Connections::principals`].
    principals: Vec<String>,
    /// The connection has closed (its registration dropped): no principal
    /// is counted on it any more.
    closed: bool,
    /// The connection's reader, woken when a deadline may have moved
    /// closer (a live client ended, a refusal), so that it arms it.
    reader: Option<Waker>,
}

impl Activity {
    /// A connection admitted now, nothing live, no credit.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity {
            state: Mutex::new(State {
                live: 0,
                credited: false,
                idle_since: Instant::now(),
                refused_since: None,
                proof_until: None,
                principals: Vec::new(),
                closed: false,
                reader: None,
            }),
        })
    }

    /// The connection's first request opened: its deadline's clock starts
    /// now (not at accept, so the preface phase, which has its own
    /// deadline, does not use up its time).
    pub(crate) fn opened(&self) {
        let mut state = lock(&self.state);
        if state.live == 0 {
            state.idle_since = Instant::now();
        }
    }

    /// When the connection must close if nothing goes live first, and why;
    /// `None` while a client is live. Keeps `reader` to wake when this may
    /// change.
    pub(crate) fn deadline(
        &self,
        idle_timeout: Duration,
        preface_timeout: Duration,
        reader: &Waker,
    ) -> Option<(Instant, Deadline)> {
        let mut state = lock(&self.state);
        if !state.reader.as_ref().is_some_and(|w| w.will_wake(reader)) {
            state.reader = Some(reader.clone());
        }
        if state.live > 0 {
            return None;
        }
        let quiet = if state.credited {
            let idle = state.idle_since + idle_timeout;
            (
                state.proof_until.map_or(idle, |at| at.max(idle)),
                Deadline::Idle,
            )
        } else {
            (state.idle_since + preface_timeout, Deadline::Uncredited)
        };
        Some(match state.refused_since {
            Some(at) if at + REFUSED_LINGER <= quiet.0 => (at + REFUSED_LINGER, Deadline::Refused),
            _ => quiet,
        })
    }

    /// A response started on this connection: `counts` if it answers a
    /// `tessera.v1.Aggregator` request, `status` if its headers carry the
    /// call's status (a trailers-only response: the call has ended). The
    /// returned value reports the response's outcome when dropped. A
    /// response is never live by itself: only a [`LiveGuard`] is.
    pub(crate) fn answer(self: &Arc<Self>, counts: bool, status: Option<Outcome>) -> Answer {
        Answer {
            activity: Arc::clone(self),
            counts,
            outcome: status.unwrap_or(Outcome::Unfinished),
            slot: None,
        }
    }

    /// A response ended (see [`Answer`]).
    fn ended(&self, counts: bool, outcome: Outcome) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        match outcome {
            Outcome::Refused => {
                state.refused_since.get_or_insert(now);
                if state.live == 0
                    && let Some(reader) = &state.reader
                {
                    reader.wake_by_ref();
                }
            }
            Outcome::Ok if counts => state.refused_since = None,
            Outcome::Ok | Outcome::Unfinished => {}
        }
    }

    /// A client was admitted on this connection.
    fn went_live(&self) {
        let mut state = lock(&self.state);
        state.live += 1;
        state.credited = true;
    }

    /// A client admitted on this connection left the lobby or its round,
    /// or its stream ended.
    fn live_ended(&self) {
        let mut state = lock(&self.state);
        state.live -= 1;
        if state.live == 0 {
            let now = Instant::now();
            state.idle_since = now;
            // A refusal earlier on the connection (say a GetModel of an
            // unknown version) must not cut the last client's final
            // frames (its result, or the server's shutdown status): the
            // linger counts from when the connection went quiet (red-team
            // review of 1b25ae4).
            if let Some(since) = &mut state.refused_since {
                *since = now;
            }
            if let Some(reader) = &state.reader {
                reader.wake_by_ref();
            }
        }
    }

    /// A GetModel was answered OK: credit, and the idle clock restarts
    /// (the deadline only moves later, so the reader need not be woken).
    fn fetched(&self) {
        let mut state = lock(&self.state);
        state.credited = true;
        // Lifted when the answer starts, not when its body ends, so an
        // earlier refusal's linger cannot cut the download.
        state.refused_since = None;
        if state.live == 0 {
            state.idle_since = Instant::now();
        }
    }

    /// An identity proof is awaited until `until`: credit, and the idle
    /// deadline is no earlier than `until`.
    fn awaiting_proof(&self, until: Instant) {
        let mut state = lock(&self.state);
        state.credited = true;
        // An earlier refusal on the connection still closes it after its
        // linger: lifting it here would let one token keep a connection
        // with challenges it never proves, each refused at the stage
        // deadline (tests/tests/end_to_end/redteam_session_review.rs). So a client
        // that reuses one connection after a refusal has the rest of the
        // linger for a proof; the SDK opens a connection per call.
        if state.proof_until.is_none_or(|at| at < until) {
            state.proof_until = Some(until);
        }
    }

    /// Counts `principal` on this connection, unless it is counted already
    /// or the connection has closed; refuses it (with how many connections
    /// it has) if it already has [`MAX_CONNECTIONS_PER_CLIENT`] others.
    fn claim(&self, connections: &Connections, principal: &str) -> Result<(), usize> {
        let mut state = lock(&self.state);
        if state.closed || state.principals.iter().any(|p| p == principal) {
            return Ok(());
        }
        let mut counts = lock(&connections.principals);
        let n = counts.entry(principal.to_owned()).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_CLIENT {
            return Err(*n);
        }
        *n += 1;
        state.principals.push(principal.to_owned());
        Ok(())
    }

    /// Live clients (tests).
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        lock(&self.state).live
    }
}

/// One request's handle on its connection, which [`TrackLayer`] puts in
/// the request's extensions for the service: to count the principal it
/// authenticated as ([`LiveSlot::claim`]), to make the connection live
/// while a client it admitted stays ([`LiveSlot::go_live`]), and to credit
/// an OK GetModel ([`LiveSlot::fetched`]).
#[derive(Clone, Debug)]
pub(crate) struct LiveSlot(Arc<SlotInner>);

#[derive(Debug)]
struct SlotInner {
    activity: Arc<Activity>,
    connections: Arc<Connections>,
    state: Mutex<SlotState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Nothing admitted yet.
    Pending,
    /// A client admitted: the connection counts it live.
    Live,
    /// The request is over (its response body dropped, its guard dropped,
    /// or its response never started): it can never go live again.
    Ended,
}

impl LiveSlot {
    /// A request's handle on the connection whose activity is `activity`.
    pub(crate) fn new(activity: &Arc<Activity>, connections: &Arc<Connections>) -> Self {
        LiveSlot(Arc::new(SlotInner {
            activity: Arc::clone(activity),
            connections: Arc::clone(connections),
            state: Mutex::new(SlotState::Pending),
        }))
    }

    /// The request's client was admitted (to the lobby): the connection is
    /// live until the returned guard is dropped or the request's response
    /// body is, whichever comes first. `None` if the request is already
    /// over (the client reset its stream before its proof verified), or
    /// went live before.
    pub(crate) fn go_live(&self) -> Option<LiveGuard> {
        let mut state = lock(&self.0.state);
        if *state != SlotState::Pending {
            return None;
        }
        *state = SlotState::Live;
        self.0.activity.went_live();
        Some(LiveGuard(self.clone()))
    }

    /// The request is over: no longer live, and never again.
    fn end(&self) {
        let mut state = lock(&self.0.state);
        if *state == SlotState::Live {
            self.0.activity.live_ended();
        }
        *state = SlotState::Ended;
    }

    /// A GetModel on this request was answered OK (see
    /// [`Activity::fetched`]).
    pub(crate) fn fetched(&self) {
        self.0.activity.fetched();
    }

    /// The request authenticated and named an enrolled identity, whose
    /// proof may take until `until` (the stage deadline): the connection is
    /// credited and not closed as idle before then, whatever the idle
    /// timeout (a refusal on it still closes it after the linger). A token
    /// holder gains nothing an OK GetModel would not give it, and holds at
    /// most [`MAX_CONNECTIONS_PER_CLIENT`] connections.
    pub(crate) fn credit_until(&self, until: Instant) {
        self.0.activity.awaiting_proof(until);
    }

    /// The request authenticated as `principal`: counts it on this
    /// connection; `Err(n)` if it already has `n` =
    /// [`MAX_CONNECTIONS_PER_CLIENT`] other open connections.
    pub(crate) fn claim(&self, principal: &str) -> Result<(), usize> {
        self.0.activity.claim(&self.0.connections, principal)
    }
}

/// A client admitted on a connection: the connection is live while this
/// lives (and the request's response body does). Held by the client's
/// lobby entry, then by its round.
#[derive(Debug)]
pub(crate) struct LiveGuard(LiveSlot);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Ends a request's [`LiveSlot`] when dropped: with its response body, or
/// with the request's future if no response was made.
#[derive(Debug)]
struct SlotEnd(LiveSlot);

impl Drop for SlotEnd {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// One response's part in its connection's [`Activity`]: its outcome
/// reported, and its request's [`LiveSlot`] ended, when dropped.
#[derive(Debug)]
pub(crate) struct Answer {
    activity: Arc<Activity>,
    counts: bool,
    outcome: Outcome,
    slot: Option<SlotEnd>,
}

impl Answer {
    /// The call's status arrived (in the trailers), or its body failed.
    pub(crate) fn ended_with(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        // The slot first: a live client whose stream ended is no longer
        // live when the outcome wakes the reader.
        drop(self.slot.take());
        self.activity.ended(self.counts, self.outcome);
    }
}

/// Whether a request's path is one of the Aggregator service's methods
/// (`/tessera.v1.Aggregator/Participate`, `.../GetModel`): the only
/// requests that need a client's credentials, so the only ones whose OK
/// answer lifts a refusal.
fn counts(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(SERVICE_NAME))
        .is_some_and(|method| method.starts_with('/'))
}

/// The tower layer (added with `Server::builder().layer`) that hands each
/// request a [`LiveSlot`] and reports its response to its connection's
/// [`Activity`].
#[derive(Clone, Debug)]
pub(crate) struct TrackLayer {
    connections: Arc<Connections>,
}

impl TrackLayer {
    /// Reports to the connections registered in `connections`.
    pub(crate) fn new(connections: Arc<Connections>) -> Self {
        TrackLayer { connections }
    }
}

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;
    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            connections: Arc::clone(&self.connections),
        }
    }
}

/// The service [`TrackLayer`] wraps around tonic's router.
#[derive(Clone, Debug)]
pub(crate) struct Track<S> {
    inner: S,
    connections: Arc<Connections>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Track<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<Tracked<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // A connection that is not registered (its peer address was
        // unknown at accept) is not tracked: its requests get no slot, so
        // none goes live, and its reader's no-credit deadline runs
        // regardless.
        let activity = self.connections.find(request.extensions());
        let slot = activity.as_ref().map(|activity| {
            let slot = LiveSlot::new(activity, &self.connections);
            request.extensions_mut().insert(slot.clone());
            SlotEnd(slot)
        });
        let counts = counts(request.uri().path());
        let response = self.inner.call(request);
        Box::pin(async move {
            // Dropped before the response (the client reset the stream):
            // `slot` ends with this future.
            let response = response.await?;
            let answer = activity.map(|activity| {
                let mut answer = activity.answer(counts, Outcome::of(response.headers()));
                answer.slot = slot;
                answer
            });
            Ok(response.map(|body| Tracked { body, answer }))
        })
    }
}

/// A response body that reports to its connection's [`Activity`]: the
/// status in its trailers, and its end when hyper drops it.
#[derive(Debug)]
pub(crate) struct Tracked<B> {
    body: B,
    answer: Option<Answer>,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(answer) = &mut this.answer {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(outcome) = frame.trailers_ref().and_then(Outcome::of) {
                        answer.ended_with(outcome);
                    }
                }
                Poll::Ready(Some(Err(_))) => answer.ended_with(Outcome::Refused),
                Poll::Ready(None) | Poll::Pending => {}
            }
        }
        polled
    }

    // Passed through: hyper sends a trailers-only response (an empty body)
    // as one HEADERS frame only if the body says it has ended.
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The lock, even if a panic elsewhere poisoned it: every update leaves the
/// state consistent, and a connection must still be closable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;

    use super::*;

    /// A response body of scripted frames.
    #[derive(Debug, Default)]
    struct Script(VecDeque<Result<Frame<&'static [u8]>, ()>>);

    impl Body for Script {
        type Data = &'static [u8];
        type Error = ();
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<&'static [u8]>, ()>>> {
            Poll::Ready(self.0.pop_front())
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    /// A trailers frame carrying gRPC status `status`.
    fn trailers(status: &'static str) -> Result<Frame<&'static [u8]>, ()> {
        let mut map = http::HeaderMap::new();
        map.insert(GRPC_STATUS, http::HeaderValue::from_static(status));
        Ok(Frame::trailers(map))
    }

    /// A service that answers every request with the response its
    /// function makes (as tonic's router would).
    /// It keeps the last request's [`LiveSlot`] in `seen`.
    #[derive(Clone)]
    struct Answers {
        respond: fn() -> http::Response<Script>,
        seen: Arc<Mutex<Option<LiveSlot>>>,
    }

    impl Service<http::Request<()>> for Answers {
        type Response = http::Response<Script>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, request: http::Request<()>) -> Self::Future {
            *lock(&self.seen) = request.extensions().get::<LiveSlot>().cloned();
            std::future::ready(Ok((self.respond)()))
        }
    }

    /// A streamed response: OK headers, a message, then `status` in the
    /// trailers.
    fn streamed(status: &'static str) -> http::Response<Script> {
        http::Response::new(Script(
            [Ok(Frame::data(&b"message"[..])), trailers(status)].into(),
        ))
    }

    /// A trailers-only refusal, as `Status::into_http` makes it.
    fn refused_outright() -> http::Response<Script> {
        let mut response = http::Response::new(Script::default());
        response
            .headers_mut()
            .insert(GRPC_STATUS, http::HeaderValue::from_static("16"));
        response
    }

    /// The peer of the connection the tests' requests come on.
    const PEER: &str = "10.0.0.7:50123";

    /// A request on the connection from [`PEER`], its `ConnectInfo` as
    /// tonic inserts it for a plain connection (a TLS connection's,
    /// `TlsConnectInfo`, has no public constructor: the integration tests
    /// run over TLS).
    fn request(path: &str) -> http::Request<()> {
        let mut request = http::Request::builder().uri(path).body(()).unwrap();
        request.extensions_mut().insert(TcpConnectInfo {
            local_addr: Some("10.0.0.1:7443".parse().unwrap()),
            remote_addr: Some(PEER.parse().unwrap()),
        });
        request
    }

    /// Sends a request for `path` on [`PEER`]'s connection through the
    /// tracking layer to a router that answers with `respond`'s response.
    async fn call(
        connections: &Arc<Connections>,
        respond: fn() -> http::Response<Script>,
        path: &str,
    ) -> http::Response<Tracked<Script>> {
        call_slot(connections, respond, path).await.0
    }

    /// [`call`], and the [`LiveSlot`] the service was handed.
    async fn call_slot(
        connections: &Arc<Connections>,
        respond: fn() -> http::Response<Script>,
        path: &str,
    ) -> (http::Response<Tracked<Script>>, LiveSlot) {
        let seen = Arc::new(Mutex::new(None));
        let mut track = TrackLayer::new(Arc::clone(connections)).layer(Answers {
            respond,
            seen: Arc::clone(&seen),
        });
        let response = track.call(request(path)).await.unwrap();
        let slot = lock(&seen).take().expect("a tracked request has a slot");
        (response, slot)
    }

    /// Drains a body as hyper would, then drops it.
    async fn send(response: http::Response<Tracked<Script>>) {
        let mut body = response.into_body();
        while std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .is_some()
        {}
    }

    /// A map with one connection, from [`PEER`], registered.
    fn registered() -> (Arc<Connections>, Arc<Activity>, Registration) {
        let connections = Connections::new();
        let activity = Activity::new();
        let key = (
            Some("10.0.0.1:7443".parse().unwrap()),
            PEER.parse().unwrap(),
        );
        let registration = connections.register(key, &activity);
        (connections, activity, registration)
    }

    /// A reader's waker, for [`Activity::deadline`] (nobody reads here).
    fn waker() -> Waker {
        Waker::noop().clone()
    }

    const IDLE: Duration = Duration::from_secs(60);
    const PREFACE: Duration = Duration::from_secs(10);

    fn deadline(activity: &Activity) -> Option<(Instant, Deadline)> {
        activity.deadline(IDLE, PREFACE, &waker())
    }

    /// OK headers on an Aggregator stream (a challenged Join gets them
    /// before its proof) make nothing live and give no credit: only the
    /// service's `go_live` does, until the guard is dropped.
    #[tokio::test(start_paused = true)]
    async fn a_response_is_never_live_by_itself_only_an_admitted_client_is() {
        let (connections, activity, _registration) = registered();
        let start = Instant::now();
        let (response, slot) = call_slot(
            &connections,
            || streamed("0"),
            "/tessera.v1.Aggregator/Participate",
        )
        .await;
        assert_eq!(activity.live(), 0);
        assert_eq!(
            deadline(&activity),
            Some((start + PREFACE, Deadline::Uncredited))
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let guard = slot.go_live().expect("the request is under way");
        assert!(slot.go_live().is_none(), "live once");
        assert_eq!(activity.live(), 1);
        assert_eq!(deadline(&activity), None);
        tokio::time::advance(Duration::from_secs(600)).await;
        // The client left the lobby (or its round ended) while hyper still
        // holds the body: the connection is no longer live.
        drop(guard);
        assert_eq!(activity.live(), 0);
        let left = Instant::now();
        assert_eq!(deadline(&activity), Some((left + IDLE, Deadline::Idle)));
        // Its body's end changes nothing more.
        send(response).await;
        assert_eq!(activity.live(), 0);
        assert_eq!(deadline(&activity), Some((left + IDLE, Deadline::Idle)));
    }

    /// A live client whose stream ends (hyper drops the body: the client
    /// reset it) is no longer live, though the lobby still holds its guard.
    #[tokio::test(start_paused = true)]
    async fn a_live_client_ends_with_its_response_body_or_its_guard_whichever_is_first() {
        let (connections, activity, _registration) = registered();
        let (response, slot) = call_slot(
            &connections,
            || streamed("0"),
            "/tessera.v1.Aggregator/Participate",
        )
        .await;
        let guard = slot.go_live().unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(response);
        assert_eq!(activity.live(), 0);
        let ended = Instant::now();
        assert_eq!(deadline(&activity), Some((ended + IDLE, Deadline::Idle)));
        drop(guard);
        assert_eq!(activity.live(), 0);
    }

    /// A request whose response never started (the client reset it while
    /// the handler ran), or whose body was dropped, never goes live: a
    /// proof verified after the client left admits nothing live.
    #[tokio::test(start_paused = true)]
    async fn a_request_that_ended_never_goes_live() {
        let (connections, activity, _registration) = registered();
        let seen = Arc::new(Mutex::new(None));
        let mut track = TrackLayer::new(Arc::clone(&connections)).layer(Answers {
            respond: || streamed("0"),
            seen: Arc::clone(&seen),
        });
        let future = track.call(request("/tessera.v1.Aggregator/Participate"));
        drop(future);
        let slot = lock(&seen).take().unwrap();
        assert!(slot.go_live().is_none());
        let (response, slot) = call_slot(
            &connections,
            || streamed("0"),
            "/tessera.v1.Aggregator/Participate",
        )
        .await;
        drop(response);
        assert!(slot.go_live().is_none());
        assert_eq!(activity.live(), 0);
    }

    /// An OK GetModel answer credits the connection and restarts its idle
    /// clock once; its body, never read, keeps nothing live.
    #[tokio::test(start_paused = true)]
    async fn an_ok_model_answer_credits_the_connection_once_and_its_body_holds_nothing() {
        let (connections, activity, _registration) = registered();
        let start = Instant::now();
        assert_eq!(
            deadline(&activity),
            Some((start + PREFACE, Deadline::Uncredited))
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        let (unread, slot) = call_slot(
            &connections,
            || streamed("0"),
            "/tessera.v1.Aggregator/GetModel",
        )
        .await;
        slot.fetched();
        let fetched = Instant::now();
        assert_eq!(activity.live(), 0);
        assert_eq!(deadline(&activity), Some((fetched + IDLE, Deadline::Idle)));
        tokio::time::advance(IDLE * 2).await;
        assert_eq!(deadline(&activity), Some((fetched + IDLE, Deadline::Idle)));
        drop(unread);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_closes_after_the_linger_unless_something_is_live() {
        let (connections, activity, _registration) = registered();
        let start = Instant::now();
        send(
            call(
                &connections,
                refused_outright,
                "/tessera.v1.Aggregator/Participate",
            )
            .await,
        )
        .await;
        assert_eq!(
            deadline(&activity),
            Some((start + REFUSED_LINGER, Deadline::Refused))
        );

        // A refusal in the trailers of a stream whose client was live:
        // nothing is live once it ends, and the linger runs from there
        // (the last client's final frames get the linger too), not from
        // the connection's first refusal.
        let (response, slot) = call_slot(
            &connections,
            || streamed("9"),
            "/tessera.v1.Aggregator/Participate",
        )
        .await;
        let guard = slot.go_live().unwrap();
        assert_eq!(deadline(&activity), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        send(response).await;
        drop(guard);
        let ended = Instant::now();
        assert!(ended > start);
        assert_eq!(
            deadline(&activity),
            Some((ended + REFUSED_LINGER, Deadline::Refused))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_not_extended_by_more_refusals_and_only_an_ok_answer_lifts_it() {
        let (connections, activity, _registration) = registered();
        let start = Instant::now();
        for _ in 0..5 {
            send(
                call(
                    &connections,
                    refused_outright,
                    "/tessera.v1.Aggregator/Participate",
                )
                .await,
            )
            .await;
            tokio::time::advance(Duration::from_millis(300)).await;
        }
        assert_eq!(
            deadline(&activity),
            Some((start + REFUSED_LINGER, Deadline::Refused))
        );
        // An OK health check, or an unknown path, lifts nothing.
        send(
            call(
                &connections,
                || streamed("0"),
                "/grpc.health.v1.Health/Check",
            )
            .await,
        )
        .await;
        send(
            call(
                &connections,
                refused_outright,
                "/tessera.v1.AggregatorX/GetModel",
            )
            .await,
        )
        .await;
        assert_eq!(
            deadline(&activity),
            Some((start + REFUSED_LINGER, Deadline::Refused))
        );
        // An OK Aggregator answer (a client with credentials) does; the
        // service's credit restarts the idle clock.
        let (response, slot) = call_slot(
            &connections,
            || streamed("0"),
            "/tessera.v1.Aggregator/GetModel",
        )
        .await;
        slot.fetched();
        let ok_at = Instant::now();
        send(response).await;
        assert_eq!(deadline(&activity), Some((ok_at + IDLE, Deadline::Idle)));
    }

    #[tokio::test(start_paused = true)]
    async fn other_services_never_hold_a_connection_nor_credit_it() {
        let (connections, activity, _registration) = registered();
        let start = Instant::now();
        // A health Watch stream: OK headers and a body that goes on.
        let watch = call(
            &connections,
            || streamed("0"),
            "/grpc.health.v1.Health/Watch",
        )
        .await;
        assert_eq!(activity.live(), 0);
        tokio::time::advance(Duration::from_secs(5)).await;
        send(
            call(
                &connections,
                || streamed("0"),
                "/grpc.health.v1.Health/Check",
            )
            .await,
        )
        .await;
        assert_eq!(
            deadline(&activity),
            Some((start + PREFACE, Deadline::Uncredited))
        );
        drop(watch);
        assert_eq!(
            deadline(&activity),
            Some((start + PREFACE, Deadline::Uncredited))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_stream_ends_its_liveness_without_a_verdict() {
        let (connections, activity, _registration) = registered();
        send(
            call(
                &connections,
                refused_outright,
                "/tessera.v1.Aggregator/Participate",
            )
            .await,
        )
        .await;
        let refused = deadline(&activity).unwrap();
        assert_eq!(refused.1, Deadline::Refused);
        // A live stream dropped before its trailers: neither OK nor refused.
        let (response, slot) = call_slot(
            &connections,
            || streamed("0"),
            "/tessera.v1.Aggregator/Participate",
        )
        .await;
        let _guard = slot.go_live().unwrap();
        assert_eq!(deadline(&activity), None);
        drop(response);
        assert_eq!(deadline(&activity), Some(refused));
    }

    /// A body that fails mid-stream (hyper resets the stream) ends the
    /// call as a refusal: no OK status was ever sent.
    #[tokio::test(start_paused = true)]
    async fn a_failed_body_is_a_refusal() {
        let (connections, activity, _registration) = registered();
        let start = Instant::now();
        let failing = || http::Response::new(Script([Ok(Frame::data(&b"m"[..])), Err(())].into()));
        send(call(&connections, failing, "/tessera.v1.Aggregator/GetModel").await).await;
        assert_eq!(
            deadline(&activity),
            Some((start + REFUSED_LINGER, Deadline::Refused))
        );
    }

    /// One principal is counted once per open connection it authenticated
    /// on, at most MAX_CONNECTIONS_PER_CLIENT of them; a closed connection
    /// gives its count back.
    #[test]
    fn a_principal_holds_at_most_max_connections_per_client() {
        let connections = Connections::new();
        let mut open: Vec<_> = (0..=MAX_CONNECTIONS_PER_CLIENT)
            .map(|i| {
                let activity = Activity::new();
                let peer: SocketAddr = format!("10.0.0.{}:5000", i + 10).parse().unwrap();
                let registration = connections.register((None, peer), &activity);
                (LiveSlot::new(&activity, &connections), registration)
            })
            .collect();
        for (slot, _) in &open[..MAX_CONNECTIONS_PER_CLIENT] {
            slot.claim("alice").unwrap();
            // Again on the same connection: counted once.
            slot.claim("alice").unwrap();
        }
        let (extra, _) = &open[MAX_CONNECTIONS_PER_CLIENT];
        assert_eq!(extra.claim("alice"), Err(MAX_CONNECTIONS_PER_CLIENT));
        extra.claim("bob").unwrap();
        assert_eq!(
            connections.connections_of("alice"),
            MAX_CONNECTIONS_PER_CLIENT
        );
        // One of alice's connections closes: the extra one may take its
        // place.
        let (closed_slot, registration) = open.remove(0);
        drop(registration);
        assert_eq!(
            connections.connections_of("alice"),
            MAX_CONNECTIONS_PER_CLIENT - 1
        );
        let (extra, _) = open.last().unwrap();
        extra.claim("alice").unwrap();
        // A request still running on the closed connection is counted
        // nowhere.
        closed_slot.claim("carol").unwrap();
        assert_eq!(connections.connections_of("carol"), 0);
        drop(open);
        assert_eq!(connections.connections_of("alice"), 0);
        assert_eq!(connections.connections_of("bob"), 0);
    }

    #[test]
    fn a_connection_is_found_by_its_addresses_and_forgotten_when_it_closes() {
        let (connections, activity, registration) = registered();
        let found = connections.find(request("/x").extensions()).unwrap();
        assert!(Arc::ptr_eq(&found, &activity));
        // Another local address, or no ConnectInfo at all: not this one.
        let mut other = http::Request::new(());
        other.extensions_mut().insert(TcpConnectInfo {
            local_addr: Some("10.0.0.2:7443".parse().unwrap()),
            remote_addr: Some(PEER.parse().unwrap()),
        });
        assert!(connections.find(other.extensions()).is_none());
        assert!(
            connections
                .find(http::Request::new(()).extensions())
                .is_none()
        );
        drop(registration);
        assert_eq!(connections.len(), 0);
    }

    #[test]
    fn only_the_aggregator_services_methods_count() {
        assert!(counts("/tessera.v1.Aggregator/Participate"));
        assert!(counts("/tessera.v1.Aggregator/GetModel"));
        for path in [
            "/grpc.health.v1.Health/Watch",
            "/tessera.v1.AggregatorX/GetModel",
            "/tessera.v1.Aggregator",
            "tessera.v1.Aggregator/GetModel",
            "/",
        ] {
            assert!(!counts(path), "{path}");
        }
    }
}
