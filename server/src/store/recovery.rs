//! Opening a data directory: what a crash can leave is cleaned up, a round
//! the crash interrupted is recorded as such, and everything else is
//! checked before the server trusts it (see the module docs of
//! [`crate::store`] for the list). Each step below is one concern of
//! [`Store::open`], in the order it runs.

use std::fs;
use std::path::Path;

use super::disk::{entries, file_name, read_json, remove_leftover, to_json};
use super::models::{Manifest, check_manifest, model_file, read_manifest, read_model};
use super::rounds::{record_files, round_file};
use super::{
    LEDGER, MANIFEST, MANIFEST_FORMAT, MODELS, MOMENTUM, ROUNDS, RoundRecord, RoundStatus, Store,
    StoreError, corrupt, io, ledger, tensors,
};
use crate::files::{parent, remove_if_present, sync_dir, write_atomic};

impl Store {
    /// Opens (creating if missing or empty) and checks a data directory;
    /// see the module docs for what is checked and what is cleaned up.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        ensure_dir(dir)?;
        let manifest_path = dir.join(MANIFEST);
        if !manifest_path.exists() {
            refuse_foreign(dir)?;
        }
        probe_writable(dir)?;
        create_subdirs(dir)?;
        remove_half_written(dir)?;
        let manifest = load_manifest(&manifest_path)?;
        let mut store = Store {
            dir: dir.to_owned(),
            manifest,
            rounds: Vec::new(),
            ledger: None,
            latest: None,
            velocity: None,
            poisoned: false,
        };
        store.load_models()?;
        store.ledger = ledger::open(&dir.join(LEDGER))?;
        ledger::check_covers(&dir.join(LEDGER), store.ledger.as_ref(), &store.manifest)?;
        store.load_momentum()?;
        store.reconcile_rounds()?;
        Ok(store)
    }

    /// Reads every published model (each verified; the latest is kept) and
    /// checks the models directory holds nothing else, removing the file of
    /// a publication that did not commit.
    fn load_models(&mut self) -> Result<(), StoreError> {
        for entry in &self.manifest.models {
            self.latest = Some(read_model(&self.dir, entry)?);
        }
        let uncommitted = model_file(self.latest_version() + 1);
        for path in entries(&self.dir.join(MODELS))? {
            let rel = format!("{MODELS}/{}", file_name(&path));
            if rel == uncommitted {
                remove_leftover(&path, "a model file whose publication did not commit")?;
            } else if !self.manifest.models.iter().any(|m| m.file == rel) {
                return Err(corrupt(
                    &path,
                    format!("{MANIFEST} does not list it; move it out of the data directory"),
                ));
            }
        }
        Ok(())
    }

    fn latest_version(&self) -> u64 {
        self.manifest.models.last().map_or(0, |m| m.version)
    }

    /// Loads the momentum buffer if it belongs to the latest version;
    /// one of another version (a crash between the momentum and the
    /// manifest write) is removed.
    fn load_momentum(&mut self) -> Result<(), StoreError> {
        let momentum = self.dir.join(MOMENTUM);
        if !momentum.exists() {
            return Ok(());
        }
        let Some(latest) = &self.latest else {
            return remove_leftover(&momentum, "momentum saved with another version");
        };
        let bytes = fs::read(&momentum).map_err(io(&momentum))?;
        let spec = tensors::velocity_spec(latest.dim());
        let (velocity, meta) = tensors::decode(&momentum, &bytes, &spec)?;
        if meta.get("version") != Some(&self.latest_version().to_string()) {
            remove_leftover(&momentum, "momentum saved with another version")?;
        } else if let Some(i) = velocity.iter().position(|v| !v.is_finite()) {
            return Err(corrupt(&momentum, format!("value {i} is not finite")));
        } else {
            self.velocity = Some(velocity);
        }
        Ok(())
    }

    /// Reads every round record, checks each is in its own file, and
    /// rewrites a `started` one with what the crash left: `completed` if
    /// its model was published, `interrupted` otherwise.
    fn reconcile_rounds(&mut self) -> Result<(), StoreError> {
        for path in record_files(&self.dir.join(ROUNDS))? {
            let mut record: RoundRecord = read_json(&path)?;
            if record.round == 0 || file_name(&path) != round_file(record.round) {
                return Err(corrupt(&path, format!("holds round {}", record.round)));
            }
            if record.outcome == RoundStatus::Started {
                self.finish_interrupted(&mut record);
                write_atomic(&path, &to_json(&record))?;
            }
            self.rounds.push(record);
        }
        self.rounds.sort_by_key(|r| r.round);
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

/// `dir` must be a directory; a missing one is created.
fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    match fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(StoreError::NotDataDir {
            path: dir.to_owned(),
            what: "it is not a directory".into(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io(dir))?;
            Ok(sync_dir(parent(dir))?)
        }
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
        if ![MANIFEST, LEDGER, MOMENTUM, MODELS, ROUNDS, PROBE].contains(&base) {
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
/// The probe is a new file (O_EXCL): a leftover of its name, a symlink
/// included, is removed first, never opened, so a symlink planted in the
/// data directory cannot make the start truncate the file it points to.
fn probe_writable(dir: &Path) -> Result<(), StoreError> {
    let probe = dir.join(format!("{PROBE}.tmp"));
    remove_if_present(&probe)
        .and_then(|()| {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&probe)
        })
        .and_then(|_| fs::remove_file(&probe))
        .map_err(|e| StoreError::NotDataDir {
            path: dir.to_owned(),
            what: format!(
                "the server cannot write in it ({e}); it must be writable for models, the ledger and round records"
            ),
        })
}

fn create_subdirs(dir: &Path) -> Result<(), StoreError> {
    for sub in [MODELS, ROUNDS] {
        let p = dir.join(sub);
        if !p.is_dir() {
            fs::create_dir(&p).map_err(io(&p))?;
            sync_dir(dir)?;
        }
    }
    Ok(())
}

/// Removes every `*.tmp` (a write that never reached its rename).
fn remove_half_written(dir: &Path) -> Result<(), StoreError> {
    for sub in [dir.to_owned(), dir.join(MODELS), dir.join(ROUNDS)] {
        for path in entries(&sub)? {
            if path.extension().is_some_and(|e| e == "tmp") {
                remove_leftover(&path, "a half-written file")?;
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
        }
    };
    check_manifest(path, &manifest)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::test_support::{bits, err, model, publication, started};
    use super::super::{RoundStatus, inspect};
    use super::*;

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
        assert_eq!(r.outcome, RoundStatus::Completed);
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

        let store = Store::open(dir).unwrap();
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
        Store::open(&empty).unwrap();
        assert!(empty.join(MODELS).is_dir() && empty.join(ROUNDS).is_dir());
    }

    #[test]
    fn a_directory_the_server_cannot_write_in_is_refused_at_open() {
        // Tests run as root, where chmod does not stop a write: the probe's
        // own file name is taken by a directory, so creating it fails the
        // way a read-only file system would.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        Store::open(&dir).unwrap();
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
        Store::open(&fresh).unwrap();
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
        Store::open(&dir).unwrap();
        let victim = tmp.path().join("state.key");
        fs::write(&victim, b"the operator's key").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(format!("{PROBE}.tmp"))).unwrap();
        Store::open(&dir).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"the operator's key");
        assert!(fs::symlink_metadata(dir.join(format!("{PROBE}.tmp"))).is_err());
    }
}
