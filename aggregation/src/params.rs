//! The SecAgg+ parameter finder: the neighbour-graph degree k and the Shamir
//! threshold t for a round.
//!
//! SecAgg+ (Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server
//! Aggregation with (Poly)Logarithmic Overhead", CCS 2020) keeps the SecAgg
//! protocol but lets each client share keys and masks only with its k
//! neighbours in a random sparse graph ([`crate::graph`]). The round is
//! *private* and *correct* only for well-chosen (k, t); this module picks the
//! smallest even k, and a matching t, for a given number of clients n, an
//! assumed fraction γ of corrupt clients (colluding with the server), an
//! expected fraction δ of dropouts and a threat model.
//!
//! # The conditions
//!
//! At most A = ⌊γn⌋ clients are corrupt and at most D = ⌊δn⌋ drop out, so at
//! least S = n − D survive. For the Harary graph over a uniformly random
//! permutation, a client's k neighbours are a uniform k-subset of the others,
//! so (treating the client's own status like the population's, as the
//! analysis does) the number of its corrupt neighbours is hypergeometric
//! X ~ Hyp(n, A, k) and the number of its surviving neighbours is
//! Y ~ Hyp(n, S, k). Failure probabilities are union-bounded over the n
//! clients. With statistical security σ (40 bits) split evenly between the
//! two privacy failure events, and correctness η (20 bits):
//!
//! 1. **Connectivity.** If the honest surviving clients split into two
//!    components, the server learns the partial sums of each. Removing nodes
//!    disconnects H(k, n) only if two disjoint runs of k/2 consecutive ring
//!    positions are all removed, i.e. k specific clients are all among the
//!    A + D bad ones. Union bound over the n(n − k − 1)/2 pairs of runs:
//!    `n(n−k−1)/2 · (A+D)!/(A+D−k)! · (n−k)!/n! < 2^−(σ+1)`.
//! 2. **Privacy threshold.** Let a be the smallest value with
//!    `P[X > a] < 2^−(σ+1)/n`: with overwhelming probability every client
//!    has at most a corrupt neighbours.
//!    - Semi-honest server: the corrupt neighbours alone must not reach t,
//!      so `t ≥ a + 1`.
//!    - Semi-malicious server: the server may lie about who dropped and ask
//!      some honest neighbours for shares of a client's self-mask seed `b`
//!      and others for shares of its key `s_sk`; each honest neighbour
//!      answers only one of the two, corrupt ones answer both. Getting t of
//!      each needs `2t ≤ k + X`, so `2t > k + a`, i.e. `t ≥ ⌊(k+a)/2⌋ + 1`.
//!
//!    Shamir sharing needs `t ≥ 2` in any case. A client holds no share of
//!    its own secrets, so its k neighbours are all the holders this bound
//!    counts (a share kept by the owner and revealed when it is told it
//!    survived would be one honest holder more, and the bound would fail
//!    for odd a).
//!    - Malicious server: the server also chooses the graph seed and the
//!      slot order, so corrupt clients do not land at random and the
//!      hypergeometric bound on a does not hold. The finder returns the
//!      complete graph with Bonawitz et al.'s `t ≥ ⌊(n + A)/2⌋ + 1`
//!      ([`threshold_floor`]), or [`ParamsError::Infeasible`].
//! 3. **Correctness.** Every client needs t surviving neighbours to be
//!    unmasked: `P[Y ≤ t − 1] < 2^−η/n`. The largest such t is `t_max`.
//!
//! k is the smallest even value in `2..=n−2` (the Harary graphs that are not
//! complete) with condition 1 holding and the smallest t of condition 2 not
//! above `t_max`; the finder returns that smallest t, since it makes
//! reconstruction cheapest and leaves the most slack for dropouts beyond δ.
//! When no such k exists the finder falls back to the complete graph
//! (k = n − 1, which is always connected, with the same threshold
//! conditions), and fails only if even that is infeasible.
//!
//! # Approximations, stated
//!
//! The analysis treats a client's neighbours as a sample of all n clients,
//! itself included. For the honest client whose input is protected, the
//! corrupt clients are among the n − 1 others, which makes its true failure
//! probability up to n/(n − A) times the target: at most log2(1/(1 − γ))
//! bits of the σ (under 1 bit for γ < 1/2). Likewise a surviving client's
//! correctness target loses at most log2(1/(1 − δ)) bits of η. We keep the
//! published formulation so that our parameters are those of the table.
//!
//! # Provenance
//!
//! The conditions are the analysis of Bell et al. in the concrete form used
//! by Google's production SecAgg (`fcp/secagg/server/graph_parameter_finder.cc`
//! in `google-parfait/federated-compute`, `HararyGraphParameterFinder`): the
//! same three conditions, the σ + 1 split, the per-client union bound, the
//! search over even k ≤ n − 2. Its test table
//! (`graph_parameter_finder_test.cc`) is
//! `aggregation/tests/data/secagg_plus_params.csv`, which the tests below
//! reproduce row by row (every k equal, every t equal to the listed one).
//! The implementation is our own: tail probabilities are summed exactly in
//! log space (log-factorials by Stirling's series, a Chernoff-bound starting
//! point, then an exact walk), and the search over k skips degrees that
//! provably fail, so that every row of the table, including n = 10^6 with
//! k = 11,136, takes at most tens of milliseconds, and requests near
//! infeasibility stay well under a second.

use serde::{Deserialize, Serialize};

use crate::config::ThreatModel;
use crate::graph::GraphKind;

mod resolve;
pub use resolve::{
    GraphRequest, ParamSource, ResolveError, RoundParams, ThresholdRule, resolve_round_params,
};

/// Statistical security in bits: the probability that a round leaks more
/// than the sum of the honest survivors' inputs is at most 2^-40, the
/// customary level for statistical (not computational) failure events and
/// the one the published SecAgg+ parameters use.
pub const SECURITY_BITS: u32 = 40;

