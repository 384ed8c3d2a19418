//! The round configuration: everything every participant must agree on before
//! a round starts.
//!
//! The server chooses a [`RoundConfig`] and hands the same value to every
//! client (in a deployment, in the round's opening message). Nothing in it is
//! secret: the graph seed is public so every client derives the same
//! neighbour graph, and the PRG name makes clients and server expand masks
//! with the same stream cipher.

use core::fmt;
use core::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ClientId;
use crate::graph::{GraphKind, NeighbourGraph};
use crate::mask::Prg;

/// Parameters of one secure aggregation round, shared by the server and every
/// client.
///
/// Build one with [`RoundConfig::new`] and adjust fields, then call
/// [`RoundConfig::validate`]; both session types validate on construction.
///
/// ```
/// use tessera_aggregation::config::RoundConfig;
/// let mut config = RoundConfig::new(7, 100, 1000);
/// config.threshold = 60;
/// assert!(config.validate().is_ok());
/// config.threshold = 1; // a threshold of 1 hands every neighbour the secrets
/// assert!(config.validate().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundConfig {
    /// Identifies the round; bound into every key derivation, share
    /// encryption and message so nothing from one round is accepted in another.
    pub round_id: u64,
    /// Number of clients invited to the round (`n`). Clients are numbered
    /// `0..n`; the Shamir x-coordinate of client `i` is `i + 1`.
    pub num_clients: u32,
    /// Shamir threshold `t`: how many share holders must answer to rebuild a
    /// secret, and how many clients must survive every stage.
    pub threshold: u32,
    /// A floor on the survivors of every stage above `threshold` (0: none):
    /// the round aborts, before any share is revealed, if fewer clients
    /// survive, and with the complete graph (where an unmasking request
    /// names every survivor) a client answers no request naming fewer.
    /// Distributed DP calibrates each client's noise for this many
    /// survivors; in a SecAgg+ round `threshold` is per neighbourhood and
    /// far below the survivors DP needs. See [`RoundConfig::survivor_floor`].
    #[serde(default)]
    pub min_survivors: u32,
    /// Who shares keys and masks with whom: the complete graph (SecAgg) or a
    /// Harary graph of even degree `k` (SecAgg+).
    pub graph: GraphKind,
    /// Public seed of the random permutation under the Harary graph.
    pub graph_seed: [u8; 32],
    /// Length `d` of every input vector.
    pub dim: u32,
    /// Inputs and masks live in `Z_{2^bits}`, `1 <= bits <= 32`.
    pub bits: u8,
    /// The stream cipher that expands mask seeds.
    pub prg: Prg,
    /// `SemiMalicious` adds the ConsistencyCheck stage, in which survivors
    /// confirm the survivor set before anyone reveals a share;
    /// `MaliciousServer` also signs the advertised keys and the survivor
    /// set with long-term identities ([`crate::identity`]).
    pub threat_model: ThreatModel,
    /// The most clients assumed to collude with the server (0 by default).
    /// The malicious-server model enforces its thresholds for this many:
    /// see [`RoundConfig::validate`] and [`RoundConfig::signature_quorum`].
    #[serde(default)]
    pub corrupt: u32,
    /// How long the server waits for a stage's messages before it closes the
    /// stage with whoever answered (or aborts below the threshold). Clients
    /// give up after twice this without hearing from the server.
    #[serde(with = "duration_millis")]
    pub stage_timeout: Duration,
    /// A digest of what the driver states besides this configuration: how
    /// clients encode their inputs (the fixed point, the DP noise). Not on
    /// the wire: the server and each client compute it from the round's
    /// opening message, and it enters [`RoundConfig::canonical_bytes`], so
    /// in signed rounds a server that tells clients different encodings
    /// (less noise to some) gets adverts that do not verify for the others.
    /// Zero when the driver binds nothing.
    #[serde(default)]
    pub encoding_digest: [u8; 32],
}

