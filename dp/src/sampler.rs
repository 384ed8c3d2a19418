//! Noise samplers for differential privacy.
//!
//! Distributed DP (see [`super`]) adds integer noise on the client, inside the
//! secure aggregation ring, so the samplers for it are *exact*: they use only
//! uniform integers from the caller's CSPRNG and exact rational arithmetic, so
//! the output distribution is exactly the one the privacy analysis assumes.
//! A float sampler (rounding `σ·N(0,1)`) has a distribution with gaps and
//! bumps that leak (Mironov, "On significance of the least significant bits
//! for differential privacy", CCS 2012).
//!
//! - [`bernoulli_exp`]: Bernoulli(`exp(-γ)`) for rational `γ`, Canonne,
//!   Kamath, Steinke, "The Discrete Gaussian for Differential Privacy"
//!   (NeurIPS 2020), Algorithm 1.
//! - [`sample_discrete_laplace`]: the discrete Laplace, their Algorithm 2.
//! - [`sample_discrete_gaussian`]: the discrete Gaussian by rejection from the
//!   discrete Laplace, their Algorithm 3.
//! - [`sample_poisson`] and [`sample_skellam`]: exact Poisson by rejection
//!   from a geometric proposal, and the Skellam distribution (difference of
//!   two Poissons) of Agarwal, Kairouz, Liu (NeurIPS 2021).
//!
//! Central DP uses the exact discrete Gaussian too, on the decoded integer
//! sum ([`super::mechanism::CentralDp`]): no float noise sampler remains.
//!
//! Every sampler takes `rng: &mut R` with `R: CryptoRng + ?Sized`: noise that
//! an adversary can predict protects nothing.

use rand_core::CryptoRng;

/// A non-negative rational `num / den`, the exact parameter type of the
/// integer samplers.
///
/// Privacy parameters arrive as `f64`; [`Rational::from_f64_ceil`] fixes them to a
/// rational with a chosen denominator once, so the sampler's arithmetic is
/// exact from then on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rational {
    /// Numerator.
    pub num: u64,
    /// Denominator, nonzero.
    pub den: u64,
}

/// The largest denominator [`sample_discrete_gaussian`] accepts for `σ²`.
pub const MAX_GAUSSIAN_DEN: u64 = 1 << 20;
/// The largest `σ²` (as `num / den`) [`sample_discrete_gaussian`] accepts:
/// `σ <= 2^20`.
pub const MAX_GAUSSIAN_SIGMA_SQ: u64 = 1 << 40;
/// The largest mean [`sample_poisson`] and [`sample_skellam`] accept. Their
/// cost is linear in the mean (about four uniform draws per unit), so this
/// is a bound on running time, not on correctness.
pub const MAX_POISSON_MEAN: u64 = 1 << 24;

impl Rational {
    /// `num / den`.
    ///
    /// # Panics
    /// If `den` is zero.
    pub fn new(num: u64, den: u64) -> Self {
        assert!(den != 0, "a rational needs a nonzero denominator");
        Self { num, den }
    }

    /// The rational with denominator `den` nearest to `x`, rounding up so a
    /// variance built this way is never below the one asked for.
    ///
    /// Returns `None` if `x` is negative, not finite, `den` is zero or
    /// `x * den` does not fit a `u64`.
    pub fn from_f64_ceil(x: f64, den: u64) -> Option<Self> {
        if !x.is_finite() || x < 0.0 || den == 0 {
            return None;
        }
        let scaled = (x * den as f64).ceil();
        if scaled >= u64::MAX as f64 {
            return None;
        }
        Some(Self {
            num: scaled as u64,
            den,
        })
    }

