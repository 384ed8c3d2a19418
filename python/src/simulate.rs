//! `tessera.simulate`: `tessera simulate --json` from Python.
//!
//! The planning (parameter finder, defaults, drops) and each round's record
//! are the library's ([`tessera_aggregation::sim::plan`]), the functions
//! the CLI calls, so the same arguments and seed give the same records. A
//! record goes back as the JSON line the CLI prints (the same serialiser),
//! which the Python layer parses into a dict. Values the CLI's argument
//! parser would refuse are refused here with `InvalidInput`, naming the
//! flag; the planning's refusals carry the CLI's own messages.

use std::str::FromStr;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use tessera_aggregation::ThreatModel;
use tessera_aggregation::mask::Prg;
use tessera_aggregation::sim::plan::{
    self, GraphFamily, Plan, SimulateRequest, parse_drop, parse_rate,
};
use tessera_aggregation::sim::{Faults, SimError};

use crate::errors::raise;

/// Runs `rounds` simulated rounds; one JSON record per round.
///
/// Every argument but `rounds`, `threads` and `on_warning` is `None` for
/// the CLI's default. The Python layer has checked that the integers are
/// integers within their Rust types (so a negative one is `InvalidInput`,
/// not an overflow). `on_warning` is called with each warning the CLI
/// prints on stderr, before the rounds run.
#[pyfunction]
#[pyo3(signature = (
    *, clients=None, dim=None, graph=None, neighbours=None, threshold=None,
    dropout_rate=None, corrupt_rate=None, threat_model=None, drops=None, bits=None,
    prg=None, rounds=1, seed=None, faults=None, threads=None, on_warning=None
))]
#[allow(clippy::too_many_arguments)] // One per flag of `tessera simulate`.
pub(crate) fn simulate(
    py: Python<'_>,
    clients: Option<u32>,
    dim: Option<u32>,
    graph: Option<&str>,
    neighbours: Option<u32>,
    threshold: Option<u32>,
    dropout_rate: Option<f64>,
    corrupt_rate: Option<f64>,
    threat_model: Option<&str>,
    drops: Option<Vec<String>>,
    bits: Option<u8>,
    prg: Option<&str>,
    rounds: u32,
    seed: Option<u64>,
    faults: Option<&str>,
    threads: Option<usize>,
    on_warning: Option<Bound<'_, PyAny>>,
) -> PyResult<Vec<String>> {
    let defaults = SimulateRequest::default();
    let request = SimulateRequest {
        clients: clients.unwrap_or(defaults.clients),
        dim: dim.unwrap_or(defaults.dim),
        graph: graph
            .map(|v| named::<GraphFamily>("graph", v))
            .transpose()?,
        neighbours,
        threshold,
        dropout_rate: dropout_rate
            .map_or(Ok(defaults.dropout_rate), |v| rate("dropout-rate", v))?,
        corrupt_rate: corrupt_rate
            .map_or(Ok(defaults.corrupt_rate), |v| rate("corrupt-rate", v))?,
        threat_model: threat_model.map_or(Ok(defaults.threat_model), |v| {
            named::<ThreatModel>("threat-model", v)
        })?,
        drops: match drops {
            None => defaults.drops,
            Some(drops) => drops.iter().map(|d| drop(d)).collect::<PyResult<_>>()?,
        },
        bits: bits.unwrap_or(defaults.bits),
        prg: prg.map_or(Ok(defaults.prg), |v| named::<Prg>("prg", v))?,
        seed: seed.unwrap_or(defaults.seed),
        faults: faults.map(|v| named::<Faults>("faults", v)).transpose()?,
    };
    if rounds < 1 {
        return Err(out_of_range("rounds", rounds, "at least 1"));
    }
    let pool = thread_pool(threads)?;
    let plan = plan::plan(&request).map_err(|e| raise("InvalidInput", e.to_string()))?;
    if let Some(on_warning) = on_warning {
        for warning in warnings(&plan) {
            on_warning.call1((warning,))?;
        }
    }
    // The rounds compute for a while: other Python threads run meanwhile.
    let records = py.detach(|| pool.install(|| run(&plan, rounds)))?;
    records
        .iter()
        .map(|r| {
            serde_json::to_string(r)
                .map_err(|e| raise("TesseraError", format!("serialising a round report: {e}")))
        })
        .collect()
}

