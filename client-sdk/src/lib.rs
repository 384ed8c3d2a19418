//! The Tessera client SDK: contribute an `f32` model update to a secure
//! aggregation round, so the server learns only the sum of many clients'
//! updates, never yours.
//!
//! An application (a phone, a hospital's training job, an edge device
//! behind NAT) builds one [`Client`] with the server's URL and its
//! credentials, and for each round it wants to take part in calls
//! [`Client::participate`] with its update. The SDK dials the server, waits
//! in its lobby until a round opens, runs the secure aggregation protocol of
//! `tessera-aggregation` (key agreement, secret sharing, masking, unmasking)
//! over one gRPC stream, and returns the round's [`RoundOutcome`].
//! [`Client::latest_model`] downloads the model to train from.
//!
//! ```no_run
//! # async fn run() -> Result<(), tessera_client::ClientError> {
//! use std::time::Duration;
//! use tessera_client::{Client, RetryPolicy};
//!
//! let client = Client::builder("https://fl.example.org:7443")
//!     .tls_ca_pem(std::fs::read("ca.pem").expect("CA file"))
//!     .token(std::env::var("TESSERA_TOKEN").expect("token"))
//!     .retry(RetryPolicy {
//!         max_attempts: 5,
//!         initial_backoff: Duration::from_millis(500),
//!         max_backoff: Duration::from_secs(10),
//!     })
//!     .build()?;
//! let global = client.latest_model().await?;
//! let mut local = global.flatten();
//! // ... train `local` on private data ...
//! let update: Vec<f32> = local.iter().zip(global.flatten()).map(|(l, g)| l - g).collect();
//! let outcome = client.participate(&update).await?;
//! println!("round {}: {} clients, clipped: {}", outcome.round_id, outcome.survivors, outcome.clipped);
//! # Ok(()) }
//! ```
//!
//! For apps without an async runtime, [`blocking::Client`] makes the same
//! calls blocking. [`ClientBuilder::on_progress`] reports where a call is
//! (waiting in the lobby, round started, stage reached; see [`progress`]).
//! A server whose certificate a public authority signed is reached with
//! [`ClientBuilder::tls_system_roots`] instead of a CA file. With the
//! `ndarray` feature, updates and models are named arrays matched by name
//! and shape (`Client::participate_named`, `GlobalModel::to_arrays`); with
//! `burn`, burn modules (the `burn` module).
//!
//! Every security parameter of a round comes from the server, so the
//! client holds a [`Policy`] and refuses a round below it before any key
//! leaves it ([`ClientError::PolicyRefused`] names the rule): the threat
//! model it insists on (semi-honest by default, malicious-server for a
//! client with an identity), its own assumption of the colluding fraction
//! (5%, whatever the server states) against which the round's Shamir
//! threshold must hold, 3 to 100,000 clients, and optionally distributed DP
//! with a minimum per-client noise multiplier. See [`ClientBuilder::policy`].
//!
//! The client keeps its randomness (a CSPRNG seeded from the operating
//! system) and its token to itself: neither appears in logs, errors or
//! `Debug` output, nor does the update. Logs are `tracing` spans per round
//! with the round id, client id and stage.
#![forbid(unsafe_code)]

pub mod blocking;
mod builder;
#[cfg(feature = "burn")]
pub mod burn;
mod deadline;
mod driver;
mod error;
mod model;
#[cfg(feature = "ndarray")]
pub mod ndarray;
pub mod policy;
pub mod progress;

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tessera_proto::v1;
use tonic::transport::{Channel, Endpoint};

pub use builder::{
    ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_ROUND_TIMEOUT,
    RetryPolicy,
};
pub use driver::{Contribution, Participation, RoundOutcome};
pub use error::{ClientError, Eviction};
pub use model::{Adversary, GlobalModel, NamedTensor};
pub use policy::{
    DEFAULT_ASSUME_CORRUPT, DEFAULT_MAX_CLIENTS, DEFAULT_MIN_CLIENTS, DEFAULT_MIN_SURVIVORS,
    Policy, PolicyRule, per_client_noise_multiplier,
};
pub use progress::Progress;
pub use tessera_aggregation::Stage;
pub use tessera_dp::extras::Evaluation;

use builder::Token;
use error::{Phase, from_status};

/// A connection profile to one aggregation server: where it is, how to
/// prove who this client is, and how long to wait.
///
/// One `Client` serves any number of calls; each call opens its own
/// connection, so a long pause between rounds holds nothing open.
pub struct Client {
    inner: ClientInner,
}

