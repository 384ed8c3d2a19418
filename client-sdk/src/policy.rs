//! The client's policy: which rounds it agrees to take part in.
//!
//! Every security parameter of a round (the number of clients n, the Shamir
//! threshold t, the assumed colluders, the survivor floor, the neighbour
//! graph, the ring width, the distributed DP noise) arrives in the server's
//! `RoundStart`. The protocol core only checks that they are consistent
//! with each other, and a lying server can state consistent but weak values
//! (`corrupt = 0`, a threshold of 2 among 1,000 clients, no noise). So the
//! client checks them against its own [`Policy`], between `RoundStart` and
//! its first protocol message (`AdvertiseKeys`): a round outside the policy
//! is refused with [`ClientError::PolicyRefused`]
//! naming the [`PolicyRule`] and the values, before any key is generated,
//! let alone sent, and before anything is allocated from the server's
//! numbers.
//!
//! The rules, in the order they are checked:
//!
//! 1. **max-clients**: `n ≤ max_clients` (default 100,000), and the
//!    RoundStart names at most that many identities. Checked first: the
//!    client allocates O(n) for the neighbour graph, the peers' keys and
//!    their shares, so an unbounded `n` from the server (`u32::MAX`) would
//!    make it abort.
//! 2. **min-clients**: `n ≥ min_clients` (default 3, the fewest a `tessera
//!    serve` round has: with two, each client learns the other's input from
//!    the sum).
//! 3. **threat-model**: the round runs at least the policy's model, ordered
//!    semi-honest < semi-malicious < malicious-server. Default: semi-honest,
//!    or malicious-server for a client given an identity
//!    ([`ClientBuilder::identity`](crate::ClientBuilder::identity)): an
//!    enrolled client expects the protection it was enrolled for and takes
//!    part in nothing weaker.
//! 4. **graph**: a malicious-server round runs on the complete graph (on a
//!    sparse one the server chooses who neighbours whom and can surround a
//!    victim with colluders).
//! 5. **threshold**: `t ≥ threshold_floor(model, n, corrupt, graph)`
//!    ([`tessera_aggregation::params::threshold_floor`]) for the round's
//!    model, where `corrupt` is the client's **own** assumption:
//!    `max(⌊assume_corrupt · n⌋, the server's stated corrupt)`. A server
//!    that states `corrupt = 0` gains nothing by it.
//! 6. **survivor-floor**: the fewest inputs a published sum may hold
//!    (`max(t, min_survivors)` of the round) is at least the policy's
//!    `min_survivors` (default and least 3, as `tessera serve`'s
//!    `--min-aggregate`: from a sum of two inputs each contributor
//!    recovers the other's; raise it to insist that your input is summed
//!    with more others). What enforces
//!    the floor depends on the model: in a malicious-server round every
//!    client checks the one signed survivor set against it; on an unsigned
//!    complete graph each client checks the list it is shown, but a server
//!    lying about dropouts can show different clients different lists and
//!    publish the sum of fewer inputs than the floor; on a
//!    SecAgg+ graph a client sees only its neighbourhood and the floor
//!    rests on the server. Insist on the malicious-server model for a
//!    floor that holds against a lying server. The same holds for the
//!    distributed DP calibration below (for the round's honest survivors),
//!    while rule 8's per-client noise holds in every model.
//! 7. **require-dp** (when [`Policy::require_dp`]): the round carries
//!    distributed DP parameters, so this client adds noise of its own before
//!    masking. Central DP is invisible to the client (the server adds it
//!    after seeing the sum) and is not accepted in its place.
//! 8. **min-noise-multiplier** (with `require_dp`): the round's per-client
//!    noise multiplier (see [`per_client_noise_multiplier`]) is at least
//!    [`Policy::min_noise_multiplier`]. The SDK has no accountant: the
//!    policy bounds the noise this client adds, not an epsilon.
//!
//! The model dimension needs no policy bound: the round's `dim` must equal
//! the update's length, which the application chose. The ring width is at
//! most 32 bits (the core refuses more), and messages are bounded by
//! [`ClientBuilder::max_message_bytes`](crate::ClientBuilder::max_message_bytes).
//!
//! ```
//! use tessera_client::{Client, Policy};
//!
//! // Insist on semi-malicious rounds of at least 10 clients, assume a tenth
//! // of any round colludes with the server, and require client-side noise
//! // of at least 0.2 times this client's sensitivity.
//! let policy = Policy {
//!     threat_model: Some(tessera_aggregation::ThreatModel::SemiMalicious),
//!     assume_corrupt: 0.1,
//!     min_clients: 10,
//!     require_dp: true,
//!     min_noise_multiplier: 0.2,
//!     ..Policy::default()
//! };
//! let client = Client::builder("http://127.0.0.1:7443").policy(policy).build();
//! assert!(client.is_ok());
//! // A policy that contradicts itself fails the build.
//! let err = Client::builder("http://127.0.0.1:7443")
//!     .policy(Policy { min_clients: 1, ..Policy::default() })
//!     .build()
//!     .unwrap_err();
//! assert!(err.to_string().contains("min_clients"), "{err}");
//! ```

