//! The demo job: a real Tessera server and many real clients over gRPC on
//! loopback, training one model together with secure aggregation,
//! dropouts and differential privacy.
//!
//! One call of [`run`]:
//! 1. loads the dataset and deals its training split to the clients
//!    (non-IID by default), builds the initial model and writes it into a
//!    fresh data directory;
//! 2. starts `tessera-server` on 127.0.0.1 with a generated self-signed
//!    TLS certificate and one bearer token per client, with the noise
//!    multiplier that reaches the target epsilon after the planned rounds;
//! 3. each round, every client fetches the global model over gRPC, trains
//!    locally and takes part with `local - global`; a chosen fraction hangs
//!    up at random stages (real dropouts, as the server sees them);
//! 4. after each round the published model is evaluated on the held-out
//!    split, and a [`RoundRow`] reports it.
//!
//! The server's ledger stops the job before the privacy budget would be
//! passed. With DP off, each round is also checked: the published model
//! must equal the plain FedAvg of the very updates the survivors sent,
//! within fixed-point error ([`RoundRow::max_error_vs_plain`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use tessera_aggregation::Stage;
use tessera_aggregation::graph::GraphKind;
use tessera_aggregation::identity::IdentityKey;
use tessera_aggregation::params::ThreatModel;
use tessera_client::{Client, ClientError, Participation};
use tessera_dp::accountant;
use tessera_dp::mechanism::clip_l2;
use tessera_server::config::{DpMode, GraphChoice, ThresholdRule};
use tessera_server::fedavg::{Model, TensorSpec};
use tessera_server::store::Store;
use tessera_server::{RunningServer, ServerConfig};

use crate::data::{self, Dataset, Examples, Partitioning};
use crate::local::{self, Architecture, LocalTraining};
use crate::model::ModelKind;

/// Which data the clients hold.
#[derive(Clone, Debug, PartialEq)]
pub enum DatasetChoice {
    /// The UCI digits embedded in smartcore.
    Digits,
    /// Fashion-MNIST from this directory (Debian's package puts it in
    /// [`data::FASHION_MNIST_DIR`]).
    FashionMnist(PathBuf),
}

/// Differential privacy of the demo's rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DpChoice {
    /// No noise.
    Off,
    /// The server adds Gaussian noise to the unmasked sum.
    Central,
    /// Clients add discrete Gaussian noise before masking.
    Distributed,
}