/// The settings [`ClientBuilder::build`] checked.
struct ClientInner {
    url: String,
    endpoint: Endpoint,
    token: Option<Token>,
    round_timeout: Duration,
    retry: RetryPolicy,
    max_message_bytes: usize,
    /// Forked once per round, so concurrent calls never wait on each other
    /// for randomness.
    rng: std::sync::Mutex<StdRng>,
    /// Malicious-server rounds: this client's identity and the identities
    /// it trusts.
    identity: Option<tessera_aggregation::identity::IdentityKey>,
    trusted: Vec<tessera_aggregation::identity::IdentityPublicKey>,
    /// The rounds this client accepts, checked before any key is made.
    policy: Policy,
    /// Where the round's progress is reported to the app.
    progress: progress::ProgressSink,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = &self.inner;
        f.debug_struct("Client")
            .field("url", &inner.url)
            .field("token", &inner.token.as_ref().map(|_| "[redacted]"))
            .field("round_timeout", &inner.round_timeout)
            .field("retry", &inner.retry)
            .field("max_message_bytes", &inner.max_message_bytes)
            .field("policy", &inner.policy)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts configuring a client of the server at `url`
    /// (`http://host:port`, or `https://host:port` with
    /// [`ClientBuilder::tls_ca_pem`] or [`ClientBuilder::tls_system_roots`]).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url.into())
    }

    /// The server URL this client talks to.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Joins the server's next round with `update` and runs it to the end.
    ///
    /// The update is clipped to the round's L2 clip norm and encoded in its
    /// fixed-point format (randomized rounding, so the server's average is
    /// unbiased); [`RoundOutcome::clipped`] and [`RoundOutcome::update_norm`]
    /// say what clipping did. Connection failures before the round starts
    /// are retried per [`ClientBuilder::retry`]; nothing is retried once a
    /// round has started. The call is bounded by
    /// [`ClientBuilder::round_timeout`], restarted by every keep-alive the
    /// server sends while the client waits in its lobby: a client the
    /// server's cohort sampling leaves waiting for several rounds does not
    /// time out while the server keeps it alive.
    ///
    /// An update the protocol cannot carry is refused before any connection:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tessera_client::{Client, ClientError};
    ///
    /// let client = Client::builder("http://127.0.0.1:9").build().unwrap();
    /// let err = client.participate(&[0.5, f32::NAN]).await.unwrap_err();
    /// assert_eq!(err, ClientError::NonFiniteUpdate { index: 1 });
    /// assert_eq!(client.participate(&[]).await.unwrap_err(), ClientError::EmptyUpdate);
    /// # }
    /// ```
    pub async fn participate(&self, update: &[f32]) -> Result<RoundOutcome, ClientError> {
        self.contribute(Contribution::new(update)).await
    }

    /// [`Client::participate`] with what the server may ask for beside the
    /// update: the example count that weights it and the client's
    /// federated evaluation ([`Contribution`]). A server that weights
    /// refuses nothing, but this client cannot take part in its rounds
    /// without a count ([`ClientError::InvalidSetting`] naming
    /// `num_examples`).
    pub async fn contribute(
        &self,
        contribution: Contribution<'_>,
    ) -> Result<RoundOutcome, ClientError> {
        match self.run_round(&contribution, None).await? {
            Participation::Completed(outcome) => Ok(outcome),
            Participation::Dropped { .. } => unreachable!("no dropout was asked for"),
        }
    }

    /// Joins the server's next round with an update given as named arrays
    /// (feature `ndarray`): matched by name to the latest published
    /// model's tensors and checked for shape
    /// ([`GlobalModel::flatten_named`]), then sent as
    /// [`Client::participate`] sends a flat update.
    ///
    /// It downloads the latest model for its names and shapes first (they
    /// never change once a server publishes its first model); an app that
    /// holds the model it trained from can save that download with
    /// `client.participate(&model.flatten_named(update)?)`.
    #[cfg(feature = "ndarray")]
    pub async fn participate_named<'a, K: AsRef<str>>(
        &self,
        update: impl IntoIterator<Item = (K, crate::ndarray::ArrayViewD<'a, f32>)>,
    ) -> Result<RoundOutcome, ClientError> {
        let model = self.latest_model().await?;
        let flat = model.flatten_named(update)?;
        self.participate(&flat).await
    }

    /// Like [`Client::participate`], but hangs up instead of sending this
    /// client's message of stage `drop_before`: a real dropout at a chosen
    /// stage, as the server and the other clients see it.
    ///
    /// For dropout experiments and tests (the demo drops 10% of its clients
    /// this way); an application has no reason to call it. If the round
    /// never reaches `drop_before` (`ConsistencyCheck` in a semi-honest
    /// round) the client takes part to the end.
    pub async fn participate_or_drop(
        &self,
        update: &[f32],
        drop_before: Stage,
    ) -> Result<Participation, ClientError> {
        self.run_round(&Contribution::new(update), Some(drop_before))
            .await
    }

    /// [`Client::participate_or_drop`] with a [`Contribution`].
    pub async fn contribute_or_drop(
        &self,
        contribution: Contribution<'_>,
        drop_before: Stage,
    ) -> Result<Participation, ClientError> {
        self.run_round(&contribution, Some(drop_before)).await
    }

    async fn run_round(
        &self,
        contribution: &Contribution<'_>,
        drop_before: Option<Stage>,
    ) -> Result<Participation, ClientError> {
        let update = contribution.update();
        if update.is_empty() {
            return Err(ClientError::EmptyUpdate);
        }
        if let Some(index) = update.iter().position(|x| !x.is_finite()) {
            return Err(ClientError::NonFiniteUpdate { index });
        }
        let mut rng = self.fork_rng();
        let inner = &self.inner;
        let attempts = async {
            let mut attempt = 1;
            loop {
                let result = match inner.connect().await {
                    Ok(grpc) => {
                        driver::participate(inner, grpc, contribution, drop_before, &mut rng).await
                    }
                    Err(e) => Err(e),
                };
                match inner.retry_after(result, &mut attempt).await {
                    Some(result) => return result,
                    None => continue,
                }
            }
        };
        deadline::bounded(inner.round_timeout, attempts)
            .await
            .unwrap_or(Err(ClientError::RoundTimeout {
                after: inner.round_timeout,
            }))
    }

    /// Downloads the latest published model.
    pub async fn latest_model(&self) -> Result<GlobalModel, ClientError> {
        self.fetch_model(0).await
    }

    /// Downloads published model `version` (0 asks for the latest, as on
    /// the wire). A version the server never published is
    /// [`ClientError::NoSuchModel`].
    pub async fn model(&self, version: u64) -> Result<GlobalModel, ClientError> {
        self.fetch_model(version).await
    }

    async fn fetch_model(&self, version: u64) -> Result<GlobalModel, ClientError> {
        let inner = &self.inner;
        let mut attempt = 1;
        loop {
            let result = async {
                let mut grpc = inner.connect().await?;
                let request = inner.request(v1::GetModelRequest { version })?;
                let response = grpc
                    .get_model(request)
                    .await
                    .map_err(|s| from_status(&s, &inner.url, Phase::Model { version }))?;
                GlobalModel::try_from(response.into_inner())
            }
            .await;
            if let Some(result) = inner.retry_after(result, &mut attempt).await {
                return result;
            }
        }
    }

    /// A generator for one call, seeded from the client's: a round's keys
    /// come from a stream no other call shares.
    fn fork_rng(&self) -> StdRng {
        // A poisoned lock still holds a usable generator: no invariant of
        // StdRng spans a panic.
        let mut rng = self
            .inner
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        StdRng::from_rng(&mut *rng)
    }
}

