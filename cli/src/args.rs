//! Flag value types shared by the subcommands, and their parsers.
//!
//! The library's enums are mirrored here as clap value enums so that `--help`
//! lists the accepted names and clap rejects a misspelt one with exit code 2
//! and a message that names the flag.

use clap::ValueEnum;
use tessera_aggregation::ThreatModel;
use tessera_aggregation::mask::Prg;
use tessera_aggregation::sim::plan::GraphFamily;

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

impl From<GraphArg> for GraphFamily {
    fn from(arg: GraphArg) -> Self {
        match arg {
            GraphArg::Complete => GraphFamily::Complete,
            GraphArg::Harary => GraphFamily::Harary,
        }
    }
}

/// The parsers of `--drop STAGE=FRACTION` and of the rate flags: the
/// library's, shared with the Python package so both refuse alike.
pub(crate) use tessera_aggregation::sim::plan::{parse_drop, parse_rate};

#[cfg(test)]
mod tests {
    use super::*;

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
