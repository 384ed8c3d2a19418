//! Fixed-point encoding of model updates: clipping, scaling and unbiased
//! randomized rounding into the ring that secure aggregation sums in.
//!
//! Secure aggregation adds vectors in the ring `Z_{2^bits}`: a client's masked
//! input in the MaskedInputCollection stage is `y = x + masks mod 2^bits`, and
//! after Unmasking the server holds `Σ x mod 2^bits`. Model updates are `f32`,
//! so each client first turns its update into ring elements with
//! [`FixedPoint::encode`]:
//!
//! 1. reject NaN and infinities (they have no fixed-point image);
//! 2. clip the update to L2 norm `C` (`clip_norm`), which bounds every
//!    coordinate by `C` and is also the sensitivity that differential privacy
//!    needs;
//! 3. scale by `2^f` (`frac_bits`) and round to an integer with unbiased
//!    randomized rounding, so the server's average is an unbiased estimate of
//!    the true average rather than drifting by up to half a step per round;
//! 4. map the signed integer into `Z_{2^bits}` as two's complement.
//!
//! The server unmasks the sum and calls [`FixedPoint::decode_sum`], which maps
//! ring elements back to signed integers and divides by `2^f`. This is only
//! correct if the true integer sum never left the signed range
//! `[-2^(bits-1), 2^(bits-1) - 1]`; [`choose_bits`] picks the smallest `bits`
//! for which that is guaranteed for a given number of clients.
//!
//! The quantization lives here, beside the noise mechanisms, because clipping
//! is the sensitivity of every DP guarantee and the noise is added to these
//! integers; the protocol only sees ring elements (it packs them for the wire
//! with `tessera_aggregation::packing`).
//!
//! ```
//! use chacha20::ChaCha20Rng;
//! use rand_core::SeedableRng;
//! use tessera_dp::encoding::{FixedPoint, choose_bits};
//!
//! // Three clients, clip norm 1, 16 fractional bits.
//! let bits = choose_bits(3, 1.0, 16)?;
//! let fp = FixedPoint::new(1.0, 16, bits)?;
//! let mut rng = ChaCha20Rng::from_seed([7; 32]);
//! let mut sum = vec![0u32; 2];
//! for update in [[0.5f32, -0.25], [0.25, 0.5], [-0.5, 0.125]] {
//!     let encoded = fp.encode(&update, &mut rng)?;
//!     // Masks cancel in the sum: what the server unmasks is this wrapping sum.
//!     for (s, v) in sum.iter_mut().zip(encoded.values) {
//!         *s = s.wrapping_add(v);
//!     }
//! }
//! let decoded = fp.decode_sum(&sum, 3);
//! assert!((decoded.sum[0] - 0.25).abs() <= 3.0 / 65536.0);
//! assert!((decoded.sum[1] - 0.375).abs() <= 3.0 / 65536.0);
//! # Ok::<(), tessera_dp::encoding::EncodingError>(())
//! ```

use std::cmp::Ordering;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};

/// The widest ring supported: masked vectors are stored as `u32` with
/// wrapping arithmetic, so `2^32` is the largest modulus that is free.
pub const MAX_BITS: u8 = 32;

/// The most fractional bits allowed.
///
/// Decoded sums are `f32`, which carries 24 significant bits: at `f = 24` the
/// step `2^-24` is already below the `f32` resolution of any coordinate of
/// magnitude 1 or more, so finer steps would mostly be rounded away on
/// output, while each fractional bit costs one more bit per element on the
/// wire and halves the number of clients a 32-bit ring can sum. (Typical
/// DP-FedAvg settings use about 16.) With `f <= 24`, `2^f` is exact in both
/// `f32` and `f64`.
pub const MAX_FRAC_BITS: u8 = 24;

/// Why a fixed-point parameter or an update was rejected.
///
/// No variant carries update values: an update is a client's private data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodingError {
    /// The clip norm is NaN, infinite, zero or negative.
    #[error("clip norm must be finite and positive, got {clip_norm}")]
    InvalidClipNorm {
        /// The rejected clip norm.
        clip_norm: f32,
    },
    /// `bits` is outside `1..=32`.
    #[error("bits must be in 1..=32 (values are u32), got {bits}")]
    InvalidBits {
        /// The rejected width.
        bits: u8,
    },
    /// `frac_bits` is above [`MAX_FRAC_BITS`].
    #[error("frac_bits must be at most 24 (an f32 carries 24 significant bits), got {frac_bits}")]
    InvalidFracBits {
        /// The rejected number of fractional bits.
        frac_bits: u8,
    },
    /// A single clipped, quantized coordinate does not fit the signed range.
    #[error(
        "a clipped coordinate can reach C 2^f + 1 = {bound} in magnitude \
         (C = {clip_norm}, f = {frac_bits}), more than the {limit} that {bits}-bit \
         two's complement holds; use more bits, fewer fractional bits or a \
         smaller clip norm"
    )]
    CoordinateDoesNotFit {
        /// The clip norm `C`.
        clip_norm: f32,
        /// The fractional bits `f`.
        frac_bits: u8,
        /// The ring width that was asked for.
        bits: u8,
        /// `C 2^f + 1`, the bound on one coordinate.
        bound: f64,
        /// `2^(bits-1) - 1`, the most the ring holds.
        limit: u64,
    },
    /// [`choose_bits`] was asked about a round without clients.
    #[error("cannot choose a ring width for zero clients")]
    NoClients,
    /// The sum of the clients' inputs could exceed what 32 bits can hold.
    #[error(
        "{clients} clients with clip norm {clip_norm} and {frac_bits} fractional bits \
         can sum to n (C 2^f + 1) = {bound} in magnitude, more than 2^31 - 1 = \
         2147483647, the most a 32-bit ring holds without wrapping; use fewer \
         fractional bits, a smaller clip norm or fewer clients per round"
    )]
    TooManyBits {
        /// The number of clients `n`.
        clients: u32,
        /// The clip norm `C`.
        clip_norm: f32,
        /// The fractional bits `f`.
        frac_bits: u8,
        /// `n (C 2^f + 1)`, the bound on the magnitude of the sum.
        bound: f64,
    },
    /// The update holds a NaN or an infinity.
    #[error("update coordinate {index} is NaN or infinite")]
    NonFinite {
        /// The first offending coordinate.
        index: usize,
    },
}

