//! The driver of one round: owns the [`ServerSession`] and moves bytes
//! between it and the clients' streams.
//!
//! Like quinn's `ConnectionDriver`, one task loops: feed what arrived
//! (`handle_message`, or `handle_dropout` when a stream ends or a client is
//! refused), flush `poll_transmit`, react to `poll_event`, and sleep until
//! the next frame or `poll_timeout`. The state machine decides everything
//! about the protocol; this file only decides what a transport failure
//! means. Unmasking, the one heavy step, runs on the blocking pool (rayon
//! inside) so the executor keeps serving other clients.
//!
//! Every refused message gets its sender a precise gRPC status with an
//! [`ErrorDetail`](tessera_proto::v1::ErrorDetail) and removes that client
//! from the round; the round goes on for the others. Blame goes to the
//! client that broke the protocol, by id and with what it did: in its own
//! status, in the log, in the eviction metric, and in the RoundResult every
//! other client receives. That includes a client evicted because of what
//! another proved about it (a share bundle its receiver showed does not
//! open): the session reports it as [`ServerEvent::Evicted`]. A stream the
//! client cancelled (it gave up or hung up) is a dropout, not a malformed
//! message.
//!
//! Accusations are logged at each step with the accuser's id: when one
//! arrives, when the session asks the accuser for its share key (the reveal
//! step, between the masked inputs and the unmasking requests; its duration
//! and the accusers asked and silent go to the stage metrics under the
//! label `reveal-share-keys`), when it stays unproven and why, and when a
//! key proves it. The key itself never reaches this file's logs: it
//! travels inside the session's message bytes only.

use std::time::{Duration, Instant};

use tessera_aggregation::identity::{IdentityDirectory, IdentityPublicKey};
use tessera_aggregation::messages::{AbortReason, ClientMessage};
use tessera_aggregation::server::{ClientViolation, RoundOutput, ServerSessionError};
use tessera_aggregation::{ClientId, RoundConfig, ServerEvent, ServerSession, Stage};
use tessera_proto::v1::{self, ErrorKind, client_frame, server_frame};
use tessera_proto::{PROTOCOL_VERSION, status_with_detail};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use crate::lobby::{FrameSender, Participant};
use crate::metrics;

/// How a round ended, for the scheduler.
#[derive(Debug)]
pub(crate) enum RoundEnd {
    /// The sum was unmasked.
    Completed(RoundOutput),
    /// No sum.
    Aborted {
        /// Where it stopped.
        stage: Stage,
        /// Why.
        reason: AbortReason,
        /// Clients that completed that stage.
        survivors: u32,
    },
    /// The server is shutting down.
    Shutdown,
}

/// What a client's reader task reports.
#[derive(Debug)]
enum Inbound {
    Frame(ClientId, v1::ClientFrame),
    Failed(ClientId, Status),
    Closed(ClientId),
}

/// A round in progress and its clients' streams.
#[derive(Debug)]
pub(crate) struct RoundDriver {
    session: Option<ServerSession>,
    round_id: u64,
    senders: Vec<Option<FrameSender>>,
    identities: Vec<String>,
    inbound: mpsc::Receiver<Inbound>,
    readers: JoinSet<()>,
    stage_started: Instant,
    /// Survivor count per closed stage, for the round record.
    pub(crate) stages: Vec<(Stage, u32, u32, f64)>,
    /// The clients evicted for breaking the protocol, told to everyone in
    /// the RoundResult.
    evicted: Vec<v1::Eviction>,
    /// The clients' connections are live (see `listener::activity`) until
    /// the round ends (or each client's stream does).
    _live: Vec<crate::listener::LiveGuard>,
}

