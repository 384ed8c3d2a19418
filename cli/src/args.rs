//! Flag value types shared by the subcommands, and their parsers.
//!
//! The library's enums are mirrored here as clap value enums so that `--help`
//! lists the accepted names and clap rejects a misspelt one with exit code 2
//! and a message that names the flag.

use clap::ValueEnum;
use tessera_aggregation::Stage;
use tessera_aggregation::ThreatModel;
use tessera_aggregation::mask::Prg;

/// `--threat-model`: who the round must stay private against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ThreatArg {
    /// The server follows the protocol but tries to learn inputs.
    SemiHonest,
    /// Adds the consistency-check stage and a larger threshold, which stop
    /// one lie (splitting one client's share holders); not a server that
    /// lies to each partner's holders: against a lying server use
    /// malicious-server.
    SemiMalicious,
    /// The server may deviate in any way: clients sign their keys and the
    /// survivor set with long-term Ed25519 identities and check every
    /// signature.
    MaliciousServer,
}

impl From<ThreatArg> for ThreatModel {
    fn from(arg: ThreatArg) -> Self {
        match arg {
            ThreatArg::SemiHonest => ThreatModel::SemiHonest,
            ThreatArg::SemiMalicious => ThreatModel::SemiMalicious,
            ThreatArg::MaliciousServer => ThreatModel::MaliciousServer,
        }
    }
}

/// `--prg`: the stream cipher that expands mask seeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum PrgArg {
    /// AES-128-CTR: fastest on CPUs with AES instructions.
    #[value(alias = "aes128-ctr")]
    Aes,
    /// ChaCha20: for devices without AES hardware.
    Chacha20,
}

impl PrgArg {
    /// The name printed in reports, as typed on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            PrgArg::Aes => "aes",
            PrgArg::Chacha20 => "chacha20",
        }
    }
}

impl From<PrgArg> for Prg {
    fn from(arg: PrgArg) -> Self {
        match arg {
            PrgArg::Aes => Prg::Aes128Ctr,
            PrgArg::Chacha20 => Prg::ChaCha20,
        }
    }
}

/// `--graph`: the neighbour graph's family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum GraphArg {
    /// Every client is a neighbour of every other (SecAgg).
    Complete,
    /// A Harary graph of even degree k over a random permutation (SecAgg+).
    Harary,
}

/// Parses a rate flag (`--dropout-rate`, `--corrupt-rate`): a fraction in
/// [0, 1), the range the parameter finder accepts.
pub(crate) fn parse_rate(s: &str) -> Result<f64, String> {
    let value: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if (0.0..1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("must be a fraction in [0, 1), got {value}"))
    }
}

/// Parses one `--drop STAGE=FRACTION`.
pub(crate) fn parse_drop(s: &str) -> Result<(Stage, f64), String> {
    let (stage, fraction) = s
        .split_once('=')
        .ok_or_else(|| format!("expected STAGE=FRACTION (e.g. masked-input=0.1), got '{s}'"))?;
    let stage: Stage = stage.trim().parse()?;
    let fraction: f64 = fraction
        .trim()
        .parse()
        .map_err(|_| format!("fraction '{fraction}' for {stage} is not a number"))?;
    if !(0.0..=1.0).contains(&fraction) {
        return Err(format!(
            "fraction for {stage} must be in [0, 1], got {fraction}"
        ));
    }
    Ok((stage, fraction))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_parses_every_stage_and_rejects_bad_input() {
        for stage in Stage::ALL {
            assert_eq!(
                parse_drop(&format!("{}=0.25", stage.name())),
                Ok((stage, 0.25))
            );
        }
        assert_eq!(parse_drop("unmasking=1"), Ok((Stage::Unmasking, 1.0)));
        assert_eq!(parse_drop("unmasking=0"), Ok((Stage::Unmasking, 0.0)));
        for bad in [
            "bogus=0.1",
            "masked-input",
            "masked-input=",
            "masked-input=1.5",
            "masked-input=-0.1",
            "masked-input=NaN",
            "masked-input=x",
        ] {
            assert!(parse_drop(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn rate_is_a_fraction_below_one() {
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert_eq!(parse_rate("0.05"), Ok(0.05));
        for bad in ["1", "1.2", "-0.01", "NaN", "inf", "five"] {
            assert!(parse_rate(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn prg_names_map_to_the_library() {
        assert_eq!(Prg::from(PrgArg::Aes), Prg::Aes128Ctr);
        assert_eq!(Prg::from(PrgArg::Chacha20), Prg::ChaCha20);
        assert_eq!(
            PrgArg::from_str("aes128-ctr", false),
            Ok(PrgArg::Aes),
            "the library's own name is accepted too"
        );
    }
}
