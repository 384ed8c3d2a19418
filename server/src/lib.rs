//! `tessera-server`: the aggregation service.
//!
//! Clients dial in over gRPC (one bidirectional stream per client per
//! round), wait in a lobby until `min_clients` are there, and then run one
//! secure aggregation round driven by a [`tessera_aggregation::ServerSession`].
//! After each completed round the server applies FedAvg to the unmasked
//! average update, adds central DP noise if configured, records the privacy
//! spent and publishes the new global model to its data directory, in that
//! order and crash-safely.
//!
//! ```text
//!  clients ──gRPC──▶ service ──▶ lobby ──▶ scheduler ──▶ RoundDriver(ServerSession)
//!                      │                       │              └─ unmask on the blocking pool
//!                      └── GetModel ◀── store ◀┘ FedAvg, DP noise, ledger, publish
//! ```
//!
//! Start one with [`start`]; the `tessera serve` command is a thin wrapper.
//!
//! # Public surface
//!
//! Only what embedders need is public: the `tessera` CLI (`serve`, `keys`,
//! `inspect`, the demo), the integration tests and examples, and a
//! language binding that runs a server in-process.
//!
//! - Running a server: [`start`] returns a [`RunningServer`]
//!   ([`RunningServer::local_addr`], [`RunningServer::wait`],
//!   [`RunningServer::shutdown`], and [`RunningServer::control`] for the
//!   signal handlers: [`ServerControl::reload_tokens`],
//!   [`ServerControl::drain`]); [`ServeError`] says why it could not
//!   start or stopped ([`MetricsError`] is one of its causes).
//! - [`config`]: the settings ([`ServerConfig`], its groups, the
//!   [`config::ServerOverrides`] a command line or a TOML file fills) and
//!   their validation, with the round-size questions an embedder may ask
//!   before starting (graph, threshold, survivor floor).
//! - [`auth`]: tokens and the tokens file (generate, append, load).
//! - [`tls`]: TLS files, self-signed certificates and a small CA for
//!   client certificates.
//! - [`store`]: opening a data directory and seeding its first model, and
//!   the read-only view of what it holds ([`store::inspect`]: models,
//!   round records, the privacy ledger).
//! - [`model`]: the global model (named tensors over a flat vector).
//! - [`files`]: the atomic and owner-only file writes the CLI shares.
//!
//! Connections are admitted under a cap and deadlines (the TLS handshake,
//! the HTTP/2 preface and first request) by the accept loop in
//! `listener.rs`, which also backs off on accept errors such as the
//! file-descriptor limit.
//!
//! The lobby, the scheduler, the round driver, the gRPC service, FedAvg,
//! round planning and the metrics recorder are private: they change with
//! the protocol, and nothing outside the server drives them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tessera_proto::v1;
use tessera_proto::v1::aggregator_server::AggregatorServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{error, info, warn};

pub mod auth;
mod cohort;
pub mod config;
mod extras;
mod fedavg;
pub mod files;
mod ftrl;
mod listener;
mod lobby;
mod metrics;
pub mod model;
mod planning;
mod round;
mod scheduler;
mod service;
pub mod store;
mod strategy;
mod terms;
pub mod tls;

pub use config::ServerConfig;
pub use metrics::MetricsError;

