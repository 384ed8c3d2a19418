//! The server side of a round, as a state machine with no IO.
//!
//! A [`ServerSession`] follows quinn-proto's contract. The driver calls, in a
//! loop:
//! - [`ServerSession::handle_message`] with each client message (the driver
//!   knows which client sent it: the transport authenticates clients);
//! - [`ServerSession::handle_timeout`] once [`ServerSession::poll_timeout`]'s
//!   instant has passed;
//! - [`ServerSession::poll_transmit`] until it returns `None`, sending each
//!   message to its client;
//! - [`ServerSession::poll_event`]; on [`ServerEvent::UnmaskingReady`] it
//!   calls [`ServerSession::unmask`], the one heavy step (Shamir
//!   reconstruction, key agreement and mask expansion on rayon), which an
//!   async driver runs on a blocking thread.
//!
//! A stage closes when every client still in the round has answered, or when
//! its deadline passes; if fewer than t clients made it, the round aborts and
//! the server has learnt nothing (the running sum of masked inputs is
//! discarded without ever being unmasked). The server's memory is O(d + n k):
//! masked inputs are added into one running sum as they arrive.
//!
//! A client that sends a malformed or out-of-place message gets a precise
//! [`ServerSessionError`] and is dropped from the round; the round goes on for the
//! others. The same holds for what only a peer can see: an advert with
//! unusable keys is refused at AdvertiseKeys (`advertise_keys`), and a share
//! bundle that does not open is proven by its receiver's accusation and its
//! sender evicted ([`crate::accusation`]); such an eviction of a client other
//! than the message's sender is reported as [`ServerEvent::Evicted`], so
//! the driver can tell that client and log who did what.
//!
//! Accusations are proven in a step of their own (`reveal`), in semi-honest
//! rounds: when the masked input stage closes, and before any client is
//! told who survived, the server picks the accusers it may ask for their
//! share keys within the threshold's exposure margin
//! ([`ServerEvent::RevealRequested`]), sends each a
//! [`ServerBody::RevealShareKeyRequest`], and waits for their answers up to
//! one stage deadline. [`ServerSession::stage`] still reports
//! [`Stage::MaskedInput`] during that step.

mod advertise_keys;
mod consistency_check;
mod masked_input;
mod reveal;
mod roster;
mod share_keys;
mod unmasking;

use std::collections::VecDeque;
use std::time::Instant;

use crate::accusation::{Accusation, BadBundle};
use crate::config::{ConfigError, RoundConfig};
use crate::graph::NeighbourGraph;
use crate::identity::{IdentityDirectory, SessionDigest};
use crate::messages::{AbortReason, ClientBody, ClientMessage, ServerBody, ServerMessage};
use crate::{ClientId, Stage};

use masked_input::Verdict;
use roster::{Progress, Roster};
pub use unmasking::RoundOutput;

/// Proof that a stage closed with at least t clients. Only
/// [`ThresholdMet::check`] makes one, and every transition to a later stage
/// takes one, so "go on below the threshold" cannot be written.
#[derive(Debug, Clone, Copy)]
struct ThresholdMet {
    survivors: u32,
}

impl ThresholdMet {
    fn check(survivors: u32, threshold: u32) -> Result<Self, AbortReason> {
        if survivors >= threshold {
            Ok(ThresholdMet { survivors })
        } else {
            Err(AbortReason::BelowThreshold)
        }
    }
}

/// The server's side of one round.
pub struct ServerSession {
    config: RoundConfig,
    graph: NeighbourGraph,
    /// Malicious-server model: the identities to check signatures with.
    identities: Option<std::sync::Arc<IdentityDirectory>>,
    /// With `identities`: the session hash every advert signs.
    session_digest: Option<SessionDigest>,
    /// With `identities`: the session's transcript hash, fixed when the
    /// AdvertiseKeys stage closes; every survivor-set signature signs it.
    transcript: Option<SessionDigest>,
    /// Malicious-server model: the round's survivor set, fixed when the
    /// masked input stage closes; every client signs it.
    survivor_set: Vec<ClientId>,
    roster: Roster,
    state: State,
    broadcast: Option<Broadcast>,
    events: VecDeque<ServerEvent>,
    deadline: Option<Instant>,
    /// Clients still expected to send in the current stage.
    pending: u32,
    /// Who revealed its share key, and how exposed each client's shares are.
    exposure: Exposure,
}

/// The shares exposed by accusations: every accuser that revealed its
/// share-encryption key exposed each share it holds, so it counts as a
/// colluder for the clients whose holder it is ([`crate::accusation`]).
#[derive(Debug)]
struct Exposure {
    /// For each client, how many of its share holders revealed their key.
    holders_exposed: Vec<u32>,
    /// [`crate::params::exposure_margin`], computed at the first reveal
    /// (`Some(None)`: the threshold affords none).
    margin: Option<Option<u32>>,
}

impl Exposure {
    fn new(n: usize) -> Self {
        Exposure {
            holders_exposed: vec![0; n],
            margin: None,
        }
    }

    /// Records that `accuser` revealed its key; returns whether every
    /// client's exposed holders are still within the margin.
    fn reveal(&mut self, config: &RoundConfig, graph: &NeighbourGraph, accuser: ClientId) -> bool {
        // Its neighbours are the clients whose shares it holds.
        for v in graph.neighbours(accuser.0) {
            self.holders_exposed[v as usize] += 1;
        }
        let margin = self.margin(config);
        let worst = self.holders_exposed.iter().copied().max().unwrap_or(0);
        margin.is_some_and(|margin| worst <= margin)
    }

    /// Counts `accuser` as exposed, and returns true, only if that keeps
    /// every client within the margin: the check made before asking an
    /// accuser for its key, never after seeing one.
    fn try_ask(&mut self, config: &RoundConfig, graph: &NeighbourGraph, accuser: ClientId) -> bool {
        let Some(margin) = self.margin(config) else {
            return false;
        };
        let holds = graph.neighbours(accuser.0);
        if holds
            .iter()
            .any(|&v| self.holders_exposed[v as usize] + 1 > margin)
        {
            return false;
        }
        for v in holds {
            self.holders_exposed[v as usize] += 1;
        }
        true
    }

    /// [`crate::params::exposure_margin`] for the round, computed once.
    fn margin(&mut self, config: &RoundConfig) -> Option<u32> {
        *self.margin.get_or_insert_with(|| {
            crate::params::exposure_margin(
                config.threat_model,
                config.num_clients,
                config.corrupt,
                config.graph,
                config.threshold,
            )
        })
    }
}