/// Correctness in bits: the probability that a round aborts because some
/// client has fewer than t surviving neighbours, although at most the
/// expected fraction of clients dropped, is at most 2^-20 (an abort is
/// retried, a leak is not, hence the weaker level).
pub const CORRECTNESS_BITS: u32 = 20;

/// What the server knows, or assumes, about a round before choosing its
/// graph.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ParamsRequest {
    /// Number of clients n that start the round (at least 2).
    pub clients: u32,
    /// Fraction δ of clients expected to drop out at worst, in [0, 1).
    pub dropout_rate: f64,
    /// Fraction γ of clients that may be corrupt and collude with the
    /// server, in [0, 1).
    pub corrupt_rate: f64,
    /// Behaviour of the server to protect against.
    pub threat_model: ThreatModel,
}

/// The graph and threshold for a round, as chosen by [`find_params`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Params {
    /// The neighbour graph to build with [`crate::graph::NeighbourGraph`].
    pub graph: GraphKind,
    /// Number of neighbours of each client (n − 1 for the complete graph).
    pub k: u32,
    /// Shamir threshold t: shares needed to rebuild a client's secrets.
    pub threshold: u32,
}

/// Why no parameters were returned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamsError {
    /// Aggregating fewer than two clients reveals the single input.
    #[error("a round needs at least 2 clients, got {clients}")]
    TooFewClients {
        /// The number of clients requested.
        clients: u32,
    },
    /// A rate outside [0, 1) (or not a number).
    #[error("{name} must be in [0, 1), got {value}")]
    InvalidRate {
        /// Which rate: `"dropout_rate"` or `"corrupt_rate"`.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// Not even the complete graph is both private and correct: the corrupt
    /// clients (and, semi-maliciously, the honest half needed against
    /// equivocation) outnumber the clients guaranteed to survive.
    #[error(
        "no graph is both private and correct for {clients} clients with corrupt rate \
         {corrupt_rate}, dropout rate {dropout_rate} and a {threat_model} server"
    )]
    Infeasible {
        /// The number of clients requested.
        clients: u32,
        /// The corrupt rate requested.
        corrupt_rate: f64,
        /// The dropout rate requested.
        dropout_rate: f64,
        /// The threat model requested.
        threat_model: ThreatModel,
    },
}

/// Chooses the graph and threshold for a round at the default security
/// levels ([`SECURITY_BITS`], [`CORRECTNESS_BITS`]).
///
/// ```
/// use tessera_aggregation::params::{find_params, ParamsRequest, ParamsError};
/// use tessera_aggregation::ThreatModel;
/// use tessera_aggregation::graph::GraphKind;
///
/// let request = ParamsRequest {
///     clients: 10_000,
///     dropout_rate: 0.05,
///     corrupt_rate: 0.05,
///     threat_model: ThreatModel::SemiHonest,
/// };
/// let p = find_params(&request)?;
/// // A row of the published table: each client talks to 34 others, not 9,999.
/// assert_eq!(p.graph, GraphKind::Harary { k: 34 });
/// assert!(p.threshold <= 20);
///
/// // A rate of 1 (everyone corrupt) is rejected.
/// let bad = ParamsRequest { corrupt_rate: 1.0, ..request };
/// assert!(matches!(find_params(&bad), Err(ParamsError::InvalidRate { .. })));
/// # Ok::<(), ParamsError>(())
/// ```
///
/// # Errors
///
/// [`ParamsError`] for fewer than 2 clients, a rate outside [0, 1), or an
/// infeasible request. Two clients are always infeasible: each has a single
/// neighbour, and Shamir sharing needs t ≥ 2.
pub fn find_params(req: &ParamsRequest) -> Result<Params, ParamsError> {
    find_params_with(req, SECURITY_BITS, CORRECTNESS_BITS)
}

/// [`find_params`] with explicit security and correctness levels, in bits:
/// privacy fails with probability at most `2^-security_bits`, an abort
/// despite at most the expected dropouts happens with probability at most
/// `2^-correctness_bits`.
///
/// # Errors
///
/// As [`find_params`].
pub fn find_params_with(
    req: &ParamsRequest,
    security_bits: u32,
    correctness_bits: u32,
) -> Result<Params, ParamsError> {
    let n = req.clients;
    if n < 2 {
        return Err(ParamsError::TooFewClients { clients: n });
    }
    for (name, value) in [
        ("dropout_rate", req.dropout_rate),
        ("corrupt_rate", req.corrupt_rate),
    ] {
        if !(0.0..1.0).contains(&value) {
            return Err(ParamsError::InvalidRate { name, value });
        }
    }
    let setting = Setting::new(req, security_bits, correctness_bits);
    let complete = || {
        // The complete graph never disconnects; only the threshold
        // conditions remain, with all n - 1 other clients as neighbours.
        setting
            .thresholds(n - 1)
            .threshold()
            .map(|threshold| Params {
                graph: GraphKind::Complete,
                k: n - 1,
                threshold,
            })
            .ok_or(ParamsError::Infeasible {
                clients: n,
                corrupt_rate: req.corrupt_rate,
                dropout_rate: req.dropout_rate,
                threat_model: req.threat_model,
            })
    };
    if req.threat_model == ThreatModel::MaliciousServer {
        // The malicious-server model runs on the complete graph only: on a
        // sparse graph the server would choose who neighbours whom (see
        // `RoundConfig::validate`), so the random-placement analysis above
        // does not hold. Its threshold is `threshold_floor`'s.
        return complete();
    }

    // Even degrees in 2..=n-2: the Harary graphs that are not complete. The
    // search returns the smallest k meeting every condition, exactly what a
    // scan of every even k finds, but skips degrees that provably cannot
    // qualify (see `Setting::next_candidate`), so that requests close to
    // infeasibility with n = 10^6 take milliseconds rather than minutes.
    let mut candidate = setting.smallest_connected_degree();
    while let Some(k) = candidate {
        let bounds = setting.thresholds(k);
        if let Some(threshold) = bounds.threshold() {
            return Ok(Params {
                graph: GraphKind::Harary { k },
                k,
                threshold,
            });
        }
        candidate = setting.next_candidate(k, &bounds);
    }
    complete()
}

