//! The edits issue 13 found undetected, played as an editor of the data
//! directory who does not hold the state key (including one who
//! recomputes every plain hash), and the audit log's crash/edit split.

use std::fs;
use std::path::Path;

use sha2::{Digest, Sha256};
use tessera_dp::ledger::{Adversary, PrivacyLedger};

use super::test_support::{err, gaussian, key, model, one_charged_round, publication, started};
use super::{AUDIT, AuditEvent, RoundStatus, StateKey, Store, read_audit};

fn edit(path: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(path).unwrap();
    let edited = text.replacen(from, to, 1);
    assert_ne!(edited, text, "{from:?} not in {}", path.display());
    fs::write(path, edited).unwrap();
}

/// A directory with rounds 1 and 2 charged, published and recorded.
fn two_rounds(dir: &Path) -> PrivacyLedger {
    let mut ledger = one_charged_round(dir);
    let mut store = Store::open(dir, &key()).unwrap();
    let mut record = started(2);
    store.record_round(&record).unwrap();
    ledger
        .record(2, gaussian(), Adversary::ModelConsumers)
        .unwrap();
    let entry = store
        .publish(&publication(&model(2.0), 2, Some(&ledger)))
        .unwrap();
    record.outcome = RoundStatus::Completed;
    record.model_version = Some(entry.version);
    store.record_round(&record).unwrap();
    ledger
}

/// Issue 13: a past noise multiplier edited from 1 to 9 in ledger.json
/// halved the next round's epsilon. Now the start is refused, naming the
/// file and the entry.
#[test]
fn an_edited_past_noise_multiplier_is_refused_naming_the_entry() {
    let tmp = tempfile::tempdir().unwrap();
    two_rounds(tmp.path());
    edit(
        &tmp.path().join("ledger.json"),
        r#""noise_multiplier": 1.0"#,
        r#""noise_multiplier": 9.0"#,
    );
    let e = err(tmp.path());
    assert!(
        e.contains("ledger.json") && e.contains("entry 1 (round 1)"),
        "{e}"
    );
}

/// Issue 13: GetModel served epsilon 0.5 while the ledger said 9.01. An
/// edited manifest epsilon is refused by its MAC, naming the version.
#[test]
fn an_edited_manifest_epsilon_is_refused_naming_the_version() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = two_rounds(tmp.path());
    let spent = serde_json::to_string(&ledger.spent()).unwrap();
    edit(
        &tmp.path().join("manifest.json"),
        &format!(r#""epsilon": {spent}"#),
        r#""epsilon": 0.5"#,
    );
    let e = err(tmp.path());
    assert!(
        e.contains("manifest.json") && e.contains("version 3"),
        "{e}"
    );
}

/// The key's holder can make the manifest and ledger disagree (and rewrite
/// history); the consistency check still refuses what GetModel would serve
/// against what the ledger says.
#[test]
fn a_manifest_epsilon_that_disagrees_with_the_ledger_is_refused_even_when_sealed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ledger = two_rounds(dir);
    let mut bigger = PrivacyLedger::new(20.0, ledger.delta()).unwrap();
    let big = tessera_dp::ledger::Mechanism::Gaussian {
        noise_multiplier: 1.0,
        sampling_rate: 1.0,
    };
    bigger.record(1, big, Adversary::ModelConsumers).unwrap();
    bigger.record(2, big, Adversary::ModelConsumers).unwrap();
    // Same mechanisms, so the manifest's binding holds; now pretend the
    // ledger's ε is 9.01 for round 2.
    let mut json: serde_json::Value = serde_json::to_value(&bigger).unwrap();
    json["entries"][1]["epsilon_spent"] = 9.01.into();
    let bigger: PrivacyLedger = serde_json::from_value(json).unwrap();
    super::hazmat::rewrite_ledger(dir, &key(), &bigger).unwrap();
    let e = err(dir);
    assert!(
        e.contains("manifest.json") && e.contains("version 3") && e.contains("9.01"),
        "{e}"
    );
}

/// Issue 13: a round record could be edited. Now each record's MAC is
/// checked, and a record removed from the middle breaks the next one's.
#[test]
fn an_edited_or_removed_round_record_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = Store::open(dir, &key()).unwrap();
    store.init_model(&model(0.0)).unwrap();
    for round in 1..=3 {
        let mut r = started(round);
        store.record_round(&r).unwrap();
        r.outcome = RoundStatus::Aborted;
        r.stage = Some("unmasking".into());
        r.reason = Some("below-threshold".into());
        store.record_round(&r).unwrap();
    }
    drop(store);
    let second = dir.join("rounds/round-000002.json");
    let saved = fs::read(&second).unwrap();
    edit(&second, r#""clients": 5"#, r#""clients": 50"#);
    let e = err(dir);
    assert!(
        e.contains("round-000002.json") && e.contains("round 2"),
        "{e}"
    );
    fs::remove_file(&second).unwrap();
    let e = err(dir);
    assert!(e.contains("round-000003.json"), "{e}");
    fs::write(&second, saved).unwrap();
    Store::open(dir, &key()).unwrap();
}

