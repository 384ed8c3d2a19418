//! The client side of a round, as a state machine with no IO.
//!
//! A [`ClientSession`] follows quinn-proto's contract. Call, in a loop:
//! - [`ClientSession::handle_message`] with each message from the server,
//!   [`ClientSession::handle_timeout`] when [`ClientSession::poll_timeout`]'s
//!   instant has passed;
//! - [`ClientSession::submit_input`] (a command) with the encoded vector, at
//!   any time before the masked input stage (the session asks for it with
//!   [`ClientEvent::InputNeeded`] if it has none when it gets there);
//! - then drain [`ClientSession::poll_transmit`] (messages to send to the
//!   server) and [`ClientSession::poll_event`].
//!
//! Each round state is its own type in its own file and each transition
//! consumes the old state, so a secret that a stage no longer needs is dropped
//! (and zeroized) with it:
//! `advertise_keys` -> `share_keys` -> `masked_input` ->
//! (`consistency_check`) -> `unmasking` -> finished (one file each).
//!
//! The client is where the protocol's privacy is enforced against a curious
//! server: it answers one unmasking request per round, never reveals both
//! secrets of one neighbour, and refuses requests that name too few
//! survivors. A refusal ends the session: an honest client does not go on
//! with a server that broke the protocol.
//!
//! What a client cannot blame on the server it does not refuse: a share
//! bundle that does not open could be the sender's doing as well as the
//! server's, so the client accuses the sender instead and leaves the round
//! without its input ([`crate::accusation`], [`ClientEvent::Accused`]). In
//! the semi-honest model it reveals its share-encryption secret to prove
//! the accusation if, and only if, the server asks for it before the
//! round's survivors are known; it answers one such request, for senders it
//! accused, and refuses any other ([`ClientEvent::ShareKeyRevealed`]).

mod advertise_keys;
mod consistency_check;
mod masked_input;
mod share_keys;
mod unmasking;

use std::collections::VecDeque;
use std::time::Instant;

use chacha20::ChaCha20Rng;
use rand_core::{CryptoRng, SeedableRng};

use crate::config::{ConfigError, RoundConfig};
use crate::graph::NeighbourGraph;
use crate::identity::{ClientIdentity, DirectoryError, SessionDigest, session_hash};
use crate::keys::KeyError;
use crate::messages::{AbortReason, ClientBody, ClientMessage, ServerBody, ServerMessage};
use crate::{ClientId, Stage};

/// What a client knows about its round that never changes during it.
#[derive(Debug)]
struct Context {
    config: RoundConfig,
    id: ClientId,
    /// Whether an accusation carries this client's `c_sk` at once, unasked
    /// (semi-honest rounds only): the unsafe old form, off unless
    /// [`ClientSession::reveal_share_key_when_accusing`] turned it on.
    reveal_unasked: bool,
    /// This client's neighbours in the round's graph, ascending.
    neighbours: Vec<ClientId>,
    /// Malicious-server model: this client's signing key and the directory
    /// it verifies its peers' signatures with.
    identity: Option<ClientIdentity>,
    /// Malicious-server model: the [`crate::identity::session_hash`] its
    /// advert signs.
    session: Option<SessionDigest>,
    /// Malicious-server model: the [`crate::identity::transcript_hash`] of
    /// this session (set once the neighbours' adverts are checked), which
    /// the survivor-set signatures sign.
    transcript: Option<SessionDigest>,
}

impl Context {
    fn is_neighbour(&self, other: ClientId) -> bool {
        self.neighbours.binary_search(&other).is_ok()
    }

    fn message(&self, body: ClientBody) -> ClientMessage {
        ClientMessage {
            round_id: self.config.round_id,
            body,
        }
    }
}

/// One client's participation in one round.
///
/// ```
/// use std::time::Instant;
/// use tessera_aggregation::{ClientId, ClientSession, RoundConfig};
/// use tessera_aggregation::messages::ClientBody;
///
/// let config = RoundConfig::new(1, 3, 4);
/// let mut rng = chacha20::ChaCha20Rng::from_seed([7; 32]);
/// # use rand_core::SeedableRng;
/// let mut client = ClientSession::new(config, ClientId(0), Instant::now(), &mut rng).unwrap();
/// // The first thing a client sends is its public keys.
/// let advert = client.poll_transmit().unwrap();
/// assert!(matches!(advert.body, ClientBody::AdvertiseKeys(_)));
/// // An input of the wrong length is refused at once.
/// assert!(client.submit_input(vec![0; 3]).is_err());
/// ```
pub struct ClientSession {
    state: State,
    core: Core,
}