/// Everything the demo can vary; [`Default`] is `tessera demo` with no
/// flags.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoConfig {
    /// Clients in every round.
    pub clients: usize,
    /// Rounds to run (fewer if the privacy budget runs out first).
    pub rounds: u64,
    /// Fraction of clients that drop out each round, at random stages.
    pub dropout: f64,
    /// DP mode.
    pub dp: DpChoice,
    /// Target epsilon after `rounds` rounds (DP on).
    pub epsilon: f64,
    /// The delta of the guarantee.
    pub delta: f64,
    /// The DP noise multiplier; `None` calibrates it so that `rounds`
    /// rounds spend exactly `epsilon` ([`calibrate`]).
    pub noise_multiplier: Option<f64>,
    /// The model.
    pub model: ModelKind,
    /// The data.
    pub dataset: DatasetChoice,
    /// How the training split is dealt to clients.
    pub partitioning: Partitioning,
    /// How each client trains per round.
    pub local: LocalTraining,
    /// L2 clip norm of a client's update.
    pub clip_norm: f32,
    /// FedAvg server learning rate.
    pub server_lr: f32,
    /// FedAvgM server momentum, if any.
    pub server_momentum: Option<f32>,
    /// Seeds the split, the initial model, local training and dropouts
    /// (never the protocol's keys, masks or noise: those come from the OS).
    pub seed: u64,
    /// Where the data directory, TLS files and tokens go.
    pub out: PathBuf,
    /// Semi-honest (default), semi-malicious, or malicious-server: the
    /// clients then sign their keys and the survivor set with enrolled
    /// identities (`enrolled.txt` in `out`).
    pub threat_model: ThreatModel,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            clients: 20,
            rounds: 30,
            dropout: 0.1,
            dp: DpChoice::Distributed,
            epsilon: 8.0,
            delta: 1e-5,
            noise_multiplier: None,
            model: ModelKind::Mlp { hidden: 32 },
            dataset: DatasetChoice::Digits,
            partitioning: Partitioning::Dirichlet { alpha: 0.5 },
            local: LocalTraining::default(),
            // Every update is clipped at this norm, so the clip sets the
            // step and the noise together; with the demo's DP, 0.5 did
            // better than 1.0 or 2.0 (hidden 16: final accuracy 0.61-0.69
            // in three runs at 0.5, 0.32-0.51 at 1.0, 0.40 at 2.0).
            clip_norm: 0.5,
            server_lr: 1.0,
            server_momentum: None,
            seed: 1,
            out: PathBuf::from("tessera-out"),
            threat_model: ThreatModel::SemiHonest,
        }
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
    /// The dataset could not be loaded or partitioned.
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// The output directory cannot be used.
    #[error("{path}: {problem}")]
    Output {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The server failed to start or stopped with an error.
    #[error("server: {0}")]
    Server(#[from] tessera_server::ServeError),
    /// A client failed in a way the demo did not plan.
    #[error("client {client}: {error}")]
    Client {
        /// Its index.
        client: usize,
        /// The SDK's error.
        error: ClientError,
    },
}

/// One round of the demo, as the table, `rounds.csv` and the plot show it.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundRow {
    /// The round, from 1.
    pub round: u64,
    /// Clients whose updates are in the published average (0 if aborted).
    pub survivors: u32,
    /// Clients that hung up during the round. One that hung up at
    /// Unmasking had its masked input in already, so it counts among the
    /// survivors too.
    pub dropped: u32,
    /// Whether the server published a model.
    pub completed: bool,
    /// Accuracy of the global model after the round on the held-out split.
    pub accuracy: f32,
    /// Mean cross-entropy there.
    pub loss: f32,
    /// Epsilon spent so far (the server's ledger), 0 without DP.
    pub epsilon: f64,
    /// Wall time from fetching the model to the last client's result,
    /// local training included.
    pub seconds: f64,
    /// Mean frame bytes a surviving client sent in the round (upload).
    pub bytes_per_client: u64,
    /// Mean frame bytes a surviving client received.
    pub bytes_received: u64,
    /// With DP off: the largest difference, over all parameters, between
    /// the published model and `global + server_lr * mean(clipped
    /// updates of the survivors)` computed in plain `f64` (with server
    /// momentum beta, plus beta times the previous round's step).
    pub max_error_vs_plain: Option<f32>,
}

/// What happened while the demo ran, for progress displays.
#[derive(Clone, Debug, PartialEq)]
pub enum DemoEvent {
    /// The server listens; the clients are about to start.
    Started {
        /// The `https://` address.
        url: String,
        /// Model parameters.
        dim: usize,
        /// The DP noise multiplier in use (0 without DP).
        noise_multiplier: f64,
        /// The neighbour graph the SecAgg+ finder chose.
        graph: GraphKind,
        /// Its Shamir threshold, per neighbourhood.
        threshold: u32,
        /// The fewest survivors a round goes on with.
        min_survivors: u32,
        /// Accuracy of the initial model.
        accuracy: f32,
    },
    /// A client finished its part of round `round`.
    ClientDone {
        /// The round.
        round: u64,
    },
    /// A round ended.
    Round(RoundRow),
}

/// The outcome of the whole job.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoReport {
    /// Per round.
    pub rows: Vec<RoundRow>,
    /// Accuracy of the initial model.
    pub initial_accuracy: f32,
    /// The DP noise multiplier used (0 without DP).
    pub noise_multiplier: f64,
    /// The neighbour graph.
    pub graph: GraphKind,
    /// The Shamir threshold, per neighbourhood.
    pub threshold: u32,
    /// The fewest survivors a round accepts; distributed DP is calibrated
    /// for it.
    pub min_survivors: u32,
    /// Model parameters.
    pub dim: usize,
    /// Why the job stopped before `rounds`, if it did.
    pub stopped_early: Option<String>,
    /// The data directory with the published models and the ledger.
    pub data_dir: PathBuf,
}

