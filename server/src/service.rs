//! The gRPC service: authenticates a client, checks its Join, and hands its
//! stream to the lobby; serves published models. Core errors become
//! `tonic::Status` values here and in the round driver, nowhere else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tessera_aggregation::identity::IdentityPublicKey;
use tessera_proto::v1::aggregator_server::Aggregator;
use tessera_proto::v1::{self, ClientFrame, ErrorKind, client_frame, server_frame};
use tessera_proto::{PROTOCOL_VERSION, status_with_detail};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::info;

use crate::Shared;
use crate::lobby::Participant;
use crate::metrics;
use crate::round::stream_error_status;

/// How long a client has to send its Join after opening the stream.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Frames queued per client; a round sends each client about five, so a
/// full queue means the client stopped reading.
const CLIENT_QUEUE: usize = 32;

/// The `tessera.v1.Aggregator` service.
#[derive(Debug)]
pub struct AggregatorService {
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

    /// Who is calling: a token's name, a client certificate's digest, or an
    /// anonymous name in insecure-dev mode. Refused before the client can
    /// join anything.
    fn authenticate<T>(&self, request: &Request<T>) -> Result<String, Status> {
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
                .authenticate(token)
                .map(|identity| identity.to_string())
                .ok_or_else(|| refuse("the bearer token is not valid"));
        }
        if self.shared.config.tls_client_ca.is_some() {
            // The TLS layer already checked the chain; the leaf's digest
            // names the client.
            let certs = request
                .peer_certs()
                .ok_or_else(|| refuse("a client certificate is required"))?;
            let leaf = certs
                .first()
                .ok_or_else(|| refuse("a client certificate is required"))?;
            let digest = Sha256::digest(leaf.as_ref());
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            return Ok(format!("cert:{hex}"));
        }
        // insecure-dev: every stream is its own anonymous client.
        Ok(format!(
            "anonymous-{}",
            self.anonymous.fetch_add(1, Ordering::Relaxed)
        ))
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

#[tonic::async_trait]
impl Aggregator for AggregatorService {
    type ParticipateStream = ReceiverStream<Result<v1::ServerFrame, Status>>;

    async fn participate(
        &self,
        request: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<Self::ParticipateStream>, Status> {
        let identity = self.authenticate(&request)?;
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
        // enrolled name is who the client is (one identity, one slot).
        let (identity, identity_key) = match &self.shared.enrolled {
            None => (identity, None),
            Some(enrolled) => {
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
                info!(client = %identity, enrolled = %entry.name, "identity enrolled");
                (entry.name.clone(), Some(key))
            }
        };
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let participant = Participant {
            identity: identity.clone(),
            tx: tx.clone(),
            inbound,
            identity_key,
        };
        let waiting = self.shared.lobby.join(participant).map_err(|identity| {
            refuse(
                Code::AlreadyExists,
                ErrorKind::DuplicateClient,
                format!("{identity} is already waiting or in a round"),
            )
        })?;
        info!(client = %identity, waiting, "joined the lobby");
        let _ = tx.try_send(Ok(v1::ServerFrame {
            frame: Some(server_frame::Frame::Lobby(v1::Lobby {
                waiting: waiting as u32,
                min_clients: self.shared.config.min_clients,
            })),
        }));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_model(
        &self,
        request: Request<v1::GetModelRequest>,
    ) -> Result<Response<v1::GetModelResponse>, Status> {
        self.authenticate(&request)?;
        let version = request.into_inner().version;
        if let Some(latest) = self.shared.latest()
            && (version == 0 || version == latest.version)
        {
            return Ok(Response::new((*latest).clone()));
        }
        let store = Arc::clone(&self.shared.store);
        let found =
            tokio::task::spawn_blocking(move || store.lock().expect("store lock").model(version))
                .await
                .map_err(|_| Status::internal("model lookup failed"))?;
        match found {
            Ok(Some((entry, model))) => Ok(Response::new(crate::model_response(&entry, &model))),
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