impl ClientInner {
    /// Opens a connection (TCP, and TLS for https).
    async fn connect(
        &self,
    ) -> Result<v1::aggregator_client::AggregatorClient<Channel>, ClientError> {
        let channel = self
            .endpoint
            .connect()
            .await
            .map_err(|e| error::unreachable(&self.url, &e))?;
        Ok(v1::aggregator_client::AggregatorClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    /// A request carrying the client's credentials.
    fn request<T>(&self, message: T) -> Result<tonic::Request<T>, ClientError> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.header()?);
        }
        Ok(request)
    }

    /// Decides on an attempt's result: `Some` to return it, `None` after
    /// waiting out the backoff when it was a connection failure worth
    /// retrying. [`ClientError::Unreachable`] only arises before a round
    /// starts, so a round is never rejoined.
    async fn retry_after<T>(
        &self,
        result: Result<T, ClientError>,
        attempt: &mut u32,
    ) -> Option<Result<T, ClientError>> {
        let Err(ClientError::Unreachable { url, message, .. }) = result else {
            return Some(result);
        };
        match self.retry.backoff(*attempt) {
            Some(wait) => {
                tracing::warn!(
                    attempt = *attempt,
                    wait_ms = wait.as_millis() as u64,
                    error = %message,
                    "server unreachable; retrying"
                );
                tokio::time::sleep(wait).await;
                *attempt += 1;
                None
            }
            None => Some(Err(ClientError::Unreachable {
                url,
                attempts: *attempt,
                message,
            })),
        }
    }
}
