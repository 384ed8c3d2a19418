//! DP-FTRL's durable state (`ftrl.json`): where the current tree stands
//! and who took part in it.
//!
//! What it holds, and why each part must survive a restart:
//! - the tree seed's **salt**: the seed every node's noise derives from is
//!   `HMAC(state key, salt)` ([`Store::ftrl_seed`]), so it is secret (the
//!   state key is kept outside the data directory) and the same after any
//!   restart: a node already released is never drawn afresh;
//! - the epoch, its step, the model version it started from, its noise
//!   parameters, the rounds released in it and the last **released** noisy
//!   prefix sum (never an exact sum: see [`tessera_dp::tree`]) and momentum;
//! - the identities that took part in the epoch, written before their
//!   round starts, so a crash cannot forget a participation.
//!
//! The file carries an HMAC-SHA256 tag under its own key derived from the
//! state key. Open also checks it against the manifest and the ledger:
//! every version published after the epoch began whose round the ledger
//! charged as a tree step must be one of the epoch's released rounds. An
//! older authentic copy put back in its place would release a step's nodes
//! again with the same noise over a different sum (which reveals their
//! difference), so it is refused. (A version published under another DP
//! mode is not a tree step: the server closes that tree instead, see
//! `crate::ftrl`.)

use std::path::Path;

use serde::{Deserialize, Serialize};
use tessera_dp::ledger::{Mechanism, PrivacyLedger};
use tessera_dp::tree::TreeSeed;
use zeroize::Zeroizing;

use super::disk::{read_json, to_json};
use super::integrity::{GENESIS, Purpose, StateKey, canonical, hex_tag};
use super::models::Manifest;
use super::{Store, StoreError, corrupt};

/// The file name in the data directory.
pub(crate) const FTRL: &str = "ftrl.json";

/// The layout version of `ftrl.json`.
const FTRL_FORMAT: u32 = 1;

/// DP-FTRL's durable state: see the module docs. No field is secret (the
/// seed is not stored, only its salt) and no field is an un-noised sum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FtrlRecord {
    /// Layout version.
    pub format: u32,
    /// Hex of 32 random bytes: with the state key, the tree seed.
    pub salt: String,
    /// The tree (epoch) number.
    pub epoch: u64,
    /// Rounds released in this epoch.
    pub step: u64,
    /// The model version the epoch's FTRL update starts from (`θ_epoch`).
    pub epoch_start_version: u64,
    /// The noise scale `σ` of every node of this epoch's tree.
    pub sigma: f64,
    /// The L2 sensitivity `Δ` this epoch's noise was set for.
    pub l2_sensitivity: f64,
    /// The rounds released in this epoch, in order (one per step).
    pub rounds: Vec<u64>,
    /// The last released noisy prefix sum `S_step` (units of `2^-f`).
    pub noisy_prefix: Vec<i64>,
    /// DP-FTRLM's velocity over the noisy steps (zeros without momentum).
    pub velocity: Vec<f64>,
    /// The sum of the velocities so far: the model is `θ_epoch` plus
    /// `η · 2^-f / n` times this.
    pub moved: Vec<f64>,
    /// Identities that took part in a round of this epoch.
    pub participants: Vec<String>,
    /// How the server named those identities (`crate::ftrl` checks it
    /// against the configuration on open): a tree recorded under one
    /// scheme ends when the server restarts under another, whose names
    /// could give the same client a second, unrecorded name. Absent in
    /// files written before 2026-12-02 (and then left out of the
    /// serialisation, so their tags still verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_scheme: Option<String>,
}

/// What is written: the record's fields, then its tag.
#[derive(Serialize, Deserialize)]
struct SealedFtrl {
    #[serde(flatten)]
    record: FtrlRecord,
    mac: String,
}

impl FtrlRecord {
    /// The start of epoch `epoch` from model version `version`, for noise
    /// `sigma` against sensitivity `l2_sensitivity` and `dim` values, its
    /// participants named under `identity_scheme`.
    pub fn new_epoch(
        salt: String,
        epoch: u64,
        version: u64,
        (sigma, l2_sensitivity): (f64, f64),
        dim: usize,
        identity_scheme: &str,
    ) -> FtrlRecord {
        FtrlRecord {
            format: FTRL_FORMAT,
            salt,
            epoch,
            step: 0,
            epoch_start_version: version,
            sigma,
            l2_sensitivity,
            rounds: Vec::new(),
            noisy_prefix: vec![0; dim],
            velocity: vec![0.0; dim],
            moved: vec![0.0; dim],
            participants: Vec::new(),
            identity_scheme: Some(identity_scheme.to_owned()),
        }
    }
}

