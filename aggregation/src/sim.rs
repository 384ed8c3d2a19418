//! The in-process round simulator: many clients and one server, driven
//! through the same state machines a deployment uses, with dropouts injected
//! at any stage and virtual time.
//!
//! Every message goes through its canonical byte encoding and back, so the
//! byte counts are the wire's and the codec is exercised on every run. Time
//! is virtual: when dropped clients leave a stage short, the simulator jumps
//! the clock to the stage deadline instead of waiting. The wall clock is read
//! only to report how long the computation took; the protocol never sees it.
//!
//! Clients run in parallel on rayon. Masked inputs stream to the server
//! through a bounded channel and are summed as they arrive, so a round with
//! 10,000 clients of 100,000 values never holds more than a few dozen masked
//! vectors at once. Each client's input is generated from the run's seed when
//! it is needed; the simulator adds the inputs the server accepted into a
//! plain sum and checks the unmasked sum against it (`verified`).
//!
//! With [`Faults`] the simulator also plays an unreliable network between
//! the clients and the server: messages lost, delivered twice, held back
//! past their stage's deadline, or delivered out of order, each decision
//! drawn from the run's seed. Refusals are then expected (a late or doubled
//! message is refused, a client that missed a message is dropped) and are
//! counted instead of failing the run; the property that must hold is that
//! a round still either verifies or aborts, never produces a wrong sum. In
//! that mode each stage's messages are buffered (to apply the faults in a
//! seeded order) rather than streamed.
//!
//! [`plan`] is the front end both `tessera simulate` and the Python
//! package call: flags as data to a [`SimConfig`], and one round to its
//! record.

use std::collections::BTreeMap;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chacha20::{ChaCha8Rng, ChaCha20Rng};
use rand_core::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;

use crate::client::{ClientEvent, ClientSession};
use crate::config::RoundConfig;
use crate::config::ThreatModel;
use crate::graph::GraphKind;
use crate::identity::{ClientIdentity, IdentityDirectory, IdentityKey};
use crate::mask::Prg;
use crate::messages::{AbortReason, ClientMessage, ServerMessage};
use crate::packing::value_mask;
use crate::server::{ServerEvent, ServerSession};
use crate::{ClientId, Stage};

pub mod plan;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Clients invited to each round.
    pub clients: u32,
    /// Length of each input vector.
    pub dim: u32,
    /// Complete graph or Harary graph of degree k.
    pub graph: GraphKind,
    /// Shamir threshold t.
    pub threshold: u32,
    /// Arithmetic modulus 2^bits.
    pub bits: u8,
    /// Mask PRG.
    pub prg: Prg,
    /// Adds the ConsistencyCheck stage when semi-malicious; signs adverts
    /// and the survivor set with per-client identities (generated from the
    /// seed) in the malicious-server model.
    pub threat_model: ThreatModel,
    /// Most clients assumed corrupt ([`RoundConfig::corrupt`]): the
    /// malicious-server model checks its thresholds against it.
    pub corrupt: u32,
    /// Fraction of the clients still in the round that drop out just before
    /// sending their message of each stage.
    pub drops: BTreeMap<Stage, f64>,
    /// Seed of everything random in the run (keys, inputs, who drops,
    /// which messages the network faults hit).
    pub seed: u64,
    /// Network faults between clients and server; `None` for a reliable
    /// network.
    pub faults: Option<Faults>,
}

/// An unreliable network between the clients and the server, in both
/// directions. Parsed from `loss=P,duplicate=P,delay=P,reorder` (any subset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Faults {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Probability that a message is held back until its stage's deadline
    /// has passed (it then arrives late).
    pub delay: f64,
    /// Deliver each stage's messages in a random order.
    pub reorder: bool,
}

/// A `--faults` string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "faults {0}: expected a comma-separated list of loss=P, duplicate=P, delay=P (P in [0, 1]) and reorder"
)]
pub struct ParseFaultsError(String);

