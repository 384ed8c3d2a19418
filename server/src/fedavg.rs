//! Model-agnostic FedAvg over a flat parameter vector.
//!
//! The server never needs to know what the parameters mean: a model is a
//! list of named tensor shapes laid end to end in one `f32` vector, which is
//! exactly what clients send updates for. A round's unmasked average update
//! is applied with a server learning rate, optionally through server
//! momentum (FedAvgM, Hsu, Qi and Brown 2019), which smooths the noisy
//! average of a few clients' updates.

use serde::{Deserialize, Serialize};

/// A model or update the server cannot use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Tensor shapes and the parameter vector disagree.
    #[error("the tensors hold {expected} values, the parameter vector has {got}")]
    Length {
        /// Values the shapes describe.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// A tensor name is empty or repeated.
    #[error("tensor name {0:?} is empty or repeated")]
    Name(String),
    /// A value is NaN or infinite.
    #[error("value at index {0} is not finite")]
    NonFinite(usize),
    /// A hyperparameter is out of range.
    #[error("{name} = {value} is out of range")]
    Hyper {
        /// Which.
        name: &'static str,
        /// Its value.
        value: f32,
    },
}

/// One named tensor's place in the flat vector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// The tensor's name, unique in the model.
    pub name: String,
    /// Its shape; it occupies the product of the dimensions in the vector.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True for a tensor with a zero dimension.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The global model: named tensors laid end to end in `params`.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// The tensors, in the order their values appear in `params`.
    pub tensors: Vec<TensorSpec>,
    /// All parameters.
    pub params: Vec<f32>,
}

impl Model {
    /// Checks that the shapes cover `params` exactly, names are unique and
    /// non-empty, and every value is finite.
    pub fn new(tensors: Vec<TensorSpec>, params: Vec<f32>) -> Result<Model, ModelError> {
        let expected: usize = tensors.iter().map(TensorSpec::len).sum();
        if expected != params.len() {
            return Err(ModelError::Length {
                expected,
                got: params.len(),
            });
        }
        let mut names = std::collections::HashSet::new();
        for t in &tensors {
            if t.name.is_empty() || !names.insert(t.name.as_str()) {
                return Err(ModelError::Name(t.name.clone()));
            }
        }
        if let Some(i) = params.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite(i));
        }
        Ok(Model { tensors, params })
    }

    /// A model of `dim` zeros in one tensor named `params`: the starting
    /// point when the server knows only the dimension.
    pub fn zeros_flat(dim: usize) -> Model {
        Model {
            tensors: vec![TensorSpec {
                name: "params".to_owned(),
                shape: vec![dim],
            }],
            params: vec![0.0; dim],
        }
    }

    /// The number of parameters, which every client update must match.
    pub fn dim(&self) -> usize {
        self.params.len()
    }
}

/// FedAvg's server step.
#[derive(Clone, Debug)]
pub struct FedAvg {
    /// Server learning rate: 1 applies the average update as is.
    pub server_lr: f32,
    /// Server momentum in `[0, 1)`, if any.
    pub momentum: Option<f32>,
    velocity: Option<Vec<f32>>,
}

impl FedAvg {
    /// Checks the hyperparameters.
    pub fn new(server_lr: f32, momentum: Option<f32>) -> Result<FedAvg, ModelError> {
        if !(server_lr.is_finite() && server_lr > 0.0) {
            return Err(ModelError::Hyper {
                name: "server_lr",
                value: server_lr,
            });
        }
        if let Some(m) = momentum
            && !(0.0..1.0).contains(&m)
        {
            return Err(ModelError::Hyper {
                name: "server_momentum",
                value: m,
            });
        }
        Ok(FedAvg {
            server_lr,
            momentum,
            velocity: None,
        })
    }

    /// The momentum buffer, for persisting across restarts.
    pub fn velocity(&self) -> Option<&[f32]> {
        self.velocity.as_deref()
    }

    /// Restores a persisted momentum buffer.
    pub fn set_velocity(&mut self, velocity: Vec<f32>) {
        self.velocity = Some(velocity);
    }

    /// Applies a round's average update: `w += lr * u`, or with momentum
    /// `v = beta v + u; w += lr * v`. On error the model is untouched.
    pub fn apply(&mut self, model: &mut Model, mean_update: &[f32]) -> Result<(), ModelError> {
        if mean_update.len() != model.dim() {
            return Err(ModelError::Length {
                expected: model.dim(),
                got: mean_update.len(),
            });
        }
        if let Some(i) = mean_update.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite(i));
        }
        let step: &[f32] = match self.momentum {
            None => mean_update,
            Some(beta) => {
                let v = self
                    .velocity
                    .get_or_insert_with(|| vec![0.0; mean_update.len()]);
                if v.len() != mean_update.len() {
                    *v = vec![0.0; mean_update.len()];
                }
                for (v, u) in v.iter_mut().zip(mean_update) {
                    *v = beta * *v + u;
                }
                v
            }
        };
        for (w, s) in model.params.iter_mut().zip(step) {
            *w += self.server_lr * s;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_fedavg_adds_the_scaled_average() {
        let mut model = Model::zeros_flat(3);
        model.params = vec![1.0, 2.0, 3.0];
        let mut f = FedAvg::new(0.5, None).unwrap();
        f.apply(&mut model, &[2.0, -2.0, 0.0]).unwrap();
        assert_eq!(model.params, vec![2.0, 1.0, 3.0]);
    }

    #[test]
    fn momentum_accumulates() {
        // beta = 0.5, lr = 1, constant update 1: v = 1, 1.5, 1.75;
        // w = 1, 2.5, 4.25.
        let mut model = Model::zeros_flat(1);
        let mut f = FedAvg::new(1.0, Some(0.5)).unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            f.apply(&mut model, &[1.0]).unwrap();
            seen.push(model.params[0]);
        }
        assert_eq!(seen, vec![1.0, 2.5, 4.25]);
        assert_eq!(f.velocity(), Some(&[1.75f32][..]));
    }

    #[test]
    fn bad_input_leaves_the_model_alone() {
        let mut model = Model::zeros_flat(2);
        let mut f = FedAvg::new(1.0, None).unwrap();
        assert!(f.apply(&mut model, &[1.0]).is_err());
        assert!(f.apply(&mut model, &[1.0, f32::NAN]).is_err());
        assert_eq!(model.params, vec![0.0, 0.0]);
        assert!(FedAvg::new(0.0, None).is_err());
        assert!(FedAvg::new(1.0, Some(1.0)).is_err());
        let spec = |n: &str, s: usize| TensorSpec {
            name: n.into(),
            shape: vec![s],
        };
        assert!(Model::new(vec![spec("a", 2), spec("a", 1)], vec![0.0; 3]).is_err());
        assert!(Model::new(vec![spec("a", 2)], vec![0.0; 3]).is_err());
        assert!(Model::new(vec![spec("a", 2), spec("b", 1)], vec![0.0; 3]).is_ok());
    }
}
