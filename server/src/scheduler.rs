//! The round scheduler: opens a round whenever enough clients wait, runs it
//! with a [`RoundDriver`], then applies FedAvg to the unmasked sum, accounts
//! its privacy and publishes the new global model, durably, before the next
//! round opens.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::RngExt;
use rand::rngs::StdRng;
use tessera_aggregation::RoundConfig;
use tessera_aggregation::server::RoundOutput;
use tessera_dp::encoding::FixedPoint;
use tessera_dp::extras::ExtrasLayout;
use tessera_dp::ledger::{Adversary, PrivacyLedger};
use tessera_dp::mechanism::{CentralDp, DistributedEncoding};
use tessera_proto::convert::abort_reason_name;
use tessera_proto::v1::{self, ErrorKind};
use tessera_proto::{PROTOCOL_VERSION, status_with_detail};
use tokio::sync::watch;
use tonic::Code;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::{DpMode, ServerConfig};
use crate::ftrl::Ftrl;
use crate::lobby::Participant;
use crate::metrics;
use crate::model::Model;
use crate::round::{RoundDriver, RoundEnd};
use crate::store::{
    AuditEvent, CohortRecord, ModelEntry, Publication, RoundRecord, RoundStatus, Store, StoreError,
};
use crate::strategy::ServerOptimizer;
use crate::{ServeError, Shared};

/// How long finished clients' streams get to close on their own.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The global model and everything that updates it; moved onto the blocking
/// pool for each publication.
#[derive(Debug)]
pub(crate) struct Training {
    pub(crate) model: Model,
    pub(crate) version: u64,
    /// The server optimizer (FedAvg, FedAvgM or adaptive) and its state.
    pub(crate) fedavg: ServerOptimizer,
    pub(crate) ledger: Option<PrivacyLedger>,
    pub(crate) rng: StdRng,
    /// `--dp ftrl`: the tree and the once-per-tree rule.
    pub(crate) ftrl: Option<Ftrl>,
    /// The extras' clip norm and last decoded figures.
    pub(crate) extras: crate::extras::ExtrasState,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs rounds until the round limit, the privacy budget or shutdown.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut training: Training,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let config = &shared.config;
    let mut rounds_run = 0u64;
    metrics::stage_deadlines(config.round.stage_timeout);
    loop {
        metrics::privacy(training.ledger.as_ref());
        if config.rounds.is_some_and(|limit| rounds_run >= limit) {
            info!(rounds = rounds_run, "round limit reached");
            shared.stop_accepting("the server has run its configured number of rounds");
            return Ok(());
        }
        let planned = match &training.ftrl {
            // The tree charges by step: the next one's cost.
            Some(ftrl) => Some(ftrl.planned(config)),
            None => config
                .planned_mechanism(training.model.dim() as u32)
                .map_err(ServeError::Config)?,
        };
        if let (Some(ledger), Some(planned)) = (&training.ledger, &planned)
            && !ledger.can_spend(planned)
        {
            let spent = ledger.spent();
            warn!(
                spent,
                budget = ledger.budget_epsilon(),
                "privacy budget would be exceeded by another round; no more rounds"
            );
            shared.stop_accepting(&format!(
                "the privacy budget is spent (epsilon {spent:.3} of {:.3}); no more rounds",
                ledger.budget_epsilon()
            ));
            return Ok(());
        }
        // Who may be sampled into this round: every waiting client but, in
        // DP-FTRL, those already in the current tree.
        let excluded = training
            .ftrl
            .as_ref()
            .map(|f| f.excluded(config))
            .unwrap_or_default();
        sync_ftrl_lobby(&shared, &training);
        let eligible = |p: &Participant| !excluded.contains(&p.identity);
        let Some(cohort) = gather(&shared, &mut shutdown, &mut training.rng, &eligible).await
        else {
            return Ok(());
        };
        training = run_round(&shared, training, cohort, &mut shutdown).await?;
        rounds_run += 1;
        if *shutdown.borrow() {
            return Ok(());
        }
    }
}

/// A round's participants, sampled from the lobby, and how they were
/// chosen (for the round record).
struct Cohort {
    participants: Vec<Participant>,
    record: CohortRecord,
}