impl std::str::FromStr for Faults {
    type Err = ParseFaultsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut faults = Faults::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "reorder" {
                faults.reorder = true;
                continue;
            }
            let bad = || ParseFaultsError(format!("{item:?}"));
            let (name, value) = item.split_once('=').ok_or_else(bad)?;
            let p: f64 = value.trim().parse().map_err(|_| bad())?;
            if !(0.0..=1.0).contains(&p) {
                return Err(bad());
            }
            match name.trim() {
                "loss" => faults.loss = p,
                "duplicate" | "dup" => faults.duplicate = p,
                "delay" => faults.delay = p,
                _ => return Err(bad()),
            }
        }
        Ok(faults)
    }
}

impl Faults {
    /// Sends one message through the faulty network: into `now` (once, or
    /// twice), into `late` (it arrives after its stage's deadline), or
    /// nowhere; `counts` records which.
    fn route<T: Clone, R: Rng>(
        &self,
        message: T,
        rng: &mut R,
        counts: &mut FaultCounts,
        now: &mut Vec<T>,
        late: &mut Vec<T>,
    ) {
        let mut draw = || f64::from(rng.next_u32()) / f64::from(u32::MAX);
        if draw() < self.loss {
            counts.lost += 1;
        } else if draw() < self.delay {
            counts.delayed += 1;
            late.push(message);
        } else if draw() < self.duplicate {
            counts.duplicated += 1;
            now.push(message.clone());
            now.push(message);
        } else {
            now.push(message);
        }
    }
}

/// Counts of what the faulty network did in a round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FaultCounts {
    /// Messages lost.
    pub lost: u64,
    /// Messages delivered twice.
    pub duplicated: u64,
    /// Messages that arrived after their stage's deadline.
    pub delayed: u64,
    /// Messages a session refused (late, doubled, out of place).
    pub refused: u64,
}

/// How a simulated round ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The server produced a sum.
    Completed,
    /// The server aborted.
    Aborted,
}

/// Figures of one simulated round.
#[derive(Clone, Debug, Serialize)]
pub struct RoundReport {
    /// Round number within the run, from 0.
    pub round: u32,
    /// Completed or aborted.
    pub outcome: Outcome,
    /// For an aborted round: the stage and the reason.
    pub abort_stage: Option<Stage>,
    /// For an aborted round: why.
    pub abort_reason: Option<AbortReason>,
    /// True only when the round completed and the unmasked sum equals the
    /// plain sum of the inputs the server accepted, from exactly those
    /// clients.
    pub verified: bool,
    /// Clients whose input is in the sum (0 if aborted).
    pub survivors: u32,
    /// Clients dropped at each stage (by the injected dropouts).
    pub dropped: BTreeMap<Stage, u32>,
    /// Neighbours per client.
    pub k: u32,
    /// Threshold.
    pub t: u32,
    /// Whether the round's parameters give the privacy its threat model
    /// promises against [`SimConfig::corrupt`] colluders
    /// ([`RoundConfig::insecure_reasons`] is empty). A simulator may run
    /// weaker settings for research; they are marked, never silent.
    pub secure: bool,
    /// Why not, one sentence per broken rule (empty when `secure`).
    pub insecure_reasons: Vec<String>,
    /// Wall time of each stage, seconds.
    pub stage_seconds: BTreeMap<Stage, f64>,
    /// Median wall time for one client to mask its input, seconds.
    pub client_mask_seconds_median: f64,
    /// Wall time of the server's unmasking step, seconds.
    pub server_unmask_seconds: f64,
    /// Wall time of the whole round, seconds.
    pub total_seconds: f64,
    /// Mean bytes sent by a client that took part in every stage.
    pub bytes_sent_per_client: f64,
    /// Mean bytes received by such a client.
    pub bytes_received_per_client: f64,
    /// Bytes the server received in all.
    pub server_bytes_received: u64,
    /// Bytes the server sent in all.
    pub server_bytes_sent: u64,
    /// The packed masked vector's size, for comparing overheads.
    pub packed_vector_bytes: u64,
    /// Peak resident memory of the process: `None` from [`run_round`] (the
    /// protocol does no IO); [`plan::round_record`] reads it.
    pub peak_rss_bytes: Option<u64>,
    /// What the faulty network did (all zero without [`SimConfig::faults`]).
    pub faults: FaultCounts,
}