impl RoundConfig {
    /// A configuration with the defaults: complete graph, `t = n/2 + 1`,
    /// 32-bit arithmetic, AES-128-CTR masks, semi-honest model, 30 s stages.
    pub fn new(round_id: u64, num_clients: u32, dim: u32) -> Self {
        RoundConfig {
            round_id,
            num_clients,
            threshold: num_clients / 2 + 1,
            min_survivors: 0,
            graph: GraphKind::Complete,
            graph_seed: [0; 32],
            dim,
            bits: 32,
            prg: Prg::default(),
            threat_model: ThreatModel::SemiHonest,
            corrupt: 0,
            stage_timeout: Duration::from_secs(30),
            encoding_digest: [0; 32],
        }
    }

    /// Checks that the parameters can make a correct, private round.
    ///
    /// The malicious-server model runs on the complete graph only, with
    /// `t > (n + corrupt) / 2` ([`crate::params::threshold_floor`]): on a
    /// sparse graph the server would choose who neighbours whom (the graph
    /// seed and the slot order are its own), and could surround a victim
    /// with colluders. Other models take the operator's threshold as given
    /// (see [`RoundConfig::insecure_reasons`] for what it assumes).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.num_clients;
        if n < 2 {
            return Err(ConfigError::TooFewClients(n));
        }
        if self.dim == 0 {
            return Err(ConfigError::EmptyVector);
        }
        if !(1..=32).contains(&self.bits) {
            return Err(ConfigError::Bits(self.bits));
        }
        let holders = self.share_holders_per_client()?;
        if self.threshold < 2 || self.threshold > holders {
            return Err(ConfigError::Threshold {
                threshold: self.threshold,
                holders,
            });
        }
        if self.stage_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        if self.min_survivors > n {
            return Err(ConfigError::MinSurvivors {
                min_survivors: self.min_survivors,
                n,
            });
        }
        if self.corrupt >= n {
            return Err(ConfigError::Corrupt {
                corrupt: self.corrupt,
                n,
            });
        }
        if self.threat_model == ThreatModel::MaliciousServer {
            if let GraphKind::Harary { k } = self.graph {
                return Err(ConfigError::SparseGraphUnderMaliciousServer { k });
            }
            let floor =
                crate::params::threshold_floor(self.threat_model, n, self.corrupt, self.graph);
            if self.threshold < floor {
                return Err(ConfigError::MaliciousThreshold {
                    threshold: self.threshold,
                    floor,
                    corrupt: self.corrupt,
                });
            }
            if self.signature_quorum() > n {
                return Err(ConfigError::MaliciousThreshold {
                    threshold: self.threshold,
                    floor: self.signature_quorum(),
                    corrupt: self.corrupt,
                });
            }
        }
        Ok(())
    }

    /// Why this configuration does not give the privacy its threat model
    /// promises against `corrupt` colluding clients; empty when it does.
    ///
    /// [`RoundConfig::validate`] refuses these only in the malicious-server
    /// model. A semi-honest or semi-malicious round below the floor still
    /// runs (a simulator may study it), and whoever runs it can say so: the
    /// server and the clients can refuse it, `tessera simulate` reports it
    /// as `"secure": false`.
    ///
    /// ```
    /// use tessera_aggregation::config::{InsecureReason, RoundConfig};
    /// use tessera_aggregation::ThreatModel;
    /// let mut config = RoundConfig::new(1, 10, 4);
    /// config.threat_model = ThreatModel::SemiMalicious;
    /// config.corrupt = 1;
    /// config.threshold = 5; // 2(5 - 1) = 8 is not more than the 8 honest holders
    /// assert_eq!(
    ///     config.insecure_reasons(),
    ///     vec![InsecureReason::ThresholdBelowFloor {
    ///         threshold: 5,
    ///         floor: 6,
    ///         threat_model: ThreatModel::SemiMalicious,
    ///         corrupt: 1,
    ///     }]
    /// );
    /// config.threshold = 6;
    /// assert!(config.insecure_reasons().is_empty());
    /// ```
    pub fn insecure_reasons(&self) -> Vec<InsecureReason> {
        let mut reasons = Vec::new();
        let floor = crate::params::threshold_floor(
            self.threat_model,
            self.num_clients,
            self.corrupt,
            self.graph,
        );
        if self.threshold < floor {
            reasons.push(InsecureReason::ThresholdBelowFloor {
                threshold: self.threshold,
                floor,
                threat_model: self.threat_model,
                corrupt: self.corrupt,
            });
        }
        if self.threat_model == ThreatModel::MaliciousServer
            && let GraphKind::Harary { k } = self.graph
        {
            reasons.push(InsecureReason::SparseGraphUnderMaliciousServer { k });
        }
        reasons
    }

    /// The configuration as bytes, field by field in a fixed order
    /// (integers little-endian, enums as one tag byte): what the signatures
    /// of a malicious-server round bind ([`crate::identity::session_hash`]).
    /// Two configurations that differ in any field give different bytes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(b"tessera/v2/round-config");
        out.extend_from_slice(&self.round_id.to_le_bytes());
        out.extend_from_slice(&self.num_clients.to_le_bytes());
        out.extend_from_slice(&self.threshold.to_le_bytes());
        out.extend_from_slice(&self.min_survivors.to_le_bytes());
        match self.graph {
            GraphKind::Complete => out.extend_from_slice(&[0, 0, 0, 0, 0]),
            GraphKind::Harary { k } => {
                out.push(1);
                out.extend_from_slice(&k.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.graph_seed);
        out.extend_from_slice(&self.dim.to_le_bytes());
        out.push(self.bits);
        out.push(match self.prg {
            Prg::Aes128Ctr => 0,
            Prg::ChaCha20 => 1,
        });
        out.push(match self.threat_model {
            ThreatModel::SemiHonest => 0,
            ThreatModel::SemiMalicious => 1,
            ThreatModel::MaliciousServer => 2,
        });
        out.extend_from_slice(&self.corrupt.to_le_bytes());
        let millis = self.stage_timeout.as_millis().min(u128::from(u64::MAX)) as u64;
        out.extend_from_slice(&millis.to_le_bytes());
        out.extend_from_slice(&self.encoding_digest);
        out
    }

    /// The fewest clients that must survive each stage for the round to go
    /// on: `max(threshold, min_survivors)`.
    pub fn survivor_floor(&self) -> u32 {
        self.threshold.max(self.min_survivors)
    }

    /// How many clients hold a share of each client's secrets: exactly its
    /// neighbours (`k`, or `n - 1` with the complete graph). A client holds
    /// no share of its own secrets.
    pub fn share_holders_per_client(&self) -> Result<u32, ConfigError> {
        match self.graph {
            GraphKind::Complete => Ok(self.num_clients - 1),
            GraphKind::Harary { k } => {
                if k < 2 || k % 2 == 1 || k >= self.num_clients {
                    Err(ConfigError::Degree {
                        k,
                        n: self.num_clients,
                    })
                } else {
                    Ok(k)
                }
            }
        }
    }

    /// The neighbour graph this configuration describes.
    pub fn neighbour_graph(&self) -> Result<NeighbourGraph, ConfigError> {
        NeighbourGraph::new(self.num_clients, self.graph, &self.graph_seed)
            .map_err(|e| ConfigError::Graph(e.to_string()))
    }

    /// True when `client` is one of the round's invited clients.
    pub fn contains(&self, client: ClientId) -> bool {
        client.0 < self.num_clients
    }

    /// Whether this round runs the ConsistencyCheck stage.
    pub fn has_consistency_check(&self) -> bool {
        self.threat_model.guards_dropout_story()
    }

    /// Whether clients sign their adverts and the survivor set
    /// (malicious-server model).
    pub fn is_signed(&self) -> bool {
        self.threat_model == ThreatModel::MaliciousServer
    }

    /// How many valid signatures over one survivor set a client needs
    /// before it reveals any share (malicious-server model):
    /// `max(survivor_floor, ⌊(n + corrupt)/2⌋ + 1)`.
    ///
    /// Why a majority: every honest client signs one set per round. If two
    /// different sets each had q signatures, at least `2q - n` clients
    /// signed both, and `2q - n > corrupt` makes one of them honest, which
    /// cannot happen. So one round has one survivor set, whatever the
    /// server tells whom, and no client's secrets are asked for in both
    /// forms. With the complete graph this is Bonawitz et al.'s `t`; in a
    /// SecAgg+ round, where `t` is per neighbourhood and small, it is a
    /// global quorum (every client checks the same set, so the argument
    /// does not depend on the graph), at the price of O(n) signatures per
    /// unmasking request.
    pub fn signature_quorum(&self) -> u32 {
        // In u64: n and corrupt come from the server and their sum can
        // pass u32::MAX; the half plus one fits a u32 again.
        let majority = (u64::from(self.num_clients) + u64::from(self.corrupt)) / 2 + 1;
        self.survivor_floor()
            .max(u32::try_from(majority).unwrap_or(u32::MAX))
    }
}