/// Waits for `min_clients` eligible clients, then up to `join_window` more
/// for stragglers (until `max_clients` wait), and samples the round's
/// cohort from them uniformly with `rng` ([`crate::cohort`]).
async fn gather(
    shared: &Shared,
    shutdown: &mut watch::Receiver<bool>,
    rng: &mut StdRng,
    eligible: &(dyn Fn(&Participant) -> bool + Sync),
) -> Option<Cohort> {
    let config = &shared.config;
    let min = config.round.min_clients;
    let max = config.round.max_clients;
    let rule = config.cohort_rule();
    loop {
        // Draining (or stopped): the round in flight has ended, open none.
        if shared.not_accepting().is_some() {
            return None;
        }
        metrics::lobby(shared.lobby.waiting() as u32);
        if shared.lobby.eligible(eligible) >= min as usize {
            let window = tokio::time::Instant::now() + config.round.join_window;
            while shared.lobby.eligible(eligible) < max as usize {
                tokio::select! {
                    () = shared.lobby.changed() => {}
                    () = tokio::time::sleep_until(window) => break,
                    _ = shutdown.changed() => return None,
                }
            }
            let (participants, waiting) =
                shared
                    .lobby
                    .sample(|waiting| rule.size(waiting, min, max), eligible, rng);
            if participants.len() >= min as usize {
                info!(%rule, waiting, selected = participants.len(), "cohort sampled");
                let record = CohortRecord {
                    rule: rule.to_string(),
                    waiting: waiting as u32,
                    selected: participants.len() as u32,
                };
                return Some(Cohort {
                    participants,
                    record,
                });
            }
            // Some hung up in the window; wait for more.
            shared.lobby.put_back(participants);
            continue;
        }
        tokio::select! {
            () = shared.lobby.changed() => {}
            // Hung-up clients are noticed by polling.
            () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return None,
        }
    }
}

/// Sends the clients waiting in the lobby a keep-alive every
/// `lobby_keepalive` ([`crate::lobby::Lobby::keep_alive`]) until shutdown.
pub(crate) async fn keep_lobby_alive(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let every = shared.config.round.lobby_keepalive;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                shared.lobby.keep_alive(shared.config.round.min_clients);
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task does not panic")
}