use std::fmt;

use tessera_aggregation::ThreatModel;
use tessera_aggregation::graph::GraphKind;
use tessera_aggregation::params;
use tessera_dp::mechanism::DistributedEncoding;
use tessera_proto::v1;

use crate::ClientError;

/// Default [`Policy::assume_corrupt`]: a twentieth of every round's clients
/// may collude with the server.
pub const DEFAULT_ASSUME_CORRUPT: f64 = 0.05;
/// Default [`Policy::min_clients`]: the fewest clients of a `tessera serve`
/// round.
pub const DEFAULT_MIN_CLIENTS: u32 = 3;
/// Default [`Policy::max_clients`]: bounds what a client allocates for the
/// round's peers.
pub const DEFAULT_MAX_CLIENTS: u32 = 100_000;
/// Default and least [`Policy::min_survivors`]: from a published sum of
/// two inputs, each contributor recovers the other's.
pub const DEFAULT_MIN_SURVIVORS: u32 = 3;

/// What rounds a client accepts; see the [module docs](crate::policy) for the rules.
///
/// Set with [`ClientBuilder::policy`](crate::ClientBuilder::policy) (or the
/// individual setters); [`ClientBuilder::build`](crate::ClientBuilder::build)
/// checks it. The [`Default`] is safe for the project's own rounds: it
/// accepts a `tessera serve` round at its defaults (three clients and up)
/// and refuses thresholds a lying server could beat with 5% of the clients.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// The weakest threat model the client takes part in. `None` (the
    /// default): semi-honest, or malicious-server when the client has an
    /// identity. With an identity only malicious-server is possible, and
    /// malicious-server needs an identity.
    pub threat_model: Option<ThreatModel>,
    /// The fraction of a round's clients this client assumes collude with
    /// the server, in `[0, 1)`, counted as `⌊fraction · n⌋`; the threshold
    /// rule uses the larger of this count and the server's stated one.
    /// Default 0.05.
    pub assume_corrupt: f64,
    /// The fewest clients a round may have (at least 3). Default 3.
    pub min_clients: u32,
    /// The most clients a round may have: bounds every allocation sized by
    /// the server's numbers. Default 100,000.
    pub max_clients: u32,
    /// The fewest inputs a published sum containing this client's input
    /// may hold, as the round's survivor floor states it (at least 3).
    /// Default 3.
    pub min_survivors: u32,
    /// Take part only in rounds with distributed DP (noise added by the
    /// clients, so it holds against the server). Default false.
    pub require_dp: bool,
    /// With `require_dp`: the smallest per-client noise multiplier
    /// ([`per_client_noise_multiplier`]) accepted. 0 (the default) accepts
    /// any positive noise. Must be 0 without `require_dp`.
    pub min_noise_multiplier: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            threat_model: None,
            assume_corrupt: DEFAULT_ASSUME_CORRUPT,
            min_clients: DEFAULT_MIN_CLIENTS,
            max_clients: DEFAULT_MAX_CLIENTS,
            min_survivors: DEFAULT_MIN_SURVIVORS,
            require_dp: false,
            min_noise_multiplier: 0.0,
        }
    }
}