/// An editor who recomputes every plain hash (the model file's SHA-256 in
/// the manifest) still fails: the tags need the state key. So does one
/// who strips the MACs to pass the directory off as an old one, or who
/// brings another key.
#[test]
fn recomputing_hashes_stripping_macs_or_another_key_does_not_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    two_rounds(dir);
    // Change a weight of model 3 and fix its SHA-256 in the manifest.
    let m3 = fs::read(dir.join("models/model-000003.safetensors")).unwrap();
    let mut forged = m3.clone();
    let n = forged.len();
    forged[n - 4] ^= 1; // the low mantissa bit of the last weight
    let (old, new) = (
        hex::encode(Sha256::digest(&m3)),
        hex::encode(Sha256::digest(&forged)),
    );
    let saved = fs::read(dir.join("manifest.json")).unwrap();
    fs::write(dir.join("models/model-000003.safetensors"), &forged).unwrap();
    edit(&dir.join("manifest.json"), &old, &new);
    let e = err(dir);
    assert!(
        e.contains("manifest.json") && e.contains("version 3"),
        "{e}"
    );
    fs::write(dir.join("models/model-000003.safetensors"), &m3).unwrap();
    fs::write(dir.join("manifest.json"), &saved).unwrap();
    Store::open(dir, &key()).unwrap();

    let e = Store::open(dir, &StateKey::from_bytes([1; 32]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("state key is not the one"), "{e}");

    // Stripping only some MACs is tampering, never a migration.
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    manifest.as_object_mut().unwrap().remove("mac");
    fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    for open in [Store::open, |d: &Path, k: &StateKey| {
        Store::migrate(d, k).map(|s| s.0)
    }] {
        let e = open(dir, &key()).unwrap_err().to_string();
        assert!(
            e.contains("manifest.json") && e.contains("MACs were removed"),
            "{e}"
        );
    }
}

/// A torn last line (a crash mid-append) is cut off and recorded; an
/// edited line, even the last, is refused naming the line.
#[test]
fn a_torn_audit_tail_is_a_crash_and_an_edited_line_is_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    two_rounds(dir);
    let path = dir.join(AUDIT);
    let (lines, torn) = read_audit(dir, Some(&key())).unwrap();
    assert_eq!(torn, 0);
    assert!(
        lines
            .iter()
            .any(|l| matches!(&l.event, AuditEvent::Published { version: 3, .. })),
        "{lines:?}"
    );
    let complete = fs::read(&path).unwrap();

    let fragment = br#"{"seq":99,"at_unix_ms":1,"ev"#;
    let bytes = fragment.len() as u64;
    let mut torn_file = complete.clone();
    torn_file.extend_from_slice(fragment);
    fs::write(&path, &torn_file).unwrap();
    assert_eq!(read_audit(dir, Some(&key())).unwrap().1, bytes);
    drop(Store::open(dir, &key()).unwrap());
    let (after, torn) = read_audit(dir, Some(&key())).unwrap();
    assert_eq!(torn, 0);
    assert_eq!(after.len(), lines.len() + 1);
    assert_eq!(
        after.last().unwrap().event,
        AuditEvent::TornTailRemoved { bytes }
    );

    let text = String::from_utf8(complete).unwrap();
    let edited = text.replacen(r#""version":3"#, r#""version":4"#, 1);
    assert_ne!(edited, text);
    fs::write(&path, edited).unwrap();
    let e = err(dir);
    let n = lines
        .iter()
        .position(|l| matches!(&l.event, AuditEvent::Published { version: 3, .. }))
        .unwrap()
        + 1;
    assert!(
        e.contains("audit.jsonl") && e.contains(&format!("line {n} ")),
        "{e}"
    );
    // Without the key a reader sees the shape only; with it, the edit.
    assert!(read_audit(dir, None).is_ok());
    assert!(read_audit(dir, Some(&key())).is_err());
}

