//! A blocking client, for apps without an async runtime (a desktop app, a
//! training script, a C or Python binding).
//!
//! [`blocking::Client`](Client) wraps the async [`crate::Client`] and a
//! private tokio runtime, and each call blocks the calling thread until the
//! async call ends. It is configured by the same [`ClientBuilder`]
//! ([`ClientBuilder::build_blocking`]) and returns the same
//! [`ClientError`]s; progress callbacks
//! ([`ClientBuilder::on_progress`]) run on the thread that made the call
//! (the round runs there; the runtime's one worker drives the connection).
//!
//! ```no_run
//! use tessera_client::blocking;
//!
//! let client = blocking::Client::builder("https://fl.example.org:7443")
//!     .tls_system_roots()
//!     .token(std::env::var("TESSERA_TOKEN").expect("token"))
//!     .build_blocking()?;
//! let global = client.latest_model()?;
//! let update = vec![0.0f32; global.dim()]; // the app's training goes here
//! let outcome = client.participate(&update)?;
//! println!("round {}: {} clients", outcome.round_id, outcome.survivors);
//! # Ok::<(), tessera_client::ClientError>(())
//! ```
//!
//! Calling it from a thread of an async runtime would block that thread
//! for a whole round (and tokio would panic), so it is refused with
//! [`ClientError::InvalidSetting`]; this includes tokio's `spawn_blocking`
//! threads, which cannot be told apart: async code uses [`crate::Client`].
//! Dropping the client anywhere is fine.

use std::future::Future;

use crate::{ClientBuilder, ClientError, GlobalModel, Participation, RoundOutcome, Stage};

/// A client whose calls block; see the [module docs](self).
///
/// One client serves any number of threads at once (its calls take
/// `&self`); each call runs its round on the client's runtime.
#[derive(Debug)]
pub struct Client {
    inner: crate::Client,
    /// Taken only by `drop`.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Client {
    /// Starts configuring a client of the server at `url`: the async
    /// client's builder, finished with [`ClientBuilder::build_blocking`].
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        crate::Client::builder(url)
    }

    /// Wraps an async client in a runtime of its own.
    pub fn from_async(inner: crate::Client) -> Result<Client, ClientError> {
        // One worker thread drives the connections (tonic spawns a task
        // per connection); the round itself runs on the calling thread,
        // so concurrent calls from several threads do not queue.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tessera-client")
            .enable_all()
            .build()
            .map_err(|e| ClientError::InvalidSetting {
                setting: "build_blocking",
                problem: format!("cannot start the client's runtime: {e}"),
            })?;
        Ok(Client {
            inner,
            runtime: Some(runtime),
        })
    }

    /// The server URL this client talks to.
    pub fn url(&self) -> &str {
        self.inner.url()
    }

    /// The async client inside, for an app that also has async code.
    pub fn as_async(&self) -> &crate::Client {
        &self.inner
    }

    /// [`crate::Client::participate`], blocking.
    pub fn participate(&self, update: &[f32]) -> Result<RoundOutcome, ClientError> {
        self.block_on(self.inner.participate(update))
    }

    /// [`crate::Client::contribute`], blocking.
    pub fn contribute(
        &self,
        contribution: crate::Contribution<'_>,
    ) -> Result<RoundOutcome, ClientError> {
        self.block_on(self.inner.contribute(contribution))
    }

    /// [`crate::Client::contribute_or_drop`], blocking.
    pub fn contribute_or_drop(
        &self,
        contribution: crate::Contribution<'_>,
        drop_before: Stage,
    ) -> Result<Participation, ClientError> {
        self.block_on(self.inner.contribute_or_drop(contribution, drop_before))
    }

    /// [`crate::Client::participate_or_drop`], blocking.
    pub fn participate_or_drop(
        &self,
        update: &[f32],
        drop_before: Stage,
    ) -> Result<Participation, ClientError> {
        self.block_on(self.inner.participate_or_drop(update, drop_before))
    }

    /// [`crate::Client::participate_named`], blocking (feature `ndarray`).
    #[cfg(feature = "ndarray")]
    pub fn participate_named<'a, K: AsRef<str>>(
        &self,
        update: impl IntoIterator<Item = (K, crate::ndarray::ArrayViewD<'a, f32>)>,
    ) -> Result<RoundOutcome, ClientError> {
        self.block_on(self.inner.participate_named(update))
    }

    /// [`crate::Client::latest_model`], blocking.
    pub fn latest_model(&self) -> Result<GlobalModel, ClientError> {
        self.block_on(self.inner.latest_model())
    }

    /// [`crate::Client::model`], blocking.
    pub fn model(&self, version: u64) -> Result<GlobalModel, ClientError> {
        self.block_on(self.inner.model(version))
    }

    /// Runs `call` on the client's runtime, refusing to from inside an
    /// async runtime (tokio would panic: a blocked executor thread).
    fn block_on<T>(
        &self,
        call: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(ClientError::InvalidSetting {
                setting: "blocking",
                problem: "a blocking client was called from inside an async runtime, \
                          where it would block the runtime's thread: use tessera_client::Client \
                          (async) there"
                    .into(),
            });
        }
        match &self.runtime {
            Some(runtime) => runtime.block_on(call),
            None => unreachable!("the runtime is taken only on drop"),
        }
    }
}

impl Drop for Client {
    /// Stops the runtime without waiting for it: a plain drop blocks, and
    /// panics when the client is dropped inside an async runtime.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl ClientBuilder {
    /// Checks the settings as [`ClientBuilder::build`] does and makes a
    /// [`blocking::Client`](Client) with a runtime of its own.
    pub fn build_blocking(self) -> Result<Client, ClientError> {
        Client::from_async(self.build()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_fail_as_in_the_async_builder() {
        let err = Client::builder("https://fl.example.org")
            .build_blocking()
            .unwrap_err();
        assert!(matches!(err, ClientError::InvalidTls(_)), "{err:?}");
    }

    #[test]
    fn input_errors_come_back_unchanged() {
        let client = Client::builder("http://127.0.0.1:9")
            .build_blocking()
            .unwrap();
        assert_eq!(
            client.participate(&[1.0, f32::INFINITY]).unwrap_err(),
            ClientError::NonFiniteUpdate { index: 1 }
        );
        assert_eq!(
            client.participate(&[]).unwrap_err(),
            ClientError::EmptyUpdate
        );
    }

    #[test]
    fn an_unreachable_server_is_reported_after_the_retries() {
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::builder(format!("http://127.0.0.1:{port}"))
            .retry(crate::RetryPolicy {
                max_attempts: 2,
                initial_backoff: std::time::Duration::from_millis(1),
                max_backoff: std::time::Duration::from_millis(1),
            })
            .build_blocking()
            .unwrap();
        match client.latest_model().unwrap_err() {
            ClientError::Unreachable { attempts, .. } => assert_eq!(attempts, 2),
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_call_from_inside_an_async_runtime_is_refused_not_a_panic() {
        let client = Client::builder("http://127.0.0.1:9")
            .build_blocking()
            .unwrap();
        let err = client.latest_model().unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::InvalidSetting {
                    setting: "blocking",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("tessera_client::Client"), "{err}");
        // Dropped here, inside the runtime: no panic either.
        drop(client);
    }
}