/// Opens a round for the cohort, runs it, and publishes or records
/// its end; the round is on disk before it opens.
async fn run_round(
    shared: &Arc<Shared>,
    mut training: Training,
    cohort: Cohort,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Training, ServeError> {
    let participants = cohort.participants;
    let n = participants.len() as u32;
    let round_id = shared.store.lock().expect("store lock").next_round_id();
    let started = Instant::now();
    let started_at = unix_ms();

    let plan = RoundPlan::new(&shared.config, &mut training, round_id, n)?;
    let (threshold, graph, bits) = (plan.config.threshold, plan.config.graph, plan.config.bits);
    let mut record = started_record(round_id, n, threshold, started_at);
    record.cohort = Some(cohort.record);
    record.strategy = Some(shared.config.aggregation.record());
    // DP-FTRL: who takes part is on disk before the round starts, so a
    // crash cannot forget a participation. The round id is on disk before
    // any key is derived from it, so a restarted server never reuses it. If
    // either cannot be written, the round does not open.
    let recorded = match record_ftrl_participants(shared, &mut training, &participants).await {
        Ok(()) => write_record(shared, record.clone()).await,
        Err(e) => Err(e),
    };
    if let Err(e) = recorded {
        let gone = !shared.config.data_dir.is_dir();
        refuse_unrecorded(shared, participants, round_id, &e, gone, shutdown).await;
        // A full or read-only disk may recover; a data directory that was
        // removed or unmounted will not: stop, and let the caller report
        // why (once).
        return if gone { Err(e) } else { Ok(training) };
    }
    audit_joined(shared, round_id, &participants).await;
    metrics::round_started();
    let span = info_span!("round", round = round_id, clients = n, threshold, graph = %graph);
    info!(parent: &span, bits, "round opened");

    let release_plan = plan.release_plan(&shared.config, round_id, n);
    let mut driver = plan.open_driver(
        training.version,
        participants,
        shared.config.aggregation.proximal_mu,
    )?;
    let end = driver.run(shutdown.clone()).instrument(span.clone()).await;
    let identities = driver.identities().to_vec();
    let told = match end {
        RoundEnd::Completed(output) => {
            let (next, told) = complete(
                shared,
                training,
                output,
                release_plan,
                &mut record,
                &span,
                started,
            )
            .await;
            training = next;
            told
        }
        RoundEnd::Aborted {
            stage,
            reason,
            survivors,
        } => {
            give_back_ftrl(shared, &mut training, &identities, &span).await;
            Told::Result(record_abort(&mut record, stage, reason, survivors, &span))
        }
        RoundEnd::Shutdown => {
            // The record stays `started`; the next start marks it
            // interrupted. Clients hear that the server is going away.
            shared.lobby.release(identities.iter().map(String::as_str));
            driver.fail_all(&shutting_down(round_id));
            return Ok(training);
        }
    };
    record.seconds = started.elapsed().as_secs_f64();
    metrics::round_ended(record.outcome == RoundStatus::Completed, record.seconds);
    let stops = matches!(told, Told::Failed { fatal: Some(_), .. });
    // A round that stops the scheduler keeps its `started` record: whether
    // its version was committed is only known to the next start, which
    // reconciles the record with the manifest.
    if !stops && let Err(e) = write_record(shared, record).await {
        // The record stays `started`: the next start reconciles it with the
        // manifest (completed if its model was published, interrupted
        // otherwise), so the outcome is not lost and rounds go on.
        warn!(parent: &span, "cannot record the round's outcome: {e}");
    }
    audit_evictions(shared, round_id, &identities, driver.evicted()).await;
    // Identities are free again before the clients hear the end: a client
    // that rejoins at once on its result must not find itself still
    // "in a round" (AlreadyExists).
    shared.lobby.release(identities.iter().map(String::as_str));
    let fatal = match told {
        Told::Result(result) => {
            driver.finish(&result, CLOSE_GRACE);
            None
        }
        Told::Failed { status, fatal } => {
            driver.fail_all(&status);
            fatal
        }
    };
    match fatal {
        Some(e) => Err(e),
        None => Ok(training),
    }
}

/// What a round's clients hear when it ends.
enum Told {
    /// The round's result (completed or aborted).
    Result(v1::RoundResult),
    /// The round ended in a failure of the server's; if `fatal`, the
    /// scheduler stops after telling them.
    Failed {
        /// The status every client's stream ends with.
        status: tonic::Status,
        /// Why the scheduler stops, if it does.
        fatal: Option<ServeError>,
    },
}

/// A round's parameters, fixed before it opens.
struct RoundPlan {
    /// What every participant is told.
    config: RoundConfig,
    /// How clients encode their updates.
    fixed_point: FixedPoint,
    /// Distributed DP's encoding, if on.
    distributed: Option<DistributedEncoding>,
    /// The extras the sum carries after the model's coordinates, if any.
    extras: Option<ExtrasLayout>,
}

impl RoundPlan {
    /// Plans round `round_id` for `n` participants: neighbour graph and
    /// threshold, survivor floor, encoding, and a fresh graph seed.
    fn new(
        config: &ServerConfig,
        training: &mut Training,
        round_id: u64,
        n: u32,
    ) -> Result<RoundPlan, ServeError> {
        let (graph, threshold) = config.graph_for(n).map_err(ServeError::Config)?;
        let min_survivors = config.survivor_floor(n, threshold);
        let dim = training.model.dim() as u32;
        let (clip_norm, fixed_point, distributed) =
            crate::extras::plan_encoding(config, training.extras.clip_norm, n, min_survivors, dim)
                .map_err(ServeError::Config)?;
        training.extras.clip_norm = clip_norm;
        let extras = config.extras_layout(clip_norm);
        let (_, summed) = config.summed(clip_norm, dim);
        let bits = fixed_point.bits;
        let mut round_config = RoundConfig::new(round_id, n, summed);
        round_config.threshold = threshold;
        round_config.min_survivors = min_survivors;
        round_config.graph = graph;
        round_config.graph_seed = training.rng.random();
        round_config.bits = bits;
        round_config.prg = config.round.prg;
        round_config.threat_model = config.round.threat_model;
        round_config.corrupt = config.corrupt_count(n);
        round_config.stage_timeout = config.round.stage_timeout;
        Ok(RoundPlan {
            config: round_config,
            fixed_point,
            distributed,
            extras,
        })
    }

    /// What the release needs should the round complete.
    fn release_plan(&self, config: &ServerConfig, round_id: u64, n: u32) -> ReleasePlan {
        ReleasePlan {
            fixed_point: self.fixed_point,
            distributed: self.distributed,
            corrupt: config.corrupt_count(n),
            round_id,
            clients: n,
            extras: self.extras,
        }
    }

    /// Opens the round with its participants; `proximal_mu` is FedProx's,
    /// told to each in its RoundStart.
    fn open_driver(
        self,
        model_version: u64,
        participants: Vec<Participant>,
        proximal_mu: f64,
    ) -> Result<RoundDriver, ServeError> {
        match RoundDriver::open(
            self.config,
            v1::FixedPoint::from(&self.fixed_point),
            self.distributed.as_ref().map(v1::DistributedDp::from),
            model_version,
            participants,
            proximal_mu,
            self.extras.as_ref().map(v1::RoundExtras::from),
        ) {
            Ok(driver) => Ok(driver),
            Err(e) => Err(ServeError::Round(e.to_string())),
        }
    }
}

/// The record of a round just opened, written before it runs.
fn started_record(round_id: u64, n: u32, threshold: u32, started_at: u64) -> RoundRecord {
    RoundRecord {
        round: round_id,
        outcome: RoundStatus::Started,
        clients: n,
        survivors: 0,
        dropped: 0,
        threshold,
        stage: None,
        reason: None,
        model_version: None,
        started_at_unix_ms: started_at,
        seconds: 0.0,
        cohort: None,
        tree: None,
        strategy: None,
        extras: None,
    }
}

/// A completed round: publishes the new model, records the round and
/// returns what its clients hear. A publication the data directory
/// refused (full, read-only, failing) aborts the round, reason `storage`:
/// the model and momentum stay at the last published version, the charge
/// stays in the ledger (the server saw the sum), the clients hear
/// UNAVAILABLE with [`ErrorKind::StorageFailed`], and the next round runs
/// once the disk recovers, unless the store can no longer tell what it
/// committed (then the scheduler stops; a restart reconciles).
async fn complete(
    shared: &Arc<Shared>,
    training: Training,
    output: RoundOutput,
    plan: ReleasePlan,
    record: &mut RoundRecord,
    span: &tracing::Span,
    started: Instant,
) -> (Training, Told) {
    let (round_id, n) = (plan.round_id, plan.clients);
    let contributors = output.contributors.len() as u32;
    let (mut training, published) = publish(shared, training, output, plan).await;
    let published = match published {
        Ok(version) => version,
        Err(ServeError::Store(e)) => {
            let told = record_storage_failure(shared, record, contributors, &e, span);
            return (training, told);
        }
        Err(e) => {
            let status = server_stopped(round_id, &e);
            return (
                training,
                Told::Failed {
                    status,
                    fatal: Some(e),
                },
            );
        }
    };
    record.outcome = RoundStatus::Completed;
    record.tree = training.ftrl.as_ref().map(Ftrl::position);
    record.survivors = contributors;
    record.dropped = n - contributors;
    record.model_version = Some(published);
    record.extras = training.extras.last.take();
    metrics::round_completed();
    info!(parent: span, survivors = contributors, version = published, seconds = started.elapsed().as_secs_f64(), "round completed, model published");
    let result = v1::RoundResult {
        round_id,
        outcome: v1::Outcome::Completed as i32,
        survivors: contributors,
        model_version: published,
        abort_reason: String::new(),
        // The round driver fills in whom it evicted.
        evicted: Vec::new(),
    };
    (training, Told::Result(result))
}

/// A round whose publication the data directory refused: recorded as
/// aborted at `publish`, reason `storage`; its clients hear why.
fn record_storage_failure(
    shared: &Shared,
    record: &mut RoundRecord,
    contributors: u32,
    e: &StoreError,
    span: &tracing::Span,
) -> Told {
    record.outcome = RoundStatus::Aborted;
    record.survivors = contributors;
    record.dropped = record.clients - contributors;
    record.stage = Some(PUBLISH_STAGE.to_owned());
    record.reason = Some(STORAGE_REASON.to_owned());
    metrics::round_aborted(STORAGE_REASON);
    error!(parent: span, "round aborted: the data directory refused its publication: {e}");
    let status = storage_failed(
        record.round,
        &format!(
            "the server could not store round {} ({}); the round is aborted and nothing was published",
            record.round,
            io_cause(e)
        ),
    );
    let poisoned = shared.store.lock().expect("store lock").poisoned();
    Told::Failed {
        status,
        fatal: poisoned.then(|| {
            ServeError::Store(StoreError::Poisoned {
                path: shared.config.data_dir.clone(),
            })
        }),
    }
}

/// The round's stage a publication failure is recorded at.
const PUBLISH_STAGE: &str = "publish";
/// The abort reason (record and metric) of a round the disk refused.
const STORAGE_REASON: &str = metrics::STORAGE_ABORT_REASON;

/// What a client may hear of a storage error: the operating system's
/// reason (no space left, read-only file system), never a path.
fn io_cause(e: &StoreError) -> String {
    match e {
        StoreError::Io { source, .. } => source.to_string(),
        _ => "its data directory refused the write".to_owned(),
    }
}

/// UNAVAILABLE with [`ErrorKind::StorageFailed`]: the server could not
/// store round `round_id`.
fn storage_failed(round_id: u64, message: &str) -> tonic::Status {
    status_with_detail(
        Code::Unavailable,
        message.to_owned(),
        &v1::ErrorDetail {
            kind: ErrorKind::StorageFailed as i32,
            server_protocol_version: PROTOCOL_VERSION,
            round_id,
            expected: 0,
        },
    )
}

/// What a round's clients hear when a failure other than the disk's stops
/// the scheduler during the release. The error itself is not logged here:
/// the scheduler returns it and `tessera serve` prints it once.
fn server_stopped(round_id: u64, _e: &ServeError) -> tonic::Status {
    status_with_detail(
        Code::Unavailable,
        format!("the server could not publish round {round_id} and stopped running rounds"),
        &v1::ErrorDetail {
            kind: ErrorKind::Unavailable as i32,
            server_protocol_version: PROTOCOL_VERSION,
            round_id,
            expected: 0,
        },
    )
}

/// How long the scheduler waits after the data directory refused a
/// round's start record before it gathers the next round.
const STORAGE_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// The data directory refused the start record of round `round_id`: the
/// round does not open (no key is derived from an id that is not on disk),
/// its participants hear why, and, unless the scheduler `stops` (it then
/// returns the error, reported once by its caller), it logs the failure
/// and waits a moment before it gathers the next round.
async fn refuse_unrecorded(
    shared: &Shared,
    participants: Vec<Participant>,
    round_id: u64,
    e: &ServeError,
    stops: bool,
    shutdown: &mut watch::Receiver<bool>,
) {
    if !stops {
        error!(
            round = round_id,
            "round not opened: cannot record its start: {e}"
        );
    }
    metrics::round_aborted(STORAGE_REASON);
    let cause = match e {
        ServeError::Store(e) => io_cause(e),
        _ => e.to_string(),
    };
    let status = storage_failed(
        round_id,
        &format!("the server could not record round {round_id} ({cause}); the round did not open"),
    );
    for p in &participants {
        let _ = p.tx.try_send(Err(status.clone()));
    }
    shared
        .lobby
        .release(participants.iter().map(|p| p.identity.as_str()));
    if stops {
        return;
    }
    tokio::select! {
        () = tokio::time::sleep(STORAGE_BACKOFF) => {}
        _ = shutdown.changed() => {}
    }
}

/// An aborted round: records where and why, and returns the result its
/// clients hear.
fn record_abort(
    record: &mut RoundRecord,
    stage: tessera_aggregation::Stage,
    reason: tessera_aggregation::messages::AbortReason,
    survivors: u32,
    span: &tracing::Span,
) -> v1::RoundResult {
    record.outcome = RoundStatus::Aborted;
    record.survivors = survivors;
    record.dropped = record.clients - survivors;
    record.stage = Some(stage.name().to_owned());
    record.reason = Some(abort_reason_name(reason).to_owned());
    metrics::round_aborted(abort_reason_name(reason));
    warn!(parent: span, stage = stage.name(), reason = abort_reason_name(reason), survivors, "round aborted");
    v1::RoundResult {
        round_id: record.round,
        outcome: v1::Outcome::Aborted as i32,
        survivors,
        model_version: 0,
        abort_reason: abort_reason_name(reason).to_owned(),
        // The round driver fills in whom it evicted.
        evicted: Vec::new(),
    }
}

/// What the clients of round `round_id` hear when the server shuts down
/// during it.
fn shutting_down(round_id: u64) -> tonic::Status {
    status_with_detail(
        Code::Unavailable,
        "the server is shutting down",
        &v1::ErrorDetail {
            kind: ErrorKind::Unavailable as i32,
            server_protocol_version: PROTOCOL_VERSION,
            round_id,
            expected: 0,
        },
    )
}

/// Records who takes part in the round in the audit log.
async fn audit_joined(shared: &Arc<Shared>, round: u64, participants: &[Participant]) {
    let audit = shared.store.lock().expect("store lock").audit_log();
    let identities = participants.iter().map(|p| p.identity.clone()).collect();
    blocking(move || audit.record(AuditEvent::Joined { round, identities })).await;
}

/// Records the round's evictions in the audit log: who, why, and what
/// the server saw. A revealed share key is not stored (it opens the
/// accuser's received shares).
async fn audit_evictions(
    shared: &Arc<Shared>,
    round: u64,
    identities: &[String],
    evicted: &[v1::Eviction],
) {
    if evicted.is_empty() {
        return;
    }
    let audit = shared.store.lock().expect("store lock").audit_log();
    let events: Vec<AuditEvent> = evicted
        .iter()
        .map(|e| AuditEvent::Evicted {
            round,
            client: identities
                .get(e.client_id as usize)
                .cloned()
                .unwrap_or_else(|| format!("client {}", e.client_id)),
            reason: e.reason.clone(),
            proof: Some(e.detail.clone()),
        })
        .collect();
    blocking(move || {
        for event in events {
            audit.record(event);
        }
    })
    .await;
}

async fn write_record(shared: &Arc<Shared>, record: RoundRecord) -> Result<(), ServeError> {
    let store = Arc::clone(&shared.store);
    blocking(move || store.lock().expect("store lock").record_round(&record))
        .await
        .map_err(ServeError::Store)
}

/// What a completed round's release needs, fixed when the round opened.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReleasePlan {
    /// The round's fixed point (its ring decodes the sum).
    pub(crate) fixed_point: FixedPoint,
    /// Distributed DP's encoding, if on.
    pub(crate) distributed: Option<DistributedEncoding>,
    /// The clients assumed to collude with the server.
    pub(crate) corrupt: u32,
    /// The round.
    pub(crate) round_id: u64,
    /// Clients invited.
    pub(crate) clients: u32,
    /// The extras after the model's coordinates, if any.
    pub(crate) extras: Option<ExtrasLayout>,
}

