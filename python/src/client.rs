//! `tessera._native.Client`: the Rust SDK's client, its own runtime, and
//! the GIL released while a call waits on the server.

use std::sync::Arc;

use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use tessera_aggregation::Stage;
use tessera_aggregation::ThreatModel;
use tessera_aggregation::identity::{IdentityKey, parse_allow_list};
use tessera_client::{ClientError, Contribution, Evaluation, Participation, Policy, RoundOutcome};

use crate::errors::{client_error, raise};

/// A client of one aggregation server (see `tessera.Client`, which checks
/// updates against the model's names and shapes before calling this).
#[pyclass(module = "tessera._native", frozen)]
pub(crate) struct Client {
    inner: Arc<tessera_client::Client>,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The SDK's Debug redacts the token.
        f.debug_struct("Client")
            .field("inner", &self.inner)
            .finish()
    }
}

/// The policy's fields as `tessera.Policy` passes them.
#[derive(Debug, FromPyObject)]
pub(crate) struct PolicyArgs {
    #[pyo3(attribute)]
    threat_model: Option<String>,
    #[pyo3(attribute)]
    assume_corrupt: f64,
    #[pyo3(attribute)]
    min_clients: u32,
    #[pyo3(attribute)]
    max_clients: u32,
    #[pyo3(attribute)]
    min_survivors: u32,
    #[pyo3(attribute)]
    require_dp: bool,
    #[pyo3(attribute)]
    min_noise_multiplier: f64,
}

impl PolicyArgs {
    fn policy(self) -> PyResult<Policy> {
        let threat_model = self
            .threat_model
            .map(|name| {
                name.parse::<ThreatModel>()
                    .map_err(|e| raise("InvalidInput", format!("Policy.threat_model: {e}")))
            })
            .transpose()?;
        Ok(Policy {
            threat_model,
            assume_corrupt: self.assume_corrupt,
            min_clients: self.min_clients,
            max_clients: self.max_clients,
            min_survivors: self.min_survivors,
            require_dp: self.require_dp,
            min_noise_multiplier: self.min_noise_multiplier,
        })
    }
}