impl std::fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSession")
            .field("round_id", &self.config.round_id)
            .field("state", &self.state.name())
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

enum State {
    AdvertiseKeys,
    ShareKeys(share_keys::ShareKeys),
    MaskedInput(masked_input::MaskedInput),
    /// The masked input stage has closed; the accusers asked for their
    /// share keys have until the deadline to answer.
    RevealShareKeys(reveal::RevealShareKeys),
    ConsistencyCheck(consistency_check::ConsistencyCheck),
    Unmasking(unmasking::Unmasking),
    UnmaskingReady(unmasking::UnmaskingReady),
    Completed,
    Aborted(AbortReason),
    /// The placeholder left in the session while [`State::step`] runs.
    /// Nothing can read it then (the step gets the state, not the session);
    /// it stays only if a step panicked (a bug, or rayon re-raising a panic
    /// from unmasking). A session caught after such a panic then reports no
    /// stage and refuses every message as over, rather than pass for a
    /// stage whose data is gone.
    Transitioning,
}

impl State {
    /// Runs one transition in place: moves the state out of `slot`, hands
    /// it to `step` by value and stores the state `step` gives back, on
    /// every outcome (an error path gives back `Aborted`, or the state it
    /// was handed). This is the only place the state is moved out.
    fn step<R>(slot: &mut State, step: impl FnOnce(State) -> (State, R)) -> R {
        let (next, out) = step(std::mem::replace(slot, State::Transitioning));
        *slot = next;
        out
    }

    /// The state that follows this one once its stage closed with `met`,
    /// and the broadcast that opens it; an error aborts the round (dropping
    /// this state discards what it collected).
    fn close(
        self,
        met: ThresholdMet,
        config: &RoundConfig,
        graph: &NeighbourGraph,
        roster: &Roster,
    ) -> Result<(State, Option<BroadcastKind>), AbortReason> {
        let n = config.num_clients;
        Ok(match self {
            State::AdvertiseKeys => (
                State::ShareKeys(share_keys::ShareKeys::new(met, n)),
                Some(BroadcastKind::NeighbourKeys),
            ),
            State::ShareKeys(state) => (
                State::MaskedInput(state.into_masked_input(met, config.dim)),
                Some(BroadcastKind::SealedShares),
            ),
            State::MaskedInput(state) if config.has_consistency_check() => (
                State::ConsistencyCheck(state.into_consistency_check(met)),
                Some(BroadcastKind::ConsistencyCheck),
            ),
            State::MaskedInput(state) => (
                State::Unmasking(state.into_unmasking(met, n)),
                Some(BroadcastKind::UnmaskRequest),
            ),
            State::ConsistencyCheck(state) => (
                State::Unmasking(state.into_unmasking(met, n)),
                Some(BroadcastKind::UnmaskRequest),
            ),
            State::Unmasking(state) => (
                State::UnmaskingReady(state.into_ready(met, graph, roster, config.threshold)?),
                None,
            ),
            other => (other, None),
        })
    }

    fn name(&self) -> &'static str {
        match self {
            State::AdvertiseKeys => "advertise-keys",
            State::ShareKeys(_) => "share-keys",
            State::MaskedInput(_) => "masked-input",
            State::RevealShareKeys(_) => "reveal-share-keys",
            State::ConsistencyCheck(_) => "consistency-check",
            State::Unmasking(_) => "unmasking",
            State::UnmaskingReady(_) => "unmasking-ready",
            State::Completed => "completed",
            State::Aborted(_) => "aborted",
            State::Transitioning => "transitioning",
        }
    }

    fn stage(&self) -> Option<Stage> {
        match self {
            State::AdvertiseKeys => Some(Stage::AdvertiseKeys),
            State::ShareKeys(_) => Some(Stage::ShareKeys),
            // The reveal step closes the masked input stage's business.
            State::MaskedInput(_) | State::RevealShareKeys(_) => Some(Stage::MaskedInput),
            State::ConsistencyCheck(_) => Some(Stage::ConsistencyCheck),
            State::Unmasking(_) => Some(Stage::Unmasking),
            _ => None,
        }
    }
}

/// A message to every client at some step of its progress, built one at a time in
/// [`ServerSession::poll_transmit`] so the server never holds n copies of
/// the neighbour keys or share bundles.
#[derive(Debug)]
struct Broadcast {
    kind: BroadcastKind,
    /// Next client index to consider.
    next: u32,
}

#[derive(Debug, Clone, Copy)]
enum BroadcastKind {
    NeighbourKeys,
    SealedShares,
    /// To the asked accusers, not by progress.
    RevealRequest,
    ConsistencyCheck,
    UnmaskRequest,
    Aborted(AbortReason),
}

/// Something the driver of a server session should know about.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A stage closed with enough clients; the next one has started.
    StageCompleted {
        /// The stage that closed.
        stage: Stage,
        /// Clients that completed it.
        survivors: u32,
        /// Clients that were expected in it but did not complete it.
        dropped: u32,
    },
    /// Every share is in: call [`ServerSession::unmask`] (on a blocking
    /// thread in an async driver).
    UnmaskingReady,
    /// The round produced its sum.
    Completed(RoundOutput),
    /// A client was evicted because of what another client proved about
    /// it (a share bundle its receiver showed does not open). The sender of
    /// a bad message learns of its own eviction from
    /// [`ServerSession::handle_message`]'s error instead; this event is for
    /// clients that sent nothing wrong in that call.
    Evicted {
        /// Who was evicted.
        client: ClientId,
        /// What it did.
        violation: ClientViolation,
    },
    /// A client accused neighbours of sealing share bundles for it that do
    /// not open, and left the round without an input (`proven: false`, as
    /// it arrives without a key); or its accusation was proven by its share
    /// key (`proven: true`).
    Accused {
        /// Who accused.
        accuser: ClientId,
        /// The senders it accused (each proven one also gets an
        /// [`ServerEvent::Evicted`]).
        accused: Vec<ClientId>,
        /// Whether the accuser revealed its share key and every accused
        /// bundle failed under it. An accusation that stays unproven
        /// ([`ServerEvent::AccusationUnproven`]) evicts nobody.
        proven: bool,
    },
    /// The masked input stage closed and the server asks this accuser for
    /// its share key, to judge its accusation of `senders`.
    RevealRequested {
        /// Who is asked.
        accuser: ClientId,
        /// The senders the request names.
        senders: Vec<ClientId>,
    },
    /// An accusation that will not be proven: the accuser is out of the
    /// round, and nobody is evicted for it.
    AccusationUnproven {
        /// Who accused.
        accuser: ClientId,
        /// The senders it accused.
        accused: Vec<ClientId>,
        /// Why it stays unproven.
        reason: Unproven,
    },
    /// The reveal step ended (every asked accuser answered or left, or its
    /// deadline passed); the round goes on to tell the survivors.
    RevealStepCompleted {
        /// Accusers asked for their keys.
        asked: u32,
        /// Of them, those whose key arrived.
        answered: u32,
    },
    /// The round ended without a result; nothing was unmasked.
    Aborted {
        /// The stage in which it ended.
        stage: Stage,
        /// Why.
        reason: AbortReason,
        /// Clients that completed the stage.
        survivors: u32,
    },
}

