//! What the service side sees of a connection's requests, for the
//! listener's idle and refusal deadlines (step 4 of the parent module's
//! docs).
//!
//! The deadlines live in the connection's IO wrapper ([`super::Admitted`]),
//! the only place that can close a connection tonic serves: tonic runs
//! hyper's per-connection task itself and offers no per-connection shutdown
//! hook (only `max_connection_age`, the same for every connection, which
//! would cut clients waiting in the lobby). But only the service side knows
//! whether a request is under way, and tonic gives a request no handle on
//! its connection, only the connection's `ConnectInfo` (local and peer
//! address) in its extensions, inserted outside the layers added with
//! `Server::builder().layer(..)`. So each admitted connection registers its
//! [`Activity`] under those addresses in [`Connections`], and [`TrackLayer`]
//! finds it there for each request and reports to it:
//!
//! - a response to a `tessera.v1.Aggregator` request that starts with OK
//!   headers is **live** until hyper drops its body (a client waiting in the
//!   lobby for minutes is live all that time; a GetModel until its body has
//!   been sent). Nothing before the response counts: until its handler
//!   answers, a request has not been authenticated, and a request whose
//!   body never comes (a unary call's HEADERS frame alone) never reaches
//!   its handler. Requests to other services (gRPC health, unknown paths)
//!   answer anyone, so they never count either: a health `Watch` stream
//!   would otherwise hold a connection for ever without a token.
//! - a response that ends with a non-OK `grpc-status` (in the headers of a
//!   trailers-only response or in the trailers), or whose body fails, is a
//!   **refusal**, on any path. Only an OK Aggregator response lifts it.
//!
//! A connection with nothing live is closed `idle_timeout` after its last
//! live response ended (or its first request opened), and
//! [`REFUSED_LINGER`] after its first refusal not lifted since, whichever is
//! first.

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
/// client that keeps sending refused requests does not extend it, so
/// holding a slot without credentials costs a TCP and TLS handshake every
/// two seconds.
pub(crate) const REFUSED_LINGER: Duration = Duration::from_secs(2);

/// The header and trailer that carry a gRPC call's status.
const GRPC_STATUS: &str = "grpc-status";

/// A connection as tonic names it in a request's extensions: its local and
/// peer addresses. The pair, not the peer alone: a listener on `0.0.0.0`
/// may be reached on two local addresses from one peer port.
type Key = (Option<SocketAddr>, SocketAddr);

/// The open connections' [`Activity`], by address, shared by the listener
/// (which registers each admitted connection) and [`TrackLayer`] (which
/// looks a request's connection up).
#[derive(Debug, Default)]
pub(crate) struct Connections {
    by_addr: Mutex<HashMap<Key, Arc<Activity>>>,
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
}

/// A connection's entry in [`Connections`]; dropping it removes the entry
/// (unless a newer connection from the same addresses took it over).
#[derive(Debug)]
pub(crate) struct Registration {
    connections: Arc<Connections>,
    key: Key,
    activity: Arc<Activity>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = lock(&self.connections.by_addr);
        if map
            .get(&self.key)
            .is_some_and(|a| Arc::ptr_eq(a, &self.activity))
        {
            map.remove(&self.key);
        }
    }
}

/// Why a connection's deadline closes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deadline {
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
    /// reset the stream, or the connection closed).
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
    /// Live responses (see the module docs).
    live: usize,
    /// When `live` last fell to zero, or the first request opened.
    idle_since: Instant,
    /// The first refusal since the last OK Aggregator response.
    refused_since: Option<Instant>,
    /// The connection's reader, woken when a deadline may have moved
    /// closer (a live response ended, a refusal), so that it arms it.
    reader: Option<Waker>,
}

