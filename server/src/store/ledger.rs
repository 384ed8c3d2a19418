//! The privacy ledger on disk (`ledger.json`). It is written before
//! anything a round publishes, so privacy spent is over-recorded after a
//! crash, never under: a published version that spent privacy without a
//! ledger entry means the ledger was lost or rolled back, and the store
//! refuses to run on it. A ledger of an older layout is migrated on open,
//! never silently.
//!
//! The file is authenticated ([`super::integrity`]): beside the ledger's
//! own fields it holds `"mac": {"entries": [...], "changes": [...],
//! "head": ...}`, one tag per entry and per change, each chained to the
//! one before it, and a head tag over the terms (layout version, budget,
//! δ, counts) and both chains' last tags. A ledger without `mac` is one
//! written before authentication existed: it is sealed only by a
//! migration, which records a `sealed` change in it.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tessera_dp::ledger::{LEDGER_VERSION, LedgerEntry, PrivacyLedger};
use tracing::warn;

use super::disk::{read_json, to_json};
use super::integrity::{GENESIS, MacKey, Purpose, StateKey, canonical, hex_tag};
use super::models::Manifest;
use super::{MANIFEST, StoreError, corrupt, refused};
use crate::files::Disk;

/// The ledger file's tags (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LedgerMacs {
    entries: Vec<String>,
    changes: Vec<String>,
    head: String,
}

/// What is written: the ledger's fields, then its tags.
#[derive(Serialize)]
struct SealedLedger<'a> {
    #[serde(flatten)]
    ledger: &'a PrivacyLedger,
    mac: &'a LedgerMacs,
}

/// The tag of one ledger entry after `prev`.
fn entry_parts(entry: &LedgerEntry) -> Vec<u8> {
    canonical(entry)
}

fn head_parts(ledger: &PrivacyLedger) -> Vec<u8> {
    canonical(&(
        LEDGER_VERSION,
        ledger.budget_epsilon(),
        ledger.delta(),
        ledger.entries().len(),
        ledger.changes().len(),
    ))
}

/// Tags every entry and change of `ledger`, and its head.
fn seal(key: &MacKey, ledger: &PrivacyLedger) -> LedgerMacs {
    let mut prev = GENESIS;
    let mut entries = Vec::new();
    for e in ledger.entries() {
        prev = key.tag(&prev, &[b"entry", &entry_parts(e)]);
        entries.push(hex_tag(&prev));
    }
    let last_entry = prev;
    prev = GENESIS;
    let mut changes = Vec::new();
    for c in ledger.changes() {
        prev = key.tag(&prev, &[b"change", &canonical(c)]);
        changes.push(hex_tag(&prev));
    }
    let head = key.tag(&last_entry, &[b"head", &prev, &head_parts(ledger)]);
    LedgerMacs {
        entries,
        changes,
        head: hex_tag(&head),
    }
}

/// The ledger file's bytes: the ledger with its tags under `key`.
pub(super) fn sealed_bytes(key: &StateKey, ledger: &PrivacyLedger) -> Vec<u8> {
    let mac = seal(&key.subkey(Purpose::Ledger), ledger);
    to_json(&SealedLedger { ledger, mac: &mac })
}

/// Checks the tags of the ledger read from `path`, naming the first entry
/// or change that does not verify; `Ok` also for a file without tags
/// (`macs` `None`), which only a migration may accept.
pub(super) fn verify(
    path: &Path,
    key: &StateKey,
    ledger: &PrivacyLedger,
    macs: &LedgerMacs,
) -> Result<(), StoreError> {
    let key = key.subkey(Purpose::Ledger);
    let bad = |what: String| {
        corrupt(
            path,
            format!(
                "{what} does not verify under the state key: the file was edited, or the state key is not the one that wrote it"
            ),
        )
    };
    let mut prev = GENESIS;
    for (i, e) in ledger.entries().iter().enumerate() {
        let tag = macs.entries.get(i).ok_or_else(|| {
            bad(format!(
                "entry {} (round {}) has no MAC and",
                i + 1,
                e.round
            ))
        })?;
        prev = key
            .verify(&prev, &[b"entry", &entry_parts(e)], tag)
            .ok_or_else(|| bad(format!("entry {} (round {})", i + 1, e.round)))?;
    }
    let last_entry = prev;
    prev = GENESIS;
    for (i, c) in ledger.changes().iter().enumerate() {
        let tag = macs
            .changes
            .get(i)
            .ok_or_else(|| bad(format!("change {} has no MAC and", i + 1)))?;
        prev = key
            .verify(&prev, &[b"change", &canonical(c)], tag)
            .ok_or_else(|| bad(format!("change {} ({})", i + 1, c.event.name())))?;
    }
    key.verify(
        &last_entry,
        &[b"head", &prev, &head_parts(ledger)],
        &macs.head,
    )
    .ok_or_else(|| bad("the head (budget, delta, number of entries and changes)".to_owned()))?;
    Ok(())
}

