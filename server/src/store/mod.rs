//! The server's durable state, all in one data directory:
//!
//! ```text
//! DATA_DIR/
//!   manifest.json                     {"format": 1, "models": [ModelEntry...]}: the commit point
//!   models/model-000001.safetensors   one file per published version (F32 tensors,
//!                                     metadata {"version", "round"})
//!   models/momentum-000002.safetensors  the FedAvgM velocity published with that
//!                                     version (optional; its SHA-256 in the entry)
//!   models/optimizer-000002.safetensors the adaptive optimizer's moments m and v
//!                                     (FedAdam/FedYogi/FedAdagrad; optional, the same)
//!   rounds/round-000042.json          one RoundRecord per round ever opened
//!   ledger.json                       the privacy ledger (DP on), layout version 2
//!   audit.jsonl                       the audit log: security-relevant events, appended
//! ```
//!
//! The ledger, the manifest, the round records and the audit log carry
//! HMAC-SHA256 tags under the **state key**, a secret kept outside the
//! data directory ([`StateKey`]): each record is chained to the one before
//! it, each manifest entry to its model file's SHA-256 and its round's
//! charge in the ledger, each round record to the model it published (see
//! `integrity`). Open verifies every tag and refuses, naming the file and
//! the entry, anything edited by someone without the key. A directory an
//! older build wrote without tags is sealed as found only by
//! [`Store::migrate`] (`tessera migrate`: never by a server start, not
//! even one that generated the key), which records the sealing in the ledger and the audit
//! log. The key's holder can still rewrite history ([`hazmat`]).
//!
//! Every write goes through the store's [`Disk`] (the storage seam; tests
//! inject faults there): `NAME.tmp` in the same directory, fsynced,
//! renamed over `NAME`, and the directory fsynced: a crash at any instant
//! leaves either the old or the new file, never a torn one. A round's
//! privacy charge is written (`Store::charge`) as soon as the server has
//! seen its sum, before anything that could fail on the way to publishing
//! it (noise, FedAvg, the model write): a sum the server saw is in the
//! ledger even if it is never published. A publication writes the ledger
//! first (privacy spent is never under-recorded), then the model file, the
//! momentum file and the optimizer file (FedAdam/FedYogi/FedAdagrad's m
//! and v) of the new version, then the manifest, which is what makes the
//! version visible. No write before that commit touches a file a
//! committed version uses, so a crash or a failed write at any step leaves
//! the previous version whole, momentum included; a failure before the
//! manifest's rename leaves the store usable (the next publication
//! rewrites the uncommitted files). The manifest entry lists the tensors in
//! the order of the version's flat vector (and of its momentum file's one
//! tensor): name order ([`crate::model`]). A version an earlier build
//! published in another order keeps its entry and files as written; open
//! reads its model by name and puts its momentum into name order, with a
//! warning and an audit event (`flat-order-changed`), and the next version
//! is published in name order.
//!
//! On open, leftovers of an interrupted write (`*.tmp`, the model and
//! momentum files of the version after the latest) are removed with a
//! warning, a round that was `started` but never finished becomes
//! `interrupted` (or `completed`, if the crash came after its model was
//! published but before its record was updated: the manifest is the
//! truth), and everything else is checked: manifest format and entries,
//! every model's and the latest momentum's SHA-256, tensors and metadata,
//! the ledger (which must record every round that spent privacy; a version
//! 1 ledger is migrated to version 2, with a warning, each entry marked
//! `migrated_from`), every round record, and that the records agree with
//! the manifest and that every round the audit log names has its record
//! (the last record's removal breaks no chain, and would let its round id
//! be reused). A file a round record refers to is never deleted: a record
//! that claims a version the manifest does not list (a rolled-back
//! manifest) stops the server with what to do, rather than letting it
//! publish a second model under that version. A `momentum.safetensors` of
//! the earlier layout is moved under its version if it is the latest
//! version's (logged), and refused otherwise. Anything wrong is an error
//! naming the file: the server refuses to run on state it cannot trust
//! rather than start over. A non-empty directory without a manifest that
//! holds anything a data directory never does is refused too, so a mistyped
//! path cannot turn someone's home directory into a data directory.
//!
//! The module is split by concern: `disk` (file names, JSON records,
//! leftovers; the atomic write and the storage seam are [`crate::files`]), `tensors` (the
//! safetensors encoding of models and momentum), `models` (the manifest and
//! the model files it lists), `rounds` (round records), `ledger` (the
//! privacy ledger's checks and migration), `recovery` ([`Store::open`]:
//! cleaning up and checking what a crash left) and `inspect` (the read-only
//! view); this file holds the [`Store`] and its writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tessera_dp::ledger::{Adversary, PrivacyLedger};

