//! Extra coordinates carried inside the secure sum beside the model update:
//! the example-count weight of weighted averaging, federated evaluation
//! counts, and the clipped-indicator bit of adaptive clipping (Andrew,
//! Thakkar, McMahan, Ramaswamy, NeurIPS 2021, "Differentially Private
//! Learning with Adaptive Clipping").
//!
//! # The vector a client sums
//!
//! A round with extras sums `[w u ; extras]` of length `d + k`: the
//! client's update `u` clipped to L2 norm `C` (and multiplied by its weight
//! `w <= 1` when the round weights), followed by `k` extra coordinates in
//! blocks. Every extra is a value `x` in `[0, 1]` (a weight, a count over
//! its public bound, a bit) sent *centred* as `(2x - 1) s` with the block's
//! scale `s = κ C / sqrt(block size)`, so every block has L2 norm at most
//! `κ C` by construction and centring halves the noise on the decoded
//! value for the same norm (Andrew et al. centre their bit the same way).
//! `κ` is the public `scale` ([`ExtrasLayout::scale`]).
//!
//! | block | coordinates | `x` |
//! |---|---|---|
//! | weight | 1 | `w = min(n, N) / N`, `n` the client's example count, `N` the public `max_examples` |
//! | evaluation | 3 | `c/T`, `t/T`, `l/(T L)` with `t = min(total, T)`, `c = min(correct, t)`, `l = min(loss_sum, L t)`; `T`, `L` public bounds |
//! | clip indicator | 1 | `b = 1` if the update's norm *before* clipping was at most `C`, else 0 |
//!
//! The whole vector has L2 norm at most
//! `Δ = sqrt(C² + m κ² C²) = C sqrt(1 + m κ²)` for `m` blocks
//! ([`ExtrasLayout::joint_bound`]). That `Δ` is the round's fixed-point
//! clip norm: the server plans the ring, calibrates distributed noise,
//! adds central noise and charges the ledger with `Δ` in place of `C`, so
//! the extras are noised exactly like the update and their privacy cost
//! is in the round's charge. With DP off nothing is noised and the
//! decoded extras are exact up to fixed-point rounding.
//!
//! # Decoding
//!
//! The server decodes the sum of `n` contributors (`n` is known exactly: it
//! is the set of unmasked inputs) and recovers `Σ x = (Σ v / s + n) / 2`
//! for every extra ([`ExtrasLayout::decode`]). A noise of standard
//! deviation `σ` (real units) on a coordinate becomes `σ / (2 s)` on
//! `Σ x` ([`ExtrasLayout::unit_noise`]).
//!
//! # What the server can and cannot enforce
//!
//! The bounds above are applied by the client ([`ExtrasLayout::client_vector`]);
//! the server sees only the sum. What holds whatever a client does:
//! - a client that skips the bounds but uses the round's encoding (a weight
//!   of 1e6, a count of a million) is held to `Δ` as a whole: the encoding
//!   clips the joint vector to `Δ` (with distributed DP, conditional
//!   rounding bounds the integer vector too). Its weight is then at most
//!   `(Δ / (κ C) + 1) / 2` and at least `(1 - Δ / (κ C)) / 2` (about 2.56
//!   and -1.56 at `κ = 0.25` with one block): a lie, but a bounded one;
//! - with distributed DP, the guarantee of the honest clients holds against
//!   any client behaviour: it rests on the honest clients' own clipping and
//!   noise, added inside the ring. Where the server adds the noise (central
//!   DP, DP-FTRL) it too adds it inside the ring and decodes after, so
//!   colluding clients that write raw ring values next to the wrap point
//!   cannot make one honest update move the release past the sensitivity
//!   the noise covers (a red-team finding of 2026-12-02, fixed; see
//!   [`crate::mechanism::CentralDp`]);
//! - the server keeps the weighted mean's denominator within `[1, n]`
//!   (`n` contributors, which it knows exactly), so a negative weight
//!   cannot drive it to 0 and blow the step up, nor a huge one shrink the
//!   step to nothing. The clip-indicator fraction is clamped to `[0, 1]`
//!   ([`next_clip_norm`]), so one round moves `C` by a bounded factor.
//!
//! What no server can check: that a client's numbers are *true* (weight 1
//! with one example, every evaluation example correct, within the bounds),
//! or, from a client that writes ring elements directly and skips the
//! encoding altogether, anything about its input: secure aggregation hides
//! each input, for the update's coordinates as for the extras'. Bounding
//! that needs zero-knowledge range proofs, which Tessera does not have.
//!
//! ```
//! use tessera_dp::extras::{ClientExtras, ExtrasLayout};
//!
//! let layout = ExtrasLayout { weighting: Some(100), ..ExtrasLayout::new(1.0, 0.5) };
//! let extras = ClientExtras { num_examples: Some(50), ..Default::default() };
//! let v = layout.client_vector(&[0.6, 0.8], &extras)?;
//! // The update times w = 0.5, then the centred weight (2 * 0.5 - 1) * 0.5.
//! assert_eq!(v.values, vec![0.3, 0.4, 0.0]);
//! let sums = layout.decode(&v.values[2..], 1);
//! assert!((sums.weight.unwrap() - 0.5).abs() < 1e-6);
//! # Ok::<(), tessera_dp::extras::ExtrasError>(())
//! ```

