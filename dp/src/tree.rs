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
//! for the sampler, and added *inside the ring* before anything is decoded
//! (see "Noise before decoding" below).
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
//!
//! **Noise before decoding.** A leaf is a ring element (the round's
//! unmasked sum mod `2^bits`), and colluding clients can write any ring
//! value into it, for example one that parks a coordinate right below the
//! wrap point so that one honest update would flip its decoded sign.
//! Decoding the leaf first and noising after would then move the release by
//! the ring's width, far past `Δ`. So the increment
//! `leaf_t + N(t) - N(t-1)` is formed in the ring and only then decoded:
//! the released `S_t mod 2^bits` is the tree mechanism run on integer
//! representatives of the leaves (the one with the honest client is the
//! other plus its `q`, `||q|| <= Δ`) reduced mod `2^bits`, and everything
//! else (the decoded increment, `S_t` in `i64`, the model) is
//! post-processing of it and of the earlier releases. The price is that
//! the ring must hold one round's sum plus the noise of up to
//! [`max_increment_nodes`] nodes, or an honest round wraps; the server
//! sizes it so ([`crate::mechanism::choose_bits_with_noise`]).

use chacha20::ChaCha20Rng;
use rand_core::{CryptoRng, SeedableRng};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::encoding::FixedPoint;
use crate::ledger::Mechanism;
use crate::mechanism::{CentralDp, DpError, add_in_ring_and_decode};
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

