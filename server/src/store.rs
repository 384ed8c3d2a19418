//! The server's durable state, all in one data directory:
//!
//! ```text
//! DATA_DIR/
//!   manifest.json                     published models: the commit point
//!   models/model-000001.safetensors   one file per published version
//!   momentum.safetensors              FedAvgM velocity of the latest version (optional)
//!   rounds/round-000042.json          one record per round ever opened
//!   ledger.json                       the privacy ledger (central DP)
//! ```
//!
//! Every file is written to `NAME.tmp`, fsynced, renamed over `NAME`, and
//! the directory fsynced: a crash at any instant leaves either the old or
//! the new file, never a torn one. A publication writes the ledger first
//! (privacy spent is never under-recorded), then the model file, then the
//! manifest, which is what makes the version visible. On open, leftovers of
//! an interrupted write (`*.tmp`, a model file the manifest does not list)
//! are removed, a round that was `started` but never finished becomes
//! `interrupted`, and anything unreadable is an error naming the file: the
//! server refuses to run on state it cannot trust rather than start over.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tessera_aggregation::dp::ledger::PrivacyLedger;
use tracing::warn;

use crate::fedavg::{Model, TensorSpec};

/// The manifest format this build reads and writes.
pub const MANIFEST_FORMAT: u32 = 1;

/// The durable state cannot be read or written.
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
    /// `init_model` on a store that already has one.
    #[error("the data directory already holds a model")]
    ModelExists,
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
    /// The server stopped during the round.
    Interrupted,
}

/// The record of one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// The round id.
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

/// What [`Store::publish`] writes.
#[derive(Debug)]
pub struct Publication<'a> {
    /// The new global model.
    pub model: &'a Model,
    /// The round that produced it.
    pub round: u64,
    /// Clients in its sum.
    pub survivors: u32,
    /// Clients of the round not in its sum.
    pub dropped: u32,
    /// Privacy spent so far.
    pub epsilon: f64,
    /// Its delta.
    pub delta: f64,
    /// The ledger including this round, if DP is on.
    pub ledger: Option<&'a PrivacyLedger>,
    /// The momentum buffer after this round, if any.
    pub velocity: Option<&'a [f32]>,
}

/// The open data directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    manifest: Manifest,
    rounds: Vec<RoundRecord>,
    ledger: Option<PrivacyLedger>,
    latest: Option<Model>,
    velocity: Option<Vec<f32>>,
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes `bytes` to `path` atomically and durably.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut file = fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Makes a rename durable. Some platforms cannot open a directory for
/// syncing; only that failure is ignored.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    match fs::File::open(dir) {
        Ok(d) => match d.sync_all() {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
            Err(e) => Err(io(dir)(e)),
        },
        Err(e) => Err(io(dir)(e)),
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, StoreError> {
    let bytes = fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| corrupt(path, e.to_string()))
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn encode_tensors(
    tensors: &[TensorSpec],
    params: &[f32],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, String> {
    let mut buffers = Vec::with_capacity(tensors.len());
    let mut offset = 0;
    for t in tensors {
        buffers.push((t, f32_bytes(&params[offset..offset + t.len()])));
        offset += t.len();
    }
    let views = buffers
        .iter()
        .map(|(t, bytes)| {
            TensorView::new(Dtype::F32, t.shape.clone(), bytes)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())
}

fn decode_tensors(path: &Path, bytes: &[u8], order: &[TensorSpec]) -> Result<Vec<f32>, StoreError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| corrupt(path, e.to_string()))?;
    let mut params = Vec::with_capacity(order.iter().map(TensorSpec::len).sum());
    for spec in order {
        let view = st
            .tensor(&spec.name)
            .map_err(|e| corrupt(path, format!("tensor {}: {e}", spec.name)))?;
        if view.dtype() != Dtype::F32 || view.shape() != spec.shape.as_slice() {
            return Err(corrupt(
                path,
                format!("tensor {} is not f32 of shape {:?}", spec.name, spec.shape),
            ));
        }
        params.extend(
            view.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
        );
    }
    if st.len() != order.len() {
        return Err(corrupt(path, "tensors beyond those the manifest lists"));
    }
    Ok(params)
}

