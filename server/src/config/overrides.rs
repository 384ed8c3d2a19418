//! The server's settings as its operator gives them: one table, below,
//! lists each setting once (its name, the type it is given as, its help
//! text, and where it goes in [`ServerConfig`]), and generates from it
//!
//! - [`ServerOverrides`], every setting optional: the command line fills it
//!   (`tessera serve` flattens it into its flags, with the `clap` feature),
//!   and so does the flat TOML file;
//! - the TOML file's shape, flat as the flags are (keys are the flag names
//!   with underscores), unknown keys refused;
//! - the one merge, [`ServerOverrides::or`], and [`ServerConfig::apply`],
//!   which writes what was given over the defaults.
//!
//! - with the `clap` feature, each flag's environment variable,
//!   `TESSERA_` and the setting's name in capitals (`--min-clients` is
//!   `TESSERA_MIN_CLIENTS`), for containers and service managers that
//!   configure by environment. The command-line-only switches (those the
//!   file skips: `--insecure-dev`, `--raise-budget`, `--recompute-delta`)
//!   have none, for the file's reason: a variable left in a service unit or
//!   an image would switch security off, or raise every later budget,
//!   without the operator saying so at that start.
//!
//! Layers go lowest first: defaults, then the file, then the environment
//! and the command line (`cli.or(file)`: clap fills each flag from its
//! variable when the flag is not given, so a flag beats its variable and
//! either beats the file). Defaults live with the groups they belong to
//! ([`ServerConfig::default`]), and every check in
//! [`ServerConfig::validate`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use tessera_aggregation::ThreatModel;
use tessera_aggregation::mask::Prg;
use tessera_dp::mechanism::NoiseKind;

use super::{ConfigError, DpMode, GraphChoice, ServerConfig, Strategy, ThresholdRule, invalid};

/// A setting's value in one layer: given, or left to the layers below.
trait Layer: Sized {
    /// The value to write into the configuration, if this layer gives one.
    type Value;
    /// `self` where given, else `lower`.
    fn or(self, lower: Self) -> Self;
    /// The value, if given.
    fn given(self) -> Option<Self::Value>;
}

impl<T> Layer for Option<T> {
    type Value = T;
    fn or(self, lower: Self) -> Self {
        self.or(lower)
    }
    fn given(self) -> Option<T> {
        self
    }
}

/// A flag: it can only switch something on.
impl Layer for bool {
    type Value = bool;
    fn or(self, lower: Self) -> Self {
        self || lower
    }
    fn given(self) -> Option<bool> {
        self.then_some(true)
    }
}

/// The type a setting has in the TOML file: as given, or a string parsed
/// after the file is read (so a bad value is named by its setting).
macro_rules! file_type {
    (typed, $ty:ty) => { $ty };
    (parsed, $ty:ty) => { Option<String> };
}

/// A setting's value read from the file, as its [`ServerOverrides`] type.
macro_rules! file_value {
    (typed, $key:ident, $value:expr) => {
        $value
    };
    (parsed $parse:path, $key:ident, $value:expr) => {
        $value
            .map(|s| $parse(&s).map_err(|e| invalid(stringify!($key), e.to_string())))
            .transpose()?
    };
}

/// `TESSERA_` and `key` in capitals, as bytes: a setting's environment
/// variable, spelled out at compile time (clap takes a `&'static str`).
const fn env_var_bytes<const N: usize>(key: &str) -> [u8; N] {
    const PREFIX: &[u8] = b"TESSERA_";
    let key = key.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < PREFIX.len() {
        out[i] = PREFIX[i];
        i += 1;
    }
    while i < N {
        out[i] = key[i - PREFIX.len()].to_ascii_uppercase();
        i += 1;
    }
    out
}

/// A setting's environment variable: none for a setting the file skips (a
/// command-line-only switch, see the module docs), else `TESSERA_KEY`.
macro_rules! env_var {
    ($key:ident; skip) => {
        None::<&'static str>
    };
    ($key:ident; $($serde:tt)*) => {{
        const KEY: &str = stringify!($key);
        const BYTES: [u8; 8 + KEY.len()] = env_var_bytes(KEY);
        const VAR: &str = match std::str::from_utf8(&BYTES) {
            Ok(var) => var,
            Err(_) => panic!("setting names are ASCII"),
        };
        Some(VAR)
    }};
}

