//! The DP mechanisms of a round: clipping, central Gaussian noise,
//! distributed integer noise, conditional randomized rounding and the ring
//! width that keeps a noised sum from wrapping.
//!
//! Where each step runs:
//! 1. Every client clips its update to L2 norm `C` ([`clip_l2`]): the
//!    sensitivity of the sum to one client is then `C`.
//! 2. Central DP ([`CentralDp`]): the server adds exact discrete Gaussian
//!    noise of scale `z Δ` to every coordinate of the unmasked sum *inside*
//!    the ring `Z_{2^bits}`, and only then decodes it to signed integers
//!    (units of `2^-f`), scales to `f32` and publishes; the ring is sized
//!    for the noised sum ([`choose_bits_with_noise`]). Noising before
//!    decoding is what keeps the guarantee when clients collude (see the
//!    type). `Δ = C 2^f + sqrt(d)` includes randomized rounding. Integer
//!    noise on an integer sum leaves no floating-point trace to attack
//!    (Mironov 2012 showed a float Gaussian's low-order bits can reveal the
//!    un-noised value). It holds against consumers of the published model
//!    only: the server saw the sum before noising it.
//! 3. Distributed DP (Kairouz, Liu, Steinke 2021, "The Distributed Discrete
//!    Gaussian Mechanism for Federated Learning with Secure Aggregation"):
//!    the client optionally rotates ([`super::rotation`]), scales by `2^f`,
//!    rounds with [`conditional_round`] so the integer vector's norm stays
//!    bounded, adds its share of integer noise ([`DistributedDp::add_noise`])
//!    and only then encodes into the ring and masks. The ring is sized with
//!    [`choose_bits_with_noise`]. The noise is calibrated
//!    ([`DistributedEncoding::calibrate`]) and charged
//!    ([`DistributedEncoding::mechanism`]) for the *honest* contributors
//!    only: the `corrupt` clients the threat model lets collude with the
//!    server know their own noise and subtract it.

use rand_core::CryptoRng;

use super::ledger::Mechanism;
use crate::encoding::{Decoded, Encoded, FixedPoint};

use super::sampler::{
    MAX_GAUSSIAN_DEN, MAX_GAUSSIAN_SIGMA_SQ, MAX_POISSON_MEAN, Rational, sample_discrete_gaussian,
    sample_skellam,
};

/// Why a DP parameter was rejected or a mechanism could not run.
///
/// No variant carries update values or noise: both are private.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DpError {
    /// A noise or clipping parameter is NaN, infinite, negative or zero where
    /// it must be positive.
    #[error("invalid DP parameter {name} = {value}")]
    InvalidParameter {
        /// Which parameter.
        name: &'static str,
        /// Its rejected value.
        value: f64,
    },
    /// `min_survivors` is zero: no set of survivors would carry the noise.
    #[error("min_survivors must be at least 1")]
    NoSurvivors,
    /// The round's survivor floor is not above the number of clients
    /// assumed to collude with the server: colluders subtract their own
    /// noise, so no honest contributor might be left to carry any.
    #[error(
        "distributed DP needs honest contributors: the survivor floor {floor} is not above the \
         {corrupt} clients assumed corrupt (colluders subtract their own noise); raise \
         min_survivors or lower corrupt_rate"
    )]
    NoHonestSurvivors {
        /// The fewest survivors the round goes on with.
        floor: u32,
        /// The clients assumed to collude with the server.
        corrupt: u32,
    },
    /// The per-client noise variance is outside what the exact samplers
    /// support (see [`super::sampler`]).
    #[error("per-client noise variance {variance} is outside the supported range of the sampler")]
    VarianceOutOfRange {
        /// The per-client variance asked for.
        variance: f64,
    },
    /// Conditional rounding drew `tries` roundings and none had a norm within
    /// the bound.
    #[error("conditional rounding found no rounding within the norm bound in {tries} tries")]
    RoundingFailed {
        /// How many roundings were drawn.
        tries: u32,
    },
    /// Even a 32-bit ring cannot hold the noised sum with the asked
    /// probability.
    #[error(
        "the noised sum can reach {bound} in magnitude, more than a 32-bit ring holds \
         (2^31 - 1); use fewer clients, a smaller clip norm or fewer fractional bits"
    )]
    TooManyBits {
        /// The magnitude the sum may reach with the stated probability.
        bound: f64,
    },
}

/// The outcome of clipping one update, reported so the clip norm can be
/// tuned (the fraction of clipped updates is a training metric).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipReport {
    /// The L2 norm before clipping, computed in `f64`.
    pub norm: f32,
    /// Whether the update was scaled down.
    pub clipped: bool,
}

fn check_positive(name: &'static str, value: f64) -> Result<(), DpError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(DpError::InvalidParameter { name, value })
    }
}

/// Scales `update` in place to L2 norm at most `clip_norm`, which bounds the
/// sensitivity of the sum to any one client by `clip_norm`.
///
/// The norm is accumulated in `f64` so long vectors of `f32` do not lose
/// precision. A vector within the norm is left untouched.
///
/// # Panics
/// If `clip_norm` is not finite and positive.
pub fn clip_l2(update: &mut [f32], clip_norm: f32) -> ClipReport {
    assert!(
        clip_norm.is_finite() && clip_norm > 0.0,
        "clip norm must be finite and positive"
    );
    let norm = update
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt();
    let c = f64::from(clip_norm);
    let clipped = norm > c;
    if clipped {
        let scale = c / norm;
        for v in update.iter_mut() {
            *v = (f64::from(*v) * scale) as f32;
        }
    }
    ClipReport {
        norm: norm as f32,
        clipped,
    }
}

/// The most a `1 + 2^-40` factor on `C 2^f` has to absorb: the `f64`
/// rounding of the client's scaling `x · (C / ||x||) · 2^f` (a few ulps,
/// relative `2^-51`), so the L2 sensitivity below is an upper bound
/// whatever the floating-point order of operations.
const SCALING_SLACK: f64 = 1.0 + 1.0 / (1u64 << 40) as f64;

