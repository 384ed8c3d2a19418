//! Any bytes as each protobuf frame a peer sends, then through every
//! conversion the server and the SDK apply to it: no panic, a round
//! configuration that converts is one the core validates, and a Join
//! challenge or proof that converts has its exact length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use tessera_aggregation::RoundConfig;
use tessera_dp::encoding::FixedPoint;
use tessera_proto::v1;

fuzz_target!(|data: &[u8]| {
    // The server checks a JoinProof's length before it verifies anything.
    if let Ok(frame) = v1::ClientFrame::decode(data)
        && let Some(v1::client_frame::Frame::JoinProof(proof)) = &frame.frame
    {
        let _ = tessera_proto::convert::join_proof_signature(proof);
    }
    // The SDK signs a JoinChallenge only if it has exact lengths.
    if let Ok(frame) = v1::ServerFrame::decode(data)
        && let Some(v1::server_frame::Frame::JoinChallenge(challenge)) = &frame.frame
        && let Ok((bytes, principal)) = tessera_proto::convert::join_challenge(challenge)
    {
        assert_eq!(bytes.len(), challenge.challenge.len());
        assert!(principal.len() <= tessera_proto::convert::MAX_PRINCIPAL_BYTES);
    }
    if let Ok(frame) = v1::ServerFrame::decode(data)
        && let Some(v1::server_frame::Frame::RoundStart(start)) = frame.frame
    {
        let config = start.config.as_ref().map(RoundConfig::try_from);
        if let Some(Ok(config)) = &config {
            assert!(config.validate().is_ok());
        }
        if let Some(Ok(fixed_point)) = start.fixed_point.as_ref().map(FixedPoint::try_from)
            && let Some(dp) = &start.distributed_dp
        {
            let _ = tessera_proto::convert::distributed_encoding(dp, fixed_point);
        }
    }
    if let Ok(response) = v1::GetModelResponse::decode(data) {
        let _ = tessera_client::GlobalModel::try_from(response);
    }
    let _ = v1::ErrorDetail::decode(data);
});