/// Why an accusation stays unproven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unproven {
    /// The round's threat model lets the server deviate, so no client
    /// reveals its key ([`crate::accusation`]).
    ThreatModel,
    /// Asking this accuser too would expose more of some client's share
    /// holders than the threshold's margin tolerates.
    Margin,
    /// Asked, it did not answer before the reveal step's deadline.
    NoAnswer,
}

impl std::fmt::Display for Unproven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unproven::ThreatModel => "the threat model keeps share keys with the clients",
            Unproven::Margin => {
                "asking for its share key would expose more shares than the threshold's margin tolerates"
            }
            Unproven::NoAnswer => "it did not reveal its share key before the deadline",
        })
    }
}

/// A client message the server refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerSessionError {
    /// The client broke the protocol and has been dropped from the round.
    #[error("{client} broke the protocol and was dropped from the round: {violation}")]
    ClientMisbehaved {
        /// Who.
        client: ClientId,
        /// What it did.
        violation: ClientViolation,
    },
    /// A message for another round (stale or replayed); ignored.
    #[error("{client} sent a message for round {got}, this is round {expected}")]
    WrongRound {
        /// Who.
        client: ClientId,
        /// This round.
        expected: u64,
        /// The message's round.
        got: u64,
    },
    /// The sender is not one of the round's clients.
    #[error("{client} is not in this round of {n} clients")]
    UnknownClient {
        /// The id claimed.
        client: ClientId,
        /// Clients in the round.
        n: u32,
    },
    /// The message's stage has closed; the client was counted as dropped.
    #[error("{client} sent a {stage} message after that stage closed")]
    Late {
        /// Who.
        client: ClientId,
        /// The stage of the message.
        stage: Stage,
    },
    /// The client dropped out (or was dropped) in an earlier stage.
    #[error("{client} is no longer part of this round")]
    NotInRound {
        /// Who.
        client: ClientId,
    },
    /// The round is over.
    #[error("the round is over ({state})")]
    RoundOver {
        /// Its final state.
        state: &'static str,
    },
    /// The round configuration cannot work.
    #[error("invalid round configuration: {0}")]
    Config(#[from] ConfigError),
    /// The identity directory does not fit the round.
    #[error("identity directory: {0}")]
    Directory(#[from] crate::identity::DirectoryError),
}

/// How a client broke the protocol, as seen by the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientViolation {
    /// A message for a stage that has not started.
    #[error("sent a {got} message during {current}")]
    WrongStage {
        /// The message's stage.
        got: Stage,
        /// The round's stage.
        current: Stage,
    },
    /// A second message for the same stage.
    #[error("sent a second {0} message")]
    Duplicate(Stage),
    /// A share bundle list that does not cover exactly the live neighbours.
    #[error("share bundles must go to exactly the live neighbours, ascending; {0}")]
    Bundles(String),
    /// A masked input of the wrong size.
    #[error("masked input: {0}")]
    MaskedInput(String),
    /// An unmasking response that is not what was asked.
    #[error("unmasking response: {0}")]
    Response(String),
    /// A missing or invalid identity signature (malicious-server model).
    #[error("signature: {0}")]
    Signature(&'static str),
    /// An advert whose keys the round cannot use.
    #[error("advert: {0}")]
    BadAdvert(AdvertProblem),
    /// Proven by the receiver's accusation: a share bundle this client
    /// sealed does not hold the receiver's shares.
    #[error(
        "sealed a share bundle for {receiver} that fails the receiver's check ({problem}), as {receiver} proved by revealing its share key"
    )]
    BadBundle {
        /// The neighbour it was sealed for.
        receiver: ClientId,
        /// What is wrong with it.
        problem: BadBundle,
    },
    /// An accusation whose bundle opens under the revealed key: the accuser
    /// lied.
    #[error(
        "accused {accused} of sealing a bad share bundle, but the bundle opens under the revealed key"
    )]
    FalseAccusation {
        /// The neighbour it accused.
        accused: ClientId,
    },
    /// An accusation that proves nothing: a revealed key that does not
    /// match the advert, or a sender that sealed nothing for the accuser.
    #[error("accusation: {0}")]
    Accusation(String),
}

impl ClientViolation {
    /// Every name [`ClientViolation::reason`] returns, so metrics can
    /// export each series at zero before the first eviction.
    pub const REASONS: [&'static str; 10] = [
        "wrong_stage",
        "duplicate_message",
        "bad_bundle_list",
        "bad_masked_input",
        "bad_unmasking_response",
        "bad_signature",
        "invalid_advert",
        "bad_share_bundle",
        "false_accusation",
        "bad_accusation",
    ];

    /// A short, fixed name for the violation, for metric labels and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ClientViolation::WrongStage { .. } => "wrong_stage",
            ClientViolation::Duplicate(_) => "duplicate_message",
            ClientViolation::Bundles(_) => "bad_bundle_list",
            ClientViolation::MaskedInput(_) => "bad_masked_input",
            ClientViolation::Response(_) => "bad_unmasking_response",
            ClientViolation::Signature(_) => "bad_signature",
            ClientViolation::BadAdvert(_) => "invalid_advert",
            ClientViolation::BadBundle { .. } => "bad_share_bundle",
            ClientViolation::FalseAccusation { .. } => "false_accusation",
            ClientViolation::Accusation(_) => "bad_accusation",
        }
    }
}

