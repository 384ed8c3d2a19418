//! Published global models, as [`Client::latest_model`](crate::Client::latest_model)
//! downloads them: a client trains from the latest model and sends
//! `local - global` as its update, so the flat vector it updates must have
//! the same layout as [`GlobalModel::flatten`].
//!
//! # The flat-vector order
//!
//! Every Tessera model's flat vector is **its tensors in name order**
//! (names compared byte by byte, ascending), **each row-major** (C order,
//! the last index fastest). The server keeps its models in that order and
//! sends their tensors in it, so [`GlobalModel::flatten`] (the tensors as
//! received, end to end) is that layout. For a PyTorch `state_dict` or a
//! dict of NumPy arrays: `concatenate([d[k].ravel() for k in sorted(d)])`.

pub use tessera_dp::ledger::Adversary;
use tessera_proto::v1;

use crate::error::ClientError;

/// One named tensor of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// The parameter's name, as the training code knows it.
    pub name: String,
    /// Its shape; the product is `values.len()`.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// A model the server published, with the privacy spent to make it.
#[derive(Clone, Debug, PartialEq)]
pub struct GlobalModel {
    /// The model's version; each completed round publishes the next.
    pub version: u64,
    /// The round that produced it (0 for the initial model).
    pub round: u64,
    /// Differential privacy spent up to and including this version (0
    /// without DP).
    pub epsilon: f64,
    /// The delta of `epsilon`.
    pub delta: f64,
    /// Whom `epsilon` holds against, as the server's privacy ledger says:
    /// [`Adversary::Server`] only when every round up to this version ran
    /// distributed DP (clients added the noise), [`Adversary::ModelConsumers`]
    /// when any ran central DP (the server saw that round's un-noised sum);
    /// `None` without DP. This round's mode alone does not say it: a job
    /// that ran central rounds before going distributed has spent an
    /// epsilon that holds against the model's consumers only.
    pub epsilon_against: Option<Adversary>,
    /// FedProx's mu the server runs with (0: off): train with
    /// `(mu/2) ||w - w_global||^2` added to the local loss, `w_global`
    /// this model, so the update the round averages is the one the server
    /// asked for (each round's start repeats it:
    /// [`RoundOutcome::proximal_mu`](crate::RoundOutcome::proximal_mu)).
    pub proximal_mu: f64,
    /// The parameters, in the order of the flat update vector: name order
    /// (see the module docs), as the server sends them.
    pub tensors: Vec<NamedTensor>,
}

impl GlobalModel {
    /// All values in one vector, tensors in the order received (name order:
    /// see the module docs): the layout of the update
    /// [`Client::participate`](crate::Client::participate) takes.
    ///
    /// ```
    /// use tessera_client::{GlobalModel, NamedTensor};
    ///
    /// let model = GlobalModel {
    ///     version: 3,
    ///     round: 2,
    ///     epsilon: 0.0,
    ///     delta: 0.0,
    ///     epsilon_against: None,
    ///     proximal_mu: 0.0,
    ///     tensors: vec![
    ///         NamedTensor { name: "b".into(), shape: vec![1], values: vec![3.0] },
    ///         NamedTensor { name: "w".into(), shape: vec![2], values: vec![1.0, 2.0] },
    ///     ],
    /// };
    /// assert_eq!(model.flatten(), [3.0, 1.0, 2.0]);
    /// assert_eq!(model.dim(), 3);
    /// ```
    pub fn flatten(&self) -> Vec<f32> {
        let mut flat = Vec::with_capacity(self.dim());
        for tensor in &self.tensors {
            flat.extend_from_slice(&tensor.values);
        }
        flat
    }

    /// The number of parameters: the length updates must have.
    pub fn dim(&self) -> usize {
        self.tensors.iter().map(|t| t.values.len()).sum()
    }
}

impl TryFrom<v1::GetModelResponse> for GlobalModel {
    type Error = ClientError;