/// The smallest Shamir threshold that keeps an honest client's input
/// private in a round of `n` clients with graph `graph`, against a server of
/// the given threat model colluding with at most `corrupt` clients.
///
/// This is the finder's privacy condition (condition 2 of the module doc)
/// for a graph chosen elsewhere, by an operator or a client's policy:
/// - semi-honest: the corrupt share holders alone must not reach t, so
///   `t ≥ a + 1`;
/// - semi-malicious and malicious-server: a lying server can split a
///   client's honest holders into two groups, asking one for shares of the
///   self-mask seed and the other for shares of the masking key, and the
///   corrupt holders answer both; neither secret may reach t, so
///   `2t > h + a`, `t ≥ ⌊(h + a)/2⌋ + 1`;
/// - malicious-server with the complete graph, also Bonawitz et al.'s
///   `t ≥ ⌊(n + corrupt)/2⌋ + 1` (which implies the split bound).
///
/// Here h is the number of holders of a client's shares, exactly its
/// neighbours (`k`, or `n − 1` for the complete graph: a client holds no
/// share of its own secrets), and a bounds the corrupt holders: `corrupt`
/// for the complete graph, and for a Harary graph over a random permutation
/// the value every client's corrupt neighbours stay below except with
/// probability 2^-41/n ([`SECURITY_BITS`]). Never below 2, the least a
/// Shamir threshold can be.
///
/// ```
/// use tessera_aggregation::graph::GraphKind;
/// use tessera_aggregation::params::threshold_floor;
/// use tessera_aggregation::ThreatModel;
/// // 7 clients, 2 of them colluding with a malicious server: t > (7 + 2)/2.
/// assert_eq!(threshold_floor(ThreatModel::MaliciousServer, 7, 2, GraphKind::Complete), 5);
/// // Semi-honest with 2 colluders: any 3 holders are enough to stop them.
/// assert_eq!(threshold_floor(ThreatModel::SemiHonest, 7, 2, GraphKind::Complete), 3);
/// ```
pub fn threshold_floor(model: ThreatModel, n: u32, corrupt: u32, graph: GraphKind) -> u32 {
    let corrupt = corrupt.min(n);
    let holders = holders_of(n, graph);
    floor_for(
        model,
        n,
        corrupt,
        holders,
        most_corrupt_holders(model, n, corrupt, graph),
        graph,
    )
}

/// How many accusers ([`crate::accusation`]) among one client's share
/// holders a round tolerates on top of the colluders it assumes: the
/// largest `e` for which `threshold` still meets [`threshold_floor`]'s
/// conditions with `e` more corrupt holders around every client (and, for
/// the malicious-server bound over all clients, `e` more corrupt clients).
/// An accuser reveals its share-encryption key, which opens every share it
/// holds, so it counts as one more colluder. `None` when the threshold is
/// already below the floor for `corrupt` alone: then no accusation can be
/// afforded.
///
/// ```
/// use tessera_aggregation::graph::GraphKind;
/// use tessera_aggregation::params::exposure_margin;
/// use tessera_aggregation::ThreatModel;
/// // Semi-honest, 10 clients, t = 6, nobody assumed corrupt: up to 5
/// // holders of one client may be exposed before 6 shares are in reach.
/// assert_eq!(exposure_margin(ThreatModel::SemiHonest, 10, 0, GraphKind::Complete, 6), Some(5));
/// // Malicious server, 7 clients, 2 colluders, t = 5: no room left.
/// assert_eq!(exposure_margin(ThreatModel::MaliciousServer, 7, 2, GraphKind::Complete, 5), Some(0));
/// assert_eq!(exposure_margin(ThreatModel::MaliciousServer, 7, 2, GraphKind::Complete, 4), None);
/// // At the floor with n + corrupt even, one holder of slack.
/// assert_eq!(exposure_margin(ThreatModel::MaliciousServer, 6, 0, GraphKind::Complete, 4), Some(1));
/// ```
pub fn exposure_margin(
    model: ThreatModel,
    n: u32,
    corrupt: u32,
    graph: GraphKind,
    threshold: u32,
) -> Option<u32> {
    let corrupt = corrupt.min(n);
    let holders = holders_of(n, graph);
    let most_corrupt = most_corrupt_holders(model, n, corrupt, graph);
    let fits = |e: u32| {
        floor_for(
            model,
            n,
            corrupt.saturating_add(e),
            holders,
            most_corrupt.saturating_add(e),
            graph,
        ) <= threshold
    };
    if !fits(0) {
        return None;
    }
    // The floor grows with e: the last e that fits, by bisection over
    // 0..=holders (all holders exposed is the most there can be).
    let (mut lo, mut hi) = (0, holders);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo)
}

/// The holders of one client's shares: its neighbours.
fn holders_of(n: u32, graph: GraphKind) -> u32 {
    match graph {
        GraphKind::Complete => n.saturating_sub(1),
        GraphKind::Harary { k } => k.min(n.saturating_sub(1)),
    }
}

/// The bound a on the corrupt holders of any one client.
fn most_corrupt_holders(model: ThreatModel, n: u32, corrupt: u32, graph: GraphKind) -> u32 {
    match graph {
        GraphKind::Complete => corrupt,
        GraphKind::Harary { .. } => {
            let setting =
                Setting::from_counts(n, corrupt, 0, model, SECURITY_BITS, CORRECTNESS_BITS);
            setting.thresholds(holders_of(n, graph)).most_corrupt
        }
    }
}

