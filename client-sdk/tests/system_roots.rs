//! `ClientBuilder::tls_system_roots` trusts the operating system's store,
//! and only when asked.
//!
//! rustls-native-certs reads the certificates in `SSL_CERT_FILE` instead
//! of the system store when that variable is set, so a test can stand in
//! its own "system" authority. The variable is read from the process's
//! environment, which a running test cannot change safely (other tests'
//! threads read it; `set_var` is `unsafe` and the crate forbids that), so
//! this binary (no test harness) serves a TLS double, then re-runs itself
//! once per case as a child with `SSL_CERT_FILE` set, and checks each
//! child's verdict. The child uses the blocking client, so it also shows
//! that client over TLS.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tessera_client::{ClientError, RetryPolicy, blocking};
use tessera_proto::v1::aggregator_server::{Aggregator, AggregatorServer};
use tessera_proto::v1::{self};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// Names the case a child runs; unset in the parent.
const CASE: &str = "TESSERA_SYSTEM_ROOTS_CASE";
/// The double's URL, for the child.
const URL: &str = "TESSERA_SYSTEM_ROOTS_URL";
/// Another authority's certificate (PEM file), for the child.
const OTHER_CA: &str = "TESSERA_SYSTEM_ROOTS_OTHER_CA";

/// Answers model downloads with version 9; nothing else.
struct ModelDouble;

#[tonic::async_trait]
impl Aggregator for ModelDouble {
    type ParticipateStream = ReceiverStream<Result<v1::ServerFrame, Status>>;

    async fn participate(
        &self,
        _: Request<Streaming<v1::ClientFrame>>,
    ) -> Result<Response<Self::ParticipateStream>, Status> {
        Err(Status::unimplemented("not in this double"))
    }

    async fn get_model(
        &self,
        _: Request<v1::GetModelRequest>,
    ) -> Result<Response<v1::GetModelResponse>, Status> {
        Ok(Response::new(v1::GetModelResponse {
            version: 9,
            round: 8,
            epsilon: 0.0,
            delta: 0.0,
            epsilon_against: String::new(),
            proximal_mu: 0.0,
            tensors: vec![v1::Tensor {
                name: "w".into(),
                shape: vec![1],
                values: vec![0.5],
            }],
        }))
    }
}

fn main() {
    match std::env::var(CASE) {
        Ok(case) => child(&case),
        Err(_) => parent(),
    }
}

/// Serves the double over TLS with a certificate of authority A, and runs
/// each case in a child whose "system store" is the file given.
fn parent() {
    let dir = tempfile::tempdir().unwrap();
    let authority = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let a_pem = dir.path().join("a.pem");
    let b_pem = dir.path().join("b.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&a_pem, authority.cert.pem()).unwrap();
    std::fs::write(&b_pem, other.cert.pem()).unwrap();
    std::fs::write(&empty, "no certificate here\n").unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let identity = Identity::from_pem(authority.cert.pem(), authority.signing_key.serialize_pem());
    let url = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(AggregatorServer::new(ModelDouble));
        tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
        format!("https://{addr}")
    });

    let cases: [(&str, &Path); 4] = [
        // The server's authority in the system store: trusted.
        ("trusts-the-system-store", &a_pem),
        // Another authority there: the handshake fails.
        ("refuses-an-unknown-authority", &b_pem),
        // Off by default: the server's authority in the system store does
        // not help a client that names another CA.
        ("off-by-default", &a_pem),
        // A store without certificates is a configuration error.
        ("an-empty-store-fails-the-build", &empty),
    ];
    let mut failed = Vec::new();
    for (case, store) in cases {
        let output = Command::new(std::env::current_exe().unwrap())
            .env(CASE, case)
            .env(URL, &url)
            .env(OTHER_CA, &b_pem)
            .env("SSL_CERT_FILE", store)
            .env_remove("SSL_CERT_DIR")
            .output()
            .unwrap();
        let verdict = if output.status.success() {
            "ok"
        } else {
            failed.push(case);
            "FAILED"
        };
        println!(
            "test {case} ... {verdict}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
    println!("test result: ok. 4 passed");
}

/// Runs one case against the parent's double; panics (exit 101) when the
/// client does not behave as the case says.
fn child(case: &str) {
    let url = std::env::var(URL).unwrap();
    let builder = blocking::Client::builder(url)
        // Connecting by IP address: the certificate names "localhost".
        .tls_domain("localhost".into())
        .connect_timeout(Duration::from_secs(10))
        .retry(RetryPolicy::NONE);
    match case {
        "trusts-the-system-store" => {
            let client = builder.tls_system_roots().build_blocking().unwrap();
            assert_eq!(client.latest_model().unwrap().version, 9);
        }
        "refuses-an-unknown-authority" => {
            let client = builder.tls_system_roots().build_blocking().unwrap();
            assert_unreachable(client.latest_model().unwrap_err());
        }
        "off-by-default" => {
            let other = std::fs::read(std::env::var(OTHER_CA).unwrap()).unwrap();
            let client = builder.tls_ca_pem(other).build_blocking().unwrap();
            assert_unreachable(client.latest_model().unwrap_err());
        }
        "an-empty-store-fails-the-build" => {
            let err = builder.tls_system_roots().build_blocking().unwrap_err();
            assert!(matches!(err, ClientError::InvalidTls(_)), "{err:?}");
        }
        other => panic!("unknown case {other}"),
    }
}

/// A failed handshake: the server is not reached as a server.
fn assert_unreachable(err: ClientError) {
    assert!(
        matches!(err, ClientError::Unreachable { attempts: 1, .. }),
        "{err:?}"
    );
}
