//! `tessera-train`: federated training on top of Tessera's secure
//! aggregation, the reason the rest exists.
//!
//! Clients hold private partitions of a dataset ([`data`]), train a burn
//! model locally from the current global model ([`local`]), and send
//! `local - global` through [`tessera_client::Client::participate`]; the
//! server learns only the (noised) average and publishes the next global
//! model, which the training code evaluates on a held-out split.
//!
//! An [`experiment`] fixes everything a run is seeded by (partitions,
//! initial model, client seeds, dropouts), so the `tessera demo` command,
//! which runs it over the network with a real server, and the in-process
//! [`baseline`]s train on the same footing. This crate does no networking:
//! it never starts a server or a client.
//!
//! Everything runs offline: the datasets ship with a crate or a Debian
//! package, and burn's `flex` backend runs on the CPU.
#![forbid(unsafe_code)]

pub mod baseline;
pub mod data;
pub mod experiment;
pub mod local;
pub mod model;