impl Activity {
    /// A connection admitted now, nothing live.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity {
            state: Mutex::new(State {
                live: 0,
                idle_since: Instant::now(),
                refused_since: None,
                reader: None,
            }),
        })
    }

    /// The connection's first request opened: its idle clock starts now
    /// (not at accept, so the preface phase, which has its own deadline,
    /// does not use up the idle time).
    pub(crate) fn opened(&self) {
        let mut state = lock(&self.state);
        if state.live == 0 {
            state.idle_since = Instant::now();
        }
    }

    /// When the connection must close if nothing goes live first, and why;
    /// `None` while a response is live. Keeps `reader` to wake when this
    /// may change.
    pub(crate) fn deadline(
        &self,
        idle_timeout: Duration,
        reader: &Waker,
    ) -> Option<(Instant, Deadline)> {
        let mut state = lock(&self.state);
        if !state.reader.as_ref().is_some_and(|w| w.will_wake(reader)) {
            state.reader = Some(reader.clone());
        }
        if state.live > 0 {
            return None;
        }
        let idle = (state.idle_since + idle_timeout, Deadline::Idle);
        Some(match state.refused_since {
            Some(at) if at + REFUSED_LINGER <= idle.0 => (at + REFUSED_LINGER, Deadline::Refused),
            _ => idle,
        })
    }

    /// A response started on this connection: `counts` if it answers a
    /// `tessera.v1.Aggregator` request, `status` if its headers carry the
    /// call's status (a trailers-only response: the call has ended). The
    /// returned value reports the response's end when dropped.
    pub(crate) fn answer(self: &Arc<Self>, counts: bool, status: Option<Outcome>) -> Answer {
        let live = counts && status.is_none();
        if live {
            lock(&self.state).live += 1;
        }
        Answer {
            activity: Arc::clone(self),
            counts,
            live,
            outcome: status.unwrap_or(Outcome::Unfinished),
        }
    }

    /// A response ended (see [`Answer`]).
    fn ended(&self, counts: bool, live: bool, outcome: Outcome) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        if live {
            state.live -= 1;
        }
        match outcome {
            Outcome::Refused => {
                state.refused_since.get_or_insert(now);
            }
            Outcome::Ok if counts => state.refused_since = None,
            Outcome::Ok | Outcome::Unfinished => {}
        }
        if counts && (live || outcome == Outcome::Ok) && state.live == 0 {
            state.idle_since = now;
        }
        if state.live == 0
            && let Some(reader) = &state.reader
        {
            reader.wake_by_ref();
        }
    }

    /// Live responses (tests).
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        lock(&self.state).live
    }
}

/// One response's part in its connection's [`Activity`]: live (if it
/// counts) from its start until dropped, and its outcome reported when
/// dropped.
#[derive(Debug)]
pub(crate) struct Answer {
    activity: Arc<Activity>,
    counts: bool,
    live: bool,
    outcome: Outcome,
}

impl Answer {
    /// The call's status arrived (in the trailers), or its body failed.
    pub(crate) fn ended_with(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.activity.ended(self.counts, self.live, self.outcome);
    }
}

/// Whether a request's path is one of the Aggregator service's methods
/// (`/tessera.v1.Aggregator/Participate`, `.../GetModel`): the only
/// requests that need a client's credentials, so the only ones that keep a
/// connection open.
fn counts(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(SERVICE_NAME))
        .is_some_and(|method| method.starts_with('/'))
}