/// The request `tessera simulate` makes with no flags, as keyword
/// arguments: the Python signature's defaults are checked against it.
#[pyfunction]
pub(crate) fn simulate_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = SimulateRequest::default();
    let drops: Vec<(String, f64)> = d.drops.iter().map(|(s, f)| (s.to_string(), *f)).collect();
    let defaults = PyDict::new(py);
    defaults.set_item("clients", d.clients)?;
    defaults.set_item("dim", d.dim)?;
    defaults.set_item("graph", d.graph.map(|g| format!("{g:?}").to_lowercase()))?;
    defaults.set_item("neighbours", d.neighbours)?;
    defaults.set_item("threshold", d.threshold)?;
    defaults.set_item("dropout_rate", d.dropout_rate)?;
    defaults.set_item("corrupt_rate", d.corrupt_rate)?;
    defaults.set_item("threat_model", d.threat_model.to_string())?;
    defaults.set_item("drop", drops)?;
    defaults.set_item("bits", d.bits)?;
    defaults.set_item("prg", d.prg.name())?;
    defaults.set_item("seed", d.seed)?;
    defaults.set_item("faults", d.faults.map(|f| format!("{f:?}")))?;
    Ok(defaults)
}

/// The rounds of `plan`, as the CLI runs them (each round's seed derives
/// from the plan's seed and the round number).
fn run(plan: &Plan, rounds: u32) -> PyResult<Vec<tessera_aggregation::sim::RoundReport>> {
    let mut records = Vec::with_capacity(rounds as usize);
    for round in 0..rounds {
        let record = plan::round_record(plan, round, &|_| {}).map_err(|e| sim_error(e, round))?;
        records.push(record);
    }
    if let Some(message) = plan::unverified_error(&records) {
        return Err(raise("TesseraError", message));
    }
    Ok(records)
}

/// The warnings the CLI prints before the rounds: drops likely to abort,
/// and every reason the parameters are weaker than the threat model
/// promises.
fn warnings(plan: &Plan) -> Vec<String> {
    let insecure = plan.sim.round_config(0).insecure_reasons();
    plan.warning
        .iter()
        .cloned()
        .chain(insecure.iter().map(|r| format!("not secure: {r}")))
        .collect()
}

/// A simulator error: configuration problems are the caller's
/// (`InvalidInput`), anything else a failure of the run, with the CLI's
/// wording.
fn sim_error(error: SimError, round: u32) -> PyErr {
    match error {
        SimError::Config(_) | SimError::DropFraction { .. } => {
            raise("InvalidInput", error.to_string())
        }
        other => raise("TesseraError", format!("round {round} failed: {other}")),
    }
}

/// A rayon pool of `threads` workers, or of one per core.
fn thread_pool(threads: Option<usize>) -> PyResult<rayon::ThreadPool> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(threads) = threads {
        if threads < 1 {
            return Err(out_of_range("threads", threads, "at least 1"));
        }
        builder = builder.num_threads(threads);
    }
    builder
        .build()
        .map_err(|e| raise("TesseraError", format!("starting the worker threads: {e}")))
}

/// A rate in [0, 1), refused with the CLI parser's message.
fn rate(flag: &'static str, value: f64) -> PyResult<f64> {
    parse_rate(&value.to_string()).map_err(|e| invalid(flag, value, e))
}

/// One `STAGE=FRACTION`, refused with the CLI parser's message.
fn drop(value: &str) -> PyResult<(tessera_aggregation::Stage, f64)> {
    parse_drop(value).map_err(|e| invalid("drop", format!("'{value}'"), e))
}

/// A name the flag's type parses (`--graph`, `--threat-model`, `--prg`,
/// `--faults`), refused with its parser's message.
fn named<T: FromStr>(flag: &'static str, value: &str) -> PyResult<T>
where
    T::Err: std::fmt::Display,
{
    T::from_str(value).map_err(|e| invalid(flag, format!("'{value}'"), e))
}

/// `InvalidInput`: the value, the flag, and its parser's message.
fn invalid(flag: &str, value: impl std::fmt::Display, message: impl std::fmt::Display) -> PyErr {
    raise(
        "InvalidInput",
        format!("invalid value {value} for --{flag}: {message}"),
    )
}

/// `InvalidInput` for a number outside its flag's range.
fn out_of_range(flag: &str, value: impl std::fmt::Display, expected: &str) -> PyErr {
    invalid(flag, value, expected)
}
