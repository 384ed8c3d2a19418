//! Randomized Walsh–Hadamard rotation of updates before rounding.
//!
//! Distributed DP rounds each client's scaled update to integers and the
//! ring must hold the largest coordinate of the sum. An update whose mass
//! sits in a few coordinates needs many bits; a random rotation spreads it
//! so every coordinate is about `‖x‖ / sqrt(d)` (Kairouz, Liu, Steinke 2021,
//! section 4). Clients rotate with [`Rotation::forward`] before encoding, the
//! server un-rotates the decoded sum with [`Rotation::inverse`]: the rotation
//! is linear, so the inverse of the sum is the sum of the inputs.
//!
//! The rotation is `H D / sqrt(p)` on the input padded with zeros to the next
//! power of two `p`: `D` is a diagonal of random signs and `H` the
//! Walsh–Hadamard matrix, applied in `O(p log p)`. The signs come from a
//! seed that is public per round (it is part of the round configuration), so
//! every client applies the same rotation; it hides nothing and needs no
//! secrecy, only to be chosen independently of the updates.

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// One round's random rotation: the dimension, its power-of-two padding and
/// the public seed of the signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    dim: usize,
    padded: usize,
    signs_seed: [u8; 32],
}

impl Rotation {
    /// The rotation of `dim`-dimensional vectors with signs drawn from
    /// `ChaCha20Rng::from_seed(seed)`.
    ///
    /// # Panics
    /// If `dim` is zero or its next power of two overflows `usize`.
    pub fn new(dim: usize, seed: [u8; 32]) -> Self {
        assert!(dim > 0, "a rotation needs a positive dimension");
        let padded = dim
            .checked_next_power_of_two()
            .expect("dimension too large to pad to a power of two");
        Self {
            dim,
            padded,
            signs_seed: seed,
        }
    }

    /// The input dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The output dimension: `dim` rounded up to a power of two. Rotated
    /// vectors are this long, and that is what clients encode and mask.
    pub fn padded(&self) -> usize {
        self.padded
    }

    /// The public seed of the signs.
    pub fn signs_seed(&self) -> [u8; 32] {
        self.signs_seed
    }

    /// The random signs, one bit of the seeded ChaCha20 stream each.
    fn signs(&self) -> Vec<f64> {
        let mut rng = ChaCha20Rng::from_seed(self.signs_seed);
        let mut out = Vec::with_capacity(self.padded);
        while out.len() < self.padded {
            let word = rng.next_u64();
            let take = (self.padded - out.len()).min(64);
            out.extend((0..take).map(|i| if (word >> i) & 1 == 1 { -1.0 } else { 1.0 }));
        }
        out
    }

    /// `H D x / sqrt(p)` for `x` padded with zeros: an orthogonal map, so
    /// norms and inner products are preserved.
    ///
    /// # Panics
    /// If `x.len() != dim`.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        assert_eq!(x.len(), self.dim, "rotation input has the wrong length");
        let mut v: Vec<f64> = self
            .signs()
            .into_iter()
            .zip(
                x.iter()
                    .map(|&a| f64::from(a))
                    .chain(std::iter::repeat(0.0)),
            )
            .map(|(s, a)| s * a)
            .collect();
        fwht(&mut v);
        let scale = 1.0 / (self.padded as f64).sqrt();
        v.into_iter().map(|a| (a * scale) as f32).collect()
    }

    /// `D H y / sqrt(p)`, the transpose (and inverse) of
    /// [`forward`](Self::forward), truncated to the first `dim` entries.
    ///
    /// # Panics
    /// If `y.len() != padded`.
    pub fn inverse(&self, y: &[f32]) -> Vec<f32> {
        assert_eq!(y.len(), self.padded, "rotated vector has the wrong length");
        let mut v: Vec<f64> = y.iter().map(|&a| f64::from(a)).collect();
        fwht(&mut v);
        let scale = 1.0 / (self.padded as f64).sqrt();
        v.iter()
            .zip(self.signs())
            .take(self.dim)
            .map(|(a, s)| (a * s * scale) as f32)
            .collect()
    }
}

