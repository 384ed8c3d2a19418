//! SDK and server errors as the Python exception classes of
//! `tessera/errors.py`.
//!
//! The classes are Python (so they can also derive from `ValueError` and
//! `ConnectionError` and carry documented attributes); this module only
//! picks the class for each Rust error and hands over the SDK's message
//! and fields. Every `ClientError` variant maps to exactly one class.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use tessera_client::ClientError;

/// An exception of class `name` from `tessera.errors`, raised with
/// `message` and the keyword attributes the class documents.
pub(crate) fn raise_with(name: &'static str, message: String, attrs: Attrs) -> PyErr {
    Python::attach(|py| match build(py, name, message.clone(), attrs) {
        Ok(err) => err,
        // The package is installed broken: say so rather than panic.
        Err(e) => e,
    })
}

/// [`raise_with`] without attributes.
pub(crate) fn raise(name: &'static str, message: impl Into<String>) -> PyErr {
    raise_with(name, message.into(), Vec::new())
}

/// Attributes set on the exception.
pub(crate) type Attrs = Vec<(&'static str, Attr)>;

/// An attribute's value.
pub(crate) enum Attr {
    Int(Option<u64>),
    Str(Option<String>),
    Ints(Vec<u32>),
    Evictions(Vec<(u32, String, String)>),
}

fn build(py: Python<'_>, name: &str, message: String, attrs: Attrs) -> PyResult<PyErr> {
    let class = py.import("tessera.errors")?.getattr(name)?;
    let kwargs = PyDict::new(py);
    for (key, value) in attrs {
        match value {
            Attr::Int(v) => kwargs.set_item(key, v)?,
            Attr::Str(v) => kwargs.set_item(key, v)?,
            Attr::Ints(v) => kwargs.set_item(key, v)?,
            Attr::Evictions(v) => kwargs.set_item(key, v)?,
        }
    }
    let instance = class.call((message,), Some(&kwargs))?;
    Ok(PyErr::from_value(instance))
}

/// The class for an SDK error, and its attributes; the message is the
/// SDK's.
pub(crate) fn client_error(error: ClientError) -> PyErr {
    let message = error.to_string();
    let (class, attrs): (&'static str, Attrs) = match error {
        ClientError::InvalidUrl { .. }
        | ClientError::InvalidTls(_)
        | ClientError::InvalidToken
        | ClientError::InvalidSetting { .. }
        | ClientError::EmptyUpdate
        | ClientError::NonFiniteUpdate { .. }
        | ClientError::UpdateLength { .. }
        | ClientError::ModelMismatch { .. } => ("InvalidInput", Vec::new()),
        ClientError::Unreachable { .. } => ("ConnectionFailed", Vec::new()),
        ClientError::ConnectionLost { round_id, .. } => {
            ("ConnectionFailed", vec![("round_id", Attr::Int(round_id))])
        }
        ClientError::AuthRefused { .. } => ("AuthRefused", Vec::new()),
        ClientError::VersionMismatch { .. } => ("ProtocolViolation", Vec::new()),
        ClientError::ServerMisbehaved { round_id, .. } => {
            ("ProtocolViolation", vec![("round_id", Attr::Int(round_id))])
        }
        ClientError::NotEligible { rounds_left, .. } => (
            "NotEligible",
            vec![("rounds_left", Attr::Int(Some(rounds_left)))],
        ),
        ClientError::ServerUnavailable(_)
        | ClientError::NoSuchModel { .. }
        | ClientError::Rejected { .. } => ("ServerRefused", Vec::new()),
        ClientError::RoundAborted {
            round_id,
            reason,
            evicted,
        } => (
            "RoundAborted",
            vec![
                ("round_id", Attr::Int(Some(round_id))),
                ("reason", Attr::Str(reason.map(|r| r.to_string()))),
                (
                    "evicted",
                    Attr::Evictions(
                        evicted
                            .into_iter()
                            .map(|e| (e.client_id, e.reason, e.detail))
                            .collect(),
                    ),
                ),
            ],
        ),
        ClientError::RoundNotStored {
            round_id,
            message: why,
        } => (
            "RoundAborted",
            vec![
                ("round_id", Attr::Int(Some(round_id))),
                (
                    "reason",
                    Attr::Str(Some(format!("the server could not store the round: {why}"))),
                ),
            ],
        ),
        ClientError::AccusedNeighbours {
            round_id, accused, ..
        } => (
            "RoundFailed",
            vec![
                ("round_id", Attr::Int(Some(round_id))),
                ("accused", Attr::Ints(accused)),
            ],
        ),
        ClientError::LeftOut { round_id } | ClientError::ServerSilent { round_id, .. } => {
            ("RoundFailed", vec![("round_id", Attr::Int(Some(round_id)))])
        }
        ClientError::RoundTimeout { .. } => ("RoundFailed", Vec::new()),
        ClientError::PolicyRefused { round_id, rule, .. } => (
            "PolicyRefused",
            vec![
                ("round_id", Attr::Int(Some(round_id))),
                ("rule", Attr::Str(Some(rule.name().to_owned()))),
            ],
        ),
        // OsRandomness, and variants a later SDK adds.
        _ => ("TesseraError", Vec::new()),
    };
    raise_with(class, message, attrs)
}
