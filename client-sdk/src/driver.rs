//! Running one round over one `Participate` stream: the async driver around
//! [`tessera_aggregation::ClientSession`], in the manner of quinn's
//! connection driver around quinn-proto.
//!
//! 1. Send `Join` (protocol version, update length and, with an identity,
//!    its public key). A malicious-server server answers an identity with a
//!    `JoinChallenge`, which the client signs once (`JoinProof`) to prove it
//!    holds the key; then wait through the server's `Lobby` frames for
//!    `RoundStart`.
//! 2. Check the round's parameters against this client (protocol version,
//!    dimension) and its [`Policy`](crate::Policy) (threat model, its own
//!    corrupt assumption, clients, threshold, DP noise), all before any key
//!    is generated; encode the update in the round's fixed point, start a
//!    session and hand it the encoded input at once.
//! 3. Loop: send what the session wants sent, act on its events, then wait
//!    for the next server frame or the session's deadline, whichever comes
//!    first, and feed it in.
//! 4. The `RoundResult` frame ends the round.
//!
//! The session enforces the protocol's privacy against the server (one
//! unmasking answer per round, never both secrets of a neighbour); when it
//! refuses a message the client stops taking part. A neighbour's share
//! bundle that does not open is not blamed on the server: the session
//! accuses that neighbour instead and sits the round out, and the call
//! ends with [`ClientError::AccusedNeighbours`] naming it once the server
//! has sent the round's result. In a semi-honest round the server may ask
//! for the client's share key to prove the accusation before it tells
//! anyone who survived; the session answers one such request naming
//! senders it accused, and refuses any other (as the server breaking the
//! protocol). The result names every client the server evicted, so an
//! aborted round says who misbehaved.

use std::time::Instant;

use prost::Message as _;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use tessera_aggregation::identity::{ClientIdentity, IdentityDirectory, IdentityPublicKey};
use tessera_aggregation::{
    ClientEvent, ClientId, ClientSession, ClientSessionError, RoundConfig, ServerMessage, Stage,
};
use tessera_dp::encoding::Encoded;
use tessera_dp::encoding::FixedPoint;
use tessera_dp::extras::{ExtrasError, ExtrasLayout};
use tessera_dp::mechanism::DistributedEncoding;
use tessera_proto::v1::{self, client_frame, server_frame};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::ClientInner;
use crate::error::{ClientError, Eviction, Phase, from_status};
use crate::progress::{Progress, ProgressSink};

/// What a client learns from a round it took part in.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundOutcome {
    /// The round.
    pub round_id: u64,
    /// This client's id in the round.
    pub client_id: u32,
    /// How many clients' inputs are in the aggregate.
    pub survivors: u32,
    /// The model version the server published from this round.
    pub model_version: u64,
    /// Whether the update was scaled down to the round's clip norm; the
    /// fraction of clipped updates tells an application whether its clip
    /// norm is too tight.
    pub clipped: bool,
    /// The update's L2 norm before clipping.
    pub update_norm: f32,
    /// Bytes of gRPC frames this client sent in the round (protobuf
    /// encoding, Join included; HTTP/2 and TLS framing excluded).
    pub bytes_sent: u64,
    /// Bytes of gRPC frames this client received, counted the same way.
    pub bytes_received: u64,
    /// The clients the server evicted from the round for breaking the
    /// protocol (their inputs, if any, are not in the aggregate).
    pub evicted: Vec<Eviction>,
    /// Whether the round ran distributed DP (every client added noise
    /// before masking). Whom the epsilon the published model records holds
    /// against is [`GlobalModel::epsilon_against`](crate::GlobalModel::epsilon_against):
    /// an earlier central round of the same job leaves it holding against
    /// the model's consumers only, whatever this round ran.
    pub client_noise: bool,
    /// FedProx's mu this round ran with, from its RoundStart (0: off); the
    /// same as [`GlobalModel::proximal_mu`](crate::GlobalModel::proximal_mu)
    /// unless the server was restarted with another between the fetch
    /// and the round.
    pub proximal_mu: f64,
    /// The L2 norm the round clipped updates to (with adaptive clipping it
    /// changes from round to round).
    pub clip_norm: f32,
}

/// What a client contributes to a round: its update and, for the rounds
/// that ask for them, the example count that weights it and its federated
/// evaluation of the model version it trained from. Both travel inside the
/// secure sum (see `tessera_dp::extras`), noised with the update under
/// distributed DP; a round that does not ask for one ignores it.
///
/// ```
/// use tessera_client::{Contribution, Evaluation};
///
/// let update = [0.1f32, -0.2];
/// let c = Contribution::new(&update)
///     .num_examples(120)
///     .evaluation(Evaluation { correct: 40, total: 50, loss_sum: 12.5 });
/// assert_eq!(c.update(), &update);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Contribution<'a> {
    update: &'a [f32],
    extras: tessera_dp::extras::ClientExtras,
}