/// The fixed-point format of one round: clip norm `C`, `f` fractional bits and
/// the ring width `bits`.
///
/// Every client of a round must use the same format (it is part of the round
/// configuration), since the server decodes the sum with it. Build it with
/// [`FixedPoint::new`] or [`FixedPoint::for_clients`], which check that it is
/// usable; deserializing checks the same. Fields set by hand bypass the check,
/// in which case [`encode`](Self::encode) returns the error and
/// [`decode_sum`](Self::decode_sum) panics.
///
/// ```
/// use tessera_dp::encoding::{EncodingError, FixedPoint};
///
/// // 1 * 2^16 + 1 = 65537 fits 18-bit two's complement (up to 131071)...
/// assert!(FixedPoint::new(1.0, 16, 18).is_ok());
/// // ...but not 17 bits (up to 65535).
/// assert!(matches!(
///     FixedPoint::new(1.0, 16, 17),
///     Err(EncodingError::CoordinateDoesNotFit { .. })
/// ));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "FixedPointFields")]
pub struct FixedPoint {
    /// `C`: updates are clipped to this L2 norm.
    pub clip_norm: f32,
    /// `f`: values are scaled by `2^f` before rounding, so the step is `2^-f`.
    pub frac_bits: u8,
    /// The ring is `Z_{2^bits}`.
    pub bits: u8,
}

/// The unchecked wire form of [`FixedPoint`], so deserializing validates.
#[derive(Debug, Deserialize)]
struct FixedPointFields {
    clip_norm: f32,
    frac_bits: u8,
    bits: u8,
}

impl TryFrom<FixedPointFields> for FixedPoint {
    type Error = EncodingError;

    fn try_from(f: FixedPointFields) -> Result<Self, Self::Error> {
        Self::new(f.clip_norm, f.frac_bits, f.bits)
    }
}

/// A client's update as ring elements, ready to be masked.
///
/// The `Debug` output omits `values`: before masking they are the client's
/// private update.
#[derive(Clone, PartialEq)]
pub struct Encoded {
    /// One element of `Z_{2^bits}` per coordinate, each below `2^bits`.
    pub values: Vec<u32>,
    /// Whether the update's norm exceeded the clip norm and was scaled down;
    /// clients report the fraction of clipped updates to tune `C`.
    pub clipped: bool,
    /// The L2 norm of the update before clipping.
    pub norm: f32,
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoded")
            .field("values", &format_args!("[{} elements]", self.values.len()))
            .field("clipped", &self.clipped)
            .field("norm", &self.norm)
            .finish()
    }
}

/// The decoded sum of a round's inputs, and how many clients it covers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decoded {
    /// The sum of the contributors' clipped, quantized updates.
    pub sum: Vec<f32>,
    /// The number of clients whose inputs are in `sum`.
    pub contributors: u32,
}

impl Decoded {
    /// The average update, `sum / contributors`, which FedAvg applies.
    ///
    /// With zero contributors (a round that ended with nobody's input) this is
    /// a vector of zeros of the same length, that is "no change", rather than
    /// the NaNs of `0 / 0`, which would poison a model they were added to.
    /// An empty sum gives an empty vector.
    pub fn mean(&self) -> Vec<f32> {
        if self.contributors == 0 {
            return vec![0.0; self.sum.len()];
        }
        let n = f64::from(self.contributors);
        self.sum
            .iter()
            .map(|&s| (f64::from(s) / n) as f32)
            .collect()
    }
}

impl FixedPoint {
    /// Checks and builds a fixed-point format.
    ///
    /// Requires a finite, positive `clip_norm`, `1 <= bits <= 32`,
    /// `frac_bits <= 24` (see [`MAX_FRAC_BITS`]), and that one clipped,
    /// quantized input fits the ring without wrapping:
    /// `clip_norm * 2^frac_bits + 1 <= 2^(bits-1) - 1`, the one-client case
    /// of [`choose_bits`]'s bound. The extra `+ 1` is the rounding up of
    /// randomized rounding. To size `bits` for a whole round, use
    /// [`choose_bits`] or [`FixedPoint::for_clients`].
    pub fn new(clip_norm: f32, frac_bits: u8, bits: u8) -> Result<Self, EncodingError> {
        check_clip_norm(clip_norm)?;
        check_frac_bits(frac_bits)?;
        if !(1..=MAX_BITS).contains(&bits) {
            return Err(EncodingError::InvalidBits { bits });
        }
        if cmp_sum_bound(1, clip_norm, frac_bits, signed_max(bits)) == Ordering::Greater {
            return Err(EncodingError::CoordinateDoesNotFit {
                clip_norm,
                frac_bits,
                bits,
                bound: sum_bound(1, clip_norm, frac_bits),
                limit: signed_max(bits) as u64,
            });
        }
        Ok(Self {
            clip_norm,
            frac_bits,
            bits,
        })
    }

    /// The format for a round of `clients` clients: `bits` from
    /// [`choose_bits`], so their sum cannot wrap.
    pub fn for_clients(clients: u32, clip_norm: f32, frac_bits: u8) -> Result<Self, EncodingError> {
        Self::new(
            clip_norm,
            frac_bits,
            choose_bits(clients, clip_norm, frac_bits)?,
        )
    }

