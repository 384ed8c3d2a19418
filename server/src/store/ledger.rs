//! The privacy ledger on disk (`ledger.json`). It is written before
//! anything a round publishes, so privacy spent is over-recorded after a
//! crash, never under: a published version that spent privacy without a
//! ledger entry means the ledger was lost or rolled back, and the store
//! refuses to run on it. A ledger of an older layout is migrated on open,
//! never silently.

use std::path::Path;

use serde::Deserialize;
use tessera_dp::ledger::{LEDGER_VERSION, PrivacyLedger};
use tracing::warn;

use super::disk::{read_json, to_json};
use super::models::Manifest;
use super::{MANIFEST, StoreError, corrupt, refused};
use crate::files::Disk;

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

/// Reads the ledger at `path`, if there is one, migrating an older layout
/// on disk (with a warning; every migrated entry keeps `migrated_from`).
pub(super) fn open(path: &Path, disk: &Disk) -> Result<Option<PrivacyLedger>, StoreError> {
    if !path.exists() {
        return Ok(None);
    }
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u32,
    }
    let found = read_json::<VersionOnly>(path)?.version;
    let ledger: PrivacyLedger = read_json(path)?;
    if found < LEDGER_VERSION {
        // Never silently: the log says so, and every migrated entry keeps
        // `migrated_from` in the file.
        warn!(
            file = %path.display(),
            from = found,
            to = LEDGER_VERSION,
            "migrating the privacy ledger: each entry's adversary is inferred from its mechanism and marked migrated_from"
        );
        disk.write_atomic(path, &to_json(&ledger))?;
    }
    Ok(Some(ledger))
}

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

#[cfg(test)]
mod tests {
    use std::fs;

    use tessera_dp::ledger::Adversary;

    use super::super::test_support::{err, gaussian, model, one_charged_round, publication};
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