use crate::files::{Disk, Op, WriteError};
use crate::model::Model;

mod audit;
#[cfg(test)]
mod crash_tests;
mod disk;
mod ftrl;
mod inspect;
mod integrity;
mod ledger;
mod models;
mod optimizer;
mod recovery;
mod rounds;
#[cfg(test)]
mod tamper_tests;
mod tensors;
#[cfg(test)]
mod test_support;

pub use audit::{AUDIT, AuditEvent, AuditLog, AuditRecord};
pub use ftrl::FtrlRecord;
pub(crate) use ftrl::fresh_salt;
pub use inspect::{Inspection, inspect, read_audit};
pub use integrity::{STATE_KEY_FILE, StateKey, StateKeyError};
pub use models::{MANIFEST_FORMAT, ModelEntry, StateFile};
pub use optimizer::OptimizerState;
pub use recovery::Migration;
pub use rounds::{CohortRecord, ExtrasRecord, FederatedEval, RoundRecord, RoundStatus, TreeStep};

use disk::{to_json, unix_ms};

/// What only a holder of the state key can do, and the server never does:
/// rewrite history. It exists because an operator holding the key *can*
/// (the MACs stop editors without the key, not the key's holder), so the
/// tests show it, and tools that must repair a directory say so.
pub mod hazmat {
    use std::path::Path;

    use tessera_dp::ledger::PrivacyLedger;

    use super::disk::to_json;
    use super::models::{read_manifest, seal};
    use super::{LEDGER, MANIFEST, StateKey, StoreError, ledger};
    use crate::files::{Disk, write_atomic};

    /// Replaces the data directory's ledger with `new`, sealed under
    /// `key`, and re-tags the manifest against it: afterwards the
    /// directory opens as if `new` had always been its ledger.
    pub fn rewrite_ledger(
        dir: &Path,
        key: &StateKey,
        new: &PrivacyLedger,
    ) -> Result<(), StoreError> {
        ledger::write(&Disk::real(), &dir.join(LEDGER), key, new)?;
        let path = dir.join(MANIFEST);
        if path.exists() {
            let mut manifest = read_manifest(&path)?;
            manifest.mac = Some(seal(key, &manifest, |round| {
                ledger::charge_binding(Some(new), round)
            }));
            write_atomic(&path, &to_json(&manifest))?;
        }
        Ok(())
    }
}
use models::{Manifest, model_file, momentum_file};
use rounds::round_file;

const MANIFEST: &str = "manifest.json";
const LEDGER: &str = "ledger.json";
/// The momentum file of the layout before momentum was kept per version;
/// open migrates it.
const LEGACY_MOMENTUM: &str = "momentum.safetensors";
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
    /// The data directory holds records without MACs: written by a build
    /// that did not authenticate them (migrate it), or stripped of them.
    #[error(
        "{path} holds records without MACs ({what}). If an older build wrote it, seal it as found with `tessera migrate --data-dir {path}` (recorded in its ledger and audit log); if it was authenticated before, its MACs were removed: restore it from a backup",
        path = path.display()
    )]
    Unauthenticated {
        /// The data directory.
        path: PathBuf,
        /// Which files.
        what: String,
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
    /// The data directory's files contradict each other (a manifest
    /// rolled back, a round record that claims another version, a momentum
    /// file of another version); `what` names the other file and says what
    /// to do.
    #[error("{path}: {what}")]
    Inconsistent {
        /// The file found inconsistent.
        path: PathBuf,
        /// With what, and what to do.
        what: String,
    },
    /// An earlier publication failed after its manifest was renamed into
    /// place but before that was durable: whether the version survives a
    /// power cut is only known after reopening, which reconciles it.
    #[error("an earlier write to {path} failed part-way; reopen the data directory")]
    Poisoned {
        /// The data directory.
        path: PathBuf,
    },
}