use serde::{Deserialize, Serialize};

/// Why an extras layout or a client's extras were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ExtrasError {
    /// A public parameter out of its range.
    #[error("extras parameter {name} = {value} is out of range ({expected})")]
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// Its value.
        value: f64,
        /// What it must be.
        expected: &'static str,
    },
    /// The round weights updates by example count and the client gave none.
    #[error(
        "the round weights updates by example count: give the number of examples the update was trained on"
    )]
    MissingExampleCount,
    /// The update has a coordinate that is NaN or infinite.
    #[error("the update has a coordinate that is not finite")]
    NotFinite,
}

/// A client's own federated evaluation of the model version it fetched,
/// on its held-out examples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Examples classified correctly.
    pub correct: u64,
    /// Examples evaluated.
    pub total: u64,
    /// The sum of the per-example losses (not the mean).
    pub loss_sum: f64,
}

/// What a client contributes besides its update.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClientExtras {
    /// The number of examples the update was trained on (needed when the
    /// round weights by example count).
    pub num_examples: Option<u64>,
    /// Its evaluation of the round's base model (a round that asks for
    /// evaluation counts a client without one as zero examples).
    pub evaluation: Option<Evaluation>,
}

/// Public bounds of federated evaluation counts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalBounds {
    /// `T`: the most evaluation examples one client's counts stand for.
    pub max_examples: u32,
    /// `L`: the most one example's loss counts for.
    pub max_loss: f32,
}

/// Which extras a round carries and their public bounds; the same on the
/// server and every client of the round (it travels in `RoundStart`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExtrasLayout {
    /// `C`: the L2 norm the update itself is clipped to.
    pub clip_norm: f32,
    /// `κ`: every block's L2 norm is at most `κ C`.
    pub scale: f32,
    /// `N`: weighted averaging by example count, if on.
    pub weighting: Option<u32>,
    /// Federated evaluation, if on.
    pub evaluation: Option<EvalBounds>,
    /// Adaptive clipping's clipped-indicator bit, if on.
    pub clip_indicator: bool,
}

/// The decoded sums of the extras over a round's contributors (noisy under
/// DP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExtrasSums {
    /// `Σ w`, the weights' sum.
    pub weight: Option<f64>,
    /// `Σ correct`, `Σ total`, `Σ loss_sum` (in examples and loss units).
    pub evaluation: Option<Evaluation64>,
    /// How many contributors' updates had norm at most `C` before clipping.
    pub within_clip: Option<f64>,
}

/// Evaluation sums as real numbers (noised under DP, so not integers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation64 {
    /// `Σ correct`.
    pub correct: f64,
    /// `Σ total`.
    pub total: f64,
    /// `Σ loss_sum`.
    pub loss_sum: f64,
}

/// Standard deviations of the noise on each decoded sum of
/// [`ExtrasSums`], in its own units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExtrasNoise {
    /// On `Σ w`.
    pub weight: f64,
    /// On `Σ correct` and `Σ total` (examples).
    pub eval_count: f64,
    /// On `Σ loss_sum`.
    pub eval_loss: f64,
    /// On the count of unclipped updates.
    pub within_clip: f64,
}

/// A client's vector `[w clip(u) ; extras]`, ready for the round's
/// fixed-point encoding.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientVector {
    /// `d + k` values, of L2 norm at most [`ExtrasLayout::joint_bound`].
    pub values: Vec<f32>,
    /// The update's L2 norm before clipping.
    pub norm: f32,
    /// Whether the update was clipped.
    pub clipped: bool,
}

/// Coordinates of the evaluation block.
const EVAL_LEN: usize = 3;

