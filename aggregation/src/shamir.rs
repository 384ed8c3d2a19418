//! Shamir secret sharing of 32-byte secrets over the prime field GF(2^61 - 1).
//!
//! # Where it sits in the protocol
//!
//! In **ShareKeys** (round 1 of Bonawitz et al. CCS 2017) each client splits
//! two 32-byte secrets among its neighbours with threshold `t`: its X25519
//! masking secret key `s_sk` and its fresh self-mask seed `b`. Each share is
//! then encrypted for its receiver; the server only routes ciphertexts. In
//! **Unmasking** (round 4) survivors hand the server, per neighbour, either the
//! share of `b` (the neighbour survived) or the share of `s_sk` (it dropped).
//! The server rebuilds each secret from any `t` of them with [`LagrangeBasis`]
//! and removes the corresponding masks. Fewer than `t` shares reveal nothing
//! about the secret: every value is equally likely.
//!
//! # Why this field and this layout
//!
//! p = 2^61 - 1 is a Mersenne prime: a 122-bit product reduces with a shift, a
//! mask and an add (2^61 = 1 mod p), so no division is needed anywhere in the
//! hot paths. A 32-byte secret does not fit one element, so it is cut into
//! [`LIMBS`] little-endian limbs of 7 bytes (56 bits; the last holds 4 bytes)
//! and each limb is shared with its own independent polynomial, evaluated at
//! the same x-coordinates. Because a limb uses fewer bits than the field, a
//! rebuilt limb outside its range proves the shares were inconsistent or too
//! few; [`LagrangeBasis::reconstruct`] reports that as an error instead of
//! returning a wrong secret. A random-looking rebuild (too few shares, shares
//! of different secrets) passes that check with probability 2^-49, but a
//! change to one limb of one share slips through with probability up to 2^-5:
//! this is a safety net, not authentication. Shares travel under an AEAD,
//! which is what rejects tampering.
//!
//! Share x-coordinates are client indices + 1 (x = 0 is where the secret
//! lives), so they are nonzero `u32`s, always below p.
//!
//! # Reconstruction cost
//!
//! The Lagrange coefficients at 0 depend only on which holders answered, not
//! on the values they hold. The server builds one [`LagrangeBasis`] per holder
//! set (one field inversion, thanks to batch inversion) and reuses it for every
//! limb of every secret that set holds.
//!
//! ```
//! use chacha20::ChaCha20Rng;
//! use rand_core::SeedableRng;
//! use tessera_aggregation::shamir::{self, LagrangeBasis, ShamirError};
//!
//! let mut rng = ChaCha20Rng::from_seed([7; 32]);
//! let secret = [42u8; 32];
//! // Five neighbours (client indices 0..5, so x = 1..=5), threshold 3.
//! let shares = shamir::split(&secret, 3, &[1, 2, 3, 4, 5], &mut rng)?;
//!
//! // Any three holders rebuild the secret.
//! let basis = LagrangeBasis::new(&[2, 4, 5])?;
//! assert_eq!(basis.reconstruct(&[&shares[1], &shares[3], &shares[4]])?, secret);
//!
//! // Shares must come in the basis' order: a mix-up is refused, not misread.
//! assert!(matches!(
//!     basis.reconstruct(&[&shares[3], &shares[1], &shares[4]]),
//!     Err(ShamirError::WrongShareX { .. })
//! ));
//! # Ok::<(), ShamirError>(())
//! ```

use core::fmt;

use rand_core::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The field modulus, the Mersenne prime 2^61 - 1.
const P: u64 = (1 << 61) - 1;

/// Bytes in a shared secret: an X25519 secret key or a PRG seed.
pub const SECRET_BYTES: usize = 32;

/// Bytes per limb: 7 bytes = 56 bits, the most whole bytes below 61 bits.
const LIMB_BYTES: usize = 7;

/// Number of field elements a 32-byte secret is cut into (and so the number of
/// values each [`Share`] carries): four 7-byte limbs and one 4-byte limb.
pub const LIMBS: usize = SECRET_BYTES.div_ceil(LIMB_BYTES);

/// Bytes in the last limb, which is shorter than the others.
const LAST_LIMB_BYTES: usize = SECRET_BYTES - LIMB_BYTES * (LIMBS - 1);

/// Length of [`Share::to_bytes`]: the x-coordinate as a `u32`, then [`LIMBS`]
/// values as `u64`, all little-endian. Fixed, so a receiver can reject a
/// malformed share before looking inside it.
pub const SHARE_BYTES: usize = 4 + 8 * LIMBS;

/// Products of two canonical elements (a Lagrange weight and a share value)
/// that [`LagrangeBasis::reconstruct`] sums in one `u128` before reducing:
/// each is below 2^122, so 32 of them stay below 2^127.
const WIDE_CHUNK: usize = 32;

/// Holders [`split`] evaluates side by side: four 64-bit lanes, two SSE2 or
/// one AVX2 register per limb (8 measured no faster, 2 twice as slow).
const X_LANES: usize = 4;

// x-coordinates are u32, so every one is a valid field element below p and no
// runtime check is needed for "x >= p".
const _: () = assert!((u32::MAX as u64) < P);
const _: () = assert!(LIMBS == 5 && LAST_LIMB_BYTES == 4);

