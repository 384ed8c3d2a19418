//! Round records: one JSON file per round ever opened, written `started`
//! when the round opens (so its id is never reused, since round ids bind
//! key derivations) and again with its outcome.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::disk::{entries, read_json, to_json};
use super::integrity::{Purpose, StateKey, Tag, canonical, hex_tag};
use super::{StoreError, corrupt};

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
    /// How the round's clients were chosen from those waiting (absent in
    /// records written before cohort sampling, and then left out of the
    /// record, so their tags still verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort: Option<CohortRecord>,
    /// `--dp ftrl`: the tree epoch and step this round's sum was released
    /// as (completed rounds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<TreeStep>,
    /// The server strategy and its hyper-parameters (and FedProx's mu) the
    /// round ran with; absent in records written before they were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<crate::config::StrategyRecord>,
    /// What the round's extras said (weights, federated evaluation,
    /// adaptive clipping), for completed rounds that carried any. Absent
    /// from the file otherwise, so records without extras keep their
    /// bytes, and their MACs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extras: Option<ExtrasRecord>,
}

/// How a round's cohort was chosen: sampled uniformly at random by the
/// server from the clients waiting in the lobby. The server chose, and
/// knows, who took part: this is no privacy amplification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CohortRecord {
    /// The rule: `all` (every waiting client up to `max_clients`),
    /// `size:K` or `fraction:F`.
    pub rule: String,
    /// Clients waiting, and eligible, when the cohort was sampled.
    pub waiting: u32,
    /// Clients sampled into the round (its `clients`).
    pub selected: u32,
}

/// Where a DP-FTRL round's sum sits in the tree: epoch (tree) number and
/// 1-based step (leaf) in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeStep {
    /// The tree (epoch) number, from 0.
    pub epoch: u64,
    /// The leaf, from 1.
    pub step: u64,
}

/// The decoded extras of a completed round (see `tessera_dp::extras`):
/// noisy under DP, exact up to fixed-point rounding without.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExtrasRecord {
    /// The L2 norm updates were clipped to in this round.
    pub clip_norm: f32,
    /// Adaptive clipping: the clip norm of the next round. The latest one
    /// recorded is where a restarted server resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_clip_norm: Option<f32>,
    /// Adaptive clipping: the fraction of contributors whose update norm
    /// was at most `clip_norm` before clipping (noisy under DP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unclipped_fraction: Option<f64>,
    /// Weighted averaging: the sum of the contributors' weights the mean
    /// was divided by (noisy under DP, floored at 1 then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_sum: Option<f64>,
    /// Federated evaluation of the round's base model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federated: Option<FederatedEval>,
    /// Whether the figures above carry DP noise, and its standard
    /// deviation on one coordinate of the sum (real units).
    pub noise_std: f64,
}

/// A federated evaluation: the round's clients' counts, summed securely.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FederatedEval {
    /// The model version evaluated: the round's base version, which every
    /// client fetched and trained from.
    pub model_version: u64,
    /// `Σ correct / Σ total`, clamped to [0, 1]; absent when `Σ total` is
    /// below one example (no client evaluated, or noise).
    pub accuracy: Option<f64>,
    /// `Σ loss_sum / Σ total`, likewise.
    pub loss: Option<f64>,
    /// `Σ total`, the examples evaluated (noisy under DP).
    pub examples: f64,
    /// The noise standard deviation on `Σ total` and `Σ correct`, in
    /// examples (0 without DP).
    pub examples_noise_std: f64,
}

/// What is written: the record's fields, then its tag. The tag covers
/// the whole record, the tag of the record before it (by round id), and
/// the SHA-256 of the model it published, if any, so a record cannot be
/// edited, dropped from the middle or pointed at another model.
#[derive(Serialize)]
struct SealedRecord<'a> {
    #[serde(flatten)]
    record: &'a RoundRecord,
    mac: String,
}

fn tag_parts(record: &RoundRecord, model_sha256: &str) -> [Vec<u8>; 2] {
    [canonical(record), model_sha256.as_bytes().to_vec()]
}

/// The record file's bytes under `key`, after the record tagged `prev`,
/// and its tag.
pub(super) fn sealed_bytes(
    key: &StateKey,
    prev: &Tag,
    record: &RoundRecord,
    model_sha256: &str,
) -> (Vec<u8>, Tag) {
    let [body, model] = tag_parts(record, model_sha256);
    let tag = key
        .subkey(Purpose::Rounds)
        .tag(prev, &[b"round", &body, &model]);
    let bytes = to_json(&SealedRecord {
        record,
        mac: hex_tag(&tag),
    });
    (bytes, tag)
}

/// The chain link after round `round`, given the link before it. A
/// record's tag covers its content and the link before it; the link
/// covers only the sequence of round numbers. So removing a record from
/// the middle breaks every later tag, while rewriting a record's outcome
/// (a `started` round finished on the next start) re-tags that record
/// alone: a crash between rewrites can never leave a chain that no longer
/// verifies.
pub(super) fn link(key: &StateKey, prev: &Tag, round: u64) -> Tag {
    key.subkey(Purpose::Rounds)
        .tag(prev, &[b"link", &round.to_le_bytes()])
}

/// Reads a record file: the record and its tag, if it has one.
pub(super) fn read(path: &Path) -> Result<(RoundRecord, Option<String>), StoreError> {
    let mut value: serde_json::Value = read_json(path)?;
    let mac = match value.as_object_mut().and_then(|o| o.remove("mac")) {
        Some(serde_json::Value::String(m)) => Some(m),
        Some(_) => return Err(corrupt(path, "mac is not a string")),
        None => None,
    };
    let record = serde_json::from_value(value).map_err(|e| corrupt(path, e.to_string()))?;
    Ok((record, mac))
}

/// Checks a record's tag after the record tagged `prev`.
pub(super) fn verify(
    path: &Path,
    key: &StateKey,
    prev: &Tag,
    record: &RoundRecord,
    model_sha256: &str,
    mac: &str,
) -> Result<Tag, StoreError> {
    let [body, model] = tag_parts(record, model_sha256);
    key.subkey(Purpose::Rounds)
        .verify(prev, &[b"round", &body, &model], mac)
        .ok_or_else(|| {
            corrupt(
                path,
                format!(
                    "the MAC of round {} does not verify under the state key: the record was edited, the record before it was removed or edited, it names another model, or the state key is not the one that wrote it",
                    record.round
                ),
            )
        })
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
