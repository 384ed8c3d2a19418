//! Round planning: what a round of a given size runs with, derived from
//! the [`ServerConfig`] once the lobby knows how many clients it holds.
//!
//! The graph and Shamir threshold (and the threat model's floor under them),
//! the survivor floor a round must keep, the ring and fixed-point format its
//! sum fits in, the noise distributed DP adds, and the DP mechanism the
//! ledger is charged for. [`ServerConfig::validate`] runs the same planning
//! for the widest round before the server listens, so a setting that cannot
//! be planned is refused at start-up rather than at the first round.

use tessera_aggregation::ThreatModel;
use tessera_aggregation::graph::GraphKind;
use tessera_aggregation::params::{self, GraphRequest, ParamSource, ParamsRequest, RoundParams};
use tessera_dp::encoding::{self, FixedPoint};
use tessera_dp::ledger::Mechanism;
use tessera_dp::mechanism::{
    CentralDp, DistributedEncoding, DpError, choose_bits_with_noise, wrap_probability,
};
use tessera_dp::tree::max_increment_nodes;

use crate::config::{ConfigError, DpMode, GraphChoice, ServerConfig, ThresholdRule, invalid};

/// With distributed DP, the most a round's noised sum may wrap the ring
/// (any coordinate, union bound): one round in a million.
pub(crate) const WRAP_PROBABILITY: f64 = 1e-6;

impl ServerConfig {
    /// How a round of `clients` that goes on with at least `min_survivors`
    /// (see [`ServerConfig::survivor_floor`]) and this model dimension
    /// encodes updates: the fixed point (its ring wide enough for the sum
    /// of every client's input, noise included), and with distributed DP
    /// the noise each client adds.
    ///
    /// Without DP the ring is at least [`encoding::choose_bits`]' (no wrap at
    /// all): an explicit `bits` below it is refused with the smallest safe
    /// value.
    /// With DP the noise is unbounded, so the ring is the smallest whose
    /// chance that any coordinate of the noised sum wraps is at most
    /// [`WRAP_PROBABILITY`]; an explicit `bits` that misses that bound is
    /// refused. That holds for central DP and DP-FTRL too, whose server
    /// noise is added inside the ring before decoding (one draw of `z Δ`
    /// for central DP, up to [`max_increment_nodes`] tree nodes' for a
    /// DP-FTRL step), so colluding clients cannot use the wrap point to
    /// amplify an honest update past the noise.
    pub(crate) fn round_encoding(
        &self,
        clients: u32,
        min_survivors: u32,
        dim: u32,
    ) -> Result<(FixedPoint, Option<DistributedEncoding>), ConfigError> {
        self.round_encoding_at(self.round.clip_norm, clients, min_survivors, dim)
    }

    /// The vector a round sums when the update is clipped to `clip_norm`
    /// and the model has `dim` coordinates: its L2 bound (the fixed point's
    /// clip norm) and its length. Without extras, `(clip_norm, dim)`; with
    /// them, `Δ = C sqrt(1 + m κ²)` and `dim + k` (see
    /// [`tessera_dp::extras`]), so the ring, the noise and the ledger's
    /// sensitivity all cover the extras.
    pub(crate) fn summed(&self, clip_norm: f32, dim: u32) -> (f32, u32) {
        match self.extras_layout(clip_norm) {
            None => (clip_norm, dim),
            Some(layout) => (layout.joint_bound(), dim + layout.len() as u32),
        }
    }

