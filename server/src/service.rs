//! The gRPC service: authenticates a client, checks its Join, and hands its
//! stream to the lobby; serves published models. Core errors become
//! `tonic::Status` values here and in the round driver, nowhere else.
//!
//! In the malicious-server model the Join names an enrolled Ed25519
//! identity, and the lobby keys clients by it (one identity, one slot). The
//! key is public, so naming it proves nothing: before the client enters the
//! lobby the server sends a challenge (32 fresh bytes from the OS CSPRNG,
//! one per stream, and the principal the stream authenticated as) and waits,
//! for at most the stage deadline, for a JoinProof: the identity's signature
//! over label, challenge, key and principal
//! ([`IdentityPublicKey::verify_join`], strict verification). Nothing is
//! reserved for the identity until the proof verifies, so a token holder
//! that names someone else's key and never answers blocks nobody, and a
//! proof copied from another stream fails against this stream's challenge.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::TryRng as _;
use tessera_aggregation::identity::{IdentityPublicKey, JOIN_CHALLENGE_BYTES};
use tessera_proto::v1::aggregator_server::Aggregator;
use tessera_proto::v1::{self, ClientFrame, ErrorKind, client_frame, server_frame};
use tessera_proto::{PROTOCOL_VERSION, status_with_detail};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::Shared;
use crate::listener::LiveSlot;
use crate::listener::activity::MAX_CONNECTIONS_PER_CLIENT;
use crate::lobby::{FrameSender, JoinRefused, Participant, not_eligible_status};
use crate::metrics;
use crate::round::stream_error_status;

/// How long a client has to send its Join after opening the stream.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Frames queued per client; a round sends each client about five, so a
/// full queue means the client stopped reading.
const CLIENT_QUEUE: usize = 32;

/// The `tessera.v1.Aggregator` service.
#[derive(Debug)]
pub(crate) struct AggregatorService {
    shared: Arc<Shared>,
    anonymous: AtomicU64,
}

impl AggregatorService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        AggregatorService {
            shared,
            anonymous: AtomicU64::new(0),
        }
    }

    /// Who is calling: a token's name, a client certificate's subject, or an
    /// anonymous name in insecure-dev mode. Refused before the client can
    /// join anything, and refused `RESOURCE_EXHAUSTED` if the principal (a
    /// token's or certificate's name) already has
    /// [`MAX_CONNECTIONS_PER_CLIENT`] other open connections (see
    /// `listener::activity`).
    fn authenticate<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let principal = self.principal(request)?;
        if let Some(name) = &principal
            && let Some(slot) = request.extensions().get::<LiveSlot>()
            && let Err(open) = slot.claim(name)
        {
            return Err(refuse(
                Code::ResourceExhausted,
                ErrorKind::Unavailable,
                format!(
                    "{name} already has {open} connections open to this server, the most one \
                     client may have ({MAX_CONNECTIONS_PER_CLIENT}); close one first"
                ),
            ));
        }
        Ok(principal.unwrap_or_else(|| {
            format!(
                "anonymous-{}",
                self.anonymous.fetch_add(1, Ordering::Relaxed)
            )
        }))
    }

    /// The authenticated principal, `None` in insecure-dev mode (no
    /// credentials: every stream is its own anonymous client, counted
    /// nowhere).
    fn principal<T>(&self, request: &Request<T>) -> Result<Option<String>, Status> {
        let refuse = |why: &str| {
            metrics::message_rejected("UNAUTHENTICATED");
            status_with_detail(
                Code::Unauthenticated,
                why.to_owned(),
                &detail(ErrorKind::Unauthenticated),
            )
        };
        if let Some(tokens) = &self.shared.tokens {
            let token = crate::auth::bearer_from_metadata(request.metadata())
                .map_err(|e| refuse(&e.to_string()))?;
            return tokens
                .current()
                .check(token, std::time::SystemTime::now())
                .map(|name| Some(name.to_string()))
                .map_err(|e| refuse(&e.to_string()));
        }
        if self.shared.config.network.tls_client_ca.is_some() {
            // The TLS layer already checked the chain; the leaf's subject
            // names the client (a renewed certificate is the same client).
            let certs = request
                .peer_certs()
                .ok_or_else(|| refuse("a client certificate is required"))?;
            let leaf = certs
                .first()
                .ok_or_else(|| refuse("a client certificate is required"))?;
            return crate::tls::client_identity(leaf.as_ref())
                .map(Some)
                .map_err(|e| refuse(&e.to_string()));
        }
        Ok(None)
    }
}