#[pymethods]
impl Client {
    /// Builds the SDK client; `tessera.Client` has read the PEM and key
    /// files into bytes and text.
    #[new]
    #[pyo3(signature = (url, token, ca_pem, client_cert_pem, client_key_pem, identity_key, trusted_identities, insecure_loopback, policy, round_timeout))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        url: String,
        token: Option<String>,
        ca_pem: Option<Vec<u8>>,
        client_cert_pem: Option<Vec<u8>>,
        client_key_pem: Option<Vec<u8>>,
        identity_key: Option<String>,
        trusted_identities: Option<String>,
        insecure_loopback: bool,
        policy: Option<PolicyArgs>,
        round_timeout: Option<f64>,
    ) -> PyResult<Self> {
        let mut builder = tessera_client::Client::builder(url);
        if let Some(token) = token {
            builder = builder.token(token);
        }
        if let Some(pem) = ca_pem {
            builder = builder.tls_ca_pem(pem);
        }
        match (client_cert_pem, client_key_pem) {
            (Some(cert), Some(key)) => builder = builder.tls_identity(cert, key),
            (None, None) => {}
            _ => {
                return Err(raise(
                    "InvalidInput",
                    "client_cert and client_key go together (mutual TLS needs both)",
                ));
            }
        }
        match (identity_key, trusted_identities) {
            (Some(key), Some(list)) => {
                let key = IdentityKey::from_key_file(&key)
                    .map_err(|e| raise("InvalidInput", format!("identity: {e}")))?;
                let trusted = parse_allow_list(&list)
                    .map_err(|e| raise("InvalidInput", format!("trusted_identities: {e}")))?
                    .into_iter()
                    .map(|e| e.key)
                    .collect();
                builder = builder.identity(key).trusted_identities(trusted);
            }
            (None, None) => {}
            _ => {
                return Err(raise(
                    "InvalidInput",
                    "identity and trusted_identities go together (malicious-server rounds need both)",
                ));
            }
        }
        if insecure_loopback {
            builder = builder.insecure_loopback();
        }
        if let Some(policy) = policy {
            builder = builder.policy(policy.policy()?);
        }
        if let Some(seconds) = round_timeout {
            let timeout = std::time::Duration::try_from_secs_f64(seconds).map_err(|_| {
                raise(
                    "InvalidInput",
                    format!("round_timeout: {seconds} is not a duration in seconds"),
                )
            })?;
            builder = builder.round_timeout(timeout);
        }
        let inner = builder.build().map_err(client_error)?;
        Ok(Client {
            inner: Arc::new(inner),
            runtime: crate::runtime("client")?,
        })
    }

    /// The server URL.
    #[getter]
    fn url(&self) -> &str {
        self.inner.url()
    }

    /// Downloads model `version` (0: the latest): `(version, round,
    /// epsilon, delta, epsilon_against, [(name, shape, flat float32
    /// values)], proximal_mu)`, the tensors in the flat order;
    /// `epsilon_against` is `"server"`, `"model-consumers"` or `None`, as
    /// the server's ledger says; `proximal_mu` is the FedProx mu the server
    /// runs with (0: off).
    fn model<'py>(&self, py: Python<'py>, version: u64) -> PyResult<Bound<'py, PyAny>> {
        let inner = Arc::clone(&self.inner);
        let model = py
            .detach(|| self.runtime.block_on(inner.model(version)))
            .map_err(client_error)?;
        let tensors = PyList::empty(py);
        for t in model.tensors {
            let values = PyArray1::from_vec(py, t.values);
            tensors.append((t.name, t.shape, values))?;
        }
        Ok((
            model.version,
            model.round,
            model.epsilon,
            model.delta,
            model.epsilon_against.map(|a| a.name()),
            tensors,
            model.proximal_mu,
        )
            .into_pyobject(py)?
            .into_any())
    }

    /// Runs one round with a flat float32 update and, for a server that
    /// asks for them, the example count that weights it and the client's
    /// evaluation `(correct, total, loss_sum)`; the outcome as a dict.
    #[pyo3(signature = (update, num_examples=None, evaluation=None))]
    fn participate<'py>(
        &self,
        py: Python<'py>,
        update: PyReadonlyArray1<'py, f32>,
        num_examples: Option<u64>,
        evaluation: Option<(u64, u64, f64)>,
    ) -> PyResult<Bound<'py, PyDict>> {
        // A copy: the array stays writable by other Python threads while
        // the GIL is released.
        let update = update.as_array().to_vec();
        let inner = Arc::clone(&self.inner);
        let outcome = py
            .detach(|| {
                let contribution = contribution(&update, num_examples, evaluation);
                self.runtime.block_on(inner.contribute(contribution))
            })
            .map_err(client_error)?;
        outcome_dict(py, outcome)
    }

    /// Like `participate`, but hangs up instead of sending this client's
    /// message of `stage` (a real dropout, for experiments and tests):
    /// `None` if it dropped, else the outcome.
    #[pyo3(signature = (update, stage, num_examples=None, evaluation=None))]
    fn participate_or_drop<'py>(
        &self,
        py: Python<'py>,
        update: PyReadonlyArray1<'py, f32>,
        stage: &str,
        num_examples: Option<u64>,
        evaluation: Option<(u64, u64, f64)>,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let stage: Stage = stage
            .parse()
            .map_err(|e: String| raise("InvalidInput", format!("drop_before: {e}")))?;
        let update = update.as_array().to_vec();
        let inner = Arc::clone(&self.inner);
        let participation = py
            .detach(|| {
                let contribution = contribution(&update, num_examples, evaluation);
                self.runtime
                    .block_on(inner.contribute_or_drop(contribution, stage))
            })
            .map_err(client_error)?;
        match participation {
            Participation::Completed(outcome) => outcome_dict(py, outcome).map(Some),
            Participation::Dropped { .. } => Ok(None),
        }
    }
}

