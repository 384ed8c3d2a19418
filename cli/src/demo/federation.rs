//! The federation the demo stands up: a `tessera-server` on 127.0.0.1 with
//! a generated self-signed TLS certificate, one bearer token per client
//! and, for malicious-server rounds, an allow-list of enrolled client
//! identities; then one SDK client per participant, connected to it.
//!
//! Every credential is written into the output directory, as an operator
//! would lay them out for `tessera serve`, and read back by the server from
//! there.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tessera_aggregation::ThreatModel;
use tessera_aggregation::graph::GraphKind;
use tessera_aggregation::identity::IdentityKey;
use tessera_client::Client;
use tessera_server::config::{
    AggregationSettings, DpMode, DpSettings, ExtrasSettings, GraphChoice, NetworkSettings,
    RoundRules, Strategy, ThresholdRule,
};
use tessera_server::model::{Model, TensorSpec};
use tessera_server::store::Store;
use tessera_server::tls::TlsFiles;
use tessera_server::{RunningServer, ServerConfig};
use tessera_train::local::Architecture;

use super::{DemoConfig, DemoError};

/// A running demo server and what its clients need to reach it.
pub(super) struct Deployment {
    /// The server, until [`RunningServer::shutdown`].
    pub(super) server: RunningServer,
    /// Its `https://localhost:PORT` address.
    pub(super) url: String,
    /// The self-signed certificate the clients trust.
    ca_pem: Vec<u8>,
    /// One bearer token per client.
    tokens: Vec<String>,
    /// Malicious-server rounds: each client's enrolled identity.
    identities: Vec<IdentityKey>,
    /// The neighbour graph the SecAgg+ finder chose.
    pub(super) graph: GraphKind,
    /// Its Shamir threshold, per neighbourhood.
    pub(super) threshold: u32,
    /// The fewest survivors a round goes on with.
    pub(super) min_survivors: u32,
    /// The clients assumed to collude with the server (distributed DP is
    /// calibrated for the honest rest).
    pub(super) corrupt: u32,
}

/// The credentials [`deploy`] wrote for the server to read.
struct Credentials {
    /// The certificate and its key.
    tls: TlsFiles,
    /// The certificate again, for the clients.
    ca_pem: Vec<u8>,
    /// `tokens.txt`.
    tokens_file: PathBuf,
    /// The tokens in it, one per client.
    tokens: Vec<String>,
    /// `enrolled.txt`, for malicious-server rounds.
    identities_file: Option<PathBuf>,
    /// The identities in it, one per client.
    identities: Vec<IdentityKey>,
}

/// The server's initial global model: the initial network's tensors,
/// named and shaped as the clients' burn models have them.
pub(super) fn initial_model(arch: &Architecture, seed: u64) -> Result<Model, DemoError> {
    let tensors = tessera_client::burn::tensors(&arch.init(seed));
    Model::new(
        tensors
            .iter()
            .map(|t| TensorSpec {
                name: t.name.clone(),
                shape: t.shape.clone(),
            })
            .collect(),
        tensors
            .iter()
            .flat_map(|t| t.values.iter().copied())
            .collect(),
    )
    .map_err(|e| DemoError::Config(format!("initial model: {e}")))
}