/// Central DP (DP-FedAvg, McMahan et al. 2018) with exact integer noise:
/// what the server adds to a round's unmasked sum before it publishes.
///
/// Discrete Gaussian noise `N_Z(0, σ²)` (the exact sampler of Canonne,
/// Kamath, Steinke 2020) is added to every coordinate of the sum *in the
/// ring* `Z_{2^bits}`; only the noised ring element is decoded to a signed
/// integer in units of `2^-f` and scaled by `2^-f` into `f32`, both
/// deterministic functions of it (post-processing).
///
/// **Why noise before decoding.** Decoding (reading `bits`-bit two's
/// complement) is not Lipschitz: next to the wrap point `2^(bits-1)`, an
/// input of `+1` moves the decoded value by `-2^bits + 1`. Clients that
/// collude with a model consumer can write raw ring values (secure
/// aggregation hides every input, bounds included) that park the sum right
/// below the wrap point, so one honest update of norm `C` would move a
/// decode-then-noise release by the ring's width and the noise would hide
/// nothing. In the ring, the released element is `(s + q + Z) mod 2^bits`
/// against `(s + Z) mod 2^bits` without the honest client, whatever the
/// colluders' `s`: the reduction of the integer Gaussian mechanism on
/// `s + q` and `s` (which differ by `q`, `||q|| <= Δ`), so the guarantee
/// holds and decoding is post-processing. The cost: the ring must hold the
/// noised sum, not only the sum, or honest rounds wrap; the server sizes
/// it with [`choose_bits_with_noise`] (wrap probability at most `1e-6` a
/// round).
///
/// **Sensitivity.** A client's encoded vector `q` is its clipped update
/// `x` (`||x|| <= C`) scaled by `2^f` and randomized-rounded coordinate by
/// coordinate ([`FixedPoint::encode`]): every `|q_i - 2^f x_i| < 1`, so
/// `||q|| <= ||2^f x|| + ||q - 2^f x|| < C 2^f + sqrt(d)`. Adding or removing
/// one client changes the integer sum by `q`, so the L2 sensitivity is
/// `Δ = C 2^f + sqrt(d)` (times `1 + 2^-40` for the `f64` scaling), in
/// model units `C + sqrt(d) 2^-f`, and `σ = z Δ`. The accountant charges
/// the discrete Gaussian's `ρ = Δ² / (2σ²) = 1 / (2 z²)` zCDP
/// (add-or-remove-one neighbours).
///
/// The server sees the sum before it is noised: this epsilon holds against
/// consumers of the published model, not against the server.
///
/// ```
/// use chacha20::ChaCha20Rng;
/// use rand_core::SeedableRng;
/// use tessera_dp::mechanism::CentralDp;
/// use tessera_dp::encoding::FixedPoint;
///
/// let fp = FixedPoint::new(1.0, 8, 16)?;
/// let dp = CentralDp::new(fp, 1.0, 100)?;
/// // C 2^f = 256 plus sqrt(100) = 10 of rounding.
/// assert!((dp.l2_sensitivity() - 266.0).abs() < 1e-6);
/// let out = dp.release(&[512, 65536 - 256], 3, &mut ChaCha20Rng::from_seed([1; 32]))?;
/// // The noise is integer in units of 2^-8.
/// assert!(out.sum.iter().all(|v| (v * 256.0).fract() == 0.0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CentralDp {
    /// The round's fixed point: the sum is decoded with its `bits` and `f`.
    pub fixed_point: FixedPoint,
    /// `z`: the noise scale over the L2 sensitivity.
    pub noise_multiplier: f64,
    /// The model dimension `d`, which randomized rounding adds `sqrt(d)`
    /// of to the sensitivity.
    pub dim: usize,
}

impl CentralDp {
    /// The central mechanism for a round; refuses a noise multiplier that
    /// is not positive, an empty model, and a scale `z Δ` beyond the exact
    /// sampler's `2^20` (units of `2^-f`; lower `frac_bits` then).
    pub fn new(
        fixed_point: FixedPoint,
        noise_multiplier: f64,
        dim: usize,
    ) -> Result<Self, DpError> {
        check_positive("noise_multiplier", noise_multiplier)?;
        if dim == 0 {
            return Err(DpError::InvalidParameter {
                name: "dim",
                value: 0.0,
            });
        }
        let dp = CentralDp {
            fixed_point,
            noise_multiplier,
            dim,
        };
        dp.sampler_parameter()?;
        Ok(dp)
    }

    /// `Δ = C 2^f (1 + 2^-40) + sqrt(d)`, in units of `2^-f`: the L2
    /// sensitivity of the integer sum to one client, randomized rounding
    /// included (see the type's docs).
    pub fn l2_sensitivity(&self) -> f64 {
        let scaled_clip =
            f64::from(self.fixed_point.clip_norm) * f64::from(1u32 << self.fixed_point.frac_bits);
        scaled_clip * SCALING_SLACK + (self.dim as f64).sqrt()
    }

    /// `σ = z Δ`, the discrete Gaussian's scale in units of `2^-f`.
    pub fn sigma(&self) -> f64 {
        self.noise_multiplier * self.l2_sensitivity()
    }

    /// What one release costs, for the ledger: the discrete Gaussian of
    /// scale [`sigma`](Self::sigma) against [`l2_sensitivity`](Self::l2_sensitivity).
    pub fn mechanism(&self) -> Mechanism {
        Mechanism::DiscreteGaussian {
            sigma: self.sigma(),
            l2_sensitivity: self.l2_sensitivity(),
        }
    }

    /// `σ²` as the exact sampler takes it, rounded up to a multiple of
    /// `2^-20` so the noise never falls short of what is charged (the tree
    /// of [`crate::tree`] draws its node noise with it too).
    pub(crate) fn sampler_parameter(&self) -> Result<Rational, DpError> {
        let variance = self.sigma() * self.sigma();
        match Rational::from_f64_ceil(variance, MAX_GAUSSIAN_DEN) {
            Some(r) if r.num != 0 && r.num / r.den < MAX_GAUSSIAN_SIGMA_SQ => Ok(r),
            _ => Err(DpError::VarianceOutOfRange { variance }),
        }
    }

    /// Adds one exact discrete Gaussian sample to every coordinate of the
    /// unmasked `sum` of `contributors` inputs *in the ring* (mod
    /// `2^bits`), then decodes the noised elements to signed integers and
    /// scales by `2^-f`: the noised sum the server publishes (through
    /// FedAvg). The un-noised values never leave this function.
    pub fn release<R: CryptoRng + ?Sized>(
        &self,
        sum: &[u32],
        contributors: u32,
        rng: &mut R,
    ) -> Result<Decoded, DpError> {
        let sigma_sq = self.sampler_parameter()?;
        let fp = &self.fixed_point;
        // A power of two, so the scaling of an integer below 2^24 is exact.
        let step = 1.0 / f64::from(1u32 << fp.frac_bits);
        let sum = sum
            .iter()
            .map(|&w| {
                let noise = sample_discrete_gaussian(rng, sigma_sq);
                (add_in_ring_and_decode(fp, w, noise) as f64 * step) as f32
            })
            .collect();
        Ok(Decoded { sum, contributors })
    }
}