/// One rule of a [`Policy`], as named in a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PolicyRule {
    /// Too many clients (or identities) for the client to allocate for.
    MaxClients,
    /// Too few clients.
    MinClients,
    /// A weaker threat model than the policy insists on.
    ThreatModel,
    /// A sparse graph in the malicious-server model.
    Graph,
    /// A threshold below the floor for the client's own corrupt assumption.
    Threshold,
    /// A survivor floor below the policy's.
    SurvivorFloor,
    /// No distributed DP where the policy requires it.
    RequireDp,
    /// Less client-side noise than the policy requires.
    MinNoiseMultiplier,
}

impl PolicyRule {
    /// The rule's kebab-case name, as in error messages and `tessera join`'s
    /// flags.
    pub fn name(self) -> &'static str {
        match self {
            PolicyRule::MaxClients => "max-clients",
            PolicyRule::MinClients => "min-clients",
            PolicyRule::ThreatModel => "threat-model",
            PolicyRule::Graph => "graph",
            PolicyRule::Threshold => "threshold",
            PolicyRule::SurvivorFloor => "survivor-floor",
            PolicyRule::RequireDp => "require-dp",
            PolicyRule::MinNoiseMultiplier => "min-noise-multiplier",
        }
    }
}

impl fmt::Display for PolicyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A refusal before the round's identity is known to the caller: the rule
/// and what about the round breaks it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Violation {
    pub(crate) rule: PolicyRule,
    pub(crate) problem: String,
}

impl Violation {
    /// The typed error for round `round_id`.
    pub(crate) fn in_round(self, round_id: u64) -> ClientError {
        ClientError::PolicyRefused {
            round_id,
            rule: self.rule,
            problem: self.problem,
        }
    }
}

fn violation(rule: PolicyRule, problem: String) -> Result<(), Violation> {
    Err(Violation { rule, problem })
}

/// The strength order of the threat models.
fn rank(model: ThreatModel) -> u8 {
    match model {
        ThreatModel::SemiHonest => 0,
        ThreatModel::SemiMalicious => 1,
        ThreatModel::MaliciousServer => 2,
    }
}

/// The per-client noise multiplier of a distributed DP round: the standard
/// deviation of the noise this client adds to each coordinate, over the L2
/// sensitivity of its contribution.
///
/// Both in the integer domain (after scaling by `2^frac_bits`): the noise is
/// `sqrt(per_client_variance) = target_sigma / sqrt(min_survivors)`
/// ([`DistributedDp::per_client_variance`](tessera_dp::mechanism::DistributedDp::per_client_variance),
/// what the client's sampler draws), and the sensitivity is the round's
/// `norm_bound`, the L2 bound conditional rounding keeps the client's
/// clipped, scaled, rounded update within (at least `clip_norm · 2^f`).
/// The noise over any `s` survivors then has multiplier `sqrt(s)` times
/// this; against a server colluding with `c` of them, the honest part of
/// the noise has `sqrt(s - c)` times it.
///
/// ```
/// use tessera_dp::mechanism::{DistributedEncoding, NoiseKind};
/// use tessera_dp::encoding::FixedPoint;
/// use tessera_client::per_client_noise_multiplier;
///
/// // Total multiplier 1.0 over 16 survivors: each adds a quarter.
/// let fp = FixedPoint::new(1.0, 16, 32).unwrap();
/// let enc = DistributedEncoding::new(fp, NoiseKind::DiscreteGaussian, 1.0, 16, 100).unwrap();
/// assert!((per_client_noise_multiplier(&enc) - 0.25).abs() < 1e-12);
/// ```
pub fn per_client_noise_multiplier(encoding: &DistributedEncoding) -> f64 {
    encoding.dp.per_client_variance().sqrt() / encoding.norm_bound
}

