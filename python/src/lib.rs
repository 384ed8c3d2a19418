//! `tessera._native`: the compiled half of the Python package `tessera`.
//!
//! A thin binding: `client::Client` wraps the Rust SDK's
//! `tessera_client::Client`, `server::Server` runs
//! `tessera_server::start` in process, `privacy` exposes the accountant,
//! `simulate` runs `tessera simulate`'s rounds through the library's
//! planning the CLI uses.
//! Each client and server owns its tokio runtime, and every call that
//! waits on the network releases the GIL (`Python::detach`), so several
//! Python threads can take part in one round. The Python modules in
//! `tessera/` hold the public surface: argument checking against the
//! model's names and shapes, the exception classes, the result types.
//!
//! No unsafe code: `unsafe_code = "forbid"` holds for this crate as for the
//! workspace (PyO3's macros need no opt-out).
#![forbid(unsafe_code)]

mod client;
mod errors;
mod privacy;
mod server;
mod settings;
mod simulate;

use pyo3::prelude::*;

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<client::Client>()?;
    m.add_class::<server::Server>()?;
    m.add_function(wrap_pyfunction!(client::_raise_sdk_error, m)?)?;
    m.add_function(wrap_pyfunction!(privacy::epsilon, m)?)?;
    m.add_function(wrap_pyfunction!(privacy::noise, m)?)?;
    m.add_function(wrap_pyfunction!(privacy::rounds, m)?)?;
    m.add_function(wrap_pyfunction!(privacy::tree_epsilon, m)?)?;
    m.add_function(wrap_pyfunction!(privacy::tree_noise, m)?)?;
    m.add_function(wrap_pyfunction!(privacy::tree_rounds, m)?)?;
    m.add_function(wrap_pyfunction!(server::write_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(simulate::simulate, m)?)?;
    m.add_function(wrap_pyfunction!(simulate::simulate_defaults, m)?)?;
    Ok(())
}

/// A tokio runtime for one client or server: one worker thread (the
/// calling Python thread drives `block_on`; the worker runs what the
/// transport spawns).
fn runtime(what: &str) -> PyResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("tessera-{what}"))
        .enable_all()
        .build()
        .map_err(|e| {
            errors::raise(
                "TesseraError",
                format!("cannot start the {what}'s runtime: {e}"),
            )
        })
}