/// The settings table: see the module docs. Each entry is the help text (the
/// flag's, as `tessera serve --help` prints it), clap's attributes, an
/// optional serde attribute for the file's key, the setting's name and
/// type, how the file gives it (`typed` as that type, `parsed FN` as a
/// string), and how it is written into the configuration.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        #[arg($($arg:tt)*)]
        $(#[serde($($serde:tt)*)])?
        $key:ident: $ty:ty, $file:ident $($parse:path)?,
        |$c:ident, $v:ident| $apply:expr;
    )*) => {
        /// Settings given by one source (the command line, the TOML file),
        /// each left `None` (or `false`) when not given; see the module docs.
        #[derive(Clone, Debug, Default, PartialEq)]
        #[cfg_attr(feature = "clap", derive(clap::Args))]
        #[non_exhaustive]
        pub struct ServerOverrides {
            $(
                $(#[doc = $doc])*
                #[cfg_attr(feature = "clap", arg(
                    long,
                    env = env_var!($key; $($($serde)*)?),
                    hide_env_values = true,
                    $($arg)*
                ))]
                pub $key: $ty,
            )*
        }

        /// The TOML file's shape: flat, every key optional, unknown keys
        /// refused.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileOverrides {
            $(
                $(#[serde($($serde)*)])?
                $key: file_type!($file, $ty),
            )*
        }

        impl FileOverrides {
            /// The file's settings, its strings parsed.
            fn into_overrides(self) -> Result<ServerOverrides, ConfigError> {
                Ok(ServerOverrides {
                    $( $key: file_value!($file $($parse)?, $key, self.$key), )*
                })
            }
        }

        impl ServerOverrides {
            /// Every setting's name (the file's key) and environment
            /// variable, in the table's order; `None` for the
            /// command-line-only switches, which have no variable.
            pub const ENV_VARS: &[(&'static str, Option<&'static str>)] = &[
                $( (stringify!($key), env_var!($key; $($($serde)*)?)), )*
            ];

            /// Each setting from `self` where given, else from `lower`:
            /// `command_line.or(file)`.
            #[must_use]
            pub fn or(self, lower: ServerOverrides) -> ServerOverrides {
                ServerOverrides {
                    $( $key: Layer::or(self.$key, lower.$key), )*
                }
            }
        }

        impl ServerConfig {
            /// Writes every setting `overrides` gives over `self`.
            pub fn apply(&mut self, overrides: ServerOverrides) {
                $(
                    if let Some($v) = Layer::given(overrides.$key) {
                        let $c: &mut ServerConfig = self;
                        $apply;
                    }
                )*
            }
        }
    };
}