impl Policy {
    /// Checks the policy's own values; the builder calls it with whether
    /// the client has an identity.
    pub(crate) fn validate(&self, has_identity: bool) -> Result<(), ClientError> {
        let bad = |setting: &'static str, problem: String| {
            Err(ClientError::InvalidSetting { setting, problem })
        };
        if !(0.0..1.0).contains(&self.assume_corrupt) {
            return bad(
                "policy.assume_corrupt",
                format!("{} is not a fraction in [0, 1)", self.assume_corrupt),
            );
        }
        if self.min_clients < DEFAULT_MIN_CLIENTS {
            return bad(
                "policy.min_clients",
                format!(
                    "{} is too few: with fewer than 3 clients one learns another's input from the sum",
                    self.min_clients
                ),
            );
        }
        if self.max_clients < self.min_clients {
            return bad(
                "policy.max_clients",
                format!(
                    "{} is below min_clients {}",
                    self.max_clients, self.min_clients
                ),
            );
        }
        if self.min_survivors < DEFAULT_MIN_SURVIVORS {
            return bad(
                "policy.min_survivors",
                format!(
                    "{} is below {DEFAULT_MIN_SURVIVORS}, the least a sum can hide an input in (from a sum of two, each contributor recovers the other's input)",
                    self.min_survivors
                ),
            );
        }
        if !(self.min_noise_multiplier.is_finite() && self.min_noise_multiplier >= 0.0) {
            return bad(
                "policy.min_noise_multiplier",
                format!("{} is not a number >= 0", self.min_noise_multiplier),
            );
        }
        if self.min_noise_multiplier > 0.0 && !self.require_dp {
            return bad(
                "policy.min_noise_multiplier",
                "a minimum noise multiplier needs require_dp (a round without distributed DP has no client noise to check)".into(),
            );
        }
        match (self.threat_model, has_identity) {
            (Some(model), true) if model != ThreatModel::MaliciousServer => bad(
                "policy.threat_model",
                format!(
                    "a client with an identity takes part in malicious-server rounds only, not {model}"
                ),
            ),
            (Some(ThreatModel::MaliciousServer), false) => bad(
                "policy.threat_model",
                "malicious-server rounds need the client's identity (ClientBuilder::identity)"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// The weakest threat model accepted, for a client with or without an
    /// identity.
    pub fn effective_threat_model(&self, has_identity: bool) -> ThreatModel {
        match (self.threat_model, has_identity) {
            (Some(model), _) => model,
            (None, true) => ThreatModel::MaliciousServer,
            (None, false) => ThreatModel::SemiHonest,
        }
    }

    /// Checks the round configuration of a RoundStart against the policy,
    /// straight from the wire: before the core converts it (and builds
    /// anything sized by its numbers), so the bound on `n` comes first and
    /// a refusal always names the policy's rule. A field the core cannot
    /// read (an unknown threat model) is left to the conversion to refuse.
    /// The colluders this policy assumes in a round of `n` clients:
    /// ⌊assume_corrupt · n⌋, counted as the parameter finder counts them.
    pub fn corrupt_count(&self, n: u32) -> u32 {
        params::worst_count(self.assume_corrupt, n)
    }

    pub(crate) fn check_round(
        &self,
        wire: &v1::RoundConfig,
        identities: usize,
        has_identity: bool,
    ) -> Result<(), Violation> {
        let n = wire.num_clients;
        if n > self.max_clients {
            return violation(
                PolicyRule::MaxClients,
                format!(
                    "the round has {n} clients, the policy allows at most {}",
                    self.max_clients
                ),
            );
        }
        if identities > self.max_clients as usize {
            return violation(
                PolicyRule::MaxClients,
                format!(
                    "the round names {identities} identities, the policy allows at most {} clients",
                    self.max_clients
                ),
            );
        }
        if n < self.min_clients {
            return violation(
                PolicyRule::MinClients,
                format!(
                    "the round has {n} clients, the policy needs at least {}",
                    self.min_clients
                ),
            );
        }
        let Ok(round_model) = wire.threat_model.parse::<ThreatModel>() else {
            return Ok(());
        };
        let model = self.effective_threat_model(has_identity);
        if rank(round_model) < rank(model) {
            return violation(
                PolicyRule::ThreatModel,
                format!(
                    "the round runs the {round_model} threat model, the policy needs at least {model}"
                ),
            );
        }
        // As on the wire: 0 is the complete graph. A degree the core
        // refuses (odd, >= n) is left to it; the floor below stays defined
        // for any value.
        let graph = match wire.harary_k {
            0 => GraphKind::Complete,
            k => GraphKind::Harary { k },
        };
        if round_model == ThreatModel::MaliciousServer && graph != GraphKind::Complete {
            return violation(
                PolicyRule::Graph,
                format!(
                    "the malicious-server round runs on the {graph} graph, the policy needs the complete graph (on a sparse graph the server chooses who neighbours whom)"
                ),
            );
        }
        let own = self.corrupt_count(n);
        let corrupt = own.max(wire.corrupt);
        let floor = params::threshold_floor(round_model, n, corrupt, graph);
        if wire.threshold < floor {
            return violation(
                PolicyRule::Threshold,
                format!(
                    "threshold {} for {n} clients on the {graph} graph can be beaten by a {round_model} server with {corrupt} corrupt clients (the policy assumes {} of the clients, the server states {}); it needs at least {floor}",
                    wire.threshold, self.assume_corrupt, wire.corrupt
                ),
            );
        }
        let survivor_floor = wire.threshold.max(wire.min_survivors);
        if survivor_floor < self.min_survivors {
            return violation(
                PolicyRule::SurvivorFloor,
                format!(
                    "the round publishes sums of as few as {survivor_floor} inputs (threshold {}, min_survivors {}), the policy needs at least {}",
                    wire.threshold, wire.min_survivors, self.min_survivors
                ),
            );
        }
        Ok(())
    }

    /// Checks the round's distributed DP parameters (already checked by the
    /// core for what the samplers can draw), or their absence.
    pub(crate) fn check_dp(
        &self,
        distributed: Option<&DistributedEncoding>,
    ) -> Result<(), Violation> {
        if !self.require_dp {
            return Ok(());
        }
        let Some(encoding) = distributed else {
            return violation(
                PolicyRule::RequireDp,
                "the round runs without distributed DP (no client-side noise), the policy requires it".into(),
            );
        };
        let z = per_client_noise_multiplier(encoding);
        // `!(z >= min)` also refuses a NaN.
        if !(z >= self.min_noise_multiplier && z > 0.0) {
            return violation(
                PolicyRule::MinNoiseMultiplier,
                format!(
                    "the round's per-client noise multiplier is {z:.4} (per-client std {:.4} over sensitivity {:.4}), the policy needs at least {}",
                    encoding.dp.per_client_variance().sqrt(),
                    encoding.norm_bound,
                    self.min_noise_multiplier
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_aggregation::RoundConfig;
    use tessera_dp::encoding::FixedPoint;
    use tessera_dp::mechanism::NoiseKind;

    /// A round as `tessera serve` offers it: its survivor floor is at
    /// least the minimum aggregate, 3.
    fn round(n: u32, threshold: u32) -> RoundConfig {
        let mut config = RoundConfig::new(1, n, 10);
        config.threshold = threshold;
        config.min_survivors = config.min_survivors.max(3);
        config
    }

    fn rule(result: Result<(), Violation>) -> Option<PolicyRule> {
        result.err().map(|v| v.rule)
    }

    impl Policy {
        /// The whole check of a round, as the driver runs it.
        fn check(
            &self,
            config: &RoundConfig,
            distributed: Option<&DistributedEncoding>,
            has_identity: bool,
        ) -> Result<(), Violation> {
            self.check_round(&config.into(), 0, has_identity)?;
            self.check_dp(distributed)
        }
    }

    #[test]
    fn the_default_validates_with_and_without_identity() {
        assert_eq!(Policy::default().validate(false), Ok(()));
        assert_eq!(Policy::default().validate(true), Ok(()));
        assert_eq!(
            Policy::default().effective_threat_model(true),
            ThreatModel::MaliciousServer
        );
        assert_eq!(
            Policy::default().effective_threat_model(false),
            ThreatModel::SemiHonest
        );
    }

    #[test]
    fn contradictory_policies_fail_validation() {
        for (policy, identity, setting) in [
            (
                Policy {
                    assume_corrupt: 1.0,
                    ..Policy::default()
                },
                false,
                "policy.assume_corrupt",
            ),
            (
                Policy {
                    assume_corrupt: f64::NAN,
                    ..Policy::default()
                },
                false,
                "policy.assume_corrupt",
            ),
            (
                Policy {
                    min_clients: 2,
                    ..Policy::default()
                },
                false,
                "policy.min_clients",
            ),
            (
                Policy {
                    max_clients: 2,
                    ..Policy::default()
                },
                false,
                "policy.max_clients",
            ),
            (
                Policy {
                    min_survivors: 1,
                    ..Policy::default()
                },
                false,
                "policy.min_survivors",
            ),
            (
                Policy {
                    min_noise_multiplier: 0.5,
                    ..Policy::default()
                },
                false,
                "policy.min_noise_multiplier",
            ),
            (
                Policy {
                    threat_model: Some(ThreatModel::SemiMalicious),
                    ..Policy::default()
                },
                true,
                "policy.threat_model",
            ),
            (
                Policy {
                    threat_model: Some(ThreatModel::MaliciousServer),
                    ..Policy::default()
                },
                false,
                "policy.threat_model",
            ),
        ] {
            match policy.validate(identity) {
                Err(ClientError::InvalidSetting { setting: s, .. }) => assert_eq!(s, setting),
                other => panic!("{policy:?}: expected {setting}, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_default_accepts_the_projects_rounds() {
        let policy = Policy::default();
        // `tessera serve` with 3 clients: complete graph, t = 2.
        assert_eq!(policy.check(&round(3, 2), None, false), Ok(()));
        // The SDK test's real round, and a majority threshold.
        assert_eq!(policy.check(&round(4, 3), None, false), Ok(()));
        assert_eq!(policy.check(&round(100, 51), None, false), Ok(()));
        // Finder parameters in every model the client can run.
        for (n, model) in [
            (20, ThreatModel::SemiHonest),
            (100, ThreatModel::SemiHonest),
            (1000, ThreatModel::SemiHonest),
            (100, ThreatModel::SemiMalicious),
            (1000, ThreatModel::SemiMalicious),
        ] {
            let found = params::find_params(&params::ParamsRequest {
                clients: n,
                dropout_rate: 0.1,
                corrupt_rate: DEFAULT_ASSUME_CORRUPT,
                threat_model: model,
            })
            .unwrap();
            let mut config = round(n, found.threshold);
            config.graph = found.graph;
            config.threat_model = model;
            config.corrupt = params::worst_count(DEFAULT_ASSUME_CORRUPT, n);
            assert_eq!(policy.check(&config, None, false), Ok(()), "{n} {model}");
        }
        // A malicious-server round of 10 with the server's floor.
        let mut config = round(10, 0);
        config.threat_model = ThreatModel::MaliciousServer;
        config.threshold = params::threshold_floor(
            ThreatModel::MaliciousServer,
            10,
            params::worst_count(DEFAULT_ASSUME_CORRUPT, 10),
            GraphKind::Complete,
        );
        assert_eq!(policy.check(&config, None, true), Ok(()));
    }

    #[test]
    fn a_stated_corrupt_of_zero_does_not_lower_the_floor() {
        // 100 clients, semi-honest, complete graph: the client assumes 5
        // colluders whatever the server states, so t = 3 is refused.
        let mut config = round(100, 3);
        config.corrupt = 0;
        let err = Policy::default().check(&config, None, false).unwrap_err();
        assert_eq!(err.rule, PolicyRule::Threshold);
        assert!(err.problem.contains("at least 6"), "{}", err.problem);
        // A server that states more colluders than the policy assumes raises
        // the floor too.
        let mut config = round(10, 3);
        config.corrupt = 4;
        assert_eq!(
            rule(Policy::default().check(&config, None, false)),
            Some(PolicyRule::Threshold)
        );
    }

    #[test]
    fn numbers_the_core_would_refuse_do_not_upset_the_policy() {
        // An odd degree, a degree above n, colluders beyond n, a huge
        // threshold: the policy's arithmetic stays defined (the core then
        // refuses the configuration itself).
        let base = v1::RoundConfig::from(&round(10, 6));
        for wire in [
            v1::RoundConfig {
                harary_k: 7,
                ..base.clone()
            },
            v1::RoundConfig {
                harary_k: u32::MAX,
                ..base.clone()
            },
            v1::RoundConfig {
                corrupt: u32::MAX,
                ..base.clone()
            },
            v1::RoundConfig {
                threshold: u32::MAX,
                min_survivors: u32::MAX,
                ..base.clone()
            },
            v1::RoundConfig {
                threat_model: "trusting".into(),
                ..base.clone()
            },
        ] {
            let _ = Policy::default().check_round(&wire, 0, false);
        }
        assert_eq!(
            rule(Policy::default().check_round(
                &v1::RoundConfig {
                    corrupt: u32::MAX,
                    ..base
                },
                0,
                false
            )),
            Some(PolicyRule::Threshold)
        );
    }

    /// A client whose policy allows any number of clients gets a round of
    /// `u32::MAX` clients with a huge stated corrupt count: the floors'
    /// sums pass `u32::MAX`. They used to overflow (a panic in a debug
    /// build, a wrapped, tiny floor in a release build that a threshold of
    /// a few hundred million passed); the floor is computed in u64 now and
    /// the round is refused on the threshold rule.
    #[test]
    fn floors_over_huge_server_counts_do_not_wrap() {
        let policy = Policy {
            max_clients: u32::MAX,
            ..Policy::default()
        };
        for (model, threshold) in [
            (ThreatModel::SemiMalicious, 600_000_000),
            (ThreatModel::MaliciousServer, u32::MAX / 2),
        ] {
            let mut config = round(3, 2);
            config.threat_model = model;
            let wire = v1::RoundConfig {
                num_clients: u32::MAX,
                corrupt: u32::MAX - 1,
                threshold,
                min_survivors: threshold,
                ..v1::RoundConfig::from(&config)
            };
            let err = policy.check_round(&wire, 0, false).unwrap_err();
            assert_eq!(err.rule, PolicyRule::Threshold, "{model}: {}", err.problem);
        }
        // The core's own floor and signature quorum stay defined too.
        assert_eq!(
            params::threshold_floor(
                ThreatModel::MaliciousServer,
                u32::MAX,
                u32::MAX - 1,
                GraphKind::Complete
            ),
            u32::MAX
        );
        let mut config = round(3, 2);
        config.num_clients = u32::MAX;
        config.corrupt = u32::MAX - 1;
        assert_eq!(config.signature_quorum(), u32::MAX);
    }

    #[test]
    fn the_noise_multiplier_is_checked_against_the_round() {
        let fp = FixedPoint::new(1.0, 16, 32).unwrap();
        let enc = DistributedEncoding::new(fp, NoiseKind::DiscreteGaussian, 1.0, 4, 10).unwrap();
        // Total 1.0 over 4 survivors: 0.5 per client.
        let z = per_client_noise_multiplier(&enc);
        assert!((z - 0.5).abs() < 1e-9, "{z}");
        let policy = |min| Policy {
            require_dp: true,
            min_noise_multiplier: min,
            ..Policy::default()
        };
        let config = round(5, 4);
        assert_eq!(policy(0.5).check(&config, Some(&enc), false), Ok(()));
        assert_eq!(
            rule(policy(0.51).check(&config, Some(&enc), false)),
            Some(PolicyRule::MinNoiseMultiplier)
        );
        assert_eq!(
            rule(policy(0.0).check(&config, None, false)),
            Some(PolicyRule::RequireDp)
        );
        // Without the requirement a round without DP is fine.
        assert_eq!(Policy::default().check(&config, None, false), Ok(()));
    }
}
