//! Crashes and disk faults at every step of a publication, played through
//! the storage seam ([`crate::files::FaultPlan`]), and data directories an
//! operator rolled back or edited: what survives, what is refused, and that
//! no file a record refers to is ever deleted.

use std::fs;
use std::path::Path;

use super::test_support::{bits, err, key, model, publication, started};
use super::*;
use crate::files::{Failure, FaultPlan, Op};

/// Velocity values of a publication: distinct per round.
fn velocity(round: u64, dim: usize) -> Vec<f32> {
    (0..dim).map(|i| round as f32 + i as f32 / 8.0).collect()
}

/// Publishes round `round` with its model and velocity and records the
/// round as a scheduler does: `started`, publish, `completed`.
fn run_round(store: &mut Store, round: u64) -> Result<ModelEntry, StoreError> {
    let m = model(round as f32);
    let v = velocity(round, m.dim());
    store.record_round(&started(round))?;
    let entry = store.publish(&Publication {
        velocity: Some(&v),
        optimizer: None,
        ..publication(&m, round, None)
    })?;
    let mut record = started(round);
    record.outcome = RoundStatus::Completed;
    record.model_version = Some(entry.version);
    store.record_round(&record)?;
    Ok(entry)
}

/// A data directory with the initial model and round 1 published, with
/// momentum.
fn with_one_round(dir: &Path) {
    let mut store = Store::open(dir, &key()).unwrap();
    store.init_model(&model(0.0)).unwrap();
    run_round(&mut store, 1).unwrap();
}

/// Operations a publication of round 2 performs on a healthy disk.
fn publication_ops(with_velocity: bool) -> u64 {
    let tmp = tempfile::tempdir().unwrap();
    with_one_round(tmp.path());
    let plan = FaultPlan::new();
    let mut store = Store::open_with(tmp.path(), &key(), Disk::with_faults(plan.clone())).unwrap();
    let before = plan.ops();
    let m = model(2.0);
    let v = velocity(2, m.dim());
    store
        .publish(&Publication {
            velocity: with_velocity.then_some(v.as_slice()),
            optimizer: None,
            ..publication(&m, 2, None)
        })
        .unwrap();
    plan.ops() - before
}

/// The server dies before each operation of a publication in turn (the
/// seam fails it and everything after it). Reopened, the directory holds
/// either the old version with its own momentum or the new version with
/// the new momentum: never a version without the momentum it was published
/// with. Before momentum was kept per version, a crash at the manifest
/// write lost version 2's momentum (momentum.safetensors already held
/// version 3's, which open then removed).
#[test]
fn a_crash_at_every_step_of_a_publication_keeps_a_version_and_its_momentum() {
    let steps = publication_ops(true);
    assert!(
        steps >= 12,
        "ledger-less publication: model, momentum, manifest"
    );
    for step in 1..=steps {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        with_one_round(dir);
        let plan = FaultPlan::new();
        let mut store = Store::open_with(dir, &key(), Disk::with_faults(plan.clone())).unwrap();
        plan.crash_at(plan.ops() + step);
        let m = model(2.0);
        let v = velocity(2, m.dim());
        let crashed = store.publish(&Publication {
            velocity: Some(&v),
            optimizer: None,
            ..publication(&m, 2, None)
        });
        assert!(crashed.is_err(), "step {step} of {steps}");
        drop(store);

        let store = Store::open(dir, &key()).unwrap_or_else(|e| panic!("step {step}: {e}"));
        let (entry, latest) = store.latest_model().unwrap();
        let round = entry.round;
        assert!(round == 1 || round == 2, "step {step}: round {round}");
        assert_eq!(bits(&latest), bits(&model(round as f32)), "step {step}");
        assert_eq!(
            store.velocity(),
            Some(velocity(round, m.dim())),
            "step {step}: version {} lost its momentum",
            entry.version
        );
        // And the next publication goes on from there.
        let mut store = store;
        let next = run_round(&mut store, 3).unwrap();
        assert_eq!(next.version, entry.version + 1, "step {step}");
    }
}

