//! Typed errors, and the one place where a gRPC status becomes one.
//!
//! The server attaches a machine-readable [`v1::ErrorDetail`] to every
//! refusal (see `tessera.proto`), so the SDK maps on the detail's kind rather
//! than on the human-readable text. A status without a detail can only come
//! from the transport (or a proxy in between): `UNAVAILABLE` without a detail
//! means the server was never reached.
//!
//! Errors are grouped by whose fault they are, as in rustls: the caller's
//! input or configuration (`InvalidUrl`, `InvalidTls`, `EmptyUpdate`, ...),
//! the network (`Unreachable`, `ConnectionLost`), a server that refused the
//! client (`AuthRefused`, `VersionMismatch`, `UpdateLength`, `NotEligible`,
//! `Rejected`), a
//! round that ended without a result (`RoundAborted`, `RoundNotStored`,
//! `ServerSilent`, `RoundTimeout`), a server that broke the protocol (`ServerMisbehaved`)
//! and a round the client's own policy refused (`PolicyRefused`).
//! No variant carries the update, a key or the token.

use std::time::Duration;

use tessera_aggregation::messages::AbortReason;
use tessera_proto::v1;

/// Why a call of the SDK failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server URL cannot be used.
    #[error("invalid server URL '{url}': {reason}")]
    InvalidUrl {
        /// The URL given to [`Client::builder`](crate::Client::builder).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS settings are inconsistent or a PEM file does not parse.
    #[error("TLS configuration: {0}")]
    InvalidTls(String),
    /// The token cannot travel in an HTTP header (it is not shown).
    #[error("the token is not a valid HTTP header value (visible ASCII only)")]
    InvalidToken,
    /// A builder setting is out of range.
    #[error("client setting {setting}: {problem}")]
    InvalidSetting {
        /// The builder method at fault.
        setting: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
    /// The operating system's random generator failed to seed the client's.
    #[error("cannot seed the random generator from the operating system: {0}")]
    OsRandomness(String),
    /// The update has no values.
    #[error("the update is empty: a round needs at least one value")]
    EmptyUpdate,
    /// The update holds a NaN or an infinity, which has no fixed-point image.
    #[error("update value at index {index} is NaN or infinite")]
    NonFiniteUpdate {
        /// The first offending index.
        index: usize,
    },
    /// The server could not be reached: connection refused, DNS failure,
    /// TLS handshake failure or connect timeout.
    #[error("cannot reach the server at {url} after {attempts} attempt(s): {message}")]
    Unreachable {
        /// The server URL.
        url: String,
        /// Connection attempts made, retries included.
        attempts: u32,
        /// The transport's explanation (its whole source chain).
        message: String,
    },
    /// The connection broke after the server had answered.
    #[error("lost the connection to the server{}: {message}", in_round(*round_id))]
    ConnectionLost {
        /// The round under way, if one had started.
        round_id: Option<u64>,
        /// What happened.
        message: String,
    },
    /// The server did not accept the client's credentials.
    #[error("the server refused the client's credentials: {message}")]
    AuthRefused {
        /// The server's explanation.
        message: String,
    },
    /// The server speaks another protocol version.
    #[error("protocol version mismatch: this client speaks {ours}, the server speaks {server}")]
    VersionMismatch {
        /// [`tessera_proto::PROTOCOL_VERSION`].
        ours: u32,
        /// The server's version.
        server: u32,
    },
    /// The update's length is not the model's dimension.
    #[error("the update has {got} values, the server's model has {expected}")]
    UpdateLength {
        /// The server's model dimension.
        expected: u64,
        /// The update's length.
        got: u64,
    },
    /// A published model does not fit the local model (features `burn`
    /// and `ndarray`): another architecture, a tensor missing, unknown or
    /// of the wrong shape, or a vector of the wrong length.
    #[error("the model does not fit: {problem}")]
    ModelMismatch {
        /// Which tensor or length differs.
        problem: String,
    },
    /// The server runs no more rounds (privacy budget spent, shutting down).
    #[error("the server is not running rounds: {0}")]
    ServerUnavailable(String),
    /// DP-FTRL: this client already took part in the server's current
    /// tree, and each client takes part at most once per tree. Not a
    /// failure of the client: join again after the tree ends, within
    /// `rounds_left` rounds (sooner if a round aborts or the tree closes
    /// early).
    #[error("not eligible yet: {message}")]
    NotEligible {
        /// The server's message.
        message: String,
        /// The most rounds the tree has left.
        rounds_left: u64,
    },
    /// The requested model version was never published.
    #[error("the server has no model version {version}")]
    NoSuchModel {
        /// The version asked for (0: the latest, i.e. none published yet).
        version: u64,
    },
    /// Any other refusal by the server.
    #[error("the server refused the request ({code:?}, {}): {message}", kind.as_str_name())]
    Rejected {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's error kind (`ERROR_KIND_UNSPECIFIED` without a
        /// detail).
        kind: v1::ErrorKind,
        /// The server's explanation.
        message: String,
    },
    /// The round ended without a result.
    #[error("round {round_id} was aborted: {}{}", match reason {
        Some(reason) => reason.to_string(),
        None => "no reason given".to_owned(),
    }, blame(evicted))]
    RoundAborted {
        /// The round.
        round_id: u64,
        /// Why, if the server said so in a form this build knows.
        reason: Option<AbortReason>,
        /// The clients the server evicted for breaking the protocol, as
        /// its RoundResult names them.
        evicted: Vec<Eviction>,
    },
    /// Share bundles these neighbours sealed for this client did not
    /// open, so it could not take its part: it accused them and sent no
    /// update (and, if a semi-honest server asked for it within the
    /// threshold's margin, revealed its share-encryption key for the round
    /// as the proof, so the server could evict whoever lied). Neither this
    /// client's fault nor, as far as it can tell, the server's; the round
    /// went on without it.
    #[error(
        "round {round_id}: the share bundles of client(s) {accused:?} did not open for this client; it accused them{} and its update is not in the round",
        if *revealed_key { " with its share key for the round as the proof" } else { "" }
    )]
    AccusedNeighbours {
        /// The round.
        round_id: u64,
        /// The accused neighbours' ids in the round.
        accused: Vec<u32>,
        /// Whether this client revealed its share key, at the server's
        /// request, to prove the accusation.
        revealed_key: bool,
    },
    /// The server could not store the round's result (its disk is full,
    /// read-only or failing): the round was aborted, nothing was published,
    /// and the server runs the next round once its disk recovers.
    #[error(
        "round {round_id}: the server could not store the round, so it was aborted and nothing was published: {message}"
    )]
    RoundNotStored {
        /// The round.
        round_id: u64,
        /// The server's explanation.
        message: String,
    },
    /// The round completed without this client's contribution (it fell
    /// behind and the server went on without it).
    #[error("round {round_id} completed without this client's part")]
    LeftOut {
        /// The round.
        round_id: u64,
    },
    /// The server fell silent during the round for longer than twice the
    /// stage timeout; the client gave up on it.
    #[error("round {round_id}: no message from the server during stage {stage}")]
    ServerSilent {
        /// The round.
        round_id: u64,
        /// The stage the client was waiting in.
        stage: &'static str,
    },
    /// No round ended within the builder's `round_timeout` (lobby
    /// included) of the call's start or of the server's last lobby
    /// keep-alive.
    #[error(
        "no round ended within {after:?} (with no lobby keep-alive from the server in that time)"
    )]
    RoundTimeout {
        /// The limit that passed.
        after: Duration,
    },
    /// The round's parameters break this client's [`Policy`](crate::Policy):
    /// the client refused the round before generating or sending any key.
    #[error("round {round_id} refused by this client's policy (rule {rule}): {problem}")]
    PolicyRefused {
        /// The round the server offered.
        round_id: u64,
        /// The rule it breaks.
        rule: crate::PolicyRule,
        /// The round's values and the policy's bound.
        problem: String,
    },
    /// The server broke the protocol; the client refused the rest of the
    /// round.
    #[error("the server broke the protocol{}: {problem}", in_round(*round_id))]
    ServerMisbehaved {
        /// The round under way, if one had started.
        round_id: Option<u64>,
        /// What it did.
        problem: String,
    },
}