/// Runs [`release`] on the blocking pool and shows the new model. On
/// failure the model and the momentum are put back as they were (the last
/// published version's); the privacy charge stays.
async fn publish(
    shared: &Arc<Shared>,
    training: Training,
    output: RoundOutput,
    plan: ReleasePlan,
) -> (Training, Result<u64, ServeError>) {
    let config = shared.config.clone();
    let store = Arc::clone(&shared.store);
    let before = (training.model.clone(), training.fedavg.clone());
    let (mut training, released) = blocking(move || {
        let mut training = training;
        let released = release(&config, &mut training, &store, output, &plan);
        (training, released)
    })
    .await;
    match released {
        Ok(entry) => {
            shared.set_latest(&entry, &training.model);
            // Before the round's clients hear the result: one that comes
            // straight back sees the tree as this release left it.
            sync_ftrl_lobby(shared, &training);
            (training, Ok(entry.version))
        }
        Err(e) => {
            (training.model, training.fedavg) = before;
            // A failed DP-FTRL release may have closed the tree.
            sync_ftrl_lobby(shared, &training);
            (training, Err(e))
        }
    }
}

/// Records the privacy spent (durably, first), decodes the sum, adds
/// central DP noise, applies FedAvg and publishes the model.
fn release(
    config: &ServerConfig,
    training: &mut Training,
    store: &Mutex<Store>,
    output: RoundOutput,
    plan: &ReleasePlan,
) -> Result<ModelEntry, ServeError> {
    if training.ftrl.is_some() {
        return release_ftrl(config, training, store, output, plan);
    }
    let contributors = output.contributors.len() as u32;
    let dim = output.sum.len();
    let central = central_dp(config, plan, dim)?;
    let mechanism = spent_mechanism(config, plan, central.as_ref(), contributors, dim)?;
    let epsilon = charge(config, training, store, plan, mechanism)?;
    let decoded = match &central {
        // Exact integer noise added in the ring, decoded after (colluders
        // at the wrap point cannot amplify an honest update).
        Some(central) => central
            .release(&output.sum, contributors, &mut training.rng)
            .map_err(|e| round_error(&e))?,
        None => plan.fixed_point.decode_sum(&output.sum, contributors),
    };
    let mean = match &plan.extras {
        None => decoded.mean(),
        Some(layout) => {
            let noise_std = coordinate_noise_std(plan, central.as_ref(), contributors);
            let base = training.version;
            crate::extras::finish(
                config,
                layout,
                &decoded,
                noise_std,
                base,
                &mut training.extras,
            )
        }
    };
    training
        .fedavg
        .apply(&mut training.model, &mean)
        .map_err(|e| round_error(&e))?;
    let entry = publish_model(config, training, store, plan, contributors, epsilon)?;
    training.version = entry.version;
    Ok(entry)
}

