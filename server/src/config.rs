//! The server's configuration: a TOML file (docs/server.toml is a commented
//! example), overridden by `TESSERA_<SETTING>` environment variables and
//! those by command-line flags, checked once at start-up so a bad value is
//! refused before the server listens.
//!
//! [`ServerConfig`] groups the settings by concern ([`NetworkSettings`],
//! [`RoundRules`], [`DpSettings`], [`AggregationSettings`]), each group with
//! its defaults; [`ServerOverrides`] is what the file and the flags give,
//! listed once in `config/overrides.rs`; [`ServerConfig::validate`] holds
//! every check. What a round of a given size runs with is the round
//! planning's (`planning.rs`: [`ServerConfig::graph_for`],
//! [`ServerConfig::survivor_floor`] and the server's own encoding and DP
//! choices).
//!
//! ```toml
//! listen = "0.0.0.0:7443"
//! data_dir = "/var/lib/tessera"
//! dim = 10000
//! min_clients = 100
//! graph = "auto"              # complete | harary:K | auto (SecAgg+ finder)
//! threshold = "majority"      # majority | a fraction such as 0.66 | a count
//! min_survivors = "0.9"       # optional floor on survivors (fraction of n or count)
//! min_aggregate = 3           # fewest client inputs a published sum may contain (at least 3)
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
use tessera_aggregation::ThreatModel;
use tessera_aggregation::mask::Prg;
pub use tessera_aggregation::params::ThresholdRule;
use tessera_dp::encoding::MAX_FRAC_BITS;
use tessera_dp::mechanism::NoiseKind;

mod aggregation;
mod overrides;
pub use aggregation::{DEFAULT_BETA1, DEFAULT_BETA2, DEFAULT_TAU, Strategy, StrategyRecord};
pub use overrides::ServerOverrides;

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

/// The smallest `min_aggregate` a server accepts, and its default: with two
/// inputs in a published sum each contributor learns the other's input (it
/// subtracts its own), with one the sum is the input.
pub const MIN_AGGREGATE_FLOOR: u32 = 3;

/// The default [`RoundRules::lobby_keepalive`]: well inside the idle
/// timeouts of common proxies and NAT (30 to 60 s and more) and of the
/// SDK's default round timeout, which each keep-alive restarts.
pub const DEFAULT_LOBBY_KEEPALIVE: Duration = Duration::from_secs(15);

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
    /// DP-FTRL (Kairouz et al. 2021): the server adds tree-structured
    /// exact discrete Gaussian noise (`z (C 2^f + sqrt(dim))` per tree
    /// node) to the prefix sums of each epoch's decoded round sums and sets
    /// the model to `θ_epoch + η S_t / n` (the FTRL update, optional
    /// momentum); the tree restarts every `ftrl_epoch_rounds` rounds and
    /// each identity takes part at most once per tree. Like central DP its
    /// epsilon holds against the model's consumers, not the server, and it
    /// needs stable identities (refused with `insecure_dev`).
    Ftrl,
}

impl FromStr for DpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(DpMode::Off),
            "central" => Ok(DpMode::Central),
            "distributed" => Ok(DpMode::Distributed),
            "ftrl" => Ok(DpMode::Ftrl),
            _ => Err(format!(
                "'{s}' is not a DP mode: expected off, central, distributed or ftrl"
            )),
        }
    }
}

/// `--dp` values: the names [`DpMode::from_str`] takes, without help of
/// their own (a `--help` lists them in one line). `tessera serve` parses
/// `--dp` with [`DpMode::from_str`]; this list is the demo's.
#[cfg(feature = "clap")]
impl clap::ValueEnum for DpMode {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            DpMode::Off,
            DpMode::Central,
            DpMode::Distributed,
            DpMode::Ftrl,
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            DpMode::Off => "off",
            DpMode::Central => "central",
            DpMode::Distributed => "distributed",
            DpMode::Ftrl => "ftrl",
        }))
    }
}

/// Everything the server needs, with defaults for what was not given,
/// grouped by concern.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    /// Where it listens, and how clients connect and authenticate.
    pub network: NetworkSettings,
    /// The durable state: models, round records, privacy ledger.
    pub data_dir: PathBuf,
    /// The state key file, which authenticates the data directory; `None`
    /// is [`ServerConfig::state_key_path`]'s default.
    pub state_key: Option<PathBuf>,
    /// Model dimension; required for a new data dir without
    /// `initial_model`, and must match the stored model (and the initial
    /// model's file) otherwise.
    pub dim: Option<u32>,
    /// A safetensors file of float32 tensors to start a new data directory
    /// from (its names and shapes are the published models'); on a data
    /// directory that holds models it must be the same model as the
    /// stored initial one.
    pub initial_model: Option<PathBuf>,
    /// How rounds are gathered, protected and encoded.
    pub round: RoundRules,
    /// Differential privacy.
    pub dp: DpSettings,
    /// How the server turns each round's sum into the next model.
    pub aggregation: AggregationSettings,
    /// Stop after this many rounds (completed or aborted); `None` runs until
    /// shut down.
    pub rounds: Option<u64>,
}