/// The gRPC status for a message the session refused, and the kind it
/// carries.
fn refusal(error: &ServerSessionError) -> Option<(Code, ErrorKind)> {
    Some(match error {
        ServerSessionError::ClientMisbehaved { violation, .. } => violation_status(violation),
        ServerSessionError::WrongRound { .. } => (Code::FailedPrecondition, ErrorKind::WrongRound),
        ServerSessionError::Late { .. } => (Code::DeadlineExceeded, ErrorKind::Late),
        ServerSessionError::NotInRound { .. } | ServerSessionError::UnknownClient { .. } => {
            (Code::FailedPrecondition, ErrorKind::ProtocolViolation)
        }
        // After the round's end a straggler is simply ignored.
        ServerSessionError::RoundOver { .. } => return None,
        _ => (Code::Internal, ErrorKind::Unspecified),
    })
}

/// The gRPC status code and kind that tell a client what it did wrong.
fn violation_status(violation: &ClientViolation) -> (Code, ErrorKind) {
    match violation {
        ClientViolation::WrongStage { .. } => (Code::FailedPrecondition, ErrorKind::WrongStage),
        ClientViolation::Duplicate(_) => (Code::AlreadyExists, ErrorKind::DuplicateMessage),
        ClientViolation::Bundles(_) | ClientViolation::BadBundle { .. } => {
            (Code::InvalidArgument, ErrorKind::BadShares)
        }
        ClientViolation::MaskedInput(_) => (Code::InvalidArgument, ErrorKind::WrongLength),
        ClientViolation::BadAdvert(_) => (Code::InvalidArgument, ErrorKind::BadAdvert),
        ClientViolation::FalseAccusation { .. } | ClientViolation::Accusation(_) => {
            (Code::InvalidArgument, ErrorKind::BadAccusation)
        }
        _ => (Code::InvalidArgument, ErrorKind::ProtocolViolation),
    }
}

/// Whether a failed stream is the client hanging up (it cancelled the
/// call: it gave up on the round, or its process went away) rather than
/// bytes the server could not read. A hang-up is a dropout; counting it
/// as a malformed message would blame a client that may only have left
/// because another one misbehaved.
fn hung_up(status: &Status) -> bool {
    status.code() == Code::Cancelled
}

fn detail(kind: ErrorKind, round_id: u64) -> v1::ErrorDetail {
    v1::ErrorDetail {
        kind: kind as i32,
        server_protocol_version: PROTOCOL_VERSION,
        round_id,
        expected: 0,
    }
}

/// The status for a stream that failed on the server's side of decoding:
/// an oversized frame, or bytes that are not a frame.
pub(crate) fn stream_error_status(status: &Status, round_id: u64) -> Status {
    match status.code() {
        Code::OutOfRange | Code::ResourceExhausted => status_with_detail(
            Code::ResourceExhausted,
            format!("message too large: {}", status.message()),
            &detail(ErrorKind::TooLarge, round_id),
        ),
        _ => status_with_detail(
            Code::InvalidArgument,
            format!("malformed frame: {}", status.message()),
            &detail(ErrorKind::Malformed, round_id),
        ),
    }
}

