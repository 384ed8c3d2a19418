//! Models and updates as named `ndarray` arrays (feature `ndarray`).
//!
//! Secure aggregation sums one flat `f32` vector; an app keeps its
//! parameters as named arrays (`fc1.weight` of shape `[64, 784]`, ...). This
//! module converts between the two by **name**: an update's arrays are
//! matched to the published model's tensors by name and checked for shape,
//! then laid out in the model's flat order ([`GlobalModel::flatten`]'s), so
//! an app never depends on that order and cannot send one tensor's values
//! in another's place. A missing, unknown or repeated name, or a wrong
//! shape, is refused with [`ClientError::ModelMismatch`] naming the tensor.
//!
//! ```
//! use tessera_client::ndarray::{ArrayD, IxDyn};
//! use tessera_client::{ClientError, GlobalModel, NamedTensor};
//!
//! let model = GlobalModel {
//!     version: 3,
//!     round: 2,
//!     epsilon: 0.0,
//!     delta: 0.0,
//!     epsilon_against: None,
//!     proximal_mu: 0.0,
//!     tensors: vec![
//!         NamedTensor { name: "fc.bias".into(), shape: vec![2], values: vec![0.5, 0.5] },
//!         NamedTensor { name: "fc.weight".into(), shape: vec![2, 3], values: vec![0.0; 6] },
//!     ],
//! };
//! // Read the model as arrays, by name.
//! let arrays = model.to_arrays().unwrap();
//! assert_eq!(arrays["fc.weight"].shape(), [2, 3]);
//!
//! // An update, in any order: laid out as the model's tensors.
//! let weight = ArrayD::from_elem(IxDyn(&[2, 3]), 1.0f32);
//! let bias = ArrayD::from_elem(IxDyn(&[2]), -1.0f32);
//! let flat = model.flatten_named([("fc.weight", weight.view()), ("fc.bias", bias.view())]).unwrap();
//! assert_eq!(flat, [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
//!
//! // A wrong shape names the tensor and both shapes.
//! let err = model.flatten_named([("fc.weight", bias.view()), ("fc.bias", bias.view())]).unwrap_err();
//! assert!(err.to_string().contains("'fc.weight' has shape [2], the model's is [2, 3]"), "{err}");
//! ```

use std::collections::{BTreeMap, HashMap};

pub use ndarray::{ArrayD, ArrayViewD, IxDyn};

use crate::error::ClientError;
use crate::model::GlobalModel;

fn mismatch(problem: String) -> ClientError {
    ClientError::ModelMismatch { problem }
}

impl GlobalModel {
    /// The model as named arrays of its tensors' shapes (a copy of the
    /// values). Fails only for a model built by hand whose shapes do not
    /// match its values (one downloaded from a server was checked).
    pub fn to_arrays(&self) -> Result<BTreeMap<String, ArrayD<f32>>, ClientError> {
        self.tensors
            .iter()
            .map(|t| {
                let array =
                    ArrayD::from_shape_vec(IxDyn(&t.shape), t.values.clone()).map_err(|e| {
                        mismatch(format!(
                            "tensor '{}' has shape {:?} but {} values: {e}",
                            t.name,
                            t.shape,
                            t.values.len()
                        ))
                    })?;
                Ok((t.name.clone(), array))
            })
            .collect()
    }

    /// Lays out an update given as named arrays in this model's flat order,
    /// the vector [`Client::participate`](crate::Client::participate)
    /// takes: each array is matched to the model's tensor of the same name
    /// and must have its shape; every tensor needs exactly one array. The
    /// arrays may come in any order and any memory layout (they are read
    /// in logical row-major order).
    pub fn flatten_named<'a, K: AsRef<str>>(
        &self,
        update: impl IntoIterator<Item = (K, ArrayViewD<'a, f32>)>,
    ) -> Result<Vec<f32>, ClientError> {
        let mut given: HashMap<String, ArrayViewD<'a, f32>> = HashMap::new();
        for (name, array) in update {
            let name = name.as_ref();
            if given.insert(name.to_owned(), array).is_some() {
                return Err(mismatch(format!("the update gives tensor '{name}' twice")));
            }
        }
        let mut flat = Vec::with_capacity(self.dim());
        for tensor in &self.tensors {
            let array = given.remove(&tensor.name).ok_or_else(|| {
                mismatch(format!(
                    "the update has no tensor '{}' (shape {:?}); the model's tensors are {}",
                    tensor.name,
                    tensor.shape,
                    self.names()
                ))
            })?;
            if array.shape() != tensor.shape.as_slice() {
                return Err(mismatch(format!(
                    "the update's tensor '{}' has shape {:?}, the model's is {:?}",
                    tensor.name,
                    array.shape(),
                    tensor.shape
                )));
            }
            match array.as_slice() {
                Some(values) => flat.extend_from_slice(values),
                None => flat.extend(array.iter().copied()),
            }
        }
        if !given.is_empty() {
            let mut extra: Vec<&String> = given.keys().collect();
            extra.sort();
            return Err(mismatch(format!(
                "the update has tensor(s) {extra:?} the model does not; the model's tensors are {}",
                self.names()
            )));
        }
        Ok(flat)
    }