/// A fresh random salt, hex.
pub(crate) fn fresh_salt() -> String {
    use rand::SeedableRng as _;
    use rand_core::Rng as _;
    let mut rng = rand::rngs::StdRng::try_from_rng(&mut rand::rngs::SysRng)
        .expect("the operating system's random number generator works");
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn tag(key: &StateKey, record: &FtrlRecord) -> String {
    let tag = key
        .subkey(Purpose::Ftrl)
        .tag(&GENESIS, &[b"ftrl", &canonical(record)]);
    hex_tag(&tag)
}

/// Reads and verifies `ftrl.json`, if there is one, and checks it against
/// the manifest (see the module docs).
pub(super) fn open(
    dir: &Path,
    key: &StateKey,
    manifest: &Manifest,
    ledger: Option<&PrivacyLedger>,
) -> Result<Option<FtrlRecord>, StoreError> {
    let path = dir.join(FTRL);
    if !path.exists() {
        return Ok(None);
    }
    let sealed: SealedFtrl = read_json(&path)?;
    let record = sealed.record;
    let ok = key
        .subkey(Purpose::Ftrl)
        .verify(&GENESIS, &[b"ftrl", &canonical(&record)], &sealed.mac)
        .is_some();
    if !ok {
        return Err(corrupt(
            &path,
            "its MAC does not verify under the state key: it was edited (restore it from a backup)",
        ));
    }
    if record.format != FTRL_FORMAT {
        return Err(corrupt(
            &path,
            format!("format {} (this server reads {FTRL_FORMAT})", record.format),
        ));
    }
    check_against_manifest(&path, &record, manifest, ledger)?;
    Ok(Some(record))
}

/// Every version published after the epoch began, charged as a tree step,
/// is one of its released rounds: else this is an older copy of the file
/// (a rollback).
fn check_against_manifest(
    path: &Path,
    record: &FtrlRecord,
    manifest: &Manifest,
    ledger: Option<&PrivacyLedger>,
) -> Result<(), StoreError> {
    let tree_step = |round: u64| {
        ledger.is_some_and(|l| {
            l.entries().iter().any(|e| {
                e.round == round && matches!(e.mechanism, Mechanism::TreeAggregation { .. })
            })
        })
    };
    if !manifest
        .models
        .iter()
        .any(|m| m.version == record.epoch_start_version)
    {
        return Err(corrupt(
            path,
            format!(
                "its epoch starts from model version {}, which the manifest does not list",
                record.epoch_start_version
            ),
        ));
    }
    for m in manifest
        .models
        .iter()
        .filter(|m| m.version > record.epoch_start_version && tree_step(m.round))
    {
        if !record.rounds.contains(&m.round) {
            return Err(corrupt(
                path,
                format!(
                    "version {} (round {}) was published in tree epoch {} but the file does not record that round: it is an older copy put back (releasing its tree steps again would reveal the difference of two sums); restore the current file from a backup",
                    m.version, m.round, record.epoch
                ),
            ));
        }
    }
    Ok(())
}

impl Store {
    /// DP-FTRL's state, if the data directory has any.
    pub fn ftrl(&self) -> Option<&FtrlRecord> {
        self.ftrl.as_ref()
    }

    /// Writes DP-FTRL's state (atomically, tagged); memory keeps what the
    /// disk holds, so on failure the previous state stays.
    pub(crate) fn write_ftrl(&mut self, record: &FtrlRecord) -> Result<(), StoreError> {
        let sealed = SealedFtrl {
            record: record.clone(),
            mac: tag(&self.seal.key, record),
        };
        self.disk
            .write_atomic(&self.dir.join(FTRL), &to_json(&sealed))?;
        self.ftrl = Some(record.clone());
        Ok(())
    }

    /// The tree seed of `salt`: `HMAC(state key's FTRL seed key, salt)`,
    /// never written anywhere.
    pub(crate) fn ftrl_seed(&self, salt: &str) -> TreeSeed {
        let bytes = Zeroizing::new(
            self.seal
                .key
                .subkey(Purpose::FtrlSeed)
                .tag(&GENESIS, &[b"tree seed", salt.as_bytes()]),
        );
        TreeSeed::from_bytes(*bytes)
    }
}
