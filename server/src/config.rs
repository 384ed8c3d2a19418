//! The server's configuration: a TOML file, overridden by command-line
//! flags, checked once at start-up so a bad value is refused before the
//! server listens.
//!
//! ```toml
//! listen = "0.0.0.0:7443"
//! data_dir = "/var/lib/tessera"
//! dim = 10000
//! min_clients = 100
//! graph = "auto"              # complete | harary:K | auto (SecAgg+ finder)
//! threshold = "majority"      # majority | a fraction such as 0.66 | a count
//! min_survivors = "0.9"       # optional floor on survivors (fraction of n or count)
//! clip_norm = 1.0
//! frac_bits = 16
//! stage_timeout_ms = 30000
//! dp = "distributed"          # off | central | distributed
//! dp_noise = "discrete-gaussian"  # distributed DP noise: discrete-gaussian | skellam
//! noise_multiplier = 1.0      # noise std over the sensitivity (both DP modes)
//! epsilon_budget = 8.0
//! tls_cert = "cert.pem"
//! tls_key = "key.pem"
//! tokens_file = "tokens.txt"
//! threat_model = "semi-honest"   # semi-malicious | malicious-server
//! identities_file = "enrolled.txt"  # malicious-server: `NAME ed25519:HEX` lines
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_aggregation::graph::GraphKind;
use tessera_aggregation::mask::Prg;
use tessera_aggregation::params::{self, ParamsRequest, ThreatModel};
use tessera_dp::encoding::{self, FixedPoint, MAX_FRAC_BITS};
use tessera_dp::ledger::Mechanism;
use tessera_dp::mechanism::{
    CentralDp, DistributedEncoding, DpError, NoiseKind, choose_bits_with_noise, wrap_probability,
};

/// With distributed DP, the most a round's noised sum may wrap the ring
/// (any coordinate, union bound): one round in a million.
pub const WRAP_PROBABILITY: f64 = 1e-6;

/// A configuration the server cannot run with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML file does not parse or has unknown keys.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A value is out of range or two values contradict each other.
    #[error("config: {field}: {problem}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.into(),
    }
}

/// How the neighbour graph of each round is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GraphChoice {
    /// Every client shares with every other (SecAgg): simplest, O(n^2) work.
    Complete,
    /// A Harary graph of this even degree (SecAgg+).
    Harary(u32),
    /// The SecAgg+ parameter finder picks degree and threshold from the
    /// round's size, `dropout_rate`, `corrupt_rate` and threat model.
    #[default]
    Auto,
}

impl FromStr for GraphChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "complete" => Ok(GraphChoice::Complete),
            "auto" => Ok(GraphChoice::Auto),
            _ => match s.strip_prefix("harary:").map(str::parse::<u32>) {
                Some(Ok(k)) if k >= 2 && k % 2 == 0 => Ok(GraphChoice::Harary(k)),
                Some(_) => Err(format!(
                    "'{s}': the Harary degree must be an even number >= 2"
                )),
                None => Err(format!(
                    "'{s}' is not a graph: expected complete, harary:K or auto"
                )),
            },
        }
    }
}

impl fmt::Display for GraphChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphChoice::Complete => f.write_str("complete"),
            GraphChoice::Harary(k) => write!(f, "harary:{k}"),
            GraphChoice::Auto => f.write_str("auto"),
        }
    }
}

/// How the Shamir threshold t follows from the number of share holders
/// (ignored with `graph = "auto"`, where the finder sets t).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum ThresholdRule {
    /// `holders / 2 + 1`, a strict majority of each client's share
    /// holders, raised to the threat model's floor
    /// ([`params::threshold_floor`]) where that is higher: the default, so a
    /// server started with no threshold setting is safe in every model.
    #[default]
    Majority,
    /// `ceil(fraction * holders)`, at least 2.
    Fraction(f64),
    /// A fixed t (capped at the number of holders).
    Count(u32),
}

impl FromStr for ThresholdRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "majority" {
            return Ok(ThresholdRule::Majority);
        }
        if s.contains('.') {
            return match s.parse::<f64>() {
                Ok(f) if f > 0.0 && f <= 1.0 => Ok(ThresholdRule::Fraction(f)),
                _ => Err(format!("'{s}': a threshold fraction must be in (0, 1]")),
            };
        }
        match s.parse::<u32>() {
            Ok(t) if t >= 2 => Ok(ThresholdRule::Count(t)),
            _ => Err(format!(
                "'{s}' is not a threshold: expected majority, a fraction such as 0.66, or a count >= 2"
            )),
        }
    }
}

