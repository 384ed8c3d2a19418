//! What the store's tests share: a model whose tensor order differs
//! from the name order, publications, and a data directory with one
//! charged round.

use std::path::Path;

use tessera_dp::ledger::{Adversary, Mechanism, PrivacyLedger};

use super::{Publication, RoundRecord, RoundStatus, StateKey, Store};
use crate::model::{Model, TensorSpec};

/// Tensors named so that sorting by name would reorder them.
pub(super) fn model(base: f32) -> Model {
    let tensors: Vec<TensorSpec> = ["z", "a", "m"]
        .iter()
        .enumerate()
        .map(|(i, n)| TensorSpec {
            name: (*n).into(),
            shape: vec![2, i + 1],
        })
        .collect();
    let len = tensors.iter().map(TensorSpec::len).sum();
    let params = (0..len).map(|i| base + i as f32 / 3.0 - 1.0).collect();
    Model::new(tensors, params).unwrap()
}

pub(super) fn publication<'a>(
    m: &'a Model,
    round: u64,
    ledger: Option<&'a PrivacyLedger>,
) -> Publication<'a> {
    Publication {
        model: m,
        round,
        survivors: 3,
        dropped: 1,
        epsilon: ledger.map_or(0.0, PrivacyLedger::spent),
        delta: ledger.map_or(0.0, PrivacyLedger::delta),
        ledger,
        velocity: None,
        optimizer: None,
    }
}

pub(super) fn gaussian() -> Mechanism {
    Mechanism::Gaussian {
        noise_multiplier: 1.0,
        sampling_rate: 1.0,
    }
}

pub(super) fn bits(m: &Model) -> Vec<u32> {
    m.params.iter().map(|v| v.to_bits()).collect()
}

pub(super) fn err(dir: &Path) -> String {
    Store::open(dir, &key()).unwrap_err().to_string()
}

/// The state key the store's tests seal with.
pub(super) fn key() -> StateKey {
    StateKey::from_bytes([42; 32])
}

/// What a data directory written by a build without MACs looks like:
/// every file's MACs removed, no audit log.
pub(super) fn strip_macs(dir: &Path) {
    let strip = |path: &Path| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("mac");
        std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    };
    for file in ["manifest.json", "ledger.json"] {
        if dir.join(file).exists() {
            strip(&dir.join(file));
        }
    }
    for entry in std::fs::read_dir(dir.join("rounds")).unwrap() {
        strip(&entry.unwrap().path());
    }
    let _ = std::fs::remove_file(dir.join("audit.jsonl"));
}

/// A data directory with the initial model and round 1 published and
/// charged (central DP); returns the ledger as written.
pub(super) fn one_charged_round(dir: &Path) -> PrivacyLedger {
    let mut store = Store::open(dir, &key()).unwrap();
    store.init_model(&model(0.0)).unwrap();
    let mut ledger = PrivacyLedger::new(8.0, 1e-5).unwrap();
    ledger
        .record(1, gaussian(), Adversary::ModelConsumers)
        .unwrap();
    store
        .publish(&publication(&model(1.0), 1, Some(&ledger)))
        .unwrap();
    ledger
}

/// The record a round gets when it opens.
pub(super) fn started(round: u64) -> RoundRecord {
    RoundRecord {
        round,
        outcome: RoundStatus::Started,
        clients: 5,
        survivors: 0,
        dropped: 0,
        threshold: 3,
        stage: None,
        reason: None,
        model_version: None,
        started_at_unix_ms: 0,
        seconds: 0.0,
        cohort: None,
        tree: None,
        strategy: None,
        extras: None,
    }
}
