//! The plumbing every part of the store shares: JSON records, the names of
//! files in the data directory, and removing what an interrupted write
//! left. Writes go through the store's [`Disk`], the storage seam.

use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{StoreError, corrupt, io};
use crate::files::Disk;

pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Every entry of `dir`, as paths.
pub(super) fn entries(dir: &Path) -> Result<Vec<std::path::PathBuf>, StoreError> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        paths.push(entry.map_err(io(dir))?.path());
    }
    Ok(paths)
}

/// Removes what an interrupted write left, durably, saying so in the log.
pub(super) fn remove_leftover(disk: &Disk, path: &Path, why: &str) -> Result<(), StoreError> {
    warn!(file = %path.display(), "removing {why}");
    Ok(disk.remove_durably(path)?)
}

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, StoreError> {
    let bytes = fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| corrupt(path, e.to_string()))
}

pub(super) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("store records serialise")
}