settings! {
    /// Address to listen on; port 0 picks a free port.
    #[arg(value_name = "ADDR")]
    listen: Option<SocketAddr>, typed,
    |c, v| c.network.listen = v;

    /// Directory of the durable state (models, round records, ledger).
    #[arg(value_name = "DIR")]
    data_dir: Option<PathBuf>, typed,
    |c, v| c.data_dir = v;

    /// State key file (32 secret bytes, hex; mode 0600) that authenticates
    /// the data directory's ledger, manifest, round records and audit log;
    /// generated on first start if missing. Default: state.key beside
    /// --tls-key, or DIR.state-key beside the data directory when there is
    /// no TLS key. Keep it outside the data directory.
    #[arg(value_name = "PATH")]
    state_key: Option<PathBuf>, typed,
    |c, v| c.state_key = Some(v);

    /// Model dimension (required for a new data directory without
    /// --initial-model; with it, a D other than the file's is refused).
    #[arg(value_name = "D")]
    dim: Option<u32>, typed,
    |c, v| c.dim = Some(v);

    /// safetensors file of float32 tensors (any names and shapes) to start
    /// a new data directory from; published models keep its names and
    /// shapes. On a data directory that already holds models it must be the
    /// same model as the stored initial one (version 1).
    #[arg(value_name = "FILE")]
    initial_model: Option<PathBuf>, typed,
    |c, v| c.initial_model = Some(v);

    /// Clients to wait for before a round opens (at least 3).
    #[arg(value_name = "N")]
    min_clients: Option<u32>, typed,
    |c, v| c.round.min_clients = v;

    /// Most clients in one round.
    #[arg(value_name = "N")]
    max_clients: Option<u32>, typed,
    |c, v| c.round.max_clients = v;

    /// After --min-clients wait, keep the lobby open this long for more.
    #[arg(value_name = "MS")]
    join_window_ms: Option<u64>, typed,
    |c, v| c.round.join_window = Duration::from_millis(v);

    /// Neighbour graph: complete, harary:K, or auto (SecAgg+ finder); the
    /// malicious-server threat model runs on the complete graph only.
    #[arg(value_name = "GRAPH")]
    graph: Option<GraphChoice>, parsed GraphChoice::from_str,
    |c, v| c.round.graph = v;

    /// Shamir threshold rule: majority (of a client's share holders, its
    /// neighbours; raised to the threat model's floor), a fraction such as
    /// 0.66, or a count; an explicit rule below the floor is refused.
    #[arg(value_name = "RULE")]
    threshold: Option<ThresholdRule>, parsed ThresholdRule::from_str,
    |c, v| c.round.threshold = v;

    /// Floor on every stage's survivors above the threshold (a fraction of
    /// the round's clients or a count); distributed DP is calibrated for it.
    #[arg(value_name = "RULE")]
    min_survivors: Option<ThresholdRule>, parsed ThresholdRule::from_str,
    |c, v| c.round.min_survivors = Some(v);

    /// The fewest client inputs a published sum may contain [default: 3,
    /// the least accepted: from a sum of two, each contributor recovers the
    /// other's input]; a round with fewer survivors aborts unpublished.
    #[arg(value_name = "N")]
    min_aggregate: Option<u32>, typed,
    |c, v| c.round.min_aggregate = v;

    /// Expected dropout fraction (for --graph auto) [default: 0.1].
    #[arg(value_name = "RATE")]
    dropout_rate: Option<f64>, typed,
    |c, v| c.round.dropout_rate = v;

    /// Fraction of clients that may collude with the server: the finder's
    /// input for --graph auto, and the count every threshold must hold
    /// against [default: 0.05].
    #[arg(value_name = "RATE")]
    corrupt_rate: Option<f64>, typed,
    |c, v| c.round.corrupt_rate = v;

    /// Threat model every round runs under.
    #[arg()]
    threat_model: Option<ThreatModel>, parsed ThreatModel::from_str,
    |c, v| c.round.threat_model = v;

    /// Mask PRG.
    #[arg()]
    prg: Option<Prg>, parsed Prg::from_str,
    |c, v| c.round.prg = v;

    /// Ring width in bits (default: the smallest that cannot wrap; a smaller
    /// one is refused with the smallest safe value).
    #[arg(value_name = "BITS")]
    bits: Option<u8>, typed,
    |c, v| c.round.bits = Some(v);

    /// Fixed-point scale: values are multiplied by 2^F.
    #[arg(value_name = "F")]
    frac_bits: Option<u8>, typed,
    |c, v| c.round.frac_bits = v;

    /// L2 norm clients clip their updates to (with --adaptive-clip, the
    /// first round's; later rounds follow the update norms).
    #[arg(value_name = "C")]
    clip_norm: Option<f32>, typed,
    |c, v| c.round.clip_norm = v;

    /// Deadline of each stage, in milliseconds.
    #[arg(value_name = "MS")]
    stage_timeout_ms: Option<u64>, typed,
    |c, v| c.round.stage_timeout = Duration::from_millis(v);

    /// Server learning rate: 1 applies FedAvg's mean update as is; the
    /// adaptive strategies want 0.01 to 0.1 (see --strategy).
    #[arg(value_name = "LR")]
    server_lr: Option<f32>, typed,
    |c, v| c.aggregation.server_lr = v;

    /// FedAvgM server momentum in [0, 1).
    #[arg(value_name = "BETA")]
    server_momentum: Option<f32>, typed,
    |c, v| c.aggregation.server_momentum = Some(v);

    /// Differential privacy: off, central (the server adds Gaussian noise),
    /// distributed (clients add integer noise; the server never sees an
    /// un-noised sum) or ftrl (DP-FTRL: the server adds tree noise to each
    /// epoch's prefix sums; each identity at most once per tree; needs
    /// tokens or mTLS).
    #[arg(value_name = "MODE", value_parser = DpMode::from_str)]
    dp: Option<DpMode>, parsed DpMode::from_str,
    |c, v| c.dp.mode = v;

    /// Distributed DP noise: discrete-gaussian (default) or skellam.
    #[arg(value_parser = noise_parser())]
    dp_noise: Option<NoiseKind>, parsed parse_noise,
    |c, v| c.dp.noise = v;

    /// DP noise multiplier z: noise std over the sensitivity (central: z *
    /// clip norm; distributed: carried by any --min-survivors survivors).
    #[arg(value_name = "Z")]
    noise_multiplier: Option<f64>, typed,
    |c, v| c.dp.noise_multiplier = v;

    /// Total epsilon the server may spend.
    #[arg(value_name = "EPS")]
    epsilon_budget: Option<f64>, typed,
    |c, v| c.dp.epsilon_budget = v;

    /// Delta of the (epsilon, delta) guarantee.
    #[arg(value_name = "DELTA")]
    delta: Option<f64>, typed,
    |c, v| c.dp.delta = v;

    /// Allow --epsilon-budget above the budget the data directory's ledger
    /// holds; the raise is recorded in the ledger (a lower budget applies
    /// without this flag).
    // A command-line flag only: a file would raise every later budget
    // written into it without the operator saying so.
    #[arg()]
    #[serde(skip)]
    raise_budget: bool, typed,
    |c, v| c.dp.raise_budget = v;

    /// Allow --delta other than the ledger's: every past epsilon is
    /// recomputed at the new delta from the stored per-round parameters,
    /// and the recompute is recorded in the ledger.
    // A command-line flag only, as --raise-budget.
    #[arg()]
    #[serde(skip)]
    recompute_delta: bool, typed,
    |c, v| c.dp.recompute_delta = v;

    /// TLS certificate chain (PEM).
    #[arg(value_name = "FILE")]
    tls_cert: Option<PathBuf>, typed,
    |c, v| c.network.tls_cert = Some(v);

    /// TLS private key (PEM).
    #[arg(value_name = "FILE")]
    tls_key: Option<PathBuf>, typed,
    |c, v| c.network.tls_key = Some(v);

    /// CA for client certificates (mTLS).
    #[arg(value_name = "FILE")]
    tls_client_ca: Option<PathBuf>, typed,
    |c, v| c.network.tls_client_ca = Some(v);

    /// Bearer tokens file (`NAME sha256:HEX [expires=UTC-TIME]` lines; see
    /// `tessera token`); SIGHUP reloads it.
    #[arg(value_name = "FILE")]
    tokens_file: Option<PathBuf>, typed,
    |c, v| c.network.tokens_file = Some(v);

    /// Allow-list of enrolled client identities (`NAME ed25519:HEX` lines;
    /// see `tessera keygen`): required with --threat-model malicious-server.
    #[arg(value_name = "FILE")]
    identities_file: Option<PathBuf>, typed,
    |c, v| c.network.identities_file = Some(v);

    /// No TLS and no authentication, loopback only: for local experiments.
    // A command-line flag only: a file cannot switch security off.
    #[arg()]
    #[serde(skip)]
    insecure_dev: bool, typed,
    |c, v| c.network.insecure_dev = v;

    /// Most connections open at once, a client waiting in the lobby holding
    /// one; one more is closed at once and counted [default: --max-clients
    /// plus a quarter, at least 100 more].
    #[arg(value_name = "N")]
    max_connections: Option<u32>, typed,
    |c, v| c.network.max_connections = Some(v);

    /// A TLS handshake not finished within this closes the connection
    /// [default: 10000].
    #[arg(value_name = "MS")]
    tls_handshake_timeout_ms: Option<u64>, typed,
    |c, v| c.network.tls_handshake_timeout = Duration::from_millis(v);

    /// A connection that has not sent the HTTP/2 preface and its first
    /// request within this (after the TLS handshake) is closed [default:
    /// 10000].
    #[arg(value_name = "MS")]
    preface_timeout_ms: Option<u64>, typed,
    |c, v| c.network.preface_timeout = Duration::from_millis(v);

    /// A connection with no live request (a response under way, such as a
    /// client waiting in the lobby) for this long after its first request
    /// is closed; one whose request was refused, 2 s after the refusal
    /// [default: 60000].
    #[arg(value_name = "MS")]
    idle_timeout_ms: Option<u64>, typed,
    |c, v| c.network.idle_timeout = Duration::from_millis(v);

    /// Serve Prometheus metrics on this address (/metrics).
    #[arg(value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>, typed,
    |c, v| c.network.metrics_listen = Some(v);

    /// Stop after this many rounds.
    #[arg(value_name = "R")]
    rounds: Option<u64>, typed,
    |c, v| c.rounds = Some(v);

    /// Each round's cohort: this many clients sampled uniformly at random
    /// (server CSPRNG) from those waiting, all of them while fewer wait;
    /// between --min-clients and --max-clients. Not with --cohort-fraction
    /// [default: every waiting client up to --max-clients].
    #[arg(value_name = "K")]
    cohort_size: Option<u32>, typed,
    |c, v| c.round.cohort_size = Some(v);

    /// Each round's cohort: this fraction in (0, 1] of the clients waiting,
    /// rounded up, raised to --min-clients and capped at --max-clients,
    /// sampled uniformly at random. Not with --cohort-size.
    #[arg(value_name = "F")]
    cohort_fraction: Option<f64>, typed,
    |c, v| c.round.cohort_fraction = Some(v);

    /// How often a client waiting in the lobby is sent a keep-alive (a
    /// Lobby frame), so that proxies, NAT and the client keep its stream
    /// open [default: 15000].
    #[arg(value_name = "MS")]
    lobby_keepalive_ms: Option<u64>, typed,
    |c, v| c.round.lobby_keepalive = Duration::from_millis(v);

    /// --dp ftrl: completed rounds per tree (epoch); the tree noise and the
    /// once-per-tree rule for identities restart after this many [default:
    /// 16].
    #[arg(value_name = "S")]
    ftrl_epoch_rounds: Option<u64>, typed,
    |c, v| c.dp.ftrl_epoch_rounds = v;

    /// --dp ftrl: momentum in [0, 1) on the noisy per-round steps
    /// (DP-FTRLM) [default: 0, plain DP-FTRL].
    #[arg(value_name = "GAMMA")]
    ftrl_momentum: Option<f64>, typed,
    |c, v| c.dp.ftrl_momentum = v;

    /// Server optimizer: fedavg, fedavgm (needs --server-momentum), or the
    /// adaptive fedadam, fedyogi, fedadagrad (Reddi et al. 2021; give
    /// --server-lr 0.01 to 0.1) [default: fedavgm with --server-momentum,
    /// else fedavg].
    #[arg(value_name = "STRATEGY", value_parser = Strategy::from_str)]
    strategy: Option<Strategy>, parsed Strategy::from_str,
    |c, v| c.aggregation.strategy = Some(v);

    /// First-moment decay of fedadam, fedyogi and fedadagrad, in [0, 1)
    /// [default: 0.9].
    #[arg(value_name = "BETA")]
    server_beta1: Option<f32>, typed,
    |c, v| c.aggregation.server_beta1 = Some(v);

    /// Second-moment decay of fedadam and fedyogi, in [0, 1) [default:
    /// 0.99].
    #[arg(value_name = "BETA")]
    server_beta2: Option<f32>, typed,
    |c, v| c.aggregation.server_beta2 = Some(v);

    /// Adaptivity of fedadam, fedyogi and fedadagrad: the step is
    /// server_lr * m / (sqrt(v) + tau); smaller adapts more [default:
    /// 0.001].
    #[arg(value_name = "TAU")]
    server_tau: Option<f32>, typed,
    |c, v| c.aggregation.server_tau = Some(v);

    /// FedProx weight mu: clients add (mu/2) ||w - w_global||^2 to their
    /// local loss (sent with the model and in each round's start); 0 turns
    /// it off [default: 0].
    #[arg(value_name = "MU")]
    proximal_mu: Option<f64>, typed,
    |c, v| c.aggregation.proximal_mu = v;

    /// Weight each update by its client's example count (clipped at
    /// --max-examples) inside the secure sum; under DP the count is noised
    /// and charged with the update [default: false; --weighting is
    /// --weighting=true].
    #[arg(value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    weighting: Option<bool>, typed,
    |c, v| c.round.extras.weighting = v;

    /// The example count that earns a client the full weight of 1 with
    /// --weighting (more counts as this) [default: 1000].
    #[arg(value_name = "N")]
    max_examples: Option<u32>, typed,
    |c, v| c.round.extras.max_examples = v;

    /// Federated evaluation: clients report (correct, total, loss sum) of
    /// the round's base model on their held-out examples inside the secure
    /// sum (noised and charged under DP); round records show the result
    /// [default: false].
    #[arg(value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    federated_eval: Option<bool>, typed,
    |c, v| c.round.extras.federated_eval = v;

    /// The most evaluation examples one client's counts stand for
    /// [default: 1000].
    #[arg(value_name = "T")]
    eval_max_examples: Option<u32>, typed,
    |c, v| c.round.extras.eval_max_examples = v;

    /// The most one evaluation example's loss counts for [default: 10].
    #[arg(value_name = "L")]
    eval_max_loss: Option<f32>, typed,
    |c, v| c.round.extras.eval_max_loss = v;

    /// Adaptive clipping (Andrew et al. 2021): the clip norm, from
    /// --clip-norm, follows --clip-target-quantile of the update norms,
    /// estimated from clients' clipped-indicator bits in the secure sum
    /// (noised by the clients and charged under DP) [default: false].
    #[arg(value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    adaptive_clip: Option<bool>, typed,
    |c, v| c.round.extras.adaptive_clip = v;

    /// Fraction of updates adaptive clipping aims to leave unclipped
    /// [default: 0.5].
    #[arg(value_name = "GAMMA")]
    clip_target_quantile: Option<f64>, typed,
    |c, v| c.round.extras.clip_target_quantile = v;

    /// Adaptive clipping's geometric step per round [default: 0.2].
    #[arg(value_name = "ETA")]
    clip_lr: Option<f64>, typed,
    |c, v| c.round.extras.clip_lr = v;

    /// Each block of extras (weight, evaluation, clip bit) has L2 norm at
    /// most this times the clip norm: larger means less noise on their sums
    /// and more on the model (sensitivity sqrt(1 + blocks x scale^2) x clip
    /// norm) [default: 0.25].
    #[arg(value_name = "KAPPA")]
    extras_scale: Option<f32>, typed,
    |c, v| c.round.extras.scale = v;
}