impl ClientSession {
    /// Makes this client put its round's share-encryption secret `c_sk`
    /// into its accusation at once, unasked, in semi-honest rounds: the
    /// form the protocol had before the server asked. **Never turn it on
    /// outside a test**: each accuser then decides alone, so a colluding
    /// client that seals garbage for many honest neighbours makes them hand
    /// the server more keys than the threshold's margin tolerates, and a
    /// server that keeps them can unmask an honest input
    /// (`aggregation/tests/accusations.rs` plays that attack). It exists
    /// only so that test can show what the two-step reveal prevents, and so
    /// the server's handling of an unasked key can be tested.
    #[doc(hidden)]
    pub fn reveal_share_key_when_accusing(&mut self) {
        self.core.ctx.reveal_unasked = true;
    }
}

/// Everything a session holds besides its stage state: what a transition
/// reads and writes while [`State::step`] has the state moved out.
struct Core {
    ctx: Context,
    /// The encoded input, until the masked input stage consumes it.
    input: Option<Vec<u32>>,
    rng: ChaCha20Rng,
    outbox: VecDeque<ClientMessage>,
    events: VecDeque<ClientEvent>,
    deadline: Option<Instant>,
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("id", &self.core.ctx.id)
            .field("round_id", &self.core.ctx.config.round_id)
            .field("state", &self.state.name())
            .finish_non_exhaustive()
    }
}

enum State {
    AdvertiseKeys(advertise_keys::AdvertiseKeys),
    ShareKeys(share_keys::ShareKeys),
    MaskedInput(masked_input::MaskedInput),
    ConsistencyCheck(consistency_check::ConsistencyCheck),
    Unmasking(unmasking::Unmasking),
    Finished,
    /// Sent an accusation instead of the masked input: its part is over
    /// but for answering the server's request for its key, if it comes.
    Accused(Accuser),
    Aborted(AbortReason),
    TimedOut,
    Refused,
    /// The placeholder left in the session while [`State::step`] runs.
    /// Nothing can read it then (the step gets the state and the session's
    /// [`Core`], not the session); it stays only if a step panicked, and a
    /// session caught after such a panic then reports no stage and refuses
    /// everything as ended, rather than pass for a stage whose secrets are
    /// gone.
    Transitioning,
}

impl State {
    /// Runs one transition in place: moves the state out of `slot`, hands
    /// it to `step` by value and stores the state `step` gives back, on
    /// every outcome (an error path gives back `Refused`, or the state it
    /// was handed). This is the only place the state is moved out.
    fn step<R>(slot: &mut State, step: impl FnOnce(State) -> (State, R)) -> R {
        let (next, out) = step(std::mem::replace(slot, State::Transitioning));
        *slot = next;
        out
    }

    fn name(&self) -> &'static str {
        match self {
            State::AdvertiseKeys(_) => "advertise-keys",
            State::ShareKeys(_) => "share-keys",
            State::MaskedInput(_) => "masked-input",
            State::ConsistencyCheck(_) => "consistency-check",
            State::Unmasking(_) => "unmasking",
            State::Finished => "finished",
            State::Accused(_) => "accused",
            State::Aborted(_) => "aborted",
            State::TimedOut => "timed-out",
            State::Refused => "refused",
            State::Transitioning => "transitioning",
        }
    }
}

/// Something the driver of a client session should know about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The session reached the masked input stage without an input: call
    /// [`ClientSession::submit_input`].
    InputNeeded,
    /// The masked input is queued for sending.
    MaskedInputSent,
    /// The client answered the unmasking request: its part of the round is
    /// done.
    Completed,
    /// The server ended the round without a result.
    Aborted(AbortReason),
    /// The server fell silent for longer than twice the stage timeout.
    TimedOut,
    /// Bundles these neighbours sealed for this client did not open; the
    /// session queued an accusation naming them. The client's input is not
    /// in this round. In a semi-honest round the server may still ask for
    /// the client's share key to judge the accusation
    /// ([`ClientEvent::ShareKeyRevealed`]).
    Accused(Vec<ClientId>),
    /// The server asked for this client's share-encryption secret to judge
    /// its accusation of these senders, and the session queued it (once per
    /// round, semi-honest rounds only: [`crate::accusation`]).
    ShareKeyRevealed(Vec<ClientId>),
}