/// The unnormalized fast Walsh–Hadamard transform, in place; `v.len()` is a
/// power of two. `H` is symmetric and `H H = p I`.
fn fwht(v: &mut [f64]) {
    let n = v.len();
    debug_assert!(n.is_power_of_two());
    let mut h = 1;
    while h < n {
        for block in v.chunks_exact_mut(2 * h) {
            let (a, b) = block.split_at_mut(h);
            for (x, y) in a.iter_mut().zip(b.iter_mut()) {
                let (s, d) = (*x + *y, *x - *y);
                *x = s;
                *y = d;
            }
        }
        h *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_vec(len: usize, seed: u8) -> Vec<f32> {
        let mut rng = ChaCha20Rng::from_seed([seed; 32]);
        (0..len)
            .map(|_| (rng.next_u32() as f64 / f64::from(u32::MAX) * 2.0 - 1.0) as f32)
            .collect()
    }

    fn norm(x: &[f32]) -> f64 {
        x.iter().map(|&a| f64::from(a).powi(2)).sum::<f64>().sqrt()
    }

    #[test]
    fn round_trip_and_norm() {
        for (dim, padded) in [(1, 1), (7, 8), (1000, 1024), (4096, 4096)] {
            let rot = Rotation::new(dim, [9; 32]);
            assert_eq!(rot.padded(), padded);
            let x = random_vec(dim, dim as u8);
            let y = rot.forward(&x);
            assert_eq!(y.len(), padded);
            let nx = norm(&x);
            assert!((norm(&y) - nx).abs() <= 1e-6 * nx, "dim {dim}");
            let back = rot.inverse(&y);
            assert_eq!(back.len(), dim);
            let err: Vec<f32> = back.iter().zip(&x).map(|(a, b)| a - b).collect();
            assert!(norm(&err) <= 1e-5 * nx, "dim {dim}: error {}", norm(&err));
        }
    }

    #[test]
    fn matches_explicit_hadamard_matrix() {
        // H_ij = (-1)^popcount(i & j), applied naively to D x / sqrt(8).
        let rot = Rotation::new(5, [3; 32]);
        let x = random_vec(5, 1);
        let signs = rot.signs();
        let y = rot.forward(&x);
        for (i, yi) in y.iter().enumerate() {
            let want: f64 = (0..5)
                .map(|j| {
                    let h = if (i & j).count_ones() % 2 == 0 {
                        1.0
                    } else {
                        -1.0
                    };
                    h * signs[j] * f64::from(x[j])
                })
                .sum::<f64>()
                / 8f64.sqrt();
            assert!((f64::from(*yi) - want).abs() < 1e-6);
        }
    }

    #[test]
    fn one_hot_is_spread() {
        let rot = Rotation::new(1000, [5; 32]);
        let mut x = vec![0f32; 1000];
        x[123] = 1.0;
        let y = rot.forward(&x);
        let want = 1.0 / 1024f64.sqrt();
        for v in y {
            assert!((f64::from(v).abs() - want).abs() < 1e-7);
        }
    }

    #[test]
    fn signs_depend_on_seed_and_are_balanced() {
        let a = Rotation::new(4096, [1; 32]).signs();
        let b = Rotation::new(4096, [2; 32]).signs();
        assert_ne!(a, b);
        let neg = a.iter().filter(|&&s| s < 0.0).count() as f64;
        // Binomial(4096, 1/2): sd 32.
        assert!((neg - 2048.0).abs() < 160.0);
        assert_eq!(Rotation::new(4096, [1; 32]).signs(), a);
    }

    #[test]
    fn linear_so_sums_commute() {
        let rot = Rotation::new(300, [8; 32]);
        let (x, z) = (random_vec(300, 1), random_vec(300, 2));
        let sum_rot: Vec<f32> = rot
            .forward(&x)
            .iter()
            .zip(rot.forward(&z))
            .map(|(a, b)| a + b)
            .collect();
        let back = rot.inverse(&sum_rot);
        for ((g, a), b) in back.iter().zip(&x).zip(&z) {
            assert!((g - (a + b)).abs() < 1e-5);
        }
    }
}