/// Raises the exception an SDK error of kind `variant` maps to, with
/// made-up fields: lets the tests check the mapping of every variant,
/// including those a real server cannot be made to cause (a server that
/// breaks the protocol).
#[pyfunction]
pub(crate) fn _raise_sdk_error(variant: &str) -> PyResult<()> {
    let e = match variant {
        "InvalidUrl" => ClientError::InvalidUrl {
            url: "x".into(),
            reason: "no scheme".into(),
        },
        "InvalidTls" => ClientError::InvalidTls("bad PEM".into()),
        "InvalidToken" => ClientError::InvalidToken,
        "InvalidSetting" => ClientError::InvalidSetting {
            setting: "retry",
            problem: "zero attempts".into(),
        },
        "OsRandomness" => ClientError::OsRandomness("no entropy".into()),
        "EmptyUpdate" => ClientError::EmptyUpdate,
        "NonFiniteUpdate" => ClientError::NonFiniteUpdate { index: 3 },
        "Unreachable" => ClientError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            attempts: 3,
            message: "refused".into(),
        },
        "ConnectionLost" => ClientError::ConnectionLost {
            round_id: Some(4),
            message: "reset".into(),
        },
        "AuthRefused" => ClientError::AuthRefused {
            message: "unknown token".into(),
        },
        "VersionMismatch" => ClientError::VersionMismatch { ours: 2, server: 9 },
        "UpdateLength" => ClientError::UpdateLength {
            expected: 4,
            got: 5,
        },
        "ModelMismatch" => ClientError::ModelMismatch {
            problem: "tensor 'w'".into(),
        },
        "ServerUnavailable" => ClientError::ServerUnavailable("budget spent".into()),
        "NotEligible" => ClientError::NotEligible {
            message: "alice already took part in the current DP-FTRL tree".into(),
            rounds_left: 3,
        },
        "NoSuchModel" => ClientError::NoSuchModel { version: 9 },
        "Rejected" => ClientError::Rejected {
            code: tonic::Code::Internal,
            kind: Default::default(),
            message: "no".into(),
        },
        "RoundAborted" => ClientError::RoundAborted {
            round_id: 4,
            reason: Some(tessera_aggregation::messages::AbortReason::SharesMissing),
            evicted: Vec::new(),
        },
        "AccusedNeighbours" => ClientError::AccusedNeighbours {
            round_id: 4,
            accused: vec![1, 2],
            revealed_key: false,
        },
        "RoundNotStored" => ClientError::RoundNotStored {
            round_id: 4,
            message: "disk full".into(),
        },
        "LeftOut" => ClientError::LeftOut { round_id: 4 },
        "ServerSilent" => ClientError::ServerSilent {
            round_id: 4,
            stage: "share-keys",
        },
        "RoundTimeout" => ClientError::RoundTimeout {
            after: std::time::Duration::from_secs(1),
        },
        "PolicyRefused" => ClientError::PolicyRefused {
            round_id: 4,
            rule: tessera_client::PolicyRule::MinClients,
            problem: "3 clients".into(),
        },
        "ServerMisbehaved" => ClientError::ServerMisbehaved {
            round_id: Some(4),
            problem: "a share for another client".into(),
        },
        other => {
            return Err(raise(
                "InvalidInput",
                format!("no SDK error variant {other}"),
            ));
        }
    };
    Err(client_error(e))
}

/// The SDK's contribution from the binding's arguments.
fn contribution(
    update: &[f32],
    num_examples: Option<u64>,
    evaluation: Option<(u64, u64, f64)>,
) -> Contribution<'_> {
    let mut c = Contribution::new(update);
    if let Some(n) = num_examples {
        c = c.num_examples(n);
    }
    if let Some((correct, total, loss_sum)) = evaluation {
        c = c.evaluation(Evaluation {
            correct,
            total,
            loss_sum,
        });
    }
    c
}

fn outcome_dict(py: Python<'_>, o: RoundOutcome) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("round_id", o.round_id)?;
    d.set_item("client_id", o.client_id)?;
    d.set_item("survivors", o.survivors)?;
    d.set_item("model_version", o.model_version)?;
    d.set_item("clipped", o.clipped)?;
    d.set_item("update_norm", o.update_norm)?;
    d.set_item("bytes_sent", o.bytes_sent)?;
    d.set_item("bytes_received", o.bytes_received)?;
    let evicted: Vec<(u32, String, String)> = o
        .evicted
        .into_iter()
        .map(|e| (e.client_id, e.reason, e.detail))
        .collect();
    d.set_item("evicted", evicted)?;
    d.set_item("client_noise", o.client_noise)?;
    d.set_item("clip_norm", o.clip_norm)?;
    d.set_item("proximal_mu", o.proximal_mu)?;
    Ok(d)
}
