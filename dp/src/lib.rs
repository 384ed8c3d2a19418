//! Differential privacy for aggregated updates: the noise that keeps a
//! published model from revealing what one client contributed, and the
//! accountant that says how much privacy has been spent.
//!
//! Two modes, two threat models:
//! - **Central DP** (DP-FedAvg, McMahan et al. 2018): clients clip their
//!   updates; the server decodes the unmasked sum to signed integers and
//!   adds exact discrete Gaussian noise of scale `z Δ`, `Δ = C 2^f + sqrt(d)`
//!   (rounding included), before it publishes
//!   ([`mechanism::CentralDp`]). Its epsilon holds against everyone who
//!   sees the published model (`model-consumers` in the ledger), but the
//!   server itself sees the un-noised sum.
//! - **Distributed DP** (Kairouz, Liu, Steinke 2021; Agarwal, Kairouz, Liu
//!   2021): each client adds integer noise (discrete Gaussian or Skellam) to
//!   its encoded vector so that the honest survivors of any round that goes
//!   on (the survivor floor minus the clients assumed to collude with the
//!   server, who subtract their own noise) together carry the target
//!   noise; secure aggregation hides each client's share of it, so nobody,
//!   not even the server, sees an un-noised sum. Its epsilon holds against
//!   the server (`server` in the ledger), charged for each round's honest
//!   contributors.
//!
//! The pieces:
//! - [`encoding`]: clipping to L2 norm `C` (the sensitivity every guarantee
//!   rests on), scaling by `2^f` and unbiased randomized rounding into the
//!   ring `Z_{2^bits}` that secure aggregation sums in ([`FixedPoint`]);
//! - [`rotation`]: the random rotation that spreads a vector's mass over its
//!   coordinates before distributed noise;
//! - [`sampler`]: exact discrete Gaussian and Skellam samplers;
//! - [`mechanism`]: central and distributed noise, and the ring width that
//!   leaves room for it;
//! - [`extras`]: what rides in the secure sum beside the update (example
//!   weights, federated evaluation counts, adaptive clipping's indicator
//!   bits), bounded so the whole vector has one public sensitivity;
//! - [`accountant`]: RDP / zCDP accounting, from noise to `(epsilon, delta)`;
//! - [`ledger`]: the persistent record of what each training job has spent;
//! - [`tree`]: DP-FTRL's online tree aggregation, with node noise that a
//!   restart never redraws.
//!
//! The secure aggregation protocol (`tessera-aggregation`) never calls this
//! crate: it adds ring elements and does not care what they mean. The server,
//! the client SDK, the CLI and training use it directly.
//!
//! Everything here is pure math: no IO, no clock, and randomness comes from
//! a CSPRNG the caller passes.
#![forbid(unsafe_code)]

pub mod accountant;
pub mod encoding;
pub mod extras;
pub mod ledger;
pub mod mechanism;
pub mod rotation;
pub mod sampler;
pub mod tree;

pub use encoding::{Decoded, Encoded, EncodingError, FixedPoint, choose_bits};