impl DemoConfig {
    /// Checks every setting; [`run`] and the baselines call it first.
    pub fn check(&self) -> Result<(), DemoError> {
        let bad = |what: String| Err(DemoError::Config(what));
        if self.clients < 3 {
            return bad(format!(
                "--clients {} is too few: a round needs 3",
                self.clients
            ));
        }
        if self.rounds == 0 {
            return bad("--rounds must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!(
                "--dropout {} is not a fraction in [0, 1)",
                self.dropout
            ));
        }
        if self.dp != DpChoice::Off && !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return bad(format!("--epsilon {} must be positive", self.epsilon));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return bad(format!("--delta {} must be in (0, 1)", self.delta));
        }
        if self.local.epochs == 0 || self.local.batch_size == 0 {
            return bad("local epochs and batch size must be at least 1".into());
        }
        if !(self.local.lr.is_finite() && self.local.lr > 0.0) {
            return bad(format!("--lr {} must be positive", self.local.lr));
        }
        Ok(())
    }

    /// Clients that drop out each round.
    pub fn dropouts_per_round(&self) -> usize {
        (self.dropout * self.clients as f64).round() as usize
    }

    /// The fewest survivors a round goes on with: every client that does
    /// not drop, so a round with the planned dropouts completes while
    /// distributed DP is calibrated for as many survivors as there will
    /// be; never below a majority of the clients. (The SecAgg+ graph's own
    /// Shamir threshold is per neighbourhood and much lower.)
    pub fn min_survivors(&self) -> u32 {
        let majority = self.clients / 2 + 1;
        (self.clients - self.dropouts_per_round()).max(majority) as u32
    }
}

/// Checks the configuration and loads what the demo and both baselines
/// start from: the dataset and the model architecture for it.
pub(crate) fn prepare(cfg: &DemoConfig) -> Result<(Dataset, Architecture), DemoError> {
    cfg.check()?;
    let dataset = load_dataset(&cfg.dataset, cfg.seed)?;
    let arch = Architecture {
        kind: cfg.model,
        height: dataset.height,
        width: dataset.width,
        classes: dataset.classes,
    };
    Ok((dataset, arch))
}

/// The training examples of each client (indices into the training split),
/// IID or Dirichlet as configured, from the seed.
pub(crate) fn client_shares(
    cfg: &DemoConfig,
    dataset: &Dataset,
) -> Result<Vec<Vec<usize>>, DemoError> {
    Ok(data::partition(
        &dataset.train.labels,
        cfg.clients,
        cfg.partitioning,
        cfg.seed,
    )?)
}

/// Loads the configured dataset.
pub fn load_dataset(choice: &DatasetChoice, seed: u64) -> Result<Dataset, DemoError> {
    Ok(match choice {
        DatasetChoice::Digits => data::digits(seed),
        DatasetChoice::FashionMnist(dir) => data::fashion_mnist(dir)?,
    })
}

/// Files the demo writes in its output directory; anything else there
/// means the directory is someone else's, and the demo refuses it.
const OUTPUTS: [&str; 6] = [
    "data",
    "tls",
    "tokens.txt",
    "enrolled.txt",
    "rounds.csv",
    "rounds.svg",
];

