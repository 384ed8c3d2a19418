//! The server's durable state, all in one data directory:
//!
//! ```text
//! DATA_DIR/
//!   manifest.json                     {"format": 1, "models": [ModelEntry...]}: the commit point
//!   models/model-000001.safetensors   one file per published version (F32 tensors,
//!                                     metadata {"version", "round"})
//!   momentum.safetensors              FedAvgM velocity of the latest version (optional)
//!   rounds/round-000042.json          one RoundRecord per round ever opened
//!   ledger.json                       the privacy ledger (DP on), layout version 2
//! ```
//!
//! Every file is written to `NAME.tmp` in the same directory, fsynced,
//! renamed over `NAME`, and the directory fsynced: a crash at any instant
//! leaves either the old or the new file, never a torn one. A round's
//! privacy charge is written ([`Store::charge`]) as soon as the server has
//! seen its sum, before anything that could fail on the way to publishing
//! it (noise, FedAvg, the model write): a sum the server saw is in the
//! ledger even if it is never published. A publication
//! writes the ledger first (privacy spent is never under-recorded), then
//! the model file, then the momentum, then the manifest, which is what
//! makes the version visible. safetensors sorts tensors by name, so the
//! manifest entry keeps the tensors' order in the flat vector.
//!
//! On open, leftovers of an interrupted write (`*.tmp`, the model file of
//! the version after the latest, a momentum file of an unpublished
//! version) are removed with a warning, a round that was `started` but
//! never finished becomes `interrupted` (or `completed`, if the crash came
//! after its model was published but before its record was updated: the
//! manifest is the truth), and everything else is checked:
//! manifest format and entries, every model's SHA-256, tensors and
//! metadata, the ledger (which must record every round that spent
//! privacy; a version 1 ledger is migrated to version 2, with a warning,
//! each entry marked `migrated_from`), every round record. Anything wrong is an error naming the
//! file: the server refuses to run on state it cannot trust rather than
//! start over. A non-empty directory without a manifest that holds
//! anything a data directory never does is refused too, so a mistyped
//! path cannot turn someone's home directory into a data directory.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tessera_dp::ledger::{LEDGER_VERSION, PrivacyLedger};
use tracing::warn;

use crate::fedavg::{Model, TensorSpec};

/// The manifest format this build reads and writes.
pub const MANIFEST_FORMAT: u32 = 1;

const MANIFEST: &str = "manifest.json";
const LEDGER: &str = "ledger.json";
const MOMENTUM: &str = "momentum.safetensors";
const MODELS: &str = "models";
const ROUNDS: &str = "rounds";

/// The durable state cannot be read or written. Every variant that
/// concerns a file names it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file's content is not what the store wrote.
    #[error("{path} is corrupt: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The manifest was written by another format version.
    #[error("{path} has format {found}, this server reads format {expected}")]
    Format {
        /// The manifest.
        path: PathBuf,
        /// Its format.
        found: u32,
        /// Ours.
        expected: u32,
    },
    /// The path cannot be a data directory.
    #[error("{path} is not a usable data directory: {what}")]
    NotDataDir {
        /// The path.
        path: PathBuf,
        /// Why.
        what: String,
    },
    /// `init_model` on a store that already has one.
    #[error("the data directory already holds a model")]
    ModelExists,
    /// A write asked for would leave state the store refuses to read back
    /// (a caller bug: nothing was written).
    #[error("refusing to write: {what}")]
    Refused {
        /// What is wrong with the request.
        what: String,
    },
    /// An earlier publication failed part-way; what is on disk is only
    /// known after reopening, which reconciles it.
    #[error("an earlier write to {path} failed part-way; reopen the data directory")]
    Poisoned {
        /// The data directory.
        path: PathBuf,
    },
}

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
    /// The tensors in flat-vector order (safetensors sorts by name).
    pub tensors: Vec<TensorSpec>,
    /// When it was published.
    pub published_at_unix_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    models: Vec<ModelEntry>,
}

/// What happened to a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoundOutcome {
    /// Opened, not yet finished.
    Started,
    /// Produced a sum and a published model.
    Completed,
    /// Ended without a sum.
    Aborted,
    /// The server stopped during the round (a `started` record found when
    /// the store was opened).
    Interrupted,
}

/// The record of one round: written as `started` when the round opens (so
/// its id is never reused, since round ids bind key derivations) and again
/// with its outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// The round id, from 1.
    pub round: u64,
    /// How it ended.
    pub outcome: RoundOutcome,
    /// Clients invited.
    pub clients: u32,
    /// Clients whose inputs are in the sum (completed), or that completed
    /// the last stage (aborted).
    pub survivors: u32,
    /// `clients - survivors`.
    pub dropped: u32,
    /// The Shamir threshold.
    pub threshold: u32,
    /// Where an aborted round stopped.
    pub stage: Option<String>,
    /// Why an aborted round stopped.
    pub reason: Option<String>,
    /// The model version it published.
    pub model_version: Option<u64>,
    /// When it opened.
    pub started_at_unix_ms: u64,
    /// How long it took.
    pub seconds: f64,
}