impl From<WriteError> for StoreError {
    fn from(e: WriteError) -> Self {
        StoreError::Io {
            path: e.path,
            source: e.source,
        }
    }
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

/// What [`Store::publish`] writes: the next version's model and what the
/// manifest says about it.
#[derive(Debug)]
pub(crate) struct Publication<'a> {
    /// The new global model.
    pub(crate) model: &'a Model,
    /// The round that produced it; after the latest version's round.
    pub(crate) round: u64,
    /// Clients in its sum.
    pub(crate) survivors: u32,
    /// Clients of the round not in its sum.
    pub(crate) dropped: u32,
    /// Privacy spent so far; if positive, the ledger (this one or the
    /// stored one) must record `round`.
    pub(crate) epsilon: f64,
    /// Its delta.
    pub(crate) delta: f64,
    /// The ledger including this round, if DP is on.
    pub(crate) ledger: Option<&'a PrivacyLedger>,
    /// The momentum buffer after this round, if any; `model.dim()` long.
    pub(crate) velocity: Option<&'a [f32]>,
    /// The adaptive optimizer's state after this round, if any.
    pub(crate) optimizer: Option<&'a OptimizerState>,
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
    optimizer: Option<OptimizerState>,
    poisoned: bool,
    /// Every write goes through it (a fault plan in tests).
    disk: Disk,
    /// What authenticates the records ([`integrity`]).
    seal: Seal,
    /// DP-FTRL's state (`ftrl.json`), if any.
    ftrl: Option<FtrlRecord>,
}

/// The store's authentication state: the key, the round records' tags
/// (parallel to `Store::rounds`) and the audit log.
#[derive(Debug)]
struct Seal {
    key: StateKey,
    round_tags: Vec<integrity::Tag>,
    audit: Arc<AuditLog>,
}