/// Reads the ledger file at `path`: the ledger, its tags if it has any,
/// and its layout version.
pub(super) fn read(path: &Path) -> Result<(PrivacyLedger, Option<LedgerMacs>, u32), StoreError> {
    let mut value: serde_json::Value = read_json(path)?;
    let macs = match value.as_object_mut().and_then(|o| o.remove("mac")) {
        Some(m) => Some(serde_json::from_value(m).map_err(|e| corrupt(path, format!("mac: {e}")))?),
        None => None,
    };
    let found = value
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| corrupt(path, "no layout version"))? as u32;
    let ledger = serde_json::from_value(value).map_err(|e| corrupt(path, e.to_string()))?;
    Ok((ledger, macs, found))
}

/// Writes `ledger` to `path` through `disk`, sealed under `key`.
pub(super) fn write(
    disk: &Disk,
    path: &Path,
    key: &StateKey,
    ledger: &PrivacyLedger,
) -> Result<(), StoreError> {
    Ok(disk.write_atomic(path, &sealed_bytes(key, ledger))?)
}

/// The charge of `round` as the manifest binds it: the ledger entry's
/// round, adversary and mechanism (its ε may be restated at another δ
/// later, so it is not part of the binding); empty if the ledger does not
/// charge the round.
pub(super) fn charge_binding(ledger: Option<&PrivacyLedger>, round: u64) -> Vec<u8> {
    ledger
        .and_then(|l| l.entries().iter().find(|e| e.round == round))
        .map(|e| canonical(&(e.round, e.adversary, e.mechanism)))
        .unwrap_or_default()
}

/// A round that spent privacy must be in the ledger: the ledger is
/// written first, so a missing entry means the ledger was lost or rolled
/// back, and continuing would under-count the privacy spent.
pub(super) fn unrecorded(
    entries: impl IntoIterator<Item = (u64, f64)>,
    ledger: Option<&PrivacyLedger>,
) -> Option<u64> {
    entries.into_iter().find_map(|(round, epsilon)| {
        let recorded = ledger.is_some_and(|l| l.entries().iter().any(|e| e.round == round));
        (epsilon > 0.0 && !recorded).then_some(round)
    })
}

/// A new ledger must keep every entry of the stored one, in order.
pub(super) fn check_extends(
    new: &PrivacyLedger,
    stored: Option<&PrivacyLedger>,
) -> Result<(), StoreError> {
    match stored {
        Some(old) if !new.entries().starts_with(old.entries()) => Err(refused(
            "the ledger does not extend the stored one (it would erase privacy spent)",
        )),
        Some(old) if !new.changes().starts_with(old.changes()) => Err(refused(
            "the ledger does not keep the stored one's changes of budget and delta",
        )),
        _ => Ok(()),
    }
}

/// A ledger with changed terms must charge the same rounds with the same
/// mechanisms as the stored one (only their ε may be restated, at a new
/// δ) and keep its changes.
pub(super) fn check_amends(
    new: &PrivacyLedger,
    stored: Option<&PrivacyLedger>,
) -> Result<(), StoreError> {
    let Some(old) = stored else {
        return Ok(());
    };
    let same_charges = new.entries().len() == old.entries().len()
        && new.entries().iter().zip(old.entries()).all(|(n, o)| {
            (n.round, n.adversary, n.mechanism, n.migrated_from)
                == (o.round, o.adversary, o.mechanism, o.migrated_from)
        });
    if !same_charges {
        return Err(refused(
            "a change of the ledger's terms must keep its charges (it would erase privacy spent)",
        ));
    }
    if new.changes().starts_with(old.changes()) {
        Ok(())
    } else {
        Err(refused(
            "the ledger does not keep the stored one's changes of budget and delta",
        ))
    }
}

