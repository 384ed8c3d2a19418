//! DP-FTRL's online tree aggregation (Kairouz, McMahan, Song, Thakkar,
//! Thakurta, Xu, ICML 2021, "Practical and Private (Deep) Learning without
//! Sampling or Shuffling", after Dwork et al. 2010 and Chan, Shi, Song
//! 2011): the server releases, after every round of an epoch, a noisy
//! *prefix sum* of the epoch's per-round sums, so the model can follow
//! `θ_t = θ_0 + η S_t / n` (follow-the-regularized-leader) while each
//! client's contribution is covered by only `ceil(log2(t + 1))` noise draws
//! however long the epoch.
//!
//! **The tree.** Leaf `i` (1-based) is round `i`'s integer sum. A node at
//! level `k` with index `j >= 1` covers leaves `(j - 1) 2^k + 1 ..= j 2^k`
//! and carries its own noise vector. Step `t` releases `Σ_{i <= t} leaf_i`
//! plus the noise of the nodes of `t`'s binary decomposition ([`nodes`]):
//! one node per set bit `k` of `t`, index `t >> k`. A leaf is in at most
//! `ceil(log2(t + 1))` of the nodes released by step `t`, which is what
//! the ledger's [`Mechanism::TreeAggregation`] charges.
//!
//! **Noise.** Every node's noise is exact discrete Gaussian on the integer
//! domain, as central DP's ([`CentralDp`]): scale `σ = z Δ` with
//! `Δ = C 2^f + sqrt(d)` (randomized rounding included), `σ²` rounded up
//! for the sampler, added to signed integers outside the ring.
//!
//! **Durable noise.** A node's noise is a pure function of a secret
//! [`TreeSeed`], the epoch and the node: its sampler runs on a ChaCha20
//! stream keyed by `SHA-256(domain, seed, epoch, level, index)`. A server
//! that restarts mid-epoch therefore draws the *same* noise for a node it
//! released before (drawing it afresh would publish the node's sum under
//! two independent noises, and their mean under half the variance). The
//! server keeps the seed secret and durable; whoever learns it can remove
//! the noise from every released model.
//!
//! **No un-noised sum kept.** [`TreeNoise::add_leaf`] needs only the last
//! released noisy prefix `S_{t-1}`: `S_t = S_{t-1} + leaf_t + N(t) - N(t-1)`,
//! with `N(t)` the noise of `t`'s nodes, recomputed from the seed. So the
//! state a server keeps between rounds ([`TreeState`]) is what it already
//! released, never the exact sums.

use chacha20::ChaCha20Rng;
use rand_core::{CryptoRng, SeedableRng};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::encoding::FixedPoint;
use crate::ledger::Mechanism;
use crate::mechanism::{CentralDp, DpError};
use crate::sampler::sample_discrete_gaussian;

/// The domain separator of a node's noise key: a key for one use is never
/// a key for another.
const NODE_DOMAIN: &[u8] = b"tessera dp-ftrl tree node noise v1";

/// The secret every node's noise derives from (32 bytes). Zeroized on drop;
/// its `Debug` shows no byte.
///
/// ```
/// use tessera_dp::tree::TreeSeed;
/// let seed = TreeSeed::from_bytes([7; 32]);
/// assert_eq!(format!("{seed:?}"), "TreeSeed(..)");
/// ```
#[derive(Clone)]
pub struct TreeSeed(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for TreeSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TreeSeed(..)")
    }
}

impl TreeSeed {
    /// A seed from its bytes (the server derives it from its state key;
    /// tests pass a constant).
    pub fn from_bytes(bytes: [u8; 32]) -> TreeSeed {
        TreeSeed(Zeroizing::new(bytes))
    }

    /// A fresh seed from a CSPRNG.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> TreeSeed {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut bytes[..]);
        TreeSeed(bytes)
    }

    /// The ChaCha20 key of one node's noise in one epoch; every field has
    /// a fixed width, so no two nodes share an input.
    fn node_key(&self, epoch: u64, node: Node) -> Zeroizing<[u8; 32]> {
        let mut h = Sha256::new();
        h.update(NODE_DOMAIN);
        h.update(self.0.as_slice());
        h.update(epoch.to_be_bytes());
        h.update(node.level.to_be_bytes());
        h.update(node.index.to_be_bytes());
        Zeroizing::new(h.finalize().into())
    }
}

/// One node of an epoch's tree: level `k` (leaves are level 0) and index
/// `j >= 1`, covering leaves `(j - 1) 2^k + 1 ..= j 2^k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    /// `k`: the node covers `2^k` leaves.
    pub level: u32,
    /// `j`: the node is the `j`-th of its level.
    pub index: u64,
}