impl Store {
    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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
            Some(entry) => Ok(Some((entry.clone(), models::read_model(&self.dir, entry)?))),
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
    pub(crate) fn next_round_id(&self) -> u64 {
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

    /// The audit log, to record events the store does not see itself
    /// (evictions, token reloads).
    pub fn audit_log(&self) -> Arc<AuditLog> {
        Arc::clone(&self.seal.audit)
    }

    /// The privacy ledger, if one was written.
    pub fn ledger(&self) -> Option<&PrivacyLedger> {
        self.ledger.as_ref()
    }

    /// Whom the epsilon of a version published by `round` holds against:
    /// the weakest adversary of the ledger's entries up to that round (one
    /// central round, and the total no longer holds against the server,
    /// whatever the later rounds ran); `None` when nothing was charged.
    pub fn epsilon_against(&self, round: u64) -> Option<Adversary> {
        let entries = self.ledger.as_ref()?.entries();
        let upto = entries.partition_point(|e| e.round <= round);
        PrivacyLedger::weakest(&entries[..upto])
    }

    /// The momentum buffer persisted with the latest version, if any.
    pub fn velocity(&self) -> Option<Vec<f32>> {
        self.velocity.clone()
    }

    /// The adaptive optimizer's state persisted with the latest version,
    /// if any.
    pub fn optimizer_state(&self) -> Option<&OptimizerState> {
        self.optimizer.as_ref()
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
            optimizer: None,
        })
    }

    /// Writes (or rewrites) a round's record: `started` when the round
    /// opens, then its outcome.
    pub(crate) fn record_round(&mut self, record: &RoundRecord) -> Result<(), StoreError> {
        if record.round == 0 {
            return Err(refused("round 0 is the initial model's, not a round"));
        }
        let (i, inserted) = match self.rounds.binary_search_by_key(&record.round, |r| r.round) {
            Ok(i) => (i, false),
            Err(i) => {
                self.rounds.insert(i, record.clone());
                self.seal.round_tags.insert(i, integrity::GENESIS);
                (i, true)
            }
        };
        let previous = self.rounds[i].clone();
        self.rounds[i] = record.clone();
        // The chain links rounds by number, not by content: rewriting a
        // record (its outcome) leaves later records valid; only a record
        // inserted before others (never done by the server) moves their
        // links.
        let last = if inserted { self.rounds.len() } else { i + 1 };
        let previous = (!inserted).then_some(previous);
        for j in i..last {
            if let Err(e) = self.write_record(j) {
                // Memory keeps what the disk holds: a round whose record
                // could not be written does not exist (its id is reused).
                self.forget_unwritten(i, inserted, previous);
                return Err(e);
            }
        }
        if record.outcome == RoundStatus::Aborted {
            self.seal.audit.record(AuditEvent::RoundAborted {
                round: record.round,
                stage: record.stage.clone().unwrap_or_default(),
                reason: record.reason.clone().unwrap_or_default(),
                survivors: record.survivors,
            });
        }
        Ok(())
    }

    /// Undoes [`Store::record_round`]'s change in memory after its write
    /// failed.
    fn forget_unwritten(&mut self, i: usize, inserted: bool, previous: Option<RoundRecord>) {
        if inserted {
            self.rounds.remove(i);
            self.seal.round_tags.remove(i);
        } else if let Some(previous) = previous {
            self.rounds[i] = previous;
        }
    }

    /// Writes the `i`th round record, tagged after the link of the one
    /// before it ([`rounds::link`]).
    fn write_record(&mut self, i: usize) -> Result<(), StoreError> {
        let record = &self.rounds[i];
        let prev = if i == 0 {
            integrity::GENESIS
        } else {
            self.seal.round_tags[i - 1]
        };
        let (bytes, _) =
            rounds::sealed_bytes(&self.seal.key, &prev, record, &self.model_sha(record));
        let path = self.dir.join(ROUNDS).join(round_file(record.round));
        self.disk.write_atomic(&path, &bytes)?;
        self.seal.round_tags[i] = rounds::link(&self.seal.key, &prev, record.round);
        Ok(())
    }

    /// The SHA-256 of the model a round record says it published, as the
    /// record's tag binds it (empty if none, or not in the manifest).
    fn model_sha(&self, record: &RoundRecord) -> String {
        record
            .model_version
            .and_then(|v| self.manifest.models.iter().find(|m| m.version == v))
            .map(|m| m.sha256.clone())
            .unwrap_or_default()
    }

    /// Writes the ledger, sealed.
    fn write_ledger(&self, ledger: &PrivacyLedger) -> Result<(), StoreError> {
        ledger::write(&self.disk, &self.dir.join(LEDGER), &self.seal.key, ledger)
    }

    /// Writes the ledger with a round's charge, durably, before the round's
    /// model is made: a sum the server has seen must be in the ledger even
    /// if publishing it then fails. Refuses a ledger that does not extend
    /// the stored one. Runs even after a failed publication (the store is
    /// then poisoned for publications): recording privacy spent is always
    /// safe, and the write is atomic.
    pub(crate) fn charge(&mut self, ledger: &PrivacyLedger) -> Result<(), StoreError> {
        ledger::check_extends(ledger, self.ledger.as_ref())?;
        self.write_ledger(ledger)?;
        let known = self.ledger.as_ref().map_or(0, |l| l.entries().len());
        self.ledger = Some(ledger.clone());
        // After the ledger: a crash between the two leaves a charge the
        // log lacks, never one the ledger lacks. The log's copy is what
        // catches a ledger rolled back past a charge no publication binds.
        for entry in &ledger.entries()[known..] {
            self.seal.audit.append(AuditEvent::Charged {
                round: entry.round,
                epsilon: ledger.spent(),
            })?;
        }
        Ok(())
    }

    /// Writes the ledger with changed terms (a budget change or a δ
    /// recompute, made at start): the same charges, in order, with the same
    /// mechanisms (their ε may be restated at a new δ), and every recorded
    /// change kept. Refuses anything else.
    pub(crate) fn amend_terms(&mut self, ledger: &PrivacyLedger) -> Result<(), StoreError> {
        ledger::check_amends(ledger, self.ledger.as_ref())?;
        self.write_ledger(ledger)?;
        let known = self.ledger.as_ref().map_or(0, |l| l.changes().len());
        self.ledger = Some(ledger.clone());
        for c in &ledger.changes()[known..] {
            self.seal.audit.record(AuditEvent::TermsChanged {
                change: c.event.name().to_owned(),
                after_round: c.after_round,
                old: c.old,
                new: c.new,
            });
        }
        Ok(())
    }

    /// Publishes the next version (latest + 1). Checks first, so a bad
    /// request writes nothing; then writes the ledger, the model file, the
    /// momentum and the manifest, in that order. A write that fails before
    /// the manifest's rename leaves the store as it was (the next
    /// publication may succeed once the disk recovers: it rewrites the
    /// uncommitted files); one that fails after it leaves the store
    /// refusing publications until reopened.
    pub(crate) fn publish(&mut self, p: &Publication<'_>) -> Result<ModelEntry, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned {
                path: self.dir.clone(),
            });
        }
        self.check_publication(p)?;
        self.write_publication(p)
    }

    /// Whether a failed publication left the store unable to publish until
    /// it is reopened (see [`StoreError::Poisoned`]).
    pub(crate) fn poisoned(&self) -> bool {
        self.poisoned
    }

    /// Everything [`Store::publish`] refuses, checked before any write.
    fn check_publication(&self, p: &Publication<'_>) -> Result<(), StoreError> {
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
        if let Some(what) = p.optimizer.and_then(|o| o.fault(p.model.dim())) {
            return Err(refused(what));
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
        if ledger::unrecorded([(p.round, p.epsilon)], p.ledger.or(self.ledger.as_ref())).is_some() {
            return Err(refused(format!(
                "round {} spends privacy but no ledger records it",
                p.round
            )));
        }
        match p.ledger {
            Some(new) => ledger::check_extends(new, self.ledger.as_ref()),
            None => Ok(()),
        }
    }

    /// The writes of a publication, in the order that keeps a crash safe:
    /// ledger, model file, momentum, manifest (the commit point). Model and
    /// momentum go to files of the new version, so no write before the
    /// commit touches a file the committed versions use.
    fn write_publication(&mut self, p: &Publication<'_>) -> Result<ModelEntry, StoreError> {
        if let Some(ledger) = p.ledger {
            self.write_ledger(ledger)?;
            self.ledger = Some(ledger.clone());
        }
        let version = self.manifest.models.last().map_or(1, |m| m.version + 1);
        let file = model_file(version);
        let bytes = self.write_model_file(&file, version, p)?;
        let momentum = match p.velocity {
            Some(v) => Some(self.write_momentum(version, v)?),
            None => {
                self.remove_uncommitted(&momentum_file(version))?;
                None
            }
        };
        let optimizer = match p.optimizer {
            Some(state) => Some(self.write_optimizer(version, state)?),
            None => {
                self.remove_uncommitted(&optimizer::optimizer_file(version))?;
                None
            }
        };
        let entry = ModelEntry {
            version,
            round: p.round,
            survivors: p.survivors,
            dropped: p.dropped,
            epsilon: p.epsilon,
            delta: p.delta,
            file,
            sha256: hex::encode(Sha256::digest(&bytes)),
            tensors: p.model.tensors.clone(),
            published_at_unix_ms: unix_ms(),
            momentum,
            optimizer,
        };
        self.commit_manifest(&entry)?;
        self.seal.audit.record(AuditEvent::Published {
            round: entry.round,
            version: entry.version,
            model_sha256: entry.sha256.clone(),
            epsilon: entry.epsilon,
            delta: entry.delta,
        });
        self.latest = Some(p.model.clone());
        self.velocity = p.velocity.map(<[f32]>::to_vec);
        self.optimizer = p.optimizer.cloned();
        Ok(entry)
    }

    /// Writes the model file of `version` and returns its bytes (the
    /// manifest records their SHA-256).
    fn write_model_file(
        &self,
        file: &str,
        version: u64,
        p: &Publication<'_>,
    ) -> Result<Vec<u8>, StoreError> {
        let path = self.dir.join(file);
        let metadata = HashMap::from([
            ("version".to_owned(), version.to_string()),
            ("round".to_owned(), p.round.to_string()),
        ]);
        let bytes = tensors::encode(&path, &p.model.tensors, &p.model.params, metadata)?;
        self.disk.write_atomic(&path, &bytes)?;
        Ok(bytes)
    }

    /// Writes the momentum buffer of `version` to that version's file,
    /// tagged with the version; returns what the manifest entry records.
    fn write_momentum(&self, version: u64, velocity: &[f32]) -> Result<StateFile, StoreError> {
        let file = momentum_file(version);
        let path = self.dir.join(&file);
        let metadata = HashMap::from([("version".to_owned(), version.to_string())]);
        let spec = tensors::velocity_spec(velocity.len());
        let encoded = tensors::encode(&path, &spec, velocity, metadata)?;
        self.disk.write_atomic(&path, &encoded)?;
        Ok(StateFile {
            file,
            sha256: hex::encode(Sha256::digest(&encoded)),
        })
    }

    /// Writes the adaptive optimizer's state of `version` to that version's
    /// file; returns what the manifest entry records.
    fn write_optimizer(
        &self,
        version: u64,
        state: &OptimizerState,
    ) -> Result<StateFile, StoreError> {
        let file = optimizer::optimizer_file(version);
        let path = self.dir.join(&file);
        let encoded = optimizer::encode(&path, version, state)?;
        self.disk.write_atomic(&path, &encoded)?;
        Ok(StateFile {
            file,
            sha256: hex::encode(Sha256::digest(&encoded)),
        })
    }

    /// Removes a file of the version being published that an earlier,
    /// failed publication left (nothing refers to it), so the manifest
    /// never commits beside a file it does not list.
    fn remove_uncommitted(&self, file: &str) -> Result<(), StoreError> {
        let path = self.dir.join(file);
        if path.exists() {
            self.disk.remove_durably(&path)?;
        }
        Ok(())
    }

    /// Adds `entry` to the manifest on disk, which makes the version
    /// visible; on failure the manifest in memory is left as it was. A
    /// failure after the rename (the directory's fsync) leaves the new
    /// manifest visible but perhaps not durable: the store is poisoned.
    fn commit_manifest(&mut self, entry: &ModelEntry) -> Result<(), StoreError> {
        self.manifest.models.push(entry.clone());
        let old_mac = self.manifest.mac.clone();
        if let Err(e) = self.write_manifest() {
            self.manifest.models.pop();
            self.manifest.mac = old_mac;
            if e.op == Op::Fsync && e.path == self.dir {
                self.poisoned = true;
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// The manifest's tags as they are now, bound to the ledger's charges.
    fn manifest_seal(&self) -> models::ManifestMacs {
        models::seal(&self.seal.key, &self.manifest, |round| {
            ledger::charge_binding(self.ledger.as_ref(), round)
        })
    }

    /// Writes the manifest in memory to disk, re-tagged.
    fn write_manifest(&mut self) -> Result<(), WriteError> {
        self.manifest.mac = Some(self.manifest_seal());
        self.disk
            .write_atomic(&self.dir.join(MANIFEST), &to_json(&self.manifest))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use safetensors::tensor::SafeTensors;
    use tessera_dp::ledger::Adversary;

    use super::test_support::{bits, gaussian, key, model, publication};
    use super::*;
    use crate::model::TensorSpec;

    #[test]
    fn models_ledger_and_tensor_order_survive_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut store = Store::open(&dir, &key()).unwrap();
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

        let store = Store::open(&dir, &key()).unwrap();
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
        // The model was given as z, a, m; the flat vector, the manifest
        // entry and the file are all in name order.
        let bytes = fs::read(dir.join(model_file(4))).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.offset_keys(), ["a", "m", "z"]);
        let names: Vec<&str> = store.models()[3]
            .tensors
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["a", "m", "z"]);
    }

    /// Whom a version's epsilon holds against is the weakest adversary of
    /// the ledger up to its round: one central round and every later
    /// version holds against the model's consumers only, however many
    /// distributed rounds follow.
    #[test]
    fn a_versions_epsilon_holds_against_the_weakest_adversary_so_far() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path(), &key()).unwrap();
        store.init_model(&model(0.0)).unwrap();
        assert_eq!(store.epsilon_against(0), None, "nothing charged");
        let mut ledger = PrivacyLedger::new(100.0, 1e-5).unwrap();
        let adversaries = [
            Adversary::Server,
            Adversary::ModelConsumers,
            Adversary::Server,
        ];
        for (round, adversary) in (1..).zip(adversaries) {
            ledger.record(round, gaussian(), adversary).unwrap();
            store
                .publish(&publication(&model(round as f32), round, Some(&ledger)))
                .unwrap();
        }
        let against: Vec<_> = (0..4).map(|r| store.epsilon_against(r)).collect();
        assert_eq!(
            against,
            [
                None,
                Some(Adversary::Server),
                Some(Adversary::ModelConsumers),
                Some(Adversary::ModelConsumers),
            ]
        );
    }

    /// `values` (laid out in `from`'s order) laid out in `to`'s, by name.
    fn relayout(from: &[TensorSpec], values: &[f32], to: &[TensorSpec]) -> Vec<f32> {
        let mut by_name = HashMap::new();
        let mut offset = 0;
        for t in from {
            by_name.insert(t.name.clone(), &values[offset..offset + t.len()]);
            offset += t.len();
        }
        to.iter().flat_map(|t| by_name[&t.name].to_vec()).collect()
    }

    /// A data directory whose latest version an earlier build published
    /// with its tensors in z, a, m order (its momentum file in that order
    /// too) opens with the model and the momentum in name order, each
    /// value following its tensor's name; the change is in the audit log,
    /// once, and the next version is published in name order.
    #[test]
    fn a_version_stored_in_another_order_is_read_in_name_order_values_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut store = Store::open(dir, &key()).unwrap();
        let m = model(0.0);
        store.init_model(&m).unwrap();
        let v: Vec<f32> = (0..m.dim()).map(|i| 100.0 + i as f32).collect();
        store
            .publish(&Publication {
                velocity: Some(&v),
                optimizer: None,
                ..publication(&m, 1, None)
            })
            .unwrap();
        // What the earlier build wrote: the entry lists z, a, m and the
        // momentum file holds its values in that order.
        let legacy: Vec<TensorSpec> = ["z", "a", "m"]
            .iter()
            .map(|n| m.tensors.iter().find(|t| t.name == *n).unwrap().clone())
            .collect();
        let old_velocity = relayout(&m.tensors, &v, &legacy);
        assert_ne!(old_velocity, v);
        let state = store.write_momentum(2, &old_velocity).unwrap();
        let latest = store.manifest.models.last_mut().unwrap();
        latest.tensors = legacy.clone();
        latest.momentum = Some(state);
        store.write_manifest().unwrap();
        drop(store);

        let flat_order_events = || {
            read_audit(dir, Some(&key()))
                .unwrap()
                .0
                .into_iter()
                .filter(|r| matches!(r.event, AuditEvent::FlatOrderChanged { .. }))
                .map(|r| r.event)
                .collect::<Vec<_>>()
        };
        let mut store = Store::open(dir, &key()).unwrap();
        let (entry, got) = store.latest_model().unwrap();
        assert_eq!(entry.tensors, legacy, "the manifest is left as written");
        assert_eq!(got.tensors, m.tensors, "name order in memory");
        assert_eq!(bits(&got), bits(&m), "each value under its name");
        assert_eq!(store.velocity(), Some(v.clone()), "momentum by name too");
        assert_eq!(
            flat_order_events(),
            [AuditEvent::FlatOrderChanged {
                version: 2,
                stored: vec!["z".into(), "a".into(), "m".into()],
            }]
        );
        store
            .publish(&Publication {
                velocity: Some(&v),
                optimizer: None,
                ..publication(&m, 2, None)
            })
            .unwrap();
        drop(store);
        let store = Store::open(dir, &key()).unwrap();
        assert_eq!(store.models()[2].tensors, m.tensors);
        assert_eq!(store.velocity(), Some(v));
        assert_eq!(flat_order_events().len(), 1, "recorded once");
        // The older version reads in name order as well.
        assert_eq!(store.model(2).unwrap().unwrap().1, m);
    }

    #[test]
    fn momentum_is_kept_with_its_version_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut store = Store::open(dir, &key()).unwrap();
        let m = model(0.0);
        store.init_model(&m).unwrap();
        let v = vec![0.5f32; m.dim()];
        let with_velocity = |round| Publication {
            velocity: Some(&v),
            optimizer: None,
            ..publication(&m, round, None)
        };
        store.publish(&with_velocity(1)).unwrap();
        drop(store);
        let mut store = Store::open(dir, &key()).unwrap();
        assert_eq!(store.velocity(), Some(v.clone()));
        // A publication without velocity has no momentum; the older
        // version keeps its file (the manifest lists it).
        store.publish(&publication(&m, 2, None)).unwrap();
        assert_eq!(store.velocity(), None);
        assert!(dir.join(momentum_file(2)).exists());
        assert!(!dir.join(momentum_file(3)).exists());
        drop(store);
        let store = Store::open(dir, &key()).unwrap();
        assert_eq!(store.velocity(), None);
        assert_eq!(
            store.models()[1].momentum.as_ref().unwrap().file,
            momentum_file(2)
        );
        assert!(store.models()[2].momentum.is_none());
    }

    #[test]
    fn bad_publications_write_nothing_and_failed_ones_poison() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut store = Store::open(dir, &key()).unwrap();
        let m = model(0.0);
        store.init_model(&m).unwrap();
        let short = [0.0f32; 2];
        let mut nan = m.clone();
        nan.params[1] = f32::NAN;
        let bad = [
            Publication {
                velocity: Some(&short),
                optimizer: None,
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
        // (over-recorded, never under), the store is as it was, and the
        // next publication succeeds once the disk recovers.
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
        assert!(!store.poisoned(), "nothing was committed");
        assert_eq!(store.models().len(), 1);
        assert_eq!(store.next_round_id(), 2, "the ledger's round is not reused");
        fs::remove_file(dir.join(MODELS)).unwrap();
        fs::rename(dir.join("models-away"), dir.join(MODELS)).unwrap();
        drop(store);
        let mut store = Store::open(dir, &key()).unwrap();
        assert_eq!(store.ledger(), Some(&ledger));
        assert_eq!(store.models().len(), 1);
        assert_eq!(store.next_round_id(), 2, "the ledger's round is not reused");
        assert_eq!(store.publish(&publication(&m, 2, None)).unwrap().version, 2);
        // A failure after the manifest's rename is the poisoning kind:
        // crash_tests plays it through the storage seam.
    }
}