    /// The value as `f64` (for reporting and tests).
    pub fn to_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

/// A uniform 128-bit integer from two 64-bit draws.
fn next_u128<R: CryptoRng + ?Sized>(rng: &mut R) -> u128 {
    (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())
}

/// A uniform integer in `0..m` by rejection: draw as many bits as `m - 1`
/// needs and retry if the draw is `>= m`, so there is no modulo bias. Each
/// draw is accepted with probability above 1/2.
///
/// # Panics
/// If `m` is zero.
pub fn uniform_below<R: CryptoRng + ?Sized>(rng: &mut R, m: u128) -> u128 {
    assert!(m != 0, "uniform_below(0) has no values");
    if m == 1 {
        return 0;
    }
    let bits = 128 - (m - 1).leading_zeros();
    let mask = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    loop {
        let x = if bits <= 64 {
            u128::from(rng.next_u64()) & mask
        } else {
            next_u128(rng) & mask
        };
        if x < m {
            return x;
        }
    }
}

/// Bernoulli(`num / den`), exactly, for `num <= den`.
fn bernoulli_ratio<R: CryptoRng + ?Sized>(rng: &mut R, num: u128, den: u128) -> bool {
    debug_assert!(num <= den && den != 0);
    uniform_below(rng, den) < num
}

/// Bernoulli(`exp(-num/den)`) for `num <= den`: CKS Algorithm 1, case
/// `γ ∈ [0, 1]`. `K` counts consecutive successes of Bernoulli(`γ/K`); the
/// probability that the first failure comes at an odd `K` is `exp(-γ)`.
fn bernoulli_exp_le1<R: CryptoRng + ?Sized>(rng: &mut R, num: u128, den: u128) -> bool {
    let mut k: u128 = 1;
    loop {
        // Bernoulli(γ/K) as Bernoulli(γ) AND Bernoulli(1/K): the product of
        // independent Bernoullis is exact and `den * K` never overflows.
        let a = bernoulli_ratio(rng, num, den) && bernoulli_ratio(rng, 1, k);
        if !a {
            return k % 2 == 1;
        }
        k += 1;
    }
}

/// Bernoulli(`exp(-(q + r/den))`) for an integer part `q` and a fraction
/// `r/den < 1` (CKS Algorithm 1, case `γ > 1`): `q` independent
/// Bernoulli(`exp(-1)`) trials, all of which must succeed, then one for the
/// fraction. The loop stops at the first failure, so a huge `q` costs about
/// 1.6 trials on average.
fn bernoulli_exp_split<R: CryptoRng + ?Sized>(rng: &mut R, q: u128, r: u128, den: u128) -> bool {
    let mut i = 0u128;
    while i < q {
        if !bernoulli_exp_le1(rng, 1, 1) {
            return false;
        }
        i += 1;
    }
    bernoulli_exp_le1(rng, r, den)
}

/// Bernoulli(`exp(-γ)`) for a rational `γ >= 0`, exactly (Canonne, Kamath,
/// Steinke 2020, Algorithm 1).
///
/// It is the acceptance test of the discrete Gaussian sampler, and is public
/// so other exact samplers can be built on it.
pub fn bernoulli_exp<R: CryptoRng + ?Sized>(rng: &mut R, gamma: Rational) -> bool {
    let (num, den) = (u128::from(gamma.num), u128::from(gamma.den));
    bernoulli_exp_split(rng, num / den, num % den, den)
}

/// A sample of the discrete Laplace distribution with scale `t`,
/// `P(x) ∝ exp(-|x| / t)` on the integers (CKS Algorithm 2 with `s = 1`).
///
/// `U` uniform in `0..t` accepted with probability `exp(-U/t)` and `V`
/// geometric with ratio `exp(-1)` make `U + tV` geometric with ratio
/// `exp(-1/t)`; a fair sign (rejecting "negative zero") makes it two-sided.
///
/// # Panics
/// If `t` is zero.
pub fn sample_discrete_laplace<R: CryptoRng + ?Sized>(rng: &mut R, t: u64) -> i64 {
    assert!(t != 0, "the discrete Laplace needs a positive scale");
    let t128 = u128::from(t);
    loop {
        let u = uniform_below(rng, t128);
        if !bernoulli_exp_le1(rng, u, t128) {
            continue;
        }
        let mut v: u128 = 0;
        while bernoulli_exp_le1(rng, 1, 1) {
            v += 1;
        }
        let x = u + t128 * v;
        let negative = rng.next_u32() & 1 == 1;
        if negative && x == 0 {
            continue;
        }
        // A magnitude beyond i64 has probability below exp(-2^63 / t):
        // redraw rather than wrap.
        let Ok(x) = i64::try_from(x) else { continue };
        return if negative { -x } else { x };
    }
}

/// `a * b` as a 256-bit number `(high, low)`.
fn mul_wide(a: u128, b: u128) -> (u128, u128) {
    const M: u128 = (1 << 64) - 1;
    let (a1, a0) = (a >> 64, a & M);
    let (b1, b0) = (b >> 64, b & M);
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    // Each term is below 2^64, so the middle column stays below 3 * 2^64.
    let mid = (p00 >> 64) + (p01 & M) + (p10 & M);
    let lo = (p00 & M) | (mid << 64);
    let hi = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
    (hi, lo)
}

/// `(hi 2^128 + lo) / d` as (quotient saturated at `u128::MAX`, remainder),
/// by binary long division; needs `d < 2^127` so `2 rem + 1` cannot overflow.
fn div_wide(hi: u128, lo: u128, d: u128) -> (u128, u128) {
    debug_assert!(d != 0 && d < (1 << 127));
    let mut rem: u128 = 0;
    let mut q: u128 = 0;
    let mut saturated = false;
    for i in (0..256).rev() {
        let bit = if i >= 128 {
            (hi >> (i - 128)) & 1
        } else {
            (lo >> i) & 1
        };
        rem = (rem << 1) | bit;
        let qbit = if rem >= d {
            rem -= d;
            1
        } else {
            0
        };
        match q.checked_mul(2) {
            Some(v) if !saturated => q = v | qbit,
            _ => saturated = true,
        }
    }
    (if saturated { u128::MAX } else { q }, rem)
}

/// A sample of the discrete Gaussian `N_Z(0, σ²)`,
/// `P(x) ∝ exp(-x² / (2σ²))` on the integers, exactly (Canonne, Kamath,
/// Steinke 2020, Algorithm 3).
///
/// With `t = floor(σ) + 1`, draw `Y` from the discrete Laplace of scale `t`
/// and accept it with probability `exp(-(|Y| - σ²/t)² / (2σ²))`. With
/// `σ² = n/d` the exponent is the rational
/// `(|Y| d t - n)² / (2 n d t²)`; its numerator can exceed 128 bits, so it
/// is formed as a 256-bit product and divided exactly. The expected number
/// of trials is bounded by a constant independent of `σ` (CKS 2020).
///
/// Note that the variance of `N_Z(0, σ²)` is slightly *below* `σ²`: by about
/// `2e-7` relative at `σ = 1`, below `f64` precision from `σ ≈ 1.5`, but by
/// 14% at `σ = 0.5`.
///
/// Supported range: `σ² = num/den` with `0 < σ² <= 2^40` (`σ <= 2^20`) and
/// `den <= 2^20`, which keeps the denominator `2 n d t²` below `2^122`.
///
/// # Panics
/// If `sigma_sq` is zero or outside the supported range.
pub fn sample_discrete_gaussian<R: CryptoRng + ?Sized>(rng: &mut R, sigma_sq: Rational) -> i64 {
    let Rational { num: n, den: d } = sigma_sq;
    assert!(
        n != 0 && d != 0 && d <= MAX_GAUSSIAN_DEN && n / d < MAX_GAUSSIAN_SIGMA_SQ,
        "discrete Gaussian sigma^2 must be a positive num/den with den <= 2^20 and sigma^2 <= 2^40"
    );
    // t = floor(sqrt(n/d)) + 1, by an exact integer search: the largest s
    // with s² d <= n.
    let (n128, d128) = (u128::from(n), u128::from(d));
    let mut s = ((n as f64 / d as f64).sqrt()) as u128;
    while s * s * d128 > n128 {
        s -= 1;
    }
    while (s + 1) * (s + 1) * d128 <= n128 {
        s += 1;
    }
    let t = s + 1;
    let t64 = u64::try_from(t).expect("t <= 2^20 + 1");
    let den = 2 * n128 * d128 * t * t;
    loop {
        let y = sample_discrete_laplace(rng, t64);
        // |Y| d t - n, then its square over `den`.
        let a = i128::from(y.unsigned_abs()) * (d128 * t) as i128 - n128 as i128;
        let a = a.unsigned_abs();
        let (hi, lo) = mul_wide(a, a);
        let (q, r) = div_wide(hi, lo, den);
        if bernoulli_exp_split(rng, q, r, den) {
            return y;
        }
    }
}

/// A sample of Poisson(`λ`) for `λ = num/den <= 1`, exactly, by rejection
/// from a geometric proposal.
///
/// Propose `K` with `P(K = k) = (1 - λ/2)(λ/2)^k` (count successes of
/// Bernoulli(`λ/2`)) and accept with probability `2^(k-1) / k!` (at most 1,
/// at `k = 1, 2`). The accepted law is `∝ (λ/2)^k 2^k / k! = λ^k / k!`,
/// which is Poisson(`λ`). Acceptance is `(1 - λ/2) e^λ / 2 >= 0.5`.
fn poisson_le1<R: CryptoRng + ?Sized>(rng: &mut R, num: u128, den: u128) -> u64 {
    loop {
        let mut k: u64 = 0;
        while bernoulli_ratio(rng, num, 2 * den) {
            k += 1;
        }
        // 2^(k-1)/k! = Π_{j=2..k} 2/j (and 1/2 for k = 0): independent
        // Bernoulli(2/j) trials, exact and overflow-free.
        let accept = if k == 0 {
            bernoulli_ratio(rng, 1, 2)
        } else {
            (3..=u128::from(k)).all(|j| bernoulli_ratio(rng, 2, j))
        };
        if accept {
            return k;
        }
    }
}

/// A sample of Poisson(`μ`) for rational `μ`, exactly: the sum of
/// `ceil(μ)` independent Poisson(`μ / ceil(μ)`) samples (each mean at most
/// 1, drawn by rejection from a geometric proposal).
///
/// The cost is linear in `μ`, about four uniform draws per unit of mean.
///
/// # Panics
/// If `μ > 2^24` ([`MAX_POISSON_MEAN`]).
pub fn sample_poisson<R: CryptoRng + ?Sized>(rng: &mut R, mu: Rational) -> u64 {
    assert!(
        mu.num / mu.den < MAX_POISSON_MEAN,
        "Poisson mean must be at most 2^24"
    );
    if mu.num == 0 {
        return 0;
    }
    let pieces = mu.num.div_ceil(mu.den);
    let num = u128::from(mu.num);
    let den = u128::from(mu.den) * u128::from(pieces);
    (0..pieces).map(|_| poisson_le1(rng, num, den)).sum()
}

/// A sample of the Skellam distribution: `P1 - P2` for independent
/// Poisson(`μ`) samples; mean 0, variance `2μ`.
///
/// Agarwal, Kairouz, Liu (2021) use it for distributed DP because sums of
/// independent Skellam variables are Skellam again, so the total noise of
/// any set of survivors has a known distribution.
///
/// # Panics
/// As [`sample_poisson`].
pub fn sample_skellam<R: CryptoRng + ?Sized>(rng: &mut R, mu: Rational) -> i64 {
    let a = sample_poisson(rng, mu);
    let b = sample_poisson(rng, mu);
    // Both are far below 2^63 for means below 2^24.
    a as i64 - b as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn rng(seed: u8) -> ChaCha20Rng {
        ChaCha20Rng::from_seed([seed; 32])
    }

    /// Sample mean and variance.
    fn moments(xs: &[i64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var)
    }

    /// The exact variance and fourth moment of N_Z(0, σ²), by summing the
    /// pmf `exp(-x²/2σ²)` (independent of the sampler).
    fn dg_moments(sigma_sq: f64) -> (f64, f64) {
        let bound = (sigma_sq.sqrt() * 40.0) as i64 + 10;
        let (mut z, mut m2, mut m4) = (0.0, 0.0, 0.0);
        for x in -bound..=bound {
            let p = (-(x as f64).powi(2) / (2.0 * sigma_sq)).exp();
            let x2 = (x as f64).powi(2);
            z += p;
            m2 += p * x2;
            m4 += p * x2 * x2;
        }
        (m2 / z, m4 / z)
    }

    /// Checks mean 0 and variance `var` within 5 standard errors, with the
    /// standard error of the sample variance from the fourth moment.
    fn check_moments(xs: &[i64], var: f64, m4: f64, what: &str) {
        let n = xs.len() as f64;
        let (mean, v) = moments(xs);
        let se_mean = (var / n).sqrt();
        assert!(mean.abs() < 5.0 * se_mean, "{what}: mean {mean}");
        let se_var = ((m4 - var * var) / n).sqrt();
        assert!(
            (v - var).abs() < 5.0 * se_var,
            "{what}: variance {v}, expected {var} ± {}",
            5.0 * se_var
        );
    }

    #[test]
    fn uniform_below_is_unbiased_and_in_range() {
        let mut r = rng(1);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[uniform_below(&mut r, 3) as usize] += 1;
        }
        // Each count is Binomial(30000, 1/3): sd ≈ 81.6.
        for c in counts {
            assert!((i64::from(c) - 10_000).abs() < 410, "{counts:?}");
        }
        assert_eq!(uniform_below(&mut r, 1), 0);
        for m in [2u128, 1 << 64, (1 << 64) + 1, u128::MAX] {
            for _ in 0..100 {
                assert!(uniform_below(&mut r, m) < m);
            }
        }
    }