/// A message or command the client session refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientSessionError {
    /// The server broke the protocol; the session refuses the rest of the
    /// round.
    #[error("the server broke the protocol: {0}")]
    ServerMisbehaved(#[from] Violation),
    /// A message for another round (stale or replayed); ignored, the session
    /// goes on.
    #[error("message for round {got}, this session is round {expected}")]
    WrongRound {
        /// This session's round.
        expected: u64,
        /// The message's round.
        got: u64,
    },
    /// The round configuration cannot work.
    #[error("invalid round configuration: {0}")]
    Config(#[from] ConfigError),
    /// API misuse: the client id is not in the round.
    #[error("{id} is not in a round of {n} clients")]
    UnknownClient {
        /// The id given.
        id: ClientId,
        /// Clients in the round.
        n: u32,
    },
    /// API misuse: the input has the wrong length.
    #[error("input has {got} values, the round expects {expected}")]
    InputLength {
        /// The round's dimension.
        expected: usize,
        /// The input's length.
        got: usize,
    },
    /// API misuse: an input value does not fit the round's modulus.
    #[error("input value at index {index} does not fit in {bits} bits")]
    InputOutOfRange {
        /// First offending index.
        index: usize,
        /// The round's bits.
        bits: u8,
    },
    /// A malicious-server round needs the client's identity and directory
    /// ([`ClientSession::with_identity`]); other rounds take none.
    #[error(
        "the {0} threat model needs a client identity and directory (ClientSession::with_identity)"
    )]
    IdentityRequired(crate::config::ThreatModel),
    /// The identity directory does not fit the round or this client.
    #[error("identity directory: {0}")]
    Directory(#[from] DirectoryError),
    /// API misuse: the input was already submitted or already masked.
    #[error("the input was already submitted for this round")]
    InputAlreadySubmitted,
    /// API misuse or a late message: the session has ended.
    #[error("the session has ended ({state})")]
    SessionEnded {
        /// The state it ended in.
        state: &'static str,
    },
}

