//! Opening a data directory: what a crash can leave is cleaned up, a round
//! the crash interrupted is recorded as such, and everything else is
//! checked before the server trusts it (see the module docs of
//! [`crate::store`] for the list). Each step below is one concern of
//! [`Store::open`], in the order it runs.

use std::fs;
use std::path::Path;

use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tracing::warn;

use super::audit::{AUDIT, AuditEvent, AuditLog, AuditRecord};
use super::disk::{entries, file_name, remove_leftover, to_json, unix_ms};
use super::integrity::{GENESIS, StateKey};
use super::models::{
    self, Manifest, check_manifest, decode_momentum, model_file, momentum_file, read_manifest,
    read_model, read_momentum,
};
use super::optimizer;
use super::rounds::{self, record_files, round_file};
use super::{
    LEDGER, LEGACY_MOMENTUM, MANIFEST, MANIFEST_FORMAT, MODELS, ModelEntry, ROUNDS, RoundRecord,
    RoundStatus, Seal, StateFile, Store, StoreError, corrupt, io, ledger,
};
use crate::files::Disk;
use crate::model::{in_name_order, is_name_ordered};

/// A round record as read: its file, the record, its tag if it has one.
type Record = (PathBuf, RoundRecord, Option<String>);

/// What [`Store::migrate`] sealed: one line per file that had no MACs
/// (empty if the directory was already authenticated, or new).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migration {
    /// The files sealed as found, each with what it held.
    pub sealed: Vec<String>,
}

impl Store {
    /// Opens (creating if missing or empty) and checks a data directory;
    /// see the module docs for what is checked and what is cleaned up.
    /// Every record's MAC is verified under `key`; a directory holding
    /// records without MACs is refused ([`StoreError::Unauthenticated`]:
    /// see [`Store::migrate`]).
    pub fn open(dir: &Path, key: &StateKey) -> Result<Store, StoreError> {
        Store::open_with(dir, key, Disk::real())
    }

    /// [`Store::open`], with every write of the store going through `disk`
    /// (tests inject faults there).
    pub fn open_with(dir: &Path, key: &StateKey, disk: Disk) -> Result<Store, StoreError> {
        Ok(Self::open_sealing(dir, key, disk, false)?.0)
    }

    /// Opens a data directory as [`Store::open`] does, but seals what an
    /// older build wrote without MACs, as found: the ledger records a
    /// `sealed` change, the audit log a `migrated` event, and the log a
    /// warning; what the files held before cannot be vouched for. A
    /// directory with some records authenticated and others not is
    /// refused as tampered, never sealed. Returns what was sealed (nothing
    /// for an authenticated or a new directory).
    pub fn migrate(dir: &Path, key: &StateKey) -> Result<(Store, Migration), StoreError> {
        Self::migrate_with(dir, key, Disk::real())
    }

    /// [`Store::migrate`], with every write going through `disk`.
    pub fn migrate_with(
        dir: &Path,
        key: &StateKey,
        disk: Disk,
    ) -> Result<(Store, Migration), StoreError> {
        Self::open_sealing(dir, key, disk, true)
    }