/// What [`Store::publish`] writes: the next version's model and what the
/// manifest says about it.
#[derive(Debug)]
pub struct Publication<'a> {
    /// The new global model.
    pub model: &'a Model,
    /// The round that produced it; after the latest version's round.
    pub round: u64,
    /// Clients in its sum.
    pub survivors: u32,
    /// Clients of the round not in its sum.
    pub dropped: u32,
    /// Privacy spent so far; if positive, the ledger (this one or the
    /// stored one) must record `round`.
    pub epsilon: f64,
    /// Its delta.
    pub delta: f64,
    /// The ledger including this round, if DP is on.
    pub ledger: Option<&'a PrivacyLedger>,
    /// The momentum buffer after this round, if any; `model.dim()` long.
    pub velocity: Option<&'a [f32]>,
}

/// The open data directory. Not shared between processes: one server owns
/// a data directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    manifest: Manifest,
    rounds: Vec<RoundRecord>,
    ledger: Option<PrivacyLedger>,
    latest: Option<Model>,
    velocity: Option<Vec<f32>>,
    poisoned: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

fn corrupt(path: &Path, what: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        what: what.into(),
    }
}

fn refused(what: impl Into<String>) -> StoreError {
    StoreError::Refused { what: what.into() }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn model_file(version: u64) -> String {
    format!("{MODELS}/model-{version:06}.safetensors")
}

fn round_file(round: u64) -> String {
    format!("round-{round:06}.json")
}

/// The directory holding `path`, as a path `File::open` accepts (a bare
/// file name's parent is the empty path).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Writes `bytes` to `path` atomically and durably: `NAME.tmp`, fsync,
/// rename, fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(parent(path))
}

/// Makes a rename, creation or removal in `dir` durable. Only Unix can
/// open a directory to sync it, and some Unix file systems answer EINVAL;
/// only that failure is ignored.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    if cfg!(unix) {
        match fs::File::open(dir).and_then(|d| d.sync_all()) {
            Err(e) if e.kind() != std::io::ErrorKind::InvalidInput => return Err(io(dir)(e)),
            _ => {}
        }
    }
    Ok(())
}

fn remove_leftover(path: &Path, why: &str) -> Result<(), StoreError> {
    warn!(file = %path.display(), "removing {why}");
    fs::remove_file(path).map_err(io(path))?;
    sync_dir(parent(path))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, StoreError> {
    let bytes = fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| corrupt(path, e.to_string()))
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("store records serialise")
}