    /// [`Self::round_encoding`] for an update clip norm other than the
    /// configured one (adaptive clipping's); `dim` is the model's.
    pub(crate) fn round_encoding_at(
        &self,
        clip_norm: f32,
        clients: u32,
        min_survivors: u32,
        dim: u32,
    ) -> Result<(FixedPoint, Option<DistributedEncoding>), ConfigError> {
        let (clip_norm, dim) = self.summed(clip_norm, dim);
        let fixed = |bits: u8| {
            FixedPoint::new(clip_norm, self.round.frac_bits, bits)
                .map_err(|e| invalid("bits", e.to_string()))
        };
        // The norm bound depends on C, f and dim only, so a provisional
        // 32-bit format gives the noise, and the noise the ring.
        let (norm_bound, sigma_all, distributed) = match self.dp.mode {
            DpMode::Off => {
                let needed = encoding::choose_bits(clients, clip_norm, self.round.frac_bits)
                    .map_err(|e| invalid("bits", e.to_string()))?;
                let bits = match self.round.bits {
                    // An explicit ring narrower than the worst-case sum would
                    // wrap silently and publish a wrong model.
                    Some(b) if b < needed => {
                        return Err(invalid(
                            "bits",
                            format!(
                                "{b} bits let the sum of {clients} clients' updates (clip_norm {clip_norm}, frac_bits {}) wrap; the smallest safe value is {needed} (or leave bits unset to choose it)",
                                self.round.frac_bits
                            ),
                        ));
                    }
                    Some(b) => b,
                    None => needed,
                };
                return Ok((fixed(bits)?, None));
            }
            // The server adds its noise inside the ring (see `CentralDp`),
            // so the ring holds the sum, every coordinate of each input
            // below `C 2^f + 1` (rounding), plus the noise: one draw for
            // central DP, a tree step's increment for DP-FTRL.
            DpMode::Central | DpMode::Ftrl => {
                let central = self.central_noise(fixed(32)?, dim)?;
                let draws = match self.dp.mode {
                    DpMode::Ftrl => max_increment_nodes(self.dp.ftrl_epoch_rounds),
                    _ => 1,
                };
                let scaled_clip =
                    f64::from(clip_norm) * f64::from(1u32 << self.round.frac_bits) + 1.0;
                (scaled_clip, central.sigma() * f64::from(draws).sqrt(), None)
            }
            DpMode::Distributed => {
                let dp_error = |e: tessera_dp::mechanism::DpError| match e {
                    DpError::NoHonestSurvivors { .. } => invalid(
                        "min_survivors",
                        format!(
                            "{e} (a SecAgg+ graph's threshold is per neighbourhood: set min_survivors, e.g. \"0.5\", above corrupt_rate {})",
                            self.round.corrupt_rate
                        ),
                    ),
                    e => invalid("noise_multiplier", e.to_string()),
                };
                // Calibrated for the honest survivors: the corrupt clients the
                // threat model allows know their own noise and subtract it.
                let provisional = DistributedEncoding::calibrate(
                    fixed(32)?,
                    self.dp.noise,
                    self.dp.noise_multiplier,
                    min_survivors,
                    self.corrupt_count(clients),
                    dim as usize,
                )
                .map_err(dp_error)?;
                (
                    provisional.norm_bound,
                    provisional.dp.actual_sigma(clients),
                    Some(provisional),
                )
            }
        };
        let smallest = || {
            choose_bits_with_noise(
                clients,
                norm_bound,
                sigma_all,
                dim as usize,
                WRAP_PROBABILITY / f64::from(dim),
            )
        };
        let bits = match self.round.bits {
            None => smallest().map_err(|e| {
                invalid(
                    "bits",
                    format!("{e} (lower frac_bits, noise_multiplier or the clients per round)"),
                )
            })?,
            Some(b) => {
                let p = wrap_probability(clients, norm_bound, sigma_all, dim as usize, b)
                    .map_err(|e| invalid("bits", e.to_string()))?;
                if p > WRAP_PROBABILITY {
                    let needed = smallest().map_or_else(
                        |e| e.to_string(),
                        |n| format!("the smallest safe value is {n}"),
                    );
                    return Err(invalid(
                        "bits",
                        format!(
                            "{b} bits let a noised sum of {clients} clients of dimension {dim} wrap with probability up to {p:.2e} (more than {WRAP_PROBABILITY:e}); {needed} (or leave bits unset to choose it)"
                        ),
                    ));
                }
                b
            }
        };
        let fixed_point = fixed(bits)?;
        Ok((
            fixed_point,
            distributed.map(|provisional| DistributedEncoding {
                fixed_point,
                ..provisional
            }),
        ))
    }