use crate::model::Model;
use crate::store::{ModelEntry, Store};
use crate::strategy::ServerOptimizer;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The data directory cannot be used.
    #[error("data directory: {0}")]
    Store(#[from] store::StoreError),
    /// The tokens file cannot be used.
    #[error("tokens file: {0}")]
    Auth(#[from] auth::AuthError),
    /// The identities allow-list cannot be used.
    #[error("identities file {}: {reason}", path.display())]
    Identities {
        /// The allow-list.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The TLS files cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The state key could not be read, made, or is misplaced.
    #[error("{0}")]
    StateKey(String),
    /// The metrics endpoint cannot start.
    #[error("metrics: {0}")]
    Metrics(#[from] metrics::MetricsError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The configured privacy budget or delta cannot apply to the data
    /// directory's privacy ledger (see `--raise-budget`,
    /// `--recompute-delta`), or the budget is already spent.
    #[error("privacy ledger {0}")]
    Privacy(String),
    /// The initial model file cannot be used.
    #[error("initial model: {0}")]
    InitialModel(#[from] model::ModelFileError),
    /// The stored model does not match the configuration.
    #[error("{0}")]
    Model(String),
    /// A round could not be run or published.
    #[error("round: {0}")]
    Round(String),
    /// The gRPC transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds the listening socket with an accept backlog of at least
/// `max_clients`: a round's clients tend to dial within the same second,
/// and with tokio's default backlog of 1,024 a thousand-client herd
/// overflows the accept queue while the executor is busy, which Linux
/// answers with resets (measured: 5 of 6 runs of the 1,000-client load
/// test lost a client that way, 0 of 10 with this backlog). The kernel caps it at `somaxconn`.
fn bind(addr: SocketAddr, max_clients: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's and tokio's own bind do on Unix: a restarted server can take
    // its port back while old connections sit in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(max_clients.saturating_mul(2).max(1024))
}

/// State shared by the service, the scheduler and the round drivers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    /// The model dimension every update must have.
    pub(crate) dim: u32,
    /// The tokens file, reloaded on [`ServerControl::reload_tokens`].
    pub(crate) tokens: Option<auth::TokenFile>,
    /// Malicious-server model: the enrolled identities.
    pub(crate) enrolled: Option<Vec<tessera_aggregation::identity::Enrolled>>,
    pub(crate) lobby: lobby::Lobby,
    pub(crate) store: Arc<Mutex<Store>>,
    latest: RwLock<Option<Arc<v1::GetModelResponse>>>,
    stopped: RwLock<Option<String>>,
}

impl Shared {
    pub(crate) fn latest(&self) -> Option<Arc<v1::GetModelResponse>> {
        self.latest.read().expect("latest lock").clone()
    }

    pub(crate) fn set_latest(&self, entry: &ModelEntry, model: &Model) {
        let against = self
            .store
            .lock()
            .expect("store lock")
            .epsilon_against(entry.round);
        let mut response = model_response(entry, model, against);
        response.proximal_mu = self.config.aggregation.proximal_mu;
        *self.latest.write().expect("latest lock") = Some(Arc::new(response));
    }

    /// Why no more rounds open, if so.
    pub(crate) fn not_accepting(&self) -> Option<String> {
        self.stopped.read().expect("stopped lock").clone()
    }

    pub(crate) fn stop_accepting(&self, why: &str) {
        *self.stopped.write().expect("stopped lock") = Some(why.to_owned());
        self.lobby.close_all(&tessera_proto::status_with_detail(
            tonic::Code::Unavailable,
            why.to_owned(),
            &v1::ErrorDetail {
                kind: v1::ErrorKind::Unavailable as i32,
                server_protocol_version: tessera_proto::PROTOCOL_VERSION,
                round_id: 0,
                expected: 0,
            },
        ));
    }
}

/// The wire form of a published model; `against` is whom its epsilon
/// holds against ([`Store::epsilon_against`](store::Store::epsilon_against)).
pub(crate) fn model_response(
    entry: &ModelEntry,
    model: &Model,
    against: Option<tessera_dp::ledger::Adversary>,
) -> v1::GetModelResponse {
    let mut offset = 0;
    let tensors = model
        .tensors
        .iter()
        .map(|t| {
            let len: usize = t.shape.iter().product();
            let values = model.params[offset..offset + len].to_vec();
            offset += len;
            v1::Tensor {
                name: t.name.clone(),
                shape: t.shape.iter().map(|&d| d as u64).collect(),
                values,
            }
        })
        .collect();
    v1::GetModelResponse {
        version: entry.version,
        round: entry.round,
        epsilon: entry.epsilon,
        delta: entry.delta,
        tensors,
        epsilon_against: against.map_or("", |a| a.name()).to_owned(),
        // The caller's: the running server's setting, not the version's.
        proximal_mu: 0.0,
    }
}

/// The largest frame the server accepts: a packed 32-bit vector of the
/// model's dimension or the share bundles of a full complete-graph round,
/// whichever is larger, plus headroom. Anything bigger is refused with
/// `RESOURCE_EXHAUSTED` before it is buffered.
fn max_frame_bytes(dim: u32, max_clients: u32) -> usize {
    let vector = 4 * dim as usize;
    // A sealed bundle holds two Shamir shares and the AEAD tag.
    let bundle = 2 * tessera_aggregation::shamir::SHARE_BYTES + tessera_aggregation::keys::TAG_LEN;
    let bundles = max_clients as usize * (bundle + 8);
    vector.max(bundles) + 64 * 1024
}

/// A running server.
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    control: ServerControl,
    serve: JoinHandle<Result<(), ServeError>>,
    scheduler: JoinHandle<Result<(), ServeError>>,
}

/// What a drain tells the clients waiting in the lobby (and any that dial
/// in before the listener closes).
const DRAINING: &str = "the server is shutting down: no new rounds";

/// A handle on a running server for its operator's signals: reload the
/// tokens file (`SIGHUP`), drain (`SIGTERM`, Ctrl-C), abort. Cheap to clone;
/// usable while another task waits on [`RunningServer::wait`].
#[derive(Clone, Debug)]
pub struct ServerControl {
    shared: Arc<Shared>,
    shutdown: Arc<watch::Sender<bool>>,
    /// Cuts the connections still open [`CLOSE_GRACE`] after a stop.
    cutoff: Arc<watch::Sender<bool>>,
}

/// How long connections get to close by themselves once the server stops,
/// before they are cut (a client that stopped answering would otherwise
/// hold the exit until its keepalive times out).
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

impl ServerControl {
    /// Reads the tokens file again and puts it in force: clients removed
    /// from it are refused from their next request on, new ones admitted.
    /// A file that does not load leaves the tokens in force unchanged and
    /// returns why. `Ok(None)` when the server has no tokens file.
    ///
    /// Logs the outcome (client names, never tokens).
    pub fn reload_tokens(&self) -> Result<Option<auth::TokenReload>, auth::AuthError> {
        let Some(tokens) = &self.shared.tokens else {
            info!("no tokens file to reload");
            return Ok(None);
        };
        match tokens.reload() {
            Ok(summary) => {
                info!(
                    file = %tokens.path().display(),
                    clients = summary.clients,
                    added = ?summary.added,
                    removed = ?summary.removed,
                    changed = ?summary.changed,
                    "tokens file reloaded"
                );
                let audit = self.shared.store.lock().expect("store lock").audit_log();
                audit.record(store::AuditEvent::TokensReloaded {
                    file: tokens.path().display().to_string(),
                    tokens: summary.clients,
                });
                Ok(Some(summary))
            }
            Err(e) => {
                error!("tokens file not reloaded, the previous tokens stay in force: {e}");
                Err(e)
            }
        }
    }

    /// Starts a drain: no new client is admitted (those waiting in the
    /// lobby and those that join now are told the server is shutting
    /// down), the round in flight runs to its end (each stage is bounded
    /// by its deadline), and then [`RunningServer::wait`] returns `Ok`.
    /// Idempotent.
    pub fn drain(&self) {
        if self.shared.not_accepting().is_none() {
            info!("draining: no new clients; the round in flight, if any, runs to its end");
            self.shared.stop_accepting(DRAINING);
        }
    }

    /// Ends the round in flight at once (its clients are told the server
    /// is going away) and stops; [`RunningServer::wait`] returns soon
    /// after.
    pub fn abort(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl RunningServer {
    /// The address the server listens on (with the real port when the
    /// configuration asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the Prometheus scrape endpoint, if metrics are on
    /// (with the real port when the configuration asked for port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The handle for signal handlers: token reloads, drain, abort.
    pub fn control(&self) -> ServerControl {
        self.control.clone()
    }

    /// Waits until the scheduler stops (round limit, privacy budget, a
    /// drain, or a fatal storage error), then shuts the listener down.
    pub async fn wait(self) -> Result<(), ServeError> {
        let scheduled = self.scheduler.await.expect("scheduler does not panic");
        // A client that joined between the stop and the scheduler's last
        // look at the lobby is told too, or its open stream would hold
        // the listener's graceful shutdown.
        let shared = &self.control.shared;
        let why = shared
            .not_accepting()
            .unwrap_or_else(|| DRAINING.to_owned());
        shared.stop_accepting(&why);
        let _ = self.control.shutdown.send(true);
        let mut serve = self.serve;
        let served = match tokio::time::timeout(CLOSE_GRACE, &mut serve).await {
            Ok(served) => served,
            Err(_) => {
                warn!("connections still open {CLOSE_GRACE:?} after the stop: closing them");
                let _ = self.control.cutoff.send(true);
                serve.await
            }
        };
        scheduled.and(served.expect("server does not panic"))
    }

    /// Stops accepting, ends the running round (its clients are told the
    /// server is going away) and waits for both tasks.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.control.abort();
        self.wait().await
    }
}

/// Logs a warning for the TLS private key and the tokens file if group or
/// other users can access them (the identities allow-list is public).
fn warn_exposed_secrets(config: &ServerConfig) {
    let state_key = config.state_key_path();
    let secrets: Vec<&std::path::Path> = [&config.network.tls_key, &config.network.tokens_file]
        .into_iter()
        .flatten()
        .map(|p| p.as_path())
        .chain([state_key.as_path()])
        .collect();
    for warning in files::exposed_secret_warnings(&secrets) {
        warn!("{warning}");
    }
}

/// The state key, generated if missing (the flag says so); refused
/// inside the data directory, whose editors must not hold it.
fn load_state_key(config: &ServerConfig) -> Result<(store::StateKey, bool), ServeError> {
    let path = config.state_key_path();
    let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    if abs(&path).starts_with(abs(&config.data_dir)) {
        return Err(ServeError::StateKey(format!(
            "state key {} is inside the data directory {}: whoever can edit the data directory could then rewrite it undetected; keep the key elsewhere (--state-key)",
            path.display(),
            config.data_dir.display()
        )));
    }
    let (key, created) =
        store::StateKey::load_or_create(&path).map_err(|e| ServeError::StateKey(e.to_string()))?;
    if created {
        warn!(file = %path.display(), "generated a new state key: keep it, and back it up apart from the data directory");
    }
    Ok((key, created))
}

/// Opens the data directory. A start never seals records that have no
/// MACs, not even with a key generated at this start: a key that is
/// missing may have been deleted by whoever stripped and edited the
/// directory, and sealing would vouch for the edits. Such a directory is
/// refused ([`store::StoreError::Unauthenticated`]); the operator, who
/// knows whether the key ever existed, seals it with `tessera migrate`.
fn open_store(
    dir: &std::path::Path,
    key: &store::StateKey,
    created: bool,
    disk: files::Disk,
) -> Result<Store, store::StoreError> {
    let opened = Store::open_with(dir, key, disk);
    if created && matches!(opened, Err(store::StoreError::Unauthenticated { .. })) {
        warn!(dir = %dir.display(), "the state key was generated at this start, but the data directory holds records without MACs: if an older build wrote them, run `tessera migrate`; if the key existed before, restore it (the directory may have been edited)");
    }
    opened
}

/// The model the server starts from: the data directory's latest, or, in
/// a new one, the initial model (`initial`, read from the configuration's
/// `initial_model`, or zeros of its `dim`), published as version 1. A
/// dimension or an initial model that disagrees with what is stored is
/// refused.
fn starting_model(
    config: &ServerConfig,
    store: &mut Store,
    initial: Option<Model>,
) -> Result<(ModelEntry, Model), ServeError> {
    if let (Some(dim), Some(m), Some(file)) = (config.dim, &initial, &config.initial_model)
        && dim as usize != m.dim()
    {
        return Err(config::invalid(
            "dim",
            format!(
                "{dim} disagrees with the initial model {}, which holds {} values: leave dim out (the file sets it)",
                file.display(),
                m.dim()
            ),
        )
        .into());
    }
    let Some((entry, model)) = store.latest_model() else {
        let model = match initial {
            Some(m) => m,
            None => Model::zeros_flat(config.dim.ok_or_else(|| {
                ServeError::Model(format!(
                    "the data directory {} holds no model yet: give the model dimension (dim) or an initial model (initial_model)",
                    config.data_dir.display()
                ))
            })? as usize),
        };
        let entry = store.init_model(&model)?;
        return Ok((entry, model));
    };
    if let Some(dim) = config.dim
        && dim as usize != model.dim()
    {
        return Err(ServeError::Model(format!(
            "the data directory {} holds a model of dimension {}, the configuration asks for {dim}; use another data directory",
            config.data_dir.display(),
            model.dim()
        )));
    }
    if let (Some(given), Some(file)) = (initial, &config.initial_model) {
        check_same_initial(config, store, &given, file)?;
    }
    Ok((entry, model))
}

/// An initial model given for a data directory that already holds models
/// must be the one it started from (version 1), compared by content: a
/// restart with the same command line works, another model is refused
/// rather than silently ignored.
fn check_same_initial(
    config: &ServerConfig,
    store: &Store,
    given: &Model,
    file: &std::path::Path,
) -> Result<(), ServeError> {
    let (_, stored) = store
        .model(1)?
        .expect("a data directory with a latest model has version 1");
    let (ours, theirs) = (given.content_sha256(), stored.content_sha256());
    if ours == theirs {
        return Ok(());
    }
    let latest = store.models().last().map_or(1, |m| m.version);
    Err(ServeError::Model(format!(
        "the data directory {dir} already holds models (up to version {latest}), started from another initial model than {file} (content SHA-256 {theirs} stored, {ours} in the file). To continue training, start without initial_model (--initial-model); to train from {file}, give a new data directory (--data-dir)",
        dir = config.data_dir.display(),
        file = file.display(),
    )))
}

/// The configured server optimizer, with the state the store persisted
/// with the latest version (FedAvgM's velocity, or the adaptive moments).
fn server_optimizer(
    settings: &config::AggregationSettings,
    store: &Store,
) -> Result<ServerOptimizer, ServeError> {
    let mut optimizer =
        ServerOptimizer::new(settings).map_err(|e| ServeError::Model(e.to_string()))?;
    let strategy = settings.effective_strategy();
    if strategy.is_adaptive() && settings.server_lr >= 1.0 {
        tracing::warn!(
            server_lr = settings.server_lr,
            "{strategy} moves each weight by about server_lr per round; Reddi et al. use 0.01 to 0.1"
        );
    }
    optimizer.restore(store.velocity(), store.optimizer_state().cloned());
    Ok(optimizer)
}

/// Validates the configuration, opens the data directory, binds the
/// listener and starts serving. Must be called inside a tokio runtime.
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServeError> {
    start_with_disk(config, files::Disk::real()).await
}

/// [`start`], with every write to the data directory going through `disk`:
/// tests pass a [`files::Disk::with_faults`] to play a full, read-only or
/// failing disk.
pub async fn start_with_disk(
    config: ServerConfig,
    disk: files::Disk,
) -> Result<RunningServer, ServeError> {
    config.validate()?;
    warn_exposed_secrets(&config);
    let tokens = config
        .network
        .tokens_file
        .as_deref()
        .map(auth::TokenFile::load)
        .transpose()?;
    let enrolled = match &config.network.identities_file {
        None => None,
        Some(path) => {
            let bad = |reason: String| ServeError::Identities {
                path: path.clone(),
                reason,
            };
            let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
            let list = tessera_aggregation::identity::parse_allow_list(&text)
                .map_err(|e| bad(e.to_string()))?;
            if list.is_empty() {
                return Err(bad("no identity is enrolled".into()));
            }
            Some(list)
        }
    };
    let tls = match (&config.network.tls_cert, &config.network.tls_key) {
        (Some(cert), Some(key)) => Some(tls::server_rustls_config(&tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: config.network.tls_client_ca.clone(),
        })?),
        _ => None,
    };

    let (key, created) = load_state_key(&config)?;
    let data_dir = config.data_dir.clone();
    let initial_file = config.initial_model.clone();
    let (mut store, initial) = tokio::task::spawn_blocking(move || {
        // Read before the data directory is opened (and perhaps created):
        // a file that cannot be used leaves no empty directory behind.
        let initial = initial_file
            .as_deref()
            .map(Model::from_safetensors_file)
            .transpose()?;
        Ok::<_, ServeError>((open_store(&data_dir, &key, created, disk)?, initial))
    })
    .await
    .expect("store open does not panic")?;
    let (entry, model) = starting_model(&config, &mut store, initial)?;
    // The ring width and the noise depend on the model's dimension: a
    // configuration that does not state it was checked at dimension 1, so
    // check it again at the stored model's, before the server listens (an
    // explicit `bits` that lets that model's noised sum wrap is refused
    // here, not at the first round).
    if config.dim.is_none() {
        ServerConfig {
            dim: Some(model.dim() as u32),
            ..config.clone()
        }
        .validate()?;
    }
    let ledger = terms::ledger_at_start(&config.dp, &mut store)?;
    let fedavg = server_optimizer(&config.aggregation, &store)?;
    let dim = model.dim() as u32;
    let ftrl = match config.dp.mode {
        config::DpMode::Ftrl => Some(ftrl::Ftrl::open(
            &config,
            &mut store,
            &model,
            entry.version,
        )?),
        _ => None,
    };
    let extras = extras::ExtrasState::at_start(&config, &store);
    let training = scheduler::Training {
        ftrl,
        version: entry.version,
        model,
        fedavg,
        ledger,
        rng: StdRng::try_from_rng(&mut rand::rngs::SysRng)
            .map_err(|e| ServeError::Round(format!("OS randomness unavailable: {e}")))?,
        extras,
    };

    let listener = bind(config.network.listen, config.round.max_clients).map_err(|source| {
        ServeError::Bind {
            addr: config.network.listen,
            source,
        }
    })?;
    let local_addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.network.listen,
        source,
    })?;
    if config.network.insecure_dev {
        // Named after the bind, so port 0 shows the port clients must dial.
        warn!(
            "INSECURE DEV MODE: no TLS, no client authentication. Anyone who can reach {local_addr} can join rounds. Never use this outside a local experiment."
        );
    }
    let metrics_addr = match config.network.metrics_listen {
        Some(addr) => Some(metrics::install_prometheus(addr)?),
        None => None,
    };

    let max_frame = max_frame_bytes(dim, config.round.max_clients);
    let limits = listener::Limits {
        max_connections: config.max_connections() as usize,
        tls_handshake_timeout: config.network.tls_handshake_timeout,
        preface_timeout: config.network.preface_timeout,
        idle_timeout: config.network.idle_timeout,
    };
    let shared = Arc::new(Shared {
        dim,
        tokens,
        enrolled,
        lobby: lobby::Lobby::default(),
        store: Arc::new(Mutex::new(store)),
        latest: RwLock::new(None),
        stopped: RwLock::new(None),
        config,
    });
    shared.set_latest(&entry, &training.model);

    let (shutdown, shutdown_rx) = watch::channel(false);
    let service = AggregatorServer::new(service::AggregatorService::new(Arc::clone(&shared)))
        .max_decoding_message_size(max_frame)
        .max_encoding_message_size(max_frame.max(8 * dim as usize + 64 * 1024));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AggregatorServer<service::AggregatorService>>()
        .await;
    // A connection with a live request (a client waiting in the lobby on
    // one stream) is kept while it answers keepalive pings; one that stops
    // answering is closed after the keepalive timeout. One with nothing
    // live, or whose request was refused, is closed by the listener
    // (module `listener`, step 4), which learns what is live from the
    // tracking layer: the connections it admits are registered in
    // `connections`, where the layer finds each request's connection.
    let connections = listener::Connections::new();
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .layer(listener::TrackLayer::new(Arc::clone(&connections)))
        .add_service(health_service)
        .add_service(service);
    let mut stop = shutdown_rx.clone();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let accepted = TcpListenerStream::new(listener);
    let (cutoff, cutoff_rx) = watch::channel(false);
    let serve = match tls {
        Some(tls) => {
            let incoming = listener::admit_tls(
                accepted,
                limits,
                tokio_rustls::TlsAcceptor::from(tls),
                cutoff_rx,
                connections,
            );
            tokio::spawn(async move {
                router
                    .serve_with_incoming_shutdown(incoming, stopped)
                    .await
                    .map_err(ServeError::from)
            })
        }
        None => {
            let incoming = listener::admit_plain(accepted, limits, cutoff_rx, connections);
            tokio::spawn(async move {
                router
                    .serve_with_incoming_shutdown(incoming, stopped)
                    .await
                    .map_err(ServeError::from)
            })
        }
    };
    let scheduler_shared = Arc::clone(&shared);
    // A fatal error is returned by `wait`, whose caller reports it: logging
    // it here too printed it twice.
    tokio::spawn(scheduler::keep_lobby_alive(
        Arc::clone(&shared),
        shutdown_rx.clone(),
    ));
    let scheduler = tokio::spawn(scheduler::run(scheduler_shared, training, shutdown_rx));
    info!(addr = %local_addr, dim, max_connections = limits.max_connections, "serving");
    Ok(RunningServer {
        local_addr,
        metrics_addr,
        control: ServerControl {
            shared,
            shutdown: Arc::new(shutdown),
            cutoff: Arc::new(cutoff),
        },
        serve,
        scheduler,
    })
}

#[cfg(test)]
mod starting_model_tests {
    use std::path::Path;

    use safetensors::tensor::{Dtype, TensorView};

    use super::*;
    use crate::store::{Publication, StateKey};

    /// A safetensors file at `path` of F32 tensors `(name, shape)`, values
    /// counting up from `base`, written in the order given.
    fn write_model(path: &Path, tensors: &[(&str, &[usize])], base: f32) {
        let mut next = base;
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, shape)| {
                (0..shape.iter().product::<usize>())
                    .flat_map(|_| {
                        next += 1.0;
                        next.to_le_bytes()
                    })
                    .collect()
            })
            .collect();
        let views: Vec<_> = tensors
            .iter()
            .zip(&bytes)
            .map(|((n, s), b)| (*n, TensorView::new(Dtype::F32, s.to_vec(), b).unwrap()))
            .collect();
        std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    fn open(dir: &Path) -> Store {
        Store::open(dir, &StateKey::from_bytes([3; 32])).unwrap()
    }

    fn start_from(
        dir: &Path,
        file: &Path,
        dim: Option<u32>,
    ) -> Result<(ModelEntry, Model), ServeError> {
        let config = ServerConfig {
            data_dir: dir.to_owned(),
            initial_model: Some(file.to_owned()),
            dim,
            ..ServerConfig::default()
        };
        let initial = Model::from_safetensors_file(file)?;
        starting_model(&config, &mut open(dir), initial.into())
    }

    const NET: &[(&str, &[usize])] = &[
        ("fc2.weight", &[2, 3]),
        ("fc1.weight", &[3, 4]),
        ("fc1.bias", &[3]),
    ];

    #[test]
    fn a_new_directory_starts_from_the_file_with_its_names_and_shapes() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, file) = (tmp.path().join("data"), tmp.path().join("m.safetensors"));
        write_model(&file, NET, 0.0);
        let (entry, model) = start_from(&dir, &file, None).unwrap();
        assert_eq!((entry.version, model.dim()), (1, 6 + 12 + 3));
        // GetModel answers with the file's names and shapes, in name order.
        let wire = model_response(&entry, &model, None);
        let got: Vec<(&str, &[u64])> = wire
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice()))
            .collect();
        assert_eq!(
            got,
            [
                ("fc1.bias", &[3u64][..]),
                ("fc1.weight", &[3, 4]),
                ("fc2.weight", &[2, 3])
            ]
        );
        // Values follow their names: fc2.weight was written first (1..=6).
        assert_eq!(wire.tensors[2].values, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(open(&dir).latest_model().unwrap().1, model);
    }

    #[test]
    fn a_dim_other_than_the_files_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, file) = (tmp.path().join("data"), tmp.path().join("m.safetensors"));
        write_model(&file, NET, 0.0);
        let e = start_from(&dir, &file, Some(20)).unwrap_err();
        assert!(matches!(e, ServeError::Config(_)), "{e}");
        assert!(
            e.to_string().contains("dim") && e.to_string().contains("21 values"),
            "{e}"
        );
        assert!(open(&dir).latest_model().is_none(), "nothing published");
        assert!(start_from(&dir, &file, Some(21)).is_ok());
    }

    /// A restart with the same initial model (even a file of other bytes:
    /// other metadata) continues from the latest version; another one is
    /// refused with what to do.
    #[test]
    fn a_stored_directory_takes_only_its_own_initial_model() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, file) = (tmp.path().join("data"), tmp.path().join("m.safetensors"));
        write_model(&file, NET, 0.0);
        let (_, initial) = start_from(&dir, &file, None).unwrap();
        let mut next = initial.clone();
        next.params[0] += 1.0;
        open(&dir)
            .publish(&Publication {
                model: &next,
                round: 1,
                survivors: 3,
                dropped: 0,
                epsilon: 0.0,
                delta: 0.0,
                ledger: None,
                velocity: None,
                optimizer: None,
            })
            .unwrap();
        let (entry, model) = start_from(&dir, &file, None).unwrap();
        assert_eq!((entry.version, model), (2, next));

        let other = tmp.path().join("other.safetensors");
        write_model(&other, NET, 0.5);
        let e = start_from(&dir, &other, None).unwrap_err().to_string();
        for what in [
            "already holds models",
            "--initial-model",
            "--data-dir",
            "other.safetensors",
        ] {
            assert!(e.contains(what), "{what}: {e}");
        }
        let reordered = tmp.path().join("reordered.safetensors");
        let bytes = std::fs::read(&file).unwrap();
        let model = Model::from_safetensors(&file, &bytes).unwrap();
        let mut offset = 0;
        let views: Vec<(String, Vec<u8>, Vec<usize>)> = model
            .tensors
            .iter()
            .map(|t| {
                let v = &model.params[offset..offset + t.len()];
                offset += t.len();
                (
                    t.name.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    t.shape.clone(),
                )
            })
            .collect();
        let meta = std::collections::HashMap::from([("saved_by".to_owned(), "torch".to_owned())]);
        let bytes = safetensors::serialize(
            views.iter().map(|(n, b, s)| {
                (
                    n.as_str(),
                    TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            }),
            Some(meta),
        )
        .unwrap();
        std::fs::write(&reordered, bytes).unwrap();
        assert_eq!(start_from(&dir, &reordered, None).unwrap().0.version, 2);
    }
}