impl<'a> Contribution<'a> {
    /// An update with nothing else.
    pub fn new(update: &'a [f32]) -> Self {
        Contribution {
            update,
            extras: tessera_dp::extras::ClientExtras::default(),
        }
    }

    /// The number of examples the update was trained on: required by a
    /// server that weights by example count (`--weighting`), which counts
    /// at most its public `max_examples`.
    #[must_use]
    pub fn num_examples(mut self, n: u64) -> Self {
        self.extras.num_examples = Some(n);
        self
    }

    /// This client's evaluation, on its own held-out examples, of the model
    /// version it trained from (`--federated-eval`); a round that asks for
    /// evaluation counts a client without one as zero examples.
    #[must_use]
    pub fn evaluation(mut self, evaluation: tessera_dp::extras::Evaluation) -> Self {
        self.extras.evaluation = Some(evaluation);
        self
    }

    /// The update.
    pub fn update(&self) -> &'a [f32] {
        self.update
    }

    pub(crate) fn extras(&self) -> &tessera_dp::extras::ClientExtras {
        &self.extras
    }
}

/// How a call of [`Client::participate_or_drop`](crate::Client::participate_or_drop)
/// ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Participation {
    /// The client took part to the end.
    Completed(RoundOutcome),
    /// The client hung up, as asked, instead of sending its message of
    /// `stage`: to the server it is a dropout at that stage.
    Dropped {
        /// The round it left.
        round_id: u64,
        /// Its id in the round.
        client_id: u32,
        /// The stage whose message it did not send.
        stage: Stage,
        /// Bytes sent before it hung up, counted as in [`RoundOutcome`].
        bytes_sent: u64,
    },
}

/// Frames queued towards the server; the protocol sends one per stage, so a
/// few suffice.
const OUTBOX: usize = 8;

/// The round's identity directory from the server's RoundStart, each
/// identity checked against the allow-list the client trusts: the server
/// cannot put identities it made up (whose keys it holds) into the round.
fn directory_from(
    wire: &[Vec<u8>],
    trusted: &[IdentityPublicKey],
) -> Result<IdentityDirectory, String> {
    let mut keys = Vec::with_capacity(wire.len());
    for (slot, bytes) in wire.iter().enumerate() {
        let key = <&[u8; 32]>::try_from(bytes.as_slice())
            .ok()
            .and_then(|b| IdentityPublicKey::from_bytes(b).ok())
            .ok_or_else(|| format!("the identity in slot {slot} is not an Ed25519 public key"))?;
        if !trusted.contains(&key) {
            return Err(format!(
                "the identity {key} in slot {slot} is not in this client's trusted allow-list"
            ));
        }
        keys.push(key);
    }
    IdentityDirectory::new(keys).map_err(|e| e.to_string())
}

/// The answer to the server's `JoinChallenge`: this client's identity
/// signature over the challenge, its key and the principal the server
/// names. Signed once per stream and only for a client with an identity;
/// the signature's label (`tessera/v2/join`) keeps it from serving as any
/// other signed message of the protocol.
fn join_proof(
    client: &ClientInner,
    challenge: &v1::JoinChallenge,
    already: bool,
) -> Result<v1::ClientFrame, ClientError> {
    let misbehaved = |problem: String| ClientError::ServerMisbehaved {
        round_id: None,
        problem,
    };
    if already {
        return Err(misbehaved("sent a second JoinChallenge".into()));
    }
    let Some(key) = &client.identity else {
        return Err(misbehaved(
            "sent a JoinChallenge to a client that named no identity".into(),
        ));
    };
    let (bytes, principal) =
        tessera_proto::convert::join_challenge(challenge).map_err(|e| misbehaved(e.to_string()))?;
    tracing::debug!(principal, "proving possession of the identity");
    Ok(v1::ClientFrame {
        frame: Some(client_frame::Frame::JoinProof(v1::JoinProof {
            signature: key.sign_join(&bytes, principal).0.to_vec(),
        })),
    })
}