/// The tower layer (added with `Server::builder().layer`) that reports
/// each request's response to its connection's [`Activity`].
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

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // A connection that is not registered (its peer address was
        // unknown at accept) is not tracked; its reader's idle deadline
        // runs regardless.
        let activity = self.connections.find(request.extensions());
        let counts = counts(request.uri().path());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let answer =
                activity.map(|activity| activity.answer(counts, Outcome::of(response.headers())));
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
    #[derive(Clone)]
    struct Answers(fn() -> http::Response<Script>);

    impl Service<http::Request<()>> for Answers {
        type Response = http::Response<Script>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::ready(Ok((self.0)()))
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
        let mut track = TrackLayer::new(Arc::clone(connections)).layer(Answers(respond));
        track.call(request(path)).await.unwrap()
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

    #[tokio::test(start_paused = true)]
    async fn an_aggregator_stream_is_live_until_its_body_is_dropped_and_its_trailers_count() {
        let (connections, activity, _registration) = registered();
        let start = Instant::now();
        let response = call(
            &connections,
            || streamed("0"),
            "/tessera.v1.Aggregator/Participate",
        )
        .await;
        assert_eq!(activity.live(), 1);
        assert_eq!(activity.deadline(Duration::from_secs(60), &waker()), None);
        tokio::time::advance(Duration::from_secs(600)).await;
        send(response).await;
        assert_eq!(activity.live(), 0);
        // The idle clock restarted when the stream ended.
        assert_eq!(
            activity.deadline(Duration::from_secs(60), &waker()),
            Some((start + Duration::from_secs(660), Deadline::Idle))
        );

        // A stream that ends with a refusal in its trailers.
        let response = call(
            &connections,
            || streamed("9"),
            "/tessera.v1.Aggregator/Participate",
        )
        .await;
        tokio::time::advance(Duration::from_secs(1)).await;
        send(response).await;
        let refused_at = start + Duration::from_secs(601);
        assert_eq!(
            activity.deadline(Duration::from_secs(60), &waker()),
            Some((refused_at + REFUSED_LINGER, Deadline::Refused))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_not_extended_by_more_refusals_and_only_an_ok_answer_lifts_it() {
        let (connections, activity, _registration) = registered();
        let start = Instant::now();
        let idle = Duration::from_secs(60);
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
            activity.deadline(idle, &waker()),
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
            activity.deadline(idle, &waker()),
            Some((start + REFUSED_LINGER, Deadline::Refused))
        );
        // An OK Aggregator answer (a client with credentials) does.
        let ok_at = Instant::now();
        send(
            call(
                &connections,
                || streamed("0"),
                "/tessera.v1.Aggregator/GetModel",
            )
            .await,
        )
        .await;
        assert_eq!(
            activity.deadline(idle, &waker()),
            Some((ok_at + idle, Deadline::Idle))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn other_services_never_hold_a_connection_nor_restart_its_idle_clock() {
        let (connections, activity, _registration) = registered();
        let start = Instant::now();
        let idle = Duration::from_secs(60);
        // A health Watch stream: OK headers and a body that goes on.
        let watch = call(
            &connections,
            || streamed("0"),
            "/grpc.health.v1.Health/Watch",
        )
        .await;
        assert_eq!(activity.live(), 0);
        tokio::time::advance(Duration::from_secs(30)).await;
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
            activity.deadline(idle, &waker()),
            Some((start + idle, Deadline::Idle))
        );
        drop(watch);
        assert_eq!(
            activity.deadline(idle, &waker()),
            Some((start + idle, Deadline::Idle))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_stream_ends_its_liveness_without_a_verdict() {
        let (connections, activity, _registration) = registered();
        let idle = Duration::from_secs(60);
        send(
            call(
                &connections,
                refused_outright,
                "/tessera.v1.Aggregator/Participate",
            )
            .await,
        )
        .await;
        let refused = activity.deadline(idle, &waker()).unwrap();
        assert_eq!(refused.1, Deadline::Refused);
        // A live stream dropped before its trailers: neither OK nor refused.
        let response = call(
            &connections,
            || streamed("0"),
            "/tessera.v1.Aggregator/Participate",
        )
        .await;
        assert_eq!(activity.deadline(idle, &waker()), None);
        drop(response);
        assert_eq!(activity.deadline(idle, &waker()), Some(refused));
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
            activity.deadline(Duration::from_secs(60), &waker()),
            Some((start + REFUSED_LINGER, Deadline::Refused))
        );
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
