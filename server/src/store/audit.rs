//! The audit log: `audit.jsonl` in the data directory, one JSON line per
//! security-relevant event (who joined which round, evictions with their
//! reason and proof, aborted rounds, publications with the model's SHA-256
//! and ε, changes of the privacy terms, token reloads, migrations), each
//! line tagged under the state key and chained to the line before it
//! ([`super::integrity`]):
//!
//! ```text
//! {"seq":1,"at_unix_ms":1767225600000,"event":{"kind":"published",...},"mac":"<hex>"}
//! ```
//!
//! Lines are only appended (one `write` of the whole line and its newline,
//! then fsync). A crash mid-append can leave a last line without its
//! newline: on open that torn tail is cut off, with a warning and a
//! `torn-tail-removed` event saying how many bytes went. Every complete
//! line must parse and verify, in sequence: an edited, removed, reordered
//! or inserted line is refused, naming the line. Removing whole lines from
//! the end is what the log alone cannot tell from an older log.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use super::disk::unix_ms;
use super::integrity::{GENESIS, MacKey, Purpose, StateKey, Tag, canonical, hex_tag};
use super::{StoreError, corrupt, io};
use crate::files::{parent, private_options, sync_dir};

/// The audit log's file name in the data directory.
pub const AUDIT: &str = "audit.jsonl";

/// A security-relevant event. Serialized internally tagged by `kind`
/// (kebab-case).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum AuditEvent {
    /// A round opened with these clients (their authenticated identities).
    Joined {
        /// The round.
        round: u64,
        /// Who takes part: token names, certificate digests, enrolled
        /// identities.
        identities: Vec<String>,
    },
    /// A client was removed from a round for misbehaving.
    Evicted {
        /// The round.
        round: u64,
        /// The client's identity.
        client: String,
        /// What it did.
        reason: String,
        /// The evidence (for example a revealed key, hex), if any.
        proof: Option<String>,
    },
    /// A round ended without a sum.
    RoundAborted {
        /// The round.
        round: u64,
        /// Where it stopped.
        stage: String,
        /// Why.
        reason: String,
        /// Clients still in it.
        survivors: u32,
    },
    /// A model version was published.
    Published {
        /// The round that produced it (0: the initial model).
        round: u64,
        /// Its version.
        version: u64,
        /// SHA-256 of its model file, hex.
        model_sha256: String,
        /// Privacy spent up to and including it.
        epsilon: f64,
        /// Its δ.
        delta: f64,
    },
    /// The server opened a data directory whose latest version an earlier
    /// build published with its tensors in another order than name order,
    /// and lays the flat vector out in name order from now on (the
    /// momentum buffer's values moved with their tensors): clients that
    /// flattened updates in the stored order must flatten them in name
    /// order.
    FlatOrderChanged {
        /// The latest version.
        version: u64,
        /// Its tensors in the order the manifest lists them.
        stored: Vec<String>,
    },
    /// A round's privacy was charged: the server saw its sum (before it
    /// publishes anything from it, so the charge stands if publishing
    /// fails). The ledger must hold every charge recorded here.
    Charged {
        /// The round.
        round: u64,
        /// Privacy spent up to and including it.
        epsilon: f64,
    },
    /// The privacy terms changed (a ledger change: `budget-change`,
    /// `delta-recompute`).
    TermsChanged {
        /// The ledger's event name.
        change: String,
        /// The last charged round then.
        after_round: u64,
        /// The old budget or δ.
        old: f64,
        /// The new one.
        new: f64,
    },
    /// The bearer tokens file was reloaded.
    TokensReloaded {
        /// The file.
        file: String,
        /// Tokens it now holds.
        tokens: usize,
    },
    /// A data directory written without authentication was sealed as
    /// found (see `tessera migrate`): what it held before could have been
    /// edited undetectably.
    Migrated {
        /// What was sealed, one line per file.
        sealed: Vec<String>,
    },
    /// A torn last line (a crash mid-append) was cut off on open.
    TornTailRemoved {
        /// How many bytes.
        bytes: u64,
    },
}

impl AuditEvent {
    /// The round of an event that the server appends only after that
    /// round's record is on disk (a round's events, not a publication's:
    /// the manifest vouches for those).
    pub(super) fn recorded_round(&self) -> Option<u64> {
        match self {
            AuditEvent::Joined { round, .. }
            | AuditEvent::Evicted { round, .. }
            | AuditEvent::RoundAborted { round, .. } => Some(*round),
            _ => None,
        }
    }
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Its position, from 1.
    pub seq: u64,
    /// When it was written.
    pub at_unix_ms: u64,
    /// What happened.
    pub event: AuditEvent,
    /// Its tag, hex.
    pub mac: String,
}