impl RoundDriver {
    /// Opens the round: sends every participant its RoundStart (with
    /// FedProx's `proximal_mu`) and starts one reader task per stream.
    pub(crate) fn open(
        config: RoundConfig,
        fixed_point: v1::FixedPoint,
        distributed_dp: Option<v1::DistributedDp>,
        model_version: u64,
        participants: Vec<Participant>,
        proximal_mu: f64,
        extras: Option<v1::RoundExtras>,
    ) -> Result<RoundDriver, ServerSessionError> {
        let now = Instant::now();
        // Every client binds the encoding it is told into its session hash;
        // the server's session must bind the same one to verify adverts.
        let mut config = config;
        config.encoding_digest = tessera_proto::convert::encoding_digest_with_extras(
            Some(&fixed_point),
            distributed_dp.as_ref(),
            extras.as_ref(),
        );
        // Malicious-server model: slot i holds participant i's enrolled
        // identity; the server checks signatures with it and every client
        // gets the list to check against the allow-list it trusts.
        let directory: Option<Vec<IdentityPublicKey>> = config
            .is_signed()
            .then(|| participants.iter().filter_map(|p| p.identity_key).collect());
        let session = match &directory {
            None => ServerSession::new(config.clone(), now)?,
            Some(keys) => {
                let directory = IdentityDirectory::new(keys.clone())?;
                ServerSession::with_identities(
                    config.clone(),
                    config.neighbour_graph()?,
                    std::sync::Arc::new(directory),
                    now,
                )?
            }
        };
        let wire_identities: Vec<Vec<u8>> = directory
            .iter()
            .flatten()
            .map(|k| k.to_bytes().to_vec())
            .collect();
        let (in_tx, inbound) = mpsc::channel(4 * participants.len() + 16);
        let mut readers = JoinSet::new();
        let mut senders = Vec::with_capacity(participants.len());
        let mut identities = Vec::with_capacity(participants.len());
        let mut live = Vec::with_capacity(participants.len());
        let wire_config = v1::RoundConfig::from(&config);
        for (i, p) in participants.into_iter().enumerate() {
            let id = ClientId(i as u32);
            let start = v1::ServerFrame {
                frame: Some(server_frame::Frame::RoundStart(v1::RoundStart {
                    protocol_version: PROTOCOL_VERSION,
                    client_id: id.0,
                    config: Some(wire_config.clone()),
                    fixed_point: Some(fixed_point),
                    model_version,
                    distributed_dp: distributed_dp.clone(),
                    identities: wire_identities.clone(),
                    proximal_mu,
                    extras,
                })),
            };
            let sent = p.tx.try_send(Ok(start)).is_ok();
            senders.push(sent.then_some(p.tx));
            identities.push(p.identity);
            live.extend(p.live);
            let tx = in_tx.clone();
            let mut stream = p.inbound;
            readers.spawn(async move {
                loop {
                    match stream.message().await {
                        Ok(Some(frame)) => {
                            if tx.send(Inbound::Frame(id, frame)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            let _ = tx.send(Inbound::Failed(id, status)).await;
                            return;
                        }
                    }
                }
                let _ = tx.send(Inbound::Closed(id)).await;
            });
        }
        let mut driver = RoundDriver {
            session: Some(session),
            round_id: config.round_id,
            senders,
            identities,
            inbound,
            readers,
            stage_started: now,
            stages: Vec::new(),
            evicted: Vec::new(),
            _live: live,
        };
        // Clients whose stream closed before the round opened are dropouts
        // from the first instant.
        for i in 0..driver.senders.len() {
            if driver.senders[i].is_none() {
                driver.session_mut().handle_dropout(now, ClientId(i as u32));
            }
        }
        Ok(driver)
    }

    fn session_mut(&mut self) -> &mut ServerSession {
        self.session
            .as_mut()
            .expect("session present outside unmasking")
    }

    /// The identities of the round's clients, indexed by client id.
    pub(crate) fn identities(&self) -> &[String] {
        &self.identities
    }

    /// The clients evicted so far (what the round's result will list).
    pub(crate) fn evicted(&self) -> &[v1::Eviction] {
        &self.evicted
    }

    /// Runs the round to its end.
    pub(crate) async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> RoundEnd {
        loop {
            self.flush();
            while let Some(event) = self.session_mut().poll_event() {
                match event {
                    ServerEvent::StageCompleted {
                        stage,
                        survivors,
                        dropped,
                    } => self.stage_closed(stage, survivors, dropped),
                    ServerEvent::UnmaskingReady => {
                        let mut session = self.session.take().expect("session present");
                        let started = Instant::now();
                        // Shamir reconstruction and mask expansion: CPU-bound,
                        // parallel on rayon, off the async executor.
                        let session = tokio::task::spawn_blocking(move || {
                            session.unmask();
                            session
                        })
                        .await
                        .expect("unmasking does not panic");
                        debug!(
                            round = self.round_id,
                            seconds = started.elapsed().as_secs_f64(),
                            "unmasked"
                        );
                        metrics::unmasked(started.elapsed().as_secs_f64(), session.abort_reason());
                        self.session = Some(session);
                    }
                    ServerEvent::Evicted { client, violation } => {
                        self.evicted_by_peer(client, &violation);
                    }
                    ServerEvent::Accused {
                        accuser,
                        accused,
                        proven,
                    } => self.accused(accuser, &accused, proven),
                    ServerEvent::RevealRequested { accuser, senders } => {
                        let senders: Vec<u32> = senders.iter().map(|c| c.0).collect();
                        info!(
                            round = self.round_id,
                            client = accuser.0,
                            ?senders,
                            "asking the client for its share key to judge its accusation of {senders:?}"
                        );
                    }
                    ServerEvent::AccusationUnproven {
                        accuser,
                        accused,
                        reason,
                    } => {
                        let accused: Vec<u32> = accused.iter().map(|c| c.0).collect();
                        info!(
                            round = self.round_id,
                            client = accuser.0,
                            ?accused,
                            "the client's accusation of {accused:?} stays unproven, nobody is evicted for it: {reason}"
                        );
                    }
                    ServerEvent::RevealStepCompleted { asked, answered } => {
                        self.reveal_step_closed(asked, answered);
                    }
                    ServerEvent::Completed(output) => {
                        self.flush();
                        return RoundEnd::Completed(output);
                    }
                    ServerEvent::Aborted {
                        stage,
                        reason,
                        survivors,
                    } => {
                        metrics::stage_aborted(
                            stage,
                            self.stage_started.elapsed().as_secs_f64(),
                            survivors,
                            &self.stages,
                            self.senders.len() as u32,
                        );
                        // Tell the clients (the session queued an Aborted
                        // message for each) before handing back.
                        self.flush();
                        return RoundEnd::Aborted {
                            stage,
                            reason,
                            survivors,
                        };
                    }
                    _ => {}
                }
            }
            let deadline = self.session_mut().poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                inbound = self.inbound.recv() => match inbound {
                    Some(inbound) => self.handle(inbound),
                    None => std::future::pending::<()>().await,
                },
                () = sleep => self.session_mut().handle_timeout(Instant::now()),
                _ = shutdown.changed() => return RoundEnd::Shutdown,
            }
        }
    }