impl Store {
    /// Opens (creating if missing or empty) and checks a data directory.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        match fs::metadata(dir) {
            Ok(m) if !m.is_dir() => {
                return Err(corrupt(dir, "not a directory"));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(io(dir))?;
            }
            Err(e) => return Err(io(dir)(e)),
        }
        for sub in ["models", "rounds"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io(&p))?;
        }
        // Leftovers of interrupted writes.
        for sub in [dir.to_owned(), dir.join("models"), dir.join("rounds")] {
            for entry in fs::read_dir(&sub).map_err(io(&sub))? {
                let path = entry.map_err(io(&sub))?.path();
                if path.extension().is_some_and(|e| e == "tmp") {
                    warn!(file = %path.display(), "removing a half-written file");
                    fs::remove_file(&path).map_err(io(&path))?;
                }
            }
        }
        let manifest_path = dir.join("manifest.json");
        let manifest: Manifest = if manifest_path.exists() {
            read_json(&manifest_path)?
        } else {
            Manifest {
                format: MANIFEST_FORMAT,
                models: Vec::new(),
            }
        };
        if manifest.format != MANIFEST_FORMAT {
            return Err(StoreError::Format {
                path: manifest_path,
                found: manifest.format,
                expected: MANIFEST_FORMAT,
            });
        }
        let mut store = Store {
            dir: dir.to_owned(),
            manifest,
            rounds: Vec::new(),
            ledger: None,
            latest: None,
            velocity: None,
        };
        // Every listed model must be intact; the latest is kept in memory.
        let listed: std::collections::HashSet<String> = store
            .manifest
            .models
            .iter()
            .map(|m| m.file.clone())
            .collect();
        for entry in &store.manifest.models {
            let model = store.read_model(entry)?;
            store.latest = Some(model);
        }
        let models_dir = dir.join("models");
        for entry in fs::read_dir(&models_dir).map_err(io(&models_dir))? {
            let path = entry.map_err(io(&models_dir))?.path();
            let rel = format!(
                "models/{}",
                path.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
            );
            if !listed.contains(&rel) {
                warn!(file = %path.display(), "removing a model file the manifest never published");
                fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        let ledger_path = dir.join("ledger.json");
        if ledger_path.exists() {
            store.ledger = Some(read_json(&ledger_path)?);
        }
        let momentum = dir.join("momentum.safetensors");
        if momentum.exists()
            && let Some(latest) = &store.latest
        {
            let bytes = fs::read(&momentum).map_err(io(&momentum))?;
            let spec = [TensorSpec {
                name: "velocity".into(),
                shape: vec![latest.dim()],
            }];
            store.velocity = Some(decode_tensors(&momentum, &bytes, &spec)?);
        }
        let rounds_dir = dir.join("rounds");
        for entry in fs::read_dir(&rounds_dir).map_err(io(&rounds_dir))? {
            let path = entry.map_err(io(&rounds_dir))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let mut record: RoundRecord = read_json(&path)?;
                if record.outcome == RoundOutcome::Started {
                    record.outcome = RoundOutcome::Interrupted;
                    write_atomic(
                        &path,
                        &serde_json::to_vec_pretty(&record).expect("records serialise"),
                    )?;
                }
                store.rounds.push(record);
            }
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
                format!("SHA-256 is {digest}, the manifest says {}", entry.sha256),
            ));
        }
        let params = decode_tensors(&path, &bytes, &entry.tensors)?;
        Model::new(entry.tensors.clone(), params).map_err(|e| corrupt(&path, e.to_string()))
    }

    /// Every published model's entry, oldest first.
    pub fn models(&self) -> &[ModelEntry] {
        &self.manifest.models
    }

    /// The latest published model.
    pub fn latest_model(&self) -> Option<(ModelEntry, Model)> {
        let entry = self.manifest.models.last()?.clone();
        Some((entry, self.latest.clone()?))
    }

    /// A published model by version (0 = latest); `None` if there is none.
    pub fn model(&self, version: u64) -> Result<Option<(ModelEntry, Model)>, StoreError> {
        if version == 0 {
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

    /// The id of the next round: never one used before, even by a round
    /// that was interrupted, since round ids bind key derivations.
    pub fn next_round_id(&self) -> u64 {
        self.rounds.last().map_or(1, |r| r.round + 1)
    }

    /// The privacy ledger, if one was written.
    pub fn ledger(&self) -> Option<&PrivacyLedger> {
        self.ledger.as_ref()
    }

    /// The persisted momentum buffer.
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

    /// Writes (or rewrites) a round's record.
    pub fn record_round(&mut self, record: &RoundRecord) -> Result<(), StoreError> {
        let path = self
            .dir
            .join("rounds")
            .join(format!("round-{:06}.json", record.round));
        write_atomic(
            &path,
            &serde_json::to_vec_pretty(record).expect("records serialise"),
        )?;
        match self.rounds.iter_mut().find(|r| r.round == record.round) {
            Some(r) => *r = record.clone(),
            None => {
                self.rounds.push(record.clone());
                self.rounds.sort_by_key(|r| r.round);
            }
        }
        Ok(())
    }

    /// Publishes the next version: ledger, model file, momentum, manifest.
    pub fn publish(&mut self, p: &Publication<'_>) -> Result<ModelEntry, StoreError> {
        if let Some(ledger) = p.ledger {
            let path = self.dir.join("ledger.json");
            write_atomic(
                &path,
                &serde_json::to_vec_pretty(ledger).expect("ledgers serialise"),
            )?;
            self.ledger = Some(ledger.clone());
        }
        let version = self.manifest.models.last().map_or(1, |m| m.version + 1);
        let file = format!("models/model-{version:06}.safetensors");
        let path = self.dir.join(&file);
        let metadata = HashMap::from([
            ("version".to_owned(), version.to_string()),
            ("round".to_owned(), p.round.to_string()),
        ]);
        let bytes = encode_tensors(&p.model.tensors, &p.model.params, metadata)
            .map_err(|e| corrupt(&path, e))?;
        write_atomic(&path, &bytes)?;
        if let Some(v) = p.velocity {
            let path = self.dir.join("momentum.safetensors");
            let spec = [TensorSpec {
                name: "velocity".into(),
                shape: vec![v.len()],
            }];
            let bytes = encode_tensors(&spec, v, HashMap::new()).map_err(|e| corrupt(&path, e))?;
            write_atomic(&path, &bytes)?;
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
        let manifest_path = self.dir.join("manifest.json");
        if let Err(e) = write_atomic(
            &manifest_path,
            &serde_json::to_vec_pretty(&self.manifest).expect("manifests serialise"),
        ) {
            self.manifest.models.pop();
            return Err(e);
        }
        self.latest = Some(p.model.clone());
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

/// Reads a data directory without changing it.
pub fn inspect(dir: &Path) -> Result<Inspection, StoreError> {
    if !dir.is_dir() {
        return Err(corrupt(
            dir,
            "not a data directory (missing or not a directory)",
        ));
    }
    let manifest_path = dir.join("manifest.json");
    let models = if manifest_path.exists() {
        let m: Manifest = read_json(&manifest_path)?;
        if m.format != MANIFEST_FORMAT {
            return Err(StoreError::Format {
                path: manifest_path,
                found: m.format,
                expected: MANIFEST_FORMAT,
            });
        }
        m.models
    } else {
        Vec::new()
    };
    let mut rounds = Vec::new();
    let rounds_dir = dir.join("rounds");
    if rounds_dir.is_dir() {
        for entry in fs::read_dir(&rounds_dir).map_err(io(&rounds_dir))? {
            let path = entry.map_err(io(&rounds_dir))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                rounds.push(read_json::<RoundRecord>(&path)?);
            }
        }
    }
    rounds.sort_by_key(|r| r.round);
    let ledger_path = dir.join("ledger.json");
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
    use super::*;

    fn model(names: &[&str], base: f32) -> Model {
        let tensors: Vec<TensorSpec> = names
            .iter()
            .enumerate()
            .map(|(i, n)| TensorSpec {
                name: (*n).into(),
                shape: vec![2, i + 1],
            })
            .collect();
        let len = tensors.iter().map(TensorSpec::len).sum();
        let params = (0..len).map(|i| base + i as f32 * 0.25).collect();
        Model::new(tensors, params).unwrap()
    }

    fn publish(store: &mut Store, m: &Model, round: u64, ledger: Option<&PrivacyLedger>) -> u64 {
        store
            .publish(&Publication {
                model: m,
                round,
                survivors: 3,
                dropped: 1,
                epsilon: 0.5 * round as f64,
                delta: 1e-5,
                ledger,
                velocity: None,
            })
            .unwrap()
            .version
    }

    #[test]
    fn models_and_ledger_survive_a_reopen_in_tensor_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let mut store = Store::open(&path).unwrap();
        // Names that sort differently from their order in the vector.
        let m0 = model(&["z", "a", "m"], 0.0);
        store.init_model(&m0).unwrap();
        assert!(matches!(
            store.init_model(&m0),
            Err(StoreError::ModelExists)
        ));
        let mut ledger = PrivacyLedger::new(8.0, 1e-5).unwrap();
        let mut published = vec![m0];
        for round in 1..=3 {
            ledger
                .record(
                    round,
                    tessera_aggregation::dp::ledger::Mechanism::Gaussian {
                        noise_multiplier: 1.0,
                        sampling_rate: 1.0,
                    },
                )
                .unwrap();
            let m = model(&["z", "a", "m"], round as f32);
            assert_eq!(publish(&mut store, &m, round, Some(&ledger)), round + 1);
            published.push(m);
        }
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.models().len(), 4);
        for (i, m) in published.iter().enumerate() {
            let (entry, got) = store.model(i as u64 + 1).unwrap().unwrap();
            assert_eq!(&got, m, "version {}", entry.version);
        }
        assert_eq!(store.latest_model().unwrap().1, published[3]);
        assert_eq!(store.ledger(), Some(&ledger));
        assert!(store.model(9).unwrap().is_none());
    }

    #[test]
    fn leftovers_of_a_crash_are_cleaned_and_the_last_model_survives() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let m = model(&["w"], 1.0);
        store.init_model(&m).unwrap();
        drop(store);
        // A crash mid-manifest-write and one between model and manifest.
        fs::write(dir.path().join("manifest.json.tmp"), b"{garbage").unwrap();
        fs::write(dir.path().join("models/model-000002.safetensors"), b"half").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!dir.path().join("manifest.json.tmp").exists());
        assert!(!dir.path().join("models/model-000002.safetensors").exists());
        assert_eq!(store.latest_model().unwrap().1, m);
    }

    #[test]
    fn corruption_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.init_model(&model(&["w"], 1.0)).unwrap();
        drop(store);
        let file = dir.path().join("models/model-000001.safetensors");
        let mut bytes = fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&file, &bytes).unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("model-000001.safetensors") && err.contains("SHA-256"),
            "{err}"
        );

        fs::write(dir.path().join("manifest.json"), b"not json").unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("manifest.json"), "{err}");

        let file_not_dir = dir.path().join("plain-file");
        fs::write(&file_not_dir, b"x").unwrap();
        let err = Store::open(&file_not_dir).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn started_rounds_become_interrupted_and_ids_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.next_round_id(), 1);
        let record = RoundRecord {
            round: 1,
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
        };
        store.record_round(&record).unwrap();
        assert_eq!(store.next_round_id(), 2);
        drop(store);
        let before = inspect(dir.path()).unwrap();
        assert_eq!(
            before.rounds[0].outcome,
            RoundOutcome::Started,
            "inspect changes nothing"
        );
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.rounds()[0].outcome, RoundOutcome::Interrupted);
        assert_eq!(store.next_round_id(), 2);
        assert_eq!(
            inspect(dir.path()).unwrap().rounds[0].outcome,
            RoundOutcome::Interrupted
        );
    }

    #[test]
    fn momentum_is_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let m = model(&["w"], 0.0);
        store.init_model(&m).unwrap();
        let v = vec![0.5f32; m.dim()];
        store
            .publish(&Publication {
                model: &m,
                round: 1,
                survivors: 3,
                dropped: 0,
                epsilon: 0.0,
                delta: 0.0,
                ledger: None,
                velocity: Some(&v),
            })
            .unwrap();
        drop(store);
        assert_eq!(Store::open(dir.path()).unwrap().velocity(), Some(v));
    }
}
