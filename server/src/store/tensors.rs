//! Models and momentum as safetensors files: F32 tensors plus string
//! metadata. A file holds tensors by name, so the caller gives the order
//! of the flat vector (the manifest entry's tensor list: name order, or an
//! earlier build's order for its versions) in both directions.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::{StoreError, corrupt};
use crate::model::TensorSpec;

/// Serialises `params` as F32 tensors, one per spec, plus `metadata`;
/// `path` only names the file in an error.
pub(super) fn encode(
    path: &Path,
    tensors: &[TensorSpec],
    params: &[f32],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, StoreError> {
    let mut offset = 0;
    let buffers: Vec<(&TensorSpec, Vec<u8>)> = tensors
        .iter()
        .map(|t| {
            let values = &params[offset..offset + t.len()];
            offset += t.len();
            (t, values.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect();
    let views = buffers
        .iter()
        .map(|(t, bytes)| {
            TensorView::new(Dtype::F32, t.shape.clone(), bytes).map(|v| (t.name.as_str(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(path, e.to_string()))?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| corrupt(path, e.to_string()))
}

/// Parses a safetensors file holding exactly the F32 tensors of `order`
/// and returns their values in that order, with the file's metadata.
pub(super) fn decode(
    path: &Path,
    bytes: &[u8],
    order: &[TensorSpec],
) -> Result<(Vec<f32>, HashMap<String, String>), StoreError> {
    let (header, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| corrupt(path, e.to_string()))?;
    let data = &bytes[8 + header..];
    let count = meta.offset_keys().len();
    if count != order.len() {
        return Err(corrupt(
            path,
            format!("{count} tensors, expected {}", order.len()),
        ));
    }
    let mut params = Vec::with_capacity(order.iter().map(TensorSpec::len).sum());
    for spec in order {
        let info = meta
            .info(&spec.name)
            .ok_or_else(|| corrupt(path, format!("no tensor {:?}", spec.name)))?;
        let values = data.get(info.data_offsets.0..info.data_offsets.1);
        match values {
            Some(values) if info.dtype == Dtype::F32 && info.shape == spec.shape => params.extend(
                values
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
            ),
            _ => {
                return Err(corrupt(
                    path,
                    format!(
                        "tensor {:?} is {:?} {:?}, expected F32 {:?}",
                        spec.name, info.dtype, info.shape, spec.shape
                    ),
                ));
            }
        }
    }
    Ok((params, meta.metadata().clone().unwrap_or_default()))
}

/// The momentum file's one tensor.
pub(super) fn velocity_spec(dim: usize) -> [TensorSpec; 1] {
    [TensorSpec {
        name: "velocity".into(),
        shape: vec![dim],
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(shapes: &[(&str, usize)]) -> Vec<TensorSpec> {
        shapes
            .iter()
            .map(|&(name, len)| TensorSpec {
                name: name.into(),
                shape: vec![len],
            })
            .collect()
    }

    #[test]
    fn values_come_back_in_the_callers_order_with_the_metadata() {
        let order = specs(&[("z", 2), ("a", 1)]);
        let meta = HashMap::from([("version".to_owned(), "3".to_owned())]);
        let bytes = encode(Path::new("m"), &order, &[1.0, 2.0, 3.0], meta.clone()).unwrap();
        let (params, got) = decode(Path::new("m"), &bytes, &order).unwrap();
        assert_eq!((params, got), (vec![1.0, 2.0, 3.0], meta));
    }

    #[test]
    fn other_tensors_or_shapes_are_corruption_naming_the_file() {
        let order = specs(&[("z", 2), ("a", 1)]);
        let bytes = encode(Path::new("m"), &order, &[1.0, 2.0, 3.0], HashMap::new()).unwrap();
        let wrong = [
            (specs(&[("z", 2)]), "2 tensors, expected 1"),
            (specs(&[("z", 2), ("b", 1)]), "no tensor \"b\""),
            (
                specs(&[("z", 1), ("a", 2)]),
                "tensor \"z\" is F32 [2], expected F32 [1]",
            ),
        ];
        for (order, what) in wrong {
            let e = decode(Path::new("dir/m.safetensors"), &bytes, &order).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("dir/m.safetensors is corrupt: {what}")
            );
        }
    }
}
