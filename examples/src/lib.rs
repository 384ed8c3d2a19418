//! Runnable scenarios; the code is in the package's examples:
//!
//! - `digits_fedavg`: the demo's logic, readable: a server and ten clients
//!   train an MLP on the digits with secure aggregation, dropouts and
//!   distributed DP.
//! - `dropout_experiment`: round time and success rate against dropout
//!   rate and client count, with the in-process simulator.
//! - `edge_client`: the smallest client an app embeds, against a running
//!   `tessera serve`.
//! - `blocking_ndarray`: a client without an async runtime whose model is
//!   named `ndarray` arrays, showing its progress.
#![forbid(unsafe_code)]
