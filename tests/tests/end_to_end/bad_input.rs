//! Every kind of bad input gets the one client that sent it a precise gRPC
//! status, and the honest clients' round still completes.

use tessera_proto::v1::ErrorKind;
use tessera_tests::{Fault, ScriptedClient, ServerOptions, TestServer, update};
use tonic::Code;

const DIM: u32 = 50;
const HONEST: usize = 5;

struct Case {
    fault: Fault,
    code: Code,
    kind: ErrorKind,
    /// Whether the bad client gets into the round before it is refused
    /// (otherwise an extra honest client fills its place).
    in_round: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_gets_its_status_and_the_round_completes() {
    use Code::*;
    let cases = [
        Case {
            fault: Fault::Garbage,
            code: InvalidArgument,
            kind: ErrorKind::Malformed,
            in_round: true,
        },
        Case {
            fault: Fault::WrongVersion,
            code: FailedPrecondition,
            kind: ErrorKind::VersionMismatch,
            in_round: false,
        },
        Case {
            fault: Fault::WrongRound,
            code: FailedPrecondition,
            kind: ErrorKind::WrongRound,
            in_round: true,
        },
        Case {
            fault: Fault::Replay,
            code: AlreadyExists,
            kind: ErrorKind::DuplicateMessage,
            in_round: true,
        },
        Case {
            fault: Fault::WrongStage,
            code: FailedPrecondition,
            kind: ErrorKind::WrongStage,
            in_round: true,
        },
        Case {
            fault: Fault::ShortVector,
            code: InvalidArgument,
            kind: ErrorKind::WrongLength,
            in_round: true,
        },
        Case {
            fault: Fault::Oversized,
            code: ResourceExhausted,
            kind: ErrorKind::TooLarge,
            in_round: true,
        },
        Case {
            fault: Fault::BadShareCiphertext,
            code: InvalidArgument,
            kind: ErrorKind::BadShares,
            in_round: true,
        },
        Case {
            fault: Fault::NoToken,
            code: Unauthenticated,
            kind: ErrorKind::Unauthenticated,
            in_round: false,
        },
    ];
    // Tokens: 0..5 honest, 5 the bad client, 6 the stand-in.
    let ts = TestServer::start(ServerOptions {
        dim: DIM,
        min_clients: HONEST as u32 + 1,
        tls_tokens: Some(HONEST + 2),
        ..ServerOptions::default()
    })
    .await;
    for (n, case) in cases.iter().enumerate() {
        let seed = 100 * n as u64;
        let mut bad = ScriptedClient::new(update(DIM, seed + 50), seed + 50);
        bad.fault = case.fault;
        bad.token = Some(ts.tokens[HONEST].clone());
        let bad = tokio::spawn(bad.run(ts.channel().await));
        let mut honest = Vec::new();
        let extra = usize::from(!case.in_round);
        for i in 0..HONEST + extra {
            let client = ts.client(Some(if i < HONEST { i } else { HONEST + 1 }));
            let u = update(DIM, seed + i as u64);
            honest.push(tokio::spawn(async move { client.participate(&u).await }));
        }
        let outcome = bad.await.unwrap();
        let status = outcome
            .status
            .unwrap_or_else(|| panic!("{:?}: no status, result {:?}", case.fault, outcome.result));
        assert_eq!(status.code(), case.code, "{:?}: {status:?}", case.fault);
        assert_eq!(
            outcome.kind,
            Some(case.kind),
            "{:?}: {status:?}",
            case.fault
        );
        for h in honest {
            let result = h.await.unwrap();
            let outcome =
                result.unwrap_or_else(|e| panic!("{:?}: honest client failed: {e}", case.fault));
            assert_eq!(
                outcome.survivors,
                (HONEST + extra) as u32,
                "{:?}",
                case.fault
            );
        }
    }

    // A second stream with credentials already waiting is refused.
    let (joined_tx, joined_rx) = tokio::sync::oneshot::channel();
    let mut first = ScriptedClient::new(update(DIM, 7), 7);
    first.token = Some(ts.tokens[HONEST].clone());
    first.joined = Some(joined_tx);
    let first = tokio::spawn(first.run(ts.channel().await));
    joined_rx.await.expect("first stream joined");
    let mut second = ScriptedClient::new(update(DIM, 8), 8);
    second.token = Some(ts.tokens[HONEST].clone());
    let second = second.run(ts.channel().await).await;
    let status = second.status.expect("duplicate identity refused");
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(second.kind, Some(ErrorKind::DuplicateClient));
    let honest: Vec<_> = (0..HONEST)
        .map(|i| {
            let client = ts.client(Some(i));
            let u = update(DIM, 900 + i as u64);
            tokio::spawn(async move { client.participate(&u).await })
        })
        .collect();
    for h in honest {
        assert_eq!(
            h.await.unwrap().expect("honest completes").survivors,
            HONEST as u32 + 1
        );
    }
    let first = first.await.unwrap();
    assert!(
        first.result.is_some(),
        "the first stream took part: {first:?}"
    );
    ts.server.shutdown().await.unwrap();
}