/// Empties the demo's own outputs from `out`, creating it if missing.
fn prepare_out(out: &Path) -> Result<(), DemoError> {
    let err = |problem: String| DemoError::Output {
        path: out.to_owned(),
        problem,
    };
    if out.exists() {
        let entries = std::fs::read_dir(out).map_err(|e| err(e.to_string()))?;
        for entry in entries {
            let name = entry.map_err(|e| err(e.to_string()))?.file_name();
            let name = name.to_string_lossy();
            if !OUTPUTS.contains(&name.as_ref()) {
                return Err(err(format!(
                    "holds {name:?}, which the demo did not write; pass --out with a new or empty directory"
                )));
            }
        }
        for name in OUTPUTS {
            let path = out.join(name);
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else if path.exists() {
                std::fs::remove_file(&path)
            } else {
                Ok(())
            };
            removed.map_err(|e| err(format!("cannot replace {name}: {e}")))?;
        }
    }
    std::fs::create_dir_all(out).map_err(|e| err(e.to_string()))
}

/// A running demo server and what its clients need to reach it.
struct Deployment {
    server: RunningServer,
    url: String,
    ca_pem: Vec<u8>,
    tokens: Vec<String>,
    /// Malicious-server rounds: each client's enrolled identity.
    identities: Vec<IdentityKey>,
    graph: GraphKind,
    threshold: u32,
    min_survivors: u32,
}

async fn deploy(
    cfg: &DemoConfig,
    model: &Model,
    noise_multiplier: f64,
) -> Result<Deployment, DemoError> {
    let out_err = |path: &Path, problem: String| DemoError::Output {
        path: path.to_owned(),
        problem,
    };
    let data_dir = cfg.out.join("data");
    Store::open(&data_dir)
        .and_then(|mut store| store.init_model(model))
        .map_err(|e| out_err(&data_dir, e.to_string()))?;
    let tls_dir = cfg.out.join("tls");
    let tls = tessera_server::tls::write_self_signed(&tls_dir, &["localhost".to_owned()])
        .map_err(|e| out_err(&tls_dir, e.to_string()))?;
    let ca_pem = std::fs::read(&tls.cert).map_err(|e| out_err(&tls.cert, e.to_string()))?;
    let tokens_file = cfg.out.join("tokens.txt");
    let mut rng = StdRng::try_from_rng(&mut rand::rngs::SysRng)
        .map_err(|e| DemoError::Config(format!("OS randomness unavailable: {e}")))?;
    let mut tokens = Vec::with_capacity(cfg.clients);
    for i in 0..cfg.clients {
        let token = tessera_server::auth::generate_token(&mut rng);
        tessera_server::auth::append_token(&tokens_file, &format!("client-{i}"), &token)
            .map_err(|e| out_err(&tokens_file, e.to_string()))?;
        tokens.push(token.expose().to_owned());
    }
    // Malicious-server rounds: one enrolled identity per client, in an
    // allow-list the server admits from and every client trusts.
    let mut identities = Vec::new();
    let mut identities_file = None;
    if cfg.threat_model == ThreatModel::MaliciousServer {
        let path = cfg.out.join("enrolled.txt");
        let mut list = String::new();
        for i in 0..cfg.clients {
            let key = IdentityKey::generate(&mut rng);
            list.push_str(&format!("client-{i} ed25519:{}\n", key.verifying_key()));
            identities.push(key);
        }
        std::fs::write(&path, list).map_err(|e| out_err(&path, e.to_string()))?;
        identities_file = Some(path);
    }
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("loopback address"),
        data_dir,
        dim: Some(model.dim() as u32),
        min_clients: cfg.clients as u32,
        max_clients: cfg.clients as u32,
        join_window: Duration::ZERO,
        // SecAgg+: the finder's sparse graph and per-neighbourhood
        // threshold, for the planned dropout rate.
        graph: GraphChoice::Auto,
        dropout_rate: cfg.dropout.max(0.01),
        min_survivors: Some(ThresholdRule::Count(cfg.min_survivors())),
        clip_norm: cfg.clip_norm,
        server_lr: cfg.server_lr,
        server_momentum: cfg.server_momentum,
        dp: match cfg.dp {
            DpChoice::Off => DpMode::Off,
            DpChoice::Central => DpMode::Central,
            DpChoice::Distributed => DpMode::Distributed,
        },
        noise_multiplier: if cfg.dp == DpChoice::Off {
            1.0
        } else {
            noise_multiplier
        },
        epsilon_budget: cfg.epsilon,
        delta: cfg.delta,
        tls_cert: Some(tls.cert),
        tls_key: Some(tls.key),
        tokens_file: Some(tokens_file),
        threat_model: cfg.threat_model,
        identities_file,
        rounds: Some(cfg.rounds),
        ..ServerConfig::default()
    };
    let n = cfg.clients as u32;
    let (graph, threshold) = config
        .graph_for(n)
        .map_err(|e| DemoError::Config(e.to_string()))?;
    let min_survivors = config.survivor_floor(n, threshold);
    let server = tessera_server::start(config).await?;
    let url = format!("https://localhost:{}", server.local_addr().port());
    Ok(Deployment {
        server,
        url,
        ca_pem,
        tokens,
        identities,
        graph,
        threshold,
        min_survivors,
    })
}