    #[test]
    fn bernoulli_exp_frequency() {
        let mut r = rng(2);
        let n = 100_000;
        for (num, den) in [(0u64, 1u64), (1, 2), (1, 1), (5, 2), (3, 1)] {
            let p = (-(num as f64) / den as f64).exp();
            let hits = (0..n)
                .filter(|_| bernoulli_exp(&mut r, Rational::new(num, den)))
                .count() as f64;
            let se = (p * (1.0 - p) / n as f64).sqrt();
            let f = hits / n as f64;
            assert!((f - p).abs() <= 5.0 * se, "γ = {num}/{den}: {f} vs {p}");
        }
    }

    #[test]
    fn wide_arithmetic_matches_u128_where_it_fits() {
        for (a, d) in [
            (12345u128, 77u128),
            (1 << 60, 3),
            (u64::MAX as u128, 1 << 100),
        ] {
            let (hi, lo) = mul_wide(a, a);
            assert_eq!(hi, 0);
            assert_eq!(lo, a * a);
            assert_eq!(div_wide(hi, lo, d), (a * a / d, a * a % d));
        }
        // (2^100)² = 2^200 = 2^72 * 2^128.
        assert_eq!(mul_wide(1 << 100, 1 << 100), (1 << 72, 0));
        // 2^200 / 3: quotient does not fit, remainder 2^200 mod 3 = 1.
        assert_eq!(div_wide(1 << 72, 0, 3), (u128::MAX, 1));
        // 2^200 / 2^100 = 2^100, remainder 0.
        assert_eq!(div_wide(1 << 72, 0, 1 << 100), (1 << 100, 0));
    }

