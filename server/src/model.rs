//! The global model the server trains and publishes.
//!
//! The server never needs to know what the parameters mean: a model is a
//! list of named tensor shapes laid end to end in one `f32` vector, which is
//! exactly what clients send updates for. The store writes each version as
//! safetensors; FedAvg turns a round's average update into the next version.

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
    /// Applying the update would push a value to infinity.
    #[error("the step overflows at value {0}")]
    Overflow(usize),
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
///
/// `Debug` prints the tensor list and the dimension, not a million values.
#[derive(Clone, PartialEq)]
pub struct Model {
    /// The tensors, in the order their values appear in `params`.
    pub tensors: Vec<TensorSpec>,
    /// All parameters.
    pub params: Vec<f32>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("tensors", &self.tensors)
            .field("dim", &self.params.len())
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Checks that the shapes cover `params` exactly, names are unique and
    /// non-empty, and every value is finite.
    pub fn new(tensors: Vec<TensorSpec>, params: Vec<f32>) -> Result<Model, ModelError> {
        let model = Model { tensors, params };
        model.validate()?;
        Ok(model)
    }

    /// The checks of [`Model::new`], for a model whose public fields were
    /// built or changed by hand: the store runs them before it writes, so
    /// it never publishes a model it would refuse to read back.
    pub fn validate(&self) -> Result<(), ModelError> {
        let expected = self
            .tensors
            .iter()
            .try_fold(0usize, |acc, t| {
                t.shape
                    .iter()
                    .try_fold(1usize, |n, &d| n.checked_mul(d))
                    .and_then(|n| acc.checked_add(n))
            })
            .unwrap_or(usize::MAX);
        if expected != self.params.len() {
            return Err(ModelError::Length {
                expected,
                got: self.params.len(),
            });
        }
        let mut names = std::collections::HashSet::new();
        for t in &self.tensors {
            if t.name.is_empty() || !names.insert(t.name.as_str()) {
                return Err(ModelError::Name(t.name.clone()));
            }
        }
        match self.params.iter().position(|v| !v.is_finite()) {
            Some(i) => Err(ModelError::NonFinite(i)),
            None => Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn models_are_checked() {
        let two = || vec![spec("a", &[2]), spec("b", &[1])];
        assert!(Model::new(two(), vec![0.0; 3]).is_ok());
        assert_eq!(
            Model::new(vec![spec("a", &[2]), spec("a", &[1])], vec![0.0; 3]),
            Err(ModelError::Name("a".into()))
        );
        assert_eq!(
            Model::new(vec![spec("", &[3])], vec![0.0; 3]),
            Err(ModelError::Name(String::new()))
        );
        assert_eq!(
            Model::new(two(), vec![0.0; 4]),
            Err(ModelError::Length {
                expected: 3,
                got: 4
            })
        );
        assert_eq!(
            Model::new(two(), vec![0.0, f32::INFINITY, 0.0]),
            Err(ModelError::NonFinite(1))
        );
        // Shapes whose product overflows cannot match any vector.
        assert!(Model::new(vec![spec("a", &[usize::MAX, 2])], vec![]).is_err());
        assert_eq!(Model::zeros_flat(5).dim(), 5);
        assert!(!format!("{:?}", Model::zeros_flat(5)).contains("0.0"));
    }
}