/// Serialises `params` as F32 tensors, one per spec, plus `metadata`.
fn encode_tensors(
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
fn decode_tensors(
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

fn velocity_spec(dim: usize) -> [TensorSpec; 1] {
    [TensorSpec {
        name: "velocity".into(),
        shape: vec![dim],
    }]
}

/// Reads a manifest, checking its format before its layout, so a newer
/// format is reported as such rather than as corruption.
fn read_manifest(path: &Path) -> Result<Manifest, StoreError> {
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

/// The manifest's entries must be what [`Store::publish`] writes:
/// consecutive versions from 1 at their own file names, increasing rounds,
/// finite privacy figures.
fn check_manifest(path: &Path, manifest: &Manifest) -> Result<(), StoreError> {
    let mut last_round = None;
    for (i, e) in manifest.models.iter().enumerate() {
        let wrong = if e.version != i as u64 + 1 {
            Some(format!(
                "entry {i} has version {}, expected {}",
                e.version,
                i + 1
            ))
        } else if e.file != model_file(e.version) {
            Some(format!("version {} names file {:?}", e.version, e.file))
        } else if last_round.is_some_and(|r| e.round <= r) {
            Some(format!(
                "version {} has round {}, not after the previous version's",
                e.version, e.round
            ))
        } else if !(e.epsilon.is_finite()
            && e.epsilon >= 0.0
            && e.delta.is_finite()
            && e.delta >= 0.0)
        {
            Some(format!(
                "version {} has invalid epsilon or delta",
                e.version
            ))
        } else {
            None
        };
        if let Some(what) = wrong {
            return Err(corrupt(path, what));
        }
        last_round = Some(e.round);
    }
    Ok(())
}

/// A round that spent privacy must be in the ledger: the ledger is
/// written first, so a missing entry means the ledger was lost or rolled
/// back, and continuing would under-count the privacy spent.
fn unrecorded(
    entries: impl IntoIterator<Item = (u64, f64)>,
    ledger: Option<&PrivacyLedger>,
) -> Option<u64> {
    entries.into_iter().find_map(|(round, epsilon)| {
        let recorded = ledger.is_some_and(|l| l.entries().iter().any(|e| e.round == round));
        (epsilon > 0.0 && !recorded).then_some(round)
    })
}

impl Store {
    /// Opens (creating if missing or empty) and checks a data directory;
    /// see the module docs for what is checked and what is cleaned up.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        match fs::metadata(dir) {
            Ok(m) if !m.is_dir() => {
                return Err(StoreError::NotDataDir {
                    path: dir.to_owned(),
                    what: "it is not a directory".into(),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(io(dir))?;
                sync_dir(parent(dir))?;
            }
            Err(e) => return Err(io(dir)(e)),
        }
        let manifest_path = dir.join(MANIFEST);
        if !manifest_path.exists() {
            for entry in fs::read_dir(dir).map_err(io(dir))? {
                let name = file_name(&entry.map_err(io(dir))?.path());
                let base = name.strip_suffix(".tmp").unwrap_or(&name);
                if ![MANIFEST, LEDGER, MOMENTUM, MODELS, ROUNDS].contains(&base) {
                    return Err(StoreError::NotDataDir {
                        path: dir.to_owned(),
                        what: format!(
                            "it has no {MANIFEST} but holds {name:?}; use an empty or new directory"
                        ),
                    });
                }
            }
        }
        for sub in [MODELS, ROUNDS] {
            let p = dir.join(sub);
            if !p.is_dir() {
                fs::create_dir(&p).map_err(io(&p))?;
                sync_dir(dir)?;
            }
        }
        for sub in [dir.to_owned(), dir.join(MODELS), dir.join(ROUNDS)] {
            for entry in fs::read_dir(&sub).map_err(io(&sub))? {
                let path = entry.map_err(io(&sub))?.path();
                if path.extension().is_some_and(|e| e == "tmp") {
                    remove_leftover(&path, "a half-written file")?;
                }
            }
        }

        let manifest = if manifest_path.exists() {
            read_manifest(&manifest_path)?
        } else {
            Manifest {
                format: MANIFEST_FORMAT,
                models: Vec::new(),
            }
        };
        check_manifest(&manifest_path, &manifest)?;
        let mut store = Store {
            dir: dir.to_owned(),
            manifest,
            rounds: Vec::new(),
            ledger: None,
            latest: None,
            velocity: None,
            poisoned: false,
        };
        for entry in &store.manifest.models {
            store.latest = Some(store.read_model(entry)?);
        }
        let latest_version = store.manifest.models.last().map_or(0, |m| m.version);
        let models_dir = dir.join(MODELS);
        for entry in fs::read_dir(&models_dir).map_err(io(&models_dir))? {
            let path = entry.map_err(io(&models_dir))?.path();
            let rel = format!("{MODELS}/{}", file_name(&path));
            if rel == model_file(latest_version + 1) {
                remove_leftover(&path, "a model file whose publication did not commit")?;
            } else if !store.manifest.models.iter().any(|m| m.file == rel) {
                return Err(corrupt(
                    &path,
                    format!("{MANIFEST} does not list it; move it out of the data directory"),
                ));
            }
        }

        let ledger_path = dir.join(LEDGER);
        if ledger_path.exists() {
            #[derive(Deserialize)]
            struct VersionOnly {
                version: u32,
            }
            let found = read_json::<VersionOnly>(&ledger_path)?.version;
            let ledger: PrivacyLedger = read_json(&ledger_path)?;
            if found < LEDGER_VERSION {
                // Never silently: the log says so, and every migrated
                // entry keeps `migrated_from` in the file.
                warn!(
                    file = %ledger_path.display(),
                    from = found,
                    to = LEDGER_VERSION,
                    "migrating the privacy ledger: each entry's adversary is inferred from its mechanism and marked migrated_from"
                );
                write_atomic(&ledger_path, &to_json(&ledger))?;
            }
            store.ledger = Some(ledger);
        }
        let published = store.manifest.models.iter().map(|m| (m.round, m.epsilon));
        if let Some(round) = unrecorded(published, store.ledger.as_ref()) {
            let state = if store.ledger.is_some() {
                "does not record"
            } else {
                "is missing, but"
            };
            return Err(corrupt(
                &ledger_path,
                format!("{state} round {round}, whose model {MANIFEST} lists as spending privacy"),
            ));
        }

        let momentum = dir.join(MOMENTUM);
        if let Some(latest) = &store.latest
            && momentum.exists()
        {
            let bytes = fs::read(&momentum).map_err(io(&momentum))?;
            let spec = velocity_spec(latest.dim());
            let (velocity, meta) = decode_tensors(&momentum, &bytes, &spec)?;
            if meta.get("version") != Some(&latest_version.to_string()) {
                remove_leftover(&momentum, "momentum saved with another version")?;
            } else if let Some(i) = velocity.iter().position(|v| !v.is_finite()) {
                return Err(corrupt(&momentum, format!("value {i} is not finite")));
            } else {
                store.velocity = Some(velocity);
            }
        } else if momentum.exists() {
            remove_leftover(&momentum, "momentum saved with another version")?;
        }

        let rounds_dir = dir.join(ROUNDS);
        for entry in fs::read_dir(&rounds_dir).map_err(io(&rounds_dir))? {
            let path = entry.map_err(io(&rounds_dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let mut record: RoundRecord = read_json(&path)?;
            if record.round == 0 || file_name(&path) != round_file(record.round) {
                return Err(corrupt(&path, format!("holds round {}", record.round)));
            }
            if record.outcome == RoundOutcome::Started {
                match store
                    .manifest
                    .models
                    .iter()
                    .find(|m| m.round == record.round)
                {
                    // Killed between publishing the model and recording
                    // the round: the version is visible, so the round
                    // completed.
                    Some(model) => {
                        record.outcome = RoundOutcome::Completed;
                        record.model_version = Some(model.version);
                        record.survivors = model.survivors;
                        record.dropped = model.dropped;
                    }
                    None => record.outcome = RoundOutcome::Interrupted,
                }
                write_atomic(&path, &to_json(&record))?;
            }
            store.rounds.push(record);
        }
        store.rounds.sort_by_key(|r| r.round);
        Ok(store)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read_model(&self, entry: &ModelEntry) -> Result<Model, StoreError> {
        let path = self.dir.join(&entry.file);
        let bytes = fs::read(&path).map_err(io(&path))?;
        let digest = hex(&Sha256::digest(&bytes));
        if digest != entry.sha256 {
            return Err(corrupt(
                &path,
                format!("SHA-256 is {digest}, {MANIFEST} says {}", entry.sha256),
            ));
        }
        let (params, meta) = decode_tensors(&path, &bytes, &entry.tensors)?;
        for (key, want) in [("version", entry.version), ("round", entry.round)] {
            if meta.get(key) != Some(&want.to_string()) {
                return Err(corrupt(&path, format!("metadata {key} is not {want}")));
            }
        }
        Model::new(entry.tensors.clone(), params).map_err(|e| corrupt(&path, e.to_string()))
    }

    /// Every published model's entry, oldest first.
    pub fn models(&self) -> &[ModelEntry] {
        &self.manifest.models
    }

    /// The latest published model (kept in memory).
    pub fn latest_model(&self) -> Option<(ModelEntry, Model)> {
        let entry = self.manifest.models.last()?.clone();
        Some((entry, self.latest.clone()?))
    }

    /// A published model by version (0 = latest), re-verified against its
    /// SHA-256 when read from disk; `None` if there is no such version.
    pub fn model(&self, version: u64) -> Result<Option<(ModelEntry, Model)>, StoreError> {
        let latest = self.manifest.models.last().map_or(0, |m| m.version);
        if version == 0 || version == latest {
            return Ok(self.latest_model());
        }
        match self.manifest.models.iter().find(|m| m.version == version) {
            Some(entry) => Ok(Some((entry.clone(), self.read_model(entry)?))),
            None => Ok(None),
        }
    }

    /// Every round record, by round id.
    pub fn rounds(&self) -> &[RoundRecord] {
        &self.rounds
    }

    /// The id of the next round: after every round recorded, published or
    /// in the ledger, so never one used before, even by a round that was
    /// interrupted, since round ids bind key derivations.
    pub fn next_round_id(&self) -> u64 {
        let records = self.rounds.last().map(|r| r.round);
        let models = self.manifest.models.last().map(|m| m.round);
        let ledger = self
            .ledger
            .as_ref()
            .and_then(|l| l.entries().last())
            .map(|e| e.round);
        [records, models, ledger]
            .into_iter()
            .flatten()
            .max()
            .map_or(1, |r| r + 1)
    }

    /// The privacy ledger, if one was written.
    pub fn ledger(&self) -> Option<&PrivacyLedger> {
        self.ledger.as_ref()
    }

    /// The momentum buffer persisted with the latest version, if any.
    pub fn velocity(&self) -> Option<Vec<f32>> {
        self.velocity.clone()
    }

    /// Publishes the initial model (version 1, round 0).
    pub fn init_model(&mut self, model: &Model) -> Result<ModelEntry, StoreError> {
        if !self.manifest.models.is_empty() {
            return Err(StoreError::ModelExists);
        }
        self.publish(&Publication {
            model,
            round: 0,
            survivors: 0,
            dropped: 0,
            epsilon: 0.0,
            delta: 0.0,
            ledger: None,
            velocity: None,
        })
    }

    /// Writes (or rewrites) a round's record: `started` when the round
    /// opens, then its outcome.
    pub fn record_round(&mut self, record: &RoundRecord) -> Result<(), StoreError> {
        if record.round == 0 {
            return Err(refused("round 0 is the initial model's, not a round"));
        }
        let path = self.dir.join(ROUNDS).join(round_file(record.round));
        write_atomic(&path, &to_json(record))?;
        match self.rounds.binary_search_by_key(&record.round, |r| r.round) {
            Ok(i) => self.rounds[i] = record.clone(),
            Err(i) => self.rounds.insert(i, record.clone()),
        }
        Ok(())
    }

    /// Writes the ledger with a round's charge, durably, before the round's
    /// model is made: a sum the server has seen must be in the ledger even
    /// if publishing it then fails. Refuses a ledger that does not extend
    /// the stored one. Runs even after a failed publication (the store is
    /// then poisoned for publications): recording privacy spent is always
    /// safe, and the write is atomic.
    pub fn charge(&mut self, ledger: &PrivacyLedger) -> Result<(), StoreError> {
        if let Some(old) = &self.ledger
            && !ledger.entries().starts_with(old.entries())
        {
            return Err(refused(
                "the ledger does not extend the stored one (it would erase privacy spent)",
            ));
        }
        write_atomic(&self.dir.join(LEDGER), &to_json(ledger))?;
        self.ledger = Some(ledger.clone());
        Ok(())
    }

    /// Publishes the next version (latest + 1). Checks first, so a bad
    /// request writes nothing; then writes the ledger, the model file, the
    /// momentum and the manifest, in that order. If a write fails, the
    /// store refuses further publications until reopened.
    pub fn publish(&mut self, p: &Publication<'_>) -> Result<ModelEntry, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned {
                path: self.dir.clone(),
            });
        }
        p.model
            .validate()
            .map_err(|e| refused(format!("the model is invalid: {e}")))?;
        if let Some(v) = p.velocity {
            if v.len() != p.model.dim() {
                return Err(refused(format!(
                    "the velocity has {} values, the model {}",
                    v.len(),
                    p.model.dim()
                )));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(refused("the velocity is not finite"));
            }
        }
        if let Some(last) = self.manifest.models.last()
            && p.round <= last.round
        {
            return Err(refused(format!(
                "round {} is not after round {} of version {}",
                p.round, last.round, last.version
            )));
        }
        if !(p.epsilon.is_finite() && p.epsilon >= 0.0 && p.delta.is_finite() && p.delta >= 0.0) {
            return Err(refused("epsilon and delta must be finite and non-negative"));
        }
        if unrecorded([(p.round, p.epsilon)], p.ledger.or(self.ledger.as_ref())).is_some() {
            return Err(refused(format!(
                "round {} spends privacy but no ledger records it",
                p.round
            )));
        }
        if let (Some(new), Some(old)) = (p.ledger, &self.ledger)
            && !new.entries().starts_with(old.entries())
        {
            return Err(refused(
                "the ledger does not extend the stored one (it would erase privacy spent)",
            ));
        }
        let result = self.write_publication(p);
        self.poisoned = result.is_err();
        result
    }

    fn write_publication(&mut self, p: &Publication<'_>) -> Result<ModelEntry, StoreError> {
        if let Some(ledger) = p.ledger {
            write_atomic(&self.dir.join(LEDGER), &to_json(ledger))?;
            self.ledger = Some(ledger.clone());
        }
        let version = self.manifest.models.last().map_or(1, |m| m.version + 1);
        let file = model_file(version);
        let path = self.dir.join(&file);
        let metadata = HashMap::from([
            ("version".to_owned(), version.to_string()),
            ("round".to_owned(), p.round.to_string()),
        ]);
        let bytes = encode_tensors(&path, &p.model.tensors, &p.model.params, metadata)?;
        write_atomic(&path, &bytes)?;
        let momentum = self.dir.join(MOMENTUM);
        if let Some(v) = p.velocity {
            let metadata = HashMap::from([("version".to_owned(), version.to_string())]);
            let encoded = encode_tensors(&momentum, &velocity_spec(v.len()), v, metadata)?;
            write_atomic(&momentum, &encoded)?;
        }
        let entry = ModelEntry {
            version,
            round: p.round,
            survivors: p.survivors,
            dropped: p.dropped,
            epsilon: p.epsilon,
            delta: p.delta,
            file,
            sha256: hex(&Sha256::digest(&bytes)),
            tensors: p.model.tensors.clone(),
            published_at_unix_ms: unix_ms(),
        };
        self.manifest.models.push(entry.clone());
        let written = write_atomic(&self.dir.join(MANIFEST), &to_json(&self.manifest));
        if let Err(e) = written {
            self.manifest.models.pop();
            return Err(e);
        }
        self.latest = Some(p.model.clone());
        self.velocity = p.velocity.map(<[f32]>::to_vec);
        if p.velocity.is_none() && momentum.exists() {
            // An older version's momentum; open would drop it anyway.
            if let Err(e) = fs::remove_file(&momentum) {
                warn!(file = %momentum.display(), "cannot remove stale momentum: {e}");
            }
        }
        Ok(entry)
    }
}

/// A read-only view of a data directory, for `tessera inspect`: it never
/// modifies anything (no cleanup, no record rewrites), so it is safe to run
/// beside a live server.
#[derive(Debug, Serialize)]
pub struct Inspection {
    /// Published models, oldest first.
    pub models: Vec<ModelEntry>,
    /// Round records, by round id.
    pub rounds: Vec<RoundRecord>,
    /// The privacy ledger, if any.
    pub ledger: Option<PrivacyLedger>,
}

/// Reads a data directory without changing it (and without verifying
/// model files: [`Store::open`] does that).
pub fn inspect(dir: &Path) -> Result<Inspection, StoreError> {
    if !dir.is_dir() {
        return Err(StoreError::NotDataDir {
            path: dir.to_owned(),
            what: "missing or not a directory".into(),
        });
    }
    let manifest_path = dir.join(MANIFEST);
    let models = if manifest_path.exists() {
        read_manifest(&manifest_path)?.models
    } else {
        Vec::new()
    };
    let mut rounds = Vec::new();
    let rounds_dir = dir.join(ROUNDS);
    if rounds_dir.is_dir() {
        for entry in fs::read_dir(&rounds_dir).map_err(io(&rounds_dir))? {
            let path = entry.map_err(io(&rounds_dir))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                rounds.push(read_json::<RoundRecord>(&path)?);
            }
        }
    }
    rounds.sort_by_key(|r| r.round);
    let ledger_path = dir.join(LEDGER);
    let ledger = if ledger_path.exists() {
        Some(read_json(&ledger_path)?)
    } else {
        None
    };
    Ok(Inspection {
        models,
        rounds,
        ledger,
    })
}

#[cfg(test)]
mod tests {
    use tessera_dp::ledger::{Adversary, Mechanism};

    use super::*;

    /// Tensors named so that sorting by name would reorder them.
    fn model(base: f32) -> Model {
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

    fn publication<'a>(
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
        }
    }

    fn gaussian() -> Mechanism {
        Mechanism::Gaussian {
            noise_multiplier: 1.0,
            sampling_rate: 1.0,
        }
    }

    fn bits(m: &Model) -> Vec<u32> {
        m.params.iter().map(|v| v.to_bits()).collect()
    }

    fn err(dir: &Path) -> String {
        Store::open(dir).unwrap_err().to_string()
    }

    #[test]
    fn models_ledger_and_tensor_order_survive_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut store = Store::open(&dir).unwrap();
        assert!(store.latest_model().is_none());
        let m0 = model(0.0);
        assert_eq!(store.init_model(&m0).unwrap().round, 0);
        assert!(matches!(
            store.init_model(&m0),
            Err(StoreError::ModelExists)
        ));
        let mut ledger = PrivacyLedger::new(8.0, 1e-5).unwrap();
        let mut published = vec![m0];
        for round in 1..=3 {
            ledger
                .record(round, gaussian(), Adversary::ModelConsumers)
                .unwrap();
            let m = model(round as f32);
            let entry = store
                .publish(&publication(&m, round, Some(&ledger)))
                .unwrap();
            assert_eq!((entry.version, entry.epsilon), (round + 1, ledger.spent()));
            published.push(m);
        }
        drop(store);

        let store = Store::open(&dir).unwrap();
        assert_eq!(store.models().len(), 4);
        for (i, m) in published.iter().enumerate() {
            let (entry, got) = store.model(i as u64 + 1).unwrap().unwrap();
            assert_eq!(got.tensors, m.tensors, "version {}", entry.version);
            assert_eq!(bits(&got), bits(m), "version {}", entry.version);
        }
        assert_eq!(store.latest_model().unwrap().1, published[3]);
        assert_eq!(store.model(0).unwrap().unwrap().0.version, 4);
        assert!(store.model(9).unwrap().is_none());
        assert_eq!(store.ledger(), Some(&ledger));
        assert_eq!(store.next_round_id(), 4, "after the published rounds");
        // The file itself is in safetensors' name order; only the manifest
        // entry keeps z, a, m.
        let bytes = fs::read(dir.join(model_file(4))).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.offset_keys(), ["a", "m", "z"]);
    }

    #[test]
    fn crash_leftovers_are_removed_and_the_last_model_survives() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let m = model(1.0);
        Store::open(dir).unwrap().init_model(&m).unwrap();
        // Crashes mid manifest write, mid record write, and between the
        // model file and the manifest of version 2.
        let leftovers = [
            "manifest.json.tmp",
            "rounds/round-000001.json.tmp",
            "models/model-000002.safetensors",
        ];
        for file in leftovers {
            fs::write(dir.join(file), b"{garbage").unwrap();
        }
        let store = Store::open(dir).unwrap();
        for file in leftovers {
            assert!(!dir.join(file).exists(), "{file}");
        }
        assert_eq!(bits(&store.latest_model().unwrap().1), bits(&m));
        drop(store);
        // A model file no crash can leave is not deleted but reported.
        fs::write(dir.join("models/model-000007.safetensors"), b"x").unwrap();
        assert!(err(dir).contains("model-000007.safetensors"));
    }

    #[test]
    fn corruption_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        Store::open(dir).unwrap().init_model(&model(1.0)).unwrap();
        let manifest = fs::read(dir.join(MANIFEST)).unwrap();

        let file = dir.join(model_file(1));
        let mut bytes = fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&file, &bytes).unwrap();
        let e = err(dir);
        assert!(
            e.contains("model-000001.safetensors") && e.contains("SHA-256"),
            "{e}"
        );
        bytes[last] ^= 1;
        fs::write(&file, &bytes).unwrap();
        Store::open(dir).unwrap();

        fs::write(dir.join(MANIFEST), b"not json").unwrap();
        assert!(err(dir).contains("manifest.json is corrupt"));
        fs::write(dir.join(MANIFEST), br#"{"format": 2, "anything": []}"#).unwrap();
        assert!(matches!(
            Store::open(dir),
            Err(StoreError::Format {
                found: 2,
                expected: 1,
                ..
            })
        ));
        // An entry pointing outside its own file name.
        let text = String::from_utf8(manifest.clone()).unwrap();
        let moved = text.replace("models/model-000001", "../model-000001");
        fs::write(dir.join(MANIFEST), moved).unwrap();
        assert!(err(dir).contains("manifest.json is corrupt: version 1 names file"));
        fs::write(dir.join(MANIFEST), &manifest).unwrap();
        fs::write(dir.join(LEDGER), b"{}").unwrap();
        assert!(err(dir).contains("ledger.json is corrupt"));
    }

    /// A data directory with the initial model and round 1 published and
    /// charged (central DP); returns the ledger as written.
    fn one_charged_round(dir: &Path) -> PrivacyLedger {
        let mut store = Store::open(dir).unwrap();
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

    #[test]
    fn a_lost_ledger_is_refused_rather_than_undercounted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ledger = one_charged_round(dir);
        let saved = fs::read(dir.join(LEDGER)).unwrap();
        fs::remove_file(dir.join(LEDGER)).unwrap();
        let e = err(dir);
        assert!(e.contains("ledger.json") && e.contains("round 1"), "{e}");
        // Rolled back to a ledger without round 1.
        let empty = PrivacyLedger::new(8.0, 1e-5).unwrap();
        fs::write(dir.join(LEDGER), to_json(&empty)).unwrap();
        assert!(err(dir).contains("does not record round 1"));
        fs::write(dir.join(LEDGER), saved).unwrap();
        let mut store = Store::open(dir).unwrap();
        assert_eq!(store.ledger(), Some(&ledger));
        // Nor can a publication replace the ledger with one that forgets
        // round 1.
        let mut fresh = PrivacyLedger::new(8.0, 1e-5).unwrap();
        fresh
            .record(2, gaussian(), Adversary::ModelConsumers)
            .unwrap();
        let e = store.publish(&publication(&model(2.0), 2, Some(&fresh)));
        assert!(matches!(e, Err(StoreError::Refused { .. })), "{e:?}");
        assert_eq!(store.ledger(), Some(&ledger));
    }

    /// The record a round gets when it opens.
    fn started(round: u64) -> RoundRecord {
        RoundRecord {
            round,
            outcome: RoundOutcome::Started,
            clients: 5,
            survivors: 0,
            dropped: 0,
            threshold: 3,
            stage: None,
            reason: None,
            model_version: None,
            started_at_unix_ms: 0,
            seconds: 0.0,
        }
    }

    #[test]
    fn a_round_killed_after_publishing_is_completed_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut store = Store::open(dir).unwrap();
        let m = model(1.0);
        store.init_model(&m).unwrap();
        let record = started(1);
        store.record_round(&record).unwrap();
        // The model of round 1 is published, then the process dies before
        // the record says so.
        store.publish(&publication(&m, 1, None)).unwrap();
        drop(store);
        let store = Store::open(dir).unwrap();
        let r = &store.rounds()[0];
        assert_eq!(r.outcome, RoundOutcome::Completed);
        assert_eq!(r.model_version, Some(2));
        assert_eq!((r.survivors, r.dropped), (3, 1));
    }

    #[test]
    fn started_rounds_become_interrupted_and_ids_are_not_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut store = Store::open(dir).unwrap();
        assert_eq!(store.next_round_id(), 1);
        let mut record = started(1);
        store.record_round(&record).unwrap();
        record.outcome = RoundOutcome::Aborted;
        store.record_round(&record).unwrap();
        record.round = 2;
        record.outcome = RoundOutcome::Started;
        store.record_round(&record).unwrap();
        record.round = 0;
        assert!(matches!(
            store.record_round(&record),
            Err(StoreError::Refused { .. })
        ));
        assert_eq!(store.next_round_id(), 3);
        drop(store);
        let text = fs::read_to_string(dir.join("rounds/round-000002.json")).unwrap();
        assert!(text.contains(r#""outcome": "started""#), "{text}");
        assert_eq!(
            inspect(dir).unwrap().rounds[1].outcome,
            RoundOutcome::Started,
            "inspect changes nothing"
        );

        let store = Store::open(dir).unwrap();
        let outcomes: Vec<_> = store.rounds().iter().map(|r| r.outcome).collect();
        assert_eq!(outcomes, [RoundOutcome::Aborted, RoundOutcome::Interrupted]);
        assert_eq!(store.next_round_id(), 3);
        let text = fs::read_to_string(dir.join("rounds/round-000002.json")).unwrap();
        assert!(text.contains(r#""outcome": "interrupted""#), "{text}");
        drop(store);
        // A record in another round's file.
        fs::copy(
            dir.join("rounds/round-000002.json"),
            dir.join("rounds/round-000009.json"),
        )
        .unwrap();
        assert!(err(dir).contains("round-000009.json is corrupt: holds round 2"));
    }

    #[test]
    fn unusable_directories_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("plain-file");
        fs::write(&file, b"x").unwrap();
        let e = err(&file);
        assert!(
            e.contains("plain-file") && e.contains("not a directory"),
            "{e}"
        );
        // Someone's directory, not ours: left alone.
        fs::write(tmp.path().join("notes.txt"), b"x").unwrap();
        let e = err(tmp.path());
        assert!(
            e.contains("notes.txt") && e.contains("not a usable data directory"),
            "{e}"
        );
        assert!(!tmp.path().join(MODELS).exists());
        // An existing empty directory is fine.
        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).unwrap();
        Store::open(&empty).unwrap();
        assert!(empty.join(MODELS).is_dir() && empty.join(ROUNDS).is_dir());
    }

    #[test]
    fn momentum_is_kept_with_its_version_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut store = Store::open(dir).unwrap();
        let m = model(0.0);
        store.init_model(&m).unwrap();
        let v = vec![0.5f32; m.dim()];
        let with_velocity = |round| Publication {
            velocity: Some(&v),
            ..publication(&m, round, None)
        };
        store.publish(&with_velocity(1)).unwrap();
        drop(store);
        let mut store = Store::open(dir).unwrap();
        assert_eq!(store.velocity(), Some(v.clone()));
        // A momentum file of another version (as a crash between the
        // momentum and the manifest write leaves) is dropped, not used.
        let stale = fs::read(dir.join(MOMENTUM)).unwrap();
        store.publish(&publication(&m, 2, None)).unwrap();
        assert!(
            !dir.join(MOMENTUM).exists(),
            "no velocity, no momentum file"
        );
        assert_eq!(store.velocity(), None);
        drop(store);
        fs::write(dir.join(MOMENTUM), stale).unwrap();
        assert_eq!(Store::open(dir).unwrap().velocity(), None);
        assert!(!dir.join(MOMENTUM).exists());
    }

    #[test]
    fn bad_publications_write_nothing_and_failed_ones_poison() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut store = Store::open(dir).unwrap();
        let m = model(0.0);
        store.init_model(&m).unwrap();
        let short = [0.0f32; 2];
        let mut nan = m.clone();
        nan.params[1] = f32::NAN;
        let bad = [
            Publication {
                velocity: Some(&short),
                ..publication(&m, 1, None)
            },
            publication(&m, 0, None),
            publication(&nan, 1, None),
            Publication {
                epsilon: 0.3,
                ..publication(&m, 1, None)
            },
            Publication {
                delta: f64::NAN,
                ..publication(&m, 1, None)
            },
        ];
        for p in &bad {
            assert!(
                matches!(store.publish(p), Err(StoreError::Refused { .. })),
                "{p:?}"
            );
        }
        assert_eq!(store.models().len(), 1);
        assert_eq!(fs::read_dir(dir.join(MODELS)).unwrap().count(), 1);
        assert!(!dir.join(LEDGER).exists());

        // A write that fails after the ledger: the ledger is on disk
        // (over-recorded, never under), later publications are refused
        // until a reopen reconciles the directory.
        let mut ledger = PrivacyLedger::new(8.0, 1e-5).unwrap();
        ledger
            .record(1, gaussian(), Adversary::ModelConsumers)
            .unwrap();
        fs::rename(dir.join(MODELS), dir.join("models-away")).unwrap();
        fs::write(dir.join(MODELS), b"").unwrap();
        let e = store
            .publish(&publication(&m, 1, Some(&ledger)))
            .unwrap_err();
        assert!(matches!(e, StoreError::Io { .. }), "{e}");
        assert!(matches!(
            store.publish(&publication(&m, 2, None)),
            Err(StoreError::Poisoned { .. })
        ));
        drop(store);
        fs::remove_file(dir.join(MODELS)).unwrap();
        fs::rename(dir.join("models-away"), dir.join(MODELS)).unwrap();
        let store = Store::open(dir).unwrap();
        assert_eq!(store.ledger(), Some(&ledger));
        assert_eq!(store.models().len(), 1);
        assert_eq!(store.next_round_id(), 2, "the ledger's round is not reused");
    }

    /// A data directory written before the ledger had adversaries: open
    /// migrates it to version 2 on disk, every entry marked, and inspect
    /// (read-only) shows the same migrated ledger without writing.
    #[test]
    fn a_version_1_ledger_is_migrated_on_open_and_marked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ledger = one_charged_round(dir);
        let v1 = format!(
            r#"{{"version": 1, "budget_epsilon": 8.0, "delta": 1e-5, "entries": [
                {{"round": 1, "mechanism": {{"kind": "gaussian", "noise_multiplier": 1.0, "sampling_rate": 1.0}},
                  "epsilon_spent": {}}}]}}"#,
            ledger.spent()
        );
        fs::write(dir.join(LEDGER), &v1).unwrap();
        let seen = inspect(dir).unwrap().ledger.unwrap();
        assert!(seen.migrated());
        assert_eq!(
            fs::read_to_string(dir.join(LEDGER)).unwrap(),
            v1,
            "inspect writes nothing"
        );
        let store = Store::open(dir).unwrap();
        let migrated = store.ledger().unwrap();
        assert_eq!(migrated.entries()[0].adversary, Adversary::ModelConsumers);
        assert_eq!(migrated.entries()[0].migrated_from, Some(1));
        assert_eq!(migrated.spent(), ledger.spent());
        let text = fs::read_to_string(dir.join(LEDGER)).unwrap();
        assert!(
            text.contains(r#""version": 2"#) && text.contains(r#""migrated_from": 1"#),
            "{text}"
        );
    }
}
