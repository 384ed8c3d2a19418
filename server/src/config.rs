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
use tessera_aggregation::dp::mechanism::NoiseKind;
use tessera_aggregation::encoding::MAX_FRAC_BITS;
use tessera_aggregation::mask::Prg;
use tessera_aggregation::params::ThreatModel;
pub use tessera_aggregation::params::ThresholdRule;

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

pub(crate) fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
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
}

#[cfg(test)]
pub(crate) mod tests {
    use tessera_aggregation::graph::GraphKind;

    use super::*;

    pub(crate) fn dev() -> ServerConfig {
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
}