/// The nodes whose sums make up the prefix `1 ..= step`: one per set bit
/// `k` of `step`, index `step >> k`, highest level first. Empty for step 0.
///
/// ```
/// use tessera_dp::tree::{Node, nodes};
/// // 6 = 4 + 2: leaves 1..=4 (level 2) and 5..=6 (level 1, index 3).
/// assert_eq!(nodes(6), [Node { level: 2, index: 1 }, Node { level: 1, index: 3 }]);
/// assert!(nodes(0).is_empty());
/// ```
pub fn nodes(step: u64) -> Vec<Node> {
    (0..u64::BITS)
        .rev()
        .filter(|k| step >> k & 1 == 1)
        .map(|level| Node {
            level,
            index: step >> level,
        })
        .collect()
}

/// Decodes a ring sum (mod `2^bits`) to signed integers in units of `2^-f`,
/// as central DP does before it adds noise.
pub fn decode_signed(fixed_point: &FixedPoint, sum: &[u32]) -> Vec<i64> {
    let bits = u32::from(fixed_point.bits);
    let half = 1i64 << (bits - 1);
    let modulus = 1i64 << bits;
    let mask = fixed_point.value_mask();
    sum.iter()
        .map(|&w| {
            let w = i64::from(w & mask);
            if w >= half { w - modulus } else { w }
        })
        .collect()
}

/// Where an epoch's tree stands: its epoch, the steps released so far and
/// the last released noisy prefix sum `S_step` (integers, units of `2^-f`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeState {
    /// The epoch (tree) number; each has its own nodes' noise.
    pub epoch: u64,
    /// Leaves added so far in this epoch (0 before the first).
    pub step: u64,
    /// `S_step`: the exact sum of the epoch's leaves plus the noise of
    /// `step`'s nodes; all zeros at step 0.
    pub noisy_prefix: Vec<i64>,
}

impl TreeState {
    /// The start of epoch `epoch` for vectors of `dim` values.
    pub fn new(epoch: u64, dim: usize) -> TreeState {
        TreeState {
            epoch,
            step: 0,
            noisy_prefix: vec![0; dim],
        }
    }
}

/// The tree's noise: central DP's discrete Gaussian (`σ = z Δ`) on every
/// node, each node's draw a pure function of the seed, epoch and node.
#[derive(Clone, Debug)]
pub struct TreeNoise {
    seed: TreeSeed,
    central: CentralDp,
}

impl TreeNoise {
    /// The tree noise of `central`'s scale and dimension, from `seed`.
    pub fn new(seed: TreeSeed, central: CentralDp) -> TreeNoise {
        TreeNoise { seed, central }
    }

    /// `σ = z Δ`, every node's scale in units of `2^-f`.
    pub fn sigma(&self) -> f64 {
        self.central.sigma()
    }

    /// `Δ = C 2^f (1 + 2^-40) + sqrt(d)`: one client's L2 sensitivity.
    pub fn l2_sensitivity(&self) -> f64 {
        self.central.l2_sensitivity()
    }

    /// What releasing step `step` (1-based) of a tree costs, for the ledger.
    pub fn mechanism(&self, step: u64) -> Mechanism {
        Mechanism::TreeAggregation {
            sigma: self.sigma(),
            l2_sensitivity: self.l2_sensitivity(),
            step,
        }
    }

    /// The noise of `node` in `epoch`: `d` exact discrete Gaussian samples,
    /// the same on every call.
    pub fn node_noise(&self, epoch: u64, node: Node) -> Result<Vec<i64>, DpError> {
        let sigma_sq = self.central.sampler_parameter()?;
        let mut rng = ChaCha20Rng::from_seed(*self.seed.node_key(epoch, node));
        Ok((0..self.central.dim)
            .map(|_| sample_discrete_gaussian(&mut rng, sigma_sq))
            .collect())
    }

    /// `N(step)`: the summed noise of `step`'s [`nodes`] (zeros at 0).
    pub fn prefix_noise(&self, epoch: u64, step: u64) -> Result<Vec<i64>, DpError> {
        let mut total = vec![0i64; self.central.dim];
        for node in nodes(step) {
            for (t, n) in total.iter_mut().zip(self.node_noise(epoch, node)?) {
                *t = t.saturating_add(n);
            }
        }
        Ok(total)
    }