    /// The tensors' names, for error messages.
    fn names(&self) -> String {
        let names: Vec<&str> = self.tensors.iter().map(|t| t.name.as_str()).collect();
        format!("{names:?}")
    }
}

#[cfg(test)]
mod tests {
    use ndarray::ShapeBuilder;

    use super::*;
    use crate::model::NamedTensor;

    fn model() -> GlobalModel {
        GlobalModel {
            version: 1,
            round: 0,
            epsilon: 0.0,
            delta: 0.0,
            epsilon_against: None,
            proximal_mu: 0.0,
            tensors: vec![
                NamedTensor {
                    name: "b".into(),
                    shape: vec![2],
                    values: vec![1.0, 2.0],
                },
                NamedTensor {
                    name: "w".into(),
                    shape: vec![2, 2],
                    values: vec![3.0, 4.0, 5.0, 6.0],
                },
                NamedTensor {
                    name: "s".into(),
                    shape: vec![],
                    values: vec![7.0],
                },
            ],
        }
    }

    fn arr(shape: &[usize], values: &[f32]) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(shape), values.to_vec()).unwrap()
    }

    #[test]
    fn arrays_round_trip_through_the_flat_order_by_name() {
        let model = model();
        let arrays = model.to_arrays().unwrap();
        assert_eq!(arrays["w"], arr(&[2, 2], &[3.0, 4.0, 5.0, 6.0]));
        assert_eq!(arrays["s"].shape(), [] as [usize; 0]);
        // Given in the map's (name) order, laid out in the model's.
        let flat = model
            .flatten_named(arrays.iter().map(|(k, v)| (k, v.view())))
            .unwrap();
        assert_eq!(flat, model.flatten());
    }

    #[test]
    fn a_transposed_view_is_read_in_logical_order() {
        let model = model();
        // Column-major memory holding the logical rows [3, 4], [5, 6].
        let w = ArrayD::from_shape_vec(IxDyn(&[2, 2]).f(), vec![3.0, 5.0, 4.0, 6.0]).unwrap();
        let flat = model
            .flatten_named([
                ("w", w.view()),
                ("b", arr(&[2], &[1.0, 2.0]).view()),
                ("s", arr(&[], &[7.0]).view()),
            ])
            .unwrap();
        assert_eq!(flat, model.flatten());
    }

    #[test]
    fn missing_extra_repeated_and_misshapen_tensors_are_named() {
        let model = model();
        let b = arr(&[2], &[0.0; 2]);
        let w = arr(&[2, 2], &[0.0; 4]);
        let s = arr(&[], &[0.0]);
        let flat_w = arr(&[4], &[0.0; 4]);
        /// An update and the text its refusal must contain.
        type Case<'a> = (Vec<(&'a str, ArrayViewD<'a, f32>)>, &'a str);
        let cases: Vec<Case> = vec![
            (
                vec![("b", b.view()), ("w", w.view())],
                "the update has no tensor 's' (shape [])",
            ),
            (
                vec![
                    ("b", b.view()),
                    ("w", w.view()),
                    ("s", s.view()),
                    ("fc9.bias", b.view()),
                ],
                "tensor(s) [\"fc9.bias\"] the model does not",
            ),
            (
                vec![("b", b.view()), ("b", b.view()), ("w", w.view())],
                "gives tensor 'b' twice",
            ),
            (
                vec![("b", w.view()), ("w", w.view()), ("s", s.view())],
                "'b' has shape [2, 2], the model's is [2]",
            ),
            (
                // The same number of values in another shape is refused
                // too: it would be another tensor's layout.
                vec![("b", b.view()), ("w", flat_w.view()), ("s", s.view())],
                "'w' has shape [4], the model's is [2, 2]",
            ),
        ];
        for (update, needle) in cases {
            let err = model.flatten_named(update).unwrap_err();
            assert!(matches!(err, ClientError::ModelMismatch { .. }), "{err:?}");
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn a_hand_built_model_whose_shape_lies_is_refused() {
        let mut model = model();
        model.tensors[1].shape = vec![3, 2];
        let err = model.to_arrays().unwrap_err();
        assert!(err.to_string().contains("tensor 'w'"), "{err}");
    }
}