    #[test]
    fn discrete_gaussian_moments() {
        let mut r = rng(3);
        for sigma in [1u64, 3, 10] {
            let ss = Rational::new(sigma * sigma, 1);
            let xs: Vec<i64> = (0..100_000)
                .map(|_| sample_discrete_gaussian(&mut r, ss))
                .collect();
            let (var, m4) = dg_moments(ss.to_f64());
            check_moments(&xs, var, m4, &format!("N_Z σ = {sigma}"));
        }
        // A fractional σ² = 2.25 = 9/4 exercises the rational path.
        let xs: Vec<i64> = (0..50_000)
            .map(|_| sample_discrete_gaussian(&mut r, Rational::new(9, 4)))
            .collect();
        let (var, m4) = dg_moments(2.25);
        check_moments(&xs, var, m4, "N_Z σ² = 9/4");
    }

    #[test]
    fn discrete_gaussian_variance_is_below_sigma_sq_for_small_sigma() {
        // The test's reference itself: at σ = 1 the exact variance is
        // visibly below 1 (about 0.99999), at σ = 0.5 far below 0.25.
        let (v1, _) = dg_moments(1.0);
        assert!(v1 < 1.0 && v1 > 0.999);
        let (v_half, _) = dg_moments(0.25);
        assert!(v_half < 0.25 * 0.9);
    }

