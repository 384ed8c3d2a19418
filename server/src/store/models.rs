//! The manifest and the model files it lists. The manifest is the commit
//! point of a publication: a version exists once its entry is in the
//! manifest, and each entry carries the SHA-256 of its model file and the
//! tensors' order in the flat vector.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::disk::read_json;
use super::integrity::{GENESIS, Purpose, StateKey, canonical, hex_tag};
use super::{MANIFEST, MODELS, StoreError, corrupt, io, tensors};
use crate::model::{Model, TensorSpec};

/// The manifest format this build reads and writes.
pub const MANIFEST_FORMAT: u32 = 1;

/// One published model, as the manifest lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    /// Version, from 1 (the initial model) up.
    pub version: u64,
    /// The round that produced it; 0 for the initial model.
    pub round: u64,
    /// Clients whose updates are in it.
    pub survivors: u32,
    /// Clients of that round whose updates are not.
    pub dropped: u32,
    /// Privacy spent up to and including this version.
    pub epsilon: f64,
    /// The delta of `epsilon` (0 without DP).
    pub delta: f64,
    /// The model file, relative to the data directory.
    pub file: String,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// The tensors in the order of this version's flat vector and momentum
    /// file: name order, except in a version an earlier build published
    /// (see the module docs of [`crate::store`]).
    pub tensors: Vec<TensorSpec>,
    /// When it was published.
    pub published_at_unix_ms: u64,
    /// The momentum (FedAvgM velocity) published with this version, if
    /// the server keeps one. Absent in manifests written before momentum
    /// was kept per version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<StateFile>,
    /// The adaptive optimizer's state (FedAdam, FedYogi, FedAdagrad)
    /// published with this version, if the server keeps one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<StateFile>,
}

/// A file of optimizer state published with a version, as its manifest
/// entry names it: open refuses the file if its SHA-256 differs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    /// The file, relative to the data directory.
    pub file: String,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Manifest {
    pub(super) format: u32,
    pub(super) models: Vec<ModelEntry>,
    /// The entries' tags ([`seal`]); absent in a manifest written before
    /// authentication existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) mac: Option<ManifestMacs>,
}

/// The manifest's tags: one per entry, each over the whole entry (every
/// field, the model file's SHA-256 included), its round's charge in the
/// ledger and the previous entry's tag; and a head tag over the format and
/// the number of entries, so a truncated manifest fails too.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ManifestMacs {
    entries: Vec<String>,
    head: String,
}

/// Tags the manifest's entries under `key`; `charges(round)` is the
/// ledger's binding of a round ([`super::ledger::charge_binding`]).
pub(super) fn seal(
    key: &StateKey,
    manifest: &Manifest,
    charges: impl Fn(u64) -> Vec<u8>,
) -> ManifestMacs {
    let key = key.subkey(Purpose::Manifest);
    let mut prev = GENESIS;
    let mut entries = Vec::new();
    for e in &manifest.models {
        prev = key.tag(&prev, &[b"model", &canonical(e), &charges(e.round)]);
        entries.push(hex_tag(&prev));
    }
    let head = key.tag(
        &prev,
        &[
            b"head",
            &canonical(&(manifest.format, manifest.models.len())),
        ],
    );
    ManifestMacs {
        entries,
        head: hex_tag(&head),
    }
}

/// Checks the manifest's tags, naming the first entry that does not
/// verify.
pub(super) fn verify(
    path: &Path,
    key: &StateKey,
    manifest: &Manifest,
    macs: &ManifestMacs,
    charges: impl Fn(u64) -> Vec<u8>,
) -> Result<(), StoreError> {
    let key = key.subkey(Purpose::Manifest);
    let bad = |what: String| {
        corrupt(
            path,
            format!(
                "{what} does not verify under the state key: the file (or its round's charge in the ledger) was edited, or the state key is not the one that wrote it"
            ),
        )
    };
    let mut prev = GENESIS;
    for (i, e) in manifest.models.iter().enumerate() {
        let what = || format!("the MAC of version {} (entry {})", e.version, i + 1);
        let tag = macs.entries.get(i).ok_or_else(what).map_err(bad)?;
        prev = key
            .verify(&prev, &[b"model", &canonical(e), &charges(e.round)], tag)
            .ok_or_else(what)
            .map_err(bad)?;
    }
    key.verify(
        &prev,
        &[
            b"head",
            &canonical(&(manifest.format, manifest.models.len())),
        ],
        &macs.head,
    )
    .ok_or_else(|| bad("the head (format and number of versions)".to_owned()))?;
    Ok(())
}

/// The model file of a version, relative to the data directory.
pub(super) fn model_file(version: u64) -> String {
    format!("{MODELS}/model-{version:06}.safetensors")
}

/// The momentum file of a version, relative to the data directory.
pub(super) fn momentum_file(version: u64) -> String {
    format!("{MODELS}/momentum-{version:06}.safetensors")
}

