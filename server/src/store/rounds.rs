//! Round records: one JSON file per round ever opened, written `started`
//! when the round opens (so its id is never reused, since round ids bind
//! key derivations) and again with its outcome.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::disk::entries;

/// Where a round stands: open, or how it ended. Serialized as the record's
/// `outcome` field (`started`, `completed`, `aborted`, `interrupted`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoundStatus {
    /// Opened, not yet finished.
    Started,
    /// Produced a sum and a published model.
    Completed,
    /// Ended without a sum.
    Aborted,
    /// The server stopped during the round (a `started` record found when
    /// the store was opened).
    Interrupted,
}

/// The record of one round: written as `started` when the round opens (so
/// its id is never reused, since round ids bind key derivations) and again
/// with its outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// The round id, from 1.
    pub round: u64,
    /// How it ended.
    pub outcome: RoundStatus,
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

/// A round's record file, relative to the rounds directory.
pub(super) fn round_file(round: u64) -> String {
    format!("round-{round:06}.json")
}

/// The record files (`*.json`) in the rounds directory, in directory
/// order; anything else there is ignored.
pub(super) fn record_files(rounds_dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut paths = entries(rounds_dir)?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "json"));
    Ok(paths)
}