/// A client the server evicted from a round for breaking the protocol, as
/// the round's result names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// Its id in the round.
    pub client_id: u32,
    /// A short fixed name of what it did (e.g. `bad_share_bundle`).
    pub reason: String,
    /// What it did, in the server's words.
    pub detail: String,
}

impl std::fmt::Display for Eviction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "client {} ({}): {}",
            self.client_id, self.reason, self.detail
        )
    }
}

impl From<&v1::Eviction> for Eviction {
    fn from(e: &v1::Eviction) -> Self {
        Eviction {
            client_id: e.client_id,
            reason: e.reason.clone(),
            detail: e.detail.clone(),
        }
    }
}

/// " (evicted: ...)" naming the evicted clients, or nothing.
fn blame(evicted: &[Eviction]) -> String {
    if evicted.is_empty() {
        return String::new();
    }
    let list: Vec<String> = evicted.iter().map(ToString::to_string).collect();
    format!(" (evicted: {})", list.join("; "))
}

fn in_round(round_id: Option<u64>) -> String {
    round_id
        .map(|id| format!(" in round {id}"))
        .unwrap_or_default()
}

/// Where in a call a status arrived: it decides what a detail-less
/// `UNAVAILABLE` and a `WRONG_LENGTH` mean.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Phase {
    /// Joining or waiting in the lobby, with an update of this length.
    Join { update_len: usize },
    /// After RoundStart.
    Round { round_id: u64 },
    /// A model download, asking for this version (0: the latest).
    Model { version: u64 },
}