/// Why splitting, rebuilding or decoding shares failed.
///
/// Messages carry only public data (counts, x-coordinates, positions), never a
/// secret or a share value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShamirError {
    /// A threshold of 0 would let anyone rebuild the secret from nothing.
    #[error("the threshold must be at least 1")]
    ZeroThreshold,
    /// More shares would be needed than there are holders: the secret could
    /// never be rebuilt.
    #[error("threshold {threshold} exceeds the {holders} share holders")]
    ThresholdTooLarge {
        /// The requested threshold.
        threshold: usize,
        /// The number of x-coordinates given.
        holders: usize,
    },
    /// An empty holder set has nothing to rebuild from.
    #[error("no share holders were given")]
    NoHolders,
    /// x = 0 is where the polynomial holds the secret; a share there would be
    /// the secret itself.
    #[error("x-coordinate 0 is reserved for the secret")]
    ZeroX,
    /// Two holders with the same x-coordinate would get the same share (when
    /// splitting) or make interpolation undefined (when rebuilding).
    #[error("x-coordinate {x} appears more than once")]
    DuplicateX {
        /// The repeated x-coordinate.
        x: u32,
    },
    /// The shares given do not match the basis' holder set in number.
    #[error("expected {expected} shares for this basis, got {got}")]
    WrongShareCount {
        /// Holders in the basis.
        expected: usize,
        /// Shares given.
        got: usize,
    },
    /// A share is not from the holder the basis expects at that position.
    #[error("share {index} has x = {got}, but the basis expects x = {expected}")]
    WrongShareX {
        /// Position in the slice of shares.
        index: usize,
        /// The x-coordinate the basis has at that position.
        expected: u32,
        /// The share's x-coordinate.
        got: u32,
    },
    /// The rebuilt value is not a possible secret: the shares were too few,
    /// came from different secrets, or one was altered.
    #[error("the shares are inconsistent or too few to rebuild the secret")]
    Inconsistent,
    /// An encoded share has the wrong length.
    #[error("an encoded share must be {expected} bytes, got {got}")]
    BadLength {
        /// [`SHARE_BYTES`].
        expected: usize,
        /// The length received.
        got: usize,
    },
    /// An encoded share holds a value that is not a field element (>= p),
    /// which no honest [`split`] produces.
    #[error("value {limb} of an encoded share is not a field element")]
    ValueOutOfRange {
        /// Index of the offending value.
        limb: usize,
    },
}

/// One holder's share of a 32-byte secret: the evaluation at `x` of one
/// polynomial per limb.
///
/// Shares are secret material (`t` of them rebuild the secret), so they are
/// zeroized on drop and their `Debug` shows only `x`. Values are always
/// canonical field elements (below p); the fields are private so that holds.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Share {
    x: u32,
    values: [u64; LIMBS],
}

impl Share {
    /// The holder's x-coordinate (client index + 1), needed to pick the
    /// [`LagrangeBasis`] a share belongs to.
    pub fn x(&self) -> u32 {
        self.x
    }

    /// The canonical wire form: x as `u32` little-endian, then each value as
    /// `u64` little-endian. It is what gets encrypted for the receiver. The
    /// bytes are as secret as the share, so they come in a [`Zeroizing`]
    /// buffer that wipes itself when dropped.
    ///
    /// [`Zeroizing`]: zeroize::Zeroizing
    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; SHARE_BYTES]> {
        let mut out = zeroize::Zeroizing::new([0u8; SHARE_BYTES]);
        out[..4].copy_from_slice(&self.x.to_le_bytes());
        for (chunk, v) in out[4..].chunks_exact_mut(8).zip(&self.values) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Decodes [`Share::to_bytes`], refusing anything no honest [`split`]
    /// could have produced, so later arithmetic can trust its inputs.
    ///
    /// ```
    /// use tessera_aggregation::shamir::{SHARE_BYTES, ShamirError, Share};
    ///
    /// assert!(matches!(
    ///     Share::from_bytes(&[0u8; SHARE_BYTES - 1]),
    ///     Err(ShamirError::BadLength { .. })
    /// ));
    /// // x = 0 would be the secret's own coordinate.
    /// assert_eq!(Share::from_bytes(&[0u8; SHARE_BYTES]).unwrap_err(), ShamirError::ZeroX);
    /// ```
    pub fn from_bytes(bytes: &[u8]) -> Result<Share, ShamirError> {
        let bytes: &[u8; SHARE_BYTES] = bytes.try_into().map_err(|_| ShamirError::BadLength {
            expected: SHARE_BYTES,
            got: bytes.len(),
        })?;
        let (x_bytes, value_bytes) = bytes.split_at(4);
        let x = u32::from_le_bytes(x_bytes.try_into().expect("split at 4"));
        if x == 0 {
            return Err(ShamirError::ZeroX);
        }
        let mut share = Share {
            x,
            values: [0; LIMBS],
        };
        for (limb, (chunk, v)) in value_bytes
            .chunks_exact(8)
            .zip(&mut share.values)
            .enumerate()
        {
            *v = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
            if *v >= P {
                return Err(ShamirError::ValueOutOfRange { limb });
            }
        }
        Ok(share)
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("x", &self.x)
            .finish_non_exhaustive()
    }
}