/// [`threshold_floor`]'s conditions for `holders` holders, at most
/// `most_corrupt` of them corrupt, `corrupt` corrupt clients in all.
fn floor_for(
    model: ThreatModel,
    n: u32,
    corrupt: u32,
    holders: u32,
    most_corrupt: u32,
    graph: GraphKind,
) -> u32 {
    // In u64: the counts come from a server (a client checks a RoundStart
    // before anything bounds n) and their sums can pass u32::MAX, where a
    // wrapped floor would be tiny.
    let (n, holders, corrupt, most_corrupt) = (
        u64::from(n),
        u64::from(holders),
        u64::from(corrupt),
        u64::from(most_corrupt),
    );
    let floor = match model {
        ThreatModel::SemiHonest => most_corrupt + 1,
        ThreatModel::SemiMalicious => (holders + most_corrupt) / 2 + 1,
        ThreatModel::MaliciousServer => {
            let split = (holders + most_corrupt) / 2 + 1;
            match graph {
                GraphKind::Complete => split.max((n + corrupt) / 2 + 1),
                GraphKind::Harary { .. } => split,
            }
        }
    };
    // At most (n + n)/2 + 1, so it fits; saturate all the same.
    u32::try_from(floor.max(2)).unwrap_or(u32::MAX)
}

/// The worst case counts and target probabilities of one request.
struct Setting {
    n: u32,
    /// Most corrupt clients, ⌊γn⌋.
    corrupt: u32,
    /// Most dropped clients, ⌊δn⌋.
    dropped: u32,
    threat_model: ThreatModel,
    /// ln of the per-event privacy failure budget 2^-(σ+1).
    ln_security_event: f64,
    /// ln of the per-client privacy failure budget 2^-(σ+1)/n.
    ln_security_per_client: f64,
    /// ln of the per-client correctness failure budget 2^-η/n.
    ln_correctness_per_client: f64,
}

/// The threshold range that degree k allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Thresholds {
    /// Bound a on the corrupt neighbours of every client (condition 2).
    most_corrupt: u32,
    /// Bound on the dropped neighbours of every client (condition 3).
    most_dropped: u32,
    /// Smallest private threshold.
    t_min: u32,
    /// Largest correct threshold.
    t_max: u32,
}

impl Thresholds {
    /// The smallest private threshold, if it is also correct.
    fn threshold(&self) -> Option<u32> {
        (self.t_min <= self.t_max).then_some(self.t_min)
    }
}

impl Setting {
    fn new(req: &ParamsRequest, security_bits: u32, correctness_bits: u32) -> Self {
        let n = req.clients;
        Self::from_counts(
            n,
            worst_count(req.corrupt_rate, n),
            worst_count(req.dropout_rate, n),
            req.threat_model,
            security_bits,
            correctness_bits,
        )
    }

    fn from_counts(
        n: u32,
        corrupt: u32,
        dropped: u32,
        threat_model: ThreatModel,
        security_bits: u32,
        correctness_bits: u32,
    ) -> Self {
        let ln_n = f64::from(n).ln();
        let ln2 = core::f64::consts::LN_2;
        let ln_security_event = -(f64::from(security_bits) + 1.0) * ln2;
        Self {
            n,
            corrupt,
            dropped,
            threat_model,
            ln_security_event,
            ln_security_per_client: ln_security_event - ln_n,
            ln_correctness_per_client: -f64::from(correctness_bits) * ln2 - ln_n,
        }
    }

    /// Whether H(k, n) stays connected with overwhelming probability
    /// (condition 1 of the module doc).
    fn connected(&self, k: u32) -> bool {
        self.ln_prob_disconnected(k) < self.ln_security_event
    }

    /// Union bound (ln) on the probability that removing the corrupt and
    /// dropped clients disconnects H(k, n) over a random permutation
    /// (condition 1 of the module doc).
    fn ln_prob_disconnected(&self, k: u32) -> f64 {
        let n = u64::from(self.n);
        let k = u64::from(k);
        let bad = u64::from(self.corrupt) + u64::from(self.dropped);
        if k > bad {
            // Fewer bad clients than the 2 * k/2 positions a cut needs.
            return f64::NEG_INFINITY;
        }
        // ln of the number of pairs of disjoint runs of k/2 positions.
        let ln_pairs = (n as f64).ln() + ((n - k - 1) as f64).ln() - core::f64::consts::LN_2;
        // ln of (bad)_k / (n)_k: all k clients of a given pair of runs bad.
        let ln_all_bad =
            ln_factorial(bad) - ln_factorial(bad - k) + ln_factorial(n - k) - ln_factorial(n);
        ln_pairs + ln_all_bad
    }

    /// The smallest even k in 2..=n-2 for which H(k, n) stays connected, if
    /// any.
    ///
    /// The disconnection bound decreases in k (from k to k + 1 it is
    /// multiplied by (n−k−2)/(n−k−1) · (A+D−k)/(n−k) < 1), so the connected
    /// degrees form a suffix and bisection finds where it starts.
    fn smallest_connected_degree(&self) -> Option<u32> {
        let largest = (self.n.checked_sub(2)? / 2) * 2;
        if largest < 2 || !self.connected(largest) {
            return None;
        }
        // Invariant: connected(2 * hi), and lo = 1 or !connected(2 * (lo - 1)).
        let (mut lo, mut hi) = (1, largest / 2);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.connected(2 * mid) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Some(2 * hi)
    }

    /// The threshold range allowed by degree k (conditions 2 and 3 of the
    /// module doc).
    fn thresholds(&self, k: u32) -> Thresholds {
        let n = u64::from(self.n);
        let most_corrupt = upper_quantile(
            n,
            u64::from(self.corrupt),
            u64::from(k),
            self.ln_security_per_client,
        );
        let mut t_min = match self.threat_model {
            ThreatModel::SemiHonest => most_corrupt + 1,
            ThreatModel::SemiMalicious | ThreatModel::MaliciousServer => (k + most_corrupt) / 2 + 1,
        }
        .max(2);
        if self.threat_model == ThreatModel::MaliciousServer && k + 1 == self.n {
            // Bonawitz et al.'s active-adversary bound for the complete
            // graph, enforced by `RoundConfig::validate`.
            t_min = t_min.max((self.n + self.corrupt) / 2 + 1);
        }
        // P[Y <= t - 1] = P[k - Y >= k - t + 1] where k - Y ~ Hyp(n, D, k)
        // counts dropped neighbours: t <= k - (its upper quantile).
        let most_dropped = upper_quantile(
            n,
            u64::from(self.dropped),
            u64::from(k),
            self.ln_correctness_per_client,
        );
        Thresholds {
            most_corrupt,
            most_dropped,
            t_min,
            t_max: k - most_dropped,
        }
    }