/// What is wrong with an advert's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdvertProblem {
    /// `c_pk` equals `s_pk`: one key would serve both key agreements.
    #[error("c_pk equals s_pk")]
    SameKeys,
    /// A low-order X25519 point (such as the all-zero key): every key
    /// agreement with it gives a value the server can predict.
    #[error("{0} is a low-order X25519 point")]
    LowOrder(&'static str),
    /// A key another client of the round already advertised: a copied key
    /// would let its owner open shares sealed for the copier, or mix their
    /// masks.
    #[error("{key} duplicates a key that {other} advertised")]
    Duplicate {
        /// `"c_pk"` or `"s_pk"`.
        key: &'static str,
        /// Who advertised it first.
        other: ClientId,
    },
}

impl ServerSession {
    /// Opens a round at `now`: the AdvertiseKeys stage starts and its
    /// deadline is `now + stage_timeout`.
    pub fn new(config: RoundConfig, now: Instant) -> Result<Self, ServerSessionError> {
        config.validate()?;
        let graph = config.neighbour_graph()?;
        Ok(Self::with_graph(config, graph, now))
    }

    /// Opens a malicious-server round whose clients hold the identities of
    /// `directory` (slot i = client i). The server checks every advert and
    /// survivor-set signature on arrival and drops a client whose signature
    /// fails, so one bad client cannot make its neighbours refuse the round.
    ///
    /// (A server opened without the directory relays signatures unchecked:
    /// the clients still verify them, and refuse the round on a bad one.)
    pub fn with_identities(
        config: RoundConfig,
        graph: NeighbourGraph,
        directory: std::sync::Arc<IdentityDirectory>,
        now: Instant,
    ) -> Result<Self, ServerSessionError> {
        config.validate()?;
        if !config.is_signed() {
            return Err(ConfigError::Unsigned(config.threat_model).into());
        }
        directory.check_size(config.num_clients)?;
        let digest = crate::identity::session_hash(&config, &directory);
        let mut session = Self::with_graph(config, graph, now);
        session.identities = Some(directory);
        session.session_digest = Some(digest);
        Ok(session)
    }

    /// As [`ServerSession::new`] with a graph already built from `config`.
    pub fn with_graph(config: RoundConfig, graph: NeighbourGraph, now: Instant) -> Self {
        let n = config.num_clients as usize;
        ServerSession {
            identities: None,
            session_digest: None,
            transcript: None,
            survivor_set: Vec::new(),
            deadline: Some(now + config.stage_timeout),
            pending: config.num_clients,
            roster: Roster::new(n),
            exposure: Exposure::new(n),
            config,
            graph,
            state: State::AdvertiseKeys,
            broadcast: None,
            events: VecDeque::new(),
        }
    }

    /// The round's configuration.
    pub fn config(&self) -> &RoundConfig {
        &self.config
    }

    /// The neighbour graph of the round.
    pub fn graph(&self) -> &NeighbourGraph {
        &self.graph
    }

    /// The stage in progress, or `None` once the round has ended or is
    /// waiting for [`ServerSession::unmask`].
    pub fn stage(&self) -> Option<Stage> {
        self.state.stage()
    }

