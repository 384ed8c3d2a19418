//! The read-only view of a data directory behind `tessera inspect`.

use std::path::Path;

use serde::Serialize;
use tessera_dp::ledger::PrivacyLedger;

use super::audit::{self, AUDIT, AuditRecord};
use super::integrity::StateKey;
use super::models::read_manifest;
use super::rounds::{self, record_files};
use super::{LEDGER, MANIFEST, ModelEntry, ROUNDS, RoundRecord, StoreError, ledger};

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
/// model files: [`super::Store::open`] does that).
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
        for path in record_files(&rounds_dir)? {
            rounds.push(rounds::read(&path)?.0);
        }
    }
    rounds.sort_by_key(|r| r.round);
    let ledger_path = dir.join(LEDGER);
    let ledger = if ledger_path.exists() {
        Some(ledger::read(&ledger_path)?.0)
    } else {
        None
    };
    Ok(Inspection {
        models,
        rounds,
        ledger,
    })
}

/// The audit log of a data directory, read without changing anything:
/// with the state key, every line's MAC is verified (an edited line is an
/// error naming it); without, only its shape is. A torn last line (a
/// crash mid-append, cut off when the server next opens the directory) is
/// left out; its length is returned beside the lines.
pub fn read_audit(
    dir: &Path,
    key: Option<&StateKey>,
) -> Result<(Vec<AuditRecord>, u64), StoreError> {
    let lines = audit::read(&dir.join(AUDIT), key)?;
    Ok((lines.records, lines.torn))
}