/// Joins over `grpc` and runs the round to its end, or until it would send
/// its message of `drop_before`.
pub(crate) async fn participate(
    client: &ClientInner,
    mut grpc: v1::aggregator_client::AggregatorClient<Channel>,
    contribution: &Contribution<'_>,
    drop_before: Option<Stage>,
    rng: &mut StdRng,
) -> Result<Participation, ClientError> {
    let update = contribution.update();
    let update_len = update.len();
    let join_phase = Phase::Join { update_len };
    let dim = u32::try_from(update_len).map_err(|_| ClientError::UpdateLength {
        expected: u64::from(u32::MAX),
        got: update_len as u64,
    })?;
    let (tx, rx) = mpsc::channel(OUTBOX);
    let join = join_frame(client, dim);
    let mut bytes = Bytes {
        sent: join.encoded_len() as u64,
        received: 0,
    };
    tx.try_send(join)
        .expect("a fresh channel has room for the Join");
    let request = client.request(ReceiverStream::new(rx))?;
    let mut inbound = grpc
        .participate(request)
        .await
        .map_err(|status| {
            refused_before_answer(from_status(&status, &client.url, join_phase), &client.url)
        })?
        .into_inner();
    let start = wait_for_round_start(client, &tx, &mut inbound, &mut bytes, join_phase).await?;
    if let Some(config) = &start.config {
        client.progress.report(Progress::RoundStarted {
            round_id: config.round_id,
            client_id: start.client_id,
            clients: config.num_clients,
        });
    }

    let round = Round::start(client, &start, contribution, bytes, rng).await?;
    let span = tracing::info_span!(
        "round",
        round_id = round.round_id,
        client_id = start.client_id,
        stage = tracing::field::Empty,
    );
    round
        .run(client, tx, inbound, drop_before)
        .instrument(span)
        .await
}

/// A connection the server closed before answering the Join at all (no
/// status, no frame) is [`ClientError::Unreachable`], retried as such:
/// nothing of a round was sent, and this is how a server at its connection
/// cap refuses one more connection (closed at once, before TLS, so a flood
/// of connections costs it no handshake), with the clients waiting in its
/// lobby counted in the cap. The message says so.
fn refused_before_answer(error: ClientError, url: &str) -> ClientError {
    match error {
        ClientError::ConnectionLost {
            round_id: None,
            message,
        } => ClientError::Unreachable {
            url: url.to_owned(),
            attempts: 1,
            message: format!(
                "the server closed the connection before answering (a server at its connection cap, max_connections, refuses new connections so; they are retried): {message}"
            ),
        },
        other => other,
    }
}

/// The `Join` frame: protocol version, update length and, with an identity,
/// its public key.
fn join_frame(client: &ClientInner, dim: u32) -> v1::ClientFrame {
    v1::ClientFrame {
        frame: Some(client_frame::Frame::Join(v1::Join {
            protocol_version: tessera_proto::PROTOCOL_VERSION,
            dim,
            identity_key: client
                .identity
                .as_ref()
                .map(|k| k.verifying_key().to_bytes().to_vec())
                .unwrap_or_default(),
        })),
    }
}

/// Waits in the lobby for `RoundStart`, answering the server's
/// `JoinChallenge` (once) on the way.
async fn wait_for_round_start(
    client: &ClientInner,
    tx: &mpsc::Sender<v1::ClientFrame>,
    inbound: &mut tonic::Streaming<v1::ServerFrame>,
    bytes: &mut Bytes,
    join_phase: Phase,
) -> Result<v1::RoundStart, ClientError> {
    let mut challenged = false;
    loop {
        let frame = inbound
            .message()
            .await
            .map_err(|status| from_status(&status, &client.url, join_phase))?;
        bytes.received += frame.as_ref().map_or(0, |f| f.encoded_len() as u64);
        match frame.and_then(|f| f.frame) {
            Some(server_frame::Frame::JoinChallenge(challenge)) => {
                let proof = join_proof(client, &challenge, challenged)?;
                challenged = true;
                bytes.sent += proof.encoded_len() as u64;
                // A closed stream is reported by the receiving side, with
                // the server's status.
                if tx.send(proof).await.is_err() {
                    tracing::debug!("the outgoing stream is closed");
                }
            }
            Some(server_frame::Frame::Lobby(lobby)) => {
                // Still waiting, says the server: restart the call's clock.
                crate::deadline::keep_alive();
                tracing::debug!(
                    waiting = lobby.waiting,
                    min_clients = lobby.min_clients,
                    "waiting in the lobby"
                );
                client.progress.report(Progress::Lobby {
                    waiting: lobby.waiting,
                    min_clients: lobby.min_clients,
                });
            }
            Some(server_frame::Frame::RoundStart(start)) => return Ok(start),
            Some(other) => {
                return Err(ClientError::ServerMisbehaved {
                    round_id: None,
                    problem: format!("sent a {} frame before RoundStart", frame_name(&other)),
                });
            }
            None => {
                return Err(ClientError::ConnectionLost {
                    round_id: None,
                    message: "the server closed the stream before a round started".into(),
                });
            }
        }
    }
}