    /// True once the round has completed or aborted.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Completed | State::Aborted(_))
    }

    /// Why the round aborted, if it did.
    pub fn abort_reason(&self) -> Option<AbortReason> {
        match self.state {
            State::Aborted(reason) => Some(reason),
            _ => None,
        }
    }

    /// Feeds one message from client `from`.
    pub fn handle_message(
        &mut self,
        now: Instant,
        from: ClientId,
        message: ClientMessage,
    ) -> Result<(), ServerSessionError> {
        if let ClientBody::ShareKeyReveal(reveal) = message.body {
            return self.handle_reveal(now, from, message.round_id, reveal);
        }
        let stage = self.admit(now, from, &message)?;
        if let ClientBody::Accusation(accusation) = message.body {
            return self.handle_accusation(now, from, accusation);
        }
        match self.accept(from, message.body) {
            Ok(()) => {
                self.roster.advance(from, Progress::after(stage));
                self.pending -= 1;
                if self.pending == 0 {
                    self.close_stage(now);
                }
                Ok(())
            }
            Err(violation) => Err(self.misbehaved(now, from, violation)),
        }
    }

    /// Checks that `message` is the one `from` owes the current stage, and
    /// returns that stage. A duplicate or a message ahead of the round drops
    /// the client; a late or stale one is only refused.
    fn admit(
        &mut self,
        now: Instant,
        from: ClientId,
        message: &ClientMessage,
    ) -> Result<Stage, ServerSessionError> {
        if !self.config.contains(from) {
            return Err(ServerSessionError::UnknownClient {
                client: from,
                n: self.config.num_clients,
            });
        }
        if message.round_id != self.config.round_id {
            return Err(ServerSessionError::WrongRound {
                client: from,
                expected: self.config.round_id,
                got: message.round_id,
            });
        }
        let Some(current) = self.state.stage() else {
            return Err(ServerSessionError::RoundOver {
                state: self.state.name(),
            });
        };
        let stage = message.body.stage();
        let Some(progress) = self.roster.active(from) else {
            return Err(ServerSessionError::NotInRound { client: from });
        };
        // During the reveal step the masked input stage is closed to
        // masked inputs and accusations alike.
        let closed = stage == current && matches!(self.state, State::RevealShareKeys(_));
        if stage < current || closed {
            return Err(if progress > Progress::to_enter(stage, &self.config) {
                self.misbehaved(now, from, ClientViolation::Duplicate(stage))
            } else {
                ServerSessionError::Late {
                    client: from,
                    stage,
                }
            });
        }
        if stage > current {
            return Err(self.misbehaved(
                now,
                from,
                ClientViolation::WrongStage {
                    got: stage,
                    current,
                },
            ));
        }
        let required = Progress::to_enter(stage, &self.config);
        if progress > required {
            return Err(self.misbehaved(now, from, ClientViolation::Duplicate(stage)));
        }
        if progress < required {
            return Err(ServerSessionError::NotInRound { client: from });
        }
        Ok(stage)
    }

    /// Hands an admitted message to the current stage.
    fn accept(&mut self, from: ClientId, body: ClientBody) -> Result<(), ClientViolation> {
        match (&mut self.state, body) {
            (State::AdvertiseKeys, ClientBody::AdvertiseKeys(advert)) => advertise_keys::accept(
                &self.config,
                self.identities.as_deref().zip(self.session_digest.as_ref()),
                &mut self.roster,
                from,
                advert,
            ),
            (State::ShareKeys(state), ClientBody::ShareKeys(bundles)) => {
                state.accept(&self.graph, &self.roster, from, bundles)
            }
            (State::MaskedInput(state), ClientBody::MaskedInput(packed)) => {
                state.accept(&self.config, &packed)
            }
            (_, ClientBody::Accusation(_) | ClientBody::ShareKeyReveal(_)) => {
                unreachable!("handle_message hands accusations and reveals on")
            }
            (State::ConsistencyCheck(_), ClientBody::ConsistencyCheck(signature)) => {
                consistency_check::accept(
                    &self.config,
                    self.identities.as_deref().zip(self.transcript.as_ref()),
                    &self.survivor_set,
                    &mut self.roster,
                    from,
                    signature,
                )
            }
            (State::Unmasking(state), ClientBody::Unmasking(response)) => {
                state.accept(&self.graph, &self.roster, from, response)
            }
            _ => unreachable!("admit matched the message's stage to the current one"),
        }
    }

    /// Takes an accusation (the accuser's MaskedInput-stage message). One
    /// without a key is checked (it must name senders whose bundles were
    /// relayed to the accuser) and, in a semi-honest round, kept for the
    /// reveal step. One with a key (the old unasked form) is judged at
    /// once: the key counts against the exposure margin whatever the
    /// verdict; then the proven senders, or a lying accuser, are evicted.
    /// The accuser leaves the round without an input either way.
    fn handle_accusation(
        &mut self,
        now: Instant,
        from: ClientId,
        accusation: Accusation,
    ) -> Result<(), ServerSessionError> {
        let State::MaskedInput(state) = &mut self.state else {
            unreachable!("admit placed the accusation in the masked input stage")
        };
        let judgement = state.judge(&self.config, &self.graph, &self.roster, from, &accusation);
        let keyless = accusation.share_secret.is_none();
        if keyless
            && judgement.verdict.is_ok()
            && crate::accusation::reveals_share_key(self.config.threat_model)
        {
            state.record_accusation(from, accusation.accused.clone());
        }
        let accused = accusation.accused.clone();
        // Dropped (and zeroized) here: the server needs the key no longer.
        drop(accusation);
        if judgement.exposed && !self.exposure.reveal(&self.config, &self.graph, from) {
            // Before any eviction: the accuser, still in the round, learns
            // of the abort with everyone else.
            let survivors = self.roster.count_active(Progress::Masked);
            self.abort(Stage::MaskedInput, AbortReason::Accusations, survivors);
            return Ok(());
        }
        match judgement.verdict {
            Ok(verdict) => {
                let proven = matches!(verdict, Verdict::Proven(_));
                if let Verdict::Proven(senders) = verdict {
                    for (sender, problem) in senders {
                        self.evict_proven(now, sender, from, problem);
                    }
                }
                self.events.push_back(ServerEvent::Accused {
                    accuser: from,
                    accused: accused.clone(),
                    proven,
                });
                if keyless && !crate::accusation::reveals_share_key(self.config.threat_model) {
                    self.events.push_back(ServerEvent::AccusationUnproven {
                        accuser: from,
                        accused,
                        reason: Unproven::ThreatModel,
                    });
                }
                // Last: this may close the stage.
                self.evict(now, from);
                Ok(())
            }
            Err(violation) => Err(self.misbehaved(now, from, violation)),
        }
    }

    /// Judges an asked accuser's share key: the proven senders are evicted,
    /// or the accuser, if a bundle opens under its key (a false
    /// accusation) or the key is not the one it advertised. A key nobody
    /// asked for, or a second one, is refused.
    fn handle_reveal(
        &mut self,
        now: Instant,
        from: ClientId,
        round_id: u64,
        reveal: crate::accusation::ShareKeyReveal,
    ) -> Result<(), ServerSessionError> {
        self.admit_reveal(now, from, round_id)?;
        let State::RevealShareKeys(state) = &mut self.state else {
            unreachable!("admit_reveal checked the reveal step")
        };
        let asked = state.asked_mut(from).expect("admit_reveal found it");
        asked.answer = reveal::Answer::Answered;
        let accusation = Accusation {
            share_secret: Some(reveal.share_secret),
            accused: asked.senders.clone(),
        };
        let judgement =
            state
                .masked
                .judge(&self.config, &self.graph, &self.roster, from, &accusation);
        drop(accusation);
        let result = match judgement.verdict {
            Ok(Verdict::Proven(senders)) => {
                let accused = senders.iter().map(|(sender, _)| *sender).collect();
                for (sender, problem) in senders {
                    self.evict_proven(now, sender, from, problem);
                }
                self.events.push_back(ServerEvent::Accused {
                    accuser: from,
                    accused,
                    proven: true,
                });
                Ok(())
            }
            Ok(Verdict::Unproven) => unreachable!("a reveal carries a key"),
            Err(violation) => Err(ServerSessionError::ClientMisbehaved {
                client: from,
                violation,
            }),
        };
        // Last: this may close the step.
        self.reveal_settled(now);
        result
    }

    /// Checks that `from` may send a share key now: it was asked, in this
    /// round's reveal step, and has not answered.
    fn admit_reveal(
        &mut self,
        now: Instant,
        from: ClientId,
        round_id: u64,
    ) -> Result<(), ServerSessionError> {
        if !self.config.contains(from) {
            return Err(ServerSessionError::UnknownClient {
                client: from,
                n: self.config.num_clients,
            });
        }
        if round_id != self.config.round_id {
            return Err(ServerSessionError::WrongRound {
                client: from,
                expected: self.config.round_id,
                got: round_id,
            });
        }
        let unasked = |what: &str| ClientViolation::Accusation(format!("sent a share key {what}"));
        let answer = match &mut self.state {
            State::RevealShareKeys(state) => state.asked_mut(from).map(|a| a.answer),
            state if state.stage().is_some() => None,
            state => {
                return Err(ServerSessionError::RoundOver {
                    state: state.name(),
                });
            }
        };
        match answer {
            Some(reveal::Answer::Waiting) => Ok(()),
            Some(_) => Err(self.misbehaved(now, from, unasked("a second time"))),
            None => Err(self.misbehaved(now, from, unasked("the server did not ask for"))),
        }
    }

    /// One asked accuser fewer to wait for; the last one closes the step.
    fn reveal_settled(&mut self, now: Instant) {
        self.pending -= 1;
        if self.pending == 0 {
            self.close_stage(now);
        }
    }

    /// Picks, as the masked input stage closes, the accusers to ask for
    /// their keys (ascending, each only if the margin still affords it)
    /// and enters the reveal step; returns false, leaving the state as it
    /// was, when there is nobody to ask.
    fn start_reveals(&mut self, now: Instant) -> bool {
        let State::MaskedInput(state) = &mut self.state else {
            return false;
        };
        let mut asked = Vec::new();
        for (accuser, accused) in state.take_accusations() {
            if self.exposure.try_ask(&self.config, &self.graph, accuser) {
                self.events.push_back(ServerEvent::RevealRequested {
                    accuser,
                    senders: accused.clone(),
                });
                asked.push(reveal::Asked {
                    accuser,
                    senders: accused,
                    answer: reveal::Answer::Waiting,
                });
            } else {
                self.events.push_back(ServerEvent::AccusationUnproven {
                    accuser,
                    accused,
                    reason: Unproven::Margin,
                });
            }
        }
        if asked.is_empty() {
            return false;
        }
        self.pending = asked.len() as u32;
        State::step(&mut self.state, |state| match state {
            State::MaskedInput(masked) => (
                State::RevealShareKeys(reveal::RevealShareKeys::new(masked, asked)),
                (),
            ),
            other => (other, ()),
        });
        self.broadcast = Some(Broadcast {
            kind: BroadcastKind::RevealRequest,
            next: 0,
        });
        self.deadline = Some(now + self.config.stage_timeout);
        true
    }

    /// Ends the reveal step: the accusers that did not answer stay
    /// unproven, and the masked input stage's business goes on as if it
    /// had just closed, with whatever the proven evictions left.
    fn close_reveals(&mut self, now: Instant) {
        let State::RevealShareKeys(state) = &self.state else {
            return;
        };
        let asked = state.asked.len() as u32;
        let mut answered = 0;
        for a in &state.asked {
            match a.answer {
                reveal::Answer::Answered => answered += 1,
                _ => self.events.push_back(ServerEvent::AccusationUnproven {
                    accuser: a.accuser,
                    accused: a.senders.clone(),
                    reason: Unproven::NoAnswer,
                }),
            }
        }
        self.events
            .push_back(ServerEvent::RevealStepCompleted { asked, answered });
        State::step(&mut self.state, |state| match state {
            State::RevealShareKeys(reveal) => (State::MaskedInput(reveal.masked), ()),
            other => (other, ()),
        });
        let survivors = self.roster.count_active(Progress::Masked);
        let floor = self.floor(Stage::MaskedInput);
        let met = ThresholdMet::check(survivors, floor)
            .and_then(|met| self.check_reach(Stage::MaskedInput).map(|()| met));
        match met {
            Ok(met) => self.advance(now, Stage::MaskedInput, met, survivors),
            Err(reason) => self.abort(Stage::MaskedInput, reason, survivors),
        }
    }

    /// Evicts `sender`, proven by `receiver` to have sealed it a bad bundle;
    /// a sender proven twice (or gone already) is evicted, and reported,
    /// once.
    fn evict_proven(
        &mut self,
        now: Instant,
        sender: ClientId,
        receiver: ClientId,
        problem: BadBundle,
    ) {
        if self.roster.active(sender).is_none() {
            return;
        }
        self.evict(now, sender);
        self.events.push_back(ServerEvent::Evicted {
            client: sender,
            violation: ClientViolation::BadBundle { receiver, problem },
        });
    }

    /// Tells the session that `client` is gone (its connection closed or it
    /// was refused by the transport): the current stage stops waiting for
    /// it, and it is sent nothing more.
    ///
    /// Without this a driver could only let the stage run into its deadline;
    /// with it, a stage whose remaining clients all answered or left closes
    /// at once. A client whose masked input is already in the sum stays a
    /// contributor (its self-mask is rebuilt from its neighbours' shares),
    /// exactly as if it had dropped out silently. Unknown clients and ended
    /// rounds are ignored.
    pub fn handle_dropout(&mut self, now: Instant, client: ClientId) {
        if !self.config.contains(client) || self.state.stage().is_none() {
            return;
        }
        // An asked accuser that leaves will not answer.
        if let State::RevealShareKeys(state) = &mut self.state
            && let Some(asked) = state.asked_mut(client)
            && asked.answer == reveal::Answer::Waiting
        {
            asked.answer = reveal::Answer::Gone;
            return self.reveal_settled(now);
        }
        self.evict(now, client);
    }

    fn misbehaved(
        &mut self,
        now: Instant,
        client: ClientId,
        violation: ClientViolation,
    ) -> ServerSessionError {
        self.evict(now, client);
        ServerSessionError::ClientMisbehaved { client, violation }
    }

    fn evict(&mut self, now: Instant, client: ClientId) {
        // A client still expected in this stage will not answer now. (In
        // the reveal step only the asked accusers are expected, and they
        // left the roster when they accused.)
        if let Some(progress) = self.roster.evict(client)
            && !matches!(self.state, State::RevealShareKeys(_))
            && let Some(stage) = self.state.stage()
            && progress == Progress::to_enter(stage, &self.config)
        {
            self.pending -= 1;
            if self.pending == 0 {
                self.close_stage(now);
            }
        }
    }

    /// Tells the session the time; a stage past its deadline closes with
    /// whoever answered.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) && self.state.stage().is_some() {
            self.close_stage(now);
        }
    }

    /// When the driver should call [`ServerSession::handle_timeout`].
    #[must_use = "the session needs handle_timeout at this instant"]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// The next event for the driver.
    #[must_use = "a polled event is gone from the session: act on it"]
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// The next message to send, with its recipient.
    #[must_use = "a polled message is gone from the session: send it"]
    pub fn poll_transmit(&mut self) -> Option<(ClientId, ServerMessage)> {
        let broadcast = self.broadcast.as_mut()?;
        if let (BroadcastKind::RevealRequest, State::RevealShareKeys(state)) =
            (broadcast.kind, &self.state)
        {
            // To the asked accusers, who left the roster when they accused.
            let asked = state.asked.get(broadcast.next as usize);
            broadcast.next += 1;
            let Some(asked) = asked else {
                self.broadcast = None;
                return None;
            };
            let body = ServerBody::RevealShareKeyRequest {
                senders: asked.senders.clone(),
            };
            return Some((
                asked.accuser,
                ServerMessage {
                    round_id: self.config.round_id,
                    body,
                },
            ));
        }
        let n = self.config.num_clients;
        while broadcast.next < n {
            let id = ClientId(broadcast.next);
            broadcast.next += 1;
            let Some(progress) = self.roster.active(id) else {
                continue;
            };
            let body = match broadcast.kind {
                BroadcastKind::NeighbourKeys if progress == Progress::Advertised => {
                    advertise_keys::neighbour_keys(&self.graph, &self.roster, id)
                }
                BroadcastKind::SealedShares if progress == Progress::Shared => {
                    let State::MaskedInput(state) = &self.state else {
                        unreachable!("shares are relayed during the masked input stage")
                    };
                    state.sealed_shares_for(&self.graph, &self.roster, id)
                }
                BroadcastKind::ConsistencyCheck if progress == Progress::Masked => {
                    ServerBody::ConsistencyCheck {
                        survivors: if self.config.is_signed() {
                            self.survivor_set.clone()
                        } else {
                            survivors_around(&self.graph, &self.roster, id)
                        },
                    }
                }
                BroadcastKind::UnmaskRequest
                    if progress == Progress::to_enter(Stage::Unmasking, &self.config) =>
                {
                    let (survivors, dropped) = unmask_request_for(&self.graph, &self.roster, id);
                    let signatures = if self.config.is_signed() {
                        consistency_check::signatures(&self.roster)
                    } else {
                        Vec::new()
                    };
                    ServerBody::UnmaskRequest {
                        survivors,
                        dropped,
                        signatures,
                    }
                }
                BroadcastKind::Aborted(reason) if progress >= Progress::Advertised => {
                    ServerBody::Aborted(reason)
                }
                _ => continue,
            };
            return Some((
                id,
                ServerMessage {
                    round_id: self.config.round_id,
                    body,
                },
            ));
        }
        self.broadcast = None;
        None
    }

    /// Closes the current stage: on to the next one with at least t clients,
    /// otherwise abort.
    fn close_stage(&mut self, now: Instant) {
        let Some(stage) = self.state.stage() else {
            return;
        };
        if matches!(self.state, State::RevealShareKeys(_)) {
            return self.close_reveals(now);
        }
        let survivors = self.roster.count_active(Progress::after(stage));
        let met = match self.check_close(stage, survivors) {
            Ok(met) => met,
            Err(reason) => return self.abort(stage, reason, survivors),
        };
        // Before anyone learns who survived: ask accusers for their keys.
        if stage == Stage::MaskedInput && self.start_reveals(now) {
            return;
        }
        self.advance(now, stage, met, survivors);
    }

    /// Moves on from the closed `stage` to the next state.
    fn advance(&mut self, now: Instant, stage: Stage, met: ThresholdMet, survivors: u32) {
        self.fix_signed_sets(stage);
        let closed = State::step(&mut self.state, |state| {
            match state.close(met, &self.config, &self.graph, &self.roster) {
                Ok((next, broadcast)) => (next, Ok(broadcast)),
                Err(reason) => (State::Aborted(reason), Err(reason)),
            }
        });
        match closed {
            Ok(broadcast) => self.open_stage(now, broadcast),
            Err(reason) => self.abort(stage, reason, survivors),
        }
    }

    /// Whether `stage` can close with `survivors`: they must reach the
    /// threshold (the stage is then reported completed), and the shares the
    /// rest of the round needs must still be within reach.
    fn check_close(&mut self, stage: Stage, survivors: u32) -> Result<ThresholdMet, AbortReason> {
        let entry = Progress::to_enter(stage, &self.config);
        // Clients evicted while expected in this stage count as dropped there.
        let expected = self.roster.count_active(entry) + self.roster.count_evicted_at(entry);
        let met = ThresholdMet::check(survivors, self.floor(stage))?;
        self.events.push_back(ServerEvent::StageCompleted {
            stage,
            survivors: met.survivors,
            dropped: expected.saturating_sub(met.survivors),
        });
        self.check_reach(stage)?;
        Ok(met)
    }

    /// The fewest survivors `stage` may close with.
    fn floor(&self, stage: Stage) -> u32 {
        // In a signed round every client checks the survivor set against the
        // signature quorum: below it nobody would reveal a share.
        match stage {
            Stage::MaskedInput | Stage::ConsistencyCheck if self.config.is_signed() => {
                self.config.signature_quorum()
            }
            _ => self.config.survivor_floor(),
        }
    }

    /// Whether the shares the rest of the round needs are still within
    /// reach once `stage` closes.
    fn check_reach(&self, stage: Stage) -> Result<(), AbortReason> {
        // Before anyone is asked for a share, make sure every secret the sum
        // needs can get t of them from the clients that will be asked; in a
        // sparse graph a neighbourhood can fall below t while the round as a
        // whole does not. Aborting here reveals nothing.
        let responders = match stage {
            Stage::MaskedInput => Some(Progress::Masked),
            Stage::ConsistencyCheck => Some(Progress::Confirmed),
            _ => None,
        };
        if let Some(responders) = responders
            && !unmasking::feasible(&self.graph, &self.roster, responders, self.config.threshold)
        {
            return Err(AbortReason::SharesMissing);
        }
        // A client that receives fewer than t bundles refuses the round (it
        // could not help rebuild its neighbours' secrets, nor they its own):
        // stop here instead of waiting for the refusals to time out.
        if stage == Stage::ShareKeys
            && !unmasking::every_sharer_has_holders(
                &self.graph,
                &self.roster,
                self.config.threshold,
            )
        {
            return Err(AbortReason::SharesMissing);
        }
        Ok(())
    }

    /// Malicious-server model: fixes what later signatures bind as the
    /// stage that settles it closes: the transcript hash when AdvertiseKeys
    /// closes, the survivor set when the masked inputs are in.
    fn fix_signed_sets(&mut self, stage: Stage) {
        match stage {
            Stage::AdvertiseKeys => {
                if let Some(directory) = &self.identities {
                    self.transcript = Some(advertise_keys::transcript(
                        &self.config,
                        directory,
                        &self.roster,
                    ));
                }
            }
            Stage::MaskedInput
                if self.config.has_consistency_check() && self.config.is_signed() =>
            {
                self.survivor_set = (0..self.config.num_clients)
                    .map(ClientId)
                    .filter(|v| self.roster.reached(*v, Progress::Masked))
                    .collect();
            }
            _ => {}
        }
    }

    /// Starts the state just entered: its broadcast, who it waits for and
    /// its deadline.
    fn open_stage(&mut self, now: Instant, broadcast: Option<BroadcastKind>) {
        if matches!(self.state, State::UnmaskingReady(_)) {
            self.events.push_back(ServerEvent::UnmaskingReady);
        }
        self.broadcast = broadcast.map(|kind| Broadcast { kind, next: 0 });
        match self.state.stage() {
            Some(next_stage) => {
                self.pending = self
                    .roster
                    .count_active(Progress::to_enter(next_stage, &self.config));
                self.deadline = Some(now + self.config.stage_timeout);
            }
            None => self.deadline = None,
        }
    }

    fn abort(&mut self, stage: Stage, reason: AbortReason, survivors: u32) {
        // Dropping the stage state discards the running sum and every share
        // received: nothing is unmasked.
        self.state = State::Aborted(reason);
        self.deadline = None;
        self.broadcast = Some(Broadcast {
            kind: BroadcastKind::Aborted(reason),
            next: 0,
        });
        self.events.push_back(ServerEvent::Aborted {
            stage,
            reason,
            survivors,
        });
    }

    /// Rebuilds the secrets and removes every leftover mask from the sum: the
    /// one heavy step of the round. Call it once [`ServerEvent::UnmaskingReady`]
    /// has been polled; it parallelises over rayon's pool.
    ///
    /// Returns the output (also queued as [`ServerEvent::Completed`]), or
    /// `None` if the session was not ready or the round aborted because a
    /// rebuilt key did not match the key its owner advertised.
    pub fn unmask(&mut self) -> Option<&RoundOutput> {
        let unmasked = State::step(&mut self.state, |state| match state {
            State::UnmaskingReady(ready) => {
                match ready.unmask(&self.config, &self.graph, &self.roster) {
                    Ok(output) => (State::Completed, Some(Ok(output))),
                    Err(reason) => (State::Aborted(reason), Some(Err(reason))),
                }
            }
            other => (other, None),
        })?;
        match unmasked {
            Ok(output) => {
                self.events.push_back(ServerEvent::Completed(output));
                match self.events.back() {
                    Some(ServerEvent::Completed(output)) => Some(output),
                    _ => None,
                }
            }
            Err(reason) => {
                let survivors = self.roster.count_active(Progress::Answered);
                self.abort(Stage::Unmasking, reason, survivors);
                None
            }
        }
    }
}