/// DP-FTRL's release: charges the tree step (durably, first), adds the
/// sum as the tree's next leaf, writes the tree's state (so a node once
/// released is never released over another sum), then publishes the FTRL
/// model.
fn release_ftrl(
    config: &ServerConfig,
    training: &mut Training,
    store: &Mutex<Store>,
    output: RoundOutput,
    plan: &ReleasePlan,
) -> Result<ModelEntry, ServeError> {
    let contributors = output.contributors.len() as u32;
    let ftrl = training.ftrl.as_ref().expect("an ftrl release");
    let mechanism = ftrl.mechanism();
    let epsilon = charge(config, training, store, plan, Some(mechanism))?;
    let ftrl = training.ftrl.as_mut().expect("an ftrl release");
    let released = ftrl
        .release(config, &plan.fixed_point, &output.sum, plan.round_id)
        .and_then(|released| {
            store
                .lock()
                .expect("store lock")
                .write_ftrl(&released.record)
                .map_err(ServeError::Store)?;
            Ok(released)
        });
    let released = match released {
        Ok(released) => released,
        Err(e) => {
            // Charged but not durably released: the ledger is a step
            // ahead of the tree, so the tree ends here and the next round
            // starts a new one (a restart does the same from the ledger).
            ftrl.close();
            return Err(e);
        }
    };
    ftrl.commit_release(released.record);
    training.model = released.model;
    let entry = publish_model(config, training, store, plan, contributors, epsilon)?;
    training.version = entry.version;
    Ok(entry)
}