/// `(w + noise) mod 2^bits` read as `bits`-bit two's complement: the
/// server's noise added to ring element `w` *before* decoding, so the
/// decoded value is a function of the noised ring element only (see
/// [`CentralDp`] for why the order matters).
///
/// ```
/// use tessera_dp::encoding::FixedPoint;
/// use tessera_dp::mechanism::add_in_ring_and_decode;
/// let fp = FixedPoint::new(1.0, 0, 8)?;
/// assert_eq!(add_in_ring_and_decode(&fp, 255, 0), -1);
/// // Noise that crosses the wrap point wraps with the ring.
/// assert_eq!(add_in_ring_and_decode(&fp, 127, 1), -128);
/// assert_eq!(add_in_ring_and_decode(&fp, 0, -3), -3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn add_in_ring_and_decode(fixed_point: &FixedPoint, w: u32, noise: i64) -> i64 {
    let bits = u32::from(fixed_point.bits);
    // Two's complement addition mod 2^64 is addition mod 2^bits after the
    // mask, for any `noise`.
    let noised = u64::from(w).wrapping_add(noise as u64) & u64::from(fixed_point.value_mask());
    let half = 1u64 << (bits - 1);
    if noised >= half {
        noised as i64 - (1i64 << bits)
    } else {
        noised as i64
    }
}

/// The integer noise distribution of distributed DP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoiseKind {
    /// The discrete Gaussian (Kairouz, Liu, Steinke 2021). Sums of discrete
    /// Gaussians are close to, not exactly, discrete Gaussian; the accountant
    /// accounts for that.
    DiscreteGaussian,
    /// Skellam (Agarwal, Kairouz, Liu 2021): sums of Skellams are exactly
    /// Skellam.
    Skellam,
}

/// Distributed DP parameters of a round, in the integer domain (after
/// scaling by `2^f`).
///
/// Calibration is dropout- and collusion-aware: every client adds noise of
/// variance `target_sigma² / min_survivors`, so any `min_survivors`
/// contributors together carry variance at least `target_sigma²`; more
/// only add noise. Dropped clients' noise is simply absent from the sum,
/// and colluding clients' noise is known to the server (they subtract it),
/// so the server sets `min_survivors` to the round's survivor floor minus
/// the clients assumed corrupt ([`DistributedEncoding::calibrate`]): the
/// fewest *honest* contributors a round that goes on can have.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistributedDp {
    /// Which integer noise clients add.
    pub noise: NoiseKind,
    /// The standard deviation the total noise must reach, in the integer
    /// domain (after scaling by `2^f`).
    pub target_sigma: f64,
    /// The fewest honest contributors whose noise must carry the target:
    /// the round's survivor floor minus its corrupt count (the wire keeps
    /// the name `min_survivors`).
    pub min_survivors: u32,
}

impl DistributedDp {
    /// Each client's noise variance: `target_sigma² / min_survivors`, so any
    /// `min_survivors` survivors carry at least `target_sigma²`.
    pub fn per_client_variance(&self) -> f64 {
        self.target_sigma * self.target_sigma / f64::from(self.min_survivors)
    }

    /// The standard deviation of the noise `survivors` clients carry:
    /// `sqrt(survivors · per_client_variance)`, at least `target_sigma`
    /// when `survivors >= min_survivors`. The accountant uses this, for the
    /// honest contributors of the round actually run, not the target.
    pub fn actual_sigma(&self, survivors: u32) -> f64 {
        (f64::from(survivors) * self.per_client_variance()).sqrt()
    }

    /// The per-client noise parameter as the exact samplers take it: `σ²`
    /// for the discrete Gaussian, `μ = σ²/2` for Skellam (variance `2μ`),
    /// rounded *up* to a multiple of `2^-20` so the noise never falls short.
    fn sampler_parameter(&self) -> Result<Rational, DpError> {
        check_positive("target_sigma", self.target_sigma)?;
        if self.min_survivors == 0 {
            return Err(DpError::NoSurvivors);
        }
        let variance = self.per_client_variance();
        let (param, max) = match self.noise {
            NoiseKind::DiscreteGaussian => (variance, MAX_GAUSSIAN_SIGMA_SQ),
            NoiseKind::Skellam => (variance / 2.0, MAX_POISSON_MEAN),
        };
        match Rational::from_f64_ceil(param, MAX_GAUSSIAN_DEN) {
            Some(r) if r.num != 0 && r.num / r.den < max => Ok(r),
            _ => Err(DpError::VarianceOutOfRange { variance }),
        }
    }

    /// Adds this client's share of the noise to its integer vector, one
    /// independent exact sample per coordinate.
    ///
    /// `values` are the scaled, rounded update in the integer domain, before
    /// they are mapped into the ring and masked. Errors if the parameters are
    /// invalid or outside the samplers' range; `values` are then untouched.
    pub fn add_noise<R: CryptoRng + ?Sized>(
        &self,
        values: &mut [i64],
        rng: &mut R,
    ) -> Result<(), DpError> {
        let param = self.sampler_parameter()?;
        for v in values.iter_mut() {
            let noise = match self.noise {
                NoiseKind::DiscreteGaussian => sample_discrete_gaussian(rng, param),
                NoiseKind::Skellam => sample_skellam(rng, param),
            };
            *v = v.saturating_add(noise);
        }
        Ok(())
    }
}

/// The `β` of conditional rounding used by [`DistributedEncoding`]:
/// `e^-0.5`, as in Kairouz, Liu, Steinke 2021 (section 5). A larger `β`
/// gives a tighter norm bound, hence less noise for the same privacy, at
/// the cost of about `1 / (1 - β)` ≈ 2.5 roundings per update.
pub const ROUNDING_BETA: f64 = 0.606_530_659_712_633_4;

/// Conditional roundings drawn before [`DistributedEncoding::encode`]
/// gives up: each fails with probability at most [`ROUNDING_BETA`], so all
/// 100 fail with probability below `1e-21`.
pub const ROUNDING_TRIES: u32 = 100;

/// How a client encodes its update under distributed DP: the round's fixed
/// point, the noise its share carries, and the norm bound that conditional
/// rounding enforces, which is the L2 sensitivity the noise is calibrated
/// to.
///
/// The server builds this once per round ([`DistributedEncoding::new`]) and
/// sends its fields in the round's configuration; every client then runs
/// [`DistributedEncoding::encode`], and the server decodes the unmasked sum
/// with the same [`FixedPoint::decode_sum`] as without DP. The noise is in
/// the sum before anyone sees it: the server never holds an un-noised sum.
///
/// ```
/// use chacha20::ChaCha20Rng;
/// use rand_core::SeedableRng;
/// use tessera_dp::mechanism::{DistributedEncoding, NoiseKind};
/// use tessera_dp::encoding::FixedPoint;
///
/// // 10 clients, any 8 of which carry noise of std 2 x the sensitivity.
/// let fp = FixedPoint::new(1.0, 8, 24)?;
/// let enc = DistributedEncoding::new(fp, NoiseKind::DiscreteGaussian, 2.0, 8, 3)?;
/// assert!(enc.norm_bound > 256.0, "C 2^f plus the rounding slack");
/// assert_eq!(enc.dp.target_sigma, 2.0 * enc.norm_bound);
/// let e = enc.encode(&[3.0, 4.0, 0.0], &mut ChaCha20Rng::from_seed([1; 32]))?;
/// assert!(e.clipped && e.norm == 5.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistributedEncoding {
    /// The round's clip norm, scale `2^f` and ring width.
    pub fixed_point: FixedPoint,
    /// The integer noise each client adds.
    pub dp: DistributedDp,
    /// The L2 norm the rounded integer vector is kept within, in the
    /// integer domain: `conditional_rounding_bound(C 2^f, dim, β)`.
    pub norm_bound: f64,
}