impl fmt::Display for ThresholdRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThresholdRule::Majority => f.write_str("majority"),
            ThresholdRule::Fraction(x) => write!(f, "{x}"),
            ThresholdRule::Count(t) => write!(f, "{t}"),
        }
    }
}

/// Differential privacy applied by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DpMode {
    /// No noise; the ledger is not kept.
    #[default]
    Off,
    /// DP-FedAvg: the server adds exact discrete Gaussian noise of std
    /// `z (C 2^f + sqrt(dim))` (units of 2^-f) to each decoded sum before
    /// it publishes, and accounts each round in the ledger; the epsilon
    /// holds against the model's consumers, not the server.
    Central,
    /// Distributed DP: every client adds its share of integer noise before
    /// masking, calibrated so that the honest survivors of any round that
    /// goes on (its survivor floor minus the clients assumed corrupt, who
    /// know their own noise) together carry noise of std `z` times the
    /// sensitivity; the server never sees an un-noised sum. Accounted per
    /// round in the ledger, for the honest contributors.
    Distributed,
}

impl FromStr for DpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(DpMode::Off),
            "central" => Ok(DpMode::Central),
            "distributed" => Ok(DpMode::Distributed),
            _ => Err(format!(
                "'{s}' is not a DP mode: expected off, central or distributed"
            )),
        }
    }
}

/// The TOML file's shape: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    dim: Option<u32>,
    min_clients: Option<u32>,
    max_clients: Option<u32>,
    join_window_ms: Option<u64>,
    graph: Option<String>,
    threshold: Option<String>,
    min_survivors: Option<String>,
    dropout_rate: Option<f64>,
    corrupt_rate: Option<f64>,
    threat_model: Option<String>,
    prg: Option<String>,
    bits: Option<u8>,
    frac_bits: Option<u8>,
    clip_norm: Option<f32>,
    stage_timeout_ms: Option<u64>,
    server_lr: Option<f32>,
    server_momentum: Option<f32>,
    dp: Option<String>,
    dp_noise: Option<String>,
    noise_multiplier: Option<f64>,
    epsilon_budget: Option<f64>,
    delta: Option<f64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tokens_file: Option<PathBuf>,
    identities_file: Option<PathBuf>,
    metrics_listen: Option<SocketAddr>,
    rounds: Option<u64>,
}

/// Everything the server needs, with defaults for what was not given.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    /// Where the gRPC service listens (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The durable state: models, round records, privacy ledger.
    pub data_dir: PathBuf,
    /// Model dimension; required for a new data dir, and must match the
    /// stored model otherwise.
    pub dim: Option<u32>,
    /// A round opens once this many clients wait in the lobby.
    pub min_clients: u32,
    /// At most this many clients go into one round; the rest wait for the
    /// next.
    pub max_clients: u32,
    /// After `min_clients` are waiting, how long to keep the lobby open for
    /// more before the round starts.
    pub join_window: Duration,
    /// The neighbour graph rule.
    pub graph: GraphChoice,
    /// The threshold rule.
    pub threshold: ThresholdRule,
    /// A floor on every stage's survivors above the threshold, as a rule
    /// over the round's clients (`None`: the threshold alone). A round
    /// with fewer survivors aborts before any share is revealed, and
    /// distributed DP calibrates each client's noise for this many, so
    /// with a SecAgg+ graph (whose threshold is per neighbourhood and
    /// small) it is what keeps the noise, and the privacy, up.
    pub min_survivors: Option<ThresholdRule>,
    /// Expected dropout fraction, for `graph = "auto"`.
    pub dropout_rate: f64,
    /// Fraction of clients that may collude with the server, for
    /// `graph = "auto"`. Default 0.05, as `tessera params`: at 0 the finder
    /// may pick a threshold as low as 2, private only if no client at all
    /// colludes with the server.
    pub corrupt_rate: f64,
    /// The threat model every round runs under.
    pub threat_model: ThreatModel,
    /// The mask PRG.
    pub prg: Prg,
    /// Ring width; `None` picks the smallest width whose sum of a full round
    /// cannot wrap.
    pub bits: Option<u8>,
    /// Fixed-point scale: values are multiplied by `2^frac_bits`.
    pub frac_bits: u8,
    /// Clients clip their updates to this L2 norm.
    pub clip_norm: f32,
    /// Deadline of every stage.
    pub stage_timeout: Duration,
    /// FedAvg server learning rate.
    pub server_lr: f32,
    /// FedAvgM server momentum, if any.
    pub server_momentum: Option<f32>,
    /// Differential privacy mode.
    pub dp: DpMode,
    /// Which integer noise clients add with `dp = distributed`.
    pub dp_noise: NoiseKind,
    /// The noise multiplier z of either DP mode: the noise std over the
    /// sensitivity (central: std `z (C 2^f + sqrt(dim))` added by the
    /// server, rounding included; distributed: std `z B` carried by the
    /// honest survivors of any round that goes on, with `B` the norm bound
    /// of a client's rounded integer vector).
    pub noise_multiplier: f64,
    /// Total epsilon the server may spend; it stops opening rounds before
    /// it would pass it.
    pub epsilon_budget: f64,
    /// The delta of the (epsilon, delta) guarantee.
    pub delta: f64,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA that client certificates must chain to (mTLS).
    pub tls_client_ca: Option<PathBuf>,
    /// Bearer tokens file (`NAME sha256:HEX` lines).
    pub tokens_file: Option<PathBuf>,
    /// The allow-list of enrolled client identities (`NAME ed25519:HEX`
    /// lines, [`tessera_aggregation::identity::parse_allow_list`]): required
    /// by, and only used in, the malicious-server threat model.
    pub identities_file: Option<PathBuf>,
    /// Run without TLS or tokens, for local experiments on a loopback
    /// address only.
    pub insecure_dev: bool,
    /// Prometheus `/metrics` endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Stop after this many rounds (completed or aborted); `None` runs until
    /// shut down.
    pub rounds: Option<u64>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            data_dir: PathBuf::from("tessera-data"),
            dim: None,
            min_clients: 3,
            max_clients: 10_000,
            join_window: Duration::from_millis(200),
            graph: GraphChoice::Auto,
            threshold: ThresholdRule::Majority,
            min_survivors: None,
            dropout_rate: 0.1,
            corrupt_rate: 0.05,
            threat_model: ThreatModel::SemiHonest,
            prg: Prg::Aes128Ctr,
            bits: None,
            frac_bits: 16,
            clip_norm: 1.0,
            stage_timeout: Duration::from_secs(30),
            server_lr: 1.0,
            server_momentum: None,
            dp: DpMode::Off,
            dp_noise: NoiseKind::DiscreteGaussian,
            noise_multiplier: 1.0,
            epsilon_budget: 8.0,
            delta: 1e-5,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tokens_file: None,
            identities_file: None,
            insecure_dev: false,
            metrics_listen: None,
            rounds: None,
        }
    }
}