/// The names of distributed DP's noises, on the command line and in the
/// file.
fn parse_noise(s: &str) -> Result<NoiseKind, String> {
    match s {
        "discrete-gaussian" => Ok(NoiseKind::DiscreteGaussian),
        "skellam" => Ok(NoiseKind::Skellam),
        other => Err(format!(
            "'{other}' is not a noise: expected discrete-gaussian or skellam"
        )),
    }
}

/// `--dp-noise`: the names [`parse_noise`] takes, listed in `--help`.
#[cfg(feature = "clap")]
fn noise_parser() -> impl clap::builder::TypedValueParser<Value = NoiseKind> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["discrete-gaussian", "skellam"])
        .try_map(|s| parse_noise(&s))
}

impl ServerOverrides {
    /// Reads a TOML file's settings.
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

    /// Parses TOML text's settings.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let file: FileOverrides = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<toml>"),
            message: e.to_string(),
        })?;
        file.into_overrides()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_but_the_command_line_only_switches_has_its_variable() {
        let vars = ServerOverrides::ENV_VARS;
        assert_eq!(vars[0], ("listen", Some("TESSERA_LISTEN")));
        assert!(vars.contains(&(
            "tls_handshake_timeout_ms",
            Some("TESSERA_TLS_HANDSHAKE_TIMEOUT_MS")
        )));
        let without: Vec<&str> = vars
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(without, ["raise_budget", "recompute_delta", "insecure_dev"]);
        for (key, var) in vars.iter().filter_map(|(k, v)| v.map(|v| (k, v))) {
            assert_eq!(var, format!("TESSERA_{}", key.to_uppercase()));
        }
        // The variables the examples read mean what they did: no setting
        // takes their names.
        for taken in [
            "TESSERA_CA",
            "TESSERA_TOKEN",
            "TESSERA_INSECURE_DEV",
            "TESSERA_SYSTEM_ROOTS",
        ] {
            assert!(vars.iter().all(|(_, v)| *v != Some(taken)), "{taken}");
        }
    }

    /// docs/server.toml, the operators' example: it loads through the
    /// real loader and validates, lists every setting of the file exactly
    /// once (set, or commented out as `#key = value`, grouped by concern),
    /// and its commented
    /// values parse too. A new setting without a line there fails here.
    #[test]
    fn the_example_server_toml_loads_and_lists_every_setting() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/server.toml");
        let config = ServerConfig::from_file(&path).unwrap();
        config.validate().unwrap();
        assert_eq!(config.round.min_clients, 100);
        assert_eq!(config.dp.mode, DpMode::Distributed);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut listed = Vec::new();
        let mut uncommented = String::new();
        for line in text.lines() {
            let setting = line.strip_prefix('#').unwrap_or(line);
            let Some((key, _)) = setting.split_once(" = ") else {
                continue;
            };
            if key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                listed.push(key.to_owned());
                uncommented.push_str(setting);
                uncommented.push('\n');
            }
        }
        let mut expected: Vec<&str> = ServerOverrides::ENV_VARS
            .iter()
            .filter(|(_, var)| var.is_some())
            .map(|(key, _)| *key)
            .collect();
        listed.sort();
        expected.sort();
        assert_eq!(listed, expected, "every setting, once each");
        let everything = ServerOverrides::from_toml(&uncommented).unwrap();
        assert_eq!(everything.server_momentum, Some(0.9));
        assert!(everything.identities_file.is_some());
    }

    #[test]
    fn the_command_line_overrides_the_file_and_the_file_the_defaults() {
        let file = ServerOverrides::from_toml("min_clients = 7\nmax_clients = 9\n").unwrap();
        let cli = ServerOverrides {
            max_clients: Some(8),
            insecure_dev: true,
            ..ServerOverrides::default()
        };
        let c = ServerConfig::from_overrides(cli.or(file));
        assert_eq!((c.round.min_clients, c.round.max_clients), (7, 8));
        assert!(c.network.insecure_dev);
        assert_eq!(c.round.dropout_rate, 0.1);
    }

    /// The file's keys are the flags' names, in the flags' order; a file
    /// cannot switch security off.
    #[test]
    fn the_file_is_flat_and_lists_its_keys_when_one_is_unknown() {
        let err = ServerOverrides::from_toml("insecure_dev = true\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "unknown field `insecure_dev`, expected one of `listen`, `data_dir`, `state_key`, `dim`, `initial_model`, \
                 `min_clients`, `max_clients`, `join_window_ms`, `graph`, `threshold`, \
                 `min_survivors`, `min_aggregate`, `dropout_rate`, `corrupt_rate`, `threat_model`, `prg`, \
                 `bits`, `frac_bits`, `clip_norm`, `stage_timeout_ms`, `server_lr`, \
                 `server_momentum`, `dp`, `dp_noise`, `noise_multiplier`, `epsilon_budget`, \
                 `delta`, `tls_cert`, `tls_key`, `tls_client_ca`, `tokens_file`, \
                 `identities_file`, `max_connections`, `tls_handshake_timeout_ms`, \
                 `preface_timeout_ms`, `idle_timeout_ms`, `metrics_listen`, `rounds`, `cohort_size`, \
                 `cohort_fraction`, `lobby_keepalive_ms`, `ftrl_epoch_rounds`, \
                 `ftrl_momentum`, `strategy`, `server_beta1`, `server_beta2`, `server_tau`, \
                 `proximal_mu`, `weighting`, `max_examples`, `federated_eval`, \
                 `eval_max_examples`, `eval_max_loss`, `adaptive_clip`, `clip_target_quantile`, \
                 `clip_lr`, `extras_scale`"
            ),
            "{err}"
        );
        let err = ServerOverrides::from_toml("threat_model = \"lying\"\n").unwrap_err();
        assert!(
            err.to_string().starts_with("config: threat_model: "),
            "{err}"
        );
    }
}