impl ExtrasLayout {
    /// A layout that carries nothing yet, with clip norm `C` and block
    /// scale `κ`; set the fields of the extras the round carries.
    pub fn new(clip_norm: f32, scale: f32) -> Self {
        ExtrasLayout {
            clip_norm,
            scale,
            weighting: None,
            evaluation: None,
            clip_indicator: false,
        }
    }

    /// Checks the public parameters (they may come over the wire).
    pub fn validate(&self) -> Result<(), ExtrasError> {
        let bad = |name, value: f64, expected| ExtrasError::InvalidParameter {
            name,
            value,
            expected,
        };
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return Err(bad("clip_norm", self.clip_norm.into(), "positive"));
        }
        if !(self.scale.is_finite() && self.scale > 0.0 && self.scale <= 16.0) {
            return Err(bad("scale", self.scale.into(), "in (0, 16]"));
        }
        if self.weighting == Some(0) {
            return Err(bad("max_examples", 0.0, "at least 1"));
        }
        if let Some(e) = self.evaluation {
            if e.max_examples == 0 {
                return Err(bad("eval_max_examples", 0.0, "at least 1"));
            }
            if !(e.max_loss.is_finite() && e.max_loss > 0.0) {
                return Err(bad("eval_max_loss", e.max_loss.into(), "positive"));
            }
        }
        Ok(())
    }

    /// `m`, the number of blocks carried.
    pub fn blocks(&self) -> u32 {
        u32::from(self.weighting.is_some())
            + u32::from(self.evaluation.is_some())
            + u32::from(self.clip_indicator)
    }

    /// `k`, the extra coordinates after the model's.
    pub fn len(&self) -> usize {
        usize::from(self.weighting.is_some())
            + if self.evaluation.is_some() {
                EVAL_LEN
            } else {
                0
            }
            + usize::from(self.clip_indicator)
    }

    /// Whether the round carries no extras at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `Δ = C sqrt(1 + m κ²)`, the L2 bound of the whole vector, rounded up
    /// (by a relative `1e-6`) so `f32` rounding of the parts never exceeds
    /// it: the round's sensitivity.
    pub fn joint_bound(&self) -> f32 {
        let c = f64::from(self.clip_norm);
        let k = f64::from(self.scale);
        let delta = c * (1.0 + f64::from(self.blocks()) * k * k).sqrt();
        (delta * (1.0 + 1e-6)) as f32
    }

    /// The scale `s` of a block of `size` coordinates: `κ C / sqrt(size)`.
    fn block_scale(&self, size: usize) -> f64 {
        f64::from(self.scale) * f64::from(self.clip_norm) / (size as f64).sqrt()
    }

    /// The client's vector `[w clip(u) ; extras]`: the update clipped to
    /// `C` (then times its weight), each extra clamped to its public bound
    /// and centred (see the module docs).
    pub fn client_vector(
        &self,
        update: &[f32],
        extras: &ClientExtras,
    ) -> Result<ClientVector, ExtrasError> {
        self.validate()?;
        if update.iter().any(|x| !x.is_finite()) {
            return Err(ExtrasError::NotFinite);
        }
        let norm = update
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        let c = f64::from(self.clip_norm);
        let clipped = norm > c;
        let weight = match self.weighting {
            None => 1.0,
            Some(max) => {
                let n = extras
                    .num_examples
                    .ok_or(ExtrasError::MissingExampleCount)?;
                n.min(u64::from(max)) as f64 / f64::from(max)
            }
        };
        let factor = if clipped { c / norm } else { 1.0 } * weight;
        let mut values: Vec<f32> = update
            .iter()
            .map(|&x| (f64::from(x) * factor) as f32)
            .collect();
        let centred = |x: f64, s: f64| ((2.0 * x.clamp(0.0, 1.0) - 1.0) * s) as f32;
        if self.weighting.is_some() {
            values.push(centred(weight, self.block_scale(1)));
        }
        if let Some(bounds) = self.evaluation {
            let s = self.block_scale(EVAL_LEN);
            let t_max = f64::from(bounds.max_examples);
            let e = extras.evaluation.unwrap_or_default();
            let total = e.total.min(u64::from(bounds.max_examples)) as f64;
            let correct = (e.correct as f64).min(total);
            let loss_cap = f64::from(bounds.max_loss) * total;
            // NaN counts as no loss (clamp keeps NaN; max(0) drops it).
            let loss = e.loss_sum.max(0.0).min(loss_cap);
            values.push(centred(correct / t_max, s));
            values.push(centred(total / t_max, s));
            values.push(centred(loss / (t_max * f64::from(bounds.max_loss)), s));
        }
        if self.clip_indicator {
            values.push(centred(
                if clipped { 0.0 } else { 1.0 },
                self.block_scale(1),
            ));
        }
        Ok(ClientVector {
            values,
            norm: norm as f32,
            clipped,
        })
    }

    /// The sums of the extras from the decoded extra coordinates of a sum
    /// over `contributors` (the `k` values after the model's `d`).
    ///
    /// # Panics
    /// If `extras` does not hold [`Self::len`] values.
    pub fn decode(&self, extras: &[f32], contributors: u32) -> ExtrasSums {
        assert_eq!(extras.len(), self.len(), "one value per extra coordinate");
        let n = f64::from(contributors);
        let mut at = 0;
        let mut next = |s: f64| {
            let v = f64::from(extras[at]);
            at += 1;
            (v / s + n) / 2.0
        };
        let mut sums = ExtrasSums::default();
        if self.weighting.is_some() {
            sums.weight = Some(next(self.block_scale(1)));
        }
        if let Some(bounds) = self.evaluation {
            let s = self.block_scale(EVAL_LEN);
            let t = f64::from(bounds.max_examples);
            let correct = next(s) * t;
            let total = next(s) * t;
            let loss_sum = next(s) * t * f64::from(bounds.max_loss);
            sums.evaluation = Some(Evaluation64 {
                correct,
                total,
                loss_sum,
            });
        }
        if self.clip_indicator {
            sums.within_clip = Some(next(self.block_scale(1)));
        }
        sums
    }

    /// The noise standard deviation on each decoded sum, given a noise of
    /// standard deviation `coordinate_std` (real units, after the `2^-f`
    /// scaling) on every coordinate of the sum: `σ / (2 s)` times the
    /// value's unit.
    pub fn unit_noise(&self, coordinate_std: f64) -> ExtrasNoise {
        let one = coordinate_std / (2.0 * self.block_scale(1));
        let eval = coordinate_std / (2.0 * self.block_scale(EVAL_LEN));
        let (t, l) = self.evaluation.map_or((0.0, 0.0), |b| {
            (f64::from(b.max_examples), f64::from(b.max_loss))
        });
        ExtrasNoise {
            weight: if self.weighting.is_some() { one } else { 0.0 },
            eval_count: eval * t,
            eval_loss: eval * t * l,
            within_clip: if self.clip_indicator { one } else { 0.0 },
        }
    }
}