fn parse_field<T: FromStr<Err = String>>(
    field: &'static str,
    value: Option<String>,
) -> Result<Option<T>, ConfigError> {
    value
        .map(|v| v.parse::<T>().map_err(|e| invalid(field, e)))
        .transpose()
}

impl ServerConfig {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text over the defaults.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<toml>"),
            message: e.to_string(),
        })?;
        let d = ServerConfig::default();
        Ok(ServerConfig {
            listen: file.listen.unwrap_or(d.listen),
            data_dir: file.data_dir.unwrap_or(d.data_dir),
            dim: file.dim.or(d.dim),
            min_clients: file.min_clients.unwrap_or(d.min_clients),
            max_clients: file.max_clients.unwrap_or(d.max_clients),
            join_window: file
                .join_window_ms
                .map(Duration::from_millis)
                .unwrap_or(d.join_window),
            graph: parse_field("graph", file.graph)?.unwrap_or(d.graph),
            threshold: parse_field("threshold", file.threshold)?.unwrap_or(d.threshold),
            min_survivors: parse_field("min_survivors", file.min_survivors)?,
            dropout_rate: file.dropout_rate.unwrap_or(d.dropout_rate),
            corrupt_rate: file.corrupt_rate.unwrap_or(d.corrupt_rate),
            threat_model: file
                .threat_model
                .map(|s| {
                    s.parse()
                        .map_err(|e| invalid("threat_model", format!("{e}")))
                })
                .transpose()?
                .unwrap_or(d.threat_model),
            prg: file
                .prg
                .map(|s| s.parse().map_err(|e| invalid("prg", format!("{e}"))))
                .transpose()?
                .unwrap_or(d.prg),
            bits: file.bits.or(d.bits),
            frac_bits: file.frac_bits.unwrap_or(d.frac_bits),
            clip_norm: file.clip_norm.unwrap_or(d.clip_norm),
            stage_timeout: file
                .stage_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(d.stage_timeout),
            server_lr: file.server_lr.unwrap_or(d.server_lr),
            server_momentum: file.server_momentum.or(d.server_momentum),
            dp: parse_field("dp", file.dp)?.unwrap_or(d.dp),
            dp_noise: match file.dp_noise.as_deref() {
                None => d.dp_noise,
                Some("discrete-gaussian") => NoiseKind::DiscreteGaussian,
                Some("skellam") => NoiseKind::Skellam,
                Some(other) => {
                    return Err(invalid(
                        "dp_noise",
                        format!("'{other}' is not a noise: expected discrete-gaussian or skellam"),
                    ));
                }
            },
            noise_multiplier: file.noise_multiplier.unwrap_or(d.noise_multiplier),
            epsilon_budget: file.epsilon_budget.unwrap_or(d.epsilon_budget),
            delta: file.delta.unwrap_or(d.delta),
            tls_cert: file.tls_cert,
            tls_key: file.tls_key,
            tls_client_ca: file.tls_client_ca,
            tokens_file: file.tokens_file,
            identities_file: file.identities_file,
            insecure_dev: false,
            metrics_listen: file.metrics_listen,
            rounds: file.rounds,
        })
    }

    /// Checks every value and their combinations; the server calls this
    /// before it touches the data dir or the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.min_clients < 3 {
            // Two clients could each subtract their own input from the sum.
            return Err(invalid(
                "min_clients",
                format!(
                    "{} is too few: a round needs at least 3 clients",
                    self.min_clients
                ),
            ));
        }
        if self.max_clients < self.min_clients {
            return Err(invalid(
                "max_clients",
                format!(
                    "{} is below min_clients {}",
                    self.max_clients, self.min_clients
                ),
            ));
        }
        if self.dim == Some(0) {
            return Err(invalid("dim", "must be at least 1"));
        }
        for (field, v) in [
            ("dropout_rate", self.dropout_rate),
            ("corrupt_rate", self.corrupt_rate),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(invalid(field, format!("{v} is not a fraction in [0, 1)")));
            }
        }
        if self.frac_bits > MAX_FRAC_BITS {
            return Err(invalid(
                "frac_bits",
                format!("{} is above {MAX_FRAC_BITS}", self.frac_bits),
            ));
        }
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return Err(invalid("clip_norm", "must be a positive number"));
        }
        // The widest round must fit the ring without wrapping (its noise
        // included). A model dimension not yet known is checked at 1.
        let (_, threshold) = self.graph_for(self.max_clients)?;
        let floor = self.survivor_floor(self.max_clients, threshold);
        self.round_encoding(self.max_clients, floor, self.dim.unwrap_or(1))?;
        if self.stage_timeout.is_zero() {
            return Err(invalid("stage_timeout_ms", "must be positive"));
        }
        if !(self.server_lr.is_finite() && self.server_lr > 0.0) {
            return Err(invalid("server_lr", "must be a positive number"));
        }
        if let Some(m) = self.server_momentum
            && !(0.0..1.0).contains(&m)
        {
            return Err(invalid("server_momentum", format!("{m} is not in [0, 1)")));
        }
        if self.dp != DpMode::Off {
            if !(self.noise_multiplier.is_finite() && self.noise_multiplier > 0.0) {
                return Err(invalid(
                    "noise_multiplier",
                    "must be positive when DP is on",
                ));
            }
            if !(self.epsilon_budget.is_finite() && self.epsilon_budget > 0.0) {
                return Err(invalid("epsilon_budget", "must be positive"));
            }
            if !(self.delta > 0.0 && self.delta < 1.0) {
                return Err(invalid("delta", "must be in (0, 1)"));
            }
            // The noise must be drawable (and, distributed, have honest
            // survivors to carry it) before the server listens.
            self.planned_mechanism(self.dim.unwrap_or(1))?;
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid("tls_cert", "tls_cert and tls_key go together"));
            }
            _ => {}
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(invalid("tls_client_ca", "mTLS needs tls_cert and tls_key"));
        }
        if self.insecure_dev {
            if !self.listen.ip().is_loopback() {
                return Err(invalid(
                    "insecure_dev",
                    format!(
                        "refusing to serve without TLS or authentication on {}, which is not a loopback address",
                        self.listen
                    ),
                ));
            }
        } else {
            if self.tls_cert.is_none() {
                return Err(invalid(
                    "tls_cert",
                    "TLS is required (give tls_cert and tls_key), or pass --insecure-dev for a local experiment",
                ));
            }
            if self.tokens_file.is_none() && self.tls_client_ca.is_none() {
                return Err(invalid(
                    "tokens_file",
                    "clients must authenticate: give tokens_file or tls_client_ca (mTLS), or pass --insecure-dev",
                ));
            }
        }
        match (self.threat_model, &self.identities_file) {
            (ThreatModel::MaliciousServer, None) => {
                return Err(invalid(
                    "identities_file",
                    "the malicious-server threat model admits only enrolled identities: give identities_file (make keys with `tessera keygen`)",
                ));
            }
            (ThreatModel::SemiHonest | ThreatModel::SemiMalicious, Some(_)) => {
                return Err(invalid(
                    "identities_file",
                    "identities are used by the malicious-server threat model only: set threat_model = \"malicious-server\"",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// How a round of `clients` that goes on with at least `min_survivors`
    /// (see [`ServerConfig::survivor_floor`]) and this model dimension
    /// encodes updates: the fixed point (its ring wide enough for the sum
    /// of every client's input, noise included), and with distributed DP
    /// the noise each client adds.
    ///
    /// Without DP the ring is at least [`encoding::choose_bits`]' (no wrap at
    /// all): an explicit `bits` below it is refused with the smallest safe
    /// value.
    /// With distributed DP the noise is unbounded, so the ring is the
    /// smallest whose chance that any coordinate of the sum wraps is at
    /// most [`WRAP_PROBABILITY`]; an explicit `bits` that misses that bound
    /// is refused.
    pub fn round_encoding(
        &self,
        clients: u32,
        min_survivors: u32,
        dim: u32,
    ) -> Result<(FixedPoint, Option<DistributedEncoding>), ConfigError> {
        let fixed = |bits: u8| {
            FixedPoint::new(self.clip_norm, self.frac_bits, bits)
                .map_err(|e| invalid("bits", e.to_string()))
        };
        if self.dp != DpMode::Distributed {
            let needed = encoding::choose_bits(clients, self.clip_norm, self.frac_bits)
                .map_err(|e| invalid("bits", e.to_string()))?;
            let bits = match self.bits {
                // An explicit ring narrower than the worst-case sum would
                // wrap silently and publish a wrong model.
                Some(b) if b < needed => {
                    return Err(invalid(
                        "bits",
                        format!(
                            "{b} bits let the sum of {clients} clients' updates (clip_norm {}, frac_bits {}) wrap; the smallest safe value is {needed} (or leave bits unset to choose it)",
                            self.clip_norm, self.frac_bits
                        ),
                    ));
                }
                Some(b) => b,
                None => needed,
            };
            return Ok((fixed(bits)?, None));
        }
        // The norm bound depends on C, f and dim only, so a provisional
        // 32-bit format gives the noise, and the noise the ring.
        let dp_error = |e: tessera_dp::mechanism::DpError| match e {
            DpError::NoHonestSurvivors { .. } => invalid(
                "min_survivors",
                format!(
                    "{e} (a SecAgg+ graph's threshold is per neighbourhood: set min_survivors, e.g. \"0.5\", above corrupt_rate {})",
                    self.corrupt_rate
                ),
            ),
            e => invalid("noise_multiplier", e.to_string()),
        };
        // Calibrated for the honest survivors: the corrupt clients the
        // threat model allows know their own noise and subtract it.
        let provisional = DistributedEncoding::calibrate(
            fixed(32)?,
            self.dp_noise,
            self.noise_multiplier,
            min_survivors,
            self.corrupt_count(clients),
            dim as usize,
        )
        .map_err(dp_error)?;
        let sigma_all = provisional.dp.actual_sigma(clients);
        let bits = match self.bits {
            None => choose_bits_with_noise(
                clients,
                provisional.norm_bound,
                sigma_all,
                dim as usize,
                WRAP_PROBABILITY / f64::from(dim),
            )
            .map_err(|e| invalid("bits", e.to_string()))?,
            Some(b) => {
                let p =
                    wrap_probability(clients, provisional.norm_bound, sigma_all, dim as usize, b)
                        .map_err(|e| invalid("bits", e.to_string()))?;
                if p > WRAP_PROBABILITY {
                    let needed = choose_bits_with_noise(
                        clients,
                        provisional.norm_bound,
                        sigma_all,
                        dim as usize,
                        WRAP_PROBABILITY / f64::from(dim),
                    )
                    .map_or_else(
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
            Some(DistributedEncoding {
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
    pub fn planned_mechanism(&self, dim: u32) -> Result<Option<Mechanism>, ConfigError> {
        Ok(match self.dp {
            DpMode::Off => None,
            DpMode::Central => Some(self.central_dp(self.min_clients, dim)?.mechanism()),
            DpMode::Distributed => {
                let n = self.min_clients;
                let (_, threshold) = self.graph_for(n)?;
                let floor = self.survivor_floor(n, threshold);
                let (_, encoding) = self.round_encoding(n, floor, dim)?;
                encoding
                    .map(|e| e.mechanism(floor, self.corrupt_count(n), dim as usize))
                    .transpose()
                    .map_err(|e| invalid("noise_multiplier", e.to_string()))?
            }
        })
    }

    /// The central DP mechanism of a round of `clients` and this model
    /// dimension: exact discrete Gaussian noise on the decoded integer sum
    /// (see [`CentralDp`]); refused if its scale is beyond the exact
    /// sampler.
    pub fn central_dp(&self, clients: u32, dim: u32) -> Result<CentralDp, ConfigError> {
        let (fixed_point, _) = self.round_encoding(clients, clients, dim)?;
        CentralDp::new(fixed_point, self.noise_multiplier, dim as usize).map_err(|e| {
            invalid(
                "noise_multiplier",
                format!(
                    "central DP noise of {} x (clip_norm 2^frac_bits + sqrt(dim)) in units of 2^-frac_bits: {e}; lower frac_bits or noise_multiplier",
                    self.noise_multiplier
                ),
            )
        })
    }

    /// The fewest survivors a round of `n` clients with Shamir threshold
    /// `threshold` goes on with: the `min_survivors` rule if it asks for
    /// more, at most `n`.
    pub fn survivor_floor(&self, n: u32, threshold: u32) -> u32 {
        let floor = match self.min_survivors {
            None => threshold,
            Some(ThresholdRule::Majority) => n / 2 + 1,
            Some(ThresholdRule::Fraction(f)) => (f * f64::from(n)).ceil() as u32,
            Some(ThresholdRule::Count(c)) => c,
        };
        floor.max(threshold).min(n)
    }

    /// The graph and threshold of a round of `n` clients.
    pub fn graph_for(&self, n: u32) -> Result<(GraphKind, u32), ConfigError> {
        let graph = match self.graph {
            GraphChoice::Auto => {
                let found = params::find_params(&ParamsRequest {
                    clients: n,
                    dropout_rate: self.dropout_rate,
                    corrupt_rate: self.corrupt_rate,
                    threat_model: self.threat_model,
                })
                .map_err(|e| {
                    invalid(
                        "graph",
                        format!("no SecAgg+ parameters for {n} clients: {e}"),
                    )
                })?;
                return Ok((found.graph, found.threshold));
            }
            // A Harary graph needs k < n; with fewer clients it is the
            // complete graph anyway.
            GraphChoice::Harary(k) if k < n - 1 => GraphKind::Harary { k },
            GraphChoice::Harary(_) | GraphChoice::Complete => GraphKind::Complete,
        };
        if self.threat_model == ThreatModel::MaliciousServer && graph != GraphKind::Complete {
            // A server that chooses who neighbours whom can surround a
            // victim with colluders; the finder's odds assume it cannot.
            return Err(invalid(
                "graph",
                "the malicious-server threat model runs on the complete graph only (a lying server would choose who neighbours whom on a sparse one): set graph = \"complete\" or \"auto\"",
            ));
        }
        // A client's shares are held by its neighbours only.
        let holders = match graph {
            GraphKind::Complete => n - 1,
            GraphKind::Harary { k } => k,
        };
        let corrupt = self.corrupt_count(n);
        let floor = params::threshold_floor(self.threat_model, n, corrupt, graph);
        let t = match self.threshold {
            ThresholdRule::Majority => (holders / 2 + 1).max(floor),
            ThresholdRule::Fraction(f) => (f * f64::from(holders)).ceil() as u32,
            ThresholdRule::Count(t) => t,
        };
        let t = t.clamp(2, holders.max(2));
        // The threat model's bound is enforced, not suggested: an explicit
        // rule that asks for less is refused, with the floor it must meet.
        if t < floor {
            return Err(invalid(
                "threshold",
                format!(
                    "a threshold of {t} for {n} clients can be beaten by a {} server with {corrupt} corrupt clients (corrupt_rate {}); it needs at least {floor}",
                    self.threat_model, self.corrupt_rate
                ),
            ));
        }
        Ok((graph, t))
    }

    /// The most corrupt clients a round of `n` assumes: ⌊corrupt_rate · n⌋,
    /// counted as the parameter finder counts them.
    pub fn corrupt_count(&self, n: u32) -> u32 {
        params::worst_count(self.corrupt_rate, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> ServerConfig {
        ServerConfig {
            insecure_dev: true,
            dim: Some(10),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn toml_overrides_defaults_and_refuses_unknown_keys() {
        let c = ServerConfig::from_toml(
            "dim = 5\nmin_clients = 7\ngraph = \"harary:4\"\nthreshold = \"0.75\"\ndp = \"central\"\nstage_timeout_ms = 900\n",
        )
        .unwrap();
        assert_eq!(c.dim, Some(5));
        assert_eq!(c.min_clients, 7);
        assert_eq!(c.graph, GraphChoice::Harary(4));
        assert_eq!(c.threshold, ThresholdRule::Fraction(0.75));
        assert_eq!(c.dp, DpMode::Central);
        assert_eq!(c.stage_timeout, Duration::from_millis(900));
        let err = ServerConfig::from_toml("dimm = 5\n").unwrap_err();
        assert!(err.to_string().contains("dimm"), "{err}");
        let err = ServerConfig::from_toml("graph = \"harary:3\"\n").unwrap_err();
        assert!(err.to_string().contains("even"), "{err}");
    }

    #[test]
    fn an_explicit_bits_that_would_wrap_is_refused_with_the_smallest_safe_value() {
        // Three clients at clip norm 1 and 2^16 scale sum to at most
        // 3 (2^16 + 1) = 196,611, above the 2^17 - 1 an 18-bit ring holds
        // as a signed value: the sum would wrap into a wrong model.
        let mut c = dev();
        c.dp = DpMode::Off;
        c.clip_norm = 1.0;
        c.frac_bits = 16;
        c.min_clients = 3;
        c.max_clients = 3;
        c.bits = Some(18);
        let err = c.validate().unwrap_err();
        assert!(
            err.to_string().contains("smallest safe value is 19"),
            "{err}"
        );
        c.bits = Some(19);
        c.validate().unwrap();
        // Central DP adds its noise after decoding, so the same floor holds.
        c.dp = DpMode::Central;
        c.bits = Some(18);
        assert!(c.validate().is_err());
    }

    #[test]
    fn explicit_graphs_and_thresholds_meet_the_threat_models_floor() {
        // Semi-malicious, 10 clients, 1 assumed corrupt, Harary k = 4: a
        // lying server splits the 3 honest holders of a client's shares, so
        // t = 2 gives it both secrets; the floor is (4 + 1)/2 + 1 = 3.
        let mut c = dev();
        c.threat_model = ThreatModel::SemiMalicious;
        c.corrupt_rate = 0.1;
        c.graph = GraphChoice::Harary(4);
        c.threshold = ThresholdRule::Count(2);
        let err = c.graph_for(10).unwrap_err();
        assert!(err.to_string().contains("at least 3"), "{err}");
        c.threshold = ThresholdRule::Count(3);
        assert_eq!(c.graph_for(10).unwrap(), (GraphKind::Harary { k: 4 }, 3));
        // The complete graph's holders are the n - 1 others: a majority of
        // 9 is 5, but with one colluder the split needs t > (9 + 1)/2, so
        // the default rule rises to 6 and an explicit 5 is refused.
        c.graph = GraphChoice::Complete;
        c.threshold = ThresholdRule::Majority;
        assert_eq!(c.graph_for(10).unwrap(), (GraphKind::Complete, 6));
        c.threshold = ThresholdRule::Count(5);
        let err = c.graph_for(10).unwrap_err();
        assert!(err.to_string().contains("at least 6"), "{err}");
        c.corrupt_rate = 0.0;
        c.threshold = ThresholdRule::Majority;
        assert_eq!(c.graph_for(10).unwrap(), (GraphKind::Complete, 5));
        // Semi-honest with 3 colluders: their 3 shares must not reach t.
        c.threat_model = ThreatModel::SemiHonest;
        c.corrupt_rate = 0.3;
        c.threshold = ThresholdRule::Count(3);
        let err = c.graph_for(10).unwrap_err();
        assert!(err.to_string().contains("at least 4"), "{err}");
    }

    #[test]
    fn the_malicious_server_model_refuses_a_sparse_graph() {
        let mut c = dev();
        c.threat_model = ThreatModel::MaliciousServer;
        c.identities_file = Some("enrolled.txt".into());
        c.graph = GraphChoice::Harary(4);
        c.threshold = ThresholdRule::Count(4);
        let err = c.graph_for(10).unwrap_err();
        assert!(err.to_string().contains("complete graph only"), "{err}");
    }

    #[test]
    fn the_malicious_server_model_needs_identities_and_a_safe_threshold() {
        let mut c = dev();
        c.threat_model = ThreatModel::MaliciousServer;
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("identities_file"), "{err}");
        c.identities_file = Some("enrolled.txt".into());
        c.validate().unwrap();
        // 10 clients, 1 assumed corrupt: t must be above (10 + 1) / 2.
        c.corrupt_rate = 0.1;
        c.graph = GraphChoice::Complete;
        c.threshold = ThresholdRule::Count(5);
        let err = c.graph_for(10).unwrap_err();
        assert!(err.to_string().contains("at least 6"), "{err}");
        c.threshold = ThresholdRule::Count(6);
        assert_eq!(c.graph_for(10).unwrap(), (GraphKind::Complete, 6));
        // Identities without the model that uses them are a mistake.
        let mut c = dev();
        c.identities_file = Some("enrolled.txt".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn secure_by_default_and_insecure_only_on_loopback() {
        let c = ServerConfig {
            dim: Some(10),
            ..ServerConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("TLS is required")
        );
        assert!(dev().validate().is_ok());
        let public = ServerConfig {
            listen: "0.0.0.0:7443".parse().unwrap(),
            ..dev()
        };
        let err = public.validate().unwrap_err().to_string();
        assert!(err.contains("not a loopback"), "{err}");
        let no_auth = ServerConfig {
            tls_cert: Some("c".into()),
            tls_key: Some("k".into()),
            ..ServerConfig::default()
        };
        assert!(
            no_auth
                .validate()
                .unwrap_err()
                .to_string()
                .contains("authenticate")
        );
    }

    #[test]
    fn graph_and_threshold_rules() {
        let mut c = dev();
        c.graph = GraphChoice::Complete;
        // Rules count a client's share holders: its n - 1 neighbours.
        assert_eq!(c.graph_for(10).unwrap(), (GraphKind::Complete, 5));
        c.threshold = ThresholdRule::Fraction(0.66);
        assert_eq!(c.graph_for(10).unwrap(), (GraphKind::Complete, 6));
        c.threshold = ThresholdRule::Count(50);
        assert_eq!(c.graph_for(10).unwrap(), (GraphKind::Complete, 9));
        c.graph = GraphChoice::Harary(4);
        c.threshold = ThresholdRule::Majority;
        assert_eq!(c.graph_for(10).unwrap(), (GraphKind::Harary { k: 4 }, 3));
        // Too few clients for the degree: complete graph.
        assert_eq!(c.graph_for(5).unwrap(), (GraphKind::Complete, 3));
        c.graph = GraphChoice::Auto;
        let (graph, t) = c.graph_for(1000).unwrap();
        assert!(matches!(graph, GraphKind::Harary { .. }), "{graph:?}");
        assert!(t >= 2);
    }

    #[test]
    fn bad_values_are_named() {
        for (c, field) in [
            (
                ServerConfig {
                    min_clients: 2,
                    ..dev()
                },
                "min_clients",
            ),
            (
                ServerConfig {
                    clip_norm: -1.0,
                    ..dev()
                },
                "clip_norm",
            ),
            (
                ServerConfig {
                    frac_bits: 30,
                    ..dev()
                },
                "frac_bits",
            ),
            (
                ServerConfig {
                    bits: Some(8),
                    ..dev()
                },
                "bits",
            ),
            (
                ServerConfig {
                    server_momentum: Some(1.0),
                    ..dev()
                },
                "server_momentum",
            ),
            (
                ServerConfig {
                    dim: Some(0),
                    ..dev()
                },
                "dim",
            ),
        ] {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn distributed_dp_widens_the_ring_for_its_noise_and_plans_the_target_noise() {
        let mut c = ServerConfig {
            dp: DpMode::Distributed,
            noise_multiplier: 2.0,
            ..dev()
        };
        // Up to 10,000 clients on SecAgg+ graphs assume 500 corrupt: the
        // per-neighbourhood threshold (22) is no floor for the noise.
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("set min_survivors"), "{err}");
        c.min_survivors = Some(ThresholdRule::Fraction(0.5));
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
            bits: Some(fp.bits - 1),
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
        assert_eq!(toml.dp_noise, NoiseKind::Skellam);
        assert!(ServerConfig::from_toml("dp_noise = \"laplace\"").is_err());
    }

    /// Colluders subtract their own noise: with corrupt clients the noise
    /// is calibrated for the honest survivors, so each client adds more
    /// than a calibration over all survivors would, and the plan charges
    /// their noise.
    #[test]
    fn distributed_dp_is_calibrated_for_the_honest_survivors() {
        let c = ServerConfig {
            dp: DpMode::Distributed,
            noise_multiplier: 1.0,
            corrupt_rate: 0.2,
            graph: GraphChoice::Complete,
            min_clients: 10,
            max_clients: 10,
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
            dp: DpMode::Central,
            noise_multiplier: 1.5,
            frac_bits: 8,
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
            noise_multiplier: 100.0,
            frac_bits: 16,
            ..c
        };
        let err = loud.validate().unwrap_err().to_string();
        assert!(
            err.contains("noise_multiplier") && err.contains("frac_bits"),
            "{err}"
        );
    }
}
