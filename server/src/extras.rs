//! The server's side of the extras a round's secure sum carries after the
//! model's coordinates (see [`tessera_dp::extras`] for the layout, the
//! bound `Δ` and what a client can and cannot lie about).
//!
//! Before a round: the update clip norm `C_r` (adaptive clipping's, or
//! `clip_norm`), the layout sent in `RoundStart.extras`, and the encoding
//! of the whole vector with `Δ`, so the ring, the distributed noise, the
//! central noise and the ledger's charge all cover the extras
//! ([`ServerConfig::summed`]).
//!
//! After it: the decoded sum is split into the model's part and the
//! extras' sums ([`finish`]):
//! - weighted averaging: the model moves by `Σ w_i u_i / Σ w_i`. Without
//!   DP `Σ w_i` is exact (a round whose weights sum to 0 moves nothing).
//!   Under DP it is noisy (std `z Δ / (2 κ C)` weights): it is floored at 1
//!   so noise can never blow the step up by more than the plain sum of
//!   weighted updates, at the cost of shrinking rounds whose true `Σ w_i`
//!   is below 1 (fewer than `max_examples` examples in the whole round);
//! - federated evaluation of the round's base model: accuracy
//!   `Σ correct / Σ total` and loss `Σ loss / Σ total`, in the round record
//!   (noisy under DP, with the noise's std in examples);
//! - adaptive clipping: `C_{r+1} = C_r exp(-η (b̄ - γ))` from the noisy
//!   fraction `b̄` of unclipped updates, kept within `2^±10` of the initial
//!   `clip_norm`, recorded (MAC'd) in the round record and restored from the
//!   latest one on restart ([`ExtrasState::at_start`]). A crash after the
//!   publication but before the record's outcome is written resumes from
//!   the round before: a public parameter one step stale, no privacy
//!   effect (every round is charged with the `Δ` it ran with).

use tessera_dp::encoding::{Decoded, FixedPoint};
use tessera_dp::extras::{ExtrasLayout, next_clip_norm};
use tessera_dp::mechanism::DistributedEncoding;

use crate::config::{ConfigError, DpMode, ServerConfig};
use crate::store::{ExtrasRecord, FederatedEval, Store};

/// How far adaptive clipping may take the clip norm from its initial
/// value, either way (a factor of 2^10).
const CLIP_RANGE: f32 = 1024.0;

/// The extras' state that outlives a round.
#[derive(Debug, Clone)]
pub(crate) struct ExtrasState {
    /// `C_r`: the clip norm of the next round.
    pub(crate) clip_norm: f32,
    /// What the last release decoded, for its round record.
    pub(crate) last: Option<ExtrasRecord>,
}

impl ExtrasState {
    /// The state a (re)started server runs with: with adaptive clipping,
    /// the clip norm the latest round record set (the records' MACs were
    /// verified when the store was opened), else `clip_norm`.
    pub(crate) fn at_start(config: &ServerConfig, store: &Store) -> ExtrasState {
        let stored = store
            .rounds()
            .iter()
            .rev()
            .find_map(|r| r.extras.as_ref()?.next_clip_norm);
        let clip_norm = match stored {
            Some(c) if config.round.extras.adaptive_clip => clamp_clip(config, c),
            _ => config.round.clip_norm,
        };
        ExtrasState {
            clip_norm,
            last: None,
        }
    }
}

/// `c` within [`CLIP_RANGE`] of the configured initial clip norm.
fn clamp_clip(config: &ServerConfig, c: f32) -> f32 {
    let c0 = config.round.clip_norm;
    if c.is_finite() {
        c.clamp(c0 / CLIP_RANGE, c0 * CLIP_RANGE)
    } else {
        c0
    }
}

/// The clip norm a round runs with and its encoding: `clip_norm`, or, if
/// the ring or the noise cannot be planned that wide (adaptive clipping
/// grew it past what `bits` allows), halved towards the configured one,
/// which start-up validated.
pub(crate) fn plan_encoding(
    config: &ServerConfig,
    clip_norm: f32,
    clients: u32,
    min_survivors: u32,
    dim: u32,
) -> Result<(f32, FixedPoint, Option<DistributedEncoding>), ConfigError> {
    let c0 = config.round.clip_norm;
    let mut c = clip_norm;
    loop {
        match config.round_encoding_at(c, clients, min_survivors, dim) {
            Ok((fp, dist)) => return Ok((c, fp, dist)),
            Err(_) if c > c0 => {
                tracing::warn!(
                    clip_norm = c,
                    "adaptive clip norm too wide for the ring; halving it"
                );
                c = (c / 2.0).max(c0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// What a completed round's decoded sum says: the mean update of the
/// model's `dim` coordinates (weighted if the round weights) and the
/// extras' record; also sets the next clip norm in `state`.
/// `noise_std` is the DP noise on one coordinate of the sum (0 without
/// DP); `base_version` the model version the round started from.
pub(crate) fn finish(
    config: &ServerConfig,
    layout: &ExtrasLayout,
    decoded: &Decoded,
    noise_std: f64,
    base_version: u64,
    state: &mut ExtrasState,
) -> Vec<f32> {
    let dim = decoded.sum.len() - layout.len();
    let n = decoded.contributors;
    let sums = layout.decode(&decoded.sum[dim..], n);
    let noisy = config.dp.mode != DpMode::Off;
    let model = Decoded {
        sum: decoded.sum[..dim].to_vec(),
        contributors: n,
    };
    let mut record = ExtrasRecord {
        clip_norm: layout.clip_norm,
        next_clip_norm: None,
        unclipped_fraction: None,
        weight_sum: None,
        federated: None,
        noise_std,
    };
    let mean = match sums.weight {
        None => model.mean(),
        Some(weight) => {
            let denominator = if noisy { weight.max(1.0) } else { weight };
            record.weight_sum = Some(denominator);
            if denominator > 0.0 {
                model
                    .sum
                    .iter()
                    .map(|&s| (f64::from(s) / denominator) as f32)
                    .collect()
            } else {
                vec![0.0; dim]
            }
        }
    };
    if let Some(e) = sums.evaluation {
        let noise = layout.unit_noise(noise_std);
        let ratio = |x: f64| (e.total >= 1.0).then(|| (x / e.total).max(0.0));
        record.federated = Some(FederatedEval {
            model_version: base_version,
            accuracy: ratio(e.correct).map(|a| a.min(1.0)),
            loss: ratio(e.loss_sum),
            examples: e.total,
            examples_noise_std: noise.eval_count,
        });
    }
    if let (Some(within), true) = (sums.within_clip, n > 0) {
        let fraction = within / f64::from(n);
        let rules = &config.round.extras;
        let next = next_clip_norm(
            layout.clip_norm,
            fraction,
            rules.clip_target_quantile,
            rules.clip_lr,
        );
        let next = clamp_clip(config, next);
        record.unclipped_fraction = Some(fraction);
        record.next_clip_norm = Some(next);
        state.clip_norm = next;
    }
    state.last = Some(record);
    mean
}
