//! The adaptive server optimizer's state (FedAdam, FedYogi, FedAdagrad:
//! the moments `m` and `v`), published with each version beside the model,
//! as the FedAvgM velocity is: `models/optimizer-NNNNNN.safetensors`, two
//! F32 tensors `m` and `v` of the model's dimension in the flat vector's
//! order, metadata `{"version", "strategy"}`. The manifest entry records
//! the file's SHA-256 and the entry's MAC covers it, so an edited, swapped
//! or removed state file is refused at open; a restarted server continues
//! with the very `m` and `v` the last publication wrote.

use std::collections::HashMap;
use std::path::Path;

use super::models::read_verified;
use super::{MODELS, ModelEntry, StoreError, corrupt, tensors};
use crate::config::Strategy;
use crate::model::TensorSpec;

/// An adaptive optimizer's moments after a round.
#[derive(Clone, PartialEq)]
pub struct OptimizerState {
    /// The optimizer that wrote them: another one's moments mean something
    /// else (Adagrad's `v` is a sum, Adam's an average).
    pub strategy: Strategy,
    /// The first moment, one value per model parameter.
    pub m: Vec<f32>,
    /// The second moment, one value per model parameter.
    pub v: Vec<f32>,
}

impl std::fmt::Debug for OptimizerState {
    /// The strategy and the dimension, not a million values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OptimizerState")
            .field("strategy", &self.strategy)
            .field("dim", &self.m.len())
            .finish()
    }
}

impl OptimizerState {
    /// What the store refuses to publish: moments of another length than
    /// the model, or not finite, or a negative second moment.
    pub(super) fn fault(&self, dim: usize) -> Option<String> {
        if self.m.len() != dim || self.v.len() != dim {
            return Some(format!(
                "the optimizer state has {} and {} values, the model {dim}",
                self.m.len(),
                self.v.len()
            ));
        }
        if self.m.iter().chain(&self.v).any(|x| !x.is_finite()) {
            return Some("the optimizer state is not finite".into());
        }
        if self.v.iter().any(|&x| x < 0.0) {
            return Some("the optimizer's second moment is negative".into());
        }
        None
    }
}

/// The optimizer state file of a version, relative to the data directory.
pub(super) fn optimizer_file(version: u64) -> String {
    format!("{MODELS}/optimizer-{version:06}.safetensors")
}

/// The file's two tensors for a model of `dim` parameters.
fn spec(dim: usize) -> [TensorSpec; 2] {
    ["m", "v"].map(|name| TensorSpec {
        name: name.into(),
        shape: vec![dim],
    })
}

/// The bytes of `state`'s file for `version`; `path` names it in errors.
pub(super) fn encode(
    path: &Path,
    version: u64,
    state: &OptimizerState,
) -> Result<Vec<u8>, StoreError> {
    let metadata = HashMap::from([
        ("version".to_owned(), version.to_string()),
        ("strategy".to_owned(), state.strategy.name().to_owned()),
    ]);
    let values: Vec<f32> = state.m.iter().chain(&state.v).copied().collect();
    tensors::encode(path, &spec(state.m.len()), &values, metadata)
}

/// Reads and verifies the optimizer state published with `entry`, if any:
/// its SHA-256 against the manifest, its tensors against the model's
/// dimension, its metadata against the version, its values as
/// [`OptimizerState::fault`] wants them.
pub(super) fn read(dir: &Path, entry: &ModelEntry) -> Result<Option<OptimizerState>, StoreError> {
    let Some(state) = &entry.optimizer else {
        return Ok(None);
    };
    let path = dir.join(&state.file);
    let bytes = read_verified(&path, &state.sha256)?;
    decode(&path, &bytes, entry).map(Some)
}

/// The state in an optimizer file's `bytes`, which must be `entry`'s.
fn decode(path: &Path, bytes: &[u8], entry: &ModelEntry) -> Result<OptimizerState, StoreError> {
    let dim = entry.tensors.iter().map(TensorSpec::len).sum();
    let (values, meta) = tensors::decode(path, bytes, &spec(dim))?;
    let found = meta.get("version").map_or("none", String::as_str);
    if found != entry.version.to_string() {
        return Err(corrupt(
            path,
            format!(
                "it is the optimizer state of version {found}, listed for version {}",
                entry.version
            ),
        ));
    }
    let strategy = meta
        .get("strategy")
        .and_then(|s| s.parse::<Strategy>().ok())
        .filter(|s| s.is_adaptive())
        .ok_or_else(|| corrupt(path, "its metadata names no adaptive strategy"))?;
    let (m, v) = values.split_at(dim);
    let state = OptimizerState {
        strategy,
        m: m.to_vec(),
        v: v.to_vec(),
    };
    match state.fault(dim) {
        Some(what) => Err(corrupt(path, what)),
        None => Ok(state),
    }
}