/// Three rounds opened and aborted (nothing published, nothing charged):
/// only the round records and the audit log know their ids.
fn three_aborted_rounds(dir: &Path) {
    let mut store = Store::open(dir, &key()).unwrap();
    store.init_model(&model(0.0)).unwrap();
    for round in 1..=3 {
        let mut r = started(round);
        store.record_round(&r).unwrap();
        r.outcome = RoundStatus::Aborted;
        r.stage = Some("share-keys".into());
        r.reason = Some("accusations".into());
        store.record_round(&r).unwrap();
    }
}

/// Review: the last round record's removal broke no chain (the records
/// link forward only), so the next start reused its round id, which binds
/// every key derivation of a round, and the abort vanished from the
/// records. The audit log names the round, so the start is refused.
#[test]
fn a_deleted_last_round_record_is_refused_not_its_round_id_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    three_aborted_rounds(dir);
    let last = dir.join("rounds/round-000003.json");
    let saved = fs::read(&last).unwrap();
    fs::remove_file(&last).unwrap();
    let e = err(dir);
    assert!(
        e.contains("round-000003.json") && e.contains(AUDIT) && e.contains("round 3"),
        "{e}"
    );
    fs::write(&last, saved).unwrap();
    let store = Store::open(dir, &key()).unwrap();
    assert_eq!(store.next_round_id(), 4);
}

/// What the cross-check cannot stop, stated by a test: an editor who
/// removes the last round record *and* the audit log's lines about it
/// (whole trailing lines: the log has no head tag) rolls the directory
/// back to an earlier authentic state. The same goes for a ledger rolled
/// back together with the log's `charged` lines. Only a copy of the log
/// kept elsewhere (shipped off the machine) shows that.
#[test]
fn a_rollback_of_the_records_and_the_audit_tail_together_is_not_detectable_here() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    three_aborted_rounds(dir);
    let (lines, _) = read_audit(dir, Some(&key())).unwrap();
    let keep = lines
        .iter()
        .position(|l| matches!(&l.event, AuditEvent::RoundAborted { round: 3, .. }))
        .unwrap();
    let text = fs::read_to_string(dir.join(AUDIT)).unwrap();
    let kept: String = text.split_inclusive('\n').take(keep).collect();
    fs::write(dir.join(AUDIT), kept).unwrap();
    fs::remove_file(dir.join("rounds/round-000003.json")).unwrap();
    let store = Store::open(dir, &key()).unwrap();
    assert_eq!(store.next_round_id(), 3);
}

/// Review: a round whose sum the server saw is charged before it is
/// published; if the publication then fails, only the ledger held the
/// charge. Replacing ledger.json with its authentic copy from before that
/// charge (a whole-file rollback) passed every check (the manifest binds
/// only published rounds' charges) and lowered the epsilon spent. The
/// audit log records each charge, and the ledger must hold it.
#[test]
fn a_ledger_rolled_back_past_an_unpublished_charge_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut ledger = one_charged_round(dir);
    let before = fs::read(dir.join("ledger.json")).unwrap();
    let mut store = Store::open(dir, &key()).unwrap();
    let mut r = started(2);
    store.record_round(&r).unwrap();
    ledger
        .record(2, gaussian(), Adversary::ModelConsumers)
        .unwrap();
    store.charge(&ledger).unwrap();
    r.outcome = RoundStatus::Aborted;
    r.stage = Some("publish".into());
    r.reason = Some("storage".into());
    store.record_round(&r).unwrap();
    drop(store);
    fs::write(dir.join("ledger.json"), before).unwrap();
    let e = err(dir);
    assert!(
        e.contains("ledger.json") && e.contains("round 2") && e.contains(AUDIT),
        "{e}"
    );
}

/// The name-order migration reads a version in the order its manifest
/// entry lists the tensors (an earlier build's order). An editor without
/// the key who relists the latest entry's tensors, to make the migration
/// move the momentum's values under other names (or record a
/// flat-order-changed event that never happened), is refused by the
/// entry's MAC, naming the file and the version, before anything is
/// reordered or recorded.
#[test]
fn a_relisted_tensor_order_is_refused_before_the_migration_runs() {
    let tmp = tempfile::tempdir().unwrap();
    two_rounds(tmp.path());
    let path = tmp.path().join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let tensors = manifest["models"]
        .as_array_mut()
        .unwrap()
        .last_mut()
        .unwrap()["tensors"]
        .as_array_mut()
        .unwrap();
    tensors.reverse();
    fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    let audit_before = fs::read(tmp.path().join(AUDIT)).unwrap();
    let e = err(tmp.path());
    assert!(
        e.contains("manifest.json") && e.contains("version 3"),
        "{e}"
    );
    assert_eq!(
        fs::read(tmp.path().join(AUDIT)).unwrap(),
        audit_before,
        "no flat-order-changed event recorded"
    );
}
