//! The global model the server trains and publishes.
//!
//! The server never needs to know what the parameters mean: a model is a
//! list of named tensor shapes laid end to end in one `f32` vector, which is
//! exactly what clients send updates for. The store writes each version as
//! safetensors; FedAvg turns a round's average update into the next version.
//!
//! # The flat-vector order
//!
//! The flat vector is **the tensors in name order** (names compared byte by
//! byte, ascending: `Ord` on `str`), **each row-major** (C order, the last
//! index fastest). [`Model::new`] puts any tensors given in another order
//! into that one, so the order never depends on how a file, a framework or
//! a client happened to list them: a PyTorch `state_dict`, a safetensors
//! file and a burn module with the same names agree on it. Clients flatten
//! their updates the same way (`tessera_client::GlobalModel::flatten`).

use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
    /// The tensors are not in name order (a model built by hand: use
    /// [`Model::new`], which orders them).
    #[error(
        "tensor {after:?} comes after {before:?}: the flat vector must list tensors in name order"
    )]
    Order {
        /// The earlier tensor.
        before: String,
        /// The tensor listed after it, whose name sorts first.
        after: String,
    },
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

/// The global model: named tensors laid end to end in `params`, in name
/// order (see the module docs).
///
/// `Debug` prints the tensor list and the dimension, not a million values.
#[derive(Clone, PartialEq)]
pub struct Model {
    /// The tensors, in name order: the order their values appear in
    /// `params`.
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
    /// The model of `tensors` whose values lie end to end in `params` in
    /// the order given, put into name order (each tensor's values move
    /// with it). Checks that the shapes cover `params` exactly, names are
    /// unique and non-empty, and every value is finite.
    ///
    /// ```
    /// use tessera_server::model::{Model, TensorSpec};
    ///
    /// let spec = |name: &str, n| TensorSpec { name: name.into(), shape: vec![n] };
    /// let m = Model::new(vec![spec("w", 2), spec("b", 1)], vec![1.0, 2.0, 3.0]).unwrap();
    /// assert_eq!(m.tensors, [spec("b", 1), spec("w", 2)]);
    /// assert_eq!(m.params, [3.0, 1.0, 2.0]);
    /// // Two tensors of one name are refused.
    /// assert!(Model::new(vec![spec("w", 2), spec("w", 1)], vec![0.0; 3]).is_err());
    /// ```
    pub fn new(tensors: Vec<TensorSpec>, params: Vec<f32>) -> Result<Model, ModelError> {
        let model = Model { tensors, params };
        model.validate_unordered()?;
        let (tensors, params) = in_name_order(&model.tensors, &model.params);
        Ok(Model { tensors, params })
    }