/// An [`DemoError::Output`] about `path`.
fn out_err(path: &Path, problem: impl ToString) -> DemoError {
    DemoError::Output {
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

/// Writes `model` into a fresh data directory, the credentials next to
/// it, and starts the server on them.
pub(super) async fn deploy(
    cfg: &DemoConfig,
    model: &Model,
    noise_multiplier: f64,
    counts: ExampleBounds,
) -> Result<Deployment, DemoError> {
    let data_dir = cfg.out.join("data");
    let credentials = write_credentials(cfg)?;
    let config = server_config(
        cfg,
        model.dim(),
        noise_multiplier,
        counts,
        data_dir.clone(),
        &credentials,
    );
    // The state key the server will use (beside its TLS key) seals the
    // initial model too.
    let key_file = config.state_key_path();
    let (key, _) = tessera_server::store::StateKey::load_or_create(&key_file)
        .map_err(|e| out_err(&key_file, e))?;
    Store::open(&data_dir, &key)
        .and_then(|mut store| store.init_model(model))
        .map_err(|e| out_err(&data_dir, e))?;
    let n = cfg.cohort_size() as u32;
    let (graph, threshold) = config
        .graph_for(n)
        .map_err(|e| DemoError::Config(e.to_string()))?;
    let min_survivors = config.survivor_floor(n, threshold);
    let corrupt = config.corrupt_count(n);
    let server = tessera_server::start(config).await?;
    let url = format!("https://localhost:{}", server.local_addr().port());
    Ok(Deployment {
        server,
        url,
        ca_pem: credentials.ca_pem,
        tokens: credentials.tokens,
        identities: credentials.identities,
        graph,
        threshold,
        min_survivors,
        corrupt,
    })
}

/// Writes the TLS certificate, the tokens and (malicious-server rounds)
/// the enrolled identities into the output directory.
fn write_credentials(cfg: &DemoConfig) -> Result<Credentials, DemoError> {
    let tls_dir = cfg.out.join("tls");
    let tls = tessera_server::tls::write_self_signed(&tls_dir, &["localhost".to_owned()])
        .map_err(|e| out_err(&tls_dir, e))?;
    let ca_pem = std::fs::read(&tls.cert).map_err(|e| out_err(&tls.cert, e))?;
    let mut rng = StdRng::try_from_rng(&mut rand::rngs::SysRng)
        .map_err(|e| DemoError::Config(format!("OS randomness unavailable: {e}")))?;
    let tokens_file = cfg.out.join("tokens.txt");
    let tokens = write_tokens(&tokens_file, cfg.training.clients, &mut rng)?;
    let (identities_file, identities) = if cfg.threat_model == ThreatModel::MaliciousServer {
        let path = cfg.out.join("enrolled.txt");
        let identities = enrol_identities(&path, cfg.training.clients, &mut rng)?;
        (Some(path), identities)
    } else {
        (None, Vec::new())
    };
    Ok(Credentials {
        tls,
        ca_pem,
        tokens_file,
        tokens,
        identities_file,
        identities,
    })
}

/// Appends one fresh token per client (`client-I`) to `path`.
fn write_tokens(path: &Path, clients: usize, rng: &mut StdRng) -> Result<Vec<String>, DemoError> {
    let mut tokens = Vec::with_capacity(clients);
    for i in 0..clients {
        let token = tessera_server::auth::generate_token(rng);
        tessera_server::auth::append_token(path, &format!("client-{i}"), &token)
            .map_err(|e| out_err(path, e))?;
        tokens.push(token.expose().to_owned());
    }
    Ok(tokens)
}

/// Malicious-server rounds: one enrolled identity per client, in an
/// allow-list at `path` the server admits from and every client trusts.
fn enrol_identities(
    path: &Path,
    clients: usize,
    rng: &mut StdRng,
) -> Result<Vec<IdentityKey>, DemoError> {
    let mut list = String::new();
    let mut identities = Vec::with_capacity(clients);
    for i in 0..clients {
        let key = IdentityKey::generate(rng);
        list.push_str(&format!("client-{i} ed25519:{}\n", key.verifying_key()));
        identities.push(key);
    }
    std::fs::write(path, list).map_err(|e| out_err(path, e))?;
    Ok(identities)
}

/// The public bounds on what one client's example counts stand for.
#[derive(Clone, Copy, Debug)]
pub(super) struct ExampleBounds {
    /// `N`: the training examples that earn a full weight.
    pub(super) max_examples: u32,
    /// `T`: the most evaluation examples one client's counts stand for.
    pub(super) eval_max_examples: u32,
}

/// The server's settings: every client in every round, the SecAgg+ graph
/// the finder picks for the planned dropout, the demo's DP, strategy and
/// extras, with the public bounds on the clients' example counts.
fn server_config(
    cfg: &DemoConfig,
    dim: usize,
    noise_multiplier: f64,
    counts: ExampleBounds,
    data_dir: PathBuf,
    credentials: &Credentials,
) -> ServerConfig {
    let training = &cfg.training;
    ServerConfig {
        network: NetworkSettings {
            listen: "127.0.0.1:0".parse().expect("loopback address"),
            tls_cert: Some(credentials.tls.cert.clone()),
            tls_key: Some(credentials.tls.key.clone()),
            tokens_file: Some(credentials.tokens_file.clone()),
            identities_file: credentials.identities_file.clone(),
            ..NetworkSettings::default()
        },
        data_dir,
        // Beside the TLS key, among the credentials.
        state_key: None,
        dim: Some(dim as u32),
        // Written into the data directory by `deploy` already.
        initial_model: None,
        round: RoundRules {
            min_clients: cfg.cohort_size() as u32,
            max_clients: cfg.cohort_size() as u32,
            join_window: Duration::ZERO,
            // Every client's noise and masking run on this machine's cores
            // within one stage: give large runs (Fashion-MNIST at 1,000
            // clients is 25 million noised values a round) time for it. A
            // simulated dropout closes its stream, so it costs no wait.
            stage_timeout: Duration::from_secs(30)
                + Duration::from_micros(4 * cfg.cohort_size() as u64 * dim as u64),
            // SecAgg+: the finder's sparse graph and per-neighbourhood
            // threshold, for the planned dropout rate.
            graph: GraphChoice::Auto,
            dropout_rate: training.dropout.max(0.01),
            min_survivors: Some(ThresholdRule::Count(cfg.min_survivors())),
            clip_norm: training.clip_norm,
            threat_model: cfg.threat_model,
            extras: ExtrasSettings {
                adaptive_clip: cfg.adaptive_clip,
                weighting: cfg.weighting,
                max_examples: counts.max_examples,
                federated_eval: cfg.federated_eval,
                eval_max_examples: counts.eval_max_examples,
                ..ExtrasSettings::default()
            },
            ..RoundRules::default()
        },
        aggregation: AggregationSettings {
            server_lr: training.server_lr,
            // DP-FTRL has its own update; the demo's momentum becomes its
            // ftrl_momentum (DP-FTRLM) below.
            // The momentum is FedAvgM's alone.
            server_momentum: training.server_momentum.filter(|_| {
                cfg.dp != DpMode::Ftrl && cfg.effective_strategy() == Strategy::FedAvgM
            }),
            strategy: cfg.strategy,
            proximal_mu: training.local.proximal_mu,
            ..AggregationSettings::default()
        },
        dp: DpSettings {
            mode: cfg.dp,
            noise_multiplier: if cfg.dp == DpMode::Off {
                1.0
            } else {
                noise_multiplier
            },
            epsilon_budget: cfg.epsilon,
            delta: cfg.delta,
            ftrl_epoch_rounds: cfg.ftrl_epoch_rounds,
            ftrl_momentum: f64::from(training.server_momentum.unwrap_or(0.0)),
            ..DpSettings::default()
        },
        rounds: Some(training.rounds),
    }
}

impl Deployment {
    /// One SDK client per token, trusting the server's certificate and,
    /// in malicious-server rounds, signing with its enrolled identity and
    /// trusting every other client's.
    pub(super) fn connect_clients(&self) -> Result<Vec<Arc<Client>>, DemoError> {
        let trusted: Vec<_> = self
            .identities
            .iter()
            .map(IdentityKey::verifying_key)
            .collect();
        self.tokens
            .iter()
            .enumerate()
            .map(|(i, token)| {
                let mut builder = Client::builder(self.url.clone())
                    .tls_ca_pem(self.ca_pem.clone())
                    .token(token.clone());
                if let Some(identity) = self.identities.get(i) {
                    builder = builder
                        .identity(identity.clone())
                        .trusted_identities(trusted.clone());
                }
                builder.build().map(Arc::new)
            })
            .collect::<Result<_, _>>()
            .map_err(|error| DemoError::Client { client: 0, error })
    }
}