/// DP-FTRL: records the round's identities in the tree's durable state
/// (restarting the tree first if it is full) before the round starts.
async fn record_ftrl_participants(
    shared: &Arc<Shared>,
    training: &mut Training,
    participants: &[Participant],
) -> Result<(), ServeError> {
    let Some(ftrl) = &training.ftrl else {
        return Ok(());
    };
    let identities: Vec<String> = participants.iter().map(|p| p.identity.clone()).collect();
    let record = ftrl.begin_round(&shared.config, &identities, training.version);
    let store = Arc::clone(&shared.store);
    let written = record.clone();
    blocking(move || store.lock().expect("store lock").write_ftrl(&written))
        .await
        .map_err(ServeError::Store)?;
    let model = training.model.clone();
    if let Some(ftrl) = &mut training.ftrl {
        ftrl.commit_start(record, &model);
    }
    sync_ftrl_lobby(shared, training);
    Ok(())
}

/// DP-FTRL: tells the lobby who took part in the current tree, whenever
/// that changes. They are turned away at the door and sent away from the
/// lobby ([`crate::lobby::Lobby::set_ineligible`]): a client the tree
/// cannot take must not hold a connection slot the clients it needs are
/// waiting for.
fn sync_ftrl_lobby(shared: &Shared, training: &Training) {
    if let Some(ftrl) = &training.ftrl {
        shared.lobby.set_ineligible(
            ftrl.excluded(&shared.config),
            ftrl.rounds_left(&shared.config),
        );
    }
}