/// The survivors (masked input received) among `id`'s neighbours and `id`.
fn survivors_around(graph: &NeighbourGraph, roster: &Roster, id: ClientId) -> Vec<ClientId> {
    let mut survivors: Vec<ClientId> = graph
        .neighbours(id.0)
        .into_iter()
        .map(ClientId)
        .filter(|v| roster.reached(*v, Progress::Masked))
        .collect();
    let pos = survivors.partition_point(|v| *v < id);
    survivors.insert(pos, id);
    survivors
}

/// What `id` is asked to reveal: self-mask shares of the survivors around it,
/// masking-key shares of its neighbours that shared keys but sent no masked
/// input.
fn unmask_request_for(
    graph: &NeighbourGraph,
    roster: &Roster,
    id: ClientId,
) -> (Vec<ClientId>, Vec<ClientId>) {
    let survivors = survivors_around(graph, roster, id);
    let dropped = graph
        .neighbours(id.0)
        .into_iter()
        .map(ClientId)
        .filter(|v| roster.progress(*v) == Progress::Shared)
        .collect();
    (survivors, dropped)
}

#[cfg(test)]
mod tests {
    use chacha20::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::ClientSession;

    /// Runs a semi-honest round of `n` clients until the server has sent
    /// its unmasking requests.
    fn round_at_unmasking(n: u32, now: Instant) -> (ServerSession, Vec<ClientSession>) {
        let config = RoundConfig::new(1, n, 4);
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let mut clients: Vec<ClientSession> = (0..n)
            .map(|i| ClientSession::new(config.clone(), ClientId(i), now, &mut rng).unwrap())
            .collect();
        let mut server = ServerSession::new(config, now).unwrap();
        while server.stage() != Some(Stage::Unmasking) {
            for (i, client) in clients.iter_mut().enumerate() {
                if client.is_awaiting_input() {
                    client.submit_input(vec![1; 4]).unwrap();
                }
                while let Some(message) = client.poll_transmit() {
                    server
                        .handle_message(now, ClientId(i as u32), message)
                        .unwrap();
                }
            }
            while let Some((to, message)) = server.poll_transmit() {
                clients[to.index()].handle_message(now, message).unwrap();
            }
        }
        (server, clients)
    }

