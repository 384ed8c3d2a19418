//! burn modules as flat parameter vectors (feature `burn`).
//!
//! Secure aggregation sums flat `f32` vectors; a burn [`Module`] holds its
//! parameters as named tensors. A client trains a module from the global
//! model, then sends `flatten(local) - flatten(global)` through
//! [`Client::participate`](crate::Client::participate); the server averages
//! the vectors and publishes the next global model, which
//! [`GlobalModel::load_into`] writes back into a module.
//!
//! The order is burn's visiting order: fields in declaration order, depth
//! first, every float parameter (integer and boolean buffers are not
//! trained and not sent). It depends only on the module's type, so every
//! process that builds the same module agrees on it. Names are the dotted
//! field paths (`fc1.weight`), which [`GlobalModel::load_into`] checks, so a
//! model published for another architecture is refused rather than loaded
//! into the wrong weights.
//!
//! ```
//! use burn::nn::{Linear, LinearConfig};
//! use burn::prelude::*;
//! use tessera_client::burn::{flatten, load_flat, tensors};
//!
//! let device = Device::flex();
//! let layer: Linear = LinearConfig::new(3, 2).init(&device);
//! let flat = flatten(&layer);
//! assert_eq!(flat.len(), 3 * 2 + 2);
//! let names: Vec<String> = tensors(&layer).into_iter().map(|t| t.name).collect();
//! assert_eq!(names, ["weight", "bias"]);
//!
//! // Loading writes the values back bit for bit; a wrong length is refused.
//! let zeros = load_flat(LinearConfig::new(3, 2).init(&device), &vec![0.0; 8]).unwrap();
//! assert!(flatten(&zeros).iter().all(|&v| v == 0.0));
//! assert!(load_flat(zeros, &[0.0; 7]).is_err());
//! ```

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};

use crate::error::ClientError;
use crate::model::{GlobalModel, NamedTensor};

/// Collects every float parameter with its dotted path.
#[derive(Default)]
struct Collect {
    path: Vec<String>,
    tensors: Vec<NamedTensor>,
    /// Only count, do not copy values.
    shapes_only: bool,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let (shape, values) = if self.shapes_only {
            (param.lazy_shape().to_vec(), Vec::new())
        } else {
            let data = param.val().into_data().convert::<f32>();
            let values = data.as_slice::<f32>().expect("converted to f32").to_vec();
            (data.shape().to_vec(), values)
        };
        self.tensors.push(NamedTensor {
            name: self.path.join("."),
            shape,
            values,
        });
    }
}

fn collect<M: Module>(module: &M, shapes_only: bool) -> Vec<NamedTensor> {
    let mut visitor = Collect {
        shapes_only,
        ..Collect::default()
    };
    module.visit(&mut visitor);
    visitor.tensors
}

/// Every float parameter of `module`, named by its field path, in the
/// order of [`flatten`].
pub fn tensors<M: Module>(module: &M) -> Vec<NamedTensor> {
    collect(module, false)
}

/// The number of float parameters: the length of [`flatten`]'s vector.
pub fn dim<M: Module>(module: &M) -> usize {
    collect(module, true)
        .iter()
        .map(|t| t.shape.iter().product::<usize>())
        .sum()
}

/// All float parameters of `module` in one vector (see the module docs for
/// the order).
pub fn flatten<M: Module>(module: &M) -> Vec<f32> {
    tensors(module).into_iter().flat_map(|t| t.values).collect()
}

/// Replaces each float parameter from consecutive values of a slice.
struct Fill<'a> {
    values: &'a [f32],
    offset: usize,
}

impl ModuleMapper for Fill<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let shape = param.lazy_shape();
        let n = shape.num_elements();
        let chunk = self.values[self.offset..self.offset + n].to_vec();
        self.offset += n;
        let device = param.lazy_device();
        let tensor = Tensor::<D>::from_data(TensorData::new(chunk, shape), &device);
        let id = param.id;
        // Keeps the parameter's id (an optimizer's state key), device and
        // gradient setting.
        param.transform_for_load(tensor, id)
    }
}

/// Writes `values` into `module`'s float parameters, in [`flatten`]'s
/// order. A vector of the wrong length is refused before anything is
/// written.
pub fn load_flat<M: Module>(module: M, values: &[f32]) -> Result<M, ClientError> {
    let expected = dim(&module);
    if values.len() != expected {
        return Err(ClientError::ModelMismatch {
            problem: format!(
                "the module has {expected} parameters, the vector {}",
                values.len()
            ),
        });
    }
    Ok(module.map(&mut Fill { values, offset: 0 }))
}

impl GlobalModel {
    /// Writes this published model into `module`, after checking that its
    /// tensors have the module's names and shapes in the module's order.
    pub fn load_into<M: Module>(&self, module: M) -> Result<M, ClientError> {
        let ours = collect(&module, true);
        if ours.len() != self.tensors.len() {
            return Err(ClientError::ModelMismatch {
                problem: format!(
                    "the module has {} parameter tensors, model version {} has {}",
                    ours.len(),
                    self.version,
                    self.tensors.len()
                ),
            });
        }
        for (mine, theirs) in ours.iter().zip(&self.tensors) {
            if mine.name != theirs.name || mine.shape != theirs.shape {
                return Err(ClientError::ModelMismatch {
                    problem: format!(
                        "the module's tensor {} {:?} meets {} {:?} in model version {}",
                        mine.name, mine.shape, theirs.name, theirs.shape, self.version
                    ),
                });
            }
        }
        load_flat(module, &self.flatten())
    }
}