/// How a server broke the protocol, as seen by a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// A message that does not belong to the client's current stage.
    #[error("unexpected {message} message during {stage}")]
    UnexpectedMessage {
        /// The client's stage.
        stage: &'static str,
        /// The message kind received.
        message: &'static str,
    },
    /// A list that is not strictly ascending (unsorted or with duplicates).
    #[error("{0} is not strictly ascending by client id")]
    Unsorted(&'static str),
    /// The message names a client that is not this client's neighbour.
    #[error("{0} is not a neighbour of this client")]
    NotANeighbour(ClientId),
    /// The message names this client where only others belong.
    #[error("the message lists this client among its neighbours")]
    ListsSelf,
    /// Too few neighbours remain for the threshold.
    #[error("only {have} share holders remain, the threshold is {threshold}")]
    BelowThreshold {
        /// Holders (neighbours) or survivors counted.
        have: u32,
        /// The round's threshold.
        threshold: u32,
    },
    /// Two clients advertised the same public key.
    #[error("{0} advertised a public key that another client also uses")]
    DuplicateKey(ClientId),
    /// A neighbour's public key is unusable.
    #[error("public key of {client}: {source}")]
    BadKey {
        /// Whose key.
        client: ClientId,
        /// What is wrong with it.
        source: KeyError,
    },
    /// A share bundle from a client that did not advertise keys to us.
    #[error("share bundle from {0}, which advertised no keys to this client")]
    UnknownSender(ClientId),
    /// The request names a client both as survivor and as dropped.
    #[error("{0} is named both as a survivor and as dropped")]
    SurvivorAndDropped(ClientId),
    /// The request names a client this client holds no shares of.
    #[error("{0} is named in the request but never shared keys with this client")]
    NoSharesHeld(ClientId),
    /// The request leaves out a neighbour this client holds shares of.
    #[error("the request does not say whether {0} survived")]
    Unaccounted(ClientId),
    /// The request says this client dropped although it is answering.
    #[error("the request does not list this client as a survivor")]
    SelfNotSurvivor,
    /// The unmasking request's survivors differ from the confirmed set.
    #[error(
        "the unmasking request's survivors differ from the set confirmed in the consistency check"
    )]
    InconsistentSurvivors,
    /// A neighbour's advert or a survivor-set signature is missing or does
    /// not verify under the signer's identity in the directory (a
    /// substituted key, a replayed advert, a forged signature).
    #[error("the {what} signature of {client} is missing or invalid")]
    BadSignature {
        /// Whose signature.
        client: ClientId,
        /// `"advert"` or `"survivor-set"`.
        what: &'static str,
    },
    /// Fewer valid signatures over the survivor set than the quorum.
    #[error("{have} valid signatures over the survivor set, {need} needed")]
    TooFewSignatures {
        /// Valid signatures from members of the set.
        have: u32,
        /// [`RoundConfig::signature_quorum`].
        need: u32,
    },
    /// A survivor-set signature from a client outside the set.
    #[error("a survivor-set signature from {0}, which is not in the set")]
    SignerNotSurvivor(ClientId),
    /// A survivor set naming a client the round does not have.
    #[error("the survivor set names {0}, which is not in the round")]
    UnknownSurvivor(ClientId),
    /// A second unmasking request in one round.
    #[error("a second unmasking request in the same round (only one is ever answered)")]
    SecondUnmaskRequest,
    /// A request for this client's share key in a round whose threat model
    /// lets the server deviate: there no client reveals its key, since the
    /// server could have corrupted the bundles itself ([`crate::accusation`]).
    #[error(
        "a request for this client's share key in a {0} round: keys are revealed only in semi-honest rounds"
    )]
    RevealInThreatModel(crate::config::ThreatModel),
    /// A request for this client's share key naming a sender it never
    /// accused.
    #[error("a request for this client's share key names {0}, which this client did not accuse")]
    RevealForUnaccused(ClientId),
    /// A request for this client's share key that names nobody.
    #[error("a request for this client's share key names no accused sender")]
    EmptyRevealRequest,
    /// A second request for this client's share key in one round.
    #[error("a second request for this client's share key in the same round (it is revealed once)")]
    SecondRevealRequest,
}

impl ClientSession {
    /// Starts client `id`'s part in a round: generates its key pairs and
    /// self-mask seed and queues its AdvertiseKeys message.
    ///
    /// The caller's CSPRNG seeds a ChaCha20 generator owned by the session,
    /// which then draws every later random value (Shamir polynomials), so
    /// handling messages needs no RNG argument.
    ///
    /// Refuses a malicious-server round: use [`ClientSession::with_identity`].
    pub fn new<R: CryptoRng + ?Sized>(
        config: RoundConfig,
        id: ClientId,
        now: Instant,
        rng: &mut R,
    ) -> Result<Self, ClientSessionError> {
        config.validate()?;
        let graph = config.neighbour_graph()?;
        Self::with_graph(config, &graph, id, now, rng)
    }

    /// Starts client `id`'s part in a malicious-server round: as
    /// [`ClientSession::with_graph`], and the client signs its advert and
    /// the survivor set with `identity.key` and checks every peer's
    /// signature against `identity.directory`.
    pub fn with_identity<R: CryptoRng + ?Sized>(
        config: RoundConfig,
        graph: &NeighbourGraph,
        id: ClientId,
        identity: ClientIdentity,
        now: Instant,
        rng: &mut R,
    ) -> Result<Self, ClientSessionError> {
        if !config.is_signed() {
            // An identity in an unsigned round would be silently unused: a
            // deployment that thinks it is protected but is not.
            return Err(ClientSessionError::Config(ConfigError::Unsigned(
                config.threat_model,
            )));
        }
        identity.directory.check_size(config.num_clients)?;
        if identity.directory.get(id) != Some(&identity.key.verifying_key()) {
            return Err(DirectoryError::NotOwnSlot(id).into());
        }
        Self::start(config, graph, id, Some(identity), now, rng)
    }

