//! The privacy accountant: how much (ε, δ)-differential privacy a training
//! run has spent, how much noise a target ε needs, and how many rounds a
//! budget allows.
//!
//! Every mechanism the crate uses is first described by its Rényi DP curve
//! (RDP, Mironov 2017): a value `rdp(α)` per order `α > 1`. RDP composes by
//! addition, so `T` rounds cost `T · rdp(α)` at every order, and the curve is
//! converted to (ε, δ) only at the end, minimising over the orders.
//!
//! - Central DP (DP-FedAvg): Poisson-subsampled Gaussian, computed as in
//!   Mironov, Talwar, Zhang 2019 ("Rényi Differential Privacy of the Sampled
//!   Gaussian Mechanism"), following Google's `dp-accounting`
//!   (`rdp_privacy_accountant.py`) term by term so that our numbers can be
//!   checked against theirs (`dp/tests/data/dp_*.csv`).
//! - Distributed DP: the discrete Gaussian is ρ-zCDP (Canonne, Kamath,
//!   Steinke 2020), i.e. `rdp(α) = ρ α`; Skellam noise has the RDP bound of
//!   Agarwal, Kairouz, Liu 2021.
//! - DP-FTRL (Kairouz et al., ICML 2021): tree aggregation restarted every
//!   epoch is, per tree, a Gaussian mechanism whose sensitivity is spread
//!   over the `ceil(log2(S + 1))` released nodes containing a leaf
//!   ([`rdp_tree_aggregation`]), as `dp-accounting`'s
//!   `SingleEpochTreeAggregationDpEvent`; checked against
//!   `dp/tests/data/dp_ftrl_reference.csv`.
//! - Conversion RDP → (ε, δ): Canonne, Kamath, Steinke 2020 Prop. 12 /
//!   Balle et al. 2020, with `dp-accounting`'s edge-case rules.
//!
//! All functions are pure `f64` maths; nothing here draws randomness.

use thiserror::Error;

/// Number of orders in [`DEFAULT_ORDERS`].
const N_DEFAULT_ORDERS: usize = 99 + 53 + 4;

/// Builds `dp-accounting`'s default order grid at compile time, with the
/// same floating-point expression it uses (`1 + x / 10.0`), so the fractional
/// orders are bit-identical to theirs.
const fn build_default_orders() -> [f64; N_DEFAULT_ORDERS] {
    let mut orders = [0.0; N_DEFAULT_ORDERS];
    let mut x = 1;
    while x < 100 {
        orders[x - 1] = 1.0 + x as f64 / 10.0;
        x += 1;
    }
    let mut k = 11;
    while k < 64 {
        orders[99 + k - 11] = k as f64;
        k += 1;
    }
    orders[152] = 128.0;
    orders[153] = 256.0;
    orders[154] = 512.0;
    orders[155] = 1024.0;
    orders
}

const DEFAULT_ORDERS_ARRAY: [f64; N_DEFAULT_ORDERS] = build_default_orders();

/// The Rényi orders every accountant entry point uses unless told otherwise:
/// `dp-accounting` 0.6's `DEFAULT_RDP_ORDERS`, i.e. `1.1, 1.2, ..., 10.9`
/// (step 0.1), the integers `11..=63`, then `128, 256, 512, 1024`.
///
/// Why this grid: the optimal order for practical noise levels lies between
/// 1 and ~64, where a fine grid tightens ε noticeably (see the `eps_rdp` vs
/// `eps_rdp_int_orders` columns of `dp_accounting_reference.csv`); the large
/// orders cover tiny δ and very many rounds. Matching the reference grid
/// makes our ε directly comparable to published `dp-accounting` numbers.
pub const DEFAULT_ORDERS: &[f64] = &DEFAULT_ORDERS_ARRAY;

/// The integer orders `2..=256`, the grid of the `eps_rdp_int_orders` column
/// of the reference CSV; useful when a caller wants results that do not
/// depend on the fractional-order series.
pub fn integer_orders() -> Vec<f64> {
    (2..=256).map(f64::from).collect()
}

/// Why an accountant call was refused. The messages name the offending
/// parameter and the accepted range; none of these values are secret.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum AccountantError {
    /// A parameter was NaN or infinite.
    #[error("{name} must be finite, got {value}")]
    NonFinite {
        /// The parameter's name.
        name: &'static str,
        /// The value passed.
        value: f64,
    },
    /// The noise multiplier `z` (noise std / L2 sensitivity) was not positive.
    #[error("noise multiplier must be > 0, got {0}")]
    NoiseMultiplier(f64),
    /// The Poisson sampling rate was outside `(0, 1]`.
    #[error("sampling rate must be in (0, 1], got {0}")]
    SamplingRate(f64),
    /// δ was outside `(0, 1)`.
    #[error("delta must be in (0, 1), got {0}")]
    Delta(f64),
    /// Zero rounds were asked for: there is nothing to account.
    #[error("number of rounds must be at least 1")]
    ZeroRounds,
    /// Zero epochs (trees) of DP-FTRL were asked for.
    #[error("number of epochs must be at least 1")]
    ZeroEpochs,
    /// A DP-FTRL tree of zero steps: the tree restarts every
    /// `steps_per_epoch` steps, which must be at least 1.
    #[error("steps per epoch must be at least 1")]
    ZeroSteps,
    /// `epochs × steps_per_epoch` does not fit in 64 bits.
    #[error("epochs times steps per epoch is too large (more than 2^64 rounds)")]
    TooManyRounds,
    /// The target ε was not positive.
    #[error("target epsilon must be > 0, got {0}")]
    TargetEpsilon(f64),
    /// The order list was empty or contained no order > 1.
    #[error("at least one Renyi order > 1 is required")]
    NoOrders,
    /// Even a very large noise multiplier does not reach the target ε.
    #[error("no noise multiplier below {max_z:e} reaches the target epsilon {target_epsilon}")]
    Unreachable {
        /// The largest noise multiplier tried.
        max_z: f64,
        /// The target that could not be met.
        target_epsilon: f64,
    },
}

/// An (ε, δ) guarantee and the Rényi order that achieved it.
///
/// The order is reported because it tells the operator which part of the
/// curve is binding (an order at the edge of the grid means the grid should
/// be extended).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpsilonReport {
    /// The ε of the (ε, δ)-DP guarantee.
    pub epsilon: f64,
    /// The Rényi order at which the minimum was attained.
    pub order: f64,
}

/// Largest noise multiplier [`noise_multiplier`] tries before giving up.
const MAX_NOISE_MULTIPLIER: f64 = 1e6;

/// Relative precision of [`noise_multiplier`]'s bisection.
const NOISE_MULTIPLIER_RTOL: f64 = 1e-9;

/// Integer orders above this are not expanded term by term (the cost grows
/// linearly in the order); they report `+inf`, i.e. "no bound", which the
/// conversion simply never picks.
const MAX_INTEGER_ORDER: f64 = 100_000.0;

/// `dp-accounting`'s iteration cap for the fractional-order series.
const MAX_STEPS_LOG_A_FRAC: usize = 1000;

fn check_finite(name: &'static str, value: f64) -> Result<(), AccountantError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(AccountantError::NonFinite { name, value })
    }
}

fn check_z(z: f64) -> Result<(), AccountantError> {
    check_finite("noise multiplier", z)?;
    if z > 0.0 {
        Ok(())
    } else {
        Err(AccountantError::NoiseMultiplier(z))
    }
}

fn check_q(q: f64) -> Result<(), AccountantError> {
    check_finite("sampling rate", q)?;
    if q > 0.0 && q <= 1.0 {
        Ok(())
    } else {
        Err(AccountantError::SamplingRate(q))
    }
}

fn check_delta(delta: f64) -> Result<(), AccountantError> {
    check_finite("delta", delta)?;
    if delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(AccountantError::Delta(delta))
    }
}