/// Frame bytes of one round, each way.
#[derive(Clone, Copy, Debug)]
struct Bytes {
    sent: u64,
    received: u64,
}

/// A round this client is in, from `RoundStart` to `RoundResult`.
struct Round {
    round_id: u64,
    session: ClientSession,
    clipped: bool,
    update_norm: f32,
    /// Whether the round runs distributed DP ([`RoundOutcome::client_noise`]).
    client_noise: bool,
    /// The update's clip norm ([`RoundOutcome::clip_norm`]).
    clip_norm: f32,
    /// The session's latest stage, kept because the session itself has
    /// none once it gave up.
    stage: Option<&'static str>,
    bytes: Bytes,
    /// The neighbours this client accused of sealing it bundles that do
    /// not open (its part of the round is then over).
    accused: Option<Vec<u32>>,
    /// Whether the session revealed its share key at the server's request,
    /// to prove its accusation.
    revealed_key: bool,
    /// Why the server aborted the round, once it said so.
    aborted: Option<tessera_aggregation::messages::AbortReason>,
    /// Where stage changes are reported to the app, and the last stage
    /// reported.
    progress: ProgressSink,
    reported: Option<Stage>,
    /// FedProx's mu from RoundStart ([`RoundOutcome::proximal_mu`]).
    proximal_mu: f64,
}

/// The server sent something this client cannot accept, in round
/// `round_id` if it is known yet.
fn bad(round_id: Option<u64>, problem: String) -> ClientError {
    ClientError::ServerMisbehaved { round_id, problem }
}

impl Round {
    /// Checks the round's parameters, encodes the update and starts the
    /// session with it.
    async fn start(
        client: &ClientInner,
        start: &v1::RoundStart,
        contribution: &Contribution<'_>,
        bytes: Bytes,
        rng: &mut StdRng,
    ) -> Result<Round, ClientError> {
        let update = contribution.update();
        let extras = extras_layout(start)?;
        let config = round_config(client, start, update, extras.as_ref())?;
        let round_id = Some(config.round_id);
        let fixed_point = fixed_point(start, &config)?;
        let distributed = distributed_encoding(client, start, &config, fixed_point)?;
        // The policy's DP rules (the session makes the keys, below).
        client
            .policy
            .check_dp(distributed.as_ref())
            .map_err(|v| v.in_round(config.round_id))?;
        if !(start.proximal_mu.is_finite() && start.proximal_mu >= 0.0) {
            return Err(bad(
                round_id,
                format!(
                    "RoundStart's proximal_mu is {}, not a non-negative number",
                    start.proximal_mu
                ),
            ));
        }
        let clip_norm = extras.map_or(fixed_point.clip_norm, |layout| layout.clip_norm);
        // The encoding draws the client's DP noise, one discrete Gaussian a
        // value: the round's heaviest CPU work, off the async workers (see
        // `off_the_runtime`), with its own generator forked from the round's.
        let owned_update = update.to_vec();
        let client_extras = *contribution.extras();
        let mut encoding_rng = StdRng::from_rng(&mut *rng);
        let encoded = off_the_runtime(move || {
            let contribution = Contribution {
                update: &owned_update,
                extras: client_extras,
            };
            match extras {
                None => encode_update(
                    contribution.update(),
                    fixed_point,
                    distributed.as_ref(),
                    round_id,
                    &mut encoding_rng,
                ),
                Some(layout) => encode_with_extras(
                    &layout,
                    &contribution,
                    fixed_point,
                    distributed.as_ref(),
                    round_id,
                    &mut encoding_rng,
                ),
            }
        })
        .await??;
        let mut session = new_session(client, start, &config, rng)?;
        session
            .submit_input(encoded.values)
            .map_err(|e| bad(round_id, e.to_string()))?;
        tracing::info!(
            round_id = config.round_id,
            client_id = start.client_id,
            num_clients = config.num_clients,
            threshold = config.threshold,
            dim = config.dim,
            base_model_version = start.model_version,
            clipped = encoded.clipped,
            distributed_dp = distributed.is_some(),
            "round started"
        );
        Ok(Round {
            round_id: config.round_id,
            session,
            clipped: encoded.clipped,
            update_norm: encoded.norm,
            client_noise: distributed.is_some(),
            clip_norm,
            stage: None,
            bytes,
            accused: None,
            revealed_key: false,
            aborted: None,
            progress: client.progress.clone(),
            reported: None,
            proximal_mu: start.proximal_mu,
        })
    }