/// A ledger as opened: the ledger, and whether it was found without
/// authentication (written before it existed; only a migration seals it).
#[derive(Debug)]
pub(super) struct Opened {
    pub(super) ledger: PrivacyLedger,
    pub(super) unsealed: bool,
}

/// Reads the ledger at `path`, if there is one, checks its tags, and
/// migrates an older layout on disk (with a warning; every migrated entry
/// keeps `migrated_from`). A ledger without tags is returned as
/// `unsealed`, unchanged on disk: the caller decides whether that is a
/// migration or tampering.
pub(super) fn open(path: &Path, key: &StateKey) -> Result<Option<Opened>, StoreError> {
    if !path.exists() {
        return Ok(None);
    }
    let (ledger, macs, found) = read(path)?;
    let Some(macs) = macs else {
        return Ok(Some(Opened {
            ledger,
            unsealed: true,
        }));
    };
    if found < LEDGER_VERSION {
        return Err(corrupt(
            path,
            format!("a layout version {found} ledger cannot carry MACs: the file was edited"),
        ));
    }
    verify(path, key, &ledger, &macs)?;
    Ok(Some(Opened {
        ledger,
        unsealed: false,
    }))
}

/// Rewrites an older layout (or an unsealed file) as the current one,
/// sealed: never silently, the log says so, and every migrated entry
/// keeps `migrated_from`.
pub(super) fn migrate_layout(
    disk: &Disk,
    path: &Path,
    key: &StateKey,
    ledger: &PrivacyLedger,
) -> Result<(), StoreError> {
    if ledger.migrated() {
        warn!(
            file = %path.display(),
            to = LEDGER_VERSION,
            "migrating the privacy ledger: each entry's adversary is inferred from its mechanism and marked migrated_from"
        );
    }
    write(disk, path, key, ledger)
}

/// Every published version's ε must be what the ledger records for its
/// round (the manifest is what GetModel serves): at the same δ, equal;
/// at another δ, only if the ledger records a recompute from that δ.
pub(super) fn check_epsilons(
    manifest_path: &Path,
    ledger: Option<&PrivacyLedger>,
    manifest: &Manifest,
) -> Result<(), StoreError> {
    let Some(ledger) = ledger else {
        return Ok(());
    };
    for m in &manifest.models {
        let Some(e) = ledger.entries().iter().find(|e| e.round == m.round) else {
            continue;
        };
        let recomputed = ledger.changes().iter().any(|c| {
            c.event == tessera_dp::ledger::LedgerEvent::DeltaRecompute && c.old == m.delta
        });
        let agrees = if m.delta == ledger.delta() {
            m.epsilon == e.epsilon_spent
        } else {
            recomputed
        };
        if !agrees {
            return Err(corrupt(
                manifest_path,
                format!(
                    "version {} states epsilon {} at delta {}, but {LEDGER_FILE} records epsilon {} at delta {} for its round {}",
                    m.version,
                    m.epsilon,
                    m.delta,
                    e.epsilon_spent,
                    ledger.delta(),
                    m.round
                ),
            ));
        }
    }
    Ok(())
}

const LEDGER_FILE: &str = "ledger.json";

/// Every published version that spent privacy must be in the ledger at
/// `path` (see [`unrecorded`]).
pub(super) fn check_covers(
    path: &Path,
    ledger: Option<&PrivacyLedger>,
    manifest: &Manifest,
) -> Result<(), StoreError> {
    let published = manifest.models.iter().map(|m| (m.round, m.epsilon));
    let Some(round) = unrecorded(published, ledger) else {
        return Ok(());
    };
    let state = if ledger.is_some() {
        "does not record"
    } else {
        "is missing, but"
    };
    Err(corrupt(
        path,
        format!("{state} round {round}, whose model {MANIFEST} lists as spending privacy"),
    ))
}

