//! Conversions between the protobuf mirrors and the core's types.
//!
//! A round's opening parameters cross the wire as typed protobuf fields (so
//! other-language clients can read them); both ends convert through here so
//! the server and every client agree on the same [`RoundConfig`] and
//! [`FixedPoint`] or refuse the round.

use std::time::Duration;

use tessera_aggregation::config::RoundConfig;
use tessera_aggregation::graph::GraphKind;
use tessera_aggregation::identity::{IdentitySignature, JOIN_CHALLENGE_BYTES, SIGNATURE_BYTES};
use tessera_aggregation::messages::AbortReason;
use tessera_dp::encoding::FixedPoint;
use tessera_dp::extras::{EvalBounds, ExtrasLayout};
use tessera_dp::mechanism::{DistributedDp, DistributedEncoding, NoiseKind};

use crate::v1;

/// A protobuf round parameter the core cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// A field is missing or out of range.
    #[error("round parameter {field}: {problem}")]
    Field {
        /// The protobuf field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

fn field(field: &'static str, problem: impl Into<String>) -> ConvertError {
    ConvertError::Field {
        field,
        problem: problem.into(),
    }
}

impl From<&RoundConfig> for v1::RoundConfig {
    fn from(c: &RoundConfig) -> Self {
        v1::RoundConfig {
            round_id: c.round_id,
            num_clients: c.num_clients,
            threshold: c.threshold,
            min_survivors: c.min_survivors,
            corrupt: c.corrupt,
            harary_k: match c.graph {
                GraphKind::Complete => 0,
                GraphKind::Harary { k } => k,
            },
            graph_seed: c.graph_seed.to_vec(),
            dim: c.dim,
            bits: u32::from(c.bits),
            prg: c.prg.name().to_owned(),
            threat_model: c.threat_model.to_string(),
            stage_timeout_ms: u64::try_from(c.stage_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl TryFrom<&v1::RoundConfig> for RoundConfig {
    type Error = ConvertError;

    /// Converts and validates: a configuration the core would refuse is an
    /// error here, before any key is generated.
    fn try_from(c: &v1::RoundConfig) -> Result<Self, ConvertError> {
        let graph_seed: [u8; 32] = c.graph_seed.as_slice().try_into().map_err(|_| {
            field(
                "graph_seed",
                format!("{} bytes, expected 32", c.graph_seed.len()),
            )
        })?;
        let bits = u8::try_from(c.bits).map_err(|_| field("bits", format!("{}", c.bits)))?;
        let config = RoundConfig {
            round_id: c.round_id,
            num_clients: c.num_clients,
            threshold: c.threshold,
            min_survivors: c.min_survivors,
            corrupt: c.corrupt,
            graph: if c.harary_k == 0 {
                GraphKind::Complete
            } else {
                GraphKind::Harary { k: c.harary_k }
            },
            graph_seed,
            dim: c.dim,
            bits,
            prg: c.prg.parse().map_err(|e| field("prg", format!("{e}")))?,
            threat_model: c
                .threat_model
                .parse()
                .map_err(|e| field("threat_model", format!("{e}")))?,
            stage_timeout: Duration::from_millis(c.stage_timeout_ms),
            // Not on the wire: bound by the receiver (see
            // `encoding_digest`).
            encoding_digest: [0; 32],
        };
        config
            .validate()
            .map_err(|e| field("config", e.to_string()))?;
        Ok(config)
    }
}

impl From<&FixedPoint> for v1::FixedPoint {
    fn from(f: &FixedPoint) -> Self {
        v1::FixedPoint {
            clip_norm: f.clip_norm,
            frac_bits: u32::from(f.frac_bits),
            bits: u32::from(f.bits),
        }
    }
}

impl TryFrom<&v1::FixedPoint> for FixedPoint {
    type Error = ConvertError;

    fn try_from(f: &v1::FixedPoint) -> Result<Self, ConvertError> {
        let frac_bits =
            u8::try_from(f.frac_bits).map_err(|_| field("frac_bits", f.frac_bits.to_string()))?;
        let bits = u8::try_from(f.bits).map_err(|_| field("bits", f.bits.to_string()))?;
        FixedPoint::new(f.clip_norm, frac_bits, bits)
            .map_err(|e| field("fixed_point", e.to_string()))
    }
}

impl From<&DistributedEncoding> for v1::DistributedDp {
    fn from(e: &DistributedEncoding) -> Self {
        v1::DistributedDp {
            noise: noise_name(e.dp.noise).to_owned(),
            target_sigma: e.dp.target_sigma,
            min_survivors: e.dp.min_survivors,
            norm_bound: e.norm_bound,
        }
    }
}

impl From<&ExtrasLayout> for v1::RoundExtras {
    fn from(l: &ExtrasLayout) -> Self {
        v1::RoundExtras {
            clip_norm: l.clip_norm,
            scale: l.scale,
            max_examples: l.weighting.unwrap_or(0),
            eval_max_examples: l.evaluation.map_or(0, |e| e.max_examples),
            eval_max_loss: l.evaluation.map_or(0.0, |e| e.max_loss),
            clip_indicator: l.clip_indicator,
        }
    }
}

impl TryFrom<&v1::RoundExtras> for ExtrasLayout {
    type Error = ConvertError;

    /// Reads a round's extras, checked (a zero bound means "not carried").
    fn try_from(e: &v1::RoundExtras) -> Result<Self, ConvertError> {
        let layout = ExtrasLayout {
            clip_norm: e.clip_norm,
            scale: e.scale,
            weighting: (e.max_examples > 0).then_some(e.max_examples),
            evaluation: (e.eval_max_examples > 0).then_some(EvalBounds {
                max_examples: e.eval_max_examples,
                max_loss: e.eval_max_loss,
            }),
            clip_indicator: e.clip_indicator,
        };
        layout
            .validate()
            .map_err(|err| field("extras", err.to_string()))?;
        Ok(layout)
    }
}

/// The wire name of a noise kind.
pub fn noise_name(noise: NoiseKind) -> &'static str {
    match noise {
        NoiseKind::DiscreteGaussian => "discrete-gaussian",
        NoiseKind::Skellam => "skellam",
    }
}

/// Reads a round's distributed DP parameters, checked against what the
/// samplers can draw and the fixed point they apply to.
pub fn distributed_encoding(
    dp: &v1::DistributedDp,
    fixed_point: FixedPoint,
) -> Result<DistributedEncoding, ConvertError> {
    let noise = match dp.noise.as_str() {
        "discrete-gaussian" => NoiseKind::DiscreteGaussian,
        "skellam" => NoiseKind::Skellam,
        other => {
            return Err(field(
                "distributed_dp.noise",
                format!("unknown noise {other:?}"),
            ));
        }
    };
    let encoding = DistributedEncoding {
        fixed_point,
        dp: DistributedDp {
            noise,
            target_sigma: dp.target_sigma,
            min_survivors: dp.min_survivors,
        },
        norm_bound: dp.norm_bound,
    };
    encoding
        .validate()
        .map_err(|e| field("distributed_dp", e.to_string()))?;
    Ok(encoding)
}

/// The kebab-case name of an abort reason, as `RoundResult.abort_reason`
/// carries it.
pub fn abort_reason_name(reason: AbortReason) -> &'static str {
    match reason {
        AbortReason::BelowThreshold => "below-threshold",
        AbortReason::SharesMissing => "shares-missing",
        AbortReason::Misbehaviour => "misbehaviour",
        AbortReason::Accusations => "accusations",
        _ => "other",
    }
}

/// Parses [`abort_reason_name`]'s output.
pub fn parse_abort_reason(name: &str) -> Option<AbortReason> {
    match name {
        "below-threshold" => Some(AbortReason::BelowThreshold),
        "shares-missing" => Some(AbortReason::SharesMissing),
        "misbehaviour" => Some(AbortReason::Misbehaviour),
        "accusations" => Some(AbortReason::Accusations),
        _ => None,
    }
}

/// The longest principal a client signs in a Join proof. The server's
/// principals are token names (at most 64 characters), certificate digests
/// and anonymous names; a longer one is a server misbehaving.
pub const MAX_PRINCIPAL_BYTES: usize = 256;

/// The challenge and principal of a [`v1::JoinChallenge`], as a client signs
/// them: exactly [`JOIN_CHALLENGE_BYTES`] of challenge and a principal of at
/// most [`MAX_PRINCIPAL_BYTES`].
pub fn join_challenge(
    challenge: &v1::JoinChallenge,
) -> Result<([u8; JOIN_CHALLENGE_BYTES], &str), ConvertError> {
    let bytes =
        <[u8; JOIN_CHALLENGE_BYTES]>::try_from(challenge.challenge.as_slice()).map_err(|_| {
            field(
                "join_challenge.challenge",
                format!(
                    "{} bytes, expected {JOIN_CHALLENGE_BYTES}",
                    challenge.challenge.len()
                ),
            )
        })?;
    if challenge.principal.len() > MAX_PRINCIPAL_BYTES {
        return Err(field(
            "join_challenge.principal",
            format!("longer than {MAX_PRINCIPAL_BYTES} bytes"),
        ));
    }
    Ok((bytes, &challenge.principal))
}

/// The signature of a [`v1::JoinProof`]: exactly [`SIGNATURE_BYTES`].
pub fn join_proof_signature(proof: &v1::JoinProof) -> Result<IdentitySignature, ConvertError> {
    <[u8; SIGNATURE_BYTES]>::try_from(proof.signature.as_slice())
        .map(IdentitySignature)
        .map_err(|_| {
            field(
                "join_proof.signature",
                format!(
                    "{} bytes, expected {SIGNATURE_BYTES}",
                    proof.signature.len()
                ),
            )
        })
}

/// The digest a round binds its encoding with
/// ([`RoundConfig::encoding_digest`]): SHA-256 over a label and the
/// protobuf encodings of the RoundStart's fixed point and distributed DP
/// parameters (prost encodes a message's fields in a fixed order, so the
/// server, which builds them, and a client, which decoded them, compute the
/// same bytes).
pub fn encoding_digest(
    fixed_point: Option<&v1::FixedPoint>,
    distributed_dp: Option<&v1::DistributedDp>,
) -> [u8; 32] {
    use prost::Message;
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"tessera/v3/round-encoding");
    for part in [
        fixed_point.map(Message::encode_to_vec),
        distributed_dp.map(Message::encode_to_vec),
    ] {
        match part {
            None => h.update([0u8]),
            Some(bytes) => {
                h.update([1u8]);
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
        }
    }
    h.finalize().into()
}

/// [`encoding_digest`] with the round's extras bound in as well, so peers
/// told other extras (another clip norm, other bounds) compute another
/// session hash; without extras it is [`encoding_digest`] itself, so
/// rounds without extras keep their hash.
pub fn encoding_digest_with_extras(
    fixed_point: Option<&v1::FixedPoint>,
    distributed_dp: Option<&v1::DistributedDp>,
    extras: Option<&v1::RoundExtras>,
) -> [u8; 32] {
    use prost::Message;
    use sha2::{Digest, Sha256};
    let base = encoding_digest(fixed_point, distributed_dp);
    let Some(extras) = extras else {
        return base;
    };
    let bytes = extras.encode_to_vec();
    let mut h = Sha256::new();
    h.update(b"tessera/v3/round-encoding-extras");
    h.update(base);
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(&bytes);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn the_extras_change_the_encoding_digest_and_their_absence_does_not() {
        let fp = v1::FixedPoint {
            clip_norm: 1.0,
            frac_bits: 16,
            bits: 24,
        };
        let base = encoding_digest(Some(&fp), None);
        assert_eq!(encoding_digest_with_extras(Some(&fp), None, None), base);
        let layout = ExtrasLayout {
            weighting: Some(10),
            ..ExtrasLayout::new(1.0, 0.25)
        };
        let extras = v1::RoundExtras::from(&layout);
        let with = encoding_digest_with_extras(Some(&fp), None, Some(&extras));
        assert_ne!(with, base);
        let other = v1::RoundExtras {
            clip_norm: 0.5,
            ..extras
        };
        assert_ne!(
            encoding_digest_with_extras(Some(&fp), None, Some(&other)),
            with
        );
        assert_eq!(ExtrasLayout::try_from(&extras).unwrap(), layout);
        assert!(
            ExtrasLayout::try_from(&v1::RoundExtras {
                scale: -1.0,
                ..extras
            })
            .is_err()
        );
    }

    #[test]
    fn the_encoding_digest_changes_with_every_stated_parameter() {
        let fp = v1::FixedPoint {
            clip_norm: 1.0,
            frac_bits: 16,
            bits: 24,
        };
        let dp = v1::DistributedDp {
            noise: "discrete-gaussian".into(),
            target_sigma: 65536.0,
            min_survivors: 8,
            norm_bound: 70000.0,
        };
        let base = encoding_digest(Some(&fp), Some(&dp));
        // What a client decodes and re-encodes binds the same digest.
        let again = v1::DistributedDp::decode(dp.encode_to_vec().as_slice()).unwrap();
        assert_eq!(encoding_digest(Some(&fp), Some(&again)), base);
        let less_noise = v1::DistributedDp {
            target_sigma: 60000.0,
            ..dp.clone()
        };
        let fewer = v1::DistributedDp {
            min_survivors: 7,
            ..dp.clone()
        };
        let clip = v1::FixedPoint {
            clip_norm: 2.0,
            ..fp
        };
        for other in [
            encoding_digest(Some(&fp), Some(&less_noise)),
            encoding_digest(Some(&fp), Some(&fewer)),
            encoding_digest(Some(&clip), Some(&dp)),
            encoding_digest(Some(&fp), None),
            encoding_digest(None, Some(&dp)),
        ] {
            assert_ne!(other, base);
        }
    }

    #[test]
    fn round_config_round_trips() {
        let mut config = RoundConfig::new(9, 40, 1000);
        config.graph = GraphKind::Harary { k: 10 };
        config.threshold = 7;
        config.graph_seed = [3; 32];
        config.bits = 20;
        config.prg = "chacha20".parse().unwrap();
        config.stage_timeout = Duration::from_millis(1500);
        let wire = v1::RoundConfig::from(&config);
        assert_eq!(RoundConfig::try_from(&wire).unwrap(), config);
    }

    #[test]
    fn invalid_round_config_is_refused() {
        let mut wire = v1::RoundConfig::from(&RoundConfig::new(1, 10, 5));
        wire.threshold = 1;
        assert!(RoundConfig::try_from(&wire).is_err());
        let mut wire = v1::RoundConfig::from(&RoundConfig::new(1, 10, 5));
        wire.graph_seed.pop();
        let err = RoundConfig::try_from(&wire).unwrap_err();
        assert!(err.to_string().contains("graph_seed"), "{err}");
        let mut wire = v1::RoundConfig::from(&RoundConfig::new(1, 10, 5));
        wire.prg = "rc4".into();
        assert!(RoundConfig::try_from(&wire).is_err());
    }

    #[test]
    fn fixed_point_round_trips_and_validates() {
        let fp = FixedPoint::new(1.0, 16, 24).unwrap();
        assert_eq!(
            FixedPoint::try_from(&v1::FixedPoint::from(&fp)).unwrap(),
            fp
        );
        let bad = v1::FixedPoint {
            clip_norm: 1.0,
            frac_bits: 16,
            bits: 300,
        };
        assert!(FixedPoint::try_from(&bad).is_err());
    }

    #[test]
    fn distributed_dp_round_trips_and_validates() {
        let fp = FixedPoint::new(1.0, 8, 24).unwrap();
        let enc = DistributedEncoding::new(fp, NoiseKind::DiscreteGaussian, 1.5, 8, 100).unwrap();
        let wire = v1::DistributedDp::from(&enc);
        assert_eq!(wire.noise, "discrete-gaussian");
        assert_eq!(distributed_encoding(&wire, fp), Ok(enc));
        let bad = v1::DistributedDp {
            noise: "laplace".into(),
            ..wire.clone()
        };
        assert!(distributed_encoding(&bad, fp).is_err());
        let bad = v1::DistributedDp {
            min_survivors: 0,
            ..wire.clone()
        };
        assert!(distributed_encoding(&bad, fp).is_err());
        let bad = v1::DistributedDp {
            norm_bound: 1.0,
            ..wire
        };
        assert!(distributed_encoding(&bad, fp).is_err());
    }

    #[test]
    fn error_details_survive_a_status() {
        let detail = v1::ErrorDetail {
            kind: v1::ErrorKind::WrongLength as i32,
            server_protocol_version: 0,
            round_id: 4,
            expected: 1000,
        };
        let status =
            crate::status_with_detail(tonic::Code::InvalidArgument, "update of 3 values", &detail);
        assert_eq!(crate::error_detail(&status), Some(detail));
        assert_eq!(crate::error_detail(&tonic::Status::internal("x")), None);
    }

    #[test]
    fn abort_reasons_round_trip() {
        for r in [
            AbortReason::BelowThreshold,
            AbortReason::SharesMissing,
            AbortReason::Misbehaviour,
            AbortReason::Accusations,
        ] {
            assert_eq!(parse_abort_reason(abort_reason_name(r)), Some(r));
        }
    }

    #[test]
    fn join_frames_have_exact_lengths() {
        let mut challenge = v1::JoinChallenge {
            challenge: vec![1; JOIN_CHALLENGE_BYTES],
            principal: "client-0".into(),
        };
        assert_eq!(
            join_challenge(&challenge).unwrap(),
            ([1; JOIN_CHALLENGE_BYTES], "client-0")
        );
        challenge.principal = "x".repeat(MAX_PRINCIPAL_BYTES + 1);
        assert!(join_challenge(&challenge).is_err());
        challenge.principal.clear();
        challenge.challenge.pop();
        let err = join_challenge(&challenge).unwrap_err();
        assert!(err.to_string().contains("31 bytes"), "{err}");
        let proof = v1::JoinProof {
            signature: vec![2; SIGNATURE_BYTES],
        };
        assert_eq!(
            join_proof_signature(&proof).unwrap(),
            IdentitySignature([2; SIGNATURE_BYTES])
        );
        assert!(
            join_proof_signature(&v1::JoinProof {
                signature: vec![2; 65]
            })
            .is_err()
        );
    }
}