/// Who the round must stay private against.
///
/// Part of the round configuration; serialised and parsed as
/// `"semi-honest"` / `"semi-malicious"` / `"malicious-server"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThreatModel {
    /// The server follows the protocol but tries to learn inputs from what
    /// it sees, possibly colluding with corrupt clients.
    SemiHonest,
    /// The server may also lie about which clients dropped out, to obtain
    /// both unmasking secrets of an honest client; requires a larger t.
    ///
    /// What holds: no split of one client's holders gives the server t
    /// shares of both of its secrets. What does not: the consistency check
    /// is local and unsigned, so a server that tells different clients
    /// different stories can say the victim survived to the victim's
    /// holders and that each of the victim's partners dropped to that
    /// partner's holders, and remove every mask from the victim's input
    /// without any corrupt client (`aggregation/tests/redteam.rs`, the
    /// partner route). Against a server that lies, use
    /// [`ThreatModel::MaliciousServer`].
    SemiMalicious,
    /// The server may deviate from the protocol in any way (Bonawitz et
    /// al.'s active adversary): substitute keys, replay, tell clients
    /// different dropout stories. Clients sign their keys and the survivor
    /// set with long-term identities ([`crate::identity`]) and check every
    /// signature. It runs on the complete graph only, with
    /// `t > (n + corrupt) / 2` (a sparse graph would let the server choose
    /// who neighbours whom).
    MaliciousServer,
}