/// Splits `secret` into one [`Share`] per x-coordinate in `xs` (in that
/// order), so that any `threshold` of them rebuild it and fewer reveal nothing.
///
/// Each limb gets its own polynomial of degree `threshold - 1` whose constant
/// term is the limb and whose other coefficients are uniform field elements
/// drawn from `rng` (the caller's CSPRNG; coefficients are wiped after use).
///
/// Errors: `threshold` of 0 or above `xs.len()`, an x of 0, or a repeated x.
pub fn split<R: CryptoRng + ?Sized>(
    secret: &[u8; SECRET_BYTES],
    threshold: usize,
    xs: &[u32],
    rng: &mut R,
) -> Result<Vec<Share>, ShamirError> {
    if threshold == 0 {
        return Err(ShamirError::ZeroThreshold);
    }
    if threshold > xs.len() {
        return Err(ShamirError::ThresholdTooLarge {
            threshold,
            holders: xs.len(),
        });
    }
    check_xs(xs)?;

    // coeffs[j][l] is the coefficient of x^j in limb l's polynomial.
    let mut coeffs: Zeroizing<Vec<[u64; LIMBS]>> = Zeroizing::new(Vec::with_capacity(threshold));
    coeffs.push(to_limbs(secret));
    for _ in 1..threshold {
        let mut c = [0u64; LIMBS];
        for v in &mut c {
            *v = random_element(rng);
        }
        coeffs.push(c);
    }

    // Horner's rule, f(x) = (..(c_{t-1} x + c_{t-2}) x + ..) x + c_0, run for
    // X_LANES holders at once: the same step on independent lanes, which the
    // compiler turns into SIMD 32x32-bit multiplies (x fits 32 bits, see
    // `mul_small`). The accumulators stay partly reduced below 2^63: a
    // `mul_small` result below 2^62 + 2^35 plus a coefficient below 2^61.
    let (top, rest) = coeffs.split_last().expect("threshold >= 1");
    let mut shares = Vec::with_capacity(xs.len());
    let mut acc = [[0u64; X_LANES]; LIMBS];
    for block in xs.chunks(X_LANES) {
        // Spare lanes of the last block evaluate at x = 1 and are dropped.
        let mut lane_xs = [1u32; X_LANES];
        lane_xs[..block.len()].copy_from_slice(block);
        for (a, &c) in acc.iter_mut().zip(top) {
            *a = [c; X_LANES];
        }
        for c in rest.iter().rev() {
            for (a, &c) in acc.iter_mut().zip(c) {
                for (a, &x) in a.iter_mut().zip(&lane_xs) {
                    *a = mul_small(*a, x) + c;
                }
            }
        }
        for (lane, &x) in block.iter().enumerate() {
            let mut values = [0u64; LIMBS];
            for (v, a) in values.iter_mut().zip(&acc) {
                *v = canon(a[lane]);
            }
            shares.push(Share { x, values });
        }
    }
    acc.zeroize();
    Ok(shares)
}

/// Rebuilds a secret from shares in any order, building the [`LagrangeBasis`]
/// for their holders on the fly.
///
/// Convenient for one secret; when several secrets (or several calls) share a
/// holder set, build the basis once and call [`LagrangeBasis::reconstruct`].
pub fn reconstruct(shares: &[&Share]) -> Result<[u8; SECRET_BYTES], ShamirError> {
    let xs: Vec<u32> = shares.iter().map(|s| s.x).collect();
    LagrangeBasis::new(&xs)?.reconstruct(shares)
}

/// The Lagrange coefficients at x = 0 for a fixed set of share holders.
///
/// They depend only on the holders' x-coordinates, so the server computes
/// them once per set of answering clients and reuses them for every limb and
/// every secret that set holds: rebuilding is then a dot product per limb.
/// Holds no secret (x-coordinates are public), hence the plain `Debug`.
#[derive(Debug, Clone)]
pub struct LagrangeBasis {
    xs: Vec<u32>,
    lambdas: Vec<u64>,
}

impl LagrangeBasis {
    /// Computes lambda_i = prod_{j != i} x_j / (x_j - x_i) for each holder.
    ///
    /// Costs about m^2 cheap products for m holders and a single field
    /// inversion (Montgomery's batch inversion). Errors for an empty set, an
    /// x of 0, or a repeated x.
    pub fn new(xs: &[u32]) -> Result<Self, ShamirError> {
        if xs.is_empty() {
            return Err(ShamirError::NoHolders);
        }
        if xs.contains(&0) {
            return Err(ShamirError::ZeroX);
        }
        // lambda_i = N / (x_i * d_i) with N = prod_j x_j and
        // d_i = prod_{j != i} (x_j - x_i). Every factor is an integer below
        // 2^32 in absolute value, so the products run partly reduced with
        // `mul_small`, and the sign of d_i is tracked apart: it is the parity
        // of the number of x_j smaller than x_i.
        let mut numerator = 1u64;
        for &x in xs {
            numerator = mul_small(numerator, x);
        }
        let numerator = canon(numerator);

        // Row by row over j, so the m running products are independent: they
        // vectorize instead of each waiting on its own last step.
        let mut dens: Vec<u64> = xs.iter().map(|&x| u64::from(x)).collect();
        for (j, &xj) in xs.iter().enumerate() {
            let (before, rest) = dens.split_at_mut(j);
            for (d, &xi) in before.iter_mut().zip(&xs[..j]) {
                *d = mul_small(*d, xj.abs_diff(xi));
            }
            for (d, &xi) in rest[1..].iter_mut().zip(&xs[j + 1..]) {
                *d = mul_small(*d, xj.abs_diff(xi));
            }
        }
        let negative: Vec<bool> = xs
            .iter()
            .map(|&xi| xs.iter().filter(|&&xj| xj < xi).count() % 2 == 1)
            .collect();
        for (d, &xi) in dens.iter_mut().zip(xs) {
            *d = canon(*d);
            // A product of nonzero integers below p is never 0 mod p.
            if *d == 0 {
                return Err(ShamirError::DuplicateX { x: xi });
            }
        }

        batch_invert(&mut dens);
        let lambdas = dens
            .iter()
            .zip(&negative)
            .map(|(&inv_d, &neg)| {
                let l = mul(numerator, inv_d);
                if neg { canon(P - l) } else { l }
            })
            .collect();
        Ok(LagrangeBasis {
            xs: xs.to_vec(),
            lambdas,
        })
    }