    /// As [`ClientSession::new`], reusing a neighbour graph built once for
    /// the round (a simulator runs thousands of clients of one round).
    pub fn with_graph<R: CryptoRng + ?Sized>(
        config: RoundConfig,
        graph: &NeighbourGraph,
        id: ClientId,
        now: Instant,
        rng: &mut R,
    ) -> Result<Self, ClientSessionError> {
        if config.is_signed() {
            return Err(ClientSessionError::IdentityRequired(config.threat_model));
        }
        Self::start(config, graph, id, None, now, rng)
    }

    fn start<R: CryptoRng + ?Sized>(
        config: RoundConfig,
        graph: &NeighbourGraph,
        id: ClientId,
        identity: Option<ClientIdentity>,
        now: Instant,
        rng: &mut R,
    ) -> Result<Self, ClientSessionError> {
        config.validate()?;
        if !config.contains(id) {
            return Err(ClientSessionError::UnknownClient {
                id,
                n: config.num_clients,
            });
        }
        let neighbours = graph.neighbours(id.0).into_iter().map(ClientId).collect();
        let session = identity
            .as_ref()
            .map(|identity| session_hash(&config, &identity.directory));
        let ctx = Context {
            config,
            id,
            reveal_unasked: false,
            neighbours,
            identity,
            session,
            transcript: None,
        };
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut seed[..]);
        let mut session_rng = ChaCha20Rng::from_seed(*seed);
        let (state, advert) = advertise_keys::AdvertiseKeys::start(&ctx, &mut session_rng);
        let mut core = Core {
            ctx,
            input: None,
            rng: session_rng,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            deadline: None,
        };
        core.outbox.push_back(advert);
        core.wait_from(now);
        Ok(ClientSession {
            state: State::AdvertiseKeys(state),
            core,
        })
    }

    /// This client's id.
    pub fn id(&self) -> ClientId {
        self.core.ctx.id
    }

    /// The round's configuration.
    pub fn config(&self) -> &RoundConfig {
        &self.core.ctx.config
    }

    /// This client's neighbours in the round's graph.
    pub fn neighbours(&self) -> &[ClientId] {
        &self.core.ctx.neighbours
    }

    /// The stage the client is in, or `None` once its session has ended.
    pub fn stage(&self) -> Option<Stage> {
        match self.state {
            State::AdvertiseKeys(_) => Some(Stage::AdvertiseKeys),
            State::ShareKeys(_) => Some(Stage::ShareKeys),
            State::MaskedInput(_) => Some(Stage::MaskedInput),
            State::ConsistencyCheck(_) => Some(Stage::ConsistencyCheck),
            State::Unmasking(_) => Some(Stage::Unmasking),
            _ => None,
        }
    }

    /// Why the server aborted the round, if it did.
    pub fn abort_reason(&self) -> Option<AbortReason> {
        match self.state {
            State::Aborted(reason) => Some(reason),
            _ => None,
        }
    }

    /// True once the client has answered the unmasking request.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    /// True while the session waits for [`ClientSession::submit_input`] to
    /// mask and send.
    pub fn is_awaiting_input(&self) -> bool {
        matches!(self.state, State::MaskedInput(_))
    }

    /// True when [`ClientSession::poll_transmit`] has a message.
    pub fn has_transmit(&self) -> bool {
        !self.core.outbox.is_empty()
    }

    /// True once the session can do nothing more.
    pub fn is_closed(&self) -> bool {
        self.stage().is_none()
    }

    /// Hands the session the encoded input (values mod 2^bits, length `dim`).
    pub fn submit_input(&mut self, input: Vec<u32>) -> Result<(), ClientSessionError> {
        let config = &self.core.ctx.config;
        if input.len() != config.dim as usize {
            return Err(ClientSessionError::InputLength {
                expected: config.dim as usize,
                got: input.len(),
            });
        }
        let mask = crate::packing::value_mask(config.bits);
        if let Some(index) = input.iter().position(|&v| v > mask) {
            return Err(ClientSessionError::InputOutOfRange {
                index,
                bits: config.bits,
            });
        }
        State::step(&mut self.state, |state| match state {
            State::AdvertiseKeys(_) | State::ShareKeys(_) if self.core.input.is_none() => {
                self.core.input = Some(input);
                (state, Ok(()))
            }
            State::MaskedInput(state) => (self.core.mask(state, input), Ok(())),
            State::AdvertiseKeys(_)
            | State::ShareKeys(_)
            | State::ConsistencyCheck(_)
            | State::Unmasking(_)
            | State::Finished => (state, Err(ClientSessionError::InputAlreadySubmitted)),
            state => {
                let ended = ClientSessionError::SessionEnded {
                    state: state.name(),
                };
                (state, Err(ended))
            }
        })
    }

    /// Feeds one message from the server.
    ///
    /// A message for another round is refused and ignored. A message that
    /// breaks the protocol is refused and ends the session: the client sends
    /// nothing more in this round.
    pub fn handle_message(
        &mut self,
        now: Instant,
        message: ServerMessage,
    ) -> Result<(), ClientSessionError> {
        if message.round_id != self.core.ctx.config.round_id {
            return Err(ClientSessionError::WrongRound {
                expected: self.core.ctx.config.round_id,
                got: message.round_id,
            });
        }
        if let ServerBody::Aborted(reason) = message.body {
            // A client that already answered still learns that the round
            // produced nothing.
            if !self.is_closed() || matches!(self.state, State::Finished | State::Accused(_)) {
                self.state = State::Aborted(reason);
                self.core.deadline = None;
                self.core.events.push_back(ClientEvent::Aborted(reason));
            }
            return Ok(());
        }
        State::step(&mut self.state, |state| {
            self.core.transition(now, state, message.body)
        })
    }

    /// Tells the session the time; past its deadline it gives up on the
    /// round.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.core.deadline.is_some_and(|d| now >= d) {
            self.core.deadline = None;
            self.state = State::TimedOut;
            self.core.outbox.clear();
            self.core.events.push_back(ClientEvent::TimedOut);
        }
    }

    /// When the driver should call [`ClientSession::handle_timeout`].
    #[must_use = "the session needs handle_timeout at this instant"]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.deadline
    }

    /// The next message to send to the server.
    #[must_use = "a polled message is gone from the session: send it"]
    pub fn poll_transmit(&mut self) -> Option<ClientMessage> {
        self.core.outbox.pop_front()
    }

    /// The next event for the driver.
    #[must_use = "a polled event is gone from the session: act on it"]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.core.events.pop_front()
    }
}