/// Reads a manifest, checking its format before its layout, so a newer
/// format is reported as such rather than as corruption.
pub(super) fn read_manifest(path: &Path) -> Result<Manifest, StoreError> {
    #[derive(Deserialize)]
    struct FormatOnly {
        format: u32,
    }
    let found = read_json::<FormatOnly>(path)?.format;
    if found != MANIFEST_FORMAT {
        return Err(StoreError::Format {
            path: path.to_owned(),
            found,
            expected: MANIFEST_FORMAT,
        });
    }
    read_json(path)
}

/// The manifest's entries must be what [`super::Store::publish`] writes:
/// consecutive versions from 1 at their own file names, increasing rounds,
/// finite privacy figures.
pub(super) fn check_manifest(path: &Path, manifest: &Manifest) -> Result<(), StoreError> {
    let mut last_round = None;
    for (i, e) in manifest.models.iter().enumerate() {
        if let Some(what) = entry_fault(i, e, last_round) {
            return Err(corrupt(path, what));
        }
        last_round = Some(e.round);
    }
    Ok(())
}

/// What is wrong with the `i`th manifest entry, if anything.
fn entry_fault(i: usize, e: &ModelEntry, last_round: Option<u64>) -> Option<String> {
    if e.version != i as u64 + 1 {
        Some(format!(
            "entry {i} has version {}, expected {}",
            e.version,
            i + 1
        ))
    } else if e.file != model_file(e.version) {
        Some(format!("version {} names file {:?}", e.version, e.file))
    } else if let Some(m) = e
        .momentum
        .as_ref()
        .filter(|m| m.file != momentum_file(e.version))
    {
        Some(format!(
            "version {} names momentum file {:?}",
            e.version, m.file
        ))
    } else if let Some(o) = e
        .optimizer
        .as_ref()
        .filter(|o| o.file != super::optimizer::optimizer_file(e.version))
    {
        Some(format!(
            "version {} names optimizer file {:?}",
            e.version, o.file
        ))
    } else if last_round.is_some_and(|r| e.round <= r) {
        Some(format!(
            "version {} has round {}, not after the previous version's",
            e.version, e.round
        ))
    } else if !(e.epsilon.is_finite() && e.epsilon >= 0.0 && e.delta.is_finite() && e.delta >= 0.0)
    {
        Some(format!(
            "version {} has invalid epsilon or delta",
            e.version
        ))
    } else {
        None
    }
}

/// Reads and verifies a published model: the file's SHA-256 against the
/// manifest, its tensors against the entry, its metadata against the
/// version and round.
pub(super) fn read_model(dir: &Path, entry: &ModelEntry) -> Result<Model, StoreError> {
    let path = dir.join(&entry.file);
    let bytes = read_verified(&path, &entry.sha256)?;
    let (params, meta) = tensors::decode(&path, &bytes, &entry.tensors)?;
    for (key, want) in [("version", entry.version), ("round", entry.round)] {
        if meta.get(key) != Some(&want.to_string()) {
            return Err(corrupt(&path, format!("metadata {key} is not {want}")));
        }
    }
    Model::new(entry.tensors.clone(), params).map_err(|e| corrupt(&path, e.to_string()))
}

/// Reads a file whose SHA-256 the manifest records, refusing it if the
/// digest differs (an edit, or a disk that returns other bytes).
pub(super) fn read_verified(path: &Path, sha256: &str) -> Result<Vec<u8>, StoreError> {
    let bytes = fs::read(path).map_err(io(path))?;
    let digest = hex::encode(Sha256::digest(&bytes));
    if digest != sha256 {
        return Err(corrupt(
            path,
            format!("SHA-256 is {digest}, {MANIFEST} says {sha256}"),
        ));
    }
    Ok(bytes)
}

/// Reads and verifies the momentum published with `entry`, if any: its
/// SHA-256 against the manifest, its one tensor against the model's
/// dimension, its metadata against the version, every value finite.
pub(super) fn read_momentum(
    dir: &Path,
    entry: &ModelEntry,
) -> Result<Option<Vec<f32>>, StoreError> {
    let Some(state) = &entry.momentum else {
        return Ok(None);
    };
    let path = dir.join(&state.file);
    let bytes = read_verified(&path, &state.sha256)?;
    decode_momentum(&path, &bytes, entry).map(Some)
}

/// The velocity in a momentum file's `bytes`, which must be `entry`'s.
pub(super) fn decode_momentum(
    path: &Path,
    bytes: &[u8],
    entry: &ModelEntry,
) -> Result<Vec<f32>, StoreError> {
    let dim = entry.tensors.iter().map(TensorSpec::len).sum();
    let (velocity, meta) = tensors::decode(path, bytes, &tensors::velocity_spec(dim))?;
    let found = meta.get("version").map_or("none", String::as_str);
    if found != entry.version.to_string() {
        return Err(StoreError::Inconsistent {
            path: path.to_owned(),
            what: format!(
                "it is the momentum of version {found}, the latest published version is {}: an older server stopped between writing it and publishing that version, and version {}'s momentum is lost. Move the file out of the data directory to continue with zero momentum",
                entry.version, entry.version
            ),
        });
    }
    if let Some(i) = velocity.iter().position(|v| !v.is_finite()) {
        return Err(corrupt(path, format!("value {i} is not finite")));
    }
    Ok(velocity)
}