    /// The holders' x-coordinates, in the order shares must be given.
    pub fn xs(&self) -> &[u32] {
        &self.xs
    }

    /// Rebuilds the secret from exactly one share per holder, in the order of
    /// [`LagrangeBasis::xs`].
    ///
    /// Errors for a wrong count or order of shares, and
    /// [`ShamirError::Inconsistent`] when the result is not a possible secret:
    /// too few shares for the threshold or shares of different secrets (a
    /// random-looking result, missed with probability 2^-49), or an altered
    /// share (missed with probability up to 2^-5 when the change touches one
    /// limb; shares are authenticated in transit, this is a safety net).
    pub fn reconstruct(&self, shares: &[&Share]) -> Result<[u8; SECRET_BYTES], ShamirError> {
        if shares.len() != self.xs.len() {
            return Err(ShamirError::WrongShareCount {
                expected: self.xs.len(),
                got: shares.len(),
            });
        }
        for (index, (share, &expected)) in shares.iter().zip(&self.xs).enumerate() {
            if share.x != expected {
                return Err(ShamirError::WrongShareX {
                    index,
                    expected,
                    got: share.x,
                });
            }
        }

        let mut limbs = [0u64; LIMBS];
        let mut wide = [0u128; LIMBS];
        for (share_chunk, lambda_chunk) in shares
            .chunks(WIDE_CHUNK)
            .zip(self.lambdas.chunks(WIDE_CHUNK))
        {
            wide = [0; LIMBS];
            for (share, &lambda) in share_chunk.iter().zip(lambda_chunk) {
                let lambda = u128::from(lambda);
                for (w, &v) in wide.iter_mut().zip(&share.values) {
                    *w += lambda * u128::from(v);
                }
            }
            for (limb, &w) in limbs.iter_mut().zip(&wide) {
                *limb = canon(*limb + reduce_wide(w));
            }
        }
        wide.zeroize();
        let result = from_limbs(&limbs);
        limbs.zeroize();
        result
    }
}

/// Checks that holder x-coordinates are nonzero and distinct.
fn check_xs(xs: &[u32]) -> Result<(), ShamirError> {
    if xs.contains(&0) {
        return Err(ShamirError::ZeroX);
    }
    let mut sorted = xs.to_vec();
    sorted.sort_unstable();
    match sorted.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(ShamirError::DuplicateX { x: w[0] }),
        None => Ok(()),
    }
}

/// Cuts a secret into little-endian limbs of [`LIMB_BYTES`] bytes.
fn to_limbs(secret: &[u8; SECRET_BYTES]) -> [u64; LIMBS] {
    let mut limbs = [0u64; LIMBS];
    for (limb, chunk) in limbs.iter_mut().zip(secret.chunks(LIMB_BYTES)) {
        let mut buf = [0u8; 8];
        buf[..chunk.len()].copy_from_slice(chunk);
        *limb = u64::from_le_bytes(buf);
        buf.zeroize();
    }
    limbs
}

/// Inverse of [`to_limbs`], refusing limbs too large to have come from it.
fn from_limbs(limbs: &[u64; LIMBS]) -> Result<[u8; SECRET_BYTES], ShamirError> {
    let mut secret = [0u8; SECRET_BYTES];
    for (i, (&limb, chunk)) in limbs.iter().zip(secret.chunks_mut(LIMB_BYTES)).enumerate() {
        let bits = if i + 1 == LIMBS {
            8 * LAST_LIMB_BYTES
        } else {
            8 * LIMB_BYTES
        };
        if limb >> bits != 0 {
            secret.zeroize();
            return Err(ShamirError::Inconsistent);
        }
        chunk.copy_from_slice(&limb.to_le_bytes()[..chunk.len()]);
    }
    Ok(secret)
}

/// A uniform field element: the top 61 bits of a `u64`, rejecting the one
/// value (2^61 - 1 = p) outside the field, so there is no modulo bias.
fn random_element<R: CryptoRng + ?Sized>(rng: &mut R) -> u64 {
    loop {
        let v = rng.next_u64() >> 3;
        if v < P {
            return v;
        }
    }
}

/// Partly reduces `z < 2^124` using 2^61 = 1 mod p: the result is congruent
/// to `z` and below 2^61 + (z >> 61) (no overflow: below 2^63 + 2^61), so below
/// 2^62 for a product of two canonical elements.
#[inline(always)]
fn fold(z: u128) -> u64 {
    (z as u64 & P) + (z >> 61) as u64
}