/// DP-FTRL: a round that aborted before its release gives its identities
/// back to the tree (nothing of theirs entered it). If that cannot be
/// written they stay excluded for the epoch, which is safe.
async fn give_back_ftrl(
    shared: &Arc<Shared>,
    training: &mut Training,
    identities: &[String],
    span: &tracing::Span,
) {
    let Some(ftrl) = &training.ftrl else {
        return;
    };
    let record = ftrl.give_back(identities);
    let store = Arc::clone(&shared.store);
    let written = record.clone();
    match blocking(move || store.lock().expect("store lock").write_ftrl(&written)).await {
        Ok(()) => {
            let model = training.model.clone();
            if let Some(ftrl) = &mut training.ftrl {
                ftrl.commit_start(record, &model);
            }
            sync_ftrl_lobby(shared, training);
        }
        Err(e) => {
            warn!(parent: span, "cannot give the aborted round's clients back to the DP-FTRL tree (they wait for the next tree): {e}")
        }
    }
}

/// The standard deviation of the DP noise on one coordinate of a decoded
/// sum of `contributors` inputs, in real units (0 without DP): all the
/// noise in it, the colluders' shares included.
fn coordinate_noise_std(plan: &ReleasePlan, central: Option<&CentralDp>, contributors: u32) -> f64 {
    let step = f64::from(1u32 << plan.fixed_point.frac_bits);
    match (central, &plan.distributed) {
        (Some(central), _) => central.sigma() / step,
        (None, Some(encoding)) => encoding.dp.actual_sigma(contributors) / step,
        (None, None) => 0.0,
    }
}

/// A failure of the release that is neither the store's nor the
/// configuration's.
fn round_error(e: &dyn std::fmt::Display) -> ServeError {
    ServeError::Round(e.to_string())
}

/// Central DP's noise for a sum of `dim` values, when the server adds it.
fn central_dp(
    config: &ServerConfig,
    plan: &ReleasePlan,
    dim: usize,
) -> Result<Option<CentralDp>, ServeError> {
    Ok(match config.dp.mode {
        DpMode::Central => Some(
            CentralDp::new(plan.fixed_point, config.dp.noise_multiplier, dim)
                .map_err(|e| round_error(&e))?,
        ),
        _ => None,
    })
}

/// What this release spends: central noise is added here, on a sum the
/// server saw; distributed noise is already in the sum, carried by the
/// contributors, of which only the honest ones count.
fn spent_mechanism(
    config: &ServerConfig,
    plan: &ReleasePlan,
    central: Option<&CentralDp>,
    contributors: u32,
    dim: usize,
) -> Result<Option<tessera_dp::ledger::Mechanism>, ServeError> {
    Ok(match (config.dp.mode, &plan.distributed, central) {
        (DpMode::Off, _, _) => None,
        (DpMode::Central, _, Some(central)) => Some(central.mechanism()),
        (DpMode::Distributed, Some(encoding), _) => Some(
            encoding
                .mechanism(contributors, plan.corrupt, dim)
                .map_err(|e| round_error(&e))?,
        ),
        _ => {
            return Err(ServeError::Round(
                "a DP round ran without its mechanism".into(),
            ));
        }
    })
}

/// Charges the release to the privacy ledger and writes the ledger; returns
/// the epsilon spent so far (0 without DP).
///
/// The server has seen the sum: charge it, durably, before anything that
/// could fail on the way to publishing (noise, FedAvg, the model write).
/// Distributed noise holds against the server; central noise, added to a
/// sum the server saw, only against the model's consumers.
fn charge(
    config: &ServerConfig,
    training: &mut Training,
    store: &Mutex<Store>,
    plan: &ReleasePlan,
    mechanism: Option<tessera_dp::ledger::Mechanism>,
) -> Result<f64, ServeError> {
    let mut epsilon = 0.0;
    if let Some(mechanism) = mechanism {
        let adversary = match config.dp.mode {
            // Server-added noise (central, tree): the server saw the sum.
            DpMode::Central | DpMode::Ftrl => Adversary::ModelConsumers,
            _ => Adversary::Server,
        };
        let ledger = training.ledger.as_mut().expect("DP keeps a ledger");
        ledger
            .record(plan.round_id, mechanism, adversary)
            .map_err(|e| round_error(&e))?;
        epsilon = ledger.spent();
        store
            .lock()
            .expect("store lock")
            .charge(ledger)
            .map_err(ServeError::Store)?;
    }
    Ok(epsilon)
}

