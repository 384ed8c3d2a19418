//! The gRPC schema of Tessera (`proto/tessera.proto`) and the code tonic and
//! prost generate from it.
//!
//! The schema is deliberately thin: the secure aggregation messages travel as
//! the canonical byte encodings of `tessera-aggregation` (one codec, tested
//! byte by byte there), and protobuf carries only what the state machines do
//! not define: joining, the round's opening parameters, the round's result,
//! model download and machine-readable error details.
//!
//! The code is generated at build time by `protox` (a pure-Rust `.proto`
//! parser) and `tonic-prost-build`, so no `protoc` binary is needed.

/// The protocol version this build speaks. A client and a server with
/// different versions refuse each other at Join with `VERSION_MISMATCH`.
///
/// 2: the core's wire version 2 (identity signatures in adverts, survivor
/// confirmations and unmasking requests), and identities in Join and
/// RoundStart.
///
/// 3: signatures bound to one session (adverts sign the session hash,
/// survivor sets the transcript hash), no share of a client's own secrets,
/// the Join proof of possession (JoinChallenge / JoinProof), and central DP
/// as exact integer noise; the core's wire version 3.
///
/// 4: the two-step share-key reveal for accusations (the server asks the
/// accusers the threshold's margin affords); the core's wire version 4.
/// Version-3 clients revealed their key unasked, so they are refused at
/// Join.
pub const PROTOCOL_VERSION: u32 = 4;

/// Generated messages and service stubs of package `tessera.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("tessera.v1");
}

pub mod convert;

/// Attaches a machine-readable [`v1::ErrorDetail`] to a status, as every
/// refusal from the server carries one.
pub fn status_with_detail(
    code: tonic::Code,
    message: impl Into<String>,
    detail: &v1::ErrorDetail,
) -> tonic::Status {
    use prost::Message;
    tonic::Status::with_details(code, message, detail.encode_to_vec().into())
}

/// The [`v1::ErrorDetail`] of a status, if it carries one.
pub fn error_detail(status: &tonic::Status) -> Option<v1::ErrorDetail> {
    use prost::Message;
    if status.details().is_empty() {
        return None;
    }
    v1::ErrorDetail::decode(status.details()).ok()
}