/// A disk that fills up during a publication: the publication fails, the
/// store is unchanged in memory and on disk, and once the disk has room
/// again the next publication succeeds without a reopen. Only a failure
/// after the manifest's rename (when whether the version is durable is
/// unknown) stops further publications until a reopen.
#[test]
fn a_full_disk_fails_one_publication_and_the_next_succeeds() {
    for file in ["model-000004", "momentum-000004", "manifest.json"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        with_one_round(dir);
        let plan = FaultPlan::new();
        let mut store = Store::open_with(dir, &key(), Disk::with_faults(plan.clone())).unwrap();
        run_round(&mut store, 2).unwrap();
        plan.fail_matching(None, file, Failure::StorageFull);
        let e = run_round(&mut store, 3).unwrap_err();
        assert!(e.to_string().contains("No space left"), "{file}: {e}");
        assert_eq!(store.models().len(), 3, "{file}");
        assert_eq!(store.velocity(), Some(velocity(2, model(0.0).dim())));
        plan.clear();
        let entry = run_round(&mut store, 4).unwrap();
        assert_eq!((entry.version, entry.round), (4, 4), "{file}");
        drop(store);
        let store = Store::open(dir, &key()).unwrap();
        assert_eq!(store.latest_model().unwrap().0, entry);
        assert_eq!(store.velocity(), Some(velocity(4, model(0.0).dim())));
    }

    // The directory fsync after the manifest's rename fails.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    with_one_round(dir);
    let plan = FaultPlan::new();
    let mut store = Store::open_with(dir, &key(), Disk::with_faults(plan.clone())).unwrap();
    let steps = publication_ops(false);
    let base = plan.ops();
    // The last operation of a publication is that fsync.
    plan.fail_nth(base + steps, Failure::Io);
    let m = model(2.0);
    let e = store.publish(&publication(&m, 2, None)).unwrap_err();
    assert!(matches!(e, StoreError::Io { .. }), "{e}");
    let log = plan.log();
    assert_eq!(log[(base + steps - 2) as usize].0, Op::Rename);
    assert!(matches!(
        store.publish(&publication(&m, 3, None)),
        Err(StoreError::Poisoned { .. })
    ));
}

/// The manifest is put back one version (a restored backup, an editor).
/// Round 2's record says it published version 3, which the manifest no
/// longer lists. Before, open deleted models/model-000003 as an
/// uncommitted leftover and the next round published a different model as
/// version 3: two round records claimed it. Now open refuses, naming the
/// manifest and the record and saying what to do, and deletes nothing.
#[test]
fn a_rolled_back_manifest_is_refused_and_the_model_it_forgot_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    with_one_round(dir);
    let old_manifest = fs::read(dir.join(MANIFEST)).unwrap();
    let mut store = Store::open(dir, &key()).unwrap();
    assert_eq!(run_round(&mut store, 2).unwrap().version, 3);
    drop(store);
    fs::write(dir.join(MANIFEST), &old_manifest).unwrap();

    let e = err(dir);
    assert!(
        e.contains("manifest.json")
            && e.contains("round-000002.json")
            && e.contains("version 3")
            && e.contains("Restore the manifest.json"),
        "{e}"
    );
    assert!(dir.join("models/model-000003.safetensors").exists());
    assert!(dir.join("models/momentum-000003.safetensors").exists());
    // Refused every time, not only the first.
    assert!(err(dir).contains("round-000002.json"));
}