    /// Records that `client` was evicted for `violation`: the metric, and
    /// the list every client hears in the RoundResult.
    fn record_eviction(&mut self, client: ClientId, violation: &ClientViolation) {
        metrics::client_evicted(violation.reason());
        self.evicted.push(v1::Eviction {
            client_id: client.0,
            reason: violation.reason().to_owned(),
            detail: violation.to_string(),
        });
    }

    /// A client evicted because of what another proved about it: it is
    /// told why (it sent no message the server refused just now), and
    /// blamed in the log.
    fn evicted_by_peer(&mut self, client: ClientId, violation: &ClientViolation) {
        self.record_eviction(client, violation);
        warn!(
            round = self.round_id,
            client = client.0,
            reason = violation.reason(),
            "evicted a client: {client} {violation}"
        );
        let (code, kind) = violation_status(violation);
        if let Some(tx) = self.senders[client.index()].take() {
            let message = ServerSessionError::ClientMisbehaved {
                client,
                violation: violation.clone(),
            }
            .to_string();
            let _ = tx.try_send(Err(status_with_detail(
                code,
                message,
                &detail(kind, self.round_id),
            )));
        }
    }

    /// Logs an accusation: on arrival (unproven so far), or once a share
    /// key proved it.
    fn accused(&self, accuser: ClientId, accused: &[ClientId], proven: bool) {
        let accused: Vec<u32> = accused.iter().map(|c| c.0).collect();
        if proven {
            warn!(
                round = self.round_id,
                client = accuser.0,
                ?accused,
                "the client proved with its share key that the share bundles of {accused:?} do not open"
            );
        } else {
            warn!(
                round = self.round_id,
                client = accuser.0,
                ?accused,
                "the client could not open the share bundles of {accused:?} and left the round without its input"
            );
        }
    }

    /// The reveal step closed: its duration, the accusers that answered
    /// and those that did not, under the `reveal-share-keys` stage label.
    fn reveal_step_closed(&mut self, asked: u32, answered: u32) {
        let seconds = self.stage_started.elapsed().as_secs_f64();
        self.stage_started = Instant::now();
        info!(
            round = self.round_id,
            stage = metrics::REVEAL_STEP,
            asked,
            answered,
            seconds,
            "reveal step closed"
        );
        metrics::stage_closed(
            metrics::REVEAL_STEP,
            seconds,
            answered,
            asked.saturating_sub(answered),
        );
    }