impl DistributedEncoding {
    /// The encoding for a round of dimension `dim` whose total noise, over
    /// any `min_survivors` clients, has standard deviation
    /// `noise_multiplier` times the sensitivity.
    pub fn new(
        fixed_point: FixedPoint,
        noise: NoiseKind,
        noise_multiplier: f64,
        min_survivors: u32,
        dim: usize,
    ) -> Result<Self, DpError> {
        check_positive("noise_multiplier", noise_multiplier)?;
        if min_survivors == 0 {
            return Err(DpError::NoSurvivors);
        }
        let scaled_clip =
            f64::from(fixed_point.clip_norm) * f64::from(1u32 << fixed_point.frac_bits);
        let norm_bound = conditional_rounding_bound(scaled_clip, dim, ROUNDING_BETA)?;
        let encoding = DistributedEncoding {
            fixed_point,
            dp: DistributedDp {
                noise,
                target_sigma: noise_multiplier * norm_bound,
                min_survivors,
            },
            norm_bound,
        };
        encoding.dp.sampler_parameter()?;
        Ok(encoding)
    }

    /// The server's calibration for a round that goes on with at least
    /// `survivor_floor` survivors of which up to `corrupt` collude with it:
    /// colluders know and subtract their own noise, so the target is
    /// carried by the `survivor_floor - corrupt` honest contributors alone
    /// ([`Self::new`] with that many). Refused when `survivor_floor <=
    /// corrupt`: no honest contributor might be left.
    ///
    /// ```
    /// use tessera_dp::mechanism::{DistributedEncoding, DpError, NoiseKind};
    /// use tessera_dp::encoding::FixedPoint;
    ///
    /// let fp = FixedPoint::new(1.0, 8, 24)?;
    /// let kind = NoiseKind::DiscreteGaussian;
    /// // 8 survivors at least, 2 of them possibly colluding: 6 carry it.
    /// let enc = DistributedEncoding::calibrate(fp, kind, 1.0, 8, 2, 10)?;
    /// assert_eq!(enc.dp.min_survivors, 6);
    /// assert_eq!(
    ///     DistributedEncoding::calibrate(fp, kind, 1.0, 2, 2, 10),
    ///     Err(DpError::NoHonestSurvivors { floor: 2, corrupt: 2 })
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn calibrate(
        fixed_point: FixedPoint,
        noise: NoiseKind,
        noise_multiplier: f64,
        survivor_floor: u32,
        corrupt: u32,
        dim: usize,
    ) -> Result<Self, DpError> {
        if survivor_floor <= corrupt {
            return Err(DpError::NoHonestSurvivors {
                floor: survivor_floor,
                corrupt,
            });
        }
        Self::new(
            fixed_point,
            noise,
            noise_multiplier,
            survivor_floor - corrupt,
            dim,
        )
    }

    /// Checks fields that arrived over the wire: a positive norm bound, at
    /// least the fixed point's scaled clip norm (else conditional rounding
    /// could never succeed), and noise the samplers can draw.
    pub fn validate(&self) -> Result<(), DpError> {
        let scaled_clip =
            f64::from(self.fixed_point.clip_norm) * f64::from(1u32 << self.fixed_point.frac_bits);
        if !(self.norm_bound.is_finite() && self.norm_bound >= scaled_clip) {
            return Err(DpError::InvalidParameter {
                name: "norm_bound",
                value: self.norm_bound,
            });
        }
        self.dp.sampler_parameter().map(|_| ())
    }

    /// The privacy mechanism a released sum over `contributors` clients of
    /// dimension `dim` amounts to against the server, for the ledger: the
    /// noise of the honest contributors only (`contributors - corrupt`;
    /// the `corrupt` clients colluding with the server subtract theirs),
    /// at least the target when `contributors` is at least the survivor
    /// floor the encoding was calibrated for, against the norm bound as L2
    /// sensitivity. For Skellam the L1 sensitivity of an integer vector of
    /// L2 norm `B` is at most `min(sqrt(dim) B, B²)`. Errors if no
    /// contributor is honest.
    pub fn mechanism(
        &self,
        contributors: u32,
        corrupt: u32,
        dim: usize,
    ) -> Result<Mechanism, DpError> {
        let honest = contributors.saturating_sub(corrupt);
        if honest == 0 {
            return Err(DpError::NoHonestSurvivors {
                floor: contributors,
                corrupt,
            });
        }
        let b = self.norm_bound;
        Ok(match self.dp.noise {
            NoiseKind::DiscreteGaussian => Mechanism::DiscreteGaussian {
                sigma: self.dp.actual_sigma(honest),
                l2_sensitivity: b,
            },
            NoiseKind::Skellam => Mechanism::Skellam {
                mu: f64::from(honest) * self.dp.per_client_variance(),
                l1: ((dim as f64).sqrt() * b).min(b * b),
                l2: b,
            },
        })
    }

    /// Encodes one client's update: clip to `C`, scale by `2^f`,
    /// conditional randomized rounding within [`Self::norm_bound`], this
    /// client's share of the noise, then two's complement mod `2^bits`,
    /// ready to be masked.
    ///
    /// The result decodes like [`FixedPoint::encode`]'s: the sum over
    /// clients, read back with [`FixedPoint::decode_sum`], is the sum of the
    /// clipped updates plus noise of variance `survivors ·
    /// per_client_variance / 4^f` per coordinate. A non-finite update is
    /// an error that names no value.
    pub fn encode<R: CryptoRng + ?Sized>(
        &self,
        update: &[f32],
        rng: &mut R,
    ) -> Result<Encoded, DpError> {
        self.validate()?;
        if update.iter().any(|x| !x.is_finite()) {
            return Err(DpError::InvalidParameter {
                name: "update (a coordinate is not finite)",
                value: f64::NAN,
            });
        }
        let fp = &self.fixed_point;
        let norm = update
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        let clip = f64::from(fp.clip_norm);
        let two_f = f64::from(1u32 << fp.frac_bits);
        let clipped = norm > clip;
        let scale = if clipped { clip / norm * two_f } else { two_f };
        let scaled: Vec<f64> = update.iter().map(|&x| f64::from(x) * scale).collect();
        let mut values = conditional_round(&scaled, self.norm_bound, rng, ROUNDING_TRIES)?;
        self.dp.add_noise(&mut values, rng)?;
        let mask = fp.value_mask();
        Ok(Encoded {
            // The low 32 bits of the two's complement i64 are the value mod
            // 2^32; the mask reduces it mod 2^bits.
            values: values.into_iter().map(|q| (q as u32) & mask).collect(),
            clipped,
            norm: norm as f32,
        })
    }
}