/// What one client did in a round.
enum ClientRound {
    /// Its update is in the sum (it completed, or dropped at Unmasking
    /// after its masked input was in).
    Counted {
        update: Vec<f32>,
        bytes: Option<(u64, u64)>,
        survivors: Option<u32>,
    },
    /// It dropped before its masked input was in.
    Dropped,
    /// The server refused to run the round (budget spent, round limit).
    Refused(String),
}

async fn client_round(
    client: Arc<Client>,
    arch: Architecture,
    global: Arc<Vec<f32>>,
    examples: Arc<Examples>,
    local: LocalTraining,
    seed: u64,
    drop_before: Option<Stage>,
) -> Result<ClientRound, ClientError> {
    let trained = tokio::task::spawn_blocking({
        let global = Arc::clone(&global);
        move || local::train(&arch, &global, &examples, &local, seed)
    })
    .await
    .expect("local training does not panic");
    let update: Vec<f32> = trained
        .0
        .iter()
        .zip(global.iter())
        .map(|(l, g)| l - g)
        .collect();
    let result = match drop_before {
        None => client
            .participate(&update)
            .await
            .map(Participation::Completed),
        Some(stage) => client.participate_or_drop(&update, stage).await,
    };
    match result {
        Ok(Participation::Completed(o)) => Ok(ClientRound::Counted {
            update,
            bytes: Some((o.bytes_sent, o.bytes_received)),
            survivors: Some(o.survivors),
        }),
        Ok(Participation::Dropped {
            stage: Stage::Unmasking,
            ..
        }) => Ok(ClientRound::Counted {
            update,
            bytes: None,
            survivors: None,
        }),
        Ok(Participation::Dropped { .. }) => Ok(ClientRound::Dropped),
        Err(ClientError::ServerUnavailable(why)) => Ok(ClientRound::Refused(why)),
        Err(e) => Err(e),
    }
}

/// The stages a demo client may drop before (ConsistencyCheck is not part
/// of semi-honest rounds).
const DROP_STAGES: [Stage; 4] = [
    Stage::AdvertiseKeys,
    Stage::ShareKeys,
    Stage::MaskedInput,
    Stage::Unmasking,
];

/// Which clients drop out of `round`, and before which stage: a seeded
/// choice of [`DemoConfig::dropouts_per_round`] clients, each at a stage
/// drawn uniformly.
pub fn dropout_plan(cfg: &DemoConfig, round: u64) -> Vec<Option<Stage>> {
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ (round << 32));
    let mut order: Vec<usize> = (0..cfg.clients).collect();
    order.shuffle(&mut rng);
    let mut plan = vec![None; cfg.clients];
    for &c in &order[..cfg.dropouts_per_round()] {
        plan[c] = Some(DROP_STAGES[rng.random_range(0..DROP_STAGES.len())]);
    }
    plan
}

/// The seed of client `c`'s local training in `round`.
pub fn client_seed(cfg: &DemoConfig, round: u64, c: usize) -> u64 {
    cfg.seed ^ (round << 32) ^ ((c as u64 + 1) << 16)
}