    /// The mechanism a round that goes ahead spends at most, for the
    /// ledger's check before a round opens; `None` without DP.
    ///
    /// Central: the discrete Gaussian of [`CentralDp`], noise `z Δ` with
    /// `Δ = C 2^f + sqrt(dim)` (rounding included), no sampling
    /// amplification (the population behind the lobby is unknown).
    /// Distributed: the discrete Gaussian at the target std `z B`, what the
    /// fewest honest survivors a round accepts (its survivor floor minus
    /// its corrupt count) carry; more only add noise.
    pub(crate) fn planned_mechanism(&self, dim: u32) -> Result<Option<Mechanism>, ConfigError> {
        Ok(match self.dp.mode {
            DpMode::Off => None,
            DpMode::Central => Some(self.central_dp(self.round.min_clients, dim)?.mechanism()),
            // A tree's first step (one node's worth), checked at start-up;
            // the scheduler asks the tree for the step it is at.
            DpMode::Ftrl => {
                let central = self.central_dp(self.round.min_clients, dim)?;
                Some(Mechanism::TreeAggregation {
                    sigma: central.sigma(),
                    l2_sensitivity: central.l2_sensitivity(),
                    step: 1,
                })
            }
            DpMode::Distributed => {
                let n = self.round.min_clients;
                let (_, threshold) = self.graph_for(n)?;
                let floor = self.survivor_floor(n, threshold);
                let (_, encoding) = self.round_encoding(n, floor, dim)?;
                let (_, summed) = self.summed(self.round.clip_norm, dim);
                encoding
                    .map(|e| e.mechanism(floor, self.corrupt_count(n), summed as usize))
                    .transpose()
                    .map_err(|e| invalid("noise_multiplier", e.to_string()))?
            }
        })
    }

    /// The central DP mechanism of a round of `clients` and this model
    /// dimension: exact discrete Gaussian noise on the decoded integer sum
    /// (see [`CentralDp`]); refused if its scale is beyond the exact
    /// sampler.
    pub(crate) fn central_dp(&self, clients: u32, dim: u32) -> Result<CentralDp, ConfigError> {
        let (fixed_point, _) = self.round_encoding(clients, clients, dim)?;
        let (_, dim) = self.summed(self.round.clip_norm, dim);
        self.central_noise(fixed_point, dim)
    }

    /// The server's noise on a sum of `dim` values (extras included) in
    /// `fixed_point`: central DP's, and every DP-FTRL tree node's.
    fn central_noise(&self, fixed_point: FixedPoint, dim: u32) -> Result<CentralDp, ConfigError> {
        CentralDp::new(fixed_point, self.dp.noise_multiplier, dim as usize).map_err(|e| {
            invalid(
                "noise_multiplier",
                format!(
                    "central DP noise of {} x (clip_norm 2^frac_bits + sqrt(dim)) in units of 2^-frac_bits: {e}; lower frac_bits or noise_multiplier",
                    self.dp.noise_multiplier
                ),
            )
        })
    }

    /// The fewest survivors a round of `n` clients with Shamir threshold
    /// `threshold` goes on with: the threshold, raised to the
    /// `min_survivors` rule and to `min_aggregate` (so no published sum holds
    /// fewer inputs), at most `n` (validation keeps `min_aggregate` within
    /// every round's size).
    pub fn survivor_floor(&self, n: u32, threshold: u32) -> u32 {
        let floor = match self.round.min_survivors {
            None => threshold,
            Some(ThresholdRule::Majority) => n / 2 + 1,
            Some(ThresholdRule::Fraction(f)) => (f * f64::from(n)).ceil() as u32,
            Some(ThresholdRule::Count(c)) => c,
        };
        floor.max(threshold).max(self.round.min_aggregate).min(n)
    }

