//! Tessera's secure aggregation core: the protocol of Bonawitz et al.,
//! "Practical Secure Aggregation for Privacy-Preserving Machine Learning"
//! (CCS 2017), with the sparse neighbour graphs of SecAgg+ (Bell et al.,
//! CCS 2020), as pure state machines.
//!
//! A server learns the sum of many clients' vectors and nothing else, even
//! when clients drop out: each client adds a self-mask and pairwise masks
//! that cancel in the sum, and Shamir-shares the secrets behind them so the
//! survivors can help the server remove exactly the masks that do not cancel.
//!
//! The crate does no IO, reads no clock and owns no global RNG (the
//! quinn-proto pattern): [`client::ClientSession`] and
//! [`server::ServerSession`] take messages and the current time as arguments
//! and hand back messages to send, deadlines and events. The in-process
//! simulator, the network server and the tests all drive the same code.
//!
//! The simulator (the `sim` module) is the one part that spawns threads,
//! passes messages over channels and reads the wall clock (to report how
//! long a round computed) and the process's peak memory, so it sits behind the `sim` cargo feature, off by
//! default: without it the crate is exactly the state machines and the maths
//! under them.
//!
//! The stages of a round, in order (Bonawitz et al. section 4):
//! 0. AdvertiseKeys: clients publish two X25519 public keys ([`keys`]),
//!    signed with their long-term identity in the malicious-server model
//!    ([`identity`]). The server refuses an advert whose two keys are
//!    equal, low-order, or copied from another client's advert, and drops
//!    that client only.
//! 1. ShareKeys: clients Shamir-share ([`shamir`]) their masking secret key
//!    and self-mask seed among their neighbours ([`graph`]), sealed for each
//!    receiver.
//! 2. MaskedInputCollection: clients send `x + PRG(b) + Σ ±PRG(s_uv)`
//!    ([`mask`]), packed at `bits` bits per element ([`packing`]). A client
//!    that cannot open a neighbour's share bundle sends an accusation
//!    instead, proving it with its share-encryption secret; the server
//!    evicts whoever lied, and the round goes on while the accusers stay
//!    within the threshold's margin ([`accusation`]).
//! 3. ConsistencyCheck (semi-malicious and malicious-server models):
//!    survivors confirm the survivor set; in the malicious-server model they
//!    sign it, and nobody reveals a share without a quorum of signatures
//!    over one set.
//! 4. Unmasking: survivors reveal the shares the server needs; the server
//!    removes the leftover masks and obtains the sum.
//!
//! The protocol adds ring elements and does not care what they mean.
//! Turning model updates into ring elements (clipping, fixed point) and
//! differential privacy (noise, accounting) live in the `tessera-dp` crate,
//! which its users (the server, the client SDK, the CLI) call directly.
#![forbid(unsafe_code)]

pub mod accusation;
pub mod client;
pub mod config;
pub mod graph;
pub mod identity;
pub mod keys;
pub mod mask;
pub mod messages;
pub mod packing;
pub mod params;
pub mod server;
pub mod shamir;
#[cfg(feature = "sim")]
pub mod sim;

pub use client::{ClientEvent, ClientSession, ClientSessionError};
pub use config::{RoundConfig, ThreatModel};
pub use messages::{ClientMessage, ServerMessage};
pub use server::{ServerEvent, ServerSession, ServerSessionError};

/// A client's index in a round, `0..n`. Its Shamir x-coordinate is
/// `index + 1`, so no share is ever evaluated at zero (the secret).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ClientId(pub u32);

impl ClientId {
    /// The Shamir x-coordinate of this client's shares.
    pub fn share_x(self) -> u32 {
        self.0 + 1
    }

    /// The index as `usize`, for per-client tables.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client {}", self.0)
    }
}

/// The stages of a round, in protocol order.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Round 0: clients advertise their public keys.
    AdvertiseKeys,
    /// Round 1: clients share their secrets among neighbours.
    ShareKeys,
    /// Round 2: clients send masked inputs.
    MaskedInput,
    /// Round 3 (semi-malicious and malicious-server models): survivors
    /// confirm (and, malicious-server, sign) the survivor set.
    ConsistencyCheck,
    /// Round 4: survivors reveal shares; the server unmasks the sum.
    Unmasking,
}

impl Stage {
    /// Every stage in protocol order.
    pub const ALL: [Stage; 5] = [
        Stage::AdvertiseKeys,
        Stage::ShareKeys,
        Stage::MaskedInput,
        Stage::ConsistencyCheck,
        Stage::Unmasking,
    ];

    /// The kebab-case name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Stage::AdvertiseKeys => "advertise-keys",
            Stage::ShareKeys => "share-keys",
            Stage::MaskedInput => "masked-input",
            Stage::ConsistencyCheck => "consistency-check",
            Stage::Unmasking => "unmasking",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown stage '{s}' (expected one of: {})",
                    Stage::ALL.map(Stage::name).join(", ")
                )
            })
    }
}
