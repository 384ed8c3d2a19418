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
//! - weighted averaging: the model moves by `Σ w_i u_i / Σ w_i`, the
//!   denominator kept within `[1, n]` ([`weight_denominator`]). Without
//!   DP `Σ w_i` is exact up to fixed-point rounding. Under DP it is noisy
//!   (std `z Δ / (2 κ C)` weights, a fraction `2 z / (n w̄)` of it for mean
//!   weight `w̄` when `κ` is small): the floor of 1 keeps noise from blowing
//!   the step up beyond the plain sum of weighted updates, at the cost of
//!   shrinking rounds whose true `Σ w_i` is below 1 (fewer than
//!   `max_examples` examples in the whole round). With few clients the
//!   noisy denominator adds a multiplicative error on the step; raise
//!   `extras_scale`, or leave weighting off under DP;
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

use crate::config::{ConfigError, ServerConfig};
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

/// The denominator of the weighted mean: the decoded `Σ w` kept within
/// `[1, n]`. `n` is the most honest weights (each in `[0, 1]`) sum to; the
/// floor of 1 is what stops a small denominator from amplifying the step:
/// noise under DP, or a client that sends a negative weight (even within
/// `Δ`, it can cancel about `(Δ / (κ C) - 1) / 2` of the others' weights).
/// With the floor the step is at most the plain sum of the weighted
/// updates. Honest rounds whose weights sum below 1 (fewer than
/// `max_examples` examples in all) are shrunk by it: choose `max_examples`
/// near a typical client's count, not above the whole round's.
pub(crate) fn weight_denominator(weight: f64, n: u32) -> f64 {
    let ceiling = f64::from(n).max(1.0);
    if weight.is_nan() {
        ceiling
    } else {
        weight.clamp(1.0, ceiling)
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
            let denominator = weight_denominator(weight, n);
            record.weight_sum = Some(denominator);
            if n > 0 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weight_denominator_stays_within_what_honest_weights_sum_to() {
        // In range: as decoded.
        assert_eq!(weight_denominator(2.5, 4), 2.5);
        // A client that wrote a huge or negative weight, or noise near
        // zero: clamped to n, or to 1.
        assert_eq!(weight_denominator(1e9, 4), 4.0);
        assert_eq!(weight_denominator(-1e9, 4), 1.0);
        assert_eq!(weight_denominator(0.2, 4), 1.0);
        assert_eq!(weight_denominator(f64::NAN, 4), 4.0);
    }

    /// Andrew et al.'s experiment through the server's whole rule: 50
    /// clients a round whose update norms are uniform on [0, 10] build
    /// their vectors (`client_vector`), the sum gets Gaussian noise whose
    /// std on the indicator count is cohort / 20 = 2.5 (what the clients'
    /// noise would add), and [`finish`] decodes it and moves `C`. From
    /// C = 0.1 the clip norm settles near the median norm, 5.
    #[test]
    fn the_quantile_estimate_converges_through_the_servers_rule() {
        use rand::{RngExt, SeedableRng};
        use tessera_dp::extras::ClientExtras;
        let mut config = crate::config::ServerConfig::default();
        config.round.extras.adaptive_clip = true;
        config.round.clip_norm = 0.1;
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let gaussian = move |rng: &mut rand::rngs::StdRng| {
            let (u, v): (f64, f64) = (rng.random(), rng.random());
            (-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        };
        let mut state = ExtrasState {
            clip_norm: 0.1,
            last: None,
        };
        let mut late = Vec::new();
        for round in 0..300 {
            let layout = config.extras_layout(state.clip_norm).unwrap();
            // σ on a coordinate is 2 s x 2.5 on the count.
            let sigma = 2.0 * 0.25 * f64::from(state.clip_norm) * 2.5;
            let mut sum = [0f64; 3];
            for _ in 0..50 {
                let norm = rng.random_range(0.0..10.0f32);
                let update = [norm, 0.0];
                let v = layout
                    .client_vector(&update, &ClientExtras::default())
                    .unwrap();
                for (s, x) in sum.iter_mut().zip(&v.values) {
                    *s += f64::from(*x);
                }
            }
            let decoded = Decoded {
                sum: sum
                    .iter()
                    .map(|&s| (s + sigma * gaussian(&mut rng)) as f32)
                    .collect(),
                contributors: 50,
            };
            finish(&config, &layout, &decoded, sigma, round, &mut state);
            if round >= 200 {
                late.push(f64::from(state.clip_norm));
            }
        }
        let mean = late.iter().sum::<f64>() / late.len() as f64;
        assert!((mean - 5.0).abs() < 0.6, "mean clip norm {mean}");
    }

    #[test]
    fn adaptive_clipping_moves_the_clip_norm_towards_the_target_quantile() {
        use crate::config::ServerConfig;
        use tessera_dp::extras::ExtrasLayout;
        let mut config = ServerConfig::default();
        config.round.extras.adaptive_clip = true;
        let layout = config.extras_layout(1.0).unwrap();
        assert_eq!(
            layout,
            ExtrasLayout {
                clip_indicator: true,
                ..ExtrasLayout::new(1.0, 0.25)
            }
        );
        // 4 contributors, model dimension 1; all 4 unclipped (x = 1
        // centred is +s each), so C shrinks by exp(-0.2 (1 - 0.5)).
        let s = 0.25f32;
        let decoded = Decoded {
            sum: vec![0.0, 4.0 * s],
            contributors: 4,
        };
        let mut state = ExtrasState {
            clip_norm: 1.0,
            last: None,
        };
        finish(&config, &layout, &decoded, 0.0, 3, &mut state);
        let expected = (-0.1f64).exp() as f32;
        assert!(
            (state.clip_norm - expected).abs() < 1e-6,
            "{}",
            state.clip_norm
        );
        let record = state.last.unwrap();
        assert_eq!(record.next_clip_norm, Some(state.clip_norm));
        assert!((record.unclipped_fraction.unwrap() - 1.0).abs() < 1e-6);
    }
}