impl Core {
    /// Handles a server message in `state`; returns the state the session
    /// goes to and the outcome.
    ///
    /// A violation ends the session (it is refused), except a second
    /// unmasking request: the client already did its part and stays
    /// finished.
    fn transition(
        &mut self,
        now: Instant,
        state: State,
        body: ServerBody,
    ) -> (State, Result<(), ClientSessionError>) {
        let next = match (state, body) {
            (State::AdvertiseKeys(state), ServerBody::NeighbourKeys(keys)) => {
                self.on_neighbour_keys(now, state, keys)
            }
            (State::ShareKeys(state), ServerBody::SealedShares(bundles)) => {
                self.on_sealed_shares(now, state, bundles)
            }
            (State::ConsistencyCheck(state), ServerBody::ConsistencyCheck { survivors }) => {
                self.on_survivors(now, state, survivors)
            }
            (
                State::Unmasking(state),
                ServerBody::UnmaskRequest {
                    survivors,
                    dropped,
                    signatures,
                },
            ) => self.on_unmask_request(state, survivors, dropped, signatures),
            (State::Accused(accuser), ServerBody::RevealShareKeyRequest { senders }) => {
                return self.on_reveal_request(accuser, senders);
            }
            (State::Finished, ServerBody::UnmaskRequest { .. }) => {
                // The client already revealed shares once; a second request
                // could ask for the other secret of some neighbour. It is
                // refused, but the round the client took part in stands.
                return (State::Finished, Err(Violation::SecondUnmaskRequest.into()));
            }
            (
                state @ (State::Finished
                | State::Accused(_)
                | State::Aborted(_)
                | State::TimedOut
                | State::Refused),
                _,
            ) => {
                let ended = ClientSessionError::SessionEnded {
                    state: state.name(),
                };
                return (state, Err(ended));
            }
            (state, body) => Err(Violation::UnexpectedMessage {
                stage: state.name(),
                message: body.name(),
            }),
        };
        match next {
            Ok(next) => (next, Ok(())),
            Err(violation) => {
                self.deadline = None;
                self.outbox.clear();
                (State::Refused, Err(violation.into()))
            }
        }
    }