/// Turns a status from the server (or the transport) into a typed error.
pub(crate) fn from_status(status: &tonic::Status, url: &str, phase: Phase) -> ClientError {
    let message = status.message().to_owned();
    let round_id = match phase {
        Phase::Round { round_id } => Some(round_id),
        Phase::Join { .. } | Phase::Model { .. } => None,
    };
    let Some(detail) = tessera_proto::error_detail(status) else {
        return match status.code() {
            tonic::Code::Unauthenticated => ClientError::AuthRefused { message },
            // No detail: the transport speaking, not the server.
            tonic::Code::Unavailable if round_id.is_none() => ClientError::Unreachable {
                url: url.to_owned(),
                attempts: 1,
                message: with_sources(&message, status),
            },
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
                ClientError::ConnectionLost {
                    round_id,
                    message: with_sources(&message, status),
                }
            }
            code => ClientError::Rejected {
                code,
                kind: v1::ErrorKind::Unspecified,
                message,
            },
        };
    };
    match (detail.kind(), phase) {
        (v1::ErrorKind::Unauthenticated, _) => ClientError::AuthRefused { message },
        (v1::ErrorKind::VersionMismatch, _) => ClientError::VersionMismatch {
            ours: tessera_proto::PROTOCOL_VERSION,
            server: detail.server_protocol_version,
        },
        // At Join the only length is the update's; in a round a wrong length
        // is a refused protocol message (a bug on one side), not the update.
        (v1::ErrorKind::WrongLength, Phase::Join { update_len }) => ClientError::UpdateLength {
            expected: detail.expected,
            got: update_len as u64,
        },
        (v1::ErrorKind::NoSuchModel, Phase::Model { version }) => {
            ClientError::NoSuchModel { version }
        }
        // The server's limit on one client's open connections (four per
        // token or certificate): not the server refusing rounds but, like
        // its connection cap, a wait-and-retry (an earlier connection of
        // this client has not closed yet, or an app's calls overlap).
        (v1::ErrorKind::Unavailable, Phase::Join { .. } | Phase::Model { .. })
            if status.code() == tonic::Code::ResourceExhausted =>
        {
            ClientError::Unreachable {
                url: url.to_owned(),
                attempts: 1,
                message: format!(
                    "the server refused one more connection with this client's credentials (retried): {message}"
                ),
            }
        }
        (v1::ErrorKind::Unavailable, _) => ClientError::ServerUnavailable(message),
        (v1::ErrorKind::NotEligible, _) => ClientError::NotEligible {
            message,
            rounds_left: detail.expected,
        },
        (v1::ErrorKind::StorageFailed, _) => ClientError::RoundNotStored {
            round_id: round_id.unwrap_or(detail.round_id),
            message,
        },
        (v1::ErrorKind::RoundAborted, _) => ClientError::RoundAborted {
            round_id: round_id.unwrap_or(detail.round_id),
            reason: None,
            evicted: Vec::new(),
        },
        _ if status.code() == tonic::Code::Unauthenticated => ClientError::AuthRefused { message },
        (kind, _) => ClientError::Rejected {
            code: status.code(),
            kind,
            message,
        },
    }
}

/// Turns a failed connection attempt into [`ClientError::Unreachable`].
pub(crate) fn unreachable(url: &str, error: &tonic::transport::Error) -> ClientError {
    ClientError::Unreachable {
        url: url.to_owned(),
        attempts: 1,
        message: source_chain(error),
    }
}