fn check_target(target_epsilon: f64) -> Result<(), AccountantError> {
    check_finite("target epsilon", target_epsilon)?;
    if target_epsilon > 0.0 {
        Ok(())
    } else {
        Err(AccountantError::TargetEpsilon(target_epsilon))
    }
}

fn check_orders(orders: &[f64]) -> Result<(), AccountantError> {
    if orders.iter().any(|&a| a > 1.0 && a.is_finite()) {
        Ok(())
    } else {
        Err(AccountantError::NoOrders)
    }
}

/// `ln(e^x + e^y)` without overflow.
fn log_add(x: f64, y: f64) -> f64 {
    let (lo, hi) = if x < y { (x, y) } else { (y, x) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    (lo - hi).exp().ln_1p() + hi
}

/// A real number kept as a sign and `ln |value|`, so that series whose terms
/// span hundreds of orders of magnitude can be summed with their signs.
#[derive(Debug, Clone, Copy)]
struct SignedLog {
    positive: bool,
    log_abs: f64,
}

impl SignedLog {
    const ZERO: Self = Self {
        positive: true,
        log_abs: f64::NEG_INFINITY,
    };

    fn add(self, positive: bool, log_abs: f64) -> Self {
        if log_abs == f64::NEG_INFINITY {
            return self;
        }
        if self.log_abs == f64::NEG_INFINITY {
            return Self { positive, log_abs };
        }
        if self.positive == positive {
            return Self {
                positive,
                log_abs: log_add(self.log_abs, log_abs),
            };
        }
        if self.log_abs > log_abs {
            Self {
                positive: self.positive,
                log_abs: self.log_abs + (-(log_abs - self.log_abs).exp()).ln_1p(),
            }
        } else if self.log_abs < log_abs {
            Self {
                positive,
                log_abs: log_abs + (-(self.log_abs - log_abs).exp()).ln_1p(),
            }
        } else {
            Self::ZERO
        }
    }
}

/// `erfc(x)` for `0 <= x < 2` from the all-positive series
/// `erf(x) = 2/√π e^{-x²} Σ 2^n x^{2n+1} / (1·3·…·(2n+1))` (no cancellation
/// inside the sum; `erfc(2) ≈ 4.7e-3` bounds the loss in `1 - erf`).
fn erfc_small(x: f64) -> f64 {
    let x2 = x * x;
    let mut term = x;
    let mut sum = x;
    let mut n = 0.0;
    loop {
        n += 1.0;
        term *= 2.0 * x2 / (2.0 * n + 1.0);
        sum += term;
        if term <= sum * 1e-17 {
            break;
        }
    }
    1.0 - 2.0 / std::f64::consts::PI.sqrt() * (-x2).exp() * sum
}

/// `ln erfc(x)` for `x >= 2` from the Laplace continued fraction
/// `erfc(x) = e^{-x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …))))`,
/// evaluated with the modified Lentz method, in log form so it never
/// underflows however large `x` is.
fn log_erfc_large(x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut f = x;
    let mut c = f;
    let mut d = 0.0;
    for n in 1..10_000 {
        let a = f64::from(n) / 2.0;
        d = x + a * d;
        if d == 0.0 {
            d = TINY;
        }
        c = x + a / c;
        if c == 0.0 {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    -x * x - 0.5 * std::f64::consts::PI.ln() - f.ln()
}

/// `ln erfc(x)`, accurate in the far tail (what `dp-accounting` gets from
/// `scipy.special.log_ndtr`).
fn log_erfc(x: f64) -> f64 {
    if x < 0.0 {
        // erfc(x) = 2 - erfc(-x) lies in (1, 2]: no precision problem.
        let e = if -x < 2.0 {
            erfc_small(-x)
        } else {
            log_erfc_large(-x).exp()
        };
        (2.0 - e).ln()
    } else if x < 2.0 {
        erfc_small(x).ln()
    } else {
        log_erfc_large(x)
    }
}

/// `ln A_α` for integer `α` (Mironov-Talwar-Zhang 2019, Sec. 3.3, the
/// binomial expansion): `A_α = Σ_i C(α,i) q^i (1-q)^{α-i} e^{(i²-i)/(2σ²)}`.
/// All terms are positive, so a log-sum-exp is exact up to rounding.
fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    let inv_2s2 = 1.0 / (2.0 * sigma * sigma);
    let mut log_comb = 0.0; // ln C(α, 0)
    let mut terms = Vec::with_capacity(alpha as usize + 1);
    for i in 0..=alpha {
        if i > 0 {
            // C(α,i) = C(α,i-1) (α-i+1)/i: summed logs instead of lgamma.
            log_comb += ((alpha - i + 1) as f64).ln() - (i as f64).ln();
        }
        let fi = i as f64;
        terms.push(log_comb + fi * log_q + (alpha - i) as f64 * log_1mq + (fi * fi - fi) * inv_2s2);
    }
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()
}

/// `ln A_α` for fractional `α` (Mironov-Talwar-Zhang 2019, Sec. 3.3): the
/// integral split at `z0 = σ² ln(1/q - 1) + 1/2` into two series over the
/// generalised binomial coefficients `C(α, i)`, which alternate in sign for
/// `i > α + 1`. We sum them with their signs (exact); `dp-accounting` 0.6
/// sums the magnitudes, a slight upper bound, so ours is never larger. If
/// rounding ever made the signed sum non-positive we fall back to the
/// magnitude sum, which is always a valid (conservative) bound.
/// Returns `+inf` if the series does not converge within the step cap, like
/// `dp-accounting`, which excludes that order.
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    let s2 = sigma * sigma;
    let z0 = s2 * (1.0 / q - 1.0).ln() + 0.5;
    let sqrt2_sigma = std::f64::consts::SQRT_2 * sigma;
    let log_half = 0.5f64.ln();

    let (mut a0, mut a1) = (SignedLog::ZERO, SignedLog::ZERO);
    let (mut abs0, mut abs1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let (mut last_s0, mut last_s1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let mut coef_positive = true;
    let mut log_coef = 0.0; // ln |C(α, 0)|
    for step in 0..MAX_STEPS_LOG_A_FRAC {
        let i = step as f64;
        if step > 0 {
            // C(α,i) = C(α,i-1) (α-i+1)/i, sign tracked separately.
            let factor = (alpha - i + 1.0) / i;
            if factor < 0.0 {
                coef_positive = !coef_positive;
            }
            log_coef += factor.abs().ln();
        }
        let j = alpha - i;
        let log_t0 = log_coef + i * log_q + j * log_1mq;
        let log_t1 = log_coef + j * log_q + i * log_1mq;
        let log_e0 = log_half + log_erfc((i - z0) / sqrt2_sigma);
        let log_e1 = log_half + log_erfc((z0 - j) / sqrt2_sigma);
        let log_s0 = log_t0 + (i * i - i) / (2.0 * s2) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * s2) + log_e1;

        a0 = a0.add(coef_positive, log_s0);
        a1 = a1.add(coef_positive, log_s1);
        abs0 = log_add(abs0, log_s0);
        abs1 = log_add(abs1, log_s1);
        let total_abs = log_add(abs0, abs1);

        // dp-accounting 0.6's stopping rule: both series decreasing and the
        // new terms e^30 below the running total.
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total_abs - 30.0 {
            let signed = a0.add(a1.positive, a1.log_abs);
            return if signed.positive && signed.log_abs.is_finite() {
                signed.log_abs
            } else {
                total_abs
            };
        }
        last_s0 = log_s0;
        last_s1 = log_s1;
    }
    f64::INFINITY
}

/// RDP at `order` of one round of the Poisson-subsampled Gaussian mechanism
/// with sampling rate `q` and noise multiplier `z` (noise std / L2
/// sensitivity), add-or-remove-one neighbours.
///
/// This is the per-round cost of central DP-FedAvg. Integer orders use the
/// binomial expansion, fractional ones the two-series expansion of Mironov,
/// Talwar, Zhang 2019; `q = 1` is the plain Gaussian, `order / (2 z²)`.
///
/// Conventions for inputs outside the accountant's domain (so that callers
/// can map it over arbitrary grids): `q <= 0` or `z = +inf` give 0; `z <= 0`, NaN inputs,
/// `order <= 1`, infinite orders, integer orders above 100,000 and
/// non-converging fractional series give `+inf` ("no bound at this order").
///
/// ```
/// use tessera_dp::accountant::rdp_subsampled_gaussian;
/// // Without subsampling the Gaussian's RDP is α / (2 z²).
/// assert_eq!(rdp_subsampled_gaussian(1.0, 2.0, 8.0), 1.0);
/// // Subsampling only helps.
/// assert!(rdp_subsampled_gaussian(0.01, 2.0, 8.0) < 1.0);
/// ```
pub fn rdp_subsampled_gaussian(q: f64, z: f64, order: f64) -> f64 {
    if q.is_nan() || z.is_nan() || order.is_nan() {
        return f64::INFINITY;
    }
    if q <= 0.0 {
        return 0.0;
    }
    if order <= 1.0 || order.is_infinite() || z <= 0.0 {
        return f64::INFINITY;
    }
    if z.is_infinite() {
        return 0.0;
    }
    if q >= 1.0 {
        return order / (2.0 * z * z);
    }
    let log_a = if order.fract() == 0.0 {
        if order > MAX_INTEGER_ORDER {
            return f64::INFINITY;
        }
        log_a_int(q, z, order as u64)
    } else {
        log_a_frac(q, z, order)
    };
    log_a / (order - 1.0)
}

/// Converts an RDP curve to (ε, δ)-DP: returns `(ε, optimal order)`.
///
/// Per order, `ε(α) = rdp(α) + ln(1 - 1/α) - ln(δ α) / (α - 1)` (Canonne,
/// Kamath, Steinke 2020 Prop. 12; Balle et al. 2020), minimised over the
/// orders, with `dp-accounting`'s rules: an order whose RDP is so small that
/// `δ² + expm1(-rdp) > 0` gives ε = 0 (KL bound); orders `<= 1.01` are
/// numerically unstable and give `+inf`; a negative RDP (numerical noise)
/// gives 0; NaN is treated as `+inf`; the result is clamped to `>= 0`.
/// Ties go to the first order; if the slices differ in length the extra
/// elements are ignored. With no usable order the result is `(+inf, NaN)`; `δ <= 0` gives `(+inf, NaN)` unless all RDP values are 0.
pub fn rdp_to_epsilon(orders: &[f64], rdp: &[f64], delta: f64) -> (f64, f64) {
    if delta.is_nan() || delta <= 0.0 {
        return if !rdp.is_empty() && rdp.iter().all(|&r| r == 0.0) {
            (0.0, f64::NAN)
        } else {
            (f64::INFINITY, f64::NAN)
        };
    }
    let mut best = (f64::INFINITY, f64::NAN);
    for (&a, &r) in orders.iter().zip(rdp) {
        let eps = if r.is_nan() || a.is_nan() || a < 1.0 {
            f64::INFINITY
        } else if r < 0.0 || delta * delta + (-r).exp_m1() > 0.0 {
            0.0
        } else if a > 1.01 {
            r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
        } else {
            f64::INFINITY
        };
        if eps < best.0 || best.1.is_nan() {
            best = (eps, a);
        }
    }
    (best.0.max(0.0), best.1)
}

/// Per-order RDP of one round, for a grid.
fn per_round_rdp(z: f64, q: f64, orders: &[f64]) -> Vec<f64> {
    orders
        .iter()
        .map(|&a| rdp_subsampled_gaussian(q, z, a))
        .collect()
}

fn compose_and_convert(per_round: &[f64], orders: &[f64], rounds: u64, delta: f64) -> (f64, f64) {
    let t = rounds as f64;
    let total: Vec<f64> = per_round.iter().map(|r| r * t).collect();
    rdp_to_epsilon(orders, &total, delta)
}

/// ε spent by `rounds` rounds of the Poisson-subsampled Gaussian at δ, over
/// [`DEFAULT_ORDERS`]: the number the server records in its privacy ledger
/// after each published model.
///
/// ```
/// use tessera_dp::accountant::{epsilon, AccountantError};
/// let r = epsilon(1.0, 0.01, 1000, 1e-5)?;
/// assert!(r.epsilon > 0.0 && r.epsilon < 10.0);
/// // Zero rounds spend nothing and are refused rather than silently 0.
/// assert_eq!(epsilon(1.0, 0.01, 0, 1e-5), Err(AccountantError::ZeroRounds));
/// # Ok::<(), AccountantError>(())
/// ```
pub fn epsilon(z: f64, q: f64, rounds: u64, delta: f64) -> Result<EpsilonReport, AccountantError> {
    epsilon_with_orders(z, q, rounds, delta, DEFAULT_ORDERS)
}

/// [`epsilon`] over a caller-chosen order grid (e.g. [`integer_orders`] to
/// compare with integer-order references).
pub fn epsilon_with_orders(
    z: f64,
    q: f64,
    rounds: u64,
    delta: f64,
    orders: &[f64],
) -> Result<EpsilonReport, AccountantError> {
    check_z(z)?;
    check_q(q)?;
    check_delta(delta)?;
    if rounds == 0 {
        return Err(AccountantError::ZeroRounds);
    }
    check_orders(orders)?;
    let per_round = per_round_rdp(z, q, orders);
    let (epsilon, order) = compose_and_convert(&per_round, orders, rounds, delta);
    Ok(EpsilonReport { epsilon, order })
}

/// The smallest noise multiplier `z` for which `rounds` rounds at sampling
/// rate `q` stay within `target_epsilon` at `delta` (over
/// [`DEFAULT_ORDERS`]): what an operator asks when planning a job.
///
/// Method: bracket by doubling/halving from `z = 1`, then bisect until the
/// bracket's relative width is below 1e-9; the returned `z` is the upper end
/// of the bracket, so `epsilon(z, ..) <= target_epsilon` always holds.
/// Fails with [`AccountantError::Unreachable`] if even `z = 1e6` is not
/// enough.
///
/// ```
/// use tessera_dp::accountant::{epsilon, noise_multiplier};
/// let z = noise_multiplier(2.0, 0.01, 1000, 1e-5)?;
/// assert!(epsilon(z, 0.01, 1000, 1e-5)?.epsilon <= 2.0);
/// assert!(epsilon(z * 0.999, 0.01, 1000, 1e-5)?.epsilon > 2.0);
/// // An unreachably small target is refused.
/// assert!(noise_multiplier(1e-9, 1.0, 1000, 1e-5).is_err());
/// # Ok::<(), tessera_dp::accountant::AccountantError>(())
/// ```
pub fn noise_multiplier(
    target_epsilon: f64,
    q: f64,
    rounds: u64,
    delta: f64,
) -> Result<f64, AccountantError> {
    check_target(target_epsilon)?;
    check_q(q)?;
    check_delta(delta)?;
    if rounds == 0 {
        return Err(AccountantError::ZeroRounds);
    }
    let eps_at = |z: f64| {
        let per_round = per_round_rdp(z, q, DEFAULT_ORDERS);
        compose_and_convert(&per_round, DEFAULT_ORDERS, rounds, delta).0
    };
    smallest_noise_multiplier(target_epsilon, eps_at)
}

/// The smallest `z` with `eps_at(z) <= target_epsilon`, for an `eps_at`
/// that does not increase with `z`: bracket by doubling/halving from
/// `z = 1`, then bisect to a relative width of 1e-9 and return the upper
/// end, so the answer always meets the target.
fn smallest_noise_multiplier(
    target_epsilon: f64,
    eps_at: impl Fn(f64) -> f64,
) -> Result<f64, AccountantError> {
    // Bracket [lo, hi] with eps(lo) > target >= eps(hi).
    let (mut lo, mut hi);
    if eps_at(1.0) <= target_epsilon {
        hi = 1.0;
        lo = 0.5;
        while eps_at(lo) <= target_epsilon {
            hi = lo;
            lo /= 2.0;
            if lo < 1e-12 {
                // Practically no noise is needed; report the tiny value.
                return Ok(hi);
            }
        }
    } else {
        lo = 1.0;
        hi = 2.0;
        while eps_at(hi) > target_epsilon {
            if hi >= MAX_NOISE_MULTIPLIER {
                return Err(AccountantError::Unreachable {
                    max_z: MAX_NOISE_MULTIPLIER,
                    target_epsilon,
                });
            }
            lo = hi;
            hi = (hi * 2.0).min(MAX_NOISE_MULTIPLIER);
        }
    }
    while (hi - lo) > NOISE_MULTIPLIER_RTOL * hi {
        let mid = 0.5 * (lo + hi);
        if eps_at(mid) <= target_epsilon {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

/// The largest number of rounds `T` whose composed ε (over
/// [`DEFAULT_ORDERS`]) stays within `target_epsilon` at `delta`; 0 if even
/// one round exceeds it. This is how a training job knows when to stop.
///
/// Cheap for any `T`: the per-round RDP is computed once per order, and
/// because composition is linear (`T · rdp(α)`) and ε is non-decreasing in
/// `T`, an exponential then binary search only repeats the conversion. The
/// search stops at `2^53` rounds (where `T` stops being exact in `f64`).
///
/// ```
/// use tessera_dp::accountant::{epsilon, max_rounds};
/// let t = max_rounds(1.0, 0.01, 2.0, 1e-5)?;
/// assert!(epsilon(1.0, 0.01, t, 1e-5)?.epsilon <= 2.0);
/// assert!(epsilon(1.0, 0.01, t + 1, 1e-5)?.epsilon > 2.0);
/// # Ok::<(), tessera_dp::accountant::AccountantError>(())
/// ```
pub fn max_rounds(z: f64, q: f64, target_epsilon: f64, delta: f64) -> Result<u64, AccountantError> {
    check_z(z)?;
    check_q(q)?;
    check_target(target_epsilon)?;
    check_delta(delta)?;
    let per_round = per_round_rdp(z, q, DEFAULT_ORDERS);
    let fits =
        |t: u64| compose_and_convert(&per_round, DEFAULT_ORDERS, t, delta).0 <= target_epsilon;
    if !fits(1) {
        return Ok(0);
    }
    Ok(largest_fitting(1, fits))
}

/// Where the searches for "the most rounds within budget" stop: `2^53`,
/// the last integer `f64` holds exactly.
const SEARCH_CAP: u64 = 1 << 53;

/// The largest `n` in `[lo, SEARCH_CAP]` with `fits(n)`, for a `fits`
/// that holds at `lo` and, once false, stays false: an exponential search
/// for an upper bound, then a binary search below it.
fn largest_fitting(lo: u64, fits: impl Fn(u64) -> bool) -> u64 {
    // Invariant: fits(lo), and hi == SEARCH_CAP or !fits(hi).
    let mut lo = lo;
    let mut hi = (lo * 2).max(1);
    while fits(hi) {
        if hi >= SEARCH_CAP {
            return SEARCH_CAP;
        }
        lo = hi;
        hi = (hi * 2).min(SEARCH_CAP);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Number of tree nodes containing one leaf that tree aggregation has
/// released after `steps` steps: `ceil(log2(steps + 1))`, i.e. the bit
/// length of `steps` (0 after 0 steps).
///
/// Why: in the binary tree over the steps of one epoch (Kairouz et al.,
/// ICML 2021, "Practical and Private (Deep) Learning without Sampling or
/// Shuffling"), a node is released when its last leaf's step has run; the
/// nodes containing a given leaf are one per level, and a level-`k` node
/// spans `2^k` steps, so after `r` steps only the levels with `2^k <= r`
/// can hold a released node: `floor(log2 r) + 1` of them. This is the
/// depth `dp-accounting` charges for `SingleEpochTreeAggregationDpEvent`.
///
/// ```
/// use tessera_dp::accountant::tree_depth;
/// let depths: Vec<u64> = (0..=8).map(tree_depth).collect();
/// assert_eq!(depths, [0, 1, 2, 2, 3, 3, 3, 3, 4]);
/// ```
pub fn tree_depth(steps: u64) -> u64 {
    u64::from(u64::BITS - steps.leading_zeros())
}

/// RDP at `order` of one tree of `steps` steps of DP-FTRL tree aggregation
/// with noise multiplier `z` (each node's noise std over the L2
/// sensitivity), each record in at most one step of the tree:
/// `order · tree_depth(steps) / (2 z²)`, the Gaussian mechanism whose
/// sensitivity is spread over the `tree_depth(steps)` released nodes that
/// contain the record's leaf. This is `dp-accounting` 0.6.0's
/// `SingleEpochTreeAggregationDpEvent(z, steps)` under
/// `RdpAccountant(neighboring_relation=REPLACE_SPECIAL)`: replacing one
/// record by the special (zero) record changes each node containing its
/// leaf by at most the sensitivity, and nothing else.
///
/// ```
/// use tessera_dp::accountant::rdp_tree_aggregation;
/// // 15 steps: a leaf lies in 4 released nodes (levels 0..=3).
/// assert_eq!(rdp_tree_aggregation(2.0, 15, 8.0), 8.0 * 4.0 / 8.0);
/// ```
pub fn rdp_tree_aggregation(z: f64, steps: u64, order: f64) -> f64 {
    order * tree_depth(steps) as f64 / (2.0 * z * z)
}

/// Released-node count ("depth units") of a DP-FTRL run of `rounds` rounds
/// whose tree restarts every `steps_per_epoch` steps: every full epoch adds
/// `tree_depth(steps_per_epoch)`, a partial last epoch of `r` steps adds
/// `tree_depth(r)` (RDP composes over trees by addition).
fn tree_units(steps_per_epoch: u64, rounds: u64) -> f64 {
    let full = rounds / steps_per_epoch;
    let partial = rounds % steps_per_epoch;
    full as f64 * tree_depth(steps_per_epoch) as f64 + tree_depth(partial) as f64
}

/// ε of `units` released nodes per leaf at noise multiplier `z`: the RDP
/// curve `α · units / (2 z²)` converted over [`DEFAULT_ORDERS`].
fn tree_units_to_epsilon(units: f64, z: f64, delta: f64) -> (f64, f64) {
    let rdp: Vec<f64> = DEFAULT_ORDERS
        .iter()
        .map(|&a| a * units / (2.0 * z * z))
        .collect();
    rdp_to_epsilon(DEFAULT_ORDERS, &rdp, delta)
}

fn check_steps(steps_per_epoch: u64) -> Result<(), AccountantError> {
    if steps_per_epoch == 0 {
        Err(AccountantError::ZeroSteps)
    } else {
        Ok(())
    }
}

/// ε spent by DP-FTRL with tree aggregation (Kairouz et al., ICML 2021):
/// `epochs` trees of `steps_per_epoch` steps each, noise multiplier `z`,
/// each record at most once per tree, at `delta`.
///
/// This is `dp-accounting` 0.6.0's `RdpAccountant(orders,
/// REPLACE_SPECIAL)` composing `SelfComposedDpEvent(
/// SingleEpochTreeAggregationDpEvent(z, steps_per_epoch), epochs)`; the
/// orders are [`DEFAULT_ORDERS`], which is exactly the grid the reference
/// table `dp/tests/data/dp_ftrl_reference.csv` was computed on, and the
/// test suite matches every row of it. The neighbouring relation is the
/// ledger's own (zero-out-one = replace-special), so no conversion factor
/// applies.
///
/// ```
/// use tessera_dp::accountant::tree_epsilon;
/// // dp_ftrl_reference.csv: z = 1.5, S = 15, E = 10, delta = 1e-5.
/// let eps = tree_epsilon(1.5, 15, 10, 1e-5)?.epsilon;
/// assert!((eps - 27.81184688).abs() < 1e-6 * 27.81184688);
/// # Ok::<(), tessera_dp::accountant::AccountantError>(())
/// ```
pub fn tree_epsilon(
    z: f64,
    steps_per_epoch: u64,
    epochs: u64,
    delta: f64,
) -> Result<EpsilonReport, AccountantError> {
    if epochs == 0 {
        return Err(AccountantError::ZeroEpochs);
    }
    check_steps(steps_per_epoch)?;
    let rounds = epochs
        .checked_mul(steps_per_epoch)
        .ok_or(AccountantError::TooManyRounds)?;
    tree_epsilon_after_rounds(z, steps_per_epoch, rounds, delta)
}

/// [`tree_epsilon`] after any number of `rounds` (steps), not only whole
/// epochs: the last, partial tree of `r` steps costs
/// `α · tree_depth(r) / (2 z²)`, the nodes it has released so far.
///
/// ```
/// use tessera_dp::accountant::{tree_epsilon, tree_epsilon_after_rounds};
/// let two_epochs = tree_epsilon(3.0, 15, 2, 1e-5)?.epsilon;
/// assert_eq!(tree_epsilon_after_rounds(3.0, 15, 30, 1e-5)?.epsilon, two_epochs);
/// // The third tree's first step costs more ...
/// assert!(tree_epsilon_after_rounds(3.0, 15, 31, 1e-5)?.epsilon > two_epochs);
/// // ... but its third step (round 33) is free: after 2 or 3 steps a leaf
/// // lies in at most 2 released nodes either way.
/// assert_eq!(
///     tree_epsilon_after_rounds(3.0, 15, 33, 1e-5)?,
///     tree_epsilon_after_rounds(3.0, 15, 32, 1e-5)?
/// );
/// # Ok::<(), tessera_dp::accountant::AccountantError>(())
/// ```
pub fn tree_epsilon_after_rounds(
    z: f64,
    steps_per_epoch: u64,
    rounds: u64,
    delta: f64,
) -> Result<EpsilonReport, AccountantError> {
    check_z(z)?;
    check_delta(delta)?;
    check_steps(steps_per_epoch)?;
    if rounds == 0 {
        return Err(AccountantError::ZeroRounds);
    }
    let (epsilon, order) = tree_units_to_epsilon(tree_units(steps_per_epoch, rounds), z, delta);
    Ok(EpsilonReport { epsilon, order })
}

/// The smallest noise multiplier for which DP-FTRL over `epochs` trees of
/// `steps_per_epoch` steps stays within `target_epsilon` at `delta`: the
/// inverse of [`tree_epsilon`], by the same bracketing and bisection as
/// [`noise_multiplier`] (so `tree_epsilon` at the answer is within the
/// target, and 1e-9 less noise is not).
///
/// ```
/// use tessera_dp::accountant::{tree_epsilon, tree_noise_multiplier};
/// let z = tree_noise_multiplier(8.0, 16, 5, 1e-5)?;
/// assert!(tree_epsilon(z, 16, 5, 1e-5)?.epsilon <= 8.0);
/// assert!(tree_epsilon(z * 0.999, 16, 5, 1e-5)?.epsilon > 8.0);
/// # Ok::<(), tessera_dp::accountant::AccountantError>(())
/// ```
pub fn tree_noise_multiplier(
    target_epsilon: f64,
    steps_per_epoch: u64,
    epochs: u64,
    delta: f64,
) -> Result<f64, AccountantError> {
    check_target(target_epsilon)?;
    check_delta(delta)?;
    check_steps(steps_per_epoch)?;
    if epochs == 0 {
        return Err(AccountantError::ZeroEpochs);
    }
    let rounds = epochs
        .checked_mul(steps_per_epoch)
        .ok_or(AccountantError::TooManyRounds)?;
    let units = tree_units(steps_per_epoch, rounds);
    smallest_noise_multiplier(target_epsilon, |z| tree_units_to_epsilon(units, z, delta).0)
}

/// The largest number of rounds (steps; the last epoch may be partial) of
/// DP-FTRL with noise multiplier `z` and a tree restarted every
/// `steps_per_epoch` steps whose ε at `delta` stays within
/// `target_epsilon`; 0 if even one round exceeds it. Capped at `2^53`.
///
/// Method: ε depends on the rounds only through the released-node count
/// per leaf (`units`, non-decreasing in the rounds), so the largest count
/// `U` within budget is found by exponential then binary search, and the
/// rounds follow in closed form: `U / d` full epochs (`d =
/// tree_depth(steps_per_epoch)`) and the longest partial tree of depth at
/// most `U mod d`, `2^(U mod d) − 1` steps. One round more needs `U + 1`.
///
/// ```
/// use tessera_dp::accountant::{tree_epsilon_after_rounds, tree_max_rounds};
/// let t = tree_max_rounds(2.0, 16, 8.0, 1e-5)?;
/// assert!(tree_epsilon_after_rounds(2.0, 16, t, 1e-5)?.epsilon <= 8.0);
/// assert!(tree_epsilon_after_rounds(2.0, 16, t + 1, 1e-5)?.epsilon > 8.0);
/// # Ok::<(), tessera_dp::accountant::AccountantError>(())
/// ```
pub fn tree_max_rounds(
    z: f64,
    steps_per_epoch: u64,
    target_epsilon: f64,
    delta: f64,
) -> Result<u64, AccountantError> {
    check_z(z)?;
    check_target(target_epsilon)?;
    check_delta(delta)?;
    check_steps(steps_per_epoch)?;
    let fits = |units: u64| tree_units_to_epsilon(units as f64, z, delta).0 <= target_epsilon;
    // Units 0 always fit: they spend nothing.
    let lo = largest_fitting(0, fits);
    let d = tree_depth(steps_per_epoch);
    // rem < d, and 2^(d-1) <= steps_per_epoch: the partial tree is shorter
    // than an epoch.
    let (full, rem) = (lo / d, lo % d);
    let rounds = u128::from(full) * u128::from(steps_per_epoch) + ((1u128 << rem) - 1);
    Ok(u64::try_from(rounds).map_or(SEARCH_CAP, |r| r.min(SEARCH_CAP)))
}

/// Converts a ρ-zCDP guarantee to (ε, δ): `(ε, optimal order)`.
///
/// ρ-zCDP means `rdp(α) <= ρ α` for all α > 1 (Bun-Steinke 2016), so this is
/// [`rdp_to_epsilon`] of that line over [`DEFAULT_ORDERS`], the same
/// conversion `dp-accounting` applies to zCDP-style events; it is tighter
/// than Bun-Steinke's `ρ + 2 √(ρ ln(1/δ))`. Used for the discrete Gaussian
/// (ρ composes additively over rounds).
pub fn zcdp_to_epsilon(rho: f64, delta: f64) -> (f64, f64) {
    let rdp: Vec<f64> = DEFAULT_ORDERS.iter().map(|a| rho * a).collect();
    rdp_to_epsilon(DEFAULT_ORDERS, &rdp, delta)
}

/// ρ of the (ρ-zCDP) discrete Gaussian mechanism: `Δ² / (2σ²)` (Canonne,
/// Kamath, Steinke 2020, Thm. 4 and its multivariate form): adding
/// independent discrete Gaussian noise `N_Z(0, σ²)` to every coordinate of
/// an integer vector whose L2 sensitivity is `l2_sensitivity` is ρ-zCDP with
/// this ρ, the same as the continuous Gaussian.
///
/// Assumption the caller must respect: `sigma` is the scale of the discrete
/// Gaussian actually present in the released sum. In distributed DP the
/// released noise is a *sum* of clients' discrete Gaussians, which is not
/// exactly discrete Gaussian; Kairouz, Liu, Steinke 2021 bound the gap with
/// an additive `τ d` term that is negligible for `σ >= 1/2` per client, and
/// which this function does not include.
pub fn discrete_gaussian_rho(sigma: f64, l2_sensitivity: f64) -> f64 {
    l2_sensitivity * l2_sensitivity / (2.0 * sigma * sigma)
}

/// RDP bound at `order` of the multi-dimensional Skellam mechanism
/// (Agarwal, Kairouz, Liu 2021, NeurIPS, "The Skellam Mechanism for
/// Differentially Private Federated Learning", Thm. 3.5):
///
/// `rdp(α) <= α Δ₂² / (2μ) + min((2α Δ₂² + 6 Δ₁) / (4μ²), 3 Δ₁ / (2μ))`
///
/// Statements of this bound in circulation differ between `2α` and
/// `2α − 1` in the correction term; we could not check the paper's text
/// here, so we use `2α`, the larger bound, which can only over-count the
/// privacy spent, never under-count it.
///
/// where `mu` is the **variance** of the Skellam noise on each coordinate
/// (the difference of two Poisson(μ/2) variables), `l1` and `l2` the L1 and
/// L2 sensitivities of the integer vector. The first term is the Gaussian's
/// RDP at the same variance; the second is the price of integer noise. Sums
/// of Skellam shares are Skellam, so in distributed DP `mu` is simply the
/// total variance carried by the guaranteed survivors.
pub fn skellam_rdp(mu: f64, l1: f64, l2: f64, order: f64) -> f64 {
    let a = order;
    let l2sq = l2 * l2;
    a * l2sq / (2.0 * mu)
        + ((2.0 * a * l2sq + 6.0 * l1) / (4.0 * mu * mu)).min(3.0 * l1 / (2.0 * mu))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_csv(name: &str) -> Vec<Vec<String>> {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut rows = Vec::new();
        let mut header_seen = false;
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if !header_seen {
                header_seen = true;
                continue;
            }
            rows.push(split_csv_line(line));
        }
        rows
    }

    /// Splits a CSV line honouring double quotes (the zCDP file quotes
    /// fields containing commas).
    fn split_csv_line(line: &str) -> Vec<String> {
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        for ch in line.chars() {
            match ch {
                '"' => quoted = !quoted,
                ',' if !quoted => fields.push(std::mem::take(&mut cur)),
                _ => cur.push(ch),
            }
        }
        fields.push(cur);
        fields
    }

    fn f(s: &str) -> f64 {
        s.parse().unwrap_or_else(|_| panic!("not a number: {s:?}"))
    }

    #[test]
    fn erfc_matches_known_values() {
        // Tabulated erfc values (Abramowitz & Stegun 7.1 / any CAS).
        for (x, want) in [
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_13),
            (2.0, 0.004_677_734_981_047_266),
            (3.0, 2.209_049_699_858_544e-5),
            (-1.0, 1.842_700_792_949_715),
        ] {
            let got = log_erfc(x).exp();
            assert!(
                ((got - want) / want).abs() < 1e-13,
                "erfc({x}) = {got}, want {want}"
            );
        }
        // Continuity across the series / continued-fraction switch.
        let below = log_erfc(2.0 - 1e-12);
        let above = log_erfc(2.0);
        assert!((below - above).abs() < 1e-10);
        // Far tail: ln erfc(x) ~ -x² - ln(x √π) - 1/(2x²).
        let x: f64 = 40.0;
        let asym =
            -x * x - (x * std::f64::consts::PI.sqrt()).ln() - 0.5 / (x * x) + 0.625 / x.powi(4);
        assert!((log_erfc(x) - asym).abs() < 1e-9);
    }

    #[test]
    fn default_orders_are_the_dp_accounting_grid() {
        assert_eq!(DEFAULT_ORDERS.len(), 156);
        assert_eq!(DEFAULT_ORDERS[0], 1.1);
        assert_eq!(DEFAULT_ORDERS[98], 10.9);
        assert_eq!(DEFAULT_ORDERS[99], 11.0);
        assert_eq!(DEFAULT_ORDERS[151], 63.0);
        assert_eq!(&DEFAULT_ORDERS[152..], &[128.0, 256.0, 512.0, 1024.0]);
        assert!(DEFAULT_ORDERS.windows(2).all(|w| w[0] < w[1]));
        let ints = integer_orders();
        assert_eq!((ints.len(), ints[0], ints[254]), (255, 2.0, 256.0));
    }

    #[test]
    fn rdp_per_order_matches_dp_accounting() {
        let rows = reference_csv("dp_rdp_per_order.csv");
        assert!(rows.len() >= 90, "only {} rows", rows.len());
        let mut bad = Vec::new();
        for r in &rows {
            let (z, q, order, want) = (f(&r[0]), f(&r[1]), f(&r[2]), f(&r[3]));
            let got = rdp_subsampled_gaussian(q, z, order);
            let rel = ((got - want) / want).abs();
            if rel >= 1e-9 || !rel.is_finite() {
                bad.push(format!(
                    "z={z} q={q} order={order}: got {got:e}, want {want:e}, rel {rel:e}"
                ));
            }
        }
        assert!(
            bad.is_empty(),
            "{} bad rows:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }

    #[test]
    fn epsilon_matches_dp_accounting_reference() {
        let rows = reference_csv("dp_accounting_reference.csv");
        assert!(rows.len() >= 90, "only {} rows", rows.len());
        // The reference column's grid is the integer part of dp-accounting's
        // default grid: 2..=63, 128, 256 (its optimal orders jump from 63
        // to 128 where 64..=127 or 129..=255 would be better). The full
        // 2..=256 grid of `integer_orders` can only be tighter.
        let ref_grid: Vec<f64> = (2..=63).map(f64::from).chain([128.0, 256.0]).collect();
        let ints = integer_orders();
        let mut bad = Vec::new();
        for r in &rows {
            let (z, q, t, delta) = (f(&r[0]), f(&r[1]), f(&r[2]) as u64, f(&r[3]));
            let (eps_int, opt, eps_rdp, eps_pld) = (f(&r[4]), f(&r[5]), f(&r[6]), f(&r[7]));
            let row = format!("z={z} q={q} T={t} delta={delta}");
            let got = epsilon_with_orders(z, q, t, delta, &ref_grid).expect("valid inputs");
            let rel = ((got.epsilon - eps_int) / eps_int).abs();
            if rel >= 1e-6 || got.order != opt {
                bad.push(format!(
                    "{row}: int orders eps {} (order {}), want {eps_int} (order {opt}), rel {rel:e}",
                    got.epsilon, got.order
                ));
            }
            let full = epsilon_with_orders(z, q, t, delta, &ints).expect("valid inputs");
            if full.epsilon > eps_int * (1.0 + 1e-9) {
                bad.push(format!("{row}: 2..=256 eps {} > {eps_int}", full.epsilon));
            }
            let def = epsilon(z, q, t, delta).expect("valid inputs");
            if def.epsilon > eps_rdp * (1.0 + 1e-9) || def.epsilon < eps_pld - 1e-3 {
                bad.push(format!(
                    "{row}: default orders eps {} (order {}), want <= {eps_rdp} and >= {eps_pld} - 1e-3",
                    def.epsilon, def.order
                ));
            }
        }
        assert!(
            bad.is_empty(),
            "{} bad rows:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }

    #[test]
    fn zcdp_conversion_matches_reference() {
        let rows = reference_csv("dp_zcdp_discrete_reference.csv");
        let mut bad = Vec::new();
        let mut checked = 0;
        for r in &rows {
            let mech = r[0].as_str();
            let (t, delta, rho, want) = (f(&r[2]), f(&r[3]), f(&r[4]), f(&r[5]));
            let rho = match mech {
                "zcdp" => rho,
                "discrete_gaussian" => {
                    // param = "sigma=S,sens=D": recompute rho independently.
                    let mut sigma = f64::NAN;
                    let mut sens = f64::NAN;
                    for kv in r[1].split(',') {
                        let (k, v) = kv.split_once('=').expect("k=v");
                        match k {
                            "sigma" => sigma = f(v),
                            "sens" => sens = f(v),
                            _ => {}
                        }
                    }
                    let ours = t * discrete_gaussian_rho(sigma, sens);
                    if ((ours - rho) / rho).abs() > 1e-12 {
                        bad.push(format!("{}: rho {ours}, csv {rho}", r[1]));
                    }
                    ours
                }
                _ => continue,
            };
            checked += 1;
            let (eps, order) = zcdp_to_epsilon(rho, delta);
            // The CSV gives 6 significant digits.
            if ((eps - want) / want).abs() > 5e-6 {
                bad.push(format!(
                    "{mech} {} T={t} delta={delta}: eps {eps} (order {order}), want {want}",
                    r[1]
                ));
            }
        }
        assert!(checked >= 38, "only {checked} rows checked");
        assert!(
            bad.is_empty(),
            "{} bad rows:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }

    #[test]
    fn fractional_orders_interpolate_their_integer_neighbours() {
        // RDP of the subsampled Gaussian is non-decreasing in α, so the
        // fractional series must land between the integer expansions.
        for &(q, z) in &[(0.01, 0.8), (0.1, 1.1), (0.001, 2.0), (0.5, 0.6)] {
            for k in 2..12u32 {
                let lo = rdp_subsampled_gaussian(q, z, f64::from(k));
                let hi = rdp_subsampled_gaussian(q, z, f64::from(k + 1));
                for frac in [0.1, 0.5, 0.9] {
                    let mid = rdp_subsampled_gaussian(q, z, f64::from(k) + frac);
                    assert!(
                        mid >= lo * (1.0 - 1e-9) && mid <= hi * (1.0 + 1e-9),
                        "q={q} z={z} order {}: {lo} <= {mid} <= {hi}",
                        f64::from(k) + frac
                    );
                }
            }
        }
        // And q = 1 is the Gaussian, α / (2 z²), for fractional orders too.
        assert_eq!(rdp_subsampled_gaussian(1.0, 2.0, 2.5), 2.5 / 8.0);
    }

    /// The grid the DP-FTRL reference states in its header is
    /// [`DEFAULT_ORDERS`] (so the tree accountant and the ledger, which both
    /// use it, compute on the reference's own grid); a reference recomputed
    /// on another grid fails here first.
    #[test]
    fn the_dp_ftrl_reference_grid_is_the_default_grid() {
        let path = format!(
            "{}/tests/data/dp_ftrl_reference.csv",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("# Orders: 1.1..10.9 step 0.1, 11..63, 128, 256, 512, 1024."),
            "the reference's order grid changed: {path}"
        );
        assert!(text.contains("neighboring_relation=REPLACE_SPECIAL"));
        let stated: Vec<f64> = (1..100)
            .map(|x| 1.0 + f64::from(x) / 10.0)
            .chain((11..=63).map(f64::from))
            .chain([128.0, 256.0, 512.0, 1024.0])
            .collect();
        assert_eq!(stated, DEFAULT_ORDERS);
    }

    #[test]
    fn tree_epsilon_matches_the_dp_ftrl_reference() {
        let rows = reference_csv("dp_ftrl_reference.csv");
        // z in {0.7, 1.5, 3}, S in {3, 15, 64}, E in {1, 10}, two deltas (the
        // file's 40 lines are these 36 rows, a header and 3 comment lines).
        assert_eq!(rows.len(), 36);
        let mut bad = Vec::new();
        for r in &rows {
            let (z, s, e, delta, want) = (
                f(&r[0]),
                f(&r[1]) as u64,
                f(&r[2]) as u64,
                f(&r[3]),
                f(&r[4]),
            );
            let got = tree_epsilon(z, s, e, delta).expect("valid inputs").epsilon;
            let by_rounds = tree_epsilon_after_rounds(z, s, s * e, delta)
                .unwrap()
                .epsilon;
            let rel = ((got - want) / want).abs();
            if rel >= 1e-6 || by_rounds != got {
                bad.push(format!(
                    "z={z} S={s} E={e} delta={delta}: got {got} ({by_rounds} by rounds), want {want}, rel {rel:e}"
                ));
            }
        }
        assert!(
            bad.is_empty(),
            "{} bad rows:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }

    #[test]
    fn tree_depth_is_ceil_log2_of_steps_plus_one() {
        for steps in (0..5000u64).chain([u64::MAX / 2, u64::MAX - 1, u64::MAX]) {
            // ceil(log2(n + 1)) without floating point: the smallest k with
            // 2^k >= n + 1, i.e. 2^k > n.
            let want = (0..=64u32)
                .find(|&k| k == 64 || (1u64 << k) > steps)
                .unwrap();
            assert_eq!(tree_depth(steps), u64::from(want), "steps {steps}");
        }
        // The reference's S values.
        assert_eq!(
            [3, 15, 64].map(tree_depth),
            [2, 4, 7],
            "ceil(log2(S+1)) for S = 3, 15, 64"
        );
    }

    #[test]
    fn a_partial_epoch_costs_the_nodes_its_tree_released() {
        let (z, s, delta) = (1.5, 15, 1e-5);
        // 2 full trees and 5 steps of a third: 2·4 + 3 node units.
        let got = tree_epsilon_after_rounds(z, s, 35, delta).unwrap();
        let rdp: Vec<f64> = DEFAULT_ORDERS
            .iter()
            .map(|a| a * 11.0 / (2.0 * z * z))
            .collect();
        let (want, order) = rdp_to_epsilon(DEFAULT_ORDERS, &rdp, delta);
        assert_eq!((got.epsilon, got.order), (want, order));
        assert!(got.epsilon > tree_epsilon(z, s, 2, delta).unwrap().epsilon);
        assert!(got.epsilon < tree_epsilon(z, s, 3, delta).unwrap().epsilon);
    }

    #[test]
    fn tree_noise_multiplier_inverts_tree_epsilon() {
        for r in reference_csv("dp_ftrl_reference.csv").iter().step_by(7) {
            let (z, s, e, delta, eps) = (
                f(&r[0]),
                f(&r[1]) as u64,
                f(&r[2]) as u64,
                f(&r[3]),
                f(&r[4]),
            );
            let z2 = tree_noise_multiplier(eps, s, e, delta).unwrap();
            assert!(((z2 - z) / z).abs() < 1e-6, "z {z} -> eps {eps} -> z {z2}");
            assert!(tree_epsilon(z2, s, e, delta).unwrap().epsilon <= eps);
            assert!(
                tree_epsilon(z2 * (1.0 - 1e-8), s, e, delta)
                    .unwrap()
                    .epsilon
                    > eps
            );
        }
    }

    #[test]
    fn tree_max_rounds_is_the_largest_count_within_budget() {
        for &(z, s, target, delta) in &[
            (1.0, 16, 8.0, 1e-5),
            (1.5, 15, 20.0, 1e-6),
            (3.0, 64, 10.0, 1e-5),
            (0.7, 3, 60.0, 1e-5),
            (5.0, 1, 4.0, 1e-5),
            (10.0, 1000, 2.0, 1e-5),
        ] {
            let t = tree_max_rounds(z, s, target, delta).unwrap();
            assert!(t >= 1, "z={z} S={s}: no round fits");
            let at = |t| tree_epsilon_after_rounds(z, s, t, delta).unwrap().epsilon;
            assert!(at(t) <= target, "z={z} S={s}: {t} rounds spend {}", at(t));
            assert!(at(t + 1) > target, "z={z} S={s}: {} rounds fit too", t + 1);
            // Brute force agrees for the smaller cases.
            if t < 5000 {
                let brute = (1..).take_while(|&t| at(t) <= target).last().unwrap();
                assert_eq!(t, brute, "z={z} S={s}");
            }
        }
        // One round of weak noise already exceeds epsilon = 1.
        assert_eq!(tree_max_rounds(0.5, 16, 1.0, 1e-5), Ok(0));
    }

    #[test]
    fn tree_accountant_refuses_bad_input() {
        use AccountantError as E;
        assert_eq!(tree_epsilon(0.0, 3, 1, 1e-5), Err(E::NoiseMultiplier(0.0)));
        assert_eq!(tree_epsilon(1.0, 0, 1, 1e-5), Err(E::ZeroSteps));
        assert_eq!(tree_epsilon(1.0, 3, 0, 1e-5), Err(E::ZeroEpochs));
        assert_eq!(tree_epsilon(1.0, 3, 1, 1.0), Err(E::Delta(1.0)));
        assert_eq!(tree_epsilon(1.0, u64::MAX, 2, 1e-5), Err(E::TooManyRounds));
        assert_eq!(
            tree_epsilon_after_rounds(1.0, 3, 0, 1e-5),
            Err(E::ZeroRounds)
        );
        assert_eq!(
            tree_noise_multiplier(-1.0, 3, 1, 1e-5),
            Err(E::TargetEpsilon(-1.0))
        );
        assert_eq!(tree_noise_multiplier(1.0, 3, 0, 1e-5), Err(E::ZeroEpochs));
        assert_eq!(
            tree_noise_multiplier(1e-9, 64, 1000, 1e-5),
            Err(E::Unreachable {
                max_z: 1e6,
                target_epsilon: 1e-9
            })
        );
        assert_eq!(tree_max_rounds(1.0, 0, 1.0, 1e-5), Err(E::ZeroSteps));
        assert!(matches!(
            tree_max_rounds(f64::NAN, 3, 1.0, 1e-5),
            Err(E::NonFinite { .. })
        ));
        assert_eq!(tree_max_rounds(1.0, 3, 1.0, 0.0), Err(E::Delta(0.0)));
    }

    #[test]
    fn noise_multiplier_inverts_epsilon() {
        for &(z, q, t, delta) in &[
            (1.1, 0.01, 1000, 1e-5),
            (0.8, 0.1, 100, 1e-6),
            (3.0, 1.0, 10, 1e-5),
        ] {
            let eps = epsilon(z, q, t, delta).unwrap().epsilon;
            let z2 = noise_multiplier(eps, q, t, delta).unwrap();
            assert!(((z2 - z) / z).abs() < 1e-6, "z {z} -> eps {eps} -> z {z2}");
            assert!(epsilon(z2, q, t, delta).unwrap().epsilon <= eps);
        }
    }

    #[test]
    fn max_rounds_is_consistent_with_epsilon() {
        for &(z, q, target, delta) in &[
            (1.0, 0.01, 2.0, 1e-5),
            (1.5, 0.02, 5.0, 1e-6),
            (0.8, 0.001, 1.0, 1e-5),
        ] {
            let t = max_rounds(z, q, target, delta).unwrap();
            assert!(t >= 1, "z={z} q={q}: no round fits");
            assert!(epsilon(z, q, t, delta).unwrap().epsilon <= target);
            assert!(epsilon(z, q, t + 1, delta).unwrap().epsilon > target);
        }
        // One round of an unsampled, weakly noised Gaussian already exceeds ε=1.
        assert_eq!(max_rounds(0.5, 1.0, 1.0, 1e-5), Ok(0));
    }

    #[test]
    fn bad_inputs_are_refused() {
        use AccountantError as E;
        assert_eq!(epsilon(0.0, 0.1, 1, 1e-5), Err(E::NoiseMultiplier(0.0)));
        assert_eq!(epsilon(-1.0, 0.1, 1, 1e-5), Err(E::NoiseMultiplier(-1.0)));
        assert_eq!(epsilon(1.0, 0.0, 1, 1e-5), Err(E::SamplingRate(0.0)));
        assert_eq!(epsilon(1.0, 1.5, 1, 1e-5), Err(E::SamplingRate(1.5)));
        assert_eq!(epsilon(1.0, 0.1, 1, 0.0), Err(E::Delta(0.0)));
        assert_eq!(epsilon(1.0, 0.1, 1, 1.0), Err(E::Delta(1.0)));
        assert_eq!(epsilon(1.0, 0.1, 0, 1e-5), Err(E::ZeroRounds));
        assert!(matches!(
            epsilon(f64::NAN, 0.1, 1, 1e-5),
            Err(E::NonFinite { .. })
        ));
        assert!(matches!(
            epsilon(1.0, f64::INFINITY, 1, 1e-5),
            Err(E::NonFinite { .. })
        ));
        assert!(matches!(
            epsilon(1.0, 0.1, 1, f64::NAN),
            Err(E::NonFinite { .. })
        ));
        assert_eq!(
            epsilon_with_orders(1.0, 0.1, 1, 1e-5, &[0.5, 1.0]),
            Err(E::NoOrders)
        );
        assert_eq!(
            noise_multiplier(0.0, 0.1, 1, 1e-5),
            Err(E::TargetEpsilon(0.0))
        );
        assert_eq!(
            noise_multiplier(-1.0, 0.1, 1, 1e-5),
            Err(E::TargetEpsilon(-1.0))
        );
        assert_eq!(noise_multiplier(1.0, 0.1, 0, 1e-5), Err(E::ZeroRounds));
        assert!(matches!(
            noise_multiplier(f64::INFINITY, 0.1, 1, 1e-5),
            Err(E::NonFinite { .. })
        ));
        assert_eq!(
            noise_multiplier(1e-9, 1.0, 1000, 1e-5),
            Err(E::Unreachable {
                max_z: 1e6,
                target_epsilon: 1e-9
            })
        );
        assert_eq!(max_rounds(1.0, 0.1, 0.0, 1e-5), Err(E::TargetEpsilon(0.0)));
        assert_eq!(
            max_rounds(0.0, 0.1, 1.0, 1e-5),
            Err(E::NoiseMultiplier(0.0))
        );
        assert_eq!(max_rounds(1.0, 0.1, 1.0, 2.0), Err(E::Delta(2.0)));
        let msg = E::Unreachable {
            max_z: 1e6,
            target_epsilon: 0.5,
        }
        .to_string();
        assert!(msg.contains("no noise multiplier below 1e6"), "{msg}");
    }

    #[test]
    fn conversion_edge_cases_follow_dp_accounting() {
        // Tiny RDP: the KL bound gives ε = 0.
        assert_eq!(rdp_to_epsilon(&[2.0], &[1e-12], 1e-5).0, 0.0);
        // Orders <= 1.01 are never used.
        assert_eq!(rdp_to_epsilon(&[1.005], &[1.0], 1e-5).0, f64::INFINITY);
        // Closed form at a single order.
        let (eps, order) = rdp_to_epsilon(&[2.0], &[1.0], 1e-5);
        let want = 1.0 + (0.5f64).ln() - (2e-5f64).ln();
        assert_eq!(order, 2.0);
        assert!((eps - want).abs() < 1e-12);
    }

    #[test]
    fn skellam_bound_by_hand() {
        // μ = 100, Δ₁ = 2, Δ₂ = 1, α = 3: Gaussian term 3/200 = 0.015;
        // correction min((6 + 12) / 40000, 6 / 200) = 0.00045.
        let rdp = skellam_rdp(100.0, 2.0, 1.0, 3.0);
        assert!((rdp - 0.01545).abs() < 1e-15, "{rdp}");
    }

    #[test]
    fn skellam_bound_tends_to_the_gaussian() {
        // Large μ: the integer-noise correction vanishes relative to the
        // Gaussian term α Δ² / (2μ).
        let (l1, l2, a) = (100.0, 10.0, 4.0);
        let mu = 1e8;
        let gauss = a * l2 * l2 / (2.0 * mu);
        let sk = skellam_rdp(mu, l1, l2, a);
        assert!(sk > gauss && (sk - gauss) / gauss < 1e-4);
        // Small μ: the 3Δ₁/(2μ) branch of the min is taken.
        let mu = 1.0;
        let want = a * l2 * l2 / 2.0 + 3.0 * l1 / 2.0;
        assert_eq!(skellam_rdp(mu, l1, l2, a), want);
    }
}