    fn on_neighbour_keys(
        &mut self,
        now: Instant,
        state: advertise_keys::AdvertiseKeys,
        keys: Vec<(ClientId, crate::messages::Advert)>,
    ) -> Result<State, Violation> {
        let (next, message, transcript) =
            state.handle_neighbour_keys(&self.ctx, keys, &mut self.rng)?;
        self.ctx.transcript = transcript;
        self.outbox.push_back(message);
        self.wait_from(now);
        Ok(State::ShareKeys(next))
    }

    fn on_sealed_shares(
        &mut self,
        now: Instant,
        state: share_keys::ShareKeys,
        bundles: Vec<crate::messages::SealedBundle>,
    ) -> Result<State, Violation> {
        let next = match state.handle_sealed_shares(&self.ctx, bundles)? {
            share_keys::Opened::All(next) => next,
            share_keys::Opened::Accuse(accusation, kept) => {
                let accused = accusation.accused.clone();
                self.outbox
                    .push_back(self.ctx.message(ClientBody::Accusation(accusation)));
                // The input stays with the caller: it is in no round now.
                self.input = None;
                self.deadline = None;
                self.events.push_back(ClientEvent::Accused(accused.clone()));
                return Ok(State::Accused(Accuser {
                    accused,
                    share_secret: kept,
                    revealed: false,
                }));
            }
        };
        let next = match self.input.take() {
            Some(input) => self.mask(next, input),
            None => {
                self.events.push_back(ClientEvent::InputNeeded);
                State::MaskedInput(next)
            }
        };
        self.wait_from(now);
        Ok(next)
    }

    fn on_survivors(
        &mut self,
        now: Instant,
        state: consistency_check::ConsistencyCheck,
        survivors: Vec<ClientId>,
    ) -> Result<State, Violation> {
        let (next, message) = state.handle_survivors(&self.ctx, survivors)?;
        self.outbox.push_back(message);
        self.wait_from(now);
        Ok(State::Unmasking(next))
    }

    fn on_unmask_request(
        &mut self,
        state: unmasking::Unmasking,
        survivors: Vec<ClientId>,
        dropped: Vec<ClientId>,
        signatures: Vec<(ClientId, crate::identity::IdentitySignature)>,
    ) -> Result<State, Violation> {
        let message = state.handle_request(&self.ctx, survivors, dropped, signatures)?;
        self.outbox.push_back(message);
        self.deadline = None;
        self.events.push_back(ClientEvent::Completed);
        Ok(State::Finished)
    }

    /// Answers the server's request for this client's share key, if the
    /// request is one it may answer: a semi-honest round, a first request,
    /// and only senders it accused. A refusal names what was wrong; the
    /// client stays an accuser (a second request leaves nothing to give).
    fn on_reveal_request(
        &mut self,
        mut accuser: Accuser,
        senders: Vec<ClientId>,
    ) -> (State, Result<(), ClientSessionError>) {
        let checked = accuser.check_request(&self.ctx, &senders);
        let secret = match checked {
            Ok(()) => accuser.share_secret.take(),
            Err(violation) => return (State::Accused(accuser), Err(violation.into())),
        };
        accuser.revealed = true;
        if let Some(share_secret) = secret {
            let reveal = crate::accusation::ShareKeyReveal { share_secret };
            self.outbox
                .push_back(self.ctx.message(ClientBody::ShareKeyReveal(reveal)));
            self.events
                .push_back(ClientEvent::ShareKeyRevealed(senders));
        }
        (State::Accused(accuser), Ok(()))
    }

    /// Masks and queues the input; returns the state that waits for the
    /// server's next request.
    fn mask(&mut self, state: masked_input::MaskedInput, input: Vec<u32>) -> State {
        let (next, message) = state.mask(&self.ctx, input);
        self.outbox.push_back(message);
        self.events.push_back(ClientEvent::MaskedInputSent);
        match next {
            masked_input::Next::ConsistencyCheck(s) => State::ConsistencyCheck(s),
            masked_input::Next::Unmasking(s) => State::Unmasking(s),
        }
    }

    fn wait_from(&mut self, now: Instant) {
        self.deadline = Some(now + self.ctx.config.stage_timeout * 2);
    }
}