    /// The checks of [`Model::new`], and that the tensors are in name
    /// order, for a model whose public fields were built or changed by
    /// hand: the store runs them before it writes, so it never publishes a
    /// model it would refuse to read back or one in another order.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.validate_unordered()?;
        match self.tensors.windows(2).find(|w| w[0].name >= w[1].name) {
            Some(w) => Err(ModelError::Order {
                before: w[0].name.clone(),
                after: w[1].name.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Every check but the order's.
    fn validate_unordered(&self) -> Result<(), ModelError> {
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

    /// The model in a safetensors file: every tensor must be float32
    /// (another dtype is refused, naming the tensor); names and shapes are
    /// kept, the values put into name order ([`Model::new`]). This is how
    /// `tessera serve --initial-model` reads the model to start from.
    pub fn from_safetensors_file(path: &Path) -> Result<Model, ModelFileError> {
        let bytes = std::fs::read(path).map_err(|source| ModelFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Model::from_safetensors(path, &bytes)
    }

    /// [`Model::from_safetensors_file`] on the file's `bytes`; `path` only
    /// names it in errors.
    pub fn from_safetensors(path: &Path, bytes: &[u8]) -> Result<Model, ModelFileError> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| ModelFileError::Format {
            path: path.to_owned(),
            what: e.to_string(),
        })?;
        let mut tensors = Vec::new();
        let mut params = Vec::new();
        // Sorted here so a refusal names the same tensor whatever the
        // file's order.
        let mut listed = file.tensors();
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, view) in listed {
            if view.dtype() != Dtype::F32 {
                return Err(ModelFileError::Dtype {
                    path: path.to_owned(),
                    name,
                    dtype: format!("{:?}", view.dtype()),
                });
            }
            params.extend(
                view.data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
            );
            tensors.push(TensorSpec {
                name,
                shape: view.shape().to_vec(),
            });
        }
        let model = Model::new(tensors, params).map_err(|source| ModelFileError::Invalid {
            path: path.to_owned(),
            source,
        })?;
        if model.dim() == 0 {
            return Err(ModelFileError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(model)
    }

    /// SHA-256 of the model's content: each tensor's name, shape and
    /// values, in name order. Two files that hold the same tensors have the
    /// same digest whatever their metadata, header layout or tensor order,
    /// which is what "the same initial model" means for a data directory.
    pub fn content_sha256(&self) -> String {
        let mut h = Sha256::new();
        let mut offset = 0;
        for t in &self.tensors {
            h.update((t.name.len() as u64).to_le_bytes());
            h.update(t.name.as_bytes());
            h.update((t.shape.len() as u64).to_le_bytes());
            for &d in &t.shape {
                h.update((d as u64).to_le_bytes());
            }
            for v in &self.params[offset..offset + t.len()] {
                h.update(v.to_le_bytes());
            }
            offset += t.len();
        }
        hex::encode(h.finalize())
    }
}

/// `tensors` and their `values` (laid end to end in that order), put into
/// name order; `values` may be any vector of the tensors' layout (a model,
/// a momentum buffer). The tensors' names must be unique and their lengths
/// cover `values`.
pub(crate) fn in_name_order(tensors: &[TensorSpec], values: &[f32]) -> (Vec<TensorSpec>, Vec<f32>) {
    let mut offset = 0;
    let mut slices: Vec<(&TensorSpec, &[f32])> = tensors
        .iter()
        .map(|t| {
            let slice = &values[offset..offset + t.len()];
            offset += t.len();
            (t, slice)
        })
        .collect();
    slices.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let ordered = slices.iter().map(|(t, _)| (*t).clone()).collect();
    let values = slices.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    (ordered, values)
}

/// True if `tensors` are in name order, the flat order this build uses.
pub(crate) fn is_name_ordered(tensors: &[TensorSpec]) -> bool {
    tensors.windows(2).all(|w| w[0].name < w[1].name)
}

/// A model file the server cannot start from; each names the file and what
/// to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelFileError {
    /// The file cannot be read.
    #[error("reading the model file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not safetensors.
    #[error(
        "{path} is not a safetensors file ({what}); save the model with safetensors (e.g. safetensors.torch.save_file or safetensors.numpy.save_file)"
    )]
    Format {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        what: String,
    },
    /// A tensor of another dtype than float32.
    #[error(
        "{path}: tensor {name:?} is {dtype}, but the server trains float32 tensors only: convert it to float32 (tensor.float() in PyTorch, .astype(numpy.float32) in NumPy) or leave it out of the file"
    )]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its dtype, as safetensors names it (`F64`, `I64`, ...).
        dtype: String,
    },
    /// The tensors do not make a model (a value not finite, a bad name).
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: ModelError,
    },
    /// The file holds no parameters.
    #[error("{path} holds no float32 parameters: a model needs at least one value")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use safetensors::tensor::TensorView;

    use super::*;

    /// A safetensors file of `tensors` (name, dtype, shape, little-endian
    /// bytes).
    fn file(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<(&str, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    fn f32s(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn a_file_of_float32_tensors_is_a_model_in_name_order() {
        let bytes = file(&[
            ("fc2.bias", Dtype::F32, vec![2], f32s(&[5.0, 6.0])),
            ("fc1.weight", Dtype::F32, vec![2, 1], f32s(&[1.0, 2.0])),
            ("fc1.bias", Dtype::F32, vec![], f32s(&[3.0])),
        ]);
        let m = Model::from_safetensors(Path::new("m.safetensors"), &bytes).unwrap();
        let names: Vec<&str> = m.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["fc1.bias", "fc1.weight", "fc2.bias"]);
        assert_eq!(m.tensors[1].shape, [2, 1]);
        assert_eq!(m.params, [3.0, 1.0, 2.0, 5.0, 6.0]);
    }

    #[test]
    fn other_dtypes_and_other_files_are_refused_naming_what_is_wrong() {
        let bytes = file(&[
            ("a", Dtype::F32, vec![1], f32s(&[1.0])),
            ("scale", Dtype::F64, vec![1], 1.0f64.to_le_bytes().to_vec()),
        ]);
        let e = Model::from_safetensors(Path::new("dir/m.safetensors"), &bytes)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dir/m.safetensors") && e.contains("\"scale\" is F64"),
            "{e}"
        );
        let e = Model::from_safetensors(Path::new("m.npy"), b"not safetensors")
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.npy is not a safetensors file"), "{e}");
        let nan = file(&[("w", Dtype::F32, vec![1], f32s(&[f32::NAN]))]);
        let e = Model::from_safetensors(Path::new("m"), &nan).unwrap_err();
        assert!(e.to_string().contains("not finite"), "{e}");
        let empty = file(&[("w", Dtype::F32, vec![0], vec![])]);
        let e = Model::from_safetensors(Path::new("m"), &empty).unwrap_err();
        assert!(matches!(e, ModelFileError::Empty { .. }), "{e}");
    }

    /// A hostile initial model: an 8-byte length and a JSON header as the
    /// attacker writes them, then `data` bytes.
    fn raw(header: &str, data: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data));
        bytes
    }

    /// Shapes that declare more values than the file holds (an allocation
    /// bomb), whose product overflows, a header length past the file, a
    /// repeated name and a tensor that overlaps another are refused as not
    /// safetensors, before anything the size of a declared shape is
    /// allocated; none panics.
    #[test]
    fn lying_headers_are_refused_without_allocating_what_they_declare() {
        let huge = 1u64 << 40;
        let cases = [
            // 2^40 values declared, 4 bytes present.
            raw(
                &format!(r#"{{"w":{{"dtype":"F32","shape":[{huge}],"data_offsets":[0,4]}}}}"#),
                4,
            ),
            raw(
                &format!(
                    r#"{{"w":{{"dtype":"F32","shape":[{huge}],"data_offsets":[0,{}]}}}}"#,
                    huge * 4
                ),
                4,
            ),
            // The shape's product overflows usize.
            raw(
                r#"{"w":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,4]}}"#,
                4,
            ),
            // Two tensors of one name.
            raw(
                r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
            ),
            // Two names over the same bytes.
            raw(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                4,
            ),
        ];
        for bytes in &cases {
            let e = Model::from_safetensors(Path::new("m"), bytes).unwrap_err();
            assert!(matches!(e, ModelFileError::Format { .. }), "{e}");
        }
        let mut past_the_end = u64::MAX.to_le_bytes().to_vec();
        past_the_end.extend_from_slice(b"{}");
        let e = Model::from_safetensors(Path::new("m"), &past_the_end).unwrap_err();
        assert!(matches!(e, ModelFileError::Format { .. }), "{e}");
    }

    #[test]
    fn the_content_digest_ignores_the_files_order_and_sees_every_value() {
        let a = file(&[
            ("x", Dtype::F32, vec![1], f32s(&[1.0])),
            ("y", Dtype::F32, vec![2], f32s(&[2.0, 3.0])),
        ]);
        let meta = HashMap::from([("format".to_owned(), "pt".to_owned())]);
        let (y, x) = (f32s(&[2.0, 3.0]), f32s(&[1.0]));
        let views = vec![
            ("y", TensorView::new(Dtype::F32, vec![2], &y).unwrap()),
            ("x", TensorView::new(Dtype::F32, vec![1], &x).unwrap()),
        ];
        let b = safetensors::serialize(views, Some(meta)).unwrap();
        assert_ne!(a, b);
        let digest = |bytes: &[u8]| {
            Model::from_safetensors(Path::new("m"), bytes)
                .unwrap()
                .content_sha256()
        };
        assert_eq!(digest(&a), digest(&b));
        let c = file(&[
            ("x", Dtype::F32, vec![1], f32s(&[1.0])),
            ("y", Dtype::F32, vec![2], f32s(&[2.0, 3.5])),
        ]);
        assert_ne!(digest(&a), digest(&c));
        let d = file(&[
            ("x", Dtype::F32, vec![1], f32s(&[1.0])),
            ("y", Dtype::F32, vec![2, 1], f32s(&[2.0, 3.0])),
        ]);
        assert_ne!(digest(&a), digest(&d), "shapes count");
    }

    proptest! {
        /// Whatever order the tensors come in, the model lists them in
        /// name order (byte-wise ascending), and each tensor keeps its own
        /// values, row-major as given.
        #[test]
        fn any_order_becomes_name_order_with_values_following_names(
            named in proptest::collection::btree_map(
                "[a-zA-Z0-9._]{1,6}",
                proptest::collection::vec(1usize..4, 0..3),
                1..6,
            ),
            seed in any::<u64>(),
        ) {
            // Each tensor's values identify it: tensor i holds i*1000 + j.
            let mut given: Vec<(String, Vec<usize>)> = named.into_iter().collect();
            let n = given.len();
            for i in 0..n {
                let j = (seed as usize).wrapping_add(i * 7919) % n;
                given.swap(i, j);
            }
            let values_of = |i: usize, shape: &[usize]| -> Vec<f32> {
                (0..shape.iter().product::<usize>()).map(|j| (i * 1000 + j) as f32).collect()
            };
            let tensors: Vec<TensorSpec> = given
                .iter()
                .map(|(name, shape)| TensorSpec { name: name.clone(), shape: shape.clone() })
                .collect();
            let params: Vec<f32> = given.iter().enumerate().flat_map(|(i, (_, s))| values_of(i, s)).collect();
            let m = Model::new(tensors.clone(), params.clone()).unwrap();
            prop_assert!(m.validate().is_ok());
            // Through a safetensors file (any header order) to the same model.
            let bytes: Vec<Vec<u8>> = given
                .iter()
                .enumerate()
                .map(|(i, (_, s))| f32s(&values_of(i, s)))
                .collect();
            let views: Vec<(&str, TensorView<'_>)> = tensors
                .iter()
                .zip(&bytes)
                .map(|(t, b)| (t.name.as_str(), TensorView::new(Dtype::F32, t.shape.clone(), b).unwrap()))
                .collect();
            let file = safetensors::serialize(views, None).unwrap();
            prop_assert_eq!(&Model::from_safetensors(Path::new("m"), &file).unwrap(), &m);
            let names: Vec<&str> = m.tensors.iter().map(|t| t.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            prop_assert_eq!(&names, &sorted);
            let mut offset = 0;
            for t in &m.tensors {
                let i = given.iter().position(|(n, _)| *n == t.name).unwrap();
                prop_assert_eq!(&t.shape, &given[i].1);
                prop_assert_eq!(&m.params[offset..offset + t.len()], &values_of(i, &t.shape)[..]);
                offset += t.len();
            }
        }
    }

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
        let mut unordered = Model::new(two(), vec![1.0, 2.0, 3.0]).unwrap();
        unordered.tensors.reverse();
        assert_eq!(
            unordered.validate(),
            Err(ModelError::Order {
                before: "b".into(),
                after: "a".into()
            })
        );
        assert_eq!(Model::zeros_flat(5).dim(), 5);
        assert!(!format!("{:?}", Model::zeros_flat(5)).contains("0.0"));
    }
}