impl ThreatModel {
    /// Whether the round defends against a server lying about dropouts (the
    /// semi-malicious and malicious-server models): the larger threshold
    /// and the ConsistencyCheck stage.
    pub fn guards_dropout_story(self) -> bool {
        !matches!(self, ThreatModel::SemiHonest)
    }
}

impl fmt::Display for ThreatModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThreatModel::SemiHonest => "semi-honest",
            ThreatModel::SemiMalicious => "semi-malicious",
            ThreatModel::MaliciousServer => "malicious-server",
        })
    }
}

/// A threat-model name that is not `semi-honest`, `semi-malicious` or
/// `malicious-server`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown threat model {0:?}: expected \"semi-honest\", \"semi-malicious\" or \"malicious-server\""
)]
pub struct ParseThreatModelError(String);

impl FromStr for ThreatModel {
    type Err = ParseThreatModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "semi-honest" => Ok(ThreatModel::SemiHonest),
            "semi-malicious" => Ok(ThreatModel::SemiMalicious),
            "malicious-server" => Ok(ThreatModel::MaliciousServer),
            other => Err(ParseThreatModelError(other.to_owned())),
        }
    }
}

/// Why a round's parameters are weaker than its threat model promises
/// ([`RoundConfig::insecure_reasons`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "rule", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum InsecureReason {
    /// A threshold below [`crate::params::threshold_floor`]: the corrupt
    /// share holders (semi-honest), or a split of the honest ones by a
    /// server lying about dropouts (semi-malicious, malicious-server), can
    /// rebuild a client's secrets.
    #[error(
        "threshold {threshold} is below the {threat_model} floor {floor} for {corrupt} corrupt clients"
    )]
    ThresholdBelowFloor {
        /// The configured threshold.
        threshold: u32,
        /// The smallest private one.
        floor: u32,
        /// The threat model it was checked against.
        threat_model: ThreatModel,
        /// The assumed colluders.
        corrupt: u32,
    },
    /// A sparse graph in the malicious-server model: the server would choose
    /// who neighbours whom.
    #[error("the malicious-server model needs the complete graph, got Harary k = {k}")]
    SparseGraphUnderMaliciousServer {
        /// The Harary degree.
        k: u32,
    },
}

