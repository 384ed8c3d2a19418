//! The malicious-server threat model over gRPC: enrolled Ed25519 identities
//! sign every advert and the survivor set; the server admits only enrolled
//! identities and clients refuse identities they do not trust or a server
//! that offers a weaker model.

use rand::SeedableRng;
use tessera_aggregation::identity::IdentityKey;
use tessera_client::ClientError;
use tessera_tests::{ServerOptions, TestServer, mean, update};

const FIXED_POINT_ERROR: f32 = 1.0 / 65536.0 + 1e-6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_clients_complete_a_signed_round_and_strangers_are_refused() {
    let dim = 200;
    let ts = TestServer::start(ServerOptions {
        dim,
        min_clients: 6,
        tls_tokens: Some(8),
        identities: Some(6),
        // Bonawitz et al.'s t > (n + corrupt) / 2 on the complete graph: 4
        // of 6 (a majority of the 5 share holders, 3, is below it).
        tweak: |c| c.round.threshold = tessera_server::config::ThresholdRule::Count(4),
        ..ServerOptions::default()
    })
    .await;

    // A client with a valid token but an identity that is not enrolled is
    // refused at the Join, before any round.
    let stranger = IdentityKey::generate(&mut rand::rngs::StdRng::seed_from_u64(1));
    let mut trusted = ts.trusted.clone();
    trusted.push(stranger.verifying_key());
    let client = tessera_client::Client::builder(ts.url.clone())
        .tls_ca_pem(ts.ca_pem.clone().unwrap())
        .token(ts.tokens[6].clone())
        .identity(stranger)
        .trusted_identities(trusted)
        .build()
        .unwrap();
    match client.participate(&update(dim, 99)).await {
        Err(ClientError::AuthRefused { message }) => {
            assert!(message.contains("not enrolled"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A client without an identity is refused too, and told why.
    match ts.client(Some(7)).participate(&update(dim, 98)).await {
        Err(ClientError::AuthRefused { message }) => {
            assert!(message.contains("identity"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    let updates: Vec<Vec<f32>> = (0..6).map(|i| update(dim, i)).collect();
    let tasks: Vec<_> = updates
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, u)| {
            let client = ts.client_with_identity(Some(i), ts.identities[i].clone());
            tokio::spawn(async move { client.participate(&u).await })
        })
        .collect();
    for task in tasks {
        let outcome = task
            .await
            .unwrap()
            .expect("every enrolled client completes");
        assert_eq!(outcome.survivors, 6);
    }
    let model = ts.client(Some(0)).latest_model().await.expect("model");
    let expected = mean(&updates);
    let diff = model
        .flatten()
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff <= FIXED_POINT_ERROR, "differs from FedAvg by {diff}");
    ts.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_an_identity_refuses_a_weaker_threat_model() {
    let ts = TestServer::start(ServerOptions {
        dim: 20,
        min_clients: 3,
        ..ServerOptions::default()
    })
    .await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let keys: Vec<IdentityKey> = (0..3).map(|_| IdentityKey::generate(&mut rng)).collect();
    let trusted: Vec<_> = keys.iter().map(|k| k.verifying_key()).collect();
    let tasks: Vec<_> = keys
        .into_iter()
        .enumerate()
        .map(|(i, key)| {
            let client = tessera_client::Client::builder(ts.url.clone())
                .identity(key)
                .trusted_identities(trusted.clone())
                .build()
                .unwrap();
            tokio::spawn(async move { client.participate(&update(20, i as u64)).await })
        })
        .collect();
    for task in tasks {
        match task.await.unwrap() {
            // The client's policy (malicious-server for a client with an
            // identity) refuses the round before any key leaves it.
            Err(ClientError::PolicyRefused {
                rule: tessera_client::PolicyRule::ThreatModel,
                problem,
                ..
            }) => {
                assert!(problem.contains("semi-honest"), "{problem}")
            }
            other => panic!("expected a refusal of the downgrade, got {other:?}"),
        }
    }
    ts.server.shutdown().await.unwrap();
}