/// An error and its sources, `outer: inner: innermost`: tonic's transport
/// error alone says only "transport error".
pub(crate) fn source_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

fn with_sources(message: &str, status: &tonic::Status) -> String {
    use std::error::Error;
    match status.source() {
        Some(source) => {
            let chain = source_chain(source);
            if chain.starts_with(message) {
                chain
            } else if message.contains(&chain) {
                message.to_owned()
            } else {
                format!("{message}: {chain}")
            }
        }
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, kind: v1::ErrorKind) -> tonic::Status {
        let detail = v1::ErrorDetail {
            kind: kind as i32,
            server_protocol_version: 3,
            round_id: 8,
            expected: 100,
        };
        tessera_proto::status_with_detail(code, "refused", &detail)
    }

    const BEFORE: Phase = Phase::Join { update_len: 7 };

    #[test]
    fn details_map_to_typed_errors() {
        let url = "http://x";
        assert_eq!(
            from_status(
                &status(
                    tonic::Code::FailedPrecondition,
                    v1::ErrorKind::VersionMismatch
                ),
                url,
                BEFORE
            ),
            ClientError::VersionMismatch {
                ours: tessera_proto::PROTOCOL_VERSION,
                server: 3
            }
        );
        assert_eq!(
            from_status(
                &status(tonic::Code::InvalidArgument, v1::ErrorKind::WrongLength),
                url,
                BEFORE
            ),
            ClientError::UpdateLength {
                expected: 100,
                got: 7
            }
        );
        // In a round, a wrong length is a refusal of a message, not of the
        // update's length.
        assert!(matches!(
            from_status(
                &status(tonic::Code::InvalidArgument, v1::ErrorKind::WrongLength),
                url,
                Phase::Round { round_id: 8 }
            ),
            ClientError::Rejected {
                kind: v1::ErrorKind::WrongLength,
                ..
            }
        ));
        assert!(matches!(
            from_status(
                &status(tonic::Code::Unavailable, v1::ErrorKind::Unavailable),
                url,
                BEFORE
            ),
            ClientError::ServerUnavailable(_)
        ));
        // One client's connection limit is retried, like the cap.
        assert!(matches!(
            from_status(
                &status(tonic::Code::ResourceExhausted, v1::ErrorKind::Unavailable),
                url,
                BEFORE
            ),
            ClientError::Unreachable { .. }
        ));
        // DP-FTRL's once-per-tree refusal says how long the tree has left.
        assert_eq!(
            from_status(
                &status(tonic::Code::Unavailable, v1::ErrorKind::NotEligible),
                url,
                BEFORE
            ),
            ClientError::NotEligible {
                message: "refused".into(),
                rounds_left: 100
            }
        );
        assert!(matches!(
            from_status(&tonic::Status::unauthenticated("no"), url, BEFORE),
            ClientError::AuthRefused { .. }
        ));
        // The server could not store the round: named as such, not as an
        // unreachable server or a lost connection.
        let e = from_status(
            &status(tonic::Code::Unavailable, v1::ErrorKind::StorageFailed),
            url,
            Phase::Round { round_id: 8 },
        );
        assert_eq!(
            e,
            ClientError::RoundNotStored {
                round_id: 8,
                message: "refused".into()
            }
        );
        assert!(e.to_string().contains("could not store the round"), "{e}");
    }

    #[test]
    fn unavailable_without_detail_is_the_transport() {
        let s = tonic::Status::unavailable("tcp connect error");
        assert!(matches!(
            from_status(&s, "http://x", BEFORE),
            ClientError::Unreachable { attempts: 1, .. }
        ));
        assert!(matches!(
            from_status(&s, "http://x", Phase::Round { round_id: 2 }),
            ClientError::ConnectionLost {
                round_id: Some(2),
                ..
            }
        ));
    }

    #[test]
    fn messages_name_the_round_and_kind() {
        let e = ClientError::Rejected {
            code: tonic::Code::InvalidArgument,
            kind: v1::ErrorKind::Late,
            message: "too late".into(),
        };
        assert!(e.to_string().contains("LATE"), "{e}");
        let e = ClientError::ServerMisbehaved {
            round_id: Some(4),
            problem: "x".into(),
        };
        assert!(e.to_string().contains("round 4"), "{e}");
    }
}