/// Where the server listens, and how clients connect and authenticate.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkSettings {
    /// Where the gRPC service listens (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Prometheus `/metrics` endpoint.
    pub metrics_listen: Option<SocketAddr>,
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
    /// Most connections open at once; one more is closed at accept
    /// (`None`: [`ServerConfig::max_connections`]'s default, the lobby's
    /// capacity plus room for model downloads).
    pub max_connections: Option<u32>,
    /// Longest TLS handshake; a connection that takes longer is closed.
    pub tls_handshake_timeout: Duration,
    /// Longest wait for a new connection's HTTP/2 preface and first request
    /// (after the TLS handshake); a connection that sends none in time is
    /// closed.
    pub preface_timeout: Duration,
    /// Longest time a connection may go without a live request (a response
    /// under way, such as a client waiting in the lobby) after its first
    /// one; then it is closed, so that a party holding its connection open
    /// with keepalive pings alone cannot keep a slot under the cap. A
    /// connection whose request was refused closes sooner, two seconds
    /// after the refusal.
    pub idle_timeout: Duration,
}

/// How rounds are gathered, which protocol parameters they run with, and
/// how updates are encoded.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundRules {
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
    /// The threshold rule (ignored with `graph = "auto"`, where the finder
    /// sets t).
    pub threshold: ThresholdRule,
    /// A floor on every stage's survivors above the threshold, as a rule
    /// over the round's clients (`None`: the threshold alone). A round
    /// with fewer survivors aborts before any share is revealed, and
    /// distributed DP calibrates each client's noise for this many, so
    /// with a SecAgg+ graph (whose threshold is per neighbourhood and
    /// small) it is what keeps the noise, and the privacy, up.
    pub min_survivors: Option<ThresholdRule>,
    /// The fewest client inputs a published sum may contain: every round's
    /// survivor floor is at least this, so a round whose masked inputs come
    /// from fewer clients aborts before any share is revealed. At least
    /// [`MIN_AGGREGATE_FLOOR`]: from a sum of two inputs each contributor
    /// recovers the other's by subtracting its own, and a sum of one is
    /// that input.
    pub min_aggregate: u32,
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
    /// Each round's cohort is this many clients sampled uniformly from
    /// those waiting (all of them while fewer wait); `min_clients <=
    /// cohort_size <= max_clients`. Not with `cohort_fraction`.
    pub cohort_size: Option<u32>,
    /// Each round's cohort is this fraction of the clients waiting, in
    /// (0, 1], rounded up, raised to `min_clients` and capped at
    /// `max_clients`, sampled uniformly. Not with `cohort_size`. With
    /// neither, a round takes every waiting client up to `max_clients`
    /// (sampled when more wait).
    pub cohort_fraction: Option<f64>,
    /// How often a client waiting in the lobby is sent a Lobby frame, so
    /// that it, and the proxies and NAT between, keep the stream open
    /// while rounds run without it.
    pub lobby_keepalive: Duration,
    /// What the secure sum carries beside the update: example-count
    /// weights, federated evaluation counts, adaptive clipping's bits.
    pub extras: ExtrasSettings,
}

/// The extra coordinates a round's secure sum carries after the model's
/// (see [`tessera_dp::extras`]): all off by default. Each one that is on
/// widens the round's sensitivity from `C` to `Δ = C sqrt(1 + m κ²)` (`m`
/// the blocks on, `κ` = [`ExtrasSettings::scale`]); under DP it is noised
/// with the update and charged in the same ledger entry, with `Δ`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtrasSettings {
    /// Weighted averaging: the model moves by `Σ w_i u_i / Σ w_i` with
    /// `w_i = min(n_i, max_examples) / max_examples`, in place of the plain
    /// mean. The denominator is kept within `[1, n]` (under DP it is
    /// noisy); see the server's `extras` module.
    pub weighting: bool,
    /// `N`: the example count that earns a full weight of 1 (more counts
    /// as `N`, so one client's weight, and the sensitivity, stay bounded).
    /// Choose it near a typical client's count: a round whose weights sum
    /// below 1 is shrunk by the denominator's floor.
    pub max_examples: u32,
    /// Federated evaluation: every client reports (correct, total,
    /// loss_sum) of the round's base model on its held-out examples; the
    /// round record shows the federated accuracy and loss.
    pub federated_eval: bool,
    /// `T`: the most evaluation examples one client's counts stand for.
    pub eval_max_examples: u32,
    /// `L`: the most one example's loss counts for.
    pub eval_max_loss: f32,
    /// Adaptive clipping (Andrew et al. 2021): the clip norm follows the
    /// target quantile of the update norms, from the clients' noisy
    /// clipped-indicator bits; starts at `clip_norm`.
    pub adaptive_clip: bool,
    /// `γ`: the fraction of updates the clip norm aims to leave unclipped.
    pub clip_target_quantile: f64,
    /// `η`: the geometric step of the clip norm per round.
    pub clip_lr: f64,
    /// `κ`: each block of extras has L2 norm at most `κ C`. Larger means
    /// less noise on the extras' sums (`z Δ / (2 κ C)` units) and a larger
    /// `Δ`, i.e. more noise on the model.
    pub scale: f32,
}