/// The noise multiplier of the job: the configured one, or the one that
/// spends exactly the budget over `rounds` rounds of the mechanism the
/// server will account (no subsampling: every client takes part in every
/// round).
pub fn calibrate(cfg: &DemoConfig) -> Result<f64, DemoError> {
    if cfg.dp == DpChoice::Off {
        return Ok(0.0);
    }
    if let Some(z) = cfg.noise_multiplier {
        return if z.is_finite() && z > 0.0 {
            Ok(z)
        } else {
            Err(DemoError::Config(format!(
                "--noise-multiplier {z} must be positive"
            )))
        };
    }
    accountant::noise_multiplier(cfg.epsilon, 1.0, cfg.rounds, cfg.delta)
        .map_err(|e| DemoError::Config(format!("cannot reach epsilon {}: {e}", cfg.epsilon)))
}

/// Runs the demo; `progress` hears every event as it happens.
pub async fn run(
    cfg: &DemoConfig,
    mut progress: impl FnMut(&DemoEvent),
) -> Result<DemoReport, DemoError> {
    let (dataset, arch) = prepare(cfg)?;
    let shares = client_shares(cfg, &dataset)?;
    let initial = arch.init(cfg.seed);
    let tensors = tessera_client::burn::tensors(&initial);
    let model = Model::new(
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
    .map_err(|e| DemoError::Config(format!("initial model: {e}")))?;
    let dim = model.dim();
    prepare_out(&cfg.out)?;
    let noise_multiplier = calibrate(cfg)?;
    let deployment = deploy(cfg, &model, noise_multiplier).await?;
    let trusted: Vec<_> = deployment
        .identities
        .iter()
        .map(IdentityKey::verifying_key)
        .collect();
    let clients: Vec<Arc<Client>> = deployment
        .tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            let mut builder = Client::builder(deployment.url.clone())
                .tls_ca_pem(deployment.ca_pem.clone())
                .token(token.clone());
            if let Some(identity) = deployment.identities.get(i) {
                builder = builder
                    .identity(identity.clone())
                    .trusted_identities(trusted.clone());
            }
            builder.build().map(Arc::new)
        })
        .collect::<Result<_, _>>()
        .map_err(|error| DemoError::Client { client: 0, error })?;
    let partitions: Vec<Arc<Examples>> = shares
        .iter()
        .map(|idx| Arc::new(dataset.train.select(idx)))
        .collect();
    let test = Arc::new(dataset.test.clone());
    let (initial_accuracy, _) = local::evaluate(&arch, &model.params, &test);
    progress(&DemoEvent::Started {
        url: deployment.url.clone(),
        dim,
        noise_multiplier,
        graph: deployment.graph,
        threshold: deployment.threshold,
        min_survivors: deployment.min_survivors,
        accuracy: initial_accuracy,
    });

    let mut rows = Vec::new();
    let mut stopped_early = None;
    let mut global = model.params.clone();
    // The server's last applied step, lr * velocity, for the momentum term
    // of the plain-FedAvg check.
    let mut last_step = vec![0f32; global.len()];
    for round in 1..=cfg.rounds {
        let started = Instant::now();
        let drop_before = dropout_plan(cfg, round);
        let shared_global = Arc::new(global.clone());
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..cfg.clients {
            let seed = client_seed(cfg, round, c);
            let fut = client_round(
                Arc::clone(&clients[c]),
                arch,
                Arc::clone(&shared_global),
                Arc::clone(&partitions[c]),
                cfg.local,
                seed,
                drop_before[c],
            );
            tasks.spawn(async move { (c, fut.await) });
        }
        let mut results: Vec<Option<ClientRound>> = (0..cfg.clients).map(|_| None).collect();
        let mut failure = None;
        while let Some(joined) = tasks.join_next().await {
            let (c, result) = joined.expect("client task does not panic");
            progress(&DemoEvent::ClientDone { round });
            match result {
                Ok(r) => results[c] = Some(r),
                // A round below the threshold aborts for every client
                // alike; it is reported as an aborted row, not an error.
                Err(ClientError::RoundAborted { .. }) => {}
                Err(error) => failure = failure.or(Some(DemoError::Client { client: c, error })),
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if let Some(why) = results.iter().find_map(|r| match r {
            Some(ClientRound::Refused(why)) => Some(why.clone()),
            _ => None,
        }) {
            stopped_early = Some(why);
            break;
        }
        let published = clients[0]
            .latest_model()
            .await
            .map_err(|error| DemoError::Client { client: 0, error })?;
        // The data directory is fresh, so demo round r is the server's
        // round r; the latest model comes from it only if it completed.
        let completed = published.round == round;
        let next = published.flatten();
        let counted: Vec<&ClientRound> = results
            .iter()
            .flatten()
            .filter(|r| matches!(r, ClientRound::Counted { .. }))
            .collect();
        let survivors = counted
            .iter()
            .find_map(|r| match r {
                ClientRound::Counted { survivors, .. } => *survivors,
                _ => None,
            })
            .unwrap_or(0);
        let (sent, received, n_bytes) = counted.iter().fold((0u64, 0u64, 0u64), |acc, r| match r {
            ClientRound::Counted {
                bytes: Some((s, r)),
                ..
            } => (acc.0 + s, acc.1 + r, acc.2 + 1),
            _ => acc,
        });
        let max_error_vs_plain = (cfg.dp == DpChoice::Off && completed).then(|| {
            let updates: Vec<&Vec<f32>> = counted
                .iter()
                .map(|r| match r {
                    ClientRound::Counted { update, .. } => update,
                    _ => unreachable!("filtered to counted"),
                })
                .collect();
            plain_fedavg_error(
                &global,
                &last_step,
                &next,
                &updates,
                cfg.clip_norm,
                cfg.server_lr,
                cfg.server_momentum.unwrap_or(0.0),
            )
        });
        let (accuracy, loss) = local::evaluate(&arch, &next, &test);
        let row = RoundRow {
            round,
            survivors: if completed { survivors } else { 0 },
            dropped: drop_before.iter().filter(|d| d.is_some()).count() as u32,
            completed,
            accuracy,
            loss,
            epsilon: published.epsilon,
            seconds: started.elapsed().as_secs_f64(),
            bytes_per_client: sent / n_bytes.max(1),
            bytes_received: received / n_bytes.max(1),
            max_error_vs_plain,
        };
        progress(&DemoEvent::Round(row.clone()));
        rows.push(row);
        if completed {
            last_step = next.iter().zip(&global).map(|(n, g)| n - g).collect();
        }
        global = next;
    }
    deployment.server.shutdown().await?;
    Ok(DemoReport {
        rows,
        initial_accuracy,
        noise_multiplier,
        graph: deployment.graph,
        threshold: deployment.threshold,
        min_survivors: deployment.min_survivors,
        dim,
        stopped_early,
        data_dir: cfg.out.join("data"),
    })
}

/// `max_i |next_i - (global_i + beta last_step_i + lr mean_i(clip(u)))|`,
/// the plain-FedAvg check of one round (FedAvgM: the step is `lr v` with
/// `v = beta v_prev + mean`, and `lr v_prev` is the last step taken).
fn plain_fedavg_error(
    global: &[f32],
    last_step: &[f32],
    next: &[f32],
    updates: &[&Vec<f32>],
    clip_norm: f32,
    server_lr: f32,
    beta: f32,
) -> f32 {
    let mut mean = vec![0f64; global.len()];
    for u in updates {
        let mut clipped = (*u).clone();
        clip_l2(&mut clipped, clip_norm);
        for (m, v) in mean.iter_mut().zip(&clipped) {
            *m += f64::from(*v);
        }
    }
    let n = updates.len().max(1) as f64;
    global
        .iter()
        .zip(last_step)
        .zip(next)
        .zip(&mean)
        .map(|(((g, s), x), m)| {
            let expected =
                f64::from(*g) + f64::from(beta) * f64::from(*s) + f64::from(server_lr) * m / n;
            (f64::from(*x) - expected).abs() as f32
        })
        .fold(0.0, f32::max)
}