/// `state` with each value following its tensor's name, for a latest
/// version listed in another order than name order.
pub(super) fn in_name_order(tensors: &[TensorSpec], state: OptimizerState) -> OptimizerState {
    OptimizerState {
        strategy: state.strategy,
        m: crate::model::in_name_order(tensors, &state.m).1,
        v: crate::model::in_name_order(tensors, &state.v).1,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use sha2::{Digest, Sha256};

    use super::super::test_support::{err, key, model, publication};
    use super::super::{Publication, Store};
    use super::*;
    use crate::config::AggregationSettings;
    use crate::model::Model;
    use crate::strategy::ServerOptimizer;

    fn state(dim: usize, base: f32) -> OptimizerState {
        OptimizerState {
            strategy: Strategy::FedYogi,
            m: (0..dim).map(|i| base - i as f32 / 7.0).collect(),
            v: (0..dim).map(|i| base + i as f32 / 3.0).collect(),
        }
    }

    fn with_state<'a>(m: &'a Model, round: u64, s: &'a OptimizerState) -> Publication<'a> {
        Publication {
            optimizer: Some(s),
            ..publication(m, round, None)
        }
    }

    /// A directory with the initial model and version 2 published with
    /// `s`; returns the store.
    fn published(dir: &Path, s: &OptimizerState) -> Store {
        let mut store = Store::open(dir, &key()).unwrap();
        store.init_model(&model(0.0)).unwrap();
        store.publish(&with_state(&model(1.0), 1, s)).unwrap();
        store
    }

    #[test]
    fn the_state_published_with_the_latest_version_comes_back_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let s = state(model(0.0).dim(), 1.0);
        let store = published(tmp.path(), &s);
        assert_eq!(store.optimizer_state(), Some(&s));
        let entry = store.models().last().unwrap().clone();
        assert_eq!(
            entry.optimizer.as_ref().unwrap().file,
            "models/optimizer-000002.safetensors"
        );
        drop(store);
        let mut store = Store::open(tmp.path(), &key()).unwrap();
        assert_eq!(store.optimizer_state(), Some(&s));
        // A version published without state has none, then or after open.
        store.publish(&publication(&model(2.0), 2, None)).unwrap();
        assert_eq!(store.optimizer_state(), None);
        drop(store);
        assert_eq!(
            Store::open(tmp.path(), &key()).unwrap().optimizer_state(),
            None
        );
    }

    /// A server that stops after each round and restarts from the store
    /// ends where one that never stopped does, model and moments bit for
    /// bit.
    #[test]
    fn a_restarted_server_continues_with_the_same_moments() {
        let settings = AggregationSettings {
            server_lr: 0.05,
            strategy: Some(Strategy::FedAdam),
            ..AggregationSettings::default()
        };
        let updates: Vec<Vec<f32>> = (0..3)
            .map(|r| {
                (0..12)
                    .map(|i| ((r * 12 + i) as f32 * 0.37).sin())
                    .collect()
            })
            .collect();
        let mut straight = ServerOptimizer::new(&settings).unwrap();
        let mut straight_model = model(0.0);
        for u in &updates {
            straight.apply(&mut straight_model, u).unwrap();
        }

        let tmp = tempfile::tempdir().unwrap();
        Store::open(tmp.path(), &key())
            .unwrap()
            .init_model(&model(0.0))
            .unwrap();
        for (round, u) in (1..).zip(&updates) {
            // A fresh process each round: open, restore, apply, publish.
            let mut store = Store::open(tmp.path(), &key()).unwrap();
            let mut opt = ServerOptimizer::new(&settings).unwrap();
            opt.restore(store.velocity(), store.optimizer_state().cloned());
            let (_, mut m) = store.latest_model().unwrap();
            opt.apply(&mut m, u).unwrap();
            store
                .publish(&Publication {
                    optimizer: opt.state(),
                    ..publication(&m, round, None)
                })
                .unwrap();
        }
        let store = Store::open(tmp.path(), &key()).unwrap();
        assert_eq!(store.latest_model().unwrap().1, straight_model);
        assert_eq!(store.optimizer_state(), straight.state());
        assert_ne!(store.optimizer_state().unwrap().m, vec![0.0; 12]);
    }

    /// An editor without the state key: the state file edited (refused by
    /// its SHA-256), its new SHA-256 written into the manifest or the
    /// entry removed (refused by the manifest's MAC), or another version's
    /// file put in its place.
    #[test]
    fn a_tampered_optimizer_state_is_refused() {
        let dim = model(0.0).dim();
        let file = "models/optimizer-000002.safetensors";
        // The file's bytes edited: one value of v changed.
        let tmp = tempfile::tempdir().unwrap();
        drop(published(tmp.path(), &state(dim, 1.0)));
        let path = tmp.path().join(file);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let e = err(tmp.path());
        assert!(e.contains(file) && e.contains("SHA-256"), "{e}");

        // ... and its SHA-256 recomputed into the manifest.
        let manifest = tmp.path().join("manifest.json");
        let text = fs::read_to_string(&manifest).unwrap();
        let old = text
            .split("optimizer-000002.safetensors")
            .nth(1)
            .and_then(|rest| rest.split("\"sha256\": \"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_owned();
        let new = hex::encode(Sha256::digest(&bytes));
        fs::write(&manifest, text.replace(&old, &new)).unwrap();
        let e = err(tmp.path());
        assert!(e.contains("MAC of version 2"), "{e}");

        // The entry's state removed from the manifest: the file left is
        // one the manifest does not list; without it, the MAC refuses.
        let tmp = tempfile::tempdir().unwrap();
        drop(published(tmp.path(), &state(dim, 1.0)));
        let manifest = tmp.path().join("manifest.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&manifest).unwrap()).unwrap();
        json["models"][1]
            .as_object_mut()
            .unwrap()
            .remove("optimizer")
            .unwrap();
        fs::write(&manifest, serde_json::to_string_pretty(&json).unwrap()).unwrap();
        let e = err(tmp.path());
        assert!(e.contains(file) && e.contains("does not list it"), "{e}");
        fs::remove_file(tmp.path().join(file)).unwrap();
        let e = err(tmp.path());
        assert!(e.contains("MAC of version 2"), "{e}");
    }

    /// Version 3's state file replaced by version 2's (both sealed by the
    /// same server): the manifest's SHA-256 for version 3 refuses it.
    #[test]
    fn another_versions_state_in_its_place_is_refused() {
        let dim = model(0.0).dim();
        let tmp = tempfile::tempdir().unwrap();
        let mut store = published(tmp.path(), &state(dim, 1.0));
        store
            .publish(&with_state(&model(2.0), 2, &state(dim, 2.0)))
            .unwrap();
        drop(store);
        let models = tmp.path().join("models");
        fs::copy(
            models.join("optimizer-000002.safetensors"),
            models.join("optimizer-000003.safetensors"),
        )
        .unwrap();
        let e = err(tmp.path());
        assert!(e.contains("optimizer-000003.safetensors"), "{e}");
    }

    #[test]
    fn bad_state_is_not_published_and_a_leftover_file_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dim = model(0.0).dim();
        let mut store = Store::open(tmp.path(), &key()).unwrap();
        store.init_model(&model(0.0)).unwrap();
        let mut negative = state(dim, 1.0);
        negative.v[3] = -1.0;
        let mut nan = state(dim, 1.0);
        nan.m[0] = f32::NAN;
        for (bad, what) in [
            (state(dim + 1, 1.0), "has 13 and 13 values, the model 12"),
            (negative, "negative"),
            (nan, "not finite"),
        ] {
            let e = store
                .publish(&with_state(&model(1.0), 1, &bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains(what), "{e}");
        }
        assert_eq!(store.models().len(), 1, "nothing was published");
        drop(store);
        // A crash between the state file and the manifest of version 2.
        let leftover = tmp.path().join("models/optimizer-000002.safetensors");
        fs::write(&leftover, b"half").unwrap();
        let store = Store::open(tmp.path(), &key()).unwrap();
        assert!(!leftover.exists());
        assert_eq!(store.optimizer_state(), None);
    }
}