/// A [`RoundConfig`] that cannot make a correct, private round.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A survivor floor no round of this size can meet.
    #[error("min_survivors {min_survivors} is more than the {n} clients of the round")]
    MinSurvivors {
        /// The requested floor.
        min_survivors: u32,
        /// Clients in the round.
        n: u32,
    },
    /// An identity offered for a round that signs nothing.
    #[error("the {0} threat model signs nothing: use a malicious-server round for identities")]
    Unsigned(ThreatModel),
    /// More corrupt clients than the round has.
    #[error("corrupt = {corrupt} must be less than the {n} clients of the round")]
    Corrupt {
        /// The assumed colluders.
        corrupt: u32,
        /// Clients in the round.
        n: u32,
    },
    /// A malicious-server round with a threshold a lying server could beat.
    #[error(
        "the malicious-server model needs threshold >= {floor} against {corrupt} corrupt clients, got {threshold}"
    )]
    MaliciousThreshold {
        /// The configured threshold.
        threshold: u32,
        /// The smallest safe one.
        floor: u32,
        /// The assumed colluders.
        corrupt: u32,
    },
    /// A SecAgg+ graph in the malicious-server model.
    #[error(
        "the malicious-server model runs on the complete graph only, got Harary k = {k}: \
         on a sparse graph the server chooses who neighbours whom (it picks the graph seed \
         and the slot order) and can surround a client with colluders"
    )]
    SparseGraphUnderMaliciousServer {
        /// The requested Harary degree.
        k: u32,
    },
    /// Aggregating fewer than two inputs reveals the input.
    #[error("a round needs at least 2 clients, got {0}")]
    TooFewClients(u32),
    /// Nothing to aggregate.
    #[error("the input vector length (dim) must be at least 1")]
    EmptyVector,
    /// Outside the supported modulus range.
    #[error("bits must be between 1 and 32, got {0}")]
    Bits(u8),
    /// The threshold cannot be met or gives secrets away.
    #[error(
        "threshold {threshold} must be at least 2 and at most the {holders} share holders per client (its neighbours)"
    )]
    Threshold {
        /// The requested threshold.
        threshold: u32,
        /// Share holders per client.
        holders: u32,
    },
    /// A Harary degree that does not make a graph.
    #[error(
        "Harary degree k = {k} must be even, at least 2 and less than n = {n} (use the complete graph otherwise)"
    )]
    Degree {
        /// Requested degree.
        k: u32,
        /// Number of clients.
        n: u32,
    },
    /// The graph could not be built.
    #[error("neighbour graph: {0}")]
    Graph(String),
    /// A stage could never end with messages.
    #[error("stage_timeout must be positive")]
    ZeroTimeout,
}

mod duration_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().min(u64::MAX as u128) as u64)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