fn detail(kind: ErrorKind) -> v1::ErrorDetail {
    v1::ErrorDetail {
        kind: kind as i32,
        server_protocol_version: PROTOCOL_VERSION,
        round_id: 0,
        expected: 0,
    }
}

fn refuse(code: Code, kind: ErrorKind, message: String) -> Status {
    metrics::message_rejected(kind.as_str_name());
    status_with_detail(code, message, &detail(kind))
}

/// Puts a client in the lobby under `name` and tells it how many wait;
/// refuses a name that is already waiting or in a round. The client's
/// connection is live (kept open past the idle timeout) from here for as
/// long as it waits and then takes part, through its request's `slot`:
/// the only place a connection goes live.
fn admit(
    shared: &crate::Shared,
    name: String,
    identity_key: Option<IdentityPublicKey>,
    inbound: Streaming<ClientFrame>,
    tx: FrameSender,
    slot: Option<&LiveSlot>,
) -> Result<(), Status> {
    // Checked again here: a proof may arrive after the server stopped
    // accepting clients (and closed the lobby).
    if let Some(why) = shared.not_accepting() {
        return Err(refuse(Code::Unavailable, ErrorKind::Unavailable, why));
    }
    let participant = Participant {
        identity: name.clone(),
        tx: tx.clone(),
        inbound,
        identity_key,
        // Dropped with the participant if the lobby refuses it.
        live: slot.and_then(LiveSlot::go_live),
    };
    let waiting = shared
        .lobby
        .join(participant)
        .map_err(|refused| match refused {
            JoinRefused::Busy(identity) => refuse(
                Code::AlreadyExists,
                ErrorKind::DuplicateClient,
                format!("{identity} is already waiting or in a round"),
            ),
            JoinRefused::NotEligible {
                identity,
                rounds_left,
            } => {
                metrics::message_rejected(ErrorKind::NotEligible.as_str_name());
                not_eligible_status(&identity, rounds_left)
            }
        })?;
    info!(client = %name, waiting, "joined the lobby");
    let _ = tx.try_send(Ok(v1::ServerFrame {
        frame: Some(server_frame::Frame::Lobby(v1::Lobby {
            waiting: waiting as u32,
            min_clients: shared.config.round.min_clients,
        })),
    }));
    Ok(())
}

/// A Join's pending proof of possession: the challenge sent on one stream
/// and what the proof must cover.
#[derive(Debug)]
struct JoinChallenge {
    /// Fresh for this stream: a proof made for another stream (another
    /// challenge) does not verify here.
    challenge: [u8; JOIN_CHALLENGE_BYTES],
    /// Who the stream authenticated as; the proof covers it.
    principal: String,
    /// The enrolled identity the Join named.
    key: IdentityPublicKey,
}

impl JoinChallenge {
    /// A challenge from the operating system's CSPRNG.
    fn new(principal: String, key: IdentityPublicKey) -> Result<Self, Status> {
        let mut challenge = [0u8; JOIN_CHALLENGE_BYTES];
        rand::rngs::SysRng
            .try_fill_bytes(&mut challenge)
            .map_err(|e| {
                warn!("OS randomness unavailable for a Join challenge: {e}");
                refuse(
                    Code::Unavailable,
                    ErrorKind::Unavailable,
                    "the server cannot draw a Join challenge now".into(),
                )
            })?;
        Ok(Self::with_challenge(challenge, principal, key))
    }