    fn stage_closed(&mut self, stage: Stage, survivors: u32, dropped: u32) {
        let seconds = self.stage_started.elapsed().as_secs_f64();
        self.stage_started = Instant::now();
        info!(
            round = self.round_id,
            stage = stage.name(),
            survivors,
            dropped,
            seconds,
            "stage closed"
        );
        metrics::stage_closed(stage.name(), seconds, survivors, dropped);
        self.stages.push((stage, survivors, dropped, seconds));
    }

    /// Sends what the session queued; a client whose stream is gone or
    /// hopelessly behind is a dropout.
    fn flush(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let now = Instant::now();
        let mut gone = Vec::new();
        while let Some((to, message)) = session.poll_transmit() {
            let Some(Some(tx)) = self.senders.get(to.index()) else {
                continue;
            };
            let bytes = message.encode();
            let len = bytes.len();
            let frame = v1::ServerFrame {
                frame: Some(server_frame::Frame::Message(bytes)),
            };
            if tx.try_send(Ok(frame)).is_ok() {
                metrics::bytes_sent(len as u64);
            } else {
                gone.push(to);
            }
        }
        for id in gone {
            debug!(round = self.round_id, client = id.0, "stream gone or full");
            self.senders[id.index()] = None;
            session.handle_dropout(now, id);
        }
    }

    fn handle(&mut self, inbound: Inbound) {
        let now = Instant::now();
        match inbound {
            // A client whose stream the server ended (refused, evicted,
            // gone) is out of the round: what it still sends is nobody's
            // business. Judged again, each frame would be logged, counted
            // and, where the session calls it misbehaviour, recorded as
            // one more eviction in the round result and the audit log,
            // which one client could then grow without bound.
            Inbound::Frame(id, _) if self.senders[id.index()].is_none() => {}
            Inbound::Frame(id, frame) => match frame.frame {
                Some(client_frame::Frame::Message(bytes)) => {
                    metrics::bytes_received(bytes.len() as u64);
                    let message = match ClientMessage::decode(&bytes) {
                        Ok(m) => m,
                        Err(e) => {
                            return self.refuse(
                                id,
                                Code::InvalidArgument,
                                ErrorKind::Malformed,
                                format!("message does not decode: {e}"),
                            );
                        }
                    };
                    if let Err(e) = self.session_mut().handle_message(now, id, message) {
                        if let ServerSessionError::ClientMisbehaved { client, violation } = &e {
                            self.record_eviction(*client, violation);
                        }
                        if let Some((code, kind)) = refusal(&e) {
                            self.refuse(id, code, kind, e.to_string());
                        }
                    }
                }
                Some(client_frame::Frame::Join(_)) => self.refuse(
                    id,
                    Code::InvalidArgument,
                    ErrorKind::ExpectedJoin,
                    "a second Join on the same stream".into(),
                ),
                Some(client_frame::Frame::JoinProof(_)) => self.refuse(
                    id,
                    Code::InvalidArgument,
                    ErrorKind::ProtocolViolation,
                    "a JoinProof answers the Join's challenge, not a round message".into(),
                ),
                None => self.refuse(
                    id,
                    Code::InvalidArgument,
                    ErrorKind::Malformed,
                    "an empty frame".into(),
                ),
            },
            Inbound::Failed(id, status) if hung_up(&status) => {
                if self.senders[id.index()].take().is_some() {
                    debug!(
                        round = self.round_id,
                        client = id.0,
                        "the client cancelled its stream"
                    );
                }
                self.session_mut().handle_dropout(now, id);
            }
            Inbound::Failed(id, status) => {
                let reply = stream_error_status(&status, self.round_id);
                let kind = tessera_proto::error_detail(&reply)
                    .map(|d| d.kind().as_str_name())
                    .unwrap_or("UNSPECIFIED");
                metrics::message_rejected(kind);
                warn!(round = self.round_id, client = id.0, kind, "stream failed");
                if let Some(tx) = self.senders[id.index()].take() {
                    let _ = tx.try_send(Err(reply));
                }
                self.session_mut().handle_dropout(now, id);
            }
            Inbound::Closed(id) => {
                if self.senders[id.index()].take().is_some() {
                    debug!(round = self.round_id, client = id.0, "stream closed");
                }
                self.session_mut().handle_dropout(now, id);
            }
        }
    }

