//! `tessera-train`: federated training on top of Tessera's secure
//! aggregation, the reason the rest exists.
//!
//! Clients hold private partitions of a dataset ([`data`]), train a burn
//! model locally from the current global model ([`local`]), and send
//! `local - global` through [`tessera_client::Client::participate`]; the
//! server learns only the (noised) average and publishes the next global
//! model, which the training code evaluates on a held-out split.
//!
//! Everything runs offline: the datasets ship with a crate or a Debian
//! package, and burn's `flex` backend runs on the CPU.
#![forbid(unsafe_code)]

pub mod baseline;
pub mod data;
pub mod demo;
pub mod local;
pub mod model;
pub mod report;