    /// The graph and threshold of a round of `n` clients, held to the
    /// threat model: an explicit graph or threshold it does not allow is
    /// refused, with what it needs. (The finder's choices are sized for the
    /// threat model already.)
    pub fn graph_for(&self, n: u32) -> Result<(GraphKind, u32), ConfigError> {
        let resolved = self.round_params(n)?;
        let (graph, t) = (resolved.graph, resolved.threshold);
        if resolved.graph_source == ParamSource::Finder {
            return Ok((graph, t));
        }
        if self.round.threat_model == ThreatModel::MaliciousServer && graph != GraphKind::Complete {
            // A server that chooses who neighbours whom can surround a
            // victim with colluders; the finder's odds assume it cannot.
            return Err(invalid(
                "graph",
                "the malicious-server threat model runs on the complete graph only (a lying server would choose who neighbours whom on a sparse one): set graph = \"complete\" or \"auto\"",
            ));
        }
        // The threat model's bound is enforced, not suggested: an explicit
        // rule that asks for less is refused, with the floor it must meet.
        if t < resolved.floor {
            return Err(invalid(
                "threshold",
                format!(
                    "a threshold of {t} for {n} clients can be beaten by a {} server with {} corrupt clients (corrupt_rate {}); it needs at least {}",
                    self.round.threat_model,
                    resolved.corrupt,
                    self.round.corrupt_rate,
                    resolved.floor
                ),
            ));
        }
        Ok((graph, t))
    }

    /// The graph and threshold of a round of `n` clients as the settings
    /// ask for them, with where each came from
    /// ([`params::resolve_round_params`]); not yet held to the threat
    /// model (see [`ServerConfig::graph_for`]).
    pub(crate) fn round_params(&self, n: u32) -> Result<RoundParams, ConfigError> {
        let (graph, threshold) = match self.round.graph {
            // The finder sets t too: the threshold rule is for explicit
            // graphs.
            GraphChoice::Auto => (GraphRequest::Finder, None),
            // A Harary graph needs k < n; with fewer clients it is the
            // complete graph anyway.
            GraphChoice::Harary(k) if k < n - 1 => (
                GraphRequest::Given(GraphKind::Harary { k }),
                Some(self.round.threshold),
            ),
            GraphChoice::Harary(_) | GraphChoice::Complete => (
                GraphRequest::Given(GraphKind::Complete),
                Some(self.round.threshold),
            ),
        };
        let request = ParamsRequest {
            clients: n,
            dropout_rate: self.round.dropout_rate,
            corrupt_rate: self.round.corrupt_rate,
            threat_model: self.round.threat_model,
        };
        params::resolve_round_params(&request, graph, threshold).map_err(|e| {
            invalid(
                "graph",
                format!("no SecAgg+ parameters for {n} clients: {e}"),
            )
        })
    }

    /// The most corrupt clients a round of `n` assumes: ⌊corrupt_rate · n⌋,
    /// counted as the parameter finder counts them.
    pub fn corrupt_count(&self, n: u32) -> u32 {
        params::worst_count(self.round.corrupt_rate, n)
    }
}

#[cfg(test)]
mod tests {
    use tessera_dp::mechanism::NoiseKind;

    use super::*;
    use crate::config::tests::dev;
    use crate::config::{DpSettings, RoundRules};