    fn open_sealing(
        dir: &Path,
        key: &StateKey,
        disk: Disk,
        migrate: bool,
    ) -> Result<(Store, Migration), StoreError> {
        ensure_dir(&disk, dir)?;
        let manifest_path = dir.join(MANIFEST);
        if !manifest_path.exists() {
            refuse_foreign(dir)?;
        }
        probe_writable(&disk, dir)?;
        create_subdirs(&disk, dir)?;
        remove_half_written(&disk, dir)?;
        let manifest = load_manifest(&manifest_path)?;
        let (audit, audit_lines) = AuditLog::open(dir, key)?;
        let mut store = Store {
            dir: dir.to_owned(),
            manifest,
            rounds: Vec::new(),
            ledger: None,
            latest: None,
            velocity: None,
            optimizer: None,
            poisoned: false,
            disk,
            seal: Seal {
                key: key.clone(),
                round_tags: Vec::new(),
                audit: Arc::new(audit),
            },
            ftrl: None,
        };
        let records = store.read_records()?;
        // Before anything is removed: a record naming a version the
        // manifest does not list stops the start (a rolled-back manifest).
        store.check_rounds_against_manifest(&records)?;
        store.load_models()?;
        let opened = ledger::open(&dir.join(LEDGER), key)?;
        let ledger_unsealed = opened.as_ref().is_some_and(|o| o.unsealed);
        store.ledger = opened.map(|o| o.ledger);
        ledger::check_covers(&dir.join(LEDGER), store.ledger.as_ref(), &store.manifest)?;
        ledger::check_charges_logged(&dir.join(LEDGER), store.ledger.as_ref(), &audit_lines)?;
        let unsealed = store.unsealed(ledger_unsealed, &records);
        let sealed_any = store.manifest.mac.is_some()
            || store.ledger.as_ref().is_some_and(|_| !ledger_unsealed)
            || records.iter().any(|(_, _, mac)| mac.is_some())
            || !audit_lines.is_empty();
        let migration = match (unsealed.is_empty(), sealed_any, migrate) {
            (true, _, _) => Migration::default(),
            (false, true, _) => {
                return Err(StoreError::Corrupt {
                    path: dir.join(&unsealed[0].0),
                    what: "it has no MAC, but the data directory is authenticated: the MACs were removed (restore it from a backup)".into(),
                });
            }
            (false, false, false) => {
                return Err(StoreError::Unauthenticated {
                    path: dir.to_owned(),
                    what: unsealed
                        .iter()
                        .map(|(f, _)| f.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            (false, false, true) => Migration {
                sealed: unsealed
                    .into_iter()
                    .map(|(f, what)| format!("{f}: {what}"))
                    .collect(),
            },
        };
        if migration.sealed.is_empty() {
            store.verify_manifest()?;
        }
        ledger::check_epsilons(&manifest_path, store.ledger.as_ref(), &store.manifest)?;
        store.reconcile_rounds(records, &audit_lines, !migration.sealed.is_empty())?;
        if !migration.sealed.is_empty() {
            store.seal_found(&migration)?;
        }
        // After the sealing: the migrated manifest entry is tagged.
        store.migrate_legacy_momentum()?;
        store.velocity = match store.manifest.models.last() {
            Some(latest) => read_momentum(dir, latest)?,
            None => None,
        };
        store.optimizer = match store.manifest.models.last() {
            Some(latest) => optimizer::read(dir, latest)?,
            None => None,
        };
        store.adopt_name_order();
        store.ftrl = super::ftrl::open(dir, key, &store.manifest, store.ledger.as_ref())?;
        Ok((store, migration))
    }

    /// Checks the manifest's tags (after the ledger is read: each entry
    /// is bound to its round's charge).
    fn verify_manifest(&self) -> Result<(), StoreError> {
        let Some(macs) = &self.manifest.mac else {
            return Ok(());
        };
        models::verify(
            &self.dir.join(MANIFEST),
            &self.seal.key,
            &self.manifest,
            macs,
            |round| ledger::charge_binding(self.ledger.as_ref(), round),
        )
    }

    /// The files that hold records without MACs, each with what it holds.
    fn unsealed(&self, ledger_unsealed: bool, records: &[Record]) -> Vec<(String, String)> {
        let mut found = Vec::new();
        if self.manifest.mac.is_none() && !self.manifest.models.is_empty() {
            found.push((
                MANIFEST.to_owned(),
                format!("{} model versions", self.manifest.models.len()),
            ));
        }
        if ledger_unsealed && let Some(l) = &self.ledger {
            found.push((
                LEDGER.to_owned(),
                format!(
                    "{} charged rounds, epsilon {} spent",
                    l.entries().len(),
                    l.spent()
                ),
            ));
        }
        for (path, record, mac) in records {
            if mac.is_none() {
                found.push((
                    format!("{ROUNDS}/{}", file_name(path)),
                    format!("round {}, {:?}", record.round, record.outcome),
                ));
            }
        }
        found
    }

    /// Seals what a migration found: the ledger (recording the sealing in
    /// it), the manifest, and an audit event; round records were sealed
    /// by [`Store::reconcile_rounds`].
    fn seal_found(&mut self, migration: &Migration) -> Result<(), StoreError> {
        warn!(
            dir = %self.dir.display(),
            files = migration.sealed.len(),
            "sealing a data directory written without MACs, as found: what it held before cannot be vouched for"
        );
        if let Some(mut l) = self.ledger.take() {
            l.record_sealing(1, unix_ms() / 1000);
            ledger::migrate_layout(&self.disk, &self.dir.join(LEDGER), &self.seal.key, &l)?;
            self.ledger = Some(l);
        }
        if !self.manifest.models.is_empty() {
            self.manifest.mac = Some(self.manifest_seal());
            self.disk
                .write_atomic(&self.dir.join(MANIFEST), &to_json(&self.manifest))?;
        }
        self.seal.audit.append(AuditEvent::Migrated {
            sealed: migration.sealed.clone(),
        })
    }

    /// Reads every published model (each verified; the latest is kept) and
    /// checks the models directory holds nothing else, removing the model
    /// and momentum files of a publication that did not commit (no round
    /// record claims them: [`Store::check_rounds_against_manifest`] ran).
    fn load_models(&mut self) -> Result<(), StoreError> {
        for entry in &self.manifest.models {
            self.latest = Some(read_model(&self.dir, entry)?);
        }
        let next = self.latest_version() + 1;
        let uncommitted = [
            model_file(next),
            momentum_file(next),
            optimizer::optimizer_file(next),
        ];
        for path in entries(&self.dir.join(MODELS))? {
            let rel = format!("{MODELS}/{}", file_name(&path));
            if uncommitted.contains(&rel) {
                remove_leftover(
                    &self.disk,
                    &path,
                    "a file of a publication that did not commit",
                )?;
            } else if !self.manifest.models.iter().any(|m| lists(m, &rel)) {
                return Err(corrupt(
                    &path,
                    format!("{MANIFEST} does not list it; move it out of the data directory"),
                ));
            }
        }
        Ok(())
    }

    /// A latest version an earlier build published in another tensor
    /// order than name order: its model is already in name order in memory
    /// (models are read by name), and its momentum is put in the same
    /// order here, each value following its tensor's name, so a value
    /// means what it meant. The files stay as they are (the manifest entry
    /// says what order each version's momentum file has); the next
    /// version is published in name order. Logged and recorded in the
    /// audit log, because clients that flattened in the old order must
    /// now flatten in name order.
    fn adopt_name_order(&mut self) {
        let Some(latest) = self.manifest.models.last() else {
            return;
        };
        if is_name_ordered(&latest.tensors) {
            return;
        }
        if let Some(v) = self.velocity.take() {
            self.velocity = Some(in_name_order(&latest.tensors, &v).1);
        }
        if let Some(state) = self.optimizer.take() {
            self.optimizer = Some(optimizer::in_name_order(&latest.tensors, state));
        }
        let stored: Vec<String> = latest.tensors.iter().map(|t| t.name.clone()).collect();
        warn!(
            version = latest.version,
            "version {} lists its tensors in the order {stored:?}; this build lays the flat vector out in name order, so updates for the next round must be flattened in name order (the published values are unchanged)",
            latest.version
        );
        self.seal.audit.record(AuditEvent::FlatOrderChanged {
            version: latest.version,
            stored,
        });
    }

    fn latest_version(&self) -> u64 {
        self.manifest.models.last().map_or(0, |m| m.version)
    }

    /// Reads every round record (with its tag, if any) and checks each is
    /// in its own file; sorted by round.
    fn read_records(&self) -> Result<Vec<Record>, StoreError> {
        let mut records = Vec::new();
        for path in record_files(&self.dir.join(ROUNDS))? {
            let (record, mac) = rounds::read(&path)?;
            if record.round == 0 || file_name(&path) != round_file(record.round) {
                return Err(corrupt(&path, format!("holds round {}", record.round)));
            }
            records.push((path, record, mac));
        }
        records.sort_by_key(|(_, r, _)| r.round);
        Ok(records)
    }

    /// Verifies each record's tag in round order (or, migrating, seals
    /// it as found), checks that every round the audit log names has its
    /// record, and rewrites a `started` one with what the crash
    /// left: `completed` if its model was published, `interrupted`
    /// otherwise.
    fn reconcile_rounds(
        &mut self,
        records: Vec<Record>,
        audit: &[AuditRecord],
        migrate: bool,
    ) -> Result<(), StoreError> {
        let mut prev = GENESIS;
        for (path, record, mac) in records {
            if let (Some(mac), false) = (&mac, migrate) {
                rounds::verify(
                    &path,
                    &self.seal.key,
                    &prev,
                    &record,
                    &self.model_sha(&record),
                    mac,
                )?;
            }
            prev = rounds::link(&self.seal.key, &prev, record.round);
            self.rounds.push(record);
            self.seal.round_tags.push(prev);
        }
        self.check_audit_rounds_recorded(audit)?;
        for i in 0..self.rounds.len() {
            if self.rounds[i].outcome == RoundStatus::Started {
                let mut record = self.rounds[i].clone();
                self.finish_interrupted(&mut record);
                self.rounds[i] = record;
                self.write_record(i)?;
            } else if migrate {
                self.write_record(i)?;
            }
        }
        Ok(())
    }

    /// Every round the audit log names must have its record: the record is
    /// written when the round opens, before any event about it is
    /// appended. Removing the last record breaks no link (records chain
    /// forward), and would let the next round reuse its id, which binds
    /// the round's key derivations.
    fn check_audit_rounds_recorded(&self, audit: &[AuditRecord]) -> Result<(), StoreError> {
        for line in audit {
            let Some(round) = line.event.recorded_round() else {
                continue;
            };
            if self
                .rounds
                .binary_search_by_key(&round, |r| r.round)
                .is_err()
            {
                return Err(StoreError::Inconsistent {
                    path: self.dir.join(ROUNDS).join(round_file(round)),
                    what: format!(
                        "it is missing, but {AUDIT} (line {}) names round {round}: a round record was removed. Restore it from a backup; the server will not reuse the round's id",
                        line.seq
                    ),
                });
            }
        }
        Ok(())
    }

    /// Every round record must agree with the manifest: a completed round
    /// names the version the manifest gives it, an aborted or interrupted
    /// one has none. A record that claims a version the manifest does not
    /// list means the manifest was rolled back: deleting that version's
    /// files and publishing another model under its number would give two
    /// rounds one version, so the store refuses to start.
    fn check_rounds_against_manifest(&self, records: &[Record]) -> Result<(), StoreError> {
        for (_, record, _) in records {
            if let Some(what) = self.record_fault(record) {
                return Err(StoreError::Inconsistent {
                    path: self.dir.join(ROUNDS).join(round_file(record.round)),
                    what,
                });
            }
        }
        Ok(())
    }

    /// What `record` says that the manifest contradicts, and what to do.
    fn record_fault(&self, record: &RoundRecord) -> Option<String> {
        let r = record.round;
        let published = self.manifest.models.iter().find(|m| m.round == r);
        let latest = self.latest_version();
        match (record.outcome, record.model_version, published) {
            (RoundStatus::Completed, Some(v), _) if v > latest => Some(format!(
                "it says round {r} published version {v}, but {MANIFEST} lists versions up to {latest}: the manifest was rolled back or replaced. Restore the {MANIFEST} that lists version {v} (from a backup), or move the data directory aside and start a new one; the server will not publish a second version {v}"
            )),
            (RoundStatus::Completed, Some(v), Some(m)) if m.version == v => None,
            (RoundStatus::Completed, Some(v), _) => Some(format!(
                "it says round {r} published version {v}, but {MANIFEST} gives version {v} to another round: restore the data directory from a backup"
            )),
            (RoundStatus::Completed, None, _) => Some(format!(
                "it says round {r} completed but names no model version: restore it from a backup"
            )),
            (RoundStatus::Aborted | RoundStatus::Interrupted, _, Some(m)) => Some(format!(
                "it says round {r} was {}, but {MANIFEST} lists version {} from it: restore the round record or the manifest from a backup",
                outcome_name(record.outcome),
                m.version
            )),
            _ => None,
        }
    }

    /// Moves a `momentum.safetensors` of the earlier layout under its
    /// version, with its SHA-256 in the manifest, and says so in the log.
    /// Only the latest version's momentum is migrated; one of another
    /// version is refused, never dropped (see
    /// [`super::models::decode_momentum`]).
    fn migrate_legacy_momentum(&mut self) -> Result<(), StoreError> {
        let legacy = self.dir.join(LEGACY_MOMENTUM);
        if !legacy.exists() {
            return Ok(());
        }
        let Some(latest) = self.manifest.models.last() else {
            return Err(StoreError::Inconsistent {
                path: legacy,
                what: "no version is published that it could belong to; move it out of the data directory".into(),
            });
        };
        let bytes = fs::read(&legacy).map_err(io(&legacy))?;
        decode_momentum(&legacy, &bytes, latest)?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let file = momentum_file(latest.version);
        match &latest.momentum {
            // A crash between the manifest write and the removal below.
            Some(state) if state.sha256 == sha256 => {}
            Some(state) => {
                return Err(StoreError::Inconsistent {
                    path: legacy,
                    what: format!(
                        "version {} already has its momentum in {}, with other values; move this file out of the data directory",
                        latest.version, state.file
                    ),
                });
            }
            None => {
                self.disk.write_atomic(&self.dir.join(&file), &bytes)?;
                let last = self.manifest.models.len() - 1;
                self.manifest.models[last].momentum = Some(StateFile {
                    file: file.clone(),
                    sha256,
                });
                self.write_manifest()?;
            }
        }
        self.disk.remove_durably(&legacy)?;
        warn!(
            from = %legacy.display(),
            to = %self.dir.join(&file).display(),
            version = self.latest_version(),
            "migrated the momentum to its version's file; its SHA-256 is now in the manifest"
        );
        Ok(())
    }

    /// The outcome of a round the server stopped during. The manifest is
    /// the truth: killed between publishing the model and recording the
    /// round, the version is visible, so the round completed.
    fn finish_interrupted(&self, record: &mut RoundRecord) {
        match self
            .manifest
            .models
            .iter()
            .find(|m| m.round == record.round)
        {
            Some(model) => {
                record.outcome = RoundStatus::Completed;
                record.model_version = Some(model.version);
                record.survivors = model.survivors;
                record.dropped = model.dropped;
            }
            None => record.outcome = RoundStatus::Interrupted,
        }
    }
}

/// Whether the manifest entry `m` lists the file `rel`.
fn lists(m: &ModelEntry, rel: &str) -> bool {
    m.file == rel
        || m.momentum.as_ref().is_some_and(|s| s.file == rel)
        || m.optimizer.as_ref().is_some_and(|s| s.file == rel)
}

fn outcome_name(outcome: RoundStatus) -> &'static str {
    match outcome {
        RoundStatus::Started => "started",
        RoundStatus::Completed => "completed",
        RoundStatus::Aborted => "aborted",
        RoundStatus::Interrupted => "interrupted",
    }
}

/// `dir` must be a directory; a missing one is created.
fn ensure_dir(disk: &Disk, dir: &Path) -> Result<(), StoreError> {
    match fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(StoreError::NotDataDir {
            path: dir.to_owned(),
            what: "it is not a directory".into(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(disk.create_dir_all(dir)?),
        Err(e) => Err(io(dir)(e)),
    }
}

/// A directory without a manifest may hold only what a data directory
/// does (an interrupted first publication), so a mistyped path cannot turn
/// someone's directory into a data directory.
fn refuse_foreign(dir: &Path) -> Result<(), StoreError> {
    for path in entries(dir)? {
        let name = file_name(&path);
        let base = name.strip_suffix(".tmp").unwrap_or(&name);
        if ![
            MANIFEST,
            LEDGER,
            LEGACY_MOMENTUM,
            MODELS,
            ROUNDS,
            PROBE,
            AUDIT,
            super::ftrl::FTRL,
        ]
        .contains(&base)
        {
            return Err(StoreError::NotDataDir {
                path: dir.to_owned(),
                what: format!(
                    "it has no {MANIFEST} but holds {name:?}; use an empty or new directory"
                ),
            });
        }
    }
    Ok(())
}

/// The file [`probe_writable`] creates and removes (`PROBE.tmp`, so a
/// crash that leaves it is cleaned up like any half-written file).
const PROBE: &str = "write-probe";

/// Creates and removes a file in `dir`, so a read-only or otherwise
/// unwritable data directory stops the server at start instead of at the
/// first publication, after clients have spent a round on it.
///
/// The probe cannot be turned against a file by a planted symlink
/// ([`Disk::probe`]).
fn probe_writable(disk: &Disk, dir: &Path) -> Result<(), StoreError> {
    let probe = dir.join(format!("{PROBE}.tmp"));
    disk.probe(&probe)
        .map_err(|e| StoreError::NotDataDir {
            path: dir.to_owned(),
            what: format!(
                "the server cannot write in it ({}); it must be writable for models, the ledger and round records",
                e.source
            ),
        })
}

fn create_subdirs(disk: &Disk, dir: &Path) -> Result<(), StoreError> {
    for sub in [MODELS, ROUNDS] {
        let p = dir.join(sub);
        if !p.is_dir() {
            disk.create_dir_all(&p)?;
        }
    }
    Ok(())
}

/// Removes every `*.tmp` (a write that never reached its rename).
fn remove_half_written(disk: &Disk, dir: &Path) -> Result<(), StoreError> {
    for sub in [dir.to_owned(), dir.join(MODELS), dir.join(ROUNDS)] {
        for path in entries(&sub)? {
            if path.extension().is_some_and(|e| e == "tmp") {
                remove_leftover(disk, &path, "a half-written file")?;
            }
        }
    }
    Ok(())
}

/// The manifest, checked; an empty one if none was written yet.
fn load_manifest(path: &Path) -> Result<Manifest, StoreError> {
    let manifest = if path.exists() {
        read_manifest(path)?
    } else {
        Manifest {
            format: MANIFEST_FORMAT,
            models: Vec::new(),
            mac: None,
        }
    };
    check_manifest(path, &manifest)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::test_support::{bits, err, key, model, publication, started};
    use super::super::{RoundStatus, inspect};
    use super::*;

    #[test]
    fn crash_leftovers_are_removed_and_the_last_model_survives() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let m = model(1.0);
        Store::open(dir, &key()).unwrap().init_model(&m).unwrap();
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
        let store = Store::open(dir, &key()).unwrap();
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
        Store::open(dir, &key())
            .unwrap()
            .init_model(&model(1.0))
            .unwrap();
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
        Store::open(dir, &key()).unwrap();

        fs::write(dir.join(MANIFEST), b"not json").unwrap();
        assert!(err(dir).contains("manifest.json is corrupt"));
        fs::write(dir.join(MANIFEST), br#"{"format": 2, "anything": []}"#).unwrap();
        assert!(matches!(
            Store::open(dir, &key()),
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

    #[test]
    fn a_round_killed_after_publishing_is_completed_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut store = Store::open(dir, &key()).unwrap();
        let m = model(1.0);
        store.init_model(&m).unwrap();
        let record = started(1);
        store.record_round(&record).unwrap();
        // The model of round 1 is published, then the process dies before
        // the record says so.
        store.publish(&publication(&m, 1, None)).unwrap();
        drop(store);
        let store = Store::open(dir, &key()).unwrap();
        let r = &store.rounds()[0];
        assert_eq!(r.outcome, RoundStatus::Completed);
        assert_eq!(r.model_version, Some(2));
        assert_eq!((r.survivors, r.dropped), (3, 1));
    }

    #[test]
    fn started_rounds_become_interrupted_and_ids_are_not_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut store = Store::open(dir, &key()).unwrap();
        assert_eq!(store.next_round_id(), 1);
        let mut record = started(1);
        store.record_round(&record).unwrap();
        record.outcome = RoundStatus::Aborted;
        store.record_round(&record).unwrap();
        record.round = 2;
        record.outcome = RoundStatus::Started;
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
            RoundStatus::Started,
            "inspect changes nothing"
        );

        let store = Store::open(dir, &key()).unwrap();
        let outcomes: Vec<_> = store.rounds().iter().map(|r| r.outcome).collect();
        assert_eq!(outcomes, [RoundStatus::Aborted, RoundStatus::Interrupted]);
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
        Store::open(&empty, &key()).unwrap();
        assert!(empty.join(MODELS).is_dir() && empty.join(ROUNDS).is_dir());
    }

    #[test]
    fn a_directory_the_server_cannot_write_in_is_refused_at_open() {
        // Tests run as root, where chmod does not stop a write: the probe's
        // own file name is taken by a directory, so creating it fails the
        // way a read-only file system would.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        Store::open(&dir, &key()).unwrap();
        fs::create_dir(dir.join(format!("{PROBE}.tmp"))).unwrap();
        let e = err(&dir);
        assert!(
            e.contains(&dir.display().to_string()) && e.contains("cannot write in it"),
            "{e}"
        );
        // A probe file a crash left behind is cleaned up, not refused.
        fs::remove_dir(dir.join(format!("{PROBE}.tmp"))).unwrap();
        let fresh = tmp.path().join("fresh");
        fs::create_dir(&fresh).unwrap();
        fs::write(fresh.join(format!("{PROBE}.tmp")), b"").unwrap();
        Store::open(&fresh, &key()).unwrap();
        assert!(!fresh.join(format!("{PROBE}.tmp")).exists());
    }

    /// Someone who can write in the data directory but not elsewhere (the
    /// state key, the TLS key) plants the probe's name as a symlink to the
    /// file they want destroyed: opening the store must not truncate it.
    #[cfg(unix)]
    #[test]
    fn a_probe_planted_as_a_symlink_truncates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        Store::open(&dir, &key()).unwrap();
        let victim = tmp.path().join("state.key");
        fs::write(&victim, b"the operator's key").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(format!("{PROBE}.tmp"))).unwrap();
        Store::open(&dir, &key()).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"the operator's key");
        assert!(fs::symlink_metadata(dir.join(format!("{PROBE}.tmp"))).is_err());
    }
}