/// Publishes the updated model in the store, with the round's figures.
fn publish_model(
    config: &ServerConfig,
    training: &Training,
    store: &Mutex<Store>,
    plan: &ReleasePlan,
    contributors: u32,
    epsilon: f64,
) -> Result<ModelEntry, ServeError> {
    store
        .lock()
        .expect("store lock")
        .publish(&Publication {
            model: &training.model,
            round: plan.round_id,
            survivors: contributors,
            dropped: plan.clients - contributors,
            epsilon,
            delta: if config.dp.mode != DpMode::Off {
                config.dp.delta
            } else {
                0.0
            },
            ledger: training.ledger.as_ref(),
            velocity: training.fedavg.velocity(),
            optimizer: training.fedavg.state(),
        })
        .map_err(ServeError::Store)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use tessera_aggregation::ClientId;

    use super::*;
    use crate::config::{AggregationSettings, DpSettings, RoundRules};
    use crate::model::Model;
    use crate::store::inspect;

    /// A store holding the initial model of dimension 1 and, if `after`,
    /// a published model of that round (so an older round is refused).
    fn store_at(dir: &std::path::Path, model: &Model, after: Option<u64>) -> Mutex<Store> {
        let mut store = Store::open(dir, &crate::store::StateKey::from_bytes([9; 32])).unwrap();
        store.init_model(model).unwrap();
        if let Some(round) = after {
            store
                .publish(&Publication {
                    model,
                    round,
                    survivors: 3,
                    dropped: 0,
                    epsilon: 0.0,
                    delta: 0.0,
                    ledger: None,
                    velocity: None,
                    optimizer: None,
                })
                .unwrap();
        }
        Mutex::new(store)
    }

    /// A round of 3 clients that each sent `C 2^f` on the one coordinate.
    fn output(fp: &FixedPoint) -> RoundOutput {
        let one = (f64::from(fp.clip_norm) * f64::from(1u32 << fp.frac_bits)) as u32;
        RoundOutput {
            sum: vec![3 * one],
            contributors: (0..3).map(ClientId).collect(),
            dropped_after_sharing: Vec::new(),
        }
    }

    /// The server has unmasked a round's sum, then publishing fails: at
    /// FedAvg (a step that overflows the model) or in the store (which
    /// refuses the publication). The round's charge must be in the ledger
    /// on disk all the same. Before, the charge lived in memory until the
    /// store's publish wrote it, so both failures left it unrecorded.
    #[test]
    fn a_sum_the_server_saw_is_charged_even_if_publishing_fails() {
        for dp in [DpMode::Central, DpMode::Distributed, DpMode::Ftrl] {
            for failure in ["fedavg", "store"] {
                let tmp = tempfile::tempdir().unwrap();
                let config = ServerConfig {
                    round: RoundRules {
                        min_survivors: Some(crate::config::ThresholdRule::Count(3)),
                        ..Default::default()
                    },
                    dp: DpSettings {
                        mode: dp,
                        noise_multiplier: 0.5,
                        ..Default::default()
                    },
                    aggregation: AggregationSettings {
                        // FedAvg's step lr * mean overflows a weight at f32::MAX.
                        server_lr: if failure == "fedavg" { 1e38 } else { 1.0 },
                        ..Default::default()
                    },
                    ..ServerConfig::default()
                };
                let model = Model::new(
                    Model::zeros_flat(1).tensors,
                    vec![if failure == "fedavg" { f32::MAX } else { 0.0 }],
                )
                .unwrap();
                let store = store_at(tmp.path(), &model, (failure == "store").then_some(9));
                let (fixed_point, distributed) = config.round_encoding(3, 3, 1).unwrap();
                assert_eq!(distributed.is_some(), dp == DpMode::Distributed);
                // DP-FTRL's update overflows the same way (lr times the
                // noisy prefix), or meets the same refusing store.
                let ftrl = (dp == DpMode::Ftrl).then(|| {
                    let mut store = store.lock().unwrap();
                    let version = store.models().last().unwrap().version;
                    Ftrl::open(&config, &mut store, &model, version).unwrap()
                });
                let mut training = Training {
                    model,
                    version: 1,
                    fedavg: crate::fedavg::FedAvg::new(config.aggregation.server_lr, None)
                        .unwrap()
                        .into(),
                    ledger: Some(PrivacyLedger::new(100.0, 1e-5).unwrap()),
                    rng: StdRng::seed_from_u64(1),
                    ftrl,
                    extras: crate::extras::ExtrasState {
                        clip_norm: config.round.clip_norm,
                        last: None,
                    },
                };
                let plan = ReleasePlan {
                    fixed_point,
                    distributed,
                    corrupt: 0,
                    round_id: 4,
                    clients: 3,
                    extras: None,
                };
                let err = release(&config, &mut training, &store, output(&fixed_point), &plan)
                    .unwrap_err();
                let why = err.to_string();
                match failure {
                    "fedavg" => assert!(why.contains("overflows"), "{dp:?}: {why}"),
                    _ => assert!(why.contains("not after round 9"), "{dp:?}: {why}"),
                }
                // Nothing published, but the charge is on disk.
                let on_disk = inspect(tmp.path()).unwrap();
                assert!(on_disk.models.iter().all(|m| m.round != 4));
                let ledger = on_disk.ledger.expect("the ledger was written");
                let entry = ledger.entries().last().expect("round 4 is charged");
                assert_eq!(entry.round, 4, "{dp:?} {failure}");
                assert!(ledger.spent() > 0.0);
                let adversary = match dp {
                    DpMode::Central | DpMode::Ftrl => Adversary::ModelConsumers,
                    _ => Adversary::Server,
                };
                assert_eq!(entry.adversary, adversary);
                // And a restarted server opens the directory, round 4
                // never reused.
                drop(store);
                let reopened =
                    Store::open(tmp.path(), &crate::store::StateKey::from_bytes([9; 32])).unwrap();
                assert!(reopened.next_round_id() > 4);
            }
        }
    }
}