    /// Converts and checks that each tensor's shape matches its values.
    fn try_from(response: v1::GetModelResponse) -> Result<Self, ClientError> {
        let bad = |problem: String| ClientError::ServerMisbehaved {
            round_id: None,
            problem,
        };
        let tensors = response
            .tensors
            .into_iter()
            .map(|t| {
                let shape = t
                    .shape
                    .iter()
                    .map(|&d| usize::try_from(d))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| bad(format!("tensor '{}' has a dimension above usize", t.name)))?;
                let size = shape
                    .iter()
                    .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                    .ok_or_else(|| bad(format!("tensor '{}' has an overflowing shape", t.name)))?;
                if size != t.values.len() {
                    return Err(bad(format!(
                        "tensor '{}' has shape {:?} ({size} values) but {} values",
                        t.name,
                        shape,
                        t.values.len()
                    )));
                }
                Ok(NamedTensor {
                    name: t.name,
                    shape,
                    values: t.values,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Names are the keys of everything built on the model (a dict in
        // Python, named arrays, a safetensors file) and their order is the
        // flat order: a repeated name would silently lose a tensor there,
        // and another order would make `flatten` disagree with the
        // documented layout apps flatten their updates in.
        if let Some(t) = tensors.iter().find(|t| t.name.is_empty()) {
            return Err(bad(format!(
                "a tensor of shape {:?} has an empty name",
                t.shape
            )));
        }
        if let Some(w) = tensors.windows(2).find(|w| w[0].name >= w[1].name) {
            return Err(bad(if w[0].name == w[1].name {
                format!("tensor '{}' appears twice", w[0].name)
            } else {
                format!(
                    "tensor '{}' comes after '{}': models list their tensors in name order",
                    w[1].name, w[0].name
                )
            }));
        }
        let epsilon_against = match response.epsilon_against.as_str() {
            "" => None,
            "server" => Some(Adversary::Server),
            "model-consumers" => Some(Adversary::ModelConsumers),
            other => {
                return Err(bad(format!(
                    "the model's epsilon holds against {other:?}, which is not an adversary this client knows"
                )));
            }
        };
        let proximal_mu = response.proximal_mu;
        if !(proximal_mu.is_finite() && proximal_mu >= 0.0) {
            return Err(bad(format!(
                "its proximal_mu is {proximal_mu}, not a non-negative number"
            )));
        }
        Ok(GlobalModel {
            version: response.version,
            round: response.round,
            epsilon: response.epsilon,
            delta: response.delta,
            epsilon_against,
            proximal_mu,
            tensors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_that_does_not_match_the_values_is_refused() {
        let response = v1::GetModelResponse {
            version: 1,
            round: 0,
            epsilon: 0.0,
            delta: 0.0,
            tensors: vec![v1::Tensor {
                name: "w".into(),
                shape: vec![2, 3],
                values: vec![0.0; 5],
            }],
            epsilon_against: String::new(),
            proximal_mu: 0.0,
        };
        let err = GlobalModel::try_from(response).unwrap_err();
        assert!(err.to_string().contains("tensor 'w'"), "{err}");
    }

    fn tensor(name: &str) -> v1::Tensor {
        v1::Tensor {
            name: name.into(),
            shape: vec![1],
            values: vec![0.0],
        }
    }

    fn response(names: &[&str]) -> v1::GetModelResponse {
        v1::GetModelResponse {
            version: 1,
            round: 0,
            epsilon: 0.0,
            delta: 0.0,
            tensors: names.iter().map(|n| tensor(n)).collect(),
            epsilon_against: String::new(),
            proximal_mu: 0.0,
        }
    }

    /// A server (or anything between) that repeats a name, sends an empty
    /// one or lists tensors out of name order is refused: a repeated name
    /// would lose a tensor in every by-name view of the model (a Python
    /// dict, `to_arrays`, a safetensors file), and another order would make
    /// `flatten` disagree with the name-order layout apps are told to use.
    #[test]
    fn repeated_empty_and_unordered_names_are_refused() {
        assert!(GlobalModel::try_from(response(&["a", "b", "c"])).is_ok());
        for (names, needle) in [
            (&["a", "b", "b"][..], "tensor 'b' appears twice"),
            (&["a", "", "b"][..], "empty name"),
            (&["b", "a"][..], "tensor 'a' comes after 'b'"),
        ] {
            let err = GlobalModel::try_from(response(names)).unwrap_err();
            assert!(
                matches!(err, ClientError::ServerMisbehaved { .. }),
                "{names:?}: {err:?}"
            );
            assert!(err.to_string().contains(needle), "{names:?}: {err}");
        }
    }

    #[test]
    fn scalars_have_an_empty_shape() {
        let response = v1::GetModelResponse {
            version: 1,
            round: 0,
            epsilon: 1.5,
            delta: 1e-5,
            tensors: vec![v1::Tensor {
                name: "scale".into(),
                shape: vec![],
                values: vec![2.0],
            }],
            epsilon_against: "model-consumers".into(),
            proximal_mu: 0.25,
        };
        let model = GlobalModel::try_from(response.clone()).unwrap();
        assert_eq!(model.flatten(), [2.0]);
        assert_eq!(model.epsilon, 1.5);
        assert_eq!(model.proximal_mu, 0.25);
        for mu in [-0.5, f64::NAN, f64::INFINITY] {
            let bad_mu = v1::GetModelResponse {
                proximal_mu: mu,
                ..response.clone()
            };
            let err = GlobalModel::try_from(bad_mu).unwrap_err();
            assert!(err.to_string().contains("proximal_mu"), "{err}");
        }
        assert_eq!(model.epsilon_against, Some(Adversary::ModelConsumers));
        let unknown = v1::GetModelResponse {
            epsilon_against: "nobody".into(),
            ..response
        };
        let err = GlobalModel::try_from(unknown).unwrap_err();
        assert!(err.to_string().contains("\"nobody\""), "{err}");
    }
}