/// Progress of a round, for progress bars.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// The stage being simulated.
    pub stage: Stage,
    /// Clients processed in it so far.
    pub done: u64,
    /// Clients to process in it.
    pub total: u64,
}

/// Why a simulation could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The round parameters are invalid.
    #[error("invalid round configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// A dropout fraction outside [0, 1].
    #[error("dropout fraction for {stage} must be in [0, 1], got {fraction}")]
    DropFraction {
        /// Stage.
        stage: Stage,
        /// The fraction given.
        fraction: f64,
    },
    /// A session refused something an honest party sent: a bug.
    #[error("protocol error between honest parties: {0}")]
    Protocol(String),
}

/// One simulated client: its session, whether it is still in the round, and
/// its traffic.
struct SimClient {
    session: ClientSession,
    alive: bool,
    bytes_sent: u64,
    bytes_received: u64,
    mask_seconds: Option<f64>,
}

impl SimConfig {
    /// The round configuration of round `round` of this run.
    pub fn round_config(&self, round: u32) -> RoundConfig {
        let mut config = RoundConfig::new(round as u64, self.clients, self.dim);
        config.threshold = self.threshold;
        config.graph = self.graph;
        config.graph_seed = derive_seed(self.seed, round, b"graph");
        config.bits = self.bits;
        config.prg = self.prg;
        config.threat_model = self.threat_model;
        config.corrupt = self.corrupt;
        config
    }

    /// The long-term identities of the run's clients (malicious-server
    /// model), the same in every round, and their directory.
    pub fn identities(&self) -> (Vec<IdentityKey>, Arc<IdentityDirectory>) {
        let mut rng = ChaCha20Rng::from_seed(derive_seed(self.seed, 0, b"identities"));
        let keys: Vec<IdentityKey> = (0..self.clients)
            .map(|_| IdentityKey::generate(&mut rng))
            .collect();
        let directory = IdentityDirectory::new(keys.iter().map(|k| k.verifying_key()).collect())
            .expect("fresh identities are distinct");
        (keys, Arc::new(directory))
    }
}

fn derive_seed(seed: u64, round: u32, label: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"tessera/v1/sim");
    h.update(seed.to_le_bytes());
    h.update(round.to_le_bytes());
    h.update(label);
    h.finalize().into()
}