/// Every charge the audit log records must be in the ledger at `path`: a
/// ledger replaced by an older authentic copy of itself loses the charges
/// of rounds that published nothing, which no manifest entry binds.
pub(super) fn check_charges_logged(
    path: &Path,
    ledger: Option<&PrivacyLedger>,
    audit: &[super::AuditRecord],
) -> Result<(), StoreError> {
    for line in audit {
        let super::AuditEvent::Charged { round, .. } = line.event else {
            continue;
        };
        if !ledger.is_some_and(|l| l.entries().iter().any(|e| e.round == round)) {
            return Err(corrupt(
                path,
                format!(
                    "it does not record round {round}, whose charge {} (line {}) records: the ledger was rolled back or replaced; restore it from a backup",
                    super::AUDIT,
                    line.seq
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use tessera_dp::ledger::Adversary;

    use super::super::test_support::{
        err, gaussian, key, model, one_charged_round, publication, strip_macs,
    };
    use super::super::{LEDGER, Store, StoreError, inspect};
    use super::*;

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
        let mut store = Store::open(dir, &key()).unwrap();
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

    /// A data directory an older build wrote (no MACs, a version 1
    /// ledger): open refuses it and points at `tessera migrate`; inspect
    /// (read-only) shows the migrated ledger without writing; the
    /// migration seals it as found, marks every migrated entry, records a
    /// `sealed` change and an audit event, and afterwards an edit is
    /// detected.
    #[test]
    fn a_legacy_directory_is_refused_then_migrated_visibly_and_then_protected() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ledger = one_charged_round(dir);
        strip_macs(dir);
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
        let e = Store::open(dir, &key()).unwrap_err();
        assert!(matches!(e, StoreError::Unauthenticated { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.contains("tessera migrate")
                && e.contains("manifest.json")
                && e.contains("ledger.json"),
            "{e}"
        );
        assert_eq!(
            fs::read_to_string(dir.join(LEDGER)).unwrap(),
            v1,
            "a refusal writes nothing"
        );

        let (store, migration) = Store::migrate(dir, &key()).unwrap();
        assert_eq!(migration.sealed.len(), 2, "{migration:?}");
        let migrated = store.ledger().unwrap();
        assert_eq!(migrated.entries()[0].adversary, Adversary::ModelConsumers);
        assert_eq!(migrated.entries()[0].migrated_from, Some(1));
        assert_eq!(migrated.spent(), ledger.spent());
        let sealed = migrated.sealed_at().expect("the sealing is in the ledger");
        assert_eq!(sealed.after_round, 1);
        let (audit, _) = crate::store::read_audit(dir, Some(&key())).unwrap();
        assert!(
            matches!(&audit.last().unwrap().event, crate::store::AuditEvent::Migrated { sealed } if sealed.len() == 2),
            "{audit:?}"
        );
        drop(store);
        let text = fs::read_to_string(dir.join(LEDGER)).unwrap();
        assert!(
            text.contains(r#""version": 2"#) && text.contains(r#""migrated_from": 1"#),
            "{text}"
        );
        // Migrating again does nothing; the directory now opens normally.
        assert!(Store::migrate(dir, &key()).unwrap().1.sealed.is_empty());
        Store::open(dir, &key()).unwrap();
        // And an edit made now is caught.
        let edited = text.replacen(
            r#""noise_multiplier": 1.0"#,
            r#""noise_multiplier": 9.0"#,
            1,
        );
        assert_ne!(edited, text);
        fs::write(dir.join(LEDGER), edited).unwrap();
        let e = err(dir);
        assert!(
            e.contains("ledger.json") && e.contains("entry 1 (round 1)"),
            "{e}"
        );
        // Nor can the edited directory be "migrated" again.
        let e = Store::migrate(dir, &key()).unwrap_err().to_string();
        assert!(
            e.contains("ledger.json") && e.contains("does not verify"),
            "{e}"
        );
    }
}
