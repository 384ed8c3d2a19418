//! Proof of possession at Join (malicious-server model), over real gRPC.
//!
//! An enrolled identity's public key is public. Mallory holds a valid token
//! but not alice's secret key; she joins naming alice's key before alice
//! does, once staying silent when challenged and once answering with a
//! signature of her own key. Without a proof of possession the server would
//! admit her as alice and refuse the real alice as a duplicate (a squatter
//! could so block every enrolled identity and abort every round). With it,
//! mallory never enters the lobby and alice's round completes.

use std::time::Duration;

use rand::SeedableRng;
use tessera_aggregation::identity::{IdentityKey, IdentityPublicKey};
use tessera_proto::v1::aggregator_client::AggregatorClient;
use tessera_proto::v1::{self, ErrorKind, client_frame, server_frame};
use tessera_proto::{PROTOCOL_VERSION, error_detail};
use tessera_tests::{ServerOptions, TestServer, update};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// What mallory does when the server challenges her Join.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// Never answers (and keeps the stream open).
    Silent,
    /// Signs the challenge with her own key.
    OwnKey,
}

/// How mallory's stream ended.
#[derive(Debug)]
enum Mallory {
    /// The server put her in the lobby (or a round) under the name she
    /// claimed.
    Admitted,
    /// The server ended her stream with this status.
    Refused(tonic::Status),
}

/// Mallory: a valid token, alice's public key in the Join, and no secret
/// key of alice's. `first` is told when the server has answered her Join
/// (so the test can let alice join only after her).
async fn mallory(
    ts: &TestServer,
    token: usize,
    claimed: IdentityPublicKey,
    answer: Answer,
    first: oneshot::Sender<()>,
) -> Mallory {
    let (tx, rx) = mpsc::channel::<v1::ClientFrame>(4);
    tx.send(v1::ClientFrame {
        frame: Some(client_frame::Frame::Join(v1::Join {
            protocol_version: PROTOCOL_VERSION,
            dim: 20,
            identity_key: claimed.to_bytes().to_vec(),
        })),
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", ts.tokens[token]).parse().unwrap(),
    );
    let mut inbound = match AggregatorClient::new(ts.channel().await)
        .participate(request)
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return Mallory::Refused(status),
    };
    let own = IdentityKey::generate(&mut rand::rngs::StdRng::seed_from_u64(66));
    let mut first = Some(first);
    loop {
        let frame = match inbound.message().await {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!("the server ended mallory's stream without a status"),
            Err(status) => return Mallory::Refused(status),
        };
        if let Some(first) = first.take() {
            let _ = first.send(());
        }
        match frame.frame {
            Some(server_frame::Frame::JoinChallenge(challenge)) => match answer {
                Answer::Silent => {}
                Answer::OwnKey => {
                    let bytes = challenge.challenge.as_slice().try_into().unwrap();
                    let forged = own.sign_join(bytes, &challenge.principal);
                    tx.send(v1::ClientFrame {
                        frame: Some(client_frame::Frame::JoinProof(v1::JoinProof {
                            signature: forged.0.to_vec(),
                        })),
                    })
                    .await
                    .unwrap();
                }
            },
            Some(server_frame::Frame::Lobby(_) | server_frame::Frame::RoundStart(_)) => {
                return Mallory::Admitted;
            }
            other => panic!("unexpected frame for mallory: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_holder_without_the_key_cannot_squat_an_enrolled_identity() {
    let dim = 20;
    let ts = TestServer::start(ServerOptions {
        dim,
        min_clients: 3,
        tls_tokens: Some(5),
        identities: Some(3),
        // Also the deadline for the Join's proof of possession.
        stage_timeout: Duration::from_secs(3),
        ..ServerOptions::default()
    })
    .await;
    let alice = ts.identities[0].clone();
    let claimed = alice.verifying_key();

    // Mallory joins twice with alice's public key before alice does: one
    // stream stays silent when challenged, the other signs with her own key.
    // Each Join is answered (a frame, or a refusal that drops `first`)
    // before the next client dials.
    let ts = std::sync::Arc::new(ts);
    let (first, answered) = oneshot::channel();
    let silent = tokio::spawn({
        let ts = ts.clone();
        async move { mallory(&ts, 3, claimed, Answer::Silent, first).await }
    });
    let _ = answered.await;
    let (first, answered) = oneshot::channel();
    let forger = tokio::spawn({
        let ts = ts.clone();
        async move { mallory(&ts, 4, claimed, Answer::OwnKey, first).await }
    });
    let _ = answered.await;

    // Now the enrolled clients, alice first.
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            let client = ts.client_with_identity(Some(i), ts.identities[i].clone());
            tokio::spawn(async move { client.participate(&update(dim, i as u64)).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let outcome = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("enrolled client {i} must complete the round: {e:?}"));
        assert_eq!(outcome.survivors, 3);
    }

    // Mallory never entered the lobby: the forged proof is refused as soon
    // as it arrives, the silent stream at the deadline.
    match forger.await.unwrap() {
        Mallory::Refused(status) => {
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            let kind = error_detail(&status).map(|d| d.kind());
            assert_eq!(kind, Some(ErrorKind::IdentityProof), "{status:?}");
            assert!(status.message().contains("signature"), "{status:?}");
        }
        Mallory::Admitted => panic!("mallory's forged proof admitted her as alice"),
    }
    match silent.await.unwrap() {
        Mallory::Refused(status) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            let kind = error_detail(&status).map(|d| d.kind());
            assert_eq!(kind, Some(ErrorKind::IdentityProof), "{status:?}");
            assert!(status.message().contains("deadline"), "{status:?}");
        }
        Mallory::Admitted => panic!("mallory was admitted as alice without a proof"),
    }
    let ts = std::sync::Arc::into_inner(ts).expect("the tasks are done");
    ts.server.shutdown().await.unwrap();
}