/// The simulated input of `client` in `round`: uniform values mod 2^bits
/// from a seeded generator (inputs are data, not secrets, so a fast
/// reduced-round ChaCha is fine here).
pub fn client_input(seed: u64, round: u32, client: ClientId, dim: u32, bits: u8) -> Vec<u32> {
    let mut key = derive_seed(seed, round, b"input");
    key[..4].copy_from_slice(&client.0.to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    let mask = value_mask(bits);
    (0..dim).map(|_| rng.next_u32() & mask).collect()
}

/// Runs one round and reports its figures.
pub fn run_round(
    sim: &SimConfig,
    round: u32,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<RoundReport, SimError> {
    check_drop_fractions(sim)?;
    let mut run = RoundRun::set_up(sim, round)?;
    for stage in run.stages() {
        let stage_start = Instant::now();
        if stage != Stage::AdvertiseKeys {
            run.deliver_to_clients()?;
        }
        let senders = run.inject_dropouts(stage);
        run.collect_from_clients(stage, senders, progress)?;
        run.close_stage(stage);
        run.report
            .stage_seconds
            .insert(stage, stage_start.elapsed().as_secs_f64());
        if run.handle_server_events() {
            break;
        }
    }
    Ok(run.finish())
}

/// Refuses a dropout fraction outside [0, 1].
fn check_drop_fractions(sim: &SimConfig) -> Result<(), SimError> {
    for (stage, fraction) in &sim.drops {
        if !(0.0..=1.0).contains(fraction) {
            return Err(SimError::DropFraction {
                stage: *stage,
                fraction: *fraction,
            });
        }
    }
    Ok(())
}

/// The state of one simulated round: the server, the clients, the network
/// between them, virtual time and the report being filled in.
struct RoundRun<'a> {
    sim: &'a SimConfig,
    round: u32,
    config: RoundConfig,
    /// When the round started; virtual time: the protocol sees
    /// `base + virtual_offset`.
    base: Instant,
    virtual_offset: Duration,
    report: RoundReport,
    network: Network,
    drop_rng: ChaCha20Rng,
    server: SimServer,
    clients: Vec<SimClient>,
}

/// The (possibly faulty) network between the clients and the server.
struct Network {
    faults: Option<Faults>,
    rng: ChaCha20Rng,
    /// Server messages held back to the next stage, by recipient.
    late_to_clients: Vec<Vec<Vec<u8>>>,
    /// Client messages held back past their stage's deadline.
    late_to_server: Vec<(ClientId, Vec<u8>)>,
}

/// The server's session, with the plain sum of the inputs it accepted.
struct SimServer {
    session: ServerSession,
    plain_sum: Mutex<Vec<u32>>,
    accepted: Vec<ClientId>,
    seed: u64,
    round: u32,
    dim: u32,
    bits: u8,
}

impl<'a> RoundRun<'a> {
    /// Validates the round's configuration, starts the clock, the server
    /// and the clients.
    fn set_up(sim: &'a SimConfig, round: u32) -> Result<Self, SimError> {
        let config = sim.round_config(round);
        config.validate()?;
        let insecure_reasons: Vec<String> = config
            .insecure_reasons()
            .iter()
            .map(ToString::to_string)
            .collect();
        let graph = config.neighbour_graph()?;
        let base = Instant::now();
        let report = new_report(round, &config, &graph, insecure_reasons);
        let network = Network {
            faults: sim.faults,
            rng: ChaCha20Rng::from_seed(derive_seed(sim.seed, round, b"faults")),
            late_to_clients: Vec::new(),
            late_to_server: Vec::new(),
        };
        let identities = config.is_signed().then(|| sim.identities());
        let session = start_server(&config, &graph, identities.as_ref(), base)?;
        let clients = start_clients(sim, round, &config, &graph, identities.as_ref(), base);
        Ok(RoundRun {
            sim,
            round,
            base,
            virtual_offset: Duration::ZERO,
            report,
            network,
            drop_rng: ChaCha20Rng::from_seed(derive_seed(sim.seed, round, b"drops")),
            server: SimServer {
                session,
                plain_sum: Mutex::new(vec![0u32; config.dim as usize]),
                accepted: Vec::new(),
                seed: sim.seed,
                round,
                dim: config.dim,
                bits: config.bits,
            },
            clients,
            config,
        })
    }

    /// The round's stages, ConsistencyCheck only when the round has it.
    fn stages(&self) -> Vec<Stage> {
        Stage::ALL
            .into_iter()
            .filter(|s| *s != Stage::ConsistencyCheck || self.config.has_consistency_check())
            .collect()
    }

    /// The protocol's time.
    fn now(&self) -> Instant {
        self.base + self.virtual_offset
    }

    /// Delivers what the server sent at the end of the previous stage.
    fn deliver_to_clients(&mut self) -> Result<(), SimError> {
        let inbox = self.route_server_messages();
        let now = self.now();
        let strict = self.sim.faults.is_none();
        let refused = deliver_inbox(&mut self.clients, inbox, now, strict)?;
        self.report.faults.refused += refused;
        Ok(())
    }

    /// Each client's deliveries in order: with faults, what the network held
    /// back last stage comes first.
    fn route_server_messages(&mut self) -> Vec<Vec<Vec<u8>>> {
        let n = self.config.num_clients as usize;
        let network = &mut self.network;
        let mut inbox: Vec<Vec<Vec<u8>>> = if network.late_to_clients.is_empty() {
            vec![Vec::new(); n]
        } else {
            std::mem::take(&mut network.late_to_clients)
        };
        network.late_to_clients = vec![Vec::new(); n];
        while let Some((to, message)) = self.server.session.poll_transmit() {
            let bytes = message.encode();
            self.report.server_bytes_sent += bytes.len() as u64;
            match &network.faults {
                None => inbox[to.index()].push(bytes),
                Some(faults) => faults.route(
                    bytes,
                    &mut network.rng,
                    &mut self.report.faults,
                    &mut inbox[to.index()],
                    &mut network.late_to_clients[to.index()],
                ),
            }
        }
        if network.faults.is_some_and(|f| f.reorder) {
            for deliveries in &mut inbox {
                shuffle(deliveries, &mut network.rng);
            }
        }
        inbox
    }

    /// Injects this stage's dropouts among the clients about to send;
    /// returns how many stay to send.
    fn inject_dropouts(&mut self, stage: Stage) -> u64 {
        let about_to_send: Vec<usize> = self
            .clients
            .iter()
            .enumerate()
            .filter(|(_, c)| c.alive && (c.session.has_transmit() || c.session.is_awaiting_input()))
            .map(|(i, _)| i)
            .collect();
        let fraction = self.sim.drops.get(&stage).copied().unwrap_or(0.0);
        let to_drop = (fraction * about_to_send.len() as f64).round() as usize;
        let mut dropping = about_to_send.clone();
        partial_shuffle(&mut dropping, to_drop, &mut self.drop_rng);
        for &i in &dropping[..to_drop] {
            self.clients[i].alive = false;
        }
        self.report.dropped.insert(stage, to_drop as u32);
        (about_to_send.len() - to_drop) as u64
    }

    /// Clients that stay send their message; the server takes each as it
    /// arrives. Masked inputs are large, so they stream through a bounded
    /// channel while other clients are still masking. With faults, the
    /// stage's messages are buffered and go through the network afterwards.
    fn collect_from_clients(
        &mut self,
        stage: Stage,
        total: u64,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<(), SimError> {
        let now = self.now();
        let (tx, rx) = sync_channel::<(ClientId, Vec<u8>)>(32);
        let mut server_error = None;
        let mut buffered = Vec::new();
        let faulty = self.sim.faults.is_some();
        let sender = StageSender {
            sim: self.sim,
            round: self.round,
            config: &self.config,
            stage,
            total,
            done: std::sync::atomic::AtomicU64::new(0),
            progress,
        };
        let clients = &mut self.clients;
        let server = &mut self.server;
        let report = &mut self.report;
        std::thread::scope(|scope| {
            let sender = &sender;
            let producer = scope.spawn(move || sender.send_all(clients, tx));
            for (from, bytes) in rx {
                report.server_bytes_received += bytes.len() as u64;
                if faulty {
                    buffered.push((from, bytes));
                    continue;
                }
                if let Err(e) = server.take(now, from, &bytes) {
                    server_error = Some(e);
                }
            }
            producer.join().expect("client workers do not panic");
        });
        if let Some(faults) = self.sim.faults {
            self.deliver_through_faults(faults, buffered, now);
        }
        match server_error {
            Some(e) => Err(SimError::Protocol(e)),
            None => Ok(()),
        }
    }

    /// Applies the faults to a stage's buffered client messages and hands
    /// the server those delivered in time; refusals are counted.
    fn deliver_through_faults(
        &mut self,
        faults: Faults,
        mut buffered: Vec<(ClientId, Vec<u8>)>,
        now: Instant,
    ) {
        // Arrival order on rayon is not reproducible; the faults are
        // applied in client order, then shuffled, from the seed.
        buffered.sort_by_key(|(from, _)| *from);
        let mut deliveries = Vec::with_capacity(buffered.len());
        for message in buffered {
            faults.route(
                message,
                &mut self.network.rng,
                &mut self.report.faults,
                &mut deliveries,
                &mut self.network.late_to_server,
            );
        }
        if faults.reorder {
            shuffle(&mut deliveries, &mut self.network.rng);
        }
        for (from, bytes) in deliveries {
            if self.server.take(now, from, &bytes).is_err() {
                self.report.faults.refused += 1;
            }
        }
    }

    /// Ends the stage: dropped clients never answer, so the clock jumps to
    /// the deadline; then the messages the network held back arrive, late.
    fn close_stage(&mut self, stage: Stage) {
        if self.server.session.stage() == Some(stage) {
            let deadline = self
                .server
                .session
                .poll_timeout()
                .expect("an open stage has a deadline");
            self.virtual_offset = deadline.duration_since(self.base);
            self.server.session.handle_timeout(deadline);
        }
        let now = self.now();
        for (from, bytes) in self.network.late_to_server.drain(..) {
            if self.server.take(now, from, &bytes).is_err() {
                self.report.faults.refused += 1;
            }
        }
    }

    /// Acts on the server's events: unmasks when it is ready, records an
    /// abort or checks a completed sum. Returns whether the round is over.
    fn handle_server_events(&mut self) -> bool {
        let mut finished = false;
        while let Some(event) = self.server.session.poll_event() {
            match event {
                ServerEvent::Aborted { stage, reason, .. } => {
                    self.report.abort_stage = Some(stage);
                    self.report.abort_reason = Some(reason);
                    finished = true;
                }
                ServerEvent::UnmaskingReady => self.unmask(),
                ServerEvent::Completed(output) => {
                    self.verify(&output);
                    finished = true;
                }
                _ => {}
            }
        }
        finished
    }

    /// Runs the server's unmasking step, timed.
    fn unmask(&mut self) {
        let started = Instant::now();
        self.server.session.unmask();
        let report = &mut self.report;
        report.server_unmask_seconds = started.elapsed().as_secs_f64();
        *report.stage_seconds.entry(Stage::Unmasking).or_default() += report.server_unmask_seconds;
    }

    /// Records a completed round; it is verified when its contributors are
    /// exactly the clients whose input the server accepted and its sum is
    /// their plain sum.
    fn verify(&mut self, output: &crate::server::RoundOutput) {
        let report = &mut self.report;
        report.outcome = Outcome::Completed;
        report.survivors = output.contributors.len() as u32;
        self.server.accepted.sort_unstable();
        let expected = self
            .server
            .plain_sum
            .lock()
            .expect("no panics hold the lock");
        let mask = value_mask(self.config.bits);
        report.verified = output.contributors == self.server.accepted
            && output.sum.len() == expected.len()
            && output
                .sum
                .iter()
                .zip(expected.iter())
                .all(|(a, b)| *a == (*b & mask));
    }

    /// Fills in the per-client figures and the round's total time.
    fn finish(mut self) -> RoundReport {
        let clients = &self.clients;
        let report = &mut self.report;
        let mut mask_times: Vec<f64> = clients.iter().filter_map(|c| c.mask_seconds).collect();
        mask_times.sort_by(f64::total_cmp);
        report.client_mask_seconds_median =
            mask_times.get(mask_times.len() / 2).copied().unwrap_or(0.0);
        let full: Vec<&SimClient> = clients
            .iter()
            .filter(|c| c.alive && c.session.is_closed() && c.mask_seconds.is_some())
            .collect();
        if !full.is_empty() {
            report.bytes_sent_per_client =
                full.iter().map(|c| c.bytes_sent as f64).sum::<f64>() / full.len() as f64;
            report.bytes_received_per_client =
                full.iter().map(|c| c.bytes_received as f64).sum::<f64>() / full.len() as f64;
        }
        report.total_seconds = self.base.elapsed().as_secs_f64();
        self.report
    }
}

/// The report of a round before it runs: its parameters, and an abort until
/// the server says otherwise.
fn new_report(
    round: u32,
    config: &RoundConfig,
    graph: &crate::graph::NeighbourGraph,
    insecure_reasons: Vec<String>,
) -> RoundReport {
    RoundReport {
        round,
        outcome: Outcome::Aborted,
        abort_stage: None,
        abort_reason: None,
        verified: false,
        survivors: 0,
        dropped: BTreeMap::new(),
        k: graph.degree(),
        t: config.threshold,
        secure: insecure_reasons.is_empty(),
        insecure_reasons,
        stage_seconds: BTreeMap::new(),
        client_mask_seconds_median: 0.0,
        server_unmask_seconds: 0.0,
        total_seconds: 0.0,
        bytes_sent_per_client: 0.0,
        bytes_received_per_client: 0.0,
        server_bytes_received: 0,
        server_bytes_sent: 0,
        packed_vector_bytes: crate::packing::packed_len(config.dim as usize, config.bits) as u64,
        peak_rss_bytes: None,
        faults: FaultCounts::default(),
    }
}

/// The clients' identity keys and their directory, in a signed round.
type Identities = (Vec<IdentityKey>, Arc<IdentityDirectory>);

/// The server's session, with the clients' identities in a signed round.
fn start_server(
    config: &RoundConfig,
    graph: &crate::graph::NeighbourGraph,
    identities: Option<&Identities>,
    base: Instant,
) -> Result<ServerSession, SimError> {
    Ok(match identities {
        Some((_, directory)) => ServerSession::with_identities(
            config.clone(),
            graph.clone(),
            Arc::clone(directory),
            base,
        )
        .map_err(|e| SimError::Protocol(e.to_string()))?,
        None => ServerSession::with_graph(config.clone(), graph.clone(), base),
    })
}

/// One session per invited client, each with its own generator seeded from
/// the run's seed.
fn start_clients(
    sim: &SimConfig,
    round: u32,
    config: &RoundConfig,
    graph: &crate::graph::NeighbourGraph,
    identities: Option<&Identities>,
    base: Instant,
) -> Vec<SimClient> {
    let mut seed_rng = ChaCha20Rng::from_seed(derive_seed(sim.seed, round, b"clients"));
    let client_seeds: Vec<[u8; 32]> = (0..config.num_clients)
        .map(|_| {
            let mut s = [0u8; 32];
            seed_rng.fill_bytes(&mut s);
            s
        })
        .collect();
    client_seeds
        .into_par_iter()
        .enumerate()
        .map(|(i, seed)| {
            let mut rng = ChaCha20Rng::from_seed(seed);
            let id = ClientId(i as u32);
            let session = match identities {
                Some((keys, directory)) => ClientSession::with_identity(
                    config.clone(),
                    graph,
                    id,
                    ClientIdentity {
                        key: keys[i].clone(),
                        directory: Arc::clone(directory),
                    },
                    base,
                    &mut rng,
                ),
                None => ClientSession::with_graph(config.clone(), graph, id, base, &mut rng),
            }
            .expect("configuration validated above");
            SimClient {
                session,
                alive: true,
                bytes_sent: 0,
                bytes_received: 0,
                mask_seconds: None,
            }
        })
        .collect()
}

/// Hands each client its deliveries, in parallel; a client that dropped
/// reads no more. Returns how many messages the sessions refused, which is
/// an error between honest parties unless the network is faulty
/// (`strict` false).
fn deliver_inbox(
    clients: &mut [SimClient],
    inbox: Vec<Vec<Vec<u8>>>,
    now: Instant,
    strict: bool,
) -> Result<u64, SimError> {
    let refused = std::sync::atomic::AtomicU64::new(0);
    clients
        .par_iter_mut()
        .zip(inbox.into_par_iter())
        .try_for_each(|(client, deliveries)| {
            for bytes in deliveries {
                if !client.alive {
                    return Ok(());
                }
                client.bytes_received += bytes.len() as u64;
                let message = ServerMessage::decode(&bytes)
                    .map_err(|e| SimError::Protocol(format!("server message: {e}")))?;
                if let Err(e) = client.session.handle_message(now, message) {
                    if strict {
                        return Err(SimError::Protocol(format!("{}: {e}", client.session.id())));
                    }
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Ok(())
        })?;
    Ok(refused.into_inner())
}

/// The clients' side of one stage: each client still in the round masks its
/// input if asked, sends its message, and progress is reported.
struct StageSender<'a> {
    sim: &'a SimConfig,
    round: u32,
    config: &'a RoundConfig,
    stage: Stage,
    /// Clients sending in this stage.
    total: u64,
    /// Clients done so far.
    done: std::sync::atomic::AtomicU64,
    progress: &'a (dyn Fn(Progress) + Sync),
}

impl StageSender<'_> {
    /// Every client still in the round sends, in parallel, into `tx`.
    fn send_all(&self, clients: &mut [SimClient], tx: SyncSender<(ClientId, Vec<u8>)>) {
        clients
            .par_iter_mut()
            .for_each_with(tx, |tx, client| self.send(client, tx));
    }

    /// One client's turn; it stops if the server side has hung up.
    fn send(&self, client: &mut SimClient, tx: &SyncSender<(ClientId, Vec<u8>)>) {
        if !client.alive {
            return;
        }
        if client.session.is_awaiting_input() {
            self.mask_input(client);
        }
        while let Some(message) = client.session.poll_transmit() {
            let bytes = message.encode();
            client.bytes_sent += bytes.len() as u64;
            if tx.send((client.session.id(), bytes)).is_err() {
                return;
            }
        }
        while client.session.poll_event().is_some() {}
        let d = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if d.is_multiple_of(64) || d == self.total {
            (self.progress)(Progress {
                stage: self.stage,
                done: d,
                total: self.total,
            });
        }
    }

    /// Gives the client its input, timing the masking (not the input's
    /// generation).
    fn mask_input(&self, client: &mut SimClient) {
        let id = client.session.id();
        let (dim, bits) = (self.config.dim, self.config.bits);
        let input = client_input(self.sim.seed, self.round, id, dim, bits);
        let started = Instant::now();
        let needed = matches!(client.session.poll_event(), Some(ClientEvent::InputNeeded));
        debug_assert!(needed, "the session asks for its input");
        client
            .session
            .submit_input(input)
            .expect("input has the round's shape");
        client.mask_seconds = Some(started.elapsed().as_secs_f64());
    }
}

impl SimServer {
    /// Hands one client message to the server; a masked input it accepts is
    /// added to the plain sum the round is checked against.
    fn take(&mut self, now: Instant, from: ClientId, bytes: &[u8]) -> Result<(), String> {
        let message = ClientMessage::decode(bytes).map_err(|e| format!("{from}: {e}"))?;
        let stage = message.body.stage();
        self.session
            .handle_message(now, from, message)
            .map_err(|e| e.to_string())?;
        if stage == Stage::MaskedInput {
            self.accepted.push(from);
            let input = client_input(self.seed, self.round, from, self.dim, self.bits);
            let mut sum = self.plain_sum.lock().expect("no panics hold the lock");
            for (acc, v) in sum.iter_mut().zip(input) {
                *acc = acc.wrapping_add(v);
            }
        }
        Ok(())
    }
}

/// A uniform shuffle (Fisher-Yates).
fn shuffle<T, R: Rng>(items: &mut [T], rng: &mut R) {
    let len = items.len();
    partial_shuffle(items, len, rng);
}

/// Moves `count` uniformly chosen items to the front (Fisher-Yates, stopped
/// early).
fn partial_shuffle<T, R: Rng>(items: &mut [T], count: usize, rng: &mut R) {
    for i in 0..count.min(items.len()) {
        let j = i + crate::graph::uniform_below(rng, (items.len() - i) as u32) as usize;
        items.swap(i, j);
    }
}