    /// [`JoinChallenge::new`] with a given challenge, for tests.
    fn with_challenge(
        challenge: [u8; JOIN_CHALLENGE_BYTES],
        principal: String,
        key: IdentityPublicKey,
    ) -> Self {
        JoinChallenge {
            challenge,
            principal,
            key,
        }
    }

    /// The frame that asks the client for its proof.
    fn frame(&self) -> v1::ServerFrame {
        v1::ServerFrame {
            frame: Some(server_frame::Frame::JoinChallenge(v1::JoinChallenge {
                challenge: self.challenge.to_vec(),
                principal: self.principal.clone(),
            })),
        }
    }

    /// Checks the client's answer (its second frame, `None` if the stream
    /// ended): a JoinProof that verifies, or a refusal that says why.
    fn check(&self, frame: Option<ClientFrame>) -> Result<(), Status> {
        let proof = match frame.and_then(|f| f.frame) {
            Some(client_frame::Frame::JoinProof(proof)) => proof,
            None => {
                return Err(refuse(
                    Code::Unauthenticated,
                    ErrorKind::IdentityProof,
                    "the stream ended before a JoinProof answered the challenge".into(),
                ));
            }
            Some(_) => {
                return Err(refuse(
                    Code::Unauthenticated,
                    ErrorKind::IdentityProof,
                    "the frame after a challenged Join must be a JoinProof".into(),
                ));
            }
        };
        let verified = tessera_proto::convert::join_proof_signature(&proof)
            .is_ok_and(|sig| self.key.verify_join(&self.challenge, &self.principal, &sig));
        if !verified {
            return Err(refuse(
                Code::PermissionDenied,
                ErrorKind::IdentityProof,
                format!(
                    "the JoinProof is not identity {}'s signature over this stream's challenge",
                    self.key
                ),
            ));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Aggregator for AggregatorService {
    type ParticipateStream = ReceiverStream<Result<v1::ServerFrame, Status>>;

    async fn participate(
        &self,
        request: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<Self::ParticipateStream>, Status> {
        let identity = self.authenticate(&request)?;
        let slot = request.extensions().get::<LiveSlot>().cloned();
        let mut inbound = request.into_inner();
        let join = match tokio::time::timeout(JOIN_TIMEOUT, inbound.message()).await {
            Err(_) => {
                return Err(refuse(
                    Code::DeadlineExceeded,
                    ErrorKind::ExpectedJoin,
                    "no Join within 30 s of opening the stream".into(),
                ));
            }
            Ok(Err(status)) => return Err(stream_error_status(&status, 0)),
            Ok(Ok(None)) => {
                return Err(refuse(
                    Code::InvalidArgument,
                    ErrorKind::ExpectedJoin,
                    "the stream ended before a Join".into(),
                ));
            }
            Ok(Ok(Some(ClientFrame {
                frame: Some(client_frame::Frame::Join(join)),
            }))) => join,
            Ok(Ok(Some(_))) => {
                return Err(refuse(
                    Code::InvalidArgument,
                    ErrorKind::ExpectedJoin,
                    "the first frame must be a Join".into(),
                ));
            }
        };
        if join.protocol_version != PROTOCOL_VERSION {
            let mut d = detail(ErrorKind::VersionMismatch);
            d.expected = u64::from(PROTOCOL_VERSION);
            metrics::message_rejected("VERSION_MISMATCH");
            return Err(status_with_detail(
                Code::FailedPrecondition,
                format!(
                    "client speaks protocol version {}, this server speaks {PROTOCOL_VERSION}",
                    join.protocol_version
                ),
                &d,
            ));
        }
        if join.dim != self.shared.dim {
            let mut d = detail(ErrorKind::WrongLength);
            d.expected = u64::from(self.shared.dim);
            metrics::message_rejected("WRONG_LENGTH");
            return Err(status_with_detail(
                Code::InvalidArgument,
                format!(
                    "the update has {} values, the model has {}",
                    join.dim, self.shared.dim
                ),
                &d,
            ));
        }
        if let Some(why) = self.shared.not_accepting() {
            return Err(refuse(Code::Unavailable, ErrorKind::Unavailable, why));
        }
        // Malicious-server model: only enrolled identities take part, and the
        // enrolled name is who the client is (one identity, one slot), once
        // it has proved it holds the identity's key.
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let Some(enrolled) = &self.shared.enrolled else {
            admit(&self.shared, identity, None, inbound, tx, slot.as_ref())?;
            return Ok(Response::new(ReceiverStream::new(rx)));
        };
        let key = <&[u8; 32]>::try_from(join.identity_key.as_slice())
            .ok()
            .and_then(|bytes| IdentityPublicKey::from_bytes(bytes).ok());
        let Some(key) = key else {
            return Err(refuse(
                Code::Unauthenticated,
                ErrorKind::Unauthenticated,
                "this server runs the malicious-server threat model: the Join must carry the client's 32-byte Ed25519 identity (see `tessera keygen`)".into(),
            ));
        };
        let Some(entry) = enrolled.iter().find(|e| e.key == key) else {
            return Err(refuse(
                Code::PermissionDenied,
                ErrorKind::Unauthenticated,
                format!("identity {key} is not enrolled on this server"),
            ));
        };
        info!(client = %identity, enrolled = %entry.name, "identity enrolled; challenged");
        // The challenge goes out on the response stream, which the client
        // reads only once this handler has returned it: a task waits for
        // the proof and then admits or refuses.
        let pending = JoinChallenge::new(identity, key)?;
        // The token (or certificate) authenticated and the identity is
        // enrolled: the connection has shown credentials, so neither the
        // no-credit deadline (a preface timeout) nor a shorter idle timeout
        // may cut a proof that comes within its own deadline (the stage
        // timeout). The per-principal cap still bounds the connections.
        if let Some(slot) = &slot {
            slot.credit_until(tokio::time::Instant::now() + self.shared.config.round.stage_timeout);
        }
        let _ = tx.try_send(Ok(pending.frame()));
        let shared = Arc::clone(&self.shared);
        let name = entry.name.clone();
        tokio::spawn(async move {
            let mut inbound = inbound;
            let deadline = shared.config.round.stage_timeout;
            let proved = match tokio::time::timeout(deadline, inbound.message()).await {
                Err(_) => Err(refuse(
                    Code::Unauthenticated,
                    ErrorKind::IdentityProof,
                    format!(
                        "no proof of possession of identity {key} within the {} ms deadline",
                        deadline.as_millis()
                    ),
                )),
                Ok(Err(status)) => Err(stream_error_status(&status, 0)),
                Ok(Ok(frame)) => pending.check(frame),
            };
            // Only now, the proof verified, may the connection go live: the
            // OK response that carried the challenge counts for nothing.
            let admitted = proved.and_then(|()| {
                admit(
                    &shared,
                    name.clone(),
                    Some(key),
                    inbound,
                    tx.clone(),
                    slot.as_ref(),
                )
            });
            if let Err(status) = admitted {
                // The stream ends with the refusal. The client never was in
                // the lobby, so nothing is held in the identity's name.
                warn!(client = %pending.principal, enrolled = %name, "join refused: {}", status.message());
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_model(
        &self,
        request: Request<v1::GetModelRequest>,
    ) -> Result<Response<v1::GetModelResponse>, Status> {
        self.authenticate(&request)?;
        // An OK answer credits the connection and restarts its idle clock
        // once (the download has the idle timeout to complete); it never
        // makes the connection live.
        let slot = request.extensions().get::<LiveSlot>().cloned();
        let fetched = |response| {
            if let Some(slot) = &slot {
                slot.fetched();
            }
            Ok(Response::new(response))
        };
        let version = request.into_inner().version;
        if let Some(latest) = self.shared.latest()
            && (version == 0 || version == latest.version)
        {
            return fetched((*latest).clone());
        }
        let store = Arc::clone(&self.shared.store);
        let found = tokio::task::spawn_blocking(move || {
            let store = store.lock().expect("store lock");
            store.model(version).map(|found| {
                found.map(|(entry, model)| {
                    let against = store.epsilon_against(entry.round);
                    (entry, model, against)
                })
            })
        })
        .await
        .map_err(|_| Status::internal("model lookup failed"))?;
        match found {
            Ok(Some((entry, model, against))) => {
                let mut response = crate::model_response(&entry, &model, against);
                response.proximal_mu = self.shared.config.aggregation.proximal_mu;
                fetched(response)
            }
            Ok(None) => Err(refuse(
                Code::NotFound,
                ErrorKind::NoSuchModel,
                format!("no published model has version {version}"),
            )),
            Err(e) => {
                info!("model {version} could not be read: {e}");
                Err(Status::internal(format!(
                    "model {version} could not be read"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;
    use tessera_aggregation::identity::IdentityKey;

    fn proof(key: &IdentityKey, pending: &JoinChallenge) -> Option<ClientFrame> {
        Some(ClientFrame {
            frame: Some(client_frame::Frame::JoinProof(v1::JoinProof {
                signature: key
                    .sign_join(&pending.challenge, &pending.principal)
                    .0
                    .to_vec(),
            })),
        })
    }

    fn kind(status: &Status) -> ErrorKind {
        tessera_proto::error_detail(status)
            .expect("a refusal carries an ErrorDetail")
            .kind()
    }

    #[test]
    fn a_proof_replayed_on_another_stream_is_refused() {
        let alice = IdentityKey::generate(&mut rand::rngs::StdRng::seed_from_u64(1));
        let key = alice.verifying_key();
        // Alice's stream and mallory's, both naming alice's key under the
        // same token name: the challenges differ, so alice's proof, seen on
        // the wire or relayed, does not open mallory's.
        let alices = JoinChallenge::new("client-0".into(), key).unwrap();
        let mallorys = JoinChallenge::new("client-0".into(), key).unwrap();
        assert_ne!(alices.challenge, mallorys.challenge, "fresh per stream");
        let answer = proof(&alice, &alices);
        assert!(alices.check(answer.clone()).is_ok());
        let refused = mallorys.check(answer).unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert_eq!(kind(&refused), ErrorKind::IdentityProof);
        assert!(refused.message().contains("this stream's challenge"));
    }

    #[test]
    fn a_missing_forged_or_malformed_proof_is_refused() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let alice = IdentityKey::generate(&mut rng);
        let mallory = IdentityKey::generate(&mut rng);
        let pending = JoinChallenge::with_challenge(
            [9; JOIN_CHALLENGE_BYTES],
            "client-1".into(),
            alice.verifying_key(),
        );
        // Mallory signs the right challenge with her own key.
        let forged = pending.check(proof(&mallory, &pending)).unwrap_err();
        assert_eq!(forged.code(), Code::PermissionDenied);
        assert_eq!(kind(&forged), ErrorKind::IdentityProof);
        // Alice's signature under another principal.
        let other = JoinChallenge::with_challenge(
            pending.challenge,
            "client-2".into(),
            alice.verifying_key(),
        );
        assert!(pending.check(proof(&alice, &other)).is_err());
        // Not a signature at all.
        for bytes in [Vec::new(), vec![0; 63], vec![0; 64], vec![0xff; 65]] {
            let frame = Some(ClientFrame {
                frame: Some(client_frame::Frame::JoinProof(v1::JoinProof {
                    signature: bytes,
                })),
            });
            assert_eq!(
                pending.check(frame).unwrap_err().code(),
                Code::PermissionDenied
            );
        }
        // No proof: the stream ended, or the client went straight on.
        for frame in [
            None,
            Some(ClientFrame { frame: None }),
            Some(ClientFrame {
                frame: Some(client_frame::Frame::Message(vec![1, 2, 3])),
            }),
        ] {
            let missing = pending.check(frame).unwrap_err();
            assert_eq!(missing.code(), Code::Unauthenticated);
            assert_eq!(kind(&missing), ErrorKind::IdentityProof);
        }
        assert!(pending.check(proof(&alice, &pending)).is_ok());
    }
}