    /// The next even degree after a connected k that failed the threshold
    /// conditions and that might pass them, or `None` past n − 2.
    ///
    /// A uniform sample of k' > k clients contains one of k clients, so its
    /// corrupt and dropped counts dominate those of the smaller sample and
    /// so do their quantiles: a(k') ≥ a(k), b(k') ≥ b(k). Hence t_min(k') ≥
    /// t_min(k) (semi-honest) or ≥ ⌊(k'+a)/2⌋ + 1 (semi-malicious), and
    /// t_max(k') ≤ k' − b. A degree k' can therefore only pass if k' ≥
    /// t_min + b (semi-honest), or k' > a + 2b and k' ≥ b + 2
    /// (semi-malicious). Connectivity only improves with k.
    fn next_candidate(&self, k: u32, failed: &Thresholds) -> Option<u32> {
        let (a, b) = (
            u64::from(failed.most_corrupt),
            u64::from(failed.most_dropped),
        );
        let needed = match self.threat_model {
            ThreatModel::SemiHonest => u64::from(failed.t_min) + b,
            ThreatModel::SemiMalicious | ThreatModel::MaliciousServer => (a + 2 * b + 1).max(b + 2),
        };
        let next = (u64::from(k) + 2).max(needed.div_ceil(2) * 2);
        u32::try_from(next).ok().filter(|&next| next <= self.n - 2)
    }
}

/// ⌊rate · n⌋, tolerating the representation error of decimal rates (0.29 ·
/// 100 evaluates to 28.999999999999996 and must count as 29): the count of
/// corrupt (or dropped) clients the finder plans for, and so the `corrupt`
/// a round configuration must carry for the finder's threshold to pass the
/// malicious-server check.
pub fn worst_count(rate: f64, n: u32) -> u32 {
    let exact = rate * f64::from(n);
    // The tolerance is relative, so it cannot push a count past n by more
    // than rounding; the min keeps the count a valid subset size regardless.
    ((exact + exact * 1e-12).floor() as u32).min(n)
}

/// ln(x!), exact to f64 precision: the product for x <= 20 (exact in u64),
/// Stirling's series with four correction terms above (its error for x > 20
/// is below 1e-17 relative).
fn ln_factorial(x: u64) -> f64 {
    if x <= 20 {
        return ((1..=x).product::<u64>() as f64).ln();
    }
    let x = x as f64;
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    x * x.ln() - x
        + 0.5 * (2.0 * core::f64::consts::PI * x).ln()
        + inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 / 1680.0)))
}

/// ln of the hypergeometric probability P[X = x] for X ~ Hyp(population,
/// marked, draws), for x in the support.
fn ln_hypergeometric_pmf(population: u64, marked: u64, draws: u64, x: u64) -> f64 {
    ln_factorial(marked) - ln_factorial(x) - ln_factorial(marked - x)
        + ln_factorial(population - marked)
        - ln_factorial(draws - x)
        - ln_factorial(population - marked + x - draws)
        - ln_factorial(population)
        + ln_factorial(draws)
        + ln_factorial(population - draws)
}