    /// Adds the next round's integer sum `leaf` to the tree: returns the
    /// state after step `state.step + 1`, whose `noisy_prefix` is the exact
    /// prefix sum plus that step's nodes' noise. `state` is not changed, so
    /// a caller that fails to keep the new state durably keeps the old one.
    pub fn add_leaf(&self, state: &TreeState, leaf: &[i64]) -> Result<TreeState, DpError> {
        let dim = self.central.dim;
        if leaf.len() != dim || state.noisy_prefix.len() != dim {
            return Err(DpError::InvalidParameter {
                name: "dim (tree leaf or prefix length)",
                value: leaf.len() as f64,
            });
        }
        let step = state.step + 1;
        let before = self.prefix_noise(state.epoch, state.step)?;
        let after = self.prefix_noise(state.epoch, step)?;
        let noisy_prefix = (0..dim)
            .map(|i| {
                state.noisy_prefix[i]
                    .saturating_add(leaf[i])
                    .saturating_add(after[i].saturating_sub(before[i]))
            })
            .collect();
        Ok(TreeState {
            epoch: state.epoch,
            step,
            noisy_prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(z: f64, dim: usize, seed: u8) -> TreeNoise {
        let fp = FixedPoint::new(1.0, 4, 24).unwrap();
        TreeNoise::new(
            TreeSeed::from_bytes([seed; 32]),
            CentralDp::new(fp, z, dim).unwrap(),
        )
    }

    #[test]
    fn nodes_cover_each_prefix_exactly_once() {
        for step in 1..=200u64 {
            let mut covered = Vec::new();
            for n in nodes(step) {
                let width = 1u64 << n.level;
                covered.extend((n.index - 1) * width + 1..=n.index * width);
            }
            assert_eq!(covered, (1..=step).collect::<Vec<_>>(), "step {step}");
            // ceil(log2(step + 1)) bounds the nodes one leaf is in.
            assert!(nodes(step).len() as u32 <= u64::BITS - step.leading_zeros());
        }
    }

    /// Every released prefix is the exact prefix sum plus the noise of
    /// exactly the listed nodes, recomputed independently here.
    #[test]
    fn prefix_sums_are_exact_sums_plus_the_listed_nodes_noise() {
        let dim = 5;
        let tree = noise(0.7, dim, 3);
        let mut state = TreeState::new(2, dim);
        let mut exact = vec![0i64; dim];
        for step in 1..=13u64 {
            let leaf: Vec<i64> = (0..dim as i64).map(|i| i * 100 - step as i64 * 7).collect();
            state = tree.add_leaf(&state, &leaf).unwrap();
            assert_eq!(state.step, step);
            for (e, l) in exact.iter_mut().zip(&leaf) {
                *e += l;
            }
            let mut want = exact.clone();
            for node in nodes(step) {
                for (w, n) in want.iter_mut().zip(tree.node_noise(2, node).unwrap()) {
                    *w += n;
                }
            }
            assert_eq!(state.noisy_prefix, want, "step {step}");
            assert_ne!(state.noisy_prefix, exact, "noise is added at step {step}");
        }
    }

    /// The noise of a node is a function of (seed, epoch, node) alone: a
    /// fresh `TreeNoise` (a restarted server) draws the same; another
    /// epoch, node or seed draws another.
    #[test]
    fn node_noise_is_durable_and_domain_separated() {
        let a = noise(2.0, 64, 9);
        let again = noise(2.0, 64, 9);
        let node = Node { level: 1, index: 3 };
        let n = a.node_noise(4, node).unwrap();
        assert_eq!(again.node_noise(4, node).unwrap(), n);
        assert_ne!(a.node_noise(5, node).unwrap(), n);
        assert_ne!(a.node_noise(4, Node { level: 3, index: 1 }).unwrap(), n);
        assert_ne!(noise(2.0, 64, 10).node_noise(4, node).unwrap(), n);
        // A tree restarted from a released state continues identically.
        let leaf = vec![5i64; 64];
        let s2 = a
            .add_leaf(&a.add_leaf(&TreeState::new(4, 64), &leaf).unwrap(), &leaf)
            .unwrap();
        let resumed = again.add_leaf(&s2.clone(), &leaf).unwrap();
        assert_eq!(resumed, a.add_leaf(&s2, &leaf).unwrap());
    }

    /// Many node draws have mean 0 and variance σ² (the exact sampler's,
    /// within a sampling tolerance).
    #[test]
    fn node_noise_has_the_stated_variance() {
        let dim = 4000;
        let tree = noise(0.5, dim, 1);
        let sigma = tree.sigma();
        let mut values = Vec::new();
        for index in 1..=10 {
            values.extend(tree.node_noise(0, Node { level: 0, index }).unwrap());
        }
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        // 40000 draws: the mean's std is σ/200, the variance's about σ²/141.
        assert!(
            mean.abs() < 5.0 * sigma / 200.0,
            "mean {mean} sigma {sigma}"
        );
        assert!(
            (var / (sigma * sigma) - 1.0).abs() < 0.04,
            "variance {var} vs sigma^2 {}",
            sigma * sigma
        );
    }

    #[test]
    fn decode_signed_reads_twos_complement_and_leaves_mismatch_refused() {
        let fp = FixedPoint::new(1.0, 4, 8).unwrap();
        assert_eq!(decode_signed(&fp, &[1, 255, 128, 127]), [1, -1, -128, 127]);
        let tree = noise(1.0, 3, 1);
        assert!(tree.add_leaf(&TreeState::new(0, 3), &[1, 2]).is_err());
        assert_eq!(
            tree.mechanism(3),
            Mechanism::TreeAggregation {
                sigma: tree.sigma(),
                l2_sensitivity: tree.l2_sensitivity(),
                step: 3
            }
        );
    }
}