    /// Regularized upper incomplete gamma Q(k/2, x/2) for even degrees of
    /// freedom k = 2m: the chi-square survival function
    /// `exp(-x/2) Σ_{i<m} (x/2)^i / i!`.
    fn chi_square_sf_even(x: f64, dof: u32) -> f64 {
        assert_eq!(dof % 2, 0);
        let h = x / 2.0;
        let (mut term, mut sum) = (1.0, 0.0);
        for i in 0..dof / 2 {
            if i > 0 {
                term *= h / f64::from(i);
            }
            sum += term;
        }
        (-h).exp() * sum
    }

    #[test]
    fn chi_square_sf_matches_known_values() {
        // Two degrees of freedom: sf(x) = exp(-x/2).
        assert!((chi_square_sf_even(3.0, 2) - (-1.5f64).exp()).abs() < 1e-15);
        // Published critical value: chi2(0.95, dof = 10) = 18.307.
        assert!((chi_square_sf_even(18.307, 10) - 0.05).abs() < 1e-4);
    }

    #[test]
    fn discrete_gaussian_goodness_of_fit() {
        // σ = 1.5, bins (-inf, -6], -5, ..., 5, [6, inf): 13 bins, no
        // estimated parameters, so 12 degrees of freedom.
        let sigma_sq = 2.25;
        let n = 100_000usize;
        let mut r = rng(4);
        let mut counts = [0f64; 13];
        for _ in 0..n {
            let x = sample_discrete_gaussian(&mut r, Rational::new(9, 4));
            counts[(x.clamp(-6, 6) + 6) as usize] += 1.0;
        }
        let w = |x: i64| (-(x as f64).powi(2) / (2.0 * sigma_sq)).exp();
        let z: f64 = (-60..=60).map(w).sum();
        let mut expected = [0f64; 13];
        for x in -60i64..=60 {
            expected[(x.clamp(-6, 6) + 6) as usize] += w(x) / z * n as f64;
        }
        let chi2: f64 = counts
            .iter()
            .zip(&expected)
            .map(|(o, e)| (o - e).powi(2) / e)
            .sum();
        let p = chi_square_sf_even(chi2, 12);
        assert!(p > 1e-4, "chi2 = {chi2}, p = {p}");
        // The test can fail: the continuous-Gaussian-rounded pmf with a 10%
        // wider σ is rejected on the same counts.
        let w2 = |x: i64| (-(x as f64).powi(2) / (2.0 * sigma_sq * 1.21)).exp();
        let z2: f64 = (-60..=60).map(w2).sum();
        let mut wrong = [0f64; 13];
        for x in -60i64..=60 {
            wrong[(x.clamp(-6, 6) + 6) as usize] += w2(x) / z2 * n as f64;
        }
        let chi2_wrong: f64 = counts
            .iter()
            .zip(&wrong)
            .map(|(o, e)| (o - e).powi(2) / e)
            .sum();
        assert!(chi_square_sf_even(chi2_wrong, 12) < 1e-4);
    }