/// The most nodes whose noise one step's increment `N(t) - N(t-1)` draws
/// on, over the steps `1..=steps` of a tree: `floor(log2 steps) + 1`.
///
/// Step `t` with `j` trailing zero bits releases one node at level `j`
/// that `t - 1` did not, and `t - 1` released the `j` nodes of levels
/// `0..j` that `t` drops; every higher node is shared. So the increment
/// carries `j + 1` independent node draws, most (`floor(log2 steps) + 1`)
/// at the largest power of two within `steps`. The ring a tree's round is
/// summed in must hold that much noise on top of the round's sum.
///
/// ```
/// use tessera_dp::tree::max_increment_nodes;
/// // Step 4 releases the level-2 node and drops step 3's two nodes.
/// assert_eq!(max_increment_nodes(4), 3);
/// assert_eq!(max_increment_nodes(7), 3);
/// assert_eq!(max_increment_nodes(1), 1);
/// ```
pub fn max_increment_nodes(steps: u64) -> u32 {
    u64::BITS - steps.max(1).leading_zeros()
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

    /// Adds the next round's unmasked sum `leaf` (ring elements of `ring`,
    /// the round's fixed point) to the tree: returns the state after step
    /// `state.step + 1`, whose `noisy_prefix` is the exact prefix sum plus
    /// that step's nodes' noise. The increment's noise is added in the ring
    /// and decoded after (see the module), so the prefix is exact only
    /// while no increment wraps, which the ring's width makes unlikely.
    /// `state` is not changed, so a caller that fails to keep the new state
    /// durably keeps the old one.
    pub fn add_leaf(
        &self,
        state: &TreeState,
        ring: &FixedPoint,
        leaf: &[u32],
    ) -> Result<TreeState, DpError> {
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
                let noise = after[i].saturating_sub(before[i]);
                state.noisy_prefix[i].saturating_add(add_in_ring_and_decode(ring, leaf[i], noise))
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

    /// The ring the tests' leaves are summed in.
    fn fp() -> FixedPoint {
        FixedPoint::new(1.0, 4, 24).unwrap()
    }

    fn noise(z: f64, dim: usize, seed: u8) -> TreeNoise {
        TreeNoise::new(
            TreeSeed::from_bytes([seed; 32]),
            CentralDp::new(fp(), z, dim).unwrap(),
        )
    }

    /// Signed integers as ring elements of `fp`.
    fn ring(fp: &FixedPoint, values: &[i64]) -> Vec<u32> {
        values.iter().map(|&v| v as u32 & fp.value_mask()).collect()
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
            state = tree.add_leaf(&state, &fp(), &ring(&fp(), &leaf)).unwrap();
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
        let (fp, leaf) = (fp(), vec![5u32; 64]);
        let s1 = a.add_leaf(&TreeState::new(4, 64), &fp, &leaf).unwrap();
        let s2 = a.add_leaf(&s1, &fp, &leaf).unwrap();
        let resumed = again.add_leaf(&s2.clone(), &fp, &leaf).unwrap();
        assert_eq!(resumed, a.add_leaf(&s2, &fp, &leaf).unwrap());
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
    fn leaves_of_the_wrong_length_are_refused() {
        let tree = noise(1.0, 3, 1);
        assert!(
            tree.add_leaf(&TreeState::new(0, 3), &fp(), &[1, 2])
                .is_err()
        );
        assert_eq!(
            tree.mechanism(3),
            Mechanism::TreeAggregation {
                sigma: tree.sigma(),
                l2_sensitivity: tree.l2_sensitivity(),
                step: 3
            }
        );
    }

    /// The increment of step `t` draws on exactly the nodes in which
    /// `nodes(t)` and `nodes(t - 1)` differ, and [`max_increment_nodes`]
    /// is their most over a tree's steps (what the ring is sized for).
    #[test]
    fn an_increment_draws_on_at_most_max_increment_nodes_nodes() {
        let mut most = 0;
        for step in 1..=300u64 {
            let now = nodes(step);
            let before = nodes(step - 1);
            let changed = now.iter().filter(|n| !before.contains(n)).count()
                + before.iter().filter(|n| !now.contains(n)).count();
            assert_eq!(changed as u32, step.trailing_zeros() + 1, "step {step}");
            most = most.max(changed as u32);
            assert_eq!(most, max_increment_nodes(step), "steps 1..={step}");
        }
    }

    /// The red team's attack (issue 15, finding 4), as a distinguisher:
    /// colluders park coordinate 0 of the round's ring sum right below the
    /// wrap point `2^31`, and a model consumer guesses whether the honest
    /// client (`+1.0`, norm `C`) took part from the sign of the released
    /// increment. Decoding before noising made the guess certain (the
    /// honest update flipped the decoded sum from `+2^31` to `-2^31`);
    /// with the noise added in the ring, the guess is no better than the
    /// Gaussian mechanism allows: its advantage is at most the total
    /// variation between `N(0, σ²)` and `N(Δ, σ²)`,
    /// `2 Φ(Δ / (2σ)) - 1 = 2 Φ(1 / (2z)) = 0.197` at `z = 2`.
    #[test]
    fn colluders_at_the_wrap_point_learn_no_more_than_the_noise_allows() {
        let fp = FixedPoint::new(1.0, 8, 32).unwrap();
        let tree = TreeNoise::new(
            TreeSeed::from_bytes([7; 32]),
            CentralDp::new(fp, 2.0, 1).unwrap(),
        );
        let colluders = (1u32 << 31) - 1;
        let honest = 256u32;
        let trials = 3000u64;
        let negative = |leaf: u32| {
            // A fresh tree per trial (epoch), so every trial draws anew.
            (0..trials)
                .filter(|&epoch| {
                    let start = TreeState::new(epoch, 1);
                    tree.add_leaf(&start, &fp, &[leaf]).unwrap().noisy_prefix[0] < 0
                })
                .count() as f64
                / trials as f64
        };
        let advantage = negative(colluders.wrapping_add(honest)) - negative(colluders);
        // 3000 trials a side: the estimate's std is about 0.013.
        assert!(
            advantage < 0.197 + 0.07,
            "the sign of the release tells whether the honest client took part: advantage {advantage:.3}, the noise allows 0.197"
        );
        // The test has power: the honest client does move the release.
        assert!(advantage > 0.1, "advantage {advantage:.3}");
    }
}
