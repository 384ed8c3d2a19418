//! Tessera's secure aggregation core (work in progress; see README).
#![forbid(unsafe_code)]

pub mod encoding;
pub mod graph;
pub mod mask;
pub mod params;
pub mod shamir;
