//! Red-team attacks on the Join proof of possession (issue 11, item 6).
//!
//! - A challenge sent twice: a server that asks the SDK for a second proof
//!   on one stream is refused, and the SDK signs only once.
//! - The relay: mallory holds a token on the real server but not alice's
//!   key. She names alice's key in a Join, receives the real server's
//!   challenge, and shows it to alice from a server of her own that alice's
//!   SDK dials with the same identity. The SDK signs whatever challenge and
//!   principal a server states, and the proof names neither server, so the
//!   signature opens mallory's stream on the real server: she squats
//!   alice's identity. This test pins that open limitation (the proof does
//!   not bind the server the client meant to reach, nor a credential of the
//!   client's own).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use tessera_aggregation::identity::IdentityKey;
use tessera_client::ClientError;
use tessera_proto::PROTOCOL_VERSION;
use tessera_proto::v1::aggregator_client::AggregatorClient;
use tessera_proto::v1::aggregator_server::{Aggregator, AggregatorServer};
use tessera_proto::v1::{self, client_frame, server_frame};
use tessera_tests::{ServerOptions, TestServer};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

type FrameStream = ReceiverStream<Result<v1::ServerFrame, Status>>;

/// Mallory's server: answers a Join with `challenges` (each a JoinChallenge
/// frame), records every JoinProof it receives, and hands the first to
/// `relay`.
struct Phisher {
    challenges: Vec<v1::JoinChallenge>,
    proofs: Arc<Mutex<Vec<v1::JoinProof>>>,
    relay: Mutex<Option<oneshot::Sender<v1::JoinProof>>>,
}

#[tonic::async_trait]
impl Aggregator for Phisher {
    type ParticipateStream = FrameStream;

    async fn participate(
        &self,
        request: Request<Streaming<v1::ClientFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let mut inbound = request.into_inner();
        match inbound.message().await?.and_then(|f| f.frame) {
            Some(client_frame::Frame::Join(_)) => {}
            _ => return Err(Status::invalid_argument("expected Join")),
        }
        let (tx, rx) = mpsc::channel(8);
        for challenge in &self.challenges {
            tx.send(Ok(v1::ServerFrame {
                frame: Some(server_frame::Frame::JoinChallenge(challenge.clone())),
            }))
            .await
            .unwrap();
        }
        let proofs = Arc::clone(&self.proofs);
        let relay = self.relay.lock().unwrap().take();
        tokio::spawn(async move {
            let mut relay = relay;
            while let Ok(Some(frame)) = inbound.message().await {
                if let Some(client_frame::Frame::JoinProof(proof)) = frame.frame {
                    proofs.lock().unwrap().push(proof.clone());
                    if let Some(relay) = relay.take() {
                        let _ = relay.send(proof);
                    }
                }
            }
            // Keep the response stream open until the client hangs up.
            drop(tx);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_model(
        &self,
        _request: Request<v1::GetModelRequest>,
    ) -> Result<Response<v1::GetModelResponse>, Status> {
        Err(Status::unimplemented("no models here"))
    }
}

/// Serves `service` on a fresh loopback port (plain HTTP/2); the sender
/// stops it.
async fn serve(service: Phisher) -> (String, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, signal) = oneshot::channel::<()>();
    let router = tonic::transport::Server::builder().add_service(AggregatorServer::new(service));
    tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = signal.await;
            })
            .await
            .unwrap();
    });
    (format!("http://{addr}"), shutdown)
}