    /// Refuses a client's message: it gets the status, and leaves the round.
    fn refuse(&mut self, id: ClientId, code: Code, kind: ErrorKind, message: String) {
        warn!(
            round = self.round_id,
            client = id.0,
            kind = kind.as_str_name(),
            "refused a client message: {message}"
        );
        metrics::message_rejected(kind.as_str_name());
        if let Some(tx) = self.senders[id.index()].take() {
            let _ = tx.try_send(Err(status_with_detail(
                code,
                message,
                &detail(kind, self.round_id),
            )));
        }
        self.session_mut().handle_dropout(Instant::now(), id);
    }

    /// Ends every client's stream with `status` (the server is shutting
    /// down mid-round).
    pub(crate) fn fail_all(&mut self, status: &Status) {
        for tx in self.senders.iter_mut().filter_map(Option::take) {
            let _ = tx.try_send(Err(status.clone()));
        }
        self.readers.abort_all();
    }

    /// Sends every still-connected client the round's result and closes the
    /// streams.
    pub(crate) fn finish(mut self, result: &v1::RoundResult, grace: Duration) {
        let mut result = result.clone();
        self.evicted.sort_by_key(|e| e.client_id);
        result.evicted = std::mem::take(&mut self.evicted);
        for tx in self.senders.iter_mut().filter_map(Option::take) {
            let _ = tx.try_send(Ok(v1::ServerFrame {
                frame: Some(server_frame::Frame::Result(result.clone())),
            }));
        }
        // Readers end when their clients close; give them a moment, then
        // drop them (dropping the JoinSet aborts the rest).
        let mut readers = std::mem::take(&mut self.readers);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(grace, async {
                while readers.join_next().await.is_some() {}
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_aggregation::accusation::BadBundle;
    use tessera_aggregation::server::AdvertProblem;

    #[test]
    fn a_cancelled_stream_is_a_hang_up_not_a_malformed_message() {
        // An honest client that gives up on a round (because another
        // client made it fail) cancels its call; that is no message of its
        // to count as malformed.
        assert!(hung_up(&Status::cancelled("the client hung up")));
        // Bytes the server cannot read still are.
        let unreadable = Status::internal("failed to decode Protobuf message");
        assert!(!hung_up(&unreadable));
        let reply = stream_error_status(&unreadable, 3);
        assert_eq!(
            tessera_proto::error_detail(&reply).map(|d| d.kind()),
            Some(ErrorKind::Malformed)
        );
    }

    #[test]
    fn each_eviction_names_what_the_client_did() {
        let cases = [
            (
                ClientViolation::BadAdvert(AdvertProblem::SameKeys),
                ErrorKind::BadAdvert,
                "invalid_advert",
            ),
            (
                ClientViolation::BadBundle {
                    receiver: ClientId(2),
                    problem: BadBundle::Decrypt,
                },
                ErrorKind::BadShares,
                "bad_share_bundle",
            ),
            (
                ClientViolation::FalseAccusation {
                    accused: ClientId(4),
                },
                ErrorKind::BadAccusation,
                "false_accusation",
            ),
        ];
        for (violation, kind, reason) in cases {
            assert_eq!(violation_status(&violation).1, kind);
            assert_eq!(violation.reason(), reason);
            let error = ServerSessionError::ClientMisbehaved {
                client: ClientId(5),
                violation,
            };
            assert_eq!(refusal(&error).map(|(_, k)| k), Some(kind));
            assert!(error.to_string().starts_with("client 5 "), "{error}");
        }
    }
}