/// `a * f` for a partly reduced `a < 2^63` and a small factor, partly reduced
/// (below 2^62 + 2^35, so it can be fed back in). It splits `a` into 32-bit
/// halves so that only 64-bit multiplies are needed, which vectorize.
#[inline(always)]
fn mul_small(a: u64, f: u32) -> u64 {
    let f = u64::from(f);
    let lo = (a & 0xffff_ffff) * f; // below 2^64
    let hi = (a >> 32) * f; // below 2^63; a * f = hi * 2^32 + lo
    // hi * 2^32 = (hi >> 29) * 2^61 + (hi mod 2^29) * 2^32, and 2^61 = 1.
    (lo & P) + (lo >> 61) + (hi >> 29) + ((hi & ((1 << 29) - 1)) << 32)
}

/// Fully reduces any `u64` to the canonical representative in [0, p).
#[inline(always)]
fn canon(a: u64) -> u64 {
    let a = (a & P) + (a >> 61); // below 2^61 + 8
    if a >= P { a - P } else { a }
}

/// Fully reduces any `u128`, splitting it into 61-bit pieces since
/// 2^122 = 2^61 = 1 mod p.
#[inline(always)]
fn reduce_wide(z: u128) -> u64 {
    let lo = z as u64 & P;
    let mid = (z >> 61) as u64 & P;
    let hi = (z >> 122) as u64; // below 2^6
    canon(lo + mid + hi)
}

/// Product of two field elements (each below 2^62), canonical.
#[inline(always)]
fn mul(a: u64, b: u64) -> u64 {
    canon(fold(u128::from(a) * u128::from(b)))
}

/// `a^(2^n)` by repeated squaring.
fn square_n(mut a: u64, n: u32) -> u64 {
    for _ in 0..n {
        a = mul(a, a);
    }
    a
}

/// Multiplicative inverse by Fermat, a^(p-2) with p - 2 = 2^61 - 3, through an
/// addition chain of 60 squarings and 10 products. Maps 0 to 0; callers only
/// invert values they know are nonzero.
fn inv(a: u64) -> u64 {
    // e_k = a^(2^k - 1)
    let e2 = mul(square_n(a, 1), a);
    let e3 = mul(square_n(e2, 1), a);
    let e6 = mul(square_n(e3, 3), e3);
    let e12 = mul(square_n(e6, 6), e6);
    let e24 = mul(square_n(e12, 12), e12);
    let e48 = mul(square_n(e24, 24), e24);
    let e54 = mul(square_n(e48, 6), e6);
    let e57 = mul(square_n(e54, 3), e3);
    let e59 = mul(square_n(e57, 2), e2);
    // 4 * (2^59 - 1) + 1 = 2^61 - 3
    mul(square_n(e59, 2), a)
}