    /// Drives the session until the server's `RoundResult`.
    async fn run(
        mut self,
        client: &ClientInner,
        tx: mpsc::Sender<v1::ClientFrame>,
        mut inbound: tonic::Streaming<v1::ServerFrame>,
        drop_before: Option<Stage>,
    ) -> Result<Participation, ClientError> {
        let mut completed = false;
        self.note_stage();
        loop {
            if let Some(dropped) = self.send_pending(&tx, drop_before).await {
                return Ok(dropped);
            }
            completed |= self.handle_events()?;
            match self.receive(client, &mut inbound).await {
                Ok(Some(result)) => {
                    return self
                        .finish(&result, completed)
                        .map(Participation::Completed);
                }
                Ok(None) => {}
                // Told of the abort, the client waits for the result that
                // names who was evicted; without it, the abort stands.
                Err(_) if self.aborted.is_some() => {
                    return Err(ClientError::RoundAborted {
                        round_id: self.round_id,
                        reason: self.aborted,
                        evicted: Vec::new(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends what the session wants sent, or hangs up instead of sending
    /// the message of `drop_before`.
    async fn send_pending(
        &mut self,
        tx: &mpsc::Sender<v1::ClientFrame>,
        drop_before: Option<Stage>,
    ) -> Option<Participation> {
        while let Some(message) = self.session.poll_transmit() {
            let stage = message.body.stage();
            if drop_before == Some(stage) {
                // Dropping both halves of the stream ends it, which the
                // server sees as this client dropping out now.
                tracing::info!(stage = stage.name(), "dropping out, as asked");
                return Some(Participation::Dropped {
                    round_id: self.round_id,
                    client_id: self.session.id().0,
                    stage,
                    bytes_sent: self.bytes.sent,
                });
            }
            // Reported as the client sends its part: the session can pass
            // through a stage within one message from the server.
            if self.reported != Some(stage) {
                self.reported = Some(stage);
                self.progress.report(Progress::Stage {
                    round_id: self.round_id,
                    stage,
                });
            }
            let frame = v1::ClientFrame {
                frame: Some(client_frame::Frame::Message(message.encode())),
            };
            self.bytes.sent += frame.encoded_len() as u64;
            // A closed stream is reported by the receiving side, with
            // the server's status.
            if tx.send(frame).await.is_err() {
                tracing::debug!("the outgoing stream is closed");
            }
        }
        None
    }

    /// Acts on the session's events; returns whether it answered the
    /// unmasking request (its part of the round is done).
    fn handle_events(&mut self) -> Result<bool, ClientError> {
        let round_id = self.round_id;
        let mut completed = false;
        while let Some(event) = self.session.poll_event() {
            match event {
                ClientEvent::MaskedInputSent => tracing::debug!("masked input sent"),
                ClientEvent::Completed => {
                    tracing::debug!("unmasking answered; waiting for the result");
                    completed = true;
                }
                ClientEvent::Aborted(reason) => {
                    tracing::info!(%reason, "the server aborted the round; waiting for its result");
                    self.aborted = Some(reason);
                }
                ClientEvent::Accused(accused) => {
                    let accused: Vec<u32> = accused.iter().map(|c| c.0).collect();
                    tracing::warn!(
                        ?accused,
                        "share bundles from these neighbours did not open: accusing them; this client's update is not in the round"
                    );
                    self.accused = Some(accused);
                }
                ClientEvent::ShareKeyRevealed(senders) => {
                    let senders: Vec<u32> = senders.iter().map(|c| c.0).collect();
                    tracing::info!(
                        ?senders,
                        "the server asked for this round's share key to judge the accusation of {senders:?}: revealed"
                    );
                    self.revealed_key = true;
                }
                ClientEvent::TimedOut => {
                    return Err(ClientError::ServerSilent {
                        round_id,
                        stage: self.stage.unwrap_or("unknown"),
                    });
                }
                // The input was submitted at the start.
                _ => {}
            }
        }
        Ok(completed)
    }

    /// Waits for the next server frame or the session's deadline,
    /// whichever comes first, and feeds it in; returns the round's result
    /// when that is the frame.
    async fn receive(
        &mut self,
        client: &ClientInner,
        inbound: &mut tonic::Streaming<v1::ServerFrame>,
    ) -> Result<Option<v1::RoundResult>, ClientError> {
        let round_id = self.round_id;
        let deadline = self.session.poll_timeout();
        // `Streaming::message` is cancel-safe (a poll of the stream), so
        // a deadline that wins the race loses no frame.
        let frame = tokio::select! {
            frame = inbound.message() => frame,
            () = sleep_until(deadline), if deadline.is_some() => {
                self.session.handle_timeout(Instant::now());
                return Ok(None);
            }
        };
        let frame =
            frame.map_err(|status| from_status(&status, &client.url, Phase::Round { round_id }))?;
        self.bytes.received += frame.as_ref().map_or(0, |f| f.encoded_len() as u64);
        match frame.and_then(|f| f.frame) {
            Some(server_frame::Frame::Message(bytes)) => {
                self.handle_message(&bytes)?;
                Ok(None)
            }
            Some(server_frame::Frame::Result(result)) => Ok(Some(result)),
            Some(other) => Err(bad(
                Some(round_id),
                format!("sent a {} frame during the round", frame_name(&other)),
            )),
            None => Err(ClientError::ConnectionLost {
                round_id: Some(round_id),
                message: "the server closed the stream before the round's result".into(),
            }),
        }
    }

    /// Feeds one protocol message to the session; a message the session
    /// refuses as misbehaviour ends the round for this client.
    fn handle_message(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let round_id = Some(self.round_id);
        let message = ServerMessage::decode(bytes)
            .map_err(|e| bad(round_id, format!("malformed protocol message: {e}")))?;
        match self.session.handle_message(Instant::now(), message) {
            Ok(()) => self.note_stage(),
            Err(ClientSessionError::ServerMisbehaved(violation)) => {
                return Err(bad(round_id, violation.to_string()));
            }
            // Stale (another round) or after the session ended:
            // nothing to act on.
            Err(other) => tracing::debug!(error = %other, "ignored a server message"),
        }
        Ok(())
    }

    /// Records the session's stage in the round's span when it changes.
    fn note_stage(&mut self) {
        let stage = self.session.stage().map(|s| s.name());
        if stage.is_some() && stage != self.stage {
            self.stage = stage;
            tracing::Span::current().record("stage", stage);
            tracing::debug!("stage started");
        }
    }

    fn finish(
        &self,
        result: &v1::RoundResult,
        completed: bool,
    ) -> Result<RoundOutcome, ClientError> {
        let round_id = self.round_id;
        if result.round_id != round_id {
            return Err(ClientError::ServerMisbehaved {
                round_id: Some(round_id),
                problem: format!("sent the result of round {}", result.round_id),
            });
        }
        let evicted: Vec<Eviction> = result.evicted.iter().map(Eviction::from).collect();
        for eviction in &evicted {
            tracing::warn!(
                client = eviction.client_id,
                reason = %eviction.reason,
                "the server evicted a client: {}",
                eviction.detail
            );
        }
        match result.outcome() {
            v1::Outcome::Completed if self.accused.is_some() => {
                Err(ClientError::AccusedNeighbours {
                    round_id,
                    accused: self.accused.clone().unwrap_or_default(),
                    revealed_key: self.revealed_key,
                })
            }
            v1::Outcome::Completed if completed => {
                tracing::info!(
                    survivors = result.survivors,
                    model_version = result.model_version,
                    "round completed"
                );
                Ok(RoundOutcome {
                    round_id,
                    client_id: self.session.id().0,
                    survivors: result.survivors,
                    model_version: result.model_version,
                    clipped: self.clipped,
                    update_norm: self.update_norm,
                    bytes_sent: self.bytes.sent,
                    bytes_received: self.bytes.received,
                    evicted,
                    client_noise: self.client_noise,
                    proximal_mu: self.proximal_mu,
                    clip_norm: self.clip_norm,
                })
            }
            v1::Outcome::Completed => {
                tracing::info!("round completed without this client");
                Err(ClientError::LeftOut { round_id })
            }
            v1::Outcome::Aborted => {
                let reason = tessera_proto::convert::parse_abort_reason(&result.abort_reason)
                    .or(self.aborted);
                tracing::info!(reason = %result.abort_reason, "round aborted");
                Err(ClientError::RoundAborted {
                    round_id,
                    reason,
                    evicted,
                })
            }
            v1::Outcome::Unspecified => Err(ClientError::ServerMisbehaved {
                round_id: Some(round_id),
                problem: "sent a RoundResult without an outcome".into(),
            }),
        }
    }
}

/// The round's configuration from `RoundStart`, checked against this client
/// (protocol version, dimension) and its policy before anything is built
/// from it, with the encoding this client was told bound into it.
fn round_config(
    client: &ClientInner,
    start: &v1::RoundStart,
    update: &[f32],
    extras: Option<&ExtrasLayout>,
) -> Result<RoundConfig, ClientError> {
    if start.protocol_version != tessera_proto::PROTOCOL_VERSION {
        return Err(ClientError::VersionMismatch {
            ours: tessera_proto::PROTOCOL_VERSION,
            server: start.protocol_version,
        });
    }
    let wire_config = start
        .config
        .as_ref()
        .ok_or_else(|| bad(None, "RoundStart without a round configuration".into()))?;
    let round_id = Some(wire_config.round_id);
    // With extras the round sums the update and then the extras.
    let extra = extras.map_or(0, ExtrasLayout::len);
    if wire_config.dim as usize != update.len() + extra {
        return Err(ClientError::UpdateLength {
            expected: u64::from(wire_config.dim).saturating_sub(extra as u64),
            got: update.len() as u64,
        });
    }
    // The client's own policy, on the wire's numbers: before anything
    // is built from them (the neighbour graph, the peers' keys and
    // shares are O(n)), and before any key is generated or sent.
    client
        .policy
        .check_round(
            wire_config,
            start.identities.len(),
            client.identity.is_some(),
        )
        .map_err(|v| v.in_round(wire_config.round_id))?;
    let mut config =
        RoundConfig::try_from(wire_config).map_err(|e| bad(round_id, e.to_string()))?;
    // Bind the encoding this client was told (fixed point, DP noise)
    // into the session: in signed rounds, peers told another encoding
    // compute another session hash, and their adverts do not verify.
    config.encoding_digest = tessera_proto::convert::encoding_digest_with_extras(
        start.fixed_point.as_ref(),
        start.distributed_dp.as_ref(),
        start.extras.as_ref(),
    );
    Ok(config)
}

/// The round's fixed-point format, which must use the round's bits.
fn fixed_point(start: &v1::RoundStart, config: &RoundConfig) -> Result<FixedPoint, ClientError> {
    let round_id = Some(config.round_id);
    let fixed_point = start
        .fixed_point
        .as_ref()
        .ok_or_else(|| bad(round_id, "RoundStart without a fixed-point format".into()))?;
    let fixed_point =
        FixedPoint::try_from(fixed_point).map_err(|e| bad(round_id, e.to_string()))?;
    if fixed_point.bits != config.bits {
        return Err(bad(
            round_id,
            format!(
                "the fixed-point format has {} bits, the round {}",
                fixed_point.bits, config.bits
            ),
        ));
    }
    Ok(fixed_point)
}

/// The round's distributed DP, if it runs any, checked against the
/// survivors the round can go on with.
fn distributed_encoding(
    client: &ClientInner,
    start: &v1::RoundStart,
    config: &RoundConfig,
    fixed_point: FixedPoint,
) -> Result<Option<DistributedEncoding>, ClientError> {
    let round_id = Some(config.round_id);
    // With distributed DP the client adds its share of the noise before
    // masking; the parameters come from the server but are checked
    // (a server cannot make the sampler loop or the rounding fail
    // silently). Only NaN or infinity could fail the encoding itself,
    // and participate checked those.
    let distributed = start
        .distributed_dp
        .as_ref()
        .map(|dp| tessera_proto::convert::distributed_encoding(dp, fixed_point))
        .transpose()
        .map_err(|e| bad(round_id, e.to_string()))?;
    // The noise is calibrated so that any `min_survivors` honest
    // clients carry the target; the round must not be able to go on
    // with fewer honest survivors, or the sum the server sees (minus the
    // colluders' known noise) would carry less noise than promised. The
    // session enforces the round's floor; the colluders counted are the
    // client's own assumption or the server's, whichever is larger.
    if let Some(encoding) = &distributed {
        let corrupt = client
            .policy
            .corrupt_count(config.num_clients)
            .max(config.corrupt);
        let honest_floor = config.survivor_floor().saturating_sub(corrupt);
        if encoding.dp.min_survivors > honest_floor {
            return Err(bad(
                round_id,
                format!(
                    "distributed DP is calibrated for {} honest survivors but the round goes on with {} survivors of which {corrupt} may collude with the server",
                    encoding.dp.min_survivors,
                    config.survivor_floor()
                ),
            ));
        }
    }
    Ok(distributed)
}

/// The update in the round's fixed point, with this client's share of the
/// DP noise when the round runs distributed DP.
fn encode_update(
    update: &[f32],
    fixed_point: FixedPoint,
    distributed: Option<&DistributedEncoding>,
    round_id: Option<u64>,
    rng: &mut StdRng,
) -> Result<Encoded, ClientError> {
    match distributed {
        None => fixed_point
            .encode(update, rng)
            .map_err(|e| bad(round_id, format!("cannot encode the update: {e}"))),
        Some(encoding) => encoding
            .encode(update, rng)
            .map_err(|e| bad(round_id, format!("cannot encode the update: {e}"))),
    }
}

/// The round's extras, if it carries any, checked.
fn extras_layout(start: &v1::RoundStart) -> Result<Option<ExtrasLayout>, ClientError> {
    let round_id = start.config.as_ref().map(|c| c.round_id);
    start
        .extras
        .as_ref()
        .map(ExtrasLayout::try_from)
        .transpose()
        .map_err(|e| bad(round_id, e.to_string()))
}

/// The vector `[w clip(u) ; extras]` of a round with extras
/// (`tessera_dp::extras`), encoded like an update, with the noise of
/// distributed DP. The round's fixed point bounds the whole vector: its
/// clip norm must be at least the layout's `Δ` (a smaller one would clip
/// the extras into the update and the weights would lie).
fn encode_with_extras(
    layout: &ExtrasLayout,
    contribution: &Contribution<'_>,
    fixed_point: FixedPoint,
    distributed: Option<&DistributedEncoding>,
    round_id: Option<u64>,
    rng: &mut StdRng,
) -> Result<Encoded, ClientError> {
    let delta = layout.joint_bound();
    if fixed_point.clip_norm < delta * (1.0 - 1e-5) {
        return Err(bad(
            round_id,
            format!(
                "the round's fixed-point clip norm {} is below the bound {delta} of its update and extras",
                fixed_point.clip_norm
            ),
        ));
    }
    let vector = layout
        .client_vector(contribution.update(), contribution.extras())
        .map_err(|e| match e {
            ExtrasError::MissingExampleCount => ClientError::InvalidSetting {
                setting: "num_examples",
                problem: format!(
                    "{e} (Contribution::num_examples; in Python participate(update, num_examples=N))"
                ),
            },
            e => bad(round_id, format!("cannot encode the update: {e}")),
        })?;
    let mut encoded = encode_update(&vector.values, fixed_point, distributed, round_id, rng)?;
    encoded.clipped = vector.clipped;
    encoded.norm = vector.norm;
    Ok(encoded)
}

/// A fresh session for the round: with this client's identity and the
/// round's (allow-listed) identity directory in a signed round; a client
/// with an identity refuses an unsigned round (a downgrade).
fn new_session(
    client: &ClientInner,
    start: &v1::RoundStart,
    config: &RoundConfig,
    rng: &mut StdRng,
) -> Result<ClientSession, ClientError> {
    let round_id = Some(config.round_id);
    let id = ClientId(start.client_id);
    match (&client.identity, config.is_signed()) {
        (None, false) => ClientSession::new(config.clone(), id, Instant::now(), rng),
        (Some(key), true) => {
            let directory = directory_from(&start.identities, &client.trusted)
                .map_err(|problem| bad(round_id, problem))?;
            let graph = config
                .neighbour_graph()
                .map_err(|e| bad(round_id, e.to_string()))?;
            ClientSession::with_identity(
                config.clone(),
                &graph,
                id,
                ClientIdentity {
                    key: key.clone(),
                    directory: std::sync::Arc::new(directory),
                },
                Instant::now(),
                rng,
            )
        }
        (Some(_), false) => {
            // A downgrade: this client was set up for the
            // malicious-server model and will not run a weaker one.
            return Err(bad(
                round_id,
                format!(
                    "the round runs the {} threat model; this client has an identity and takes part only in malicious-server rounds",
                    config.threat_model
                ),
            ));
        }
        (None, true) => {
            return Err(ClientError::InvalidSetting {
                setting: "identity",
                problem: "the server runs malicious-server rounds: give the client its enrolled identity and the allow-list (ClientBuilder::identity, trusted_identities)".into(),
            });
        }
    }
    .map_err(|e| bad(round_id, e.to_string()))
}

/// Runs `work` (the update's encoding with its DP noise: up to a second
/// of CPU for a large model) on tokio's blocking pool, so it cannot hold
/// up the runtime's other tasks: the app's connections (their HTTP/2
/// keepalive pings included) keep running meanwhile. Run inline, 1,000
/// demo clients in one process starved their own connections past the
/// server's keepalive timeout. `spawn_blocking` rather than
/// `block_in_place`, which panics on a thread of a current-thread runtime
/// (or a `LocalSet`) that has a multi-threaded runtime's handle entered, a
/// case the SDK cannot detect beforehand.
async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ClientError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => Ok(value),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(ClientError::ConnectionLost {
            round_id: None,
            message: "the async runtime shut down during the round".into(),
        }),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

fn frame_name(frame: &server_frame::Frame) -> &'static str {
    match frame {
        server_frame::Frame::Lobby(_) => "Lobby",
        server_frame::Frame::RoundStart(_) => "RoundStart",
        server_frame::Frame::Message(_) => "protocol message",
        server_frame::Frame::Result(_) => "RoundResult",
        server_frame::Frame::JoinChallenge(_) => "JoinChallenge",
    }
}