impl Default for ExtrasSettings {
    fn default() -> Self {
        ExtrasSettings {
            weighting: false,
            max_examples: 1000,
            federated_eval: false,
            eval_max_examples: 1000,
            eval_max_loss: 10.0,
            adaptive_clip: false,
            // Andrew et al.'s defaults.
            clip_target_quantile: 0.5,
            clip_lr: 0.2,
            scale: 0.25,
        }
    }
}

/// Differential privacy: which mechanism, how much noise, and the budget.
#[derive(Clone, Debug, PartialEq)]
pub struct DpSettings {
    /// Differential privacy mode.
    pub mode: DpMode,
    /// Which integer noise clients add with `dp = distributed`.
    pub noise: NoiseKind,
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
    /// Allow `epsilon_budget` above the budget the data directory's ledger
    /// holds (the raise is recorded in the ledger). A lower budget needs no
    /// permission: it applies at once.
    pub raise_budget: bool,
    /// Allow `delta` other than the ledger's: every past epsilon is then
    /// recomputed at the new delta from the stored mechanisms, and the
    /// recompute is recorded in the ledger.
    pub recompute_delta: bool,
    /// DP-FTRL: rounds (completed releases) per tree; the tree, and the
    /// once-per-tree rule for identities, restart after this many.
    pub ftrl_epoch_rounds: u64,
    /// DP-FTRL: momentum `γ` in `[0, 1)` on the noisy per-round steps
    /// (DP-FTRLM); 0 is plain DP-FTRL, `θ_t = θ_epoch + η S_t / n`.
    pub ftrl_momentum: f64,
}

/// The aggregation strategy: the server optimizer (FedAvg, FedAvgM, FedAdam,
/// FedYogi, FedAdagrad) over each round's average update, and FedProx's mu.
#[derive(Clone, Debug, PartialEq)]
pub struct AggregationSettings {
    /// Server learning rate, of every strategy.
    pub server_lr: f32,
    /// FedAvgM server momentum, if any.
    pub server_momentum: Option<f32>,
    /// The server optimizer; `None` is FedAvgM with a momentum, else FedAvg
    /// ([`AggregationSettings::effective_strategy`]).
    pub strategy: Option<Strategy>,
    /// The adaptive optimizers' first-moment decay; `None` is the paper's.
    pub server_beta1: Option<f32>,
    /// FedAdam's and FedYogi's second-moment decay; `None` is the paper's.
    pub server_beta2: Option<f32>,
    /// The adaptive optimizers' adaptivity tau; `None` is the default.
    pub server_tau: Option<f32>,
    /// FedProx (Li et al. 2020): the weight mu of `(mu/2) ||w - w_global||^2`
    /// that clients add to their local loss, sent to them with the model and
    /// in each RoundStart; 0 is plain local training.
    pub proximal_mu: f64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            network: NetworkSettings::default(),
            data_dir: PathBuf::from("tessera-data"),
            state_key: None,
            dim: None,
            initial_model: None,
            round: RoundRules::default(),
            dp: DpSettings::default(),
            aggregation: AggregationSettings::default(),
            rounds: None,
        }
    }
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            metrics_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tokens_file: None,
            identities_file: None,
            insecure_dev: false,
            max_connections: None,
            tls_handshake_timeout: Duration::from_secs(10),
            preface_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for RoundRules {
    fn default() -> Self {
        RoundRules {
            min_clients: 3,
            max_clients: 10_000,
            join_window: Duration::from_millis(200),
            graph: GraphChoice::Auto,
            threshold: ThresholdRule::Majority,
            min_survivors: None,
            min_aggregate: MIN_AGGREGATE_FLOOR,
            dropout_rate: 0.1,
            corrupt_rate: 0.05,
            threat_model: ThreatModel::SemiHonest,
            prg: Prg::Aes128Ctr,
            bits: None,
            frac_bits: 16,
            clip_norm: 1.0,
            stage_timeout: Duration::from_secs(30),
            cohort_size: None,
            cohort_fraction: None,
            lobby_keepalive: DEFAULT_LOBBY_KEEPALIVE,
            extras: ExtrasSettings::default(),
        }
    }
}

impl Default for DpSettings {
    fn default() -> Self {
        DpSettings {
            mode: DpMode::Off,
            noise: NoiseKind::DiscreteGaussian,
            noise_multiplier: 1.0,
            epsilon_budget: 8.0,
            delta: 1e-5,
            raise_budget: false,
            recompute_delta: false,
            ftrl_epoch_rounds: 16,
            ftrl_momentum: 0.0,
        }
    }
}

impl Default for AggregationSettings {
    fn default() -> Self {
        AggregationSettings {
            server_lr: 1.0,
            server_momentum: None,
            strategy: None,
            server_beta1: None,
            server_beta2: None,
            server_tau: None,
            proximal_mu: 0.0,
        }
    }
}

