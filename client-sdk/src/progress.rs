//! Progress reports: where a call of
//! [`Client::participate`](crate::Client::participate) is, so an app can
//! show its state ("waiting for 3 more clients", "round 12: masking").
//!
//! A round can sit in the server's lobby for minutes until enough clients
//! are there, then runs its stages within seconds; without reports an app
//! can only show a spinner for the whole call. The callback given to
//! [`ClientBuilder::on_progress`](crate::ClientBuilder::on_progress) is
//! called, in order, with
//!
//! 1. [`Progress::Lobby`] for each lobby update the server sends while the
//!    client waits (how many clients are there, how many a round needs);
//! 2. [`Progress::RoundStarted`] once, when the server opens a round with
//!    this client in it (before the client's policy has checked the round:
//!    a refused round ends the call with its error right after);
//! 3. [`Progress::Stage`] once per stage of the protocol this client takes
//!    its part in, in protocol order, as it sends its message of that stage
//!    (a client that drops out or is left out reports no further stage).
//!
//! The call's result, `Ok` or `Err`, follows the last report. Reports carry
//! no secret: no key, share, update value or token.
//!
//! The callback runs inside the call, so it should be quick. A callback
//! that panics ends that call as any panicking Rust callback does: the
//! panic reaches the caller, the server sees this client drop out (the
//! round goes on without it if enough clients remain) and the client, its
//! runtime included, serves the next call.

use std::sync::Arc;

use tessera_aggregation::Stage;

/// One progress report; see the [module docs](self) for their order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// Connected and waiting in the server's lobby for a round to open.
    Lobby {
        /// Clients waiting, this one included.
        waiting: u32,
        /// Clients the server waits for before it opens a round.
        min_clients: u32,
    },
    /// The server opened a round with this client in it.
    RoundStarted {
        /// The round.
        round_id: u64,
        /// This client's id in the round.
        client_id: u32,
        /// Clients in the round.
        clients: u32,
    },
    /// The round reached `stage`: this client is sending its part of it.
    Stage {
        /// The round.
        round_id: u64,
        /// The stage.
        stage: Stage,
    },
}

/// The callback an app registered, shared by the calls of one client.
#[derive(Clone)]
pub(crate) struct ProgressSink(Option<Arc<dyn Fn(Progress) + Send + Sync>>);

impl ProgressSink {
    pub(crate) fn none() -> Self {
        ProgressSink(None)
    }

    pub(crate) fn new(callback: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        ProgressSink(Some(Arc::new(callback)))
    }

    /// Reports `progress` to the app, if it asked for reports.
    pub(crate) fn report(&self, progress: Progress) {
        if let Some(callback) = &self.0 {
            callback(progress);
        }
    }
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}