fn alice_at(url: &str, key: IdentityKey) -> tessera_client::Client {
    let trusted = vec![key.verifying_key()];
    tessera_client::Client::builder(url.to_owned())
        .identity(key)
        .trusted_identities(trusted)
        .round_timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A server that sends a second JoinChallenge on the same stream gets at most one
/// proof and a refusal: the SDK is no signing oracle for repeated
/// challenges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_join_challenge_on_one_stream_is_refused_and_not_signed() {
    let alice = IdentityKey::generate(&mut rand::rngs::StdRng::seed_from_u64(90));
    let proofs = Arc::new(Mutex::new(Vec::new()));
    let challenge = |byte: u8| v1::JoinChallenge {
        challenge: vec![byte; 32],
        principal: "client-0".into(),
    };
    let (url, _stop) = serve(Phisher {
        challenges: vec![challenge(1), challenge(2)],
        proofs: Arc::clone(&proofs),
        relay: Mutex::new(None),
    })
    .await;
    let err = alice_at(&url, alice)
        .participate(&[0.0; 4])
        .await
        .unwrap_err();
    match &err {
        ClientError::ServerMisbehaved { problem, .. } => {
            assert!(problem.contains("second JoinChallenge"), "{err:?}")
        }
        other => panic!("expected ServerMisbehaved, got {other:?}"),
    }
    // Give the phisher's reader a moment to see anything else the SDK sent.
    // At most one proof: the first may be lost when the client resets the
    // stream on refusing the second challenge, but a second never exists.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signed = proofs.lock().unwrap().len();
    assert!(signed <= 1, "signed {signed} challenges on one stream");
}

/// The relay. Mallory's stream on the real server is admitted under
/// alice's enrolled name with a proof alice made for mallory's own server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_relayed_through_another_server_squats_the_identity() {
    let ts = TestServer::start(ServerOptions {
        dim: 20,
        min_clients: 3,
        tls_tokens: Some(4),
        identities: Some(3),
        stage_timeout: Duration::from_secs(5),
        ..ServerOptions::default()
    })
    .await;
    let alice = ts.identities[0].clone();

    // Mallory (token 3) names alice's key on the real server.
    let (tx, rx) = mpsc::channel::<v1::ClientFrame>(4);
    tx.send(v1::ClientFrame {
        frame: Some(client_frame::Frame::Join(v1::Join {
            protocol_version: PROTOCOL_VERSION,
            dim: 20,
            identity_key: alice.verifying_key().to_bytes().to_vec(),
        })),
    })
    .await
    .unwrap();
    let mut request = Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", ts.tokens[3]).parse().unwrap(),
    );
    let mut inbound = AggregatorClient::new(ts.channel().await)
        .participate(request)
        .await
        .unwrap()
        .into_inner();
    let challenge = match inbound.message().await.unwrap().and_then(|f| f.frame) {
        Some(server_frame::Frame::JoinChallenge(c)) => c,
        other => panic!("expected a challenge, got {other:?}"),
    };

    // Alice's SDK dials mallory's server with the same identity and signs
    // the relayed challenge.
    let (relay, relayed) = oneshot::channel();
    let (url, _stop) = serve(Phisher {
        challenges: vec![challenge],
        proofs: Arc::new(Mutex::new(Vec::new())),
        relay: Mutex::new(Some(relay)),
    })
    .await;
    let victim = tokio::spawn(async move { alice_at(&url, alice).participate(&[0.0; 20]).await });
    let proof = tokio::time::timeout(Duration::from_secs(10), relayed)
        .await
        .expect("alice answers the relayed challenge")
        .unwrap();
    victim.abort();

    tx.send(v1::ClientFrame {
        frame: Some(client_frame::Frame::JoinProof(proof)),
    })
    .await
    .unwrap();
    let admitted = match inbound.message().await {
        Ok(Some(v1::ServerFrame {
            frame: Some(server_frame::Frame::Lobby(_)),
        })) => true,
        Err(status) => {
            eprintln!("the relayed proof was refused: {status:?}");
            false
        }
        other => panic!("unexpected answer {other:?}"),
    };
    assert!(
        admitted,
        "the relayed proof no longer opens mallory's stream: the limitation is fixed, update this test"
    );
    // Mallory hangs up; the server forgets her lobby slot.
    drop(tx);
    drop(inbound);
    ts.server.shutdown().await.unwrap();
}