impl AuditRecord {
    fn body(&self) -> Vec<u8> {
        canonical(&(self.seq, self.at_unix_ms, &self.event))
    }
}

/// The open audit log: appends are serialised, each chained to the last.
/// Share it (it is `Sync`) with whatever records events: the scheduler,
/// the token reloader.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    key: MacKey,
    tip: Mutex<(u64, Tag)>,
}

/// The lines of an audit log, verified; `torn` is the length of a torn
/// last line (no newline), not returned.
#[derive(Debug)]
pub(super) struct Lines {
    pub(super) records: Vec<AuditRecord>,
    pub(super) torn: u64,
}

/// Reads and verifies the log at `path` (an absent file is empty); with
/// no key, the chain is not checked (only the lines' shape).
pub(super) fn read(path: &Path, key: Option<&StateKey>) -> Result<Lines, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(path)(e)),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let key = key.map(|k| k.subkey(Purpose::Audit));
    let mut prev = GENESIS;
    let mut records = Vec::new();
    for (i, line) in bytes[..complete]
        .split_inclusive(|&b| b == b'\n')
        .enumerate()
    {
        let line = &line[..line.len() - 1];
        let n = i + 1;
        let bad = |what: &str| {
            corrupt(
                path,
                format!(
                    "line {n} {what}: the log was edited, or the state key is not the one that wrote it"
                ),
            )
        };
        let record: AuditRecord =
            serde_json::from_slice(line).map_err(|_| bad("is not an audit record"))?;
        if record.seq != n as u64 {
            return Err(bad(&format!("has sequence number {}", record.seq)));
        }
        if let Some(key) = &key {
            prev = key
                .verify(&prev, &[&record.body()], &record.mac)
                .ok_or_else(|| bad("does not verify under the state key"))?;
        }
        records.push(record);
    }
    Ok(Lines {
        records,
        torn: (bytes.len() - complete) as u64,
    })
}

impl AuditLog {
    /// Opens the log in `dir`, verifying every line; a torn last line is
    /// cut off and recorded. Returns the log and its lines.
    pub(super) fn open(
        dir: &Path,
        key: &StateKey,
    ) -> Result<(AuditLog, Vec<AuditRecord>), StoreError> {
        let path = dir.join(AUDIT);
        let lines = read(&path, Some(key))?;
        let tip = lines.records.last().map_or((0, GENESIS), |r| {
            let mut tag = GENESIS;
            hex::decode_to_slice(&r.mac, &mut tag).expect("verified tags are hex");
            (r.seq, tag)
        });
        let log = AuditLog {
            path: path.clone(),
            key: key.subkey(Purpose::Audit),
            tip: Mutex::new(tip),
        };
        if lines.torn > 0 {
            warn!(file = %path.display(), bytes = lines.torn, "removing a torn last line of the audit log (a crash mid-append)");
            let len = fs::metadata(&path).map_err(io(&path))?.len() - lines.torn;
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            file.set_len(len)
                .and_then(|()| file.sync_all())
                .map_err(io(&path))?;
            log.append(AuditEvent::TornTailRemoved { bytes: lines.torn })?;
        }
        Ok((log, lines.records))
    }

    /// Appends `event`, durably (the line and its newline in one write,
    /// then fsync).
    pub fn append(&self, event: AuditEvent) -> Result<(), StoreError> {
        let mut tip = self.tip.lock().expect("audit lock");
        let mut record = AuditRecord {
            seq: tip.0 + 1,
            at_unix_ms: unix_ms(),
            event,
            mac: String::new(),
        };
        let tag = self.key.tag(&tip.1, &[&record.body()]);
        record.mac = hex_tag(&tag);
        let mut line = serde_json::to_vec(&record).expect("audit records serialise");
        line.push(b'\n');
        let created = !self.path.exists();
        let mut options = private_options();
        options.append(true).create(true);
        let mut file = options.open(&self.path).map_err(io(&self.path))?;
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(io(&self.path))?;
        if created {
            sync_dir(parent(&self.path))?;
        }
        *tip = (record.seq, tag);
        Ok(())
    }

    /// [`AuditLog::append`] where the event follows something already
    /// done (a publication that committed): a failure is logged, not
    /// returned, since undoing the deed is not possible.
    pub fn record(&self, event: AuditEvent) {
        if let Err(e) = self.append(event) {
            crate::metrics::storage_write_failed("write");
            error!("cannot append to the audit log: {e}");
        }
    }
}