    #[test]
    fn an_explicit_bits_that_would_wrap_is_refused_with_the_smallest_safe_value() {
        // Three clients at clip norm 1 and 2^16 scale sum to at most
        // 3 (2^16 + 1) = 196,611, above the 2^17 - 1 an 18-bit ring holds
        // as a signed value: the sum would wrap into a wrong model.
        let mut c = dev();
        c.dp.mode = DpMode::Off;
        c.round.clip_norm = 1.0;
        c.round.frac_bits = 16;
        c.round.min_clients = 3;
        c.round.max_clients = 3;
        c.round.bits = Some(18);
        let err = c.validate().unwrap_err();
        assert!(
            err.to_string().contains("smallest safe value is 19"),
            "{err}"
        );
        c.round.bits = Some(19);
        c.validate().unwrap();
        // Central DP and DP-FTRL add their noise in the ring, so the ring
        // must hold the noise too: 19 bits no longer do.
        for mode in [DpMode::Central, DpMode::Ftrl] {
            c.dp.mode = mode;
            c.dp.noise_multiplier = 1.0;
            c.round.bits = Some(19);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("wrap with probability"), "{mode:?}: {err}");
        }
    }

    /// The ring of a central or DP-FTRL round holds the sum plus the
    /// noise's tail: `n (C 2^f + 1) + x <= 2^(bits-1) - 1`, with `x` the
    /// Bernstein tail of one draw of `z Δ` (central) or of
    /// `max_increment_nodes(S)` of them (a DP-FTRL step), at probability
    /// `1e-6 / d`.
    #[test]
    fn central_and_ftrl_rings_hold_the_noise_they_add() {
        let mut c = dev();
        c.round.clip_norm = 1.0;
        c.round.frac_bits = 8;
        c.dp.noise_multiplier = 20.0;
        c.dp.ftrl_epoch_rounds = 16;
        let (n, dim) = (10u32, 1000u32);
        let sum = f64::from(n) * 257.0;
        let sigma = 20.0 * (256.0 * (1.0 + 1.0 / (1u64 << 40) as f64) + f64::from(dim).sqrt());
        let limit = |bits: u8| ((1u64 << (bits - 1)) - 1) as f64;
        let tail = |sigma: f64| {
            let l = (2.0 / (1e-6 / f64::from(dim))).ln();
            l / 3.0 + (l * l / 9.0 + 2.0 * l * sigma * sigma).sqrt()
        };
        for (mode, draws) in [(DpMode::Central, 1.0f64), (DpMode::Ftrl, 5.0)] {
            c.dp.mode = mode;
            let (fp, _) = c.round_encoding(n, n, dim).unwrap();
            let need = sum + tail(sigma * draws.sqrt());
            assert!(
                need <= limit(fp.bits),
                "{mode:?}: {need} in {} bits",
                fp.bits
            );
            assert!(
                need > limit(fp.bits - 1),
                "{mode:?}: {} bits is not the smallest",
                fp.bits
            );
            // Well above what the sum alone needs.
            assert!(
                fp.bits > encoding::choose_bits(n, 1.0, 8).unwrap() + 2,
                "{mode:?}"
            );
        }
    }

    #[test]
    fn explicit_graphs_and_thresholds_meet_the_threat_models_floor() {
        // Semi-malicious, 10 clients, 1 assumed corrupt, Harary k = 4: a
        // lying server splits the 3 honest holders of a client's shares, so
        // t = 2 gives it both secrets; the floor is (4 + 1)/2 + 1 = 3.
        let mut c = dev();
        c.round.threat_model = ThreatModel::SemiMalicious;
        c.round.corrupt_rate = 0.1;
        c.round.graph = GraphChoice::Harary(4);
        c.round.threshold = ThresholdRule::Count(2);
        let err = c.graph_for(10).unwrap_err();
        assert!(err.to_string().contains("at least 3"), "{err}");
        c.round.threshold = ThresholdRule::Count(3);
        assert_eq!(c.graph_for(10).unwrap(), (GraphKind::Harary { k: 4 }, 3));
        // The complete graph's holders are the n - 1 others: a majority of
        // 9 is 5, but with one colluder the split needs t > (9 + 1)/2, so
        // the default rule rises to 6 and an explicit 5 is refused.
        c.round.graph = GraphChoice::Complete;
        c.round.threshold = ThresholdRule::Majority;
        assert_eq!(c.graph_for(10).unwrap(), (GraphKind::Complete, 6));
        c.round.threshold = ThresholdRule::Count(5);
        let err = c.graph_for(10).unwrap_err();
        assert!(err.to_string().contains("at least 6"), "{err}");
        c.round.corrupt_rate = 0.0;
        c.round.threshold = ThresholdRule::Majority;
        assert_eq!(c.graph_for(10).unwrap(), (GraphKind::Complete, 5));
        // Semi-honest with 3 colluders: their 3 shares must not reach t.
        c.round.threat_model = ThreatModel::SemiHonest;
        c.round.corrupt_rate = 0.3;
        c.round.threshold = ThresholdRule::Count(3);
        let err = c.graph_for(10).unwrap_err();
        assert!(err.to_string().contains("at least 4"), "{err}");
    }

    #[test]
    fn the_malicious_server_model_refuses_a_sparse_graph() {
        let mut c = dev();
        c.round.threat_model = ThreatModel::MaliciousServer;
        c.network.identities_file = Some("enrolled.txt".into());
        c.round.graph = GraphChoice::Harary(4);
        c.round.threshold = ThresholdRule::Count(4);
        let err = c.graph_for(10).unwrap_err();
        assert!(err.to_string().contains("complete graph only"), "{err}");
    }

    /// A threshold of 2 (3 clients, each with 2 share holders) would let a
    /// round publish the sum of 2 inputs; the survivor floor is held at
    /// `min_aggregate`, and the round's configuration carries it.
    #[test]
    fn the_survivor_floor_is_at_least_the_minimum_aggregate() {
        let mut c = dev();
        c.round.graph = GraphChoice::Complete;
        assert_eq!(c.graph_for(3).unwrap(), (GraphKind::Complete, 2));
        assert_eq!(c.survivor_floor(3, 2), 3);
        c.round.min_survivors = Some(ThresholdRule::Count(2));
        assert_eq!(c.survivor_floor(3, 2), 3);
        c.round.min_aggregate = 5;
        assert_eq!(c.survivor_floor(10, 3), 5);
        c.round.min_survivors = Some(ThresholdRule::Count(7));
        assert_eq!(c.survivor_floor(10, 3), 7);
    }

    #[test]
    fn graph_and_threshold_rules() {
        let mut c = dev();
        c.round.graph = GraphChoice::Complete;
        // Rules count a client's share holders: its n - 1 neighbours.
        assert_eq!(c.graph_for(10).unwrap(), (GraphKind::Complete, 5));
        c.round.threshold = ThresholdRule::Fraction(0.66);
        assert_eq!(c.graph_for(10).unwrap(), (GraphKind::Complete, 6));
        c.round.threshold = ThresholdRule::Count(50);
        assert_eq!(c.graph_for(10).unwrap(), (GraphKind::Complete, 9));
        c.round.graph = GraphChoice::Harary(4);
        c.round.threshold = ThresholdRule::Majority;
        assert_eq!(c.graph_for(10).unwrap(), (GraphKind::Harary { k: 4 }, 3));
        // Too few clients for the degree: complete graph.
        assert_eq!(c.graph_for(5).unwrap(), (GraphKind::Complete, 3));
        c.round.graph = GraphChoice::Auto;
        let (graph, t) = c.graph_for(1000).unwrap();
        assert!(matches!(graph, GraphKind::Harary { .. }), "{graph:?}");
        assert!(t >= 2);
    }

    #[test]
    fn distributed_dp_widens_the_ring_for_its_noise_and_plans_the_target_noise() {
        let mut c = ServerConfig {
            dp: DpSettings {
                mode: DpMode::Distributed,
                noise_multiplier: 2.0,
                ..dev().dp
            },
            ..dev()
        };
        // Up to 10,000 clients on SecAgg+ graphs assume 500 corrupt: the
        // per-neighbourhood threshold (22) is no floor for the noise.
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("set min_survivors"), "{err}");
        c.round.min_survivors = Some(ThresholdRule::Fraction(0.5));
        c.validate().unwrap();
        let (plain, none) = dev().round_encoding(20, 11, 1000).unwrap();
        assert!(none.is_none());
        let (fp, enc) = c.round_encoding(20, 11, 1000).unwrap();
        let enc = enc.expect("distributed DP encodes with noise");
        assert!(fp.bits > plain.bits, "{} vs {}", fp.bits, plain.bits);
        assert_eq!(enc.fixed_point, fp);
        // 11 survivors at least, ⌊0.05 × 20⌋ = 1 of them possibly corrupt:
        // the 10 honest carry the target.
        assert_eq!(enc.dp.min_survivors, 10);
        assert_eq!(enc.dp.target_sigma, 2.0 * enc.norm_bound);
        let p = wrap_probability(20, enc.norm_bound, enc.dp.actual_sigma(20), 1000, fp.bits);
        assert!(p.unwrap() <= WRAP_PROBABILITY);
        // One bit fewer would break the wrap bound, so an explicit choice
        // of it is refused with the reason.
        let narrow = ServerConfig {
            round: RoundRules {
                bits: Some(fp.bits - 1),
                ..c.clone().round
            },
            ..c.clone()
        };
        let err = narrow.round_encoding(20, 11, 1000).unwrap_err().to_string();
        assert!(err.contains("wrap"), "{err}");
        // The ledger's check plans for the target noise: rho = 1/(2 z^2).
        match c.planned_mechanism(1000).unwrap() {
            Some(Mechanism::DiscreteGaussian {
                sigma,
                l2_sensitivity,
            }) => assert!((sigma / l2_sensitivity - 2.0).abs() < 1e-12),
            other => panic!("{other:?}"),
        }
        assert_eq!(dev().planned_mechanism(1000).unwrap(), None);
        assert!("distributed".parse::<DpMode>().is_ok());
        let toml = ServerConfig::from_toml("dp = \"distributed\"\ndp_noise = \"skellam\"").unwrap();
        assert_eq!(toml.dp.noise, NoiseKind::Skellam);
        assert!(ServerConfig::from_toml("dp_noise = \"laplace\"").is_err());
    }

    /// Colluders subtract their own noise: with corrupt clients the noise
    /// is calibrated for the honest survivors, so each client adds more
    /// than a calibration over all survivors would, and the plan charges
    /// their noise.
    #[test]
    fn distributed_dp_is_calibrated_for_the_honest_survivors() {
        let c = ServerConfig {
            round: RoundRules {
                corrupt_rate: 0.2,
                graph: GraphChoice::Complete,
                min_clients: 10,
                max_clients: 10,
                ..dev().round
            },
            dp: DpSettings {
                mode: DpMode::Distributed,
                noise_multiplier: 1.0,
                ..dev().dp
            },
            ..dev()
        };
        c.validate().unwrap();
        assert_eq!(c.corrupt_count(10), 2);
        let (_, t) = c.graph_for(10).unwrap();
        let floor = c.survivor_floor(10, t);
        let (_, enc) = c.round_encoding(10, floor, 100).unwrap();
        let enc = enc.unwrap();
        assert_eq!(enc.dp.min_survivors, floor - 2);
        // floor - 2 honest clients carry the whole target.
        let honest_sigma = enc.dp.actual_sigma(floor - 2);
        assert!((honest_sigma - enc.dp.target_sigma).abs() < 1e-9 * honest_sigma);
        match c.planned_mechanism(100).unwrap() {
            Some(Mechanism::DiscreteGaussian {
                sigma,
                l2_sensitivity,
            }) => assert!((sigma / l2_sensitivity - 1.0).abs() < 1e-12),
            other => panic!("{other:?}"),
        }
        // A floor that colluders could fill is refused, naming the rule.
        let err = c.round_encoding(10, 2, 100).unwrap_err().to_string();
        assert!(
            err.contains("min_survivors")
                && err.contains("not above the 2 clients assumed corrupt"),
            "{err}"
        );
    }

    /// Central DP plans the discrete Gaussian with rounding in the
    /// sensitivity, and a noise the exact sampler cannot draw is refused
    /// at start-up.
    #[test]
    fn central_dp_plans_the_discrete_gaussian_with_rounding_in_the_sensitivity() {
        let c = ServerConfig {
            round: RoundRules {
                frac_bits: 8,
                ..dev().round
            },
            dp: DpSettings {
                mode: DpMode::Central,
                noise_multiplier: 1.5,
                ..dev().dp
            },
            ..dev()
        };
        c.validate().unwrap();
        match c.planned_mechanism(10_000).unwrap() {
            Some(Mechanism::DiscreteGaussian {
                sigma,
                l2_sensitivity,
            }) => {
                assert!(
                    (l2_sensitivity - (256.0 + 100.0)).abs() < 1e-6,
                    "{l2_sensitivity}"
                );
                assert!((sigma - 1.5 * l2_sensitivity).abs() < 1e-9);
            }
            other => panic!("{other:?}"),
        }
        let loud = ServerConfig {
            round: RoundRules {
                frac_bits: 16,
                ..c.round
            },
            dp: DpSettings {
                noise_multiplier: 100.0,
                ..c.dp
            },
            ..c
        };
        let err = loud.validate().unwrap_err().to_string();
        assert!(
            err.contains("noise_multiplier") && err.contains("frac_bits"),
            "{err}"
        );
    }
}