/// Adaptive clipping's geometric update (Andrew et al. 2021, Algorithm 1):
/// `C' = C exp(-η (b̄ - γ))`, with `b̄` the (noisy) fraction of updates
/// whose norm was at most `C`, `γ` the target quantile and `η` the step.
/// `b̄` is clamped to `[0, 1]` first (noise can push it outside, and a
/// fraction outside it says nothing more), so one round moves `C` by at
/// most a factor `exp(η max(γ, 1 - γ))`.
pub fn next_clip_norm(clip_norm: f32, within_fraction: f64, target: f64, lr: f64) -> f32 {
    let b = if within_fraction.is_nan() {
        target
    } else {
        within_fraction.clamp(0.0, 1.0)
    };
    (f64::from(clip_norm) * (-lr * (b - target)).exp()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> ExtrasLayout {
        ExtrasLayout {
            weighting: Some(100),
            evaluation: Some(EvalBounds {
                max_examples: 50,
                max_loss: 10.0,
            }),
            clip_indicator: true,
            ..ExtrasLayout::new(2.0, 0.5)
        }
    }

    fn norm(v: &[f32]) -> f64 {
        v.iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn every_vector_is_within_the_joint_bound_whatever_the_client_claims() {
        let layout = full();
        assert_eq!(layout.len(), 5);
        let delta = f64::from(layout.joint_bound());
        // sqrt(4 + 3 * 0.25 * 4) = sqrt(7).
        assert!((delta - 7f64.sqrt()).abs() < 1e-5, "{delta}");
        for (update, n, e) in [
            (
                vec![30.0f32, 40.0],
                u64::MAX,
                (u64::MAX, u64::MAX, f64::MAX),
            ),
            (vec![0.0, 0.0], 0, (0, 0, 0.0)),
            (vec![1.0, 0.0], 7, (3, 5, -4.0)),
            (vec![1.0, 1.0], 100, (10, 5, f64::NAN)),
        ] {
            let extras = ClientExtras {
                num_examples: Some(n),
                evaluation: Some(Evaluation {
                    correct: e.0,
                    total: e.1,
                    loss_sum: e.2,
                }),
            };
            let v = layout.client_vector(&update, &extras).unwrap();
            assert!(v.values.iter().all(|x| x.is_finite()));
            assert!(norm(&v.values) <= delta, "{:?}", v.values);
        }
    }

    #[test]
    fn decoding_a_sum_recovers_the_plain_sums() {
        let layout = full();
        let clients = [
            (vec![3.0f32, 4.0], 20u64, (8u64, 10u64, 5.0f64)),
            (vec![0.5, 0.5], 500, (40, 60, 1000.0)),
            (vec![0.0, 1.0], 0, (2, 1, 0.5)),
        ];
        let mut sum = [0f64; 7];
        for (u, n, e) in &clients {
            let v = layout
                .client_vector(
                    u,
                    &ClientExtras {
                        num_examples: Some(*n),
                        evaluation: Some(Evaluation {
                            correct: e.0,
                            total: e.1,
                            loss_sum: e.2,
                        }),
                    },
                )
                .unwrap();
            for (s, x) in sum.iter_mut().zip(&v.values) {
                *s += f64::from(*x);
            }
        }
        let extras: Vec<f32> = sum[2..].iter().map(|&x| x as f32).collect();
        let sums = layout.decode(&extras, 3);
        // Weights 0.2, 1 (500 clipped at 100), 0.
        assert!((sums.weight.unwrap() - 1.2).abs() < 1e-5);
        let e = sums.evaluation.unwrap();
        // Totals 10, 50 (60 clipped at T), 1; correct 8, 40, 1 (2 > total 1);
        // losses 5, min(1000, 10 * 50) = 500, 0.5.
        assert!((e.total - 61.0).abs() < 1e-4, "{e:?}");
        assert!((e.correct - 49.0).abs() < 1e-4, "{e:?}");
        assert!((e.loss_sum - 505.5).abs() < 1e-3, "{e:?}");
        // Norms 5 (clipped at 2), 0.71, 1.
        assert!((sums.within_clip.unwrap() - 2.0).abs() < 1e-5);
    }

    #[test]
    fn a_missing_count_is_refused_when_the_round_weights() {
        let layout = full();
        assert_eq!(
            layout.client_vector(&[1.0], &ClientExtras::default()),
            Err(ExtrasError::MissingExampleCount)
        );
        let unweighted = ExtrasLayout {
            weighting: None,
            ..full()
        };
        unweighted
            .client_vector(&[1.0], &ClientExtras::default())
            .unwrap();
    }

    #[test]
    fn unit_noise_is_the_coordinate_noise_over_twice_the_scale() {
        let layout = full();
        let noise = layout.unit_noise(1.0);
        // s = κ C = 1 for the one-coordinate blocks.
        assert!((noise.weight - 0.5).abs() < 1e-12);
        assert!((noise.within_clip - 0.5).abs() < 1e-12);
        // s = 1 / sqrt(3), times T = 50 examples.
        assert!((noise.eval_count - 50.0 * 3f64.sqrt() / 2.0).abs() < 1e-9);
    }

    #[test]
    fn the_geometric_update_moves_towards_the_target_quantile() {
        // Too many unclipped: C shrinks; too few: it grows.
        assert!(next_clip_norm(1.0, 0.9, 0.5, 0.2) < 1.0);
        assert!(next_clip_norm(1.0, 0.1, 0.5, 0.2) > 1.0);
        assert_eq!(next_clip_norm(1.0, 0.5, 0.5, 0.2), 1.0);
        // Noise beyond [0, 1] is clamped.
        assert_eq!(
            next_clip_norm(1.0, 7.0, 0.5, 0.2),
            next_clip_norm(1.0, 1.0, 0.5, 0.2)
        );
    }

    #[test]
    fn the_quantile_estimate_converges_for_uniform_norms() {
        // Andrew et al.'s setting: norms uniform on [0, 10], target median,
        // η = 0.2, 100 clients a round, indicator noise of std 5 (their
        // cohort / 20), from C = 0.1. The clip norm settles near 5.
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let normal = rand_distr::Normal::new(0.0, 5.0).unwrap();
        let mut c = 0.1f32;
        let mut late = Vec::new();
        for round in 0..300 {
            let within = (0..100)
                .filter(|_| rng.random_range(0.0..10.0f32) <= c)
                .count() as f64;
            let noisy = within + rand_distr::Distribution::sample(&normal, &mut rng);
            c = next_clip_norm(c, noisy / 100.0, 0.5, 0.2);
            if round >= 200 {
                late.push(f64::from(c));
            }
        }
        let mean = late.iter().sum::<f64>() / late.len() as f64;
        assert!((mean - 5.0).abs() < 0.5, "mean clip norm {mean}");
    }
}