impl ServerConfig {
    /// Where the state key is (generated on first start if missing):
    /// `state_key` if given; else `state.key` beside the TLS key; else
    /// (insecure-dev without TLS) `DATA_DIR.state-key`, beside the data
    /// directory. Never inside the data directory: whoever can edit the
    /// data directory must not hold the key that authenticates it.
    pub fn state_key_path(&self) -> PathBuf {
        if let Some(path) = &self.state_key {
            return path.clone();
        }
        if let Some(tls_key) = &self.network.tls_key {
            return crate::files::parent(tls_key).join(crate::store::STATE_KEY_FILE);
        }
        let mut name = self
            .data_dir
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "tessera-data".into());
        name.push(".state-key");
        let dir = std::path::absolute(&self.data_dir).unwrap_or_else(|_| self.data_dir.clone());
        crate::files::parent(&dir).join(name)
    }

    /// The defaults with `overrides` written over them.
    pub fn from_overrides(overrides: ServerOverrides) -> Self {
        let mut config = ServerConfig::default();
        config.apply(overrides);
        config
    }

    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        ServerOverrides::from_file(path).map(Self::from_overrides)
    }

    /// Parses TOML text over the defaults.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        ServerOverrides::from_toml(text).map(Self::from_overrides)
    }

    /// Checks every value and their combinations; the server calls this
    /// before it touches the data dir or the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_round_rules()?;
        // The widest round must fit the ring without wrapping (its noise
        // included). A model dimension not yet known is checked at 1.
        let (_, threshold) = self.graph_for(self.round.max_clients)?;
        let floor = self.survivor_floor(self.round.max_clients, threshold);
        self.round_encoding(self.round.max_clients, floor, self.dim.unwrap_or(1))?;
        if self.round.stage_timeout.is_zero() {
            return Err(invalid("stage_timeout_ms", "must be positive"));
        }
        self.validate_aggregation()?;
        self.validate_extras()?;
        self.validate_dp()?;
        self.validate_network()
    }

    /// The round's sizes, rates and encoding, each on its own.
    fn validate_round_rules(&self) -> Result<(), ConfigError> {
        if self.round.min_clients < 3 {
            // Two clients could each subtract their own input from the sum.
            return Err(invalid(
                "min_clients",
                format!(
                    "{} is too few: a round needs at least 3 clients",
                    self.round.min_clients
                ),
            ));
        }
        self.validate_min_aggregate()?;
        if self.round.max_clients < self.round.min_clients {
            return Err(invalid(
                "max_clients",
                format!(
                    "{} is below min_clients {}",
                    self.round.max_clients, self.round.min_clients
                ),
            ));
        }
        if self.dim == Some(0) {
            return Err(invalid("dim", "must be at least 1"));
        }
        for (field, v) in [
            ("dropout_rate", self.round.dropout_rate),
            ("corrupt_rate", self.round.corrupt_rate),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(invalid(field, format!("{v} is not a fraction in [0, 1)")));
            }
        }
        if self.round.frac_bits > MAX_FRAC_BITS {
            return Err(invalid(
                "frac_bits",
                format!("{} is above {MAX_FRAC_BITS}", self.round.frac_bits),
            ));
        }
        if !(self.round.clip_norm.is_finite() && self.round.clip_norm > 0.0) {
            return Err(invalid("clip_norm", "must be a positive number"));
        }
        self.validate_cohort()
    }

    /// The cohort rule and the lobby's keep-alive: one rule at a time, and
    /// one that fits `min_clients..=max_clients`.
    fn validate_cohort(&self) -> Result<(), ConfigError> {
        let r = &self.round;
        if r.lobby_keepalive.is_zero() {
            return Err(invalid("lobby_keepalive_ms", "must be positive"));
        }
        if let (Some(k), Some(f)) = (r.cohort_size, r.cohort_fraction) {
            return Err(invalid(
                "cohort_size",
                format!(
                    "cohort_size {k} and cohort_fraction {f} were both given: a cohort is a fixed size or a fraction of the clients waiting, give one"
                ),
            ));
        }
        if let Some(k) = r.cohort_size {
            if k < r.min_clients {
                return Err(invalid(
                    "cohort_size",
                    format!(
                        "{k} is below min_clients {}: no round could open with it; raise cohort_size or lower min_clients",
                        r.min_clients
                    ),
                ));
            }
            if k > r.max_clients {
                return Err(invalid(
                    "cohort_size",
                    format!(
                        "{k} is above max_clients {}, the most clients a round takes; lower cohort_size or raise max_clients",
                        r.max_clients
                    ),
                ));
            }
        }
        if let Some(f) = r.cohort_fraction
            && !(f > 0.0 && f <= 1.0)
        {
            return Err(invalid(
                "cohort_fraction",
                format!("{f} is not a fraction in (0, 1]"),
            ));
        }
        Ok(())
    }

    /// How many of the waiting clients a round takes
    /// ([`RoundRules::cohort_size`], [`RoundRules::cohort_fraction`]).
    pub(crate) fn cohort_rule(&self) -> crate::cohort::CohortRule {
        use crate::cohort::CohortRule;
        match (self.round.cohort_size, self.round.cohort_fraction) {
            (Some(k), _) => CohortRule::Size(k),
            (None, Some(f)) => CohortRule::Fraction(f),
            (None, None) => CohortRule::All,
        }
    }

    /// The minimum aggregate size: at least [`MIN_AGGREGATE_FLOOR`], and
    /// reachable by every round the lobby may open.
    fn validate_min_aggregate(&self) -> Result<(), ConfigError> {
        let m = self.round.min_aggregate;
        if m < MIN_AGGREGATE_FLOOR {
            // Two inputs: each contributor subtracts its own and learns the
            // other's; one input is published as it is.
            return Err(invalid(
                "min_aggregate",
                format!(
                    "{m} is too few: a published sum of fewer than {MIN_AGGREGATE_FLOOR} inputs exposes an input (with 2, each contributor recovers the other's by subtracting its own)"
                ),
            ));
        }
        if self.round.min_clients < m {
            return Err(invalid(
                "min_aggregate",
                format!(
                    "{m} cannot be met: rounds open with min_clients = {} clients; raise min_clients (and max_clients) to at least {m}",
                    self.round.min_clients
                ),
            ));
        }
        Ok(())
    }

    /// The extras' bounds and adaptive clipping's parameters.
    fn validate_extras(&self) -> Result<(), ConfigError> {
        let e = &self.round.extras;
        if !(e.scale.is_finite() && e.scale > 0.0 && e.scale <= 16.0) {
            return Err(invalid(
                "extras_scale",
                format!("{} is not in (0, 16]", e.scale),
            ));
        }
        if e.max_examples == 0 {
            return Err(invalid("max_examples", "must be at least 1"));
        }
        if e.eval_max_examples == 0 {
            return Err(invalid("eval_max_examples", "must be at least 1"));
        }
        if !(e.eval_max_loss.is_finite() && e.eval_max_loss > 0.0) {
            return Err(invalid("eval_max_loss", "must be a positive number"));
        }
        if !(e.clip_target_quantile > 0.0 && e.clip_target_quantile < 1.0) {
            return Err(invalid(
                "clip_target_quantile",
                format!("{} is not a fraction in (0, 1)", e.clip_target_quantile),
            ));
        }
        if !(e.clip_lr.is_finite() && e.clip_lr > 0.0 && e.clip_lr <= 1.0) {
            return Err(invalid(
                "clip_lr",
                format!("{} is not in (0, 1]", e.clip_lr),
            ));
        }
        Ok(())
    }

    /// The extras a round with update clip norm `clip_norm` carries, or
    /// `None` when none is on (the round then sums the update alone).
    pub fn extras_layout(&self, clip_norm: f32) -> Option<tessera_dp::extras::ExtrasLayout> {
        let e = &self.round.extras;
        let layout = tessera_dp::extras::ExtrasLayout {
            weighting: e.weighting.then_some(e.max_examples),
            evaluation: e.federated_eval.then_some(tessera_dp::extras::EvalBounds {
                max_examples: e.eval_max_examples,
                max_loss: e.eval_max_loss,
            }),
            clip_indicator: e.adaptive_clip,
            ..tessera_dp::extras::ExtrasLayout::new(clip_norm, e.scale)
        };
        (!layout.is_empty()).then_some(layout)
    }

    /// The FedAvg(M) step.
    fn validate_aggregation(&self) -> Result<(), ConfigError> {
        if !(self.aggregation.server_lr.is_finite() && self.aggregation.server_lr > 0.0) {
            return Err(invalid("server_lr", "must be a positive number"));
        }
        if let Some(m) = self.aggregation.server_momentum
            && !(0.0..1.0).contains(&m)
        {
            return Err(invalid("server_momentum", format!("{m} is not in [0, 1)")));
        }
        self.aggregation.validate_strategy()
    }

    /// The DP parameters, and that the noise can be planned.
    fn validate_dp(&self) -> Result<(), ConfigError> {
        if self.dp.mode != DpMode::Off {
            if !(self.dp.noise_multiplier.is_finite() && self.dp.noise_multiplier > 0.0) {
                return Err(invalid(
                    "noise_multiplier",
                    "must be positive when DP is on",
                ));
            }
            if !(self.dp.epsilon_budget.is_finite() && self.dp.epsilon_budget > 0.0) {
                return Err(invalid("epsilon_budget", "must be positive"));
            }
            if !(self.dp.delta > 0.0 && self.dp.delta < 1.0) {
                return Err(invalid("delta", "must be in (0, 1)"));
            }
            // The noise must be drawable (and, distributed, have honest
            // survivors to carry it) before the server listens.
            self.planned_mechanism(self.dim.unwrap_or(1))?;
        }
        self.validate_ftrl()
    }

    /// DP-FTRL's settings, and what it cannot be combined with.
    fn validate_ftrl(&self) -> Result<(), ConfigError> {
        if self.dp.mode != DpMode::Ftrl {
            return Ok(());
        }
        if self.network.insecure_dev {
            return Err(invalid(
                "dp",
                "ftrl needs each client at most once per tree, enforced by identity, and --insecure-dev has no stable identity: give tokens_file (or tls_client_ca) with TLS, or use --dp central",
            ));
        }
        if self.aggregation.server_momentum.is_some() {
            return Err(invalid(
                "server_momentum",
                "--dp ftrl has its own server update: use ftrl_momentum instead of server_momentum",
            ));
        }
        if let Some(strategy) = self.aggregation.strategy
            && strategy != Strategy::FedAvg
        {
            return Err(invalid(
                "strategy",
                format!(
                    "--dp ftrl has its own server update (the tree's noisy prefix sums, with ftrl_momentum); {strategy} cannot be combined with it"
                ),
            ));
        }
        let extras = &self.round.extras;
        if extras.weighting || extras.federated_eval || extras.adaptive_clip {
            return Err(invalid(
                "dp",
                "ftrl does not carry extras yet (weighting, federated_eval, adaptive_clip): its tree holds the model's coordinates only",
            ));
        }
        if self.dp.ftrl_epoch_rounds == 0 {
            return Err(invalid("ftrl_epoch_rounds", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.dp.ftrl_momentum) {
            return Err(invalid(
                "ftrl_momentum",
                format!("{} is not in [0, 1)", self.dp.ftrl_momentum),
            ));
        }
        Ok(())
    }

    /// TLS, client authentication and identities: secure unless a
    /// loopback experiment asks otherwise.
    /// The cap on open connections: `max_connections` as given, else the
    /// lobby's capacity (`max_clients`, one connection each) plus a quarter
    /// of it, and at least 100, for model downloads and clients that
    /// reconnect.
    pub fn max_connections(&self) -> u32 {
        self.network.max_connections.unwrap_or_else(|| {
            let clients = self.round.max_clients;
            clients.saturating_add((clients / 4).max(100))
        })
    }

    fn validate_network(&self) -> Result<(), ConfigError> {
        if self.max_connections() < self.round.min_clients {
            return Err(invalid(
                "max_connections",
                format!(
                    "{} is below min_clients {}: no round could ever open",
                    self.max_connections(),
                    self.round.min_clients
                ),
            ));
        }
        for (field, timeout) in [
            (
                "tls_handshake_timeout_ms",
                self.network.tls_handshake_timeout,
            ),
            ("preface_timeout_ms", self.network.preface_timeout),
            ("idle_timeout_ms", self.network.idle_timeout),
        ] {
            if timeout.is_zero() {
                return Err(invalid(field, "must be positive"));
            }
        }
        match (&self.network.tls_cert, &self.network.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid("tls_cert", "tls_cert and tls_key go together"));
            }
            _ => {}
        }
        if self.network.tls_client_ca.is_some() && self.network.tls_cert.is_none() {
            return Err(invalid("tls_client_ca", "mTLS needs tls_cert and tls_key"));
        }
        if self.network.insecure_dev {
            if !self.network.listen.ip().is_loopback() {
                return Err(invalid(
                    "insecure_dev",
                    format!(
                        "refusing to serve without TLS or authentication on {}, which is not a loopback address",
                        self.network.listen
                    ),
                ));
            }
        } else {
            if self.network.tls_cert.is_none() {
                return Err(invalid(
                    "tls_cert",
                    "TLS is required (give tls_cert and tls_key), or pass --insecure-dev for a local experiment",
                ));
            }
            if self.network.tokens_file.is_none() && self.network.tls_client_ca.is_none() {
                return Err(invalid(
                    "tokens_file",
                    "clients must authenticate: give tokens_file or tls_client_ca (mTLS), or pass --insecure-dev",
                ));
            }
        }
        match (self.round.threat_model, &self.network.identities_file) {
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
            dim: Some(10),
            network: NetworkSettings {
                insecure_dev: true,
                ..Default::default()
            },
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
        assert_eq!(c.round.min_clients, 7);
        assert_eq!(c.round.graph, GraphChoice::Harary(4));
        assert_eq!(c.round.threshold, ThresholdRule::Fraction(0.75));
        assert_eq!(c.dp.mode, DpMode::Central);
        assert_eq!(c.round.stage_timeout, Duration::from_millis(900));
        let err = ServerConfig::from_toml("dimm = 5\n").unwrap_err();
        assert!(err.to_string().contains("dimm"), "{err}");
        let err = ServerConfig::from_toml("graph = \"harary:3\"\n").unwrap_err();
        assert!(err.to_string().contains("even"), "{err}");
    }

    /// The connection deadlines come from the file (and the flags) and
    /// must be positive: a zero idle timeout would close a connection
    /// before its first response.
    #[test]
    fn connection_timeouts_come_from_the_file_and_zero_is_refused() {
        let c = ServerConfig::from_toml(
            "idle_timeout_ms = 1500
",
        )
        .unwrap();
        assert_eq!(c.network.idle_timeout, Duration::from_millis(1500));
        assert_eq!(dev().network.idle_timeout, Duration::from_secs(60));
        for key in [
            "tls_handshake_timeout_ms",
            "preface_timeout_ms",
            "idle_timeout_ms",
        ] {
            let mut c = ServerConfig::from_toml(&format!("{key} = 0\n")).unwrap();
            c.dim = Some(10);
            c.network.insecure_dev = true;
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("positive"), "{err}");
        }
    }

    #[test]
    fn the_malicious_server_model_needs_identities_and_a_safe_threshold() {
        let mut c = dev();
        c.round.threat_model = ThreatModel::MaliciousServer;
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("identities_file"), "{err}");
        c.network.identities_file = Some("enrolled.txt".into());
        c.validate().unwrap();
        // 10 clients, 1 assumed corrupt: t must be above (10 + 1) / 2.
        c.round.corrupt_rate = 0.1;
        c.round.graph = GraphChoice::Complete;
        c.round.threshold = ThresholdRule::Count(5);
        let err = c.graph_for(10).unwrap_err();
        assert!(err.to_string().contains("at least 6"), "{err}");
        c.round.threshold = ThresholdRule::Count(6);
        assert_eq!(c.graph_for(10).unwrap(), (GraphKind::Complete, 6));
        // Identities without the model that uses them are a mistake.
        let mut c = dev();
        c.network.identities_file = Some("enrolled.txt".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn extras_settings_come_from_the_file_and_bad_ones_are_refused_by_name() {
        let c = ServerConfig::from_toml(
            "dim = 5\nweighting = true\nmax_examples = 64\nfederated_eval = true\nadaptive_clip = true\nclip_target_quantile = 0.7\nclip_lr = 0.1\nextras_scale = 0.5\n",
        )
        .unwrap();
        let e = &c.round.extras;
        assert!(e.weighting && e.federated_eval && e.adaptive_clip);
        assert_eq!(
            (e.max_examples, e.clip_target_quantile, e.clip_lr),
            (64, 0.7, 0.1)
        );
        let layout = c.extras_layout(2.0).unwrap();
        assert_eq!((layout.len(), layout.blocks()), (5, 3));
        // Δ = 2 sqrt(1 + 3 / 4) and 5 more coordinates to sum.
        let (delta, summed) = c.summed(2.0, 5);
        assert!((delta - 2.0 * 1.75f32.sqrt()).abs() < 1e-4);
        assert_eq!(summed, 10);
        assert_eq!(ServerConfig::default().extras_layout(1.0), None);
        for (toml, key) in [
            ("clip_target_quantile = 1.5", "clip_target_quantile"),
            ("clip_lr = 0.0", "clip_lr"),
            ("extras_scale = -1.0", "extras_scale"),
            ("max_examples = 0", "max_examples"),
            ("eval_max_loss = 0.0", "eval_max_loss"),
        ] {
            let mut c = ServerConfig::from_toml(toml).unwrap();
            c.network.insecure_dev = true;
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
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
            network: NetworkSettings {
                listen: "0.0.0.0:7443".parse().unwrap(),
                ..dev().network
            },
            ..dev()
        };
        let err = public.validate().unwrap_err().to_string();
        assert!(err.contains("not a loopback"), "{err}");
        let no_auth = ServerConfig {
            network: NetworkSettings {
                tls_cert: Some("c".into()),
                tls_key: Some("k".into()),
                ..Default::default()
            },
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

    /// A published sum of two inputs gives each contributor the other's:
    /// `min_aggregate` below 3 is refused, and so is one the lobby's rounds
    /// cannot reach.
    #[test]
    fn a_minimum_aggregate_below_three_or_out_of_reach_is_refused() {
        assert_eq!(dev().round.min_aggregate, 3);
        for m in [0, 1, 2] {
            let mut c = dev();
            c.round.min_aggregate = m;
            let err = c.validate().unwrap_err().to_string();
            assert!(
                err.starts_with("config: min_aggregate: ") && err.contains("too few"),
                "{m}: {err}"
            );
        }
        let mut c = dev();
        c.round.min_aggregate = 5;
        c.round.min_clients = 4;
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("config: min_aggregate: ") && err.contains("min_clients = 4"),
            "{err}"
        );
        c.round.min_clients = 5;
        c.validate().unwrap();
        let c = ServerConfig::from_toml(
            "min_aggregate = 4
min_clients = 4
",
        )
        .unwrap();
        assert_eq!(c.round.min_aggregate, 4);
    }

    #[test]
    fn bad_values_are_named() {
        for (c, field) in [
            (
                ServerConfig {
                    round: RoundRules {
                        min_clients: 2,
                        ..dev().round
                    },
                    ..dev()
                },
                "min_clients",
            ),
            (
                ServerConfig {
                    round: RoundRules {
                        clip_norm: -1.0,
                        ..dev().round
                    },
                    ..dev()
                },
                "clip_norm",
            ),
            (
                ServerConfig {
                    round: RoundRules {
                        frac_bits: 30,
                        ..dev().round
                    },
                    ..dev()
                },
                "frac_bits",
            ),
            (
                ServerConfig {
                    round: RoundRules {
                        bits: Some(8),
                        ..dev().round
                    },
                    ..dev()
                },
                "bits",
            ),
            (
                ServerConfig {
                    aggregation: AggregationSettings {
                        server_momentum: Some(1.0),
                        ..dev().aggregation
                    },
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

    /// The cohort settings: one rule at a time, within min_clients and
    /// max_clients, a fraction in (0, 1], a positive keep-alive; each
    /// refusal names its setting. They come from the file, the flags'
    /// table, like every other setting.
    #[test]
    fn contradictory_cohort_settings_are_refused_naming_them() {
        use crate::cohort::CohortRule;
        let c = ServerConfig::from_toml(
            "min_clients = 3\nmax_clients = 10\ncohort_size = 4\nlobby_keepalive_ms = 250\n",
        )
        .unwrap();
        assert_eq!(c.cohort_rule(), CohortRule::Size(4));
        assert_eq!(c.round.lobby_keepalive, Duration::from_millis(250));
        let c = ServerConfig::from_toml("cohort_fraction = 0.5\n").unwrap();
        assert_eq!(c.cohort_rule(), CohortRule::Fraction(0.5));
        assert_eq!(dev().cohort_rule(), CohortRule::All);
        assert_eq!(dev().round.lobby_keepalive, DEFAULT_LOBBY_KEEPALIVE);

        let with = |size: Option<u32>, fraction: Option<f64>, keepalive_ms: u64| {
            let mut c = dev();
            c.round.min_clients = 3;
            c.round.max_clients = 10;
            c.round.cohort_size = size;
            c.round.cohort_fraction = fraction;
            c.round.lobby_keepalive = Duration::from_millis(keepalive_ms);
            c.validate().map_err(|e| e.to_string())
        };
        for ok in [
            with(Some(3), None, 1),
            with(Some(10), None, 1),
            with(None, Some(1.0), 1),
            with(None, Some(0.01), 1),
        ] {
            ok.unwrap();
        }
        for (bad, starts, says) in [
            (
                with(Some(4), Some(0.5), 1),
                "config: cohort_size: ",
                "cohort_fraction 0.5 were both given",
            ),
            (
                with(Some(2), None, 1),
                "config: cohort_size: ",
                "below min_clients 3",
            ),
            (
                with(Some(11), None, 1),
                "config: cohort_size: ",
                "above max_clients 10",
            ),
            (
                with(None, Some(0.0), 1),
                "config: cohort_fraction: ",
                "not a fraction in (0, 1]",
            ),
            (
                with(None, Some(1.5), 1),
                "config: cohort_fraction: ",
                "not a fraction",
            ),
            (
                with(None, Some(f64::NAN), 1),
                "config: cohort_fraction: ",
                "not a fraction",
            ),
            (
                with(None, None, 0),
                "config: lobby_keepalive_ms: ",
                "must be positive",
            ),
        ] {
            let err = bad.unwrap_err();
            assert!(err.starts_with(starts) && err.contains(says), "{err}");
        }
    }

    /// `--dp ftrl` loads from the file's keys, runs with tokens and TLS,
    /// and is refused with clear words under --insecure-dev (no stable
    /// identity to hold anyone to once per tree), with FedAvgM's momentum,
    /// and with an empty epoch or a momentum outside [0, 1).
    #[test]
    fn ftrl_needs_identities_and_its_own_update() {
        let secure = |text: &str| {
            let mut c = ServerConfig::from_toml(&format!(
                "dim = 10\ndp = \"ftrl\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntokens_file = \"t.txt\"\n{text}"
            ))
            .unwrap();
            c.network.listen = "127.0.0.1:0".parse().unwrap();
            c
        };
        let c = secure("ftrl_epoch_rounds = 5\nftrl_momentum = 0.9\n");
        assert_eq!(c.dp.mode, DpMode::Ftrl);
        assert_eq!((c.dp.ftrl_epoch_rounds, c.dp.ftrl_momentum), (5, 0.9));
        c.validate().unwrap();
        assert_eq!(ServerConfig::default().dp.ftrl_epoch_rounds, 16);

        let mut dev_ftrl = dev();
        dev_ftrl.dp.mode = DpMode::Ftrl;
        let err = dev_ftrl.validate().unwrap_err().to_string();
        assert!(
            err.contains("--insecure-dev has no stable identity") && err.contains("tokens_file"),
            "{err}"
        );
        for (text, field) in [
            ("server_momentum = 0.9\n", "use ftrl_momentum instead"),
            (
                "strategy = \"fedadam\"\n",
                "fedadam cannot be combined with it",
            ),
            (
                "ftrl_epoch_rounds = 0\n",
                "ftrl_epoch_rounds: must be at least 1",
            ),
            ("ftrl_momentum = 1.0\n", "ftrl_momentum: 1 is not in [0, 1)"),
        ] {
            let err = secure(text).validate().unwrap_err().to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
        let err = "dp-ftrl".parse::<DpMode>().unwrap_err();
        assert!(err.contains("off, central, distributed or ftrl"), "{err}");
    }
}
