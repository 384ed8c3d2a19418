//! Differential privacy for aggregated updates: the noise that keeps a
//! published model from revealing what one client contributed, and the
//! accountant that says how much privacy has been spent.
//!
//! Two modes, two threat models:
//! - **Central DP** (DP-FedAvg, McMahan et al. 2018): clients clip their
//!   updates; the server adds Gaussian noise of standard deviation `z C` to
//!   the unmasked sum before it publishes. Protects the published model
//!   against everyone who sees it, but the server itself sees the
//!   un-noised sum.
//! - **Distributed DP** (Kairouz, Liu, Steinke 2021; Agarwal, Kairouz, Liu
//!   2021): each client adds integer noise (discrete Gaussian or Skellam) to
//!   its encoded vector so that any `t_min` survivors together carry the
//!   target noise; secure aggregation hides each client's share of it, so
//!   nobody, not even the server, sees an un-noised sum.
//!
//! Everything here is pure math: randomness comes from a CSPRNG the caller
//! passes.

pub mod accountant;
pub mod ledger;
pub mod mechanism;
pub mod rotation;
pub mod sampler;