/// ln(e^a + e^b), without overflow or underflow.
fn ln_add_exp(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// The smallest a with P[X > a] < e^ln_q, for X ~ Hyp(population, marked,
/// draws) and 0 < e^ln_q < 1: a bound that X exceeds with probability
/// below q.
///
/// Starts from the Chernoff-Hoeffding bound P[X ≥ a] ≤ exp(−draws ·
/// KL(a/draws ‖ marked/population)) (valid for sampling without replacement,
/// Hoeffding 1963), computes the exact tail there by summing the pmf
/// upwards, then walks down one value at a time adding the pmf until the
/// tail reaches q. All in log space, so tails of 10^-300 and below are fine.
fn upper_quantile(population: u64, marked: u64, draws: u64, ln_q: f64) -> u32 {
    debug_assert!(marked <= population && draws <= population && ln_q < 0.0);
    let lo = draws.saturating_sub(population - marked);
    let hi = draws.min(marked);
    let as_u32 = |x: u64| u32::try_from(x).expect("bounded by draws, a u32");
    if lo == hi {
        return as_u32(lo);
    }
    // Ratio P[X = x + 1] / P[X = x], as a ln, for lo <= x < hi.
    let ln_step_up = |x: u64| {
        let num = (marked - x) as f64 * (draws - x) as f64;
        let den = (x + 1) as f64 * (population - marked + x + 1 - draws) as f64;
        (num / den).ln()
    };
    // ln P[X > a], by summing upwards from a + 1 until the terms, past the
    // mode, no longer matter.
    let ln_tail_above = |a: u64| {
        if a >= hi {
            return f64::NEG_INFINITY;
        }
        let mut x = a + 1;
        let mut ln_term = ln_hypergeometric_pmf(population, marked, draws, x);
        let mut ln_sum = ln_term;
        while x < hi {
            let step = ln_step_up(x);
            ln_term += step;
            x += 1;
            ln_sum = ln_add_exp(ln_sum, ln_term);
            // Past the mode the terms fall at least geometrically; stop once
            // they are below 2^-60 of the sum.
            if step < 0.0 && ln_term < ln_sum - 60.0 * core::f64::consts::LN_2 {
                break;
            }
        }
        ln_sum
    };

    let mut start = chernoff_start(population, marked, draws, -ln_q).clamp(lo, hi);
    let mut ln_tail = ln_tail_above(start);
    // The bound makes this loop run zero times; it only guards the
    // off-by-one between P[X >= a] and P[X > a] and rounding.
    while ln_tail >= ln_q {
        start = (start + 1 + (hi - start) / 8).min(hi);
        ln_tail = ln_tail_above(start);
    }
    // Invariant: P[X > a] = e^ln_tail < q.
    let mut a = start;
    let mut ln_pmf_a = ln_hypergeometric_pmf(population, marked, draws, a);
    while a > lo {
        let ln_tail_below = ln_add_exp(ln_tail, ln_pmf_a);
        if ln_tail_below >= ln_q {
            break;
        }
        ln_tail = ln_tail_below;
        a -= 1;
        ln_pmf_a -= ln_step_up(a);
    }
    as_u32(a)
}

/// The smallest integer a ≥ draws·p with draws · KL(a/draws ‖ p) ≥ ln(1/q)
/// (p = marked/population), or `draws` if there is none: by the
/// Chernoff-Hoeffding bound, P[X ≥ a] ≤ q there.
fn chernoff_start(population: u64, marked: u64, draws: u64, ln_inv_q: f64) -> u64 {
    let p = marked as f64 / population as f64;
    let m = draws as f64;
    let exponent = |a: u64| {
        let f = a as f64 / m;
        let term = |x: f64, y: f64| if x == 0.0 { 0.0 } else { x * (x / y).ln() };
        m * (term(f, p) + term(1.0 - f, 1.0 - p))
    };
    let mut lo = ((m * p).ceil() as u64).min(draws);
    let mut hi = draws;
    if exponent(hi) < ln_inv_q {
        return hi;
    }
    // exponent() increases on [draws·p, draws]: bisect for the first a that
    // reaches ln(1/q).
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if exponent(mid) >= ln_inv_q {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Google's published SecAgg+ parameters (see the module doc).
    const REFERENCE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/secagg_plus_params.csv"
    );

    fn request(clients: u32, corrupt: f64, dropout: f64, tm: ThreatModel) -> ParamsRequest {
        ParamsRequest {
            clients,
            dropout_rate: dropout,
            corrupt_rate: corrupt,
            threat_model: tm,
        }
    }

    const MODELS: [ThreatModel; 2] = [ThreatModel::SemiHonest, ThreatModel::SemiMalicious];

    #[test]
    fn reproduces_every_published_secagg_plus_row() {
        let table = std::fs::read_to_string(REFERENCE)
            .unwrap_or_else(|e| panic!("cannot read {REFERENCE}: {e}"));
        let mut lines = table
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'));
        assert_eq!(
            lines.next(),
            Some("n,corrupt_rate,dropout_rate,threat_model,k,t_max")
        );
        let mut rows = 0;
        let mut mismatches = Vec::new();
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 6, "bad row {line:?}");
            let req = request(
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            );
            let (k, t_max): (u32, u32) = (f[4].parse().unwrap(), f[5].parse().unwrap());
            rows += 1;
            let start = Instant::now();
            let got = find_params(&req);
            let took = start.elapsed();
            match got {
                Ok(p)
                    if p.k == k
                        && p.threshold <= t_max
                        && p.graph == GraphKind::Harary { k }
                        && took < Duration::from_secs(1) => {}
                other => mismatches.push(format!("{line}: got {other:?} in {took:?}")),
            }
        }
        assert_eq!(rows, 55, "the reference table changed size");
        assert!(
            mismatches.is_empty(),
            "{} of {rows} rows differ (row: result in time):\n{}",
            mismatches.len(),
            mismatches.join("\n")
        );
    }

    /// The plain scan of every even k, as the module doc defines the result.
    fn linear_scan(req: &ParamsRequest) -> Result<Params, ParamsError> {
        let setting = Setting::new(req, SECURITY_BITS, CORRECTNESS_BITS);
        let mut k = 2;
        while k + 2 <= req.clients {
            if setting.connected(k)
                && let Some(threshold) = setting.thresholds(k).threshold()
            {
                return Ok(Params {
                    graph: GraphKind::Harary { k },
                    k,
                    threshold,
                });
            }
            k += 2;
        }
        match setting.thresholds(req.clients - 1).threshold() {
            Some(threshold) => Ok(Params {
                graph: GraphKind::Complete,
                k: req.clients - 1,
                threshold,
            }),
            None => Err(ParamsError::Infeasible {
                clients: req.clients,
                corrupt_rate: req.corrupt_rate,
                dropout_rate: req.dropout_rate,
                threat_model: req.threat_model,
            }),
        }
    }

    #[test]
    fn skipping_search_agrees_with_the_plain_scan() {
        let rates = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.45, 0.6];
        let mut complete = 0;
        let mut infeasible = 0;
        for n in [2u32, 3, 4, 5, 6, 10, 33, 100, 257, 1_000] {
            for &corrupt in &rates {
                for &dropout in &rates {
                    for tm in MODELS {
                        let req = request(n, corrupt, dropout, tm);
                        let fast = find_params(&req);
                        assert_eq!(fast, linear_scan(&req), "{req:?}");
                        match fast {
                            Ok(p) if p.graph == GraphKind::Complete => complete += 1,
                            Err(_) => infeasible += 1,
                            Ok(_) => {}
                        }
                    }
                }
            }
        }
        // The grid exercises all three outcomes.
        assert!(complete > 0 && infeasible > 0);
    }

    #[test]
    fn falls_back_to_the_complete_graph_for_small_n() {
        // n = 10, 4 corrupt, 4 dropouts. Every H(k, 10) with k <= 8 fails
        // connectivity: for k = 8 the bound is (10 * 1 / 2) * C(8,8)/C(10,8)
        // = 5/45, far above 2^-41, and smaller k are worse. The complete
        // graph needs t > 4 corrupt neighbours and t <= 10 - 4 - 1 = 5
        // surviving other clients: t = 5.
        let p = find_params(&request(10, 0.4, 0.4, ThreatModel::SemiHonest)).unwrap();
        assert_eq!(
            p,
            Params {
                graph: GraphKind::Complete,
                k: 9,
                threshold: 5
            }
        );
        // Semi-maliciously it needs 2t > 9 + 4, t >= 7 > 5: infeasible.
        assert!(matches!(
            find_params(&request(10, 0.4, 0.4, ThreatModel::SemiMalicious)),
            Err(ParamsError::Infeasible { clients: 10, .. })
        ));
        // With 3 clients no non-complete Harary graph exists (k <= n - 2 = 1).
        let p = find_params(&request(3, 0.0, 0.0, ThreatModel::SemiHonest)).unwrap();
        assert_eq!((p.graph, p.k, p.threshold), (GraphKind::Complete, 2, 2));
        // Two clients: one neighbour each, below Shamir's t >= 2.
        assert!(matches!(
            find_params(&request(2, 0.0, 0.0, ThreatModel::SemiHonest)),
            Err(ParamsError::Infeasible { .. })
        ));
    }

    #[test]
    fn without_corrupt_clients_or_dropouts_a_ring_suffices() {
        // Nothing can disconnect the graph and no neighbour is corrupt: the
        // sparsest Harary graph, with Shamir's minimum threshold.
        for n in [4u32, 100, 1_000_000] {
            for tm in MODELS {
                let p = find_params(&request(n, 0.0, 0.0, tm)).unwrap();
                assert_eq!((p.k, p.threshold), (2, 2), "n={n} {tm}");
            }
        }
    }

    #[test]
    fn invalid_requests_are_rejected() {
        let ok = request(100, 0.1, 0.1, ThreatModel::SemiHonest);
        for clients in [0, 1] {
            assert_eq!(
                find_params(&ParamsRequest { clients, ..ok }),
                Err(ParamsError::TooFewClients { clients })
            );
        }
        for bad in [-0.1, 1.0, 1.5, f64::NAN, f64::INFINITY] {
            let e = find_params(&ParamsRequest {
                dropout_rate: bad,
                ..ok
            })
            .unwrap_err();
            assert!(
                matches!(
                    e,
                    ParamsError::InvalidRate {
                        name: "dropout_rate",
                        ..
                    }
                ),
                "{e:?}"
            );
            let e = find_params(&ParamsRequest {
                corrupt_rate: bad,
                ..ok
            })
            .unwrap_err();
            assert!(
                matches!(
                    e,
                    ParamsError::InvalidRate {
                        name: "corrupt_rate",
                        ..
                    }
                ),
                "{e:?}"
            );
        }
        assert!(find_params(&ok).is_ok());
    }

    #[test]
    fn infeasible_requests_fail_fast_even_for_a_million_clients() {
        for (corrupt, dropout, tm) in [
            (0.5, 0.5, ThreatModel::SemiHonest),
            // γ + 2δ = 1: equivocation needs more than the survivors.
            (0.3, 0.35, ThreatModel::SemiMalicious),
        ] {
            let start = Instant::now();
            let r = find_params(&request(1_000_000, corrupt, dropout, tm));
            assert!(matches!(r, Err(ParamsError::Infeasible { .. })), "{r:?}");
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "{:?}",
                start.elapsed()
            );
        }
    }

    #[test]
    fn degree_is_non_decreasing_in_the_dropout_rate() {
        // More dropouts make every condition harder (more removed clients,
        // fewer survivors), so the smallest feasible k can only grow;
        // infeasible counts as infinitely large.
        let rank = |r: Result<Params, ParamsError>| r.map_or(u32::MAX, |p| p.k);
        for n in [100u32, 10_000] {
            for corrupt in [0.0, 0.05, 0.2] {
                for tm in MODELS {
                    let mut last = 0;
                    for step in 0..19 {
                        let dropout = f64::from(step) * 0.025;
                        let k = rank(find_params(&request(n, corrupt, dropout, tm)));
                        assert!(
                            k >= last,
                            "n={n} γ={corrupt} δ={dropout} {tm}: {k} < {last}"
                        );
                        last = k;
                    }
                }
            }
        }
    }

    #[test]
    fn more_security_bits_never_shrink_the_degree() {
        let req = request(10_000, 0.1, 0.1, ThreatModel::SemiMalicious);
        let ks: Vec<u32> = [20, 40, 60, 80]
            .iter()
            .map(|&bits| find_params_with(&req, bits, CORRECTNESS_BITS).unwrap().k)
            .collect();
        assert!(ks.windows(2).all(|w| w[0] <= w[1]), "{ks:?}");
        assert!(ks[0] < ks[3], "{ks:?}");
        assert_eq!(
            find_params_with(&req, SECURITY_BITS, CORRECTNESS_BITS),
            find_params(&req)
        );
    }

    #[test]
    fn returned_thresholds_are_usable() {
        for n in [5u32, 50, 500, 5_000] {
            for corrupt in [0.0, 0.1, 0.3] {
                for dropout in [0.0, 0.1, 0.3] {
                    for tm in MODELS {
                        if let Ok(p) = find_params(&request(n, corrupt, dropout, tm)) {
                            assert!(p.threshold >= 2 && p.threshold <= p.k, "{p:?}");
                            assert!(p.k < n);
                            match p.graph {
                                GraphKind::Complete => assert_eq!(p.k, n - 1),
                                GraphKind::Harary { k } => {
                                    assert_eq!(k, p.k);
                                    assert!(k % 2 == 0 && k <= n - 2);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn threat_model_names_round_trip() {
        for tm in MODELS {
            assert_eq!(tm.to_string().parse::<ThreatModel>(), Ok(tm));
        }
        assert_eq!("semi-honest".parse(), Ok(ThreatModel::SemiHonest));
        assert_eq!("semi-malicious".parse(), Ok(ThreatModel::SemiMalicious));
        assert!("malicious".parse::<ThreatModel>().is_err());
        assert!("Semi-Honest".parse::<ThreatModel>().is_err());
    }

    /// ln(x!) by summing logs: slow, obviously right.
    fn ln_factorial_naive(x: u64) -> f64 {
        (2..=x).map(|i| (i as f64).ln()).sum()
    }

    #[test]
    fn ln_factorial_matches_summed_logs() {
        for x in (0..=60).chain([100, 1_000, 12_345, 100_000]) {
            let (fast, naive) = (ln_factorial(x), ln_factorial_naive(x));
            assert!(
                (fast - naive).abs() <= 1e-12 * naive.max(1.0),
                "x={x}: {fast} vs {naive}"
            );
        }
    }

    /// The smallest a with P[X > a] < q, by summing every pmf term.
    fn upper_quantile_naive(population: u64, marked: u64, draws: u64, q: f64) -> u32 {
        let ln_choose = |a: u64, b: u64| {
            ln_factorial_naive(a) - ln_factorial_naive(b) - ln_factorial_naive(a - b)
        };
        let lo = draws.saturating_sub(population - marked);
        let hi = draws.min(marked);
        let pmf = |x: u64| {
            (ln_choose(marked, x) + ln_choose(population - marked, draws - x)
                - ln_choose(population, draws))
            .exp()
        };
        let mut tail = 0.0;
        let mut a = hi;
        while a > lo && tail + pmf(a) < q {
            tail += pmf(a);
            a -= 1;
        }
        a as u32
    }

    #[test]
    fn upper_quantile_matches_direct_summation() {
        for &(population, marked, draws) in &[
            (10u64, 3u64, 4u64),
            (10, 9, 8),
            (10, 0, 5),
            (10, 10, 5),
            (57, 20, 30),
            (200, 10, 60),
            (200, 150, 199),
            (1_000, 330, 120),
            (1_000, 50, 500),
            (5_000, 2_500, 800),
        ] {
            for q in [0.3, 1e-3, 1e-9, 1e-15] {
                assert_eq!(
                    upper_quantile(population, marked, draws, f64::ln(q)),
                    upper_quantile_naive(population, marked, draws, q),
                    "Hyp({population}, {marked}, {draws}) q={q}"
                );
            }
        }
    }

    #[test]
    fn upper_quantile_handles_tails_below_f64_range() {
        // q = e^-1000 is not representable; the bound is still found, and it
        // is no larger than the sample or the marked population.
        let a = upper_quantile(1_000_000, 300_000, 11_136, -1_000.0);
        let b = upper_quantile(1_000_000, 300_000, 11_136, -100.0);
        assert!(b < a && a <= 11_136, "{b} {a}");
    }

    #[test]
    fn malicious_server_params_pass_the_malicious_config_checks() {
        use crate::config::RoundConfig;
        for (n, corrupt, dropout) in [
            (10, 0.1, 0.1),
            (20, 0.05, 0.1),
            (100, 0.1, 0.1),
            (1000, 0.05, 0.05),
            (10_000, 0.1, 0.1),
        ] {
            let p = find_params(&request(n, corrupt, dropout, ThreatModel::MaliciousServer))
                .unwrap_or_else(|e| panic!("n = {n}: {e}"));
            let semi =
                find_params(&request(n, corrupt, dropout, ThreatModel::SemiMalicious)).unwrap();
            // Sparse graphs: exactly the semi-malicious rows; the complete
            // graph may need the larger Bonawitz threshold.
            match p.graph {
                GraphKind::Harary { .. } => assert_eq!(p, semi, "n = {n}"),
                GraphKind::Complete => assert!(p.threshold >= semi.threshold),
            }
            let mut config = RoundConfig::new(1, n, 10);
            config.graph = p.graph;
            config.threshold = p.threshold;
            config.threat_model = ThreatModel::MaliciousServer;
            config.corrupt = worst_count(corrupt, n);
            config.validate().unwrap_or_else(|e| panic!("n = {n}: {e}"));
            if p.threshold > 2 {
                config.threshold = p.threshold - 1;
                assert!(config.validate().is_err(), "n = {n}: t - 1 passes");
            }
        }
    }

    /// Issue 11, item 2: over the finder's grid, no split of one client's
    /// honest share holders gives a lying server t shares of both of its
    /// secrets. The holders are the client's k neighbours (it keeps no share
    /// of its own), at most a of them corrupt (the finder's bound; all A
    /// corrupt clients on the complete graph); the corrupt ones answer both
    /// requests, each honest one answers one. A split of the h - a honest
    /// holders into x and h - a - x gives both secrets only if x + a ≥ t and
    /// h - a - x + a ≥ t.
    #[test]
    fn no_split_of_the_honest_holders_reaches_both_secrets() {
        let start = Instant::now();
        let mut checked = 0;
        for n in [10u32, 20, 50, 100, 200, 500, 1_000, 10_000, 100_000] {
            for corrupt in [0.0, 0.01, 0.05, 0.1, 0.2, 0.33] {
                for dropout in [0.0, 0.05, 0.1, 0.2, 0.33] {
                    for tm in [ThreatModel::SemiMalicious, ThreatModel::MaliciousServer] {
                        let req = request(n, corrupt, dropout, tm);
                        let Ok(p) = find_params(&req) else {
                            continue;
                        };
                        let setting = Setting::new(&req, SECURITY_BITS, CORRECTNESS_BITS);
                        let (h, a) = match p.graph {
                            GraphKind::Complete => (n - 1, setting.corrupt),
                            GraphKind::Harary { k } => (k, setting.thresholds(k).most_corrupt),
                        };
                        if tm == ThreatModel::MaliciousServer {
                            assert_eq!(p.graph, GraphKind::Complete, "{req:?}");
                        }
                        let t = p.threshold;
                        assert!(a < t && t <= h, "{req:?}: a = {a}, t = {t}, h = {h}");
                        let honest = h - a;
                        for x in 0..=honest {
                            let both = x + a >= t && honest - x + a >= t;
                            assert!(!both, "{req:?}: k = {h}, t = {t}, a = {a}, split {x}");
                        }
                        assert!(2 * (t - a) > honest, "{req:?}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 400, "{checked} feasible settings");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn the_complete_graph_floor_is_bonawitz_majority() {
        let floor = |n, c| threshold_floor(ThreatModel::MaliciousServer, n, c, GraphKind::Complete);
        assert_eq!(floor(7, 0), 4);
        assert_eq!(floor(7, 2), 5);
        assert_eq!(floor(100, 10), 56);
        assert_eq!("malicious-server".parse(), Ok(ThreatModel::MaliciousServer));
        assert_eq!(ThreatModel::MaliciousServer.to_string(), "malicious-server");
    }
}