    #[test]
    fn discrete_laplace_moments() {
        // Var of the two-sided geometric with ratio q = e^(-1/t):
        // 2q/(1-q)².
        let mut r = rng(5);
        let t = 3u64;
        let xs: Vec<i64> = (0..100_000)
            .map(|_| sample_discrete_laplace(&mut r, t))
            .collect();
        let q = (-1.0 / t as f64).exp();
        let var = 2.0 * q / (1.0 - q).powi(2);
        // Fourth moment by summation of the pmf (1-q)/(1+q) q^|x|.
        let m4: f64 = (-400i64..=400)
            .map(|x| (1.0 - q) / (1.0 + q) * q.powi(x.abs() as i32) * (x as f64).powi(4))
            .sum();
        check_moments(&xs, var, m4, "discrete Laplace t = 3");
    }

    #[test]
    fn poisson_and_skellam_moments() {
        let mut r = rng(6);
        // Poisson(0.7): mean = var = 0.7.
        let xs: Vec<i64> = (0..100_000)
            .map(|_| sample_poisson(&mut r, Rational::new(7, 10)) as i64)
            .collect();
        let mean = xs.iter().sum::<i64>() as f64 / xs.len() as f64;
        assert!((mean - 0.7).abs() < 5.0 * (0.7f64 / 1e5).sqrt(), "{mean}");
        let p0 = xs.iter().filter(|&&x| x == 0).count() as f64 / 1e5;
        let e0 = (-0.7f64).exp();
        assert!((p0 - e0).abs() < 5.0 * (e0 * (1.0 - e0) / 1e5).sqrt());
        for (mu, n) in [(2u64, 100_000usize), (50, 100_000)] {
            let xs: Vec<i64> = (0..n)
                .map(|_| sample_skellam(&mut r, Rational::new(mu, 1)))
                .collect();
            // Skellam(μ): variance 2μ, fourth central moment 3(2μ)² + 2μ.
            let var = 2.0 * mu as f64;
            check_moments(
                &xs,
                var,
                3.0 * var * var + var,
                &format!("Skellam μ = {mu}"),
            );
        }
    }

    #[test]
    fn rational_from_f64_rounds_up() {
        assert_eq!(Rational::from_f64_ceil(1.5, 4), Some(Rational::new(6, 4)));
        let r = Rational::from_f64_ceil(0.1, 1 << 20).unwrap();
        assert!(r.to_f64() >= 0.1);
        assert_eq!(Rational::from_f64_ceil(-1.0, 4), None);
        assert_eq!(Rational::from_f64_ceil(f64::NAN, 4), None);
        assert_eq!(Rational::from_f64_ceil(1.0, 0), None);
    }
}