    #[test]
    fn refused_messages_and_calls_leave_the_stage_as_it_was() {
        let now = Instant::now();
        let config = RoundConfig::new(1, 3, 4);
        let mut server = ServerSession::new(config, now).unwrap();
        // Nothing to unmask yet: refused, the stage goes on.
        assert!(server.unmask().is_none());
        assert_eq!(server.stage(), Some(Stage::AdvertiseKeys));
        assert_eq!(server.state.name(), "advertise-keys");
        // A message from a later stage drops its sender, not the stage.
        let early = ClientMessage {
            round_id: 1,
            body: ClientBody::MaskedInput(vec![0; 16]),
        };
        let err = server.handle_message(now, ClientId(0), early).unwrap_err();
        assert!(
            matches!(err, ServerSessionError::ClientMisbehaved { .. }),
            "{err}"
        );
        assert_eq!(server.stage(), Some(Stage::AdvertiseKeys));
        assert_eq!(server.state.name(), "advertise-keys");
    }

    #[test]
    fn a_transition_that_fails_leaves_the_round_aborted() {
        // Five clients, t = 3, and only three answer the unmasking request:
        // the stage closes with enough survivors, but each of them has only
        // two answering holders of its self-mask seed, so moving to
        // UnmaskingReady fails inside the state step.
        let now = Instant::now();
        let (mut server, mut clients) = round_at_unmasking(5, now);
        for (i, client) in clients.iter_mut().enumerate().take(3) {
            while let Some(message) = client.poll_transmit() {
                server
                    .handle_message(now, ClientId(i as u32), message)
                    .unwrap();
            }
        }
        assert_eq!(server.stage(), Some(Stage::Unmasking));
        let deadline = server.poll_timeout().unwrap();
        server.handle_timeout(deadline);
        assert_eq!(server.state.name(), "aborted");
        assert_eq!(server.abort_reason(), Some(AbortReason::SharesMissing));
        assert_eq!(server.stage(), None);
        assert!(server.unmask().is_none());
        assert_eq!(server.state.name(), "aborted");
        let events: Vec<ServerEvent> = std::iter::from_fn(|| server.poll_event()).collect();
        assert!(matches!(
            events.last(),
            Some(ServerEvent::Aborted {
                stage: Stage::Unmasking,
                reason: AbortReason::SharesMissing,
                survivors: 3,
            })
        ));
    }
}