/// Replaces each (nonzero, canonical) element by its inverse with one field
/// inversion and 3(m - 1) products (Montgomery's trick).
fn batch_invert(values: &mut [u64]) {
    if values.is_empty() {
        return;
    }
    // prefix[i] = values[0] * ... * values[i]
    let mut prefix = Vec::with_capacity(values.len());
    let mut running = 1u64;
    for &v in values.iter() {
        running = mul(running, v);
        prefix.push(running);
    }
    // Walk back: `inv_running` is the inverse of values[0] * ... * values[i].
    let mut inv_running = inv(running);
    for i in (1..values.len()).rev() {
        let inv_i = mul(inv_running, prefix[i - 1]);
        inv_running = mul(inv_running, values[i]);
        values[i] = inv_i;
    }
    values[0] = inv_running;
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20::ChaCha20Rng;
    use proptest::prelude::*;
    use rand_core::{Infallible, SeedableRng, TryCryptoRng, TryRng};

    /// Slow reference product: the textbook `%` on u128.
    fn ref_mul(a: u64, b: u64) -> u64 {
        ((u128::from(a) * u128::from(b)) % u128::from(P)) as u64
    }

    /// Slow reference power by square-and-multiply over `ref_mul`.
    fn ref_pow(mut a: u64, mut e: u64) -> u64 {
        let mut r = 1;
        while e > 0 {
            if e & 1 == 1 {
                r = ref_mul(r, a);
            }
            a = ref_mul(a, a);
            e >>= 1;
        }
        r
    }

    fn refs(shares: &[Share]) -> Vec<&Share> {
        shares.iter().collect()
    }

    /// Hands out a fixed list of words, so a test knows the coefficients.
    struct ScriptedRng(Vec<u64>);

    impl TryRng for ScriptedRng {
        type Error = Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Infallible> {
            // `split` draws whole u64 words; a u32 draw would mean the
            // scripted coefficients no longer line up, so fail loudly.
            panic!("split is expected to draw u64 words only")
        }
        fn try_next_u64(&mut self) -> Result<u64, Infallible> {
            Ok(self.0.remove(0))
        }
        fn try_fill_bytes(&mut self, _: &mut [u8]) -> Result<(), Infallible> {
            panic!("split is expected to draw u64 words only")
        }
    }
    // Only for tests: it is of course not unpredictable.
    impl TryCryptoRng for ScriptedRng {}

    const EDGES: [u64; 6] = [0, 1, 2, P - 2, P - 1, 1 << 60];

    #[test]
    fn mul_matches_reference() {
        let mut rng = ChaCha20Rng::from_seed([1; 32]);
        let mut samples: Vec<u64> = EDGES.to_vec();
        samples.extend((0..200).map(|_| random_element(&mut rng)));
        for &a in &samples {
            for &b in &samples {
                assert_eq!(mul(a, b), ref_mul(a, b), "{a} * {b}");
            }
        }
    }

    #[test]
    fn inv_matches_reference() {
        let mut rng = ChaCha20Rng::from_seed([2; 32]);
        let mut samples: Vec<u64> = EDGES[1..].to_vec();
        samples.extend((0..500).map(|_| random_element(&mut rng)));
        for &a in &samples {
            let i = inv(a);
            assert_eq!(i, ref_pow(a, P - 2), "inv({a})");
            assert_eq!(ref_mul(a, i), 1, "a * inv(a) for {a}");
        }
        assert_eq!(inv(1), 1);
        // p - 1 = -1 is its own inverse.
        assert_eq!(inv(P - 1), P - 1);
        assert_eq!(inv(0), 0);
    }

    #[test]
    fn reductions_match_reference() {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let mut words: Vec<u128> = vec![
            0,
            1,
            u128::from(P),
            u128::from(P) + 1,
            u128::from(u64::MAX),
            u128::MAX,
            u128::from(P) * u128::from(P),
        ];
        for _ in 0..1000 {
            words.push((u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64()));
        }
        for &z in &words {
            assert_eq!(u128::from(reduce_wide(z)), z % u128::from(P), "{z}");
            let low = z as u64;
            assert_eq!(u128::from(canon(low)), u128::from(low) % u128::from(P));
            let below_124 = z >> 4;
            assert_eq!(
                u128::from(fold(below_124)) % u128::from(P),
                below_124 % u128::from(P)
            );
        }
    }

    #[test]
    fn mul_small_matches_reference() {
        let mut rng = ChaCha20Rng::from_seed([9; 32]);
        let mut lefts = vec![0, 1, P - 1, P, (1 << 63) - 1, (1 << 62) + (1 << 35)];
        lefts.extend((0..300).map(|_| rng.next_u64() >> 1));
        let mut factors = vec![0, 1, 2, u32::MAX, u32::MAX - 1, 1 << 31];
        factors.extend((0..50).map(|_| rng.next_u32()));
        for &a in &lefts {
            for &f in &factors {
                let r = mul_small(a, f);
                assert!(r < (1 << 62) + (1 << 35), "{a} * {f} not partly reduced");
                assert_eq!(r % P, ref_mul(a % P, u64::from(f)), "{a} * {f}");
                // Fed back in, as the running products do.
                assert_eq!(mul_small(r, f) % P, ref_mul(r % P, u64::from(f)));
            }
        }
    }

    #[test]
    fn batch_invert_matches_single_inversions() {
        let mut rng = ChaCha20Rng::from_seed([4; 32]);
        for len in [1, 2, 3, 17] {
            let values: Vec<u64> = (0..len).map(|_| random_element(&mut rng) | 1).collect();
            let mut inverted = values.clone();
            batch_invert(&mut inverted);
            for (&v, &i) in values.iter().zip(&inverted) {
                assert_eq!(ref_mul(v, i), 1);
            }
        }
        batch_invert(&mut []);
    }

    #[test]
    fn limb_layout_is_seven_byte_little_endian() {
        let secret: [u8; 32] = core::array::from_fn(|i| i as u8 + 1);
        let limbs = to_limbs(&secret);
        assert_eq!(limbs[0], 0x07_06_05_04_03_02_01);
        assert_eq!(limbs[1], 0x0e_0d_0c_0b_0a_09_08);
        assert_eq!(limbs[4], 0x20_1f_1e_1d);
        assert_eq!(from_limbs(&limbs).unwrap(), secret);
        assert_eq!(from_limbs(&to_limbs(&[0xff; 32])).unwrap(), [0xff; 32]);

        let mut too_big = limbs;
        too_big[0] = 1 << 56;
        assert_eq!(from_limbs(&too_big), Err(ShamirError::Inconsistent));
        let mut too_big = limbs;
        too_big[4] = 1 << 32;
        assert_eq!(from_limbs(&too_big), Err(ShamirError::Inconsistent));
    }

    /// f_l(x) = s_l + a_l x for each limb, shares at x = 1, 2 and 7, with the
    /// coefficients fed through a scripted RNG and the expected values worked
    /// out here by hand.
    #[test]
    fn degree_one_example_by_hand() {
        let mut secret = [0u8; 32];
        secret[0] = 5; // limb 0 = 5
        secret[7] = 1; // limb 1 = 1
        // limbs 2 and 3 = 0; limb 4 = 0xffff_ffff
        secret[28..].copy_from_slice(&[0xff; 4]);
        // Coefficients a_l = word >> 3 (split keeps the top 61 bits); the first
        // word has all 61 bits set (= p) and must be rejected.
        let words = vec![u64::MAX, 3 << 3, 0, (P - 1) << 3, 10 << 3, 1 << 3];
        let mut rng = ScriptedRng(words);
        let shares = split(&secret, 2, &[1, 2, 7], &mut rng).unwrap();
        assert!(rng.0.is_empty(), "one rejection, then five coefficients");
        let a = [3u64, 0, P - 1, 10, 1];
        let s = [5u64, 1, 0, 0, 0xffff_ffff];
        // Limb 2: 0 + (p - 1) x = -x mod p.
        assert_eq!(shares[0].values, [8, 1, P - 1, 10, 0x1_0000_0000]);
        assert_eq!(shares[1].values, [11, 1, P - 2, 20, 0x1_0000_0001]);
        assert_eq!(shares[2].values, [26, 1, P - 7, 70, 0x1_0000_0006]);
        for (share, x) in shares.iter().zip([1u64, 2, 7]) {
            for l in 0..LIMBS {
                assert_eq!(share.values[l], (s[l] + a[l] * x) % P);
            }
        }
        // From x = 1 and 2: lambda = (2, -1), so f(0) = 2 f(1) - f(2).
        let basis = LagrangeBasis::new(&[1, 2]).unwrap();
        assert_eq!(basis.lambdas, vec![2, P - 1]);
        assert_eq!(
            basis.reconstruct(&[&shares[0], &shares[1]]).unwrap(),
            secret
        );
        // From x = 2 and 7: lambda = (7/5, -2/5).
        let basis = LagrangeBasis::new(&[2, 7]).unwrap();
        let inv5 = ref_pow(5, P - 2);
        assert_eq!(basis.lambdas, vec![ref_mul(7, inv5), P - ref_mul(2, inv5)]);
        assert_eq!(reconstruct(&[&shares[2], &shares[1]]).unwrap(), secret);
        // One share of a degree-1 polynomial is just f(x) at x = 1; read as
        // f(0) it is limb 4 = 2^32, out of range.
        assert_eq!(reconstruct(&[&shares[0]]), Err(ShamirError::Inconsistent));
    }

    #[test]
    fn threshold_one_shares_are_the_limbs() {
        let secret = [9u8; 32];
        let mut rng = ChaCha20Rng::from_seed([5; 32]);
        let shares = split(&secret, 1, &[3, 8], &mut rng).unwrap();
        for share in &shares {
            assert_eq!(share.values, to_limbs(&secret));
            assert_eq!(reconstruct(&[share]).unwrap(), secret);
        }
    }

    #[test]
    fn lagrange_weights_match_direct_formula() {
        let xs = [5u32, 1, 9, 2, 100, 31];
        let basis = LagrangeBasis::new(&xs).unwrap();
        for (i, &xi) in xs.iter().enumerate() {
            let mut num = 1u64;
            let mut den = 1u64;
            for (j, &xj) in xs.iter().enumerate() {
                if i != j {
                    num = ref_mul(num, u64::from(xj));
                    den = ref_mul(den, (u64::from(xj) + P - u64::from(xi)) % P);
                }
            }
            assert_eq!(basis.lambdas[i], ref_mul(num, ref_pow(den, P - 2)));
        }
        // The weights of any basis sum to 1: it interpolates constants exactly.
        let sum = basis.lambdas.iter().fold(0u64, |s, &l| (s + l) % P);
        assert_eq!(sum, 1);
    }

    #[test]
    fn split_rejects_bad_parameters() {
        let mut rng = ChaCha20Rng::from_seed([6; 32]);
        let s = [1u8; 32];
        assert_eq!(
            split(&s, 0, &[1, 2], &mut rng).unwrap_err(),
            ShamirError::ZeroThreshold
        );
        assert_eq!(
            split(&s, 3, &[1, 2], &mut rng).unwrap_err(),
            ShamirError::ThresholdTooLarge {
                threshold: 3,
                holders: 2
            }
        );
        assert_eq!(
            split(&s, 1, &[], &mut rng).unwrap_err(),
            ShamirError::ThresholdTooLarge {
                threshold: 1,
                holders: 0
            }
        );
        assert_eq!(
            split(&s, 2, &[1, 0, 3], &mut rng).unwrap_err(),
            ShamirError::ZeroX
        );
        assert_eq!(
            split(&s, 2, &[4, 2, 9, 2], &mut rng).unwrap_err(),
            ShamirError::DuplicateX { x: 2 }
        );
        // Large x are fine: all u32 are below p.
        let shares = split(&s, 2, &[u32::MAX, u32::MAX - 1], &mut rng).unwrap();
        assert_eq!(reconstruct(&refs(&shares)).unwrap(), s);
    }

    #[test]
    fn basis_rejects_bad_holder_sets_and_misordered_shares() {
        assert_eq!(LagrangeBasis::new(&[]).unwrap_err(), ShamirError::NoHolders);
        assert_eq!(LagrangeBasis::new(&[3, 0]).unwrap_err(), ShamirError::ZeroX);
        assert_eq!(
            LagrangeBasis::new(&[3, 8, 3]).unwrap_err(),
            ShamirError::DuplicateX { x: 3 }
        );

        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        let secret = [0x5a; 32];
        let shares = split(&secret, 2, &[1, 2, 3], &mut rng).unwrap();
        let basis = LagrangeBasis::new(&[1, 3]).unwrap();
        assert_eq!(basis.xs(), &[1, 3]);
        assert_eq!(
            basis.reconstruct(&[&shares[0]]).unwrap_err(),
            ShamirError::WrongShareCount {
                expected: 2,
                got: 1
            }
        );
        assert_eq!(
            basis.reconstruct(&[&shares[0], &shares[1]]).unwrap_err(),
            ShamirError::WrongShareX {
                index: 1,
                expected: 3,
                got: 2
            }
        );
        assert_eq!(
            basis.reconstruct(&[&shares[0], &shares[2]]).unwrap(),
            secret
        );
        // The same basis serves another secret held by the same holders.
        let other = [0xc3; 32];
        let shares = split(&other, 2, &[1, 2, 3], &mut rng).unwrap();
        assert_eq!(basis.reconstruct(&[&shares[0], &shares[2]]).unwrap(), other);
    }

    #[test]
    fn share_bytes_round_trip_and_layout() {
        let share = Share {
            x: 0x0102_0304,
            values: [0, 1, P - 1, 0x0a0b, 7],
        };
        let bytes = share.to_bytes();
        assert_eq!(bytes.len(), 44);
        assert_eq!(&bytes[..4], &[4, 3, 2, 1]); // x, little-endian
        assert_eq!(&bytes[4..12], &[0; 8]); // values[0] = 0
        assert_eq!(&bytes[12..20], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            &bytes[20..28],
            &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f]
        ); // p - 1
        assert_eq!(&bytes[28..30], &[0x0b, 0x0a]);
        let back = Share::from_bytes(bytes.as_slice()).unwrap();
        assert_eq!(back.x(), share.x());
        assert_eq!(back.values, share.values);
    }

    #[test]
    fn share_decoding_rejects_malformed_input() {
        let mut rng = ChaCha20Rng::from_seed([8; 32]);
        let shares = split(&[3; 32], 2, &[1, 2], &mut rng).unwrap();
        let good = shares[1].to_bytes();
        assert!(Share::from_bytes(good.as_slice()).is_ok());
        for len in [0, 4, SHARE_BYTES - 1, SHARE_BYTES + 1] {
            let bytes = vec![1u8; len];
            assert_eq!(
                Share::from_bytes(bytes.as_slice()).unwrap_err(),
                ShamirError::BadLength {
                    expected: SHARE_BYTES,
                    got: len
                }
            );
        }
        let mut zero_x = good.clone();
        zero_x[..4].fill(0);
        assert_eq!(
            Share::from_bytes(zero_x.as_slice()).unwrap_err(),
            ShamirError::ZeroX
        );
        for limb in 0..LIMBS {
            for bad in [P, P + 1, u64::MAX] {
                let mut b = good.clone();
                b[4 + 8 * limb..12 + 8 * limb].copy_from_slice(&bad.to_le_bytes());
                assert_eq!(
                    Share::from_bytes(b.as_slice()).unwrap_err(),
                    ShamirError::ValueOutOfRange { limb }
                );
            }
        }
    }

    #[test]
    fn debug_hides_share_values() {
        let share = Share {
            x: 12,
            values: [123_456_789; LIMBS],
        };
        let shown = format!("{share:?}");
        assert!(shown.contains("12"));
        assert!(!shown.contains("123456789"), "{shown}");
    }

    /// (secret, n, t, RNG seed, shuffled share indices)
    fn setup() -> impl Strategy<Value = ([u8; 32], usize, usize, [u8; 32], Vec<usize>)> {
        (1..=30usize)
            .prop_flat_map(|n| (Just(n), 1..=n))
            .prop_flat_map(|(n, t)| {
                (
                    any::<[u8; 32]>(),
                    Just(n),
                    Just(t),
                    any::<[u8; 32]>(),
                    Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                )
            })
    }

    proptest! {
        #[test]
        fn any_t_shares_rebuild_fewer_do_not(
            (secret, n, t, seed, order) in setup(),
            first_x in 1u32..1000,
        ) {
            let mut rng = ChaCha20Rng::from_seed(seed);
            let xs: Vec<u32> = (0..n as u32).map(|i| first_x + i).collect();
            let shares = split(&secret, t, &xs, &mut rng).unwrap();
            prop_assert_eq!(shares.len(), n);
            let pick = |k: usize| -> Vec<&Share> { order[..k].iter().map(|&i| &shares[i]).collect() };

            // Exactly t, in a random order and a random subset.
            prop_assert_eq!(reconstruct(&pick(t)).unwrap(), secret);
            // More than t (all of them) as well.
            prop_assert_eq!(reconstruct(&pick(n)).unwrap(), secret);
            // And through an explicit basis.
            let chosen = pick(t);
            let xs_t: Vec<u32> = chosen.iter().map(|s| s.x()).collect();
            let basis = LagrangeBasis::new(&xs_t).unwrap();
            prop_assert_eq!(basis.reconstruct(&chosen).unwrap(), secret);

            // t - 1 shares: an error or a different value, never the secret.
            if t >= 2 {
                let too_few = pick(t - 1);
                prop_assert_ne!(reconstruct(&too_few).ok(), Some(secret));
            }
        }

        #[test]
        fn a_tampered_share_never_yields_the_secret(
            (secret, n, t, seed, order) in setup(),
            which in any::<prop::sample::Index>(),
            limb in 0..LIMBS,
            delta in 1..P,
        ) {
            let mut rng = ChaCha20Rng::from_seed(seed);
            let xs: Vec<u32> = (1..=n as u32).collect();
            let mut shares = split(&secret, t, &xs, &mut rng).unwrap();
            let chosen = &order[..t];
            let victim = chosen[which.index(t)];
            let v = &mut shares[victim].values[limb];
            *v = (*v + delta) % P;
            // Through the wire form, as a server would receive it.
            let decoded: Vec<Share> = chosen
                .iter()
                .map(|&i| Share::from_bytes(shares[i].to_bytes().as_slice()).unwrap())
                .collect();
            // Every Lagrange weight is nonzero, so the rebuilt limb moves by
            // lambda * delta != 0: the result must differ or be refused.
            prop_assert_ne!(reconstruct(&refs(&decoded)).ok(), Some(secret));
        }
    }
}