/// A record that says its round published a version the manifest gives to
/// another round, and a record of an aborted round whose model the
/// manifest lists: both are refused with the record named.
#[test]
fn records_that_contradict_the_manifest_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    with_one_round(dir);
    let path = dir.join("rounds/round-000001.json");
    let honest = fs::read_to_string(&path).unwrap();
    let claims = honest.replace(r#""model_version": 2"#, r#""model_version": 1"#);
    assert_ne!(claims, honest);
    fs::write(&path, claims).unwrap();
    let e = err(dir);
    assert!(
        e.contains("round-000001.json") && e.contains("version 1"),
        "{e}"
    );
    let aborted = honest.replace(r#""outcome": "completed""#, r#""outcome": "aborted""#);
    fs::write(&path, aborted).unwrap();
    let e = err(dir);
    assert!(
        e.contains("round-000001.json") && e.contains("aborted"),
        "{e}"
    );
    fs::write(&path, honest).unwrap();
    Store::open(dir, &key()).unwrap();
}

/// A momentum value edited to 1e30 (it would move the next model by about
/// that much): the manifest's SHA-256 of the momentum file no longer
/// matches, and open refuses naming the file.
#[test]
fn an_edited_momentum_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    with_one_round(dir);
    let file = dir.join("models/momentum-000002.safetensors");
    let mut bytes = fs::read(&file).expect("momentum is kept under its version");
    let end = bytes.len();
    bytes[end - 4..].copy_from_slice(&1e30f32.to_le_bytes());
    fs::write(&file, &bytes).unwrap();
    let e = err(dir);
    assert!(
        e.contains("momentum-000002.safetensors") && e.contains("SHA-256"),
        "{e}"
    );
}

/// A data directory of the earlier layout: one `momentum.safetensors` for
/// the latest version. Open moves it under its version, records its
/// SHA-256 in the manifest and logs it; one of another version is refused
/// (never silently dropped), with what to do.
#[test]
fn a_legacy_momentum_file_is_migrated_only_if_it_is_the_latest_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    with_one_round(dir);
    // Back to the old layout, as an older build wrote it: no MACs and no
    // audit log anywhere, no momentum in the manifest entry, the file at
    // the top.
    strip_macs(dir);
    let text = fs::read_to_string(dir.join(MANIFEST)).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entry = manifest["models"][1].as_object_mut().unwrap();
    assert!(entry.remove("momentum").is_some());
    fs::write(dir.join(MANIFEST), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let legacy = dir.join("momentum.safetensors");
    let versioned = dir.join("models/momentum-000002.safetensors");
    fs::rename(&versioned, &legacy).unwrap();
    let old = tempfile::tempdir().unwrap();
    copy_dir(dir, old.path());

    let (store, _) = Store::migrate(dir, &key()).unwrap();
    assert_eq!(store.velocity(), Some(velocity(1, model(0.0).dim())));
    assert!(!legacy.exists() && versioned.exists());
    assert!(store.models()[1].momentum.is_some());
    drop(store);
    let store = Store::open(dir, &key()).unwrap();
    assert_eq!(store.velocity(), Some(velocity(1, model(0.0).dim())));
    drop(store);

    // A legacy file of version 3 (an older server crashed between its
    // momentum and its manifest write): version 2's momentum is lost.
    let dir = old.path();
    let legacy = dir.join("momentum.safetensors");
    let mut other = fs::read(&legacy).unwrap();
    let at = other
        .windows(13)
        .position(|w| w == br#""version":"2""#)
        .expect("the metadata names the version");
    other[at + 11] = b'3';
    fs::write(&legacy, &other).unwrap();
    let e = Store::migrate(dir, &key()).unwrap_err().to_string();
    assert!(
        e.contains("momentum.safetensors")
            && e.contains("version 3")
            && e.contains("Move the file out"),
        "{e}"
    );
    assert!(legacy.exists(), "never silently dropped");
}

/// Removes every MAC and the audit log: the directory as a build before
/// the state key wrote it.
fn strip_macs(dir: &Path) {
    let mut files = vec![dir.join(MANIFEST), dir.join(LEDGER)];
    files.extend(
        fs::read_dir(dir.join(ROUNDS))
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    for path in files.into_iter().filter(|p| p.exists()) {
        let mut value: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        value.as_object_mut().unwrap().remove("mac");
        fs::write(&path, serde_json::to_vec(&value).unwrap()).unwrap();
    }
    let _ = fs::remove_file(dir.join(AUDIT));
}

/// Copies a data directory (files and one level of subdirectories).
fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            fs::create_dir_all(&target).unwrap();
            copy_dir(&path, &target);
        } else {
            fs::copy(&path, &target).unwrap();
        }
    }
}
