//! The read-only view of a data directory behind `tessera inspect`.

use std::path::Path;

use serde::Serialize;
use tessera_dp::ledger::PrivacyLedger;

use super::disk::read_json;
use super::models::read_manifest;
use super::rounds::record_files;
use super::{LEDGER, MANIFEST, ModelEntry, ROUNDS, RoundRecord, StoreError};

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
            rounds.push(read_json::<RoundRecord>(&path)?);
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