/// The norm bound of conditional randomized rounding (Kairouz, Liu, Steinke
/// 2021, section 4.1):
/// `sqrt(c² + d/4 + sqrt(2 ln(1/β)) (c + sqrt(d)/2))`.
///
/// `c` is the norm of the scaled input (`C 2^f`) and `d` the dimension.
/// Unbiased randomized rounding of a vector of norm `c` exceeds this with
/// probability at most `β`, so [`conditional_round`] needs about
/// `1 / (1 - β)` tries.
pub fn conditional_rounding_bound(c: f64, dim: usize, beta: f64) -> Result<f64, DpError> {
    if !(c.is_finite() && c >= 0.0) {
        return Err(DpError::InvalidParameter {
            name: "c",
            value: c,
        });
    }
    if !(beta > 0.0 && beta < 1.0) {
        return Err(DpError::InvalidParameter {
            name: "beta",
            value: beta,
        });
    }
    let d = dim as f64;
    Ok((c * c + d / 4.0 + (2.0 * (1.0 / beta).ln()).sqrt() * (c + d.sqrt() / 2.0)).sqrt())
}

/// Conditional randomized rounding: rounds every coordinate of `scaled` up
/// with probability equal to its fractional part (so each coordinate is
/// unbiased), and repeats the whole rounding until the integer vector's L2
/// norm is at most `norm_bound` (use [`conditional_rounding_bound`]).
///
/// Bounding the norm after rounding keeps the sensitivity of the integer
/// sum, which the noise is calibrated to, at `norm_bound`. Errors after
/// `max_tries` roundings above the bound.
pub fn conditional_round<R: CryptoRng + ?Sized>(
    scaled: &[f64],
    norm_bound: f64,
    rng: &mut R,
    max_tries: u32,
) -> Result<Vec<i64>, DpError> {
    if !(norm_bound.is_finite() && norm_bound >= 0.0) {
        return Err(DpError::InvalidParameter {
            name: "norm_bound",
            value: norm_bound,
        });
    }
    if let Some(&bad) = scaled
        .iter()
        .find(|v| !v.is_finite() || v.abs() >= 2f64.powi(62))
    {
        return Err(DpError::InvalidParameter {
            name: "scaled coordinate",
            // Only reached for non-finite or absurdly large inputs, which
            // are not meaningful private data.
            value: bad,
        });
    }
    let mut out = vec![0i64; scaled.len()];
    for _ in 0..max_tries {
        let mut norm_sq = 0.0f64;
        for (o, &v) in out.iter_mut().zip(scaled) {
            let floor = v.floor();
            let frac = v - floor;
            let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            let r = if u < frac { floor + 1.0 } else { floor };
            norm_sq += r * r;
            *o = r as i64;
        }
        if norm_sq.sqrt() <= norm_bound {
            return Ok(out);
        }
    }
    Err(DpError::RoundingFailed { tries: max_tries })
}

/// The magnitude `x` the total noise exceeds with probability at most `p`:
/// `x = L/3 + sqrt(L²/9 + 2 L σ²)` with `L = ln(2/p)`, the solution of
/// `2 exp(-x² / (2(σ² + x/3))) = p`.
///
/// That is Bernstein's two-sided tail, which holds for Skellam (its
/// cumulant `2μ(cosh s - 1) <= σ² s² / (2(1 - s/3))`) and, being weaker
/// than the sub-Gaussian tail `2 exp(-x²/(2σ²))`, for the discrete Gaussian
/// and sums of them too; one formula serves both noise kinds.
fn noise_tail(sigma_total: f64, p: f64) -> f64 {
    let l = (2.0 / p).ln();
    l / 3.0 + (l * l / 9.0 + 2.0 * l * sigma_total * sigma_total).sqrt()
}

/// Ring width for distributed DP: the smallest `bits` such that one
/// coordinate of the noised sum leaves the signed range with probability at
/// most `per_coordinate_bound`.
///
/// Formula: each of the `n = clients` inputs has L2 norm, hence every
/// coordinate, at most `B = clip_norm_scaled` (the rounded norm bound, e.g.
/// from [`conditional_rounding_bound`]); the total noise exceeds
/// `x = L/3 + sqrt(L²/9 + 2 L σ²)`, `L = ln(2/p)`, with probability at most
/// `p` (Bernstein tail, see the module); so the sum stays within
/// `n B + x` except with probability `p`, and we need
/// `n B + x <= 2^(bits-1) - 1`. Over all `dim` coordinates the union bound
/// gives a wrap probability of at most `dim · p` ([`wrap_probability`]).
pub fn choose_bits_with_noise(
    clients: u32,
    clip_norm_scaled: f64,
    sigma_total: f64,
    dim: usize,
    per_coordinate_bound: f64,
) -> Result<u8, DpError> {
    check_inputs(clients, clip_norm_scaled, sigma_total, dim)?;
    if !(per_coordinate_bound > 0.0 && per_coordinate_bound < 1.0) {
        return Err(DpError::InvalidParameter {
            name: "per_coordinate_bound",
            value: per_coordinate_bound,
        });
    }
    let bound = f64::from(clients) * clip_norm_scaled.ceil()
        + noise_tail(sigma_total, per_coordinate_bound);
    (1u8..=32)
        .find(|&bits| bound <= ((1u64 << (bits - 1)) - 1) as f64)
        .ok_or(DpError::TooManyBits { bound })
}

fn check_inputs(
    clients: u32,
    clip_norm_scaled: f64,
    sigma_total: f64,
    dim: usize,
) -> Result<(), DpError> {
    if clients == 0 {
        return Err(DpError::InvalidParameter {
            name: "clients",
            value: 0.0,
        });
    }
    if dim == 0 {
        return Err(DpError::InvalidParameter {
            name: "dim",
            value: 0.0,
        });
    }
    if !(clip_norm_scaled.is_finite() && clip_norm_scaled >= 0.0) {
        return Err(DpError::InvalidParameter {
            name: "clip_norm_scaled",
            value: clip_norm_scaled,
        });
    }
    if !(sigma_total.is_finite() && sigma_total >= 0.0) {
        return Err(DpError::InvalidParameter {
            name: "sigma_total",
            value: sigma_total,
        });
    }
    Ok(())
}