    /// The largest number of clients whose inputs this format can sum without
    /// wrapping: the largest `n` with `n (C 2^f + 1) <= 2^(bits-1) - 1`.
    ///
    /// The server checks a round's client count against it; the sum of more
    /// clients than this may decode to garbage.
    ///
    /// # Panics
    /// If the fields were set by hand to an invalid format.
    pub fn max_clients(&self) -> u32 {
        self.assert_valid();
        let limit = signed_max(self.bits);
        let fits =
            |n: u32| cmp_sum_bound(n, self.clip_norm, self.frac_bits, limit) != Ordering::Greater;
        // `new` guarantees one client fits; binary search the last n that does.
        let (mut lo, mut hi) = (1u32, u32::MAX);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    /// The mask `2^bits - 1` that reduces a `u32` modulo `2^bits`.
    pub fn value_mask(&self) -> u32 {
        value_mask(self.bits)
    }

    /// Turns an update into ring elements: clip, scale, randomized rounding,
    /// two's complement mod `2^bits` (see the module documentation).
    ///
    /// Randomized rounding rounds `v` up with probability `v - floor(v)`,
    /// using 53 bits from `rng`, so `E[round(v)] = v` up to `2^-52`: the
    /// average over clients and rounds carries no rounding bias. The norm is
    /// computed in `f64`. Every output element has magnitude at most
    /// `ceil(C 2^f) < C 2^f + 1` before the mod, which is what
    /// [`choose_bits`] relies on.
    ///
    /// Like all randomness in this crate, `rng` must be a cryptographic
    /// generator: the rounding decisions depend on the private update, and
    /// the privacy analysis (with distributed DP in particular) treats them
    /// as unpredictable. Its output is consumed in blocks, so the same seed
    /// gives the same encoding.
    ///
    /// ```
    /// use chacha20::ChaCha20Rng;
    /// use rand_core::SeedableRng;
    /// use tessera_dp::encoding::{EncodingError, FixedPoint};
    ///
    /// let fp = FixedPoint::new(1.0, 8, 16)?;
    /// let mut rng = ChaCha20Rng::from_seed([1; 32]);
    /// let e = fp.encode(&[0.5, -0.25], &mut rng)?;
    /// // 0.5 * 2^8 = 128; -0.25 * 2^8 = -64 = 2^16 - 64 in two's complement.
    /// assert_eq!(e.values, vec![128, 65536 - 64]);
    /// assert!(!e.clipped);
    ///
    /// // A NaN has no fixed-point image; the error names where it is.
    /// assert_eq!(
    ///     fp.encode(&[0.0, f32::NAN], &mut rng),
    ///     Err(EncodingError::NonFinite { index: 1 })
    /// );
    /// # Ok::<(), EncodingError>(())
    /// ```
    pub fn encode<R: CryptoRng + ?Sized>(
        &self,
        update: &[f32],
        rng: &mut R,
    ) -> Result<Encoded, EncodingError> {
        self.check()?;
        if let Some(index) = update.iter().position(|x| !x.is_finite()) {
            return Err(EncodingError::NonFinite { index });
        }
        // Squares of f32 are exact in f64 and cannot overflow, so the norm
        // is accurate to a few ulps of f64 for any update length.
        let norm = update
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        let clip = f64::from(self.clip_norm);
        let two_f = f64::from(1u32 << self.frac_bits);
        let clipped = norm > clip;
        let scale = if clipped { clip / norm * two_f } else { two_f };
        // Mathematically |x_i| * scale <= C 2^f already; the clamp absorbs the
        // last-ulp rounding of `clip / norm` so the bound holds exactly.
        let bound = clip * two_f;
        let mask = self.value_mask();
        let mut values = Vec::with_capacity(update.len());
        // Random words are drawn a block at a time: one `fill_bytes` call per
        // block is cheaper than one `next_u64` call per coordinate.
        let mut random = [0u8; 8 * RANDOM_BLOCK];
        for block in update.chunks(RANDOM_BLOCK) {
            let random = &mut random[..8 * block.len()];
            rng.fill_bytes(random);
            values.extend(block.iter().zip(random.chunks_exact(8)).map(|(&x, r)| {
                let r = u64::from_le_bytes(r.try_into().expect("8 bytes"));
                let q = randomized_round((f64::from(x) * scale).clamp(-bound, bound), r);
                // `as u32` keeps the low 32 bits of the two's complement i64,
                // which is q mod 2^32; the mask reduces it mod 2^bits.
                (q as u32) & mask
            }));
        }
        Ok(Encoded {
            values,
            clipped,
            norm: norm as f32,
        })
    }

    /// Decodes the unmasked sum of `contributors` encoded inputs.
    ///
    /// Each element is reduced mod `2^bits` (so a plain wrapping `u32` sum
    /// also works), read as `bits`-bit two's complement (elements at or above
    /// `2^(bits-1)` are negative) and divided by `2^f`. The result is the sum
    /// of the quantized inputs, rounded to `f32`; it is the sum of the real
    /// inputs only if `contributors <= self.max_clients()`.
    ///
    /// # Panics
    /// If the fields were set by hand to an invalid format.
    pub fn decode_sum(&self, sum: &[u32], contributors: u32) -> Decoded {
        self.assert_valid();
        let bits = u32::from(self.bits);
        let half = 1i64 << (bits - 1);
        let modulus = 1i64 << bits;
        let mask = self.value_mask();
        // A power of two, so multiplying by it is exact.
        let step = 1.0 / f64::from(1u32 << self.frac_bits);
        let sum = sum
            .iter()
            .map(|&w| {
                let w = i64::from(w & mask);
                let signed = if w >= half { w - modulus } else { w };
                (signed as f64 * step) as f32
            })
            .collect();
        Decoded { sum, contributors }
    }

    fn check(&self) -> Result<(), EncodingError> {
        Self::new(self.clip_norm, self.frac_bits, self.bits).map(|_| ())
    }

    fn assert_valid(&self) {
        if let Err(e) = self.check() {
            panic!("invalid FixedPoint (build it with FixedPoint::new): {e}");
        }
    }
}

/// The smallest ring width `bits` for which the sum of `clients` clipped,
/// quantized inputs cannot wrap modulo `2^bits`.
///
/// The bound: an input clipped to L2 norm `C` has every coordinate
/// `|x_i| <= ||x||_2 <= C`; scaled, `|x_i| 2^f <= C 2^f`; randomized rounding
/// moves it by less than 1, so each encoded coordinate has magnitude below
/// `C 2^f + 1`, and the sum of `n` of them satisfies
/// `|sum| <= n (C 2^f + 1)`. Two's complement in `bits` bits holds
/// `[-2^(bits-1), 2^(bits-1) - 1]`, so it suffices that
///
/// ```text
/// n (C 2^f + 1) <= 2^(bits-1) - 1
/// ```
///
/// and `choose_bits` returns the smallest `bits` satisfying it, computed
/// exactly (no floating-point rounding at the boundary). The bound is tight
/// up to the `+ 1`: `n` clients all sending `C e_1` reach `n C 2^f`, which
/// wraps with one bit fewer for the largest `n` a width allows.
///
/// ```
/// use tessera_dp::encoding::{EncodingError, choose_bits};
///
/// // 1000 (2^16 + 1) = 65,537,000 <= 2^26 - 1 = 67,108,863, > 2^25 - 1.
/// assert_eq!(choose_bits(1000, 1.0, 16)?, 27);
/// // 32768 (2^16 + 1) = 2,147,516,416 > 2^31 - 1: no u32 ring is wide enough.
/// assert!(matches!(
///     choose_bits(32768, 1.0, 16),
///     Err(EncodingError::TooManyBits { .. })
/// ));
/// # Ok::<(), EncodingError>(())
/// ```
pub fn choose_bits(clients: u32, clip_norm: f32, frac_bits: u8) -> Result<u8, EncodingError> {
    check_clip_norm(clip_norm)?;
    check_frac_bits(frac_bits)?;
    if clients == 0 {
        return Err(EncodingError::NoClients);
    }
    (1..=MAX_BITS)
        .find(|&bits| {
            cmp_sum_bound(clients, clip_norm, frac_bits, signed_max(bits)) != Ordering::Greater
        })
        .ok_or(EncodingError::TooManyBits {
            clients,
            clip_norm,
            frac_bits,
            bound: sum_bound(clients, clip_norm, frac_bits),
        })
}

/// `2^bits - 1` for `bits` in `1..=32`: the mask that reduces a `u32`
/// modulo `2^bits`.
///
/// The protocol crate's `packing::value_mask` is the same one line; it is
/// written twice so that this crate does not depend on the protocol.
fn value_mask(bits: u8) -> u32 {
    u32::MAX >> (32 - u32::from(bits))
}

/// `2^(bits-1) - 1`, the largest value of `bits`-bit two's complement.
fn signed_max(bits: u8) -> u128 {
    (1u128 << (bits - 1)) - 1
}

fn check_clip_norm(clip_norm: f32) -> Result<(), EncodingError> {
    if clip_norm.is_finite() && clip_norm > 0.0 {
        Ok(())
    } else {
        Err(EncodingError::InvalidClipNorm { clip_norm })
    }
}

fn check_frac_bits(frac_bits: u8) -> Result<(), EncodingError> {
    if frac_bits <= MAX_FRAC_BITS {
        Ok(())
    } else {
        Err(EncodingError::InvalidFracBits { frac_bits })
    }
}

/// `n (C 2^f + 1)` in `f64`, for error messages only.
fn sum_bound(clients: u32, clip_norm: f32, frac_bits: u8) -> f64 {
    f64::from(clients) * (f64::from(clip_norm) * f64::from(1u32 << frac_bits) + 1.0)
}

/// Compares `n (C 2^f + 1)` with `limit` exactly.
///
/// `C` is a positive finite `f32`, so `C = m 2^e` with integer `m < 2^24`;
/// with `s = e + f` the comparison is between integers (`s >= 0`) or
/// between `n m / 2^-s` and the integer `limit - n` (`s < 0`), both done in
/// `u128` without rounding. Floating point would be off by one at the
/// boundaries that the tightness of [`choose_bits`] is about.
fn cmp_sum_bound(clients: u32, clip_norm: f32, frac_bits: u8, limit: u128) -> Ordering {
    debug_assert!(clip_norm.is_finite() && clip_norm > 0.0);
    let (m, e) = decompose(clip_norm);
    let n = u128::from(clients);
    let nm = n * u128::from(m); // < 2^56
    let s = e + i32::from(frac_bits);
    if s >= 0 {
        // n m 2^s + n; limit < 2^32, so anything shifted past 2^64 is larger.
        if s > 64 {
            return Ordering::Greater;
        }
        return ((nm << s) + n).cmp(&limit);
    }
    // Compare n m 2^s with limit - n (n m 2^s > 0, so limit <= n means >).
    let Some(rest) = limit.checked_sub(n).filter(|&r| r > 0) else {
        return Ordering::Greater;
    };
    let k = s.unsigned_abs();
    if k >= 64 {
        // 0 < n m 2^s < 2^56 / 2^64 < 1 <= rest.
        return Ordering::Less;
    }
    let (q, r) = (nm >> k, nm & ((1u128 << k) - 1));
    match q.cmp(&rest) {
        Ordering::Equal if r > 0 => Ordering::Greater,
        o => o,
    }
}

/// Splits a positive finite `f32` into `(m, e)` with `x = m 2^e` exactly.
fn decompose(x: f32) -> (u32, i32) {
    let raw = x.to_bits();
    let exp = ((raw >> 23) & 0xff) as i32;
    let frac = raw & 0x7f_ffff;
    if exp == 0 {
        (frac, -149)
    } else {
        (frac | 0x80_0000, exp - 150)
    }
}

/// Coordinates per block of random bytes drawn in [`FixedPoint::encode`].
const RANDOM_BLOCK: usize = 256;

/// Rounds `v` down or up, up with probability `v - floor(v)` given a uniform
/// random word, so that the expectation is `v`.
///
/// `|v| <= 2^31`, so the conversions are exact.
fn randomized_round(v: f64, random: u64) -> i64 {
    // floor(v) via truncation: `f64::floor` is a libm call on baseline
    // x86-64 (no SSE4.1), which made it the slowest step of `encode`.
    let trunc = v as i64;
    let floor = trunc - i64::from((trunc as f64) > v);
    let frac = v - floor as f64;
    // A uniform multiple of 2^-53 in [0, 1): P(u < frac) = frac up to 2^-53.
    let u = (random >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    floor + i64::from(u < frac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20::ChaCha20Rng;
    use proptest::prelude::*;
    use rand_core::SeedableRng;

    fn rng(seed: u8) -> ChaCha20Rng {
        ChaCha20Rng::from_seed([seed; 32])
    }

    fn l2(x: &[f64]) -> f64 {
        x.iter().map(|v| v * v).sum::<f64>().sqrt()
    }

    // ---- parameters ----

    #[test]
    fn new_rejects_bad_parameters() {
        for c in [0.0, -1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(matches!(
                FixedPoint::new(c, 8, 16),
                Err(EncodingError::InvalidClipNorm { .. })
            ));
        }
        assert_eq!(
            FixedPoint::new(1.0, 8, 0),
            Err(EncodingError::InvalidBits { bits: 0 })
        );
        assert_eq!(
            FixedPoint::new(1.0, 8, 33),
            Err(EncodingError::InvalidBits { bits: 33 })
        );
        assert_eq!(
            FixedPoint::new(1.0, 25, 32),
            Err(EncodingError::InvalidFracBits { frac_bits: 25 })
        );
        assert!(FixedPoint::new(1.0, 24, 32).is_ok());
        // 1 * 2^16 + 1 = 65537: 17-bit two's complement tops out at 65535,
        // 18-bit at 131071.
        assert!(matches!(
            FixedPoint::new(1.0, 16, 17),
            Err(EncodingError::CoordinateDoesNotFit { .. })
        ));
        assert!(FixedPoint::new(1.0, 16, 18).is_ok());
        // One bit can hold only 0 and -1: nothing with C > 0 fits.
        assert!(FixedPoint::new(f32::MIN_POSITIVE, 0, 1).is_err());
        // C = 0.5, f = 0: 1.5 <= 2^(2-1) - 1 = 1 is false; <= 3 with 3 bits.
        assert!(FixedPoint::new(0.5, 0, 2).is_err());
        assert!(FixedPoint::new(0.5, 0, 3).is_ok());
    }

    #[test]
    fn deserialize_path_validates() {
        let bad = FixedPointFields {
            clip_norm: 1.0,
            frac_bits: 16,
            bits: 17,
        };
        assert!(FixedPoint::try_from(bad).is_err());
        let good = FixedPointFields {
            clip_norm: 1.0,
            frac_bits: 16,
            bits: 18,
        };
        assert_eq!(
            FixedPoint::try_from(good),
            Ok(FixedPoint {
                clip_norm: 1.0,
                frac_bits: 16,
                bits: 18
            })
        );
    }

    #[test]
    fn choose_bits_hand_examples() {
        // 1000 * (2^16 + 1) = 65,537,000. 2^25 - 1 = 33,554,431 is too
        // small, 2^26 - 1 = 67,108,863 is enough: bits - 1 = 26.
        assert_eq!(choose_bits(1000, 1.0, 16), Ok(27));
        // Largest n for 27 bits: floor(67,108,863 / 65,537) = 1023
        // (1023 * 65537 = 67,044,351; 1024 * 65537 = 67,109,888).
        assert_eq!(choose_bits(1023, 1.0, 16), Ok(27));
        assert_eq!(choose_bits(1024, 1.0, 16), Ok(28));
        assert_eq!(FixedPoint::new(1.0, 16, 27).unwrap().max_clients(), 1023);
        // 32767 * 65537 = 2,147,450,879 <= 2^31 - 1 = 2,147,483,647.
        assert_eq!(choose_bits(32767, 1.0, 16), Ok(32));
        // 32768 * 65537 = 2,147,516,416 > 2^31 - 1.
        let err = choose_bits(32768, 1.0, 16).unwrap_err();
        assert_eq!(
            err,
            EncodingError::TooManyBits {
                clients: 32768,
                clip_norm: 1.0,
                frac_bits: 16,
                bound: 2_147_516_416.0
            }
        );
        assert!(err.to_string().contains("2147516416"), "{err}");
        // n = 1, C = 1, f = 0: 2 <= 2^(b-1) - 1 first holds at b - 1 = 2.
        assert_eq!(choose_bits(1, 1.0, 0), Ok(3));
        // C = 0.5, f = 1: 3 * (1 + 1) = 6 <= 7 = 2^3 - 1.
        assert_eq!(choose_bits(3, 0.5, 1), Ok(4));
        assert_eq!(choose_bits(4, 0.5, 1), Ok(5)); // 8 > 7
        // C = 0.75, f = 2: 3 + 1 = 4; n = 31: 124 <= 127 = 2^7 - 1, 32: 128.
        assert_eq!(choose_bits(31, 0.75, 2), Ok(8));
        assert_eq!(choose_bits(32, 0.75, 2), Ok(9));
        // C = 0.1 (as f32, 0.100000001490116...), f = 0: n (C + 1) with
        // n = 6: 6.6000000089 <= 7; n = 7: 7.7 > 7.
        assert_eq!(choose_bits(6, 0.1, 0), Ok(4));
        assert_eq!(choose_bits(7, 0.1, 0), Ok(5));
        // C = 2.5, f = 0, n = 1: 3.5 > 3 = 2^2 - 1 (an equal integer part
        // with a fractional excess), <= 7.
        assert_eq!(choose_bits(1, 2.5, 0), Ok(4));
        assert!(FixedPoint::new(2.5, 0, 3).is_err());
        // C = 2, f = 0, n = 1: 3 <= 3 exactly.
        assert_eq!(choose_bits(1, 2.0, 0), Ok(3));
        // C 2^f = 2^24 - 1 (C = 1 - 2^-24 exactly in f32, f = 24; or C =
        // 2^24 - 1, f = 0): n = 1 gives 2^24 <= 2^25 - 1 but > 2^24 - 1.
        assert_eq!(choose_bits(1, 1.0 - 1.0 / 16_777_216.0, 24), Ok(26));
        assert_eq!(choose_bits(1, 16_777_215.0, 0), Ok(26));
        // n = 2^6: 2^30 <= 2^31 - 1; n = 2^7: 2^31 > 2^31 - 1.
        assert_eq!(choose_bits(64, 16_777_215.0, 0), Ok(32));
        assert!(choose_bits(128, 16_777_215.0, 0).is_err());
        assert_eq!(choose_bits(0, 1.0, 16), Err(EncodingError::NoClients));
        assert!(matches!(
            choose_bits(10, f32::NAN, 16),
            Err(EncodingError::InvalidClipNorm { .. })
        ));
        assert!(matches!(
            choose_bits(10, 1.0, 30),
            Err(EncodingError::InvalidFracBits { .. })
        ));
        // Huge and tiny clip norms go through the exact comparison's edges.
        assert!(choose_bits(1, f32::MAX, 0).is_err());
        assert_eq!(choose_bits(1, f32::MIN_POSITIVE / 4.0, 24), Ok(3));
        assert_eq!(choose_bits(3, f32::MIN_POSITIVE / 4.0, 24), Ok(4));
    }

    #[test]
    fn for_clients_and_max_clients_agree() {
        // (C 2^f + 1) = 257 for C = 1, f = 8; 2^15 - 1 = 32767 = 127 * 257 + 128.
        let fp = FixedPoint::for_clients(127, 1.0, 8).unwrap();
        assert_eq!(fp.bits, 16);
        assert_eq!(fp.max_clients(), 127);
        assert_eq!(
            FixedPoint::new(1.0, 8, 32).unwrap().max_clients(),
            8_355_967
        );
        // floor((2^31 - 1) / 257) = 8,355,967 (8,355,967 * 257 = 2,147,483,519).
        // A tiny C: n (C 2^f + 1) is just above n, so n up to 2^31 - 2 fits.
        let tiny = FixedPoint::new(f32::MIN_POSITIVE, 0, 32).unwrap();
        assert_eq!(tiny.max_clients(), (1 << 31) - 2);
    }

    proptest! {
        /// choose_bits against the bound written in f64 where f64 is exact:
        /// C = k / 256 with k < 2^12 and n < 2^20 keep every product well
        /// inside 53 bits.
        #[test]
        fn choose_bits_is_smallest_sufficient(
            n in 1u32..(1 << 20),
            k in 1u32..(1 << 12),
            f in 0u8..=24,
        ) {
            let c = k as f32 / 256.0;
            let need = f64::from(n) * (f64::from(c) * f64::from(1u32 << f) + 1.0);
            let ok = |bits: u32| need <= ((1u64 << (bits - 1)) - 1) as f64;
            match choose_bits(n, c, f) {
                Ok(bits) => {
                    let bits = u32::from(bits);
                    prop_assert!(ok(bits));
                    prop_assert!(bits == 1 || !ok(bits - 1));
                    let fp = FixedPoint::new(c, f, bits as u8).unwrap();
                    prop_assert!(fp.max_clients() >= n);
                }
                Err(EncodingError::TooManyBits { .. }) => prop_assert!(!ok(32)),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
    }

    // ---- encode / decode ----

    #[test]
    fn nan_and_infinities_are_rejected_with_index() {
        let fp = FixedPoint::new(1.0, 16, 24).unwrap();
        let mut r = rng(1);
        for (bad, index) in [
            (vec![f32::NAN], 0),
            (vec![0.1, 0.2, 0.3, f32::NAN, f32::INFINITY], 3),
            (vec![0.0, f32::INFINITY], 1),
            (vec![0.0, 0.0, f32::NEG_INFINITY], 2),
        ] {
            assert_eq!(
                fp.encode(&bad, &mut r),
                Err(EncodingError::NonFinite { index })
            );
        }
    }

    #[test]
    fn exact_values_encode_deterministically() {
        // Multiples of 2^-f are exact: randomized rounding must not move them.
        let fp = FixedPoint::new(4.0, 4, 8).unwrap();
        let e = fp
            .encode(&[0.0, 1.0, -1.0, 0.0625, -2.5], &mut rng(2))
            .unwrap();
        // 16, -16 -> 256 - 16 = 240, 1, -40 -> 216.
        assert_eq!(e.values, vec![0, 16, 240, 1, 216]);
        assert!(!e.clipped);
        // ||x|| = sqrt(1 + 1 + 1/256 + 6.25).
        assert!((f64::from(e.norm) - (8.25f64 + 1.0 / 256.0).sqrt()).abs() < 1e-6);
        let d = fp.decode_sum(&e.values, 1);
        assert_eq!(d.sum, vec![0.0, 1.0, -1.0, 0.0625, -2.5]);
        assert!(!format!("{e:?}").contains("240"), "Debug leaks values");
    }

    #[test]
    fn empty_update_and_zero_contributors() {
        let fp = FixedPoint::new(1.0, 8, 16).unwrap();
        let e = fp.encode(&[], &mut rng(3)).unwrap();
        assert!(e.values.is_empty() && !e.clipped && e.norm == 0.0);
        let d = fp.decode_sum(&[], 0);
        assert!(d.mean().is_empty());
        let d = fp.decode_sum(&[5, 0], 0);
        assert_eq!(d.mean(), vec![0.0, 0.0]);
        let d = fp.decode_sum(&[512, 65536 - 256], 4);
        // 512 / 256 = 2 and -1, over 4 contributors.
        assert_eq!(d.mean(), vec![0.5, -0.25]);
    }

    #[test]
    fn decode_reduces_mod_2_pow_bits() {
        let fp = FixedPoint::new(1.0, 8, 16).unwrap();
        // -3 as a u32 and as a 16-bit element decode the same.
        let a = fp.decode_sum(&[(-3i32) as u32, 3 + (7 << 16)], 1);
        let b = fp.decode_sum(&[65533, 3], 1);
        assert_eq!(a, b);
        assert_eq!(a.sum, vec![-3.0 / 256.0, 3.0 / 256.0]);
        // The edges of 16-bit two's complement: 2^15 - 1 is the largest
        // positive value, 2^15 the most negative, 2^16 - 1 is -1.
        let edges = fp.decode_sum(&[32767, 32768, 65535, 0], 1);
        assert_eq!(edges.sum, vec![32767.0 / 256.0, -128.0, -1.0 / 256.0, 0.0]);
    }

    #[test]
    #[should_panic(expected = "invalid FixedPoint")]
    fn decode_panics_on_hand_built_invalid_format() {
        let fp = FixedPoint {
            clip_norm: 1.0,
            frac_bits: 8,
            bits: 40,
        };
        let _ = fp.decode_sum(&[1], 1);
    }

    #[test]
    fn encode_rejects_hand_built_invalid_format() {
        let fp = FixedPoint {
            clip_norm: 1.0,
            frac_bits: 16,
            bits: 8,
        };
        assert!(matches!(
            fp.encode(&[0.5], &mut rng(4)),
            Err(EncodingError::CoordinateDoesNotFit { .. })
        ));
    }

    /// Randomized rounding is unbiased: the mean of N roundings of `v` lies
    /// within 5 standard deviations of `v` (a fixed seed, so no flakiness;
    /// a deterministic rounding to nearest would be 0.3 away, > 20 sigma).
    #[test]
    fn randomized_rounding_is_unbiased() {
        const N: usize = 100_000;
        let f = 16u8;
        let step = 1.0 / f64::from(1u32 << f);
        let fp = FixedPoint::new(1.0, f, 24).unwrap();
        for (scaled, seed) in [(0.3f64, 10u8), (-0.7, 11), (2.9, 12), (-5.05, 13)] {
            let x = (scaled * step) as f32;
            // The value actually encoded, in units of 2^-f (x is an f32).
            let v = f64::from(x) / step;
            let p = v - v.floor();
            let sigma = (p * (1.0 - p) / N as f64).sqrt();
            // The test can fail: rounding to nearest or always down is far off.
            assert!((v.round() - v).abs() > 5.0 * sigma);
            assert!((v.floor() - v).abs() > 5.0 * sigma);
            // ||x|| = sqrt(N) |x| <= 316 * 5.05 * 2^-16 < 1: no clipping.
            let e = fp.encode(&vec![x; N], &mut rng(seed)).unwrap();
            assert!(!e.clipped);
            let d = fp.decode_sum(&e.values, 1);
            let mean = d.sum.iter().map(|&s| f64::from(s) / step).sum::<f64>() / N as f64;
            assert!(
                (mean - v).abs() <= 5.0 * sigma,
                "mean {mean} vs {v}, sigma {sigma}"
            );
            // Only the two neighbouring integers ever occur.
            assert!(d.sum.iter().all(|&s| {
                let s = f64::from(s) / step;
                s == v.floor() || s == v.floor() + 1.0
            }));
        }
    }

    /// A random format and a vector of norm at most C.
    fn format_and_vector() -> impl Strategy<Value = (FixedPoint, Vec<f32>)> {
        (
            prop::sample::select(vec![0.25f32, 1.0, 3.5, 100.0]),
            0u8..=24,
            prop::collection::vec(-1.0f32..1.0, 0..48),
            0.0f64..=1.0,
        )
            .prop_filter_map("C 2^f must fit 31 bits", |(c, f, dir, r)| {
                let fp = FixedPoint::for_clients(1, c, f).ok()?;
                // Scale the direction to norm r * C <= C.
                let n = l2(&dir.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
                let s = if n > 0.0 { r * f64::from(c) / n } else { 0.0 };
                let x: Vec<f32> = dir.iter().map(|&v| (f64::from(v) * s) as f32).collect();
                // f32 rounding of the scaling may push the norm over C.
                let xs: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
                (l2(&xs) <= f64::from(c)).then_some((fp, x))
            })
    }

    proptest! {
        #[test]
        fn round_trip_within_one_step((fp, x) in format_and_vector(), seed: u8) {
            let e = fp.encode(&x, &mut rng(seed)).unwrap();
            prop_assert!(!e.clipped);
            prop_assert_eq!(e.values.len(), x.len());
            prop_assert!(e.values.iter().all(|&v| v <= fp.value_mask()));
            let d = fp.decode_sum(&e.values, 1);
            let step = 1.0 / f64::from(1u32 << fp.frac_bits);
            for (&got, &want) in d.sum.iter().zip(&x) {
                // Quantized values below 2^24 steps are exact in f32; above,
                // the f32 result adds at most half an ulp of the value.
                let slack = f64::from(want).abs() * f64::from(f32::EPSILON);
                prop_assert!(
                    (f64::from(got) - f64::from(want)).abs() < step + slack,
                    "{} vs {}", got, want
                );
            }
        }

        #[test]
        fn over_norm_vectors_are_clipped_to_c(
            (fp, dir) in format_and_vector(),
            factor in 1.01f64..1000.0,
            seed: u8,
        ) {
            let dir64: Vec<f64> = dir.iter().map(|&v| f64::from(v)).collect();
            let n = l2(&dir64);
            prop_assume!(n > 0.0);
            let c = f64::from(fp.clip_norm);
            // Norm factor * C > C, then the expected clipped vector.
            let x: Vec<f32> = dir64.iter().map(|v| (v / n * c * factor) as f32).collect();
            let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let norm = l2(&x64);
            prop_assume!(norm > c);
            let e = fp.encode(&x, &mut rng(seed)).unwrap();
            prop_assert!(e.clipped);
            prop_assert!((f64::from(e.norm) - norm).abs() <= norm * 1e-6);
            let d = fp.decode_sum(&e.values, 1);
            let step = 1.0 / f64::from(1u32 << fp.frac_bits);
            let got: Vec<f64> = d.sum.iter().map(|&v| f64::from(v)).collect();
            for (g, w) in got.iter().zip(&x64) {
                let want = w * c / norm;
                let slack = want.abs() * f64::from(f32::EPSILON) + want.abs() * 1e-12;
                prop_assert!((g - want).abs() < step + slack, "{} vs {}", g, want);
            }
            // Norm C, up to one step per coordinate.
            let tol = (x.len() as f64).sqrt() * step + c * 1e-6;
            prop_assert!((l2(&got) - c).abs() <= tol, "{} vs {}", l2(&got), c);
        }

        /// n clients, bits from choose_bits(n): the wrapping sum decodes to
        /// the sum of inputs within n steps per coordinate.
        #[test]
        fn sum_of_n_decodes_within_n_steps(
            n in 1u32..40,
            c in prop::sample::select(vec![0.5f32, 1.0, 2.0]),
            f in 0u8..=20,
            d in 1usize..16,
            seed: u8,
            raw in prop::collection::vec(-1.0f32..1.0, 40 * 16),
        ) {
            let fp = FixedPoint::for_clients(n, c, f).unwrap();
            let mut r = rng(seed);
            let mut ring_sum = vec![0u32; d];
            let mut true_sum = vec![0f64; d];
            for client in 0..n as usize {
                let dir = &raw[client * d..client * d + d];
                // Half the clients send norm exactly-ish C, half smaller;
                // negative coordinates come from the raw range.
                let dn = l2(&dir.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
                let target = if client % 2 == 0 { f64::from(c) } else { f64::from(c) / 3.0 };
                let s = if dn > 0.0 { target / dn } else { 0.0 };
                let x: Vec<f32> = dir.iter().map(|&v| (f64::from(v) * s) as f32).collect();
                let e = fp.encode(&x, &mut r).unwrap();
                // Clipping may trim an f32-rounded norm just above C: add the
                // clipped input, not the raw one.
                let xn = l2(&x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
                prop_assert_eq!(e.clipped, xn > f64::from(c));
                let scale = if e.clipped { f64::from(c) / xn } else { 1.0 };
                for j in 0..d {
                    ring_sum[j] = ring_sum[j].wrapping_add(e.values[j]);
                    true_sum[j] += f64::from(x[j]) * scale;
                }
            }
            let dec = fp.decode_sum(&ring_sum, n);
            let step = 1.0 / f64::from(1u32 << f);
            for (g, w) in dec.sum.iter().zip(&true_sum) {
                let slack = w.abs() * f64::from(f32::EPSILON) + 1e-9;
                prop_assert!(
                    (f64::from(*g) - w).abs() <= f64::from(n) * step + slack,
                    "{} vs {}", g, w
                );
            }
        }
    }

    /// At the largest n a width allows, the worst-case input still decodes;
    /// with one bit fewer the same input wraps.
    #[test]
    fn no_wrap_bound_is_tight() {
        // C = 1, f = 8: C 2^f + 1 = 257. 2^15 - 1 = 32767 = 127 * 257 + 128,
        // so 16 bits hold 127 clients and 128 clients need 17.
        let (c, f) = (1.0f32, 8u8);
        assert_eq!(choose_bits(127, c, f), Ok(16));
        assert_eq!(choose_bits(128, c, f), Ok(17));
        let n = 127u32;
        let fp = FixedPoint::new(c, f, 16).unwrap();
        assert_eq!(fp.max_clients(), n);
        let narrow = FixedPoint::new(c, f, 15).unwrap();
        assert!(narrow.max_clients() < n);
        // Every client sends the extreme vector C e_0 (or -C e_0): it
        // encodes exactly to +-C 2^f = +-256 (a multiple of the step, so
        // rounding cannot move it), and 127 of them sum to +-32512.
        let mut r = rng(20);
        for sign in [1.0f32, -1.0] {
            for (fmt, fits) in [(fp, true), (narrow, false)] {
                let mut sum = [0u32; 2];
                for _ in 0..n {
                    let e = fmt.encode(&[sign * c, 0.0], &mut r).unwrap();
                    sum[0] = sum[0].wrapping_add(e.values[0]);
                    sum[1] = sum[1].wrapping_add(e.values[1]);
                }
                let d = fmt.decode_sum(&sum, n);
                if fits {
                    assert_eq!(d.sum, vec![sign * 127.0, 0.0]);
                } else {
                    // 32512 mod 2^15 = 32512 - 32768 = -256 -> -1.0, and
                    // -32512 mod 2^15 = 256 -> +1.0: the sum wrapped.
                    assert_eq!(d.sum, vec![-sign, 0.0], "{} bits", fmt.bits);
                }
            }
        }
        let x = [c / 2f32.sqrt(), -c / 2f32.sqrt()];
        // A mixed vector also round-trips at 16 bits over 127 clients.
        let mut sum = [0u32; 2];
        for _ in 0..n {
            let e = fp.encode(&x, &mut r).unwrap();
            sum[0] = sum[0].wrapping_add(e.values[0]);
            sum[1] = sum[1].wrapping_add(e.values[1]);
        }
        let d = fp.decode_sum(&sum, n);
        let want = f64::from(n) * f64::from(x[0]);
        assert!((f64::from(d.sum[0]) - want).abs() <= f64::from(n) / 256.0);
        assert!((f64::from(d.sum[1]) + want).abs() <= f64::from(n) / 256.0);
    }
}
