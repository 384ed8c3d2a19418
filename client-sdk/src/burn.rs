//! burn modules as flat parameter vectors (feature `burn`).
//!
//! Secure aggregation sums flat `f32` vectors; a burn [`Module`] holds its
//! parameters as named tensors. A client trains a module from the global
//! model, then sends `flatten(local) - flatten(global)` through
//! [`Client::participate`](crate::Client::participate); the server averages
//! the vectors and publishes the next global model, which
//! [`GlobalModel::load_into`] writes back into a module.
//!
//! The vector is laid out as every Tessera model is: **the tensors in name
//! order** (byte-wise ascending), **each row-major**, so it matches the
//! server's flat vector ([`GlobalModel::flatten`]) whatever order the
//! module declares its fields in. Names and layouts are **PyTorch's**, so a
//! model trained here loads into the equivalent `torch.nn` module with
//! `load_state_dict`, and one trained there loads here:
//!
//! | burn                                  | exported as (PyTorch)                |
//! |---------------------------------------|--------------------------------------|
//! | field path `fc1.weight`               | `fc1.weight` (dotted field path)     |
//! | enum variant (`Net::Mlp(..)`)         | left out of the name (`fc1.weight`, not `Mlp.fc1.weight`) |
//! | `Linear` weight `[in, out]`           | `weight` `[out, in]` (transposed)    |
//! | `Linear` bias `[out]`                 | `bias` `[out]`                       |
//! | `Conv1d`/`Conv2d` weight `[out, in/groups, k..]`, bias | the same, unchanged |
//!
//! Every float parameter is sent (integer and boolean buffers, such as a
//! batch norm's counters, are not trained and not sent). Loading checks
//! the names and shapes ([`GlobalModel::load_into`]), so a model published
//! for another architecture is refused rather than loaded into the wrong
//! weights.
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
//! // Name order, and PyTorch's [out, in] weight layout.
//! let exported = tensors(&layer);
//! let names: Vec<&str> = exported.iter().map(|t| t.name.as_str()).collect();
//! assert_eq!(names, ["bias", "weight"]);
//! assert_eq!(exported[1].shape, [2, 3]);
//!
//! // Loading writes the values back bit for bit; a wrong length is refused.
//! let zeros = load_flat(LinearConfig::new(3, 2).init(&device), &vec![0.0; 8]).unwrap();
//! assert!(flatten(&zeros).iter().all(|&v| v == 0.0));
//! assert!(load_flat(zeros, &[0.0; 7]).is_err());
//! ```

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};

use crate::error::ClientError;
use crate::model::{GlobalModel, NamedTensor};

/// Where a visitor or mapper is in the module tree: the field names
/// entered and the type of the module holding each.
#[derive(Default)]
struct Path(Vec<(String, String)>);

impl Path {
    fn enter(&mut self, name: &str, container_type: &str) {
        self.0.push((name.to_owned(), container_type.to_owned()));
    }

    fn exit(&mut self) {
        self.0.pop();
    }

    /// The parameter's exported name: the dotted field path, without enum
    /// variants (PyTorch modules have none).
    fn name(&self) -> String {
        let fields: Vec<&str> = self
            .0
            .iter()
            .filter(|(_, container)| !container.starts_with("Enum:"))
            .map(|(name, _)| name.as_str())
            .collect();
        fields.join(".")
    }

    /// True for a `Linear` layer's weight, which burn stores `[in, out]`
    /// and PyTorch `[out, in]`.
    fn is_linear_weight(&self) -> bool {
        self.0
            .last()
            .is_some_and(|(name, container)| name == "weight" && container == "Struct:Linear")
    }
}

/// A row-major `[rows, cols]` matrix's values, transposed.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// Collects every float parameter, named and laid out as exported.
#[derive(Default)]
struct Collect {
    path: Path,
    tensors: Vec<NamedTensor>,
    /// Only count, do not copy values.
    shapes_only: bool,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let (mut shape, mut values) = if self.shapes_only {
            (param.lazy_shape().to_vec(), Vec::new())
        } else {
            let data = param.val().into_data().convert::<f32>();
            let values = data.as_slice::<f32>().expect("converted to f32").to_vec();
            (data.shape().to_vec(), values)
        };
        if self.path.is_linear_weight() && shape.len() == 2 {
            if !self.shapes_only {
                values = transpose(&values, shape[0], shape[1]);
            }
            shape.reverse();
        }
        self.tensors.push(NamedTensor {
            name: self.path.name(),
            shape,
            values,
        });
    }
}

/// The exported tensors, in name order.
fn collect<M: Module>(module: &M, shapes_only: bool) -> Vec<NamedTensor> {
    let mut visitor = Collect {
        shapes_only,
        ..Collect::default()
    };
    module.visit(&mut visitor);
    let mut tensors = visitor.tensors;
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    tensors
}

/// Every float parameter of `module`, named and laid out as PyTorch has
/// them, in name order: the order of [`flatten`].
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

/// All float parameters of `module` in one vector: [`tensors`] end to end
/// (see the module docs for the order and layouts).
pub fn flatten<M: Module>(module: &M) -> Vec<f32> {
    tensors(module).into_iter().flat_map(|t| t.values).collect()
}

/// Replaces each float parameter with its values from a flat vector,
/// found by its exported name.
struct Fill<'a> {
    path: Path,
    /// Each exported tensor's values in the vector.
    slices: HashMap<String, &'a [f32]>,
}

impl ModuleMapper for Fill<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let shape = param.lazy_shape();
        let values = self.slices[&self.path.name()];
        let chunk = if self.path.is_linear_weight() && D == 2 {
            // Exported [out, in]; burn holds [in, out].
            transpose(values, shape[1], shape[0])
        } else {
            values.to_vec()
        };
        let device = param.lazy_device();
        let tensor = Tensor::<D>::from_data(TensorData::new(chunk, shape), &device);
        let id = param.id;
        // Keeps the parameter's id (an optimizer's state key), device and
        // gradient setting.
        param.transform_for_load(tensor, id)
    }
}

/// Writes `values` into `module`'s float parameters, in [`flatten`]'s
/// order and layouts. A vector of the wrong length is refused before
/// anything is written.
pub fn load_flat<M: Module>(module: M, values: &[f32]) -> Result<M, ClientError> {
    let specs = collect(&module, true);
    let expected: usize = specs
        .iter()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    if values.len() != expected {
        return Err(ClientError::ModelMismatch {
            problem: format!(
                "the module has {expected} parameters, the vector {}",
                values.len()
            ),
        });
    }
    let mut slices = HashMap::new();
    let mut offset = 0;
    for t in &specs {
        let n: usize = t.shape.iter().product();
        slices.insert(t.name.clone(), &values[offset..offset + n]);
        offset += n;
    }
    Ok(module.map(&mut Fill {
        path: Path::default(),
        slices,
    }))
}

impl GlobalModel {
    /// Writes this published model into `module`, after checking that its
    /// tensors have the module's exported names and shapes ([`tensors`]),
    /// in name order.
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