/// An upper bound on the probability that any of the `dim` coordinates of
/// the noised sum wraps a `bits`-bit ring: `dim · 2 exp(-m² / (2(σ² + m/3)))`
/// with margin `m = 2^(bits-1) - 1 - n B` (1 if the margin is not positive),
/// by the same Bernstein tail and a union bound over coordinates.
pub fn wrap_probability(
    clients: u32,
    clip_norm_scaled: f64,
    sigma_total: f64,
    dim: usize,
    bits: u8,
) -> Result<f64, DpError> {
    check_inputs(clients, clip_norm_scaled, sigma_total, dim)?;
    if !(1..=32).contains(&bits) {
        return Err(DpError::InvalidParameter {
            name: "bits",
            value: f64::from(bits),
        });
    }
    let margin = ((1u64 << (bits - 1)) - 1) as f64 - f64::from(clients) * clip_norm_scaled.ceil();
    if margin <= 0.0 {
        return Ok(1.0);
    }
    let s2 = sigma_total * sigma_total;
    let per = 2.0 * (-margin * margin / (2.0 * (s2 + margin / 3.0))).exp();
    Ok((dim as f64 * per).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn rng(seed: u8) -> ChaCha20Rng {
        ChaCha20Rng::from_seed([seed; 32])
    }

    #[test]
    fn clip_scales_long_vectors_only() {
        let mut v = [3.0f32, 4.0];
        let r = clip_l2(&mut v, 1.0);
        assert_eq!(
            r,
            ClipReport {
                norm: 5.0,
                clipped: true
            }
        );
        assert!((v[0] - 0.6).abs() < 1e-7 && (v[1] - 0.8).abs() < 1e-7);
        let mut w = [0.3f32, 0.4];
        let r = clip_l2(&mut w, 1.0);
        assert!(!r.clipped && (r.norm - 0.5).abs() < 1e-7);
        assert_eq!(w, [0.3, 0.4]);
        // f64 accumulation: 10^6 coordinates of 1e-3 have norm exactly 1.
        let mut long = vec![1e-3f32; 1_000_000];
        let r = clip_l2(&mut long, 2.0);
        assert!((r.norm - 1.0).abs() < 1e-6);
    }

    /// The published sum minus the exact sum is an integer number of
    /// `2^-f` steps (a float Gaussian, as before, is not: it fails the
    /// first check), centred, with the std `z Δ` the ledger is charged for.
    #[test]
    fn central_noise_is_exact_integer_noise_of_std_z_delta() {
        let (f, dim, z) = (8u8, 20_000usize, 0.05);
        let fp = FixedPoint::new(1.0, f, 24).unwrap();
        let dp = CentralDp::new(fp, z, dim).unwrap();
        let exact: Vec<i64> = (0..dim as i64).map(|i| (i % 301) - 150).collect();
        let ring: Vec<u32> = exact
            .iter()
            .map(|&v| (v as u32) & fp.value_mask())
            .collect();
        let out = dp.release(&ring, 3, &mut rng(1)).unwrap();
        assert_eq!(out.contributors, 3);
        let scale = f64::from(1u32 << f);
        let noise: Vec<f64> = out
            .sum
            .iter()
            .zip(&exact)
            .map(|(&v, &e)| f64::from(v) * scale - e as f64)
            .collect();
        for (i, e) in noise.iter().enumerate() {
            assert_eq!(e.fract(), 0.0, "coordinate {i}: noise {e} is not integer");
        }
        let n = dim as f64;
        let mean = noise.iter().sum::<f64>() / n;
        let var = noise.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let want = dp.sigma().powi(2);
        assert!(
            (var / want - 1.0).abs() < 5.0 * (2.0 / n).sqrt(),
            "{var} vs {want}"
        );
        assert!(mean.abs() < 5.0 * (want / n).sqrt(), "{mean}");
        // Some coordinate moved: the noise is not zero.
        assert!(noise.iter().any(|&e| e != 0.0));
    }

    /// The red team's attack on central DP (issue 15, finding 4): colluders
    /// park the ring sum right below the wrap point `2^31`, and a model
    /// consumer reads the honest client's presence (`+1.0`, norm `C`) off
    /// the sign of the release. Noised in the ring, the sign tells no more
    /// than the Gaussian mechanism allows (total variation
    /// `2 Φ(1 / (2z)) - 1 = 0.197` at `z = 2`); decoding first, it told
    /// everything (advantage 1).
    #[test]
    fn central_release_next_to_the_wrap_point_hides_one_honest_update() {
        let fp = FixedPoint::new(1.0, 8, 32).unwrap();
        let dp = CentralDp::new(fp, 2.0, 1).unwrap();
        let colluders = (1u32 << 31) - 1;
        let trials = 3000;
        let mut rng = rng(5);
        let mut negative = |sum: u32| {
            (0..trials)
                .filter(|_| dp.release(&[sum], 2, &mut rng).unwrap().sum[0] < 0.0)
                .count() as f64
                / f64::from(trials)
        };
        let advantage = negative(colluders.wrapping_add(256)) - negative(colluders);
        assert!(
            advantage < 0.197 + 0.07,
            "the release's sign gives the honest client away: advantage {advantage:.3}"
        );
        assert!(advantage > 0.1, "advantage {advantage:.3}");
    }

    /// The sensitivity covers randomized rounding: `C 2^f + sqrt(d)`, not
    /// `C 2^f`; an encoded vector really can exceed `C 2^f`, and never the
    /// stated bound.
    #[test]
    fn central_sensitivity_includes_randomized_rounding() {
        let dim = 400;
        let fp = FixedPoint::new(1.0, 4, 16).unwrap();
        let dp = CentralDp::new(fp, 1.0, dim).unwrap();
        let delta = dp.l2_sensitivity();
        assert!((delta - (16.0 + 20.0)).abs() < 1e-6, "{delta}");
        match dp.mechanism() {
            Mechanism::DiscreteGaussian {
                sigma,
                l2_sensitivity,
            } => {
                assert_eq!(l2_sensitivity, delta);
                assert_eq!(sigma, delta);
            }
            other => panic!("{other:?}"),
        }
        // An update of norm exactly C spread over every coordinate: each
        // scaled coordinate is 16/20 = 0.8, rounded to 0 or 1, so the
        // rounded norm is sqrt(#ones), about sqrt(320) ≈ 17.9 > C 2^f = 16.
        let update = vec![1.0 / (dim as f32).sqrt(); dim];
        let mut r = rng(9);
        let mut max_norm = 0f64;
        for _ in 0..50 {
            let e = fp.encode(&update, &mut r).unwrap();
            let norm = e
                .values
                .iter()
                .map(|&v| f64::from(v).powi(2))
                .sum::<f64>()
                .sqrt();
            max_norm = max_norm.max(norm);
        }
        assert!(max_norm > 16.0, "rounding adds to the norm: {max_norm}");
        assert!(max_norm <= delta, "{max_norm} > {delta}");
    }

    #[test]
    fn central_parameters_are_checked() {
        let fp = FixedPoint::new(1.0, 16, 24).unwrap();
        assert!(CentralDp::new(fp, 0.0, 10).is_err());
        assert!(CentralDp::new(fp, 1.0, 0).is_err());
        // z Δ = 100 (2^16 + 3) > 2^20: beyond the exact sampler.
        assert!(matches!(
            CentralDp::new(fp, 100.0, 10),
            Err(DpError::VarianceOutOfRange { .. })
        ));
    }

    #[test]
    fn distributed_calibration_and_charge_count_honest_contributors_only() {
        let fp = FixedPoint::new(1.0, 6, 24).unwrap();
        let kind = NoiseKind::DiscreteGaussian;
        // Floor 8, 2 corrupt: the 6 honest carry the target.
        let enc = DistributedEncoding::calibrate(fp, kind, 1.0, 8, 2, 10).unwrap();
        assert_eq!(enc.dp.min_survivors, 6);
        assert!((enc.dp.actual_sigma(6) - enc.dp.target_sigma).abs() < 1e-9);
        // A round of 9 contributors is charged for the noise of 7.
        let Mechanism::DiscreteGaussian { sigma, .. } = enc.mechanism(9, 2, 10).unwrap() else {
            panic!("discrete Gaussian")
        };
        assert!((sigma - enc.dp.actual_sigma(7)).abs() < 1e-9);
        assert!(sigma < enc.dp.actual_sigma(9));
        assert_eq!(
            DistributedEncoding::calibrate(fp, kind, 1.0, 3, 3, 10),
            Err(DpError::NoHonestSurvivors {
                floor: 3,
                corrupt: 3
            })
        );
        assert!(enc.mechanism(2, 2, 10).is_err());
    }

    #[test]
    fn distributed_encoding_sums_to_the_clipped_sum_plus_the_promised_noise() {
        // 12 clients, calibrated for any 8 survivors; 2,000 coordinates give
        // a variance estimate good to a few percent.
        let (clients, min_survivors, dim) = (12u32, 8u32, 2000usize);
        let fp = FixedPoint::new(1.0, 6, 24).unwrap();
        let enc =
            DistributedEncoding::new(fp, NoiseKind::DiscreteGaussian, 0.5, min_survivors, dim)
                .unwrap();
        let mut r = rng(3);
        let mut sum = vec![0u32; dim];
        let mut plain = vec![0f64; dim];
        for c in 0..clients {
            // Client 0 sends a long update that must be clipped.
            let len = if c == 0 { 3.0 } else { 0.5 };
            let update: Vec<f32> = (0..dim)
                .map(|i| {
                    len * (((i * 7 + c as usize) % 13) as f32 - 6.0) / 6.0 / (dim as f32).sqrt()
                        * 1.6
                })
                .collect();
            let e = enc.encode(&update, &mut r).unwrap();
            assert_eq!(e.clipped, c == 0);
            let n = update
                .iter()
                .map(|&x| f64::from(x).powi(2))
                .sum::<f64>()
                .sqrt();
            let s = if n > 1.0 { 1.0 / n } else { 1.0 };
            for i in 0..dim {
                sum[i] = sum[i].wrapping_add(e.values[i]);
                plain[i] += f64::from(update[i]) * s;
            }
        }
        let decoded = fp.decode_sum(&sum, clients);
        let diffs: Vec<f64> = decoded
            .sum
            .iter()
            .zip(&plain)
            .map(|(&d, &p)| f64::from(d) - p)
            .collect();
        let n = dim as f64;
        let mean = diffs.iter().sum::<f64>() / n;
        let var = diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0);
        // Noise of all 12 clients plus rounding (variance <= 1/4 per client
        // per coordinate, in units of 2^-f).
        let noise = f64::from(clients) * enc.dp.per_client_variance() / 4f64.powi(6);
        let rounding_max = f64::from(clients) * 0.25 / 4f64.powi(6);
        assert!(
            var > noise * 0.9 && var < (noise + rounding_max) * 1.1,
            "variance {var}, noise {noise}"
        );
        assert!(mean.abs() < 5.0 * (var / n).sqrt(), "unbiased: mean {mean}");
        // And the total noise std over the 8 least survivors is the target.
        assert!((enc.dp.actual_sigma(min_survivors) - 0.5 * enc.norm_bound).abs() < 1e-9);
    }

    #[test]
    fn distributed_encoding_refuses_bad_input_and_parameters() {
        let fp = FixedPoint::new(1.0, 6, 24).unwrap();
        let kind = NoiseKind::DiscreteGaussian;
        assert!(DistributedEncoding::new(fp, kind, 0.0, 8, 10).is_err());
        assert_eq!(
            DistributedEncoding::new(fp, kind, 1.0, 0, 10),
            Err(DpError::NoSurvivors)
        );
        let enc = DistributedEncoding::new(fp, kind, 1.0, 8, 10).unwrap();
        assert!(enc.encode(&[0.0, f32::INFINITY], &mut rng(1)).is_err());
        // A norm bound below C 2^f could never be met.
        let tight = DistributedEncoding {
            norm_bound: 63.0,
            ..enc
        };
        assert!(matches!(
            tight.encode(&[0.5], &mut rng(1)),
            Err(DpError::InvalidParameter {
                name: "norm_bound",
                ..
            })
        ));
    }

    #[test]
    fn calibration_arithmetic() {
        let dp = DistributedDp {
            noise: NoiseKind::DiscreteGaussian,
            target_sigma: 70.0,
            min_survivors: 7,
        };
        assert_eq!(dp.per_client_variance(), 700.0);
        assert_eq!(dp.actual_sigma(7), 70.0);
        assert!((dp.actual_sigma(10) - 7000f64.sqrt()).abs() < 1e-9);
        let bad = DistributedDp {
            min_survivors: 0,
            ..dp
        };
        assert_eq!(
            bad.add_noise(&mut [0], &mut rng(0)),
            Err(DpError::NoSurvivors)
        );
        let huge = DistributedDp {
            target_sigma: 1e13,
            ..dp
        };
        assert!(matches!(
            huge.add_noise(&mut [0], &mut rng(0)),
            Err(DpError::VarianceOutOfRange { .. })
        ));
    }

    /// n = 10 clients calibrated for t_min = 7: the sum of 7 clients' noise
    /// has variance σ² (at least, within sampling error), the sum of all 10
    /// has 10/7 σ².
    fn survivors_carry_variance(noise: NoiseKind, seed: u8) {
        let sigma = 6.0;
        let dp = DistributedDp {
            noise,
            target_sigma: sigma,
            min_survivors: 7,
        };
        let trials = 20_000;
        let mut r = rng(seed);
        let mut sums7 = Vec::with_capacity(trials);
        let mut sums10 = Vec::with_capacity(trials);
        for _ in 0..trials {
            let mut clients = [0i64; 10];
            dp.add_noise(&mut clients, &mut r).unwrap();
            sums7.push(clients[..7].iter().sum::<i64>() as f64);
            sums10.push(clients.iter().sum::<i64>() as f64);
        }
        for (sums, k) in [(sums7, 7.0), (sums10, 10.0)] {
            let n = trials as f64;
            let mean = sums.iter().sum::<f64>() / n;
            let var = sums.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0);
            let want = k * dp.per_client_variance();
            // The sums are close to Gaussian: se of the sample variance is
            // about want * sqrt(2/n).
            let se = want * (2.0 / n).sqrt();
            assert!(
                mean.abs() < 5.0 * (want / n).sqrt(),
                "{noise:?} mean {mean}"
            );
            assert!(
                (var - want).abs() < 5.0 * se,
                "{noise:?} {k}: {var} vs {want}"
            );
            if k == 7.0 {
                assert!(var > sigma * sigma - 5.0 * se);
            }
            assert!((dp.actual_sigma(k as u32).powi(2) - want).abs() < 1e-9);
        }
    }

    #[test]
    fn survivors_carry_promised_variance_discrete_gaussian() {
        survivors_carry_variance(NoiseKind::DiscreteGaussian, 2);
    }

    #[test]
    fn survivors_carry_promised_variance_skellam() {
        survivors_carry_variance(NoiseKind::Skellam, 3);
    }

    #[test]
    fn rounding_bound_formula() {
        // c = 3, d = 16, β = e^-2: sqrt(9 + 4 + sqrt(4) (3 + 2)) = sqrt(23).
        let b = conditional_rounding_bound(3.0, 16, (-2.0f64).exp()).unwrap();
        assert!((b - 23f64.sqrt()).abs() < 1e-12);
        assert!(conditional_rounding_bound(3.0, 16, 0.0).is_err());
        assert!(conditional_rounding_bound(3.0, 16, 1.0).is_err());
    }

    #[test]
    fn conditional_round_is_unbiased_and_bounded() {
        let x = [0.25f64, -1.75, 3.5, 0.0];
        let c = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        let bound = conditional_rounding_bound(c, x.len(), 1e-3).unwrap();
        let mut r = rng(4);
        let trials = 20_000;
        let mut mean = [0f64; 4];
        for _ in 0..trials {
            let v = conditional_round(&x, bound, &mut r, 10).unwrap();
            let norm = v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
            assert!(norm <= bound);
            for (i, (&a, &xi)) in v.iter().zip(&x).enumerate() {
                assert!(a == xi.floor() as i64 || a == xi.ceil() as i64);
                mean[i] += a as f64 / trials as f64;
            }
        }
        for (m, xi) in mean.iter().zip(&x) {
            // Bernoulli rounding: sd at most 0.5 / sqrt(trials). The bound
            // is loose enough that conditioning barely biases.
            assert!(
                (m - xi).abs() < 5.0 * 0.5 / (trials as f64).sqrt(),
                "{m} vs {xi}"
            );
        }
        // A bound below every possible rounding fails after max_tries.
        assert_eq!(
            conditional_round(&[0.5, 0.5], 0.1, &mut r, 5),
            Err(DpError::RoundingFailed { tries: 5 })
        );
        // A tight bound forces the short rounding: [0.5, 0.5] rounds to a
        // vector of norm <= 1 only as [0,0], [1,0] or [0,1].
        let v = conditional_round(&[0.5, 0.5], 1.0, &mut r, 1000).unwrap();
        assert!(v.iter().sum::<i64>() <= 1);
        assert!(conditional_round(&[f64::NAN], 1.0, &mut r, 1).is_err());
    }

    #[test]
    fn choose_bits_by_hand() {
        // n = 10, B = 100, σ = 50, p = 2e-6: L = ln(1e6) = 13.8155...,
        // x = L/3 + sqrt(L²/9 + 2 L 2500) = 4.6052 + sqrt(21.21 + 69077.6)
        //   = 4.6052 + 262.87 = 267.47; n B + x = 1267.5.
        // 2^10 - 1 = 1023 < 1267.5 <= 2047 = 2^11 - 1, so 12 bits.
        let l = 1e6f64.ln();
        let x = l / 3.0 + (l * l / 9.0 + 2.0 * l * 2500.0).sqrt();
        assert!((x - 267.47).abs() < 0.01, "{x}");
        assert_eq!(choose_bits_with_noise(10, 100.0, 50.0, 1000, 2e-6), Ok(12));
        // Without noise: 1000 <= 1023, 11 bits.
        assert_eq!(choose_bits_with_noise(10, 100.0, 0.0, 1000, 2e-6), Ok(11));
        // The wrap probability at 12 bits: margin 2047 - 1000 = 1047,
        // per coordinate 2 exp(-1047² / (2 (2500 + 349))) ≈ 2e-84.
        let p12 = wrap_probability(10, 100.0, 50.0, 1000, 12).unwrap();
        assert!(p12 < 1e-80);
        // At 11 bits the margin 23 is under half a σ: near certain.
        assert_eq!(wrap_probability(10, 100.0, 50.0, 1000, 11), Ok(1.0));
        assert_eq!(wrap_probability(10, 100.0, 50.0, 1000, 10), Ok(1.0));
        assert!(matches!(
            choose_bits_with_noise(1 << 20, 1e4, 1.0, 1, 1e-6),
            Err(DpError::TooManyBits { .. })
        ));
        assert!(choose_bits_with_noise(0, 1.0, 1.0, 1, 1e-6).is_err());
        assert!(choose_bits_with_noise(1, 1.0, 1.0, 1, 0.0).is_err());
    }

    #[test]
    fn choose_bits_holds_empirically() {
        // The wrap bound is an upper bound: simulate the worst-case input
        // sum n B plus Skellam noise of σ_total and count exceedances.
        let (n, b, sigma) = (5u32, 40.0, 8.0);
        let p = 1e-3;
        let bits = choose_bits_with_noise(n, b, sigma, 1, p).unwrap();
        let limit = ((1i64 << (bits - 1)) - 1) as f64;
        let dp = DistributedDp {
            noise: NoiseKind::Skellam,
            target_sigma: sigma,
            min_survivors: n,
        };
        let mut noise = vec![0i64; 20_000];
        let mut r = rng(5);
        for _ in 0..n {
            dp.add_noise(&mut noise, &mut r).unwrap();
        }
        let over = noise
            .iter()
            .filter(|&&e| f64::from(n) * b + e as f64 > limit)
            .count();
        // Expected at most p * 20000 = 20; the tail bound is loose.
        assert!(over <= 20, "{over} wraps");
    }
}