/// A client that accused some senders instead of masking: what it accused,
/// and the key it may reveal once, if the server asks.
struct Accuser {
    /// The senders it accused, ascending.
    accused: Vec<ClientId>,
    /// Its `c_sk`, kept for the server's request in a semi-honest round
    /// (`None` elsewhere, or once revealed).
    share_secret: Option<zeroize::Zeroizing<[u8; 32]>>,
    /// Whether it already answered (or the old unasked form revealed).
    revealed: bool,
}

impl Accuser {
    /// Whether a request for the key naming `senders` may be answered.
    fn check_request(&self, ctx: &Context, senders: &[ClientId]) -> Result<(), Violation> {
        let model = ctx.config.threat_model;
        if !crate::accusation::reveals_share_key(model) {
            return Err(Violation::RevealInThreatModel(model));
        }
        if self.revealed || self.share_secret.is_none() {
            return Err(Violation::SecondRevealRequest);
        }
        if !strictly_ascending(senders, |id| *id) {
            return Err(Violation::Unsorted("RevealShareKeyRequest"));
        }
        if senders.is_empty() {
            return Err(Violation::EmptyRevealRequest);
        }
        if let Some(unaccused) = senders.iter().find(|s| !self.accused.contains(s)) {
            return Err(Violation::RevealForUnaccused(*unaccused));
        }
        Ok(())
    }
}

/// Checks that ids are strictly ascending: sorted without duplicates.
fn strictly_ascending<T>(items: &[T], id: impl Fn(&T) -> ClientId) -> bool {
    items.windows(2).all(|w| id(&w[0]) < id(&w[1]))
}

/// The shares a client holds after ShareKeys, and for whom: what it may later
/// reveal, one secret per neighbour.
///
/// A client holds no share of its own secrets (see `advertise_keys`).
struct HeldShares {
    /// For each neighbour that sealed shares for this client, ascending:
    /// (neighbour, share of its masking key, share of its self-mask seed).
    from_neighbours: Vec<(ClientId, crate::shamir::Share, crate::shamir::Share)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PublicKeys;
    use crate::messages::Advert;

    fn client(now: Instant) -> ClientSession {
        let mut rng = ChaCha20Rng::from_seed([5; 32]);
        ClientSession::new(RoundConfig::new(1, 3, 4), ClientId(0), now, &mut rng).unwrap()
    }

    #[test]
    fn refused_calls_leave_the_session_in_its_stage() {
        let now = Instant::now();
        let mut client = client(now);
        client.submit_input(vec![1; 4]).unwrap();
        assert_eq!(
            client.submit_input(vec![1; 4]),
            Err(ClientSessionError::InputAlreadySubmitted)
        );
        assert_eq!(client.stage(), Some(Stage::AdvertiseKeys));
        assert_eq!(client.state.name(), "advertise-keys");
        let stale = ServerMessage {
            round_id: 2,
            body: ServerBody::SealedShares(Vec::new()),
        };
        assert!(matches!(
            client.handle_message(now, stale),
            Err(ClientSessionError::WrongRound { .. })
        ));
        assert_eq!(client.state.name(), "advertise-keys");
    }

    #[test]
    fn a_violation_leaves_the_session_refused_not_mid_transition() {
        let now = Instant::now();
        let mut client = client(now);
        let advert = Advert::from(PublicKeys {
            c_pk: [1; 32],
            s_pk: [2; 32],
        });
        let unsorted = ServerMessage {
            round_id: 1,
            body: ServerBody::NeighbourKeys(vec![
                (ClientId(2), advert.clone()),
                (ClientId(1), advert),
            ]),
        };
        assert_eq!(
            client.handle_message(now, unsorted),
            Err(Violation::Unsorted("NeighbourKeys").into())
        );
        assert_eq!(client.state.name(), "refused");
        assert_eq!(client.stage(), None);
        assert_eq!(client.poll_timeout(), None);
        // Every later message or command reports the real end state.
        let late = ServerMessage {
            round_id: 1,
            body: ServerBody::SealedShares(Vec::new()),
        };
        assert_eq!(
            client.handle_message(now, late),
            Err(ClientSessionError::SessionEnded { state: "refused" })
        );
        assert_eq!(
            client.submit_input(vec![1; 4]),
            Err(ClientSessionError::SessionEnded { state: "refused" })
        );
        assert_eq!(client.state.name(), "refused");
    }
}
