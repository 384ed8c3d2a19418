//! `tessera params`: the SecAgg+ parameter finder on the command line.
//!
//! An operator sizing a deployment wants to know, before any round runs, how
//! many neighbours each client needs and what Shamir threshold keeps the
//! round private and correct for the dropout and corruption rates expected.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tessera_aggregation::graph::GraphKind;
use tessera_aggregation::params::{ParamsRequest, find_params};

use crate::args::ThreatArg;
use crate::usage;

/// One-line description of the subcommand, for `tessera --help`.
pub(crate) const ABOUT: &str = "Choose the neighbour graph and threshold for a round";

/// The paragraph `tessera params --help` opens with.
pub(crate) const LONG_ABOUT: &str = "Runs the SecAgg+ parameter finder: for n clients, the fraction expected to \
        drop out and the fraction that may be corrupt, prints the smallest even number of \
        neighbours k per client and the Shamir threshold t that keep a round private (except \
        with probability 2^-40) and let it complete (except with probability 2^-20), and \
        whether that is a Harary graph (SecAgg+) or the complete graph (SecAgg). Invalid or \
        infeasible inputs exit with code 2.";

/// The examples `tessera params --help` ends with.
pub(crate) const EXAMPLES: &str = "Examples:\n  \
        tessera params --clients 1000 --dropout-rate 0.05 --corrupt-rate 0.05\n  \
        tessera params --clients 10000 --threat-model semi-malicious --json";

/// Flags of `tessera params`.
#[derive(Debug, Args)]
pub(crate) struct ParamsArgs {
    /// Number of clients n that start the round.
    #[arg(long, value_name = "N")]
    clients: u32,
    /// Fraction of clients expected to drop out, in [0, 1).
    #[arg(long, value_name = "RATE", default_value_t = 0.1)]
    dropout_rate: f64,
    /// Fraction of clients that may be corrupt and collude with the server,
    /// in [0, 1).
    #[arg(long, value_name = "RATE", default_value_t = 0.05)]
    corrupt_rate: f64,
    /// Who the round must stay private against.
    #[arg(long, value_enum, default_value_t = ThreatArg::SemiHonest)]
    threat_model: ThreatArg,
    /// Print one JSON object (keys `k`, `t`, `graph`, and the inputs) instead
    /// of text.
    #[arg(long)]
    json: bool,
}

/// The JSON answer of `tessera params --json`.
#[derive(Debug, Serialize)]
struct ParamsOutput {
    /// Neighbours per client (n - 1 for the complete graph).
    k: u32,
    /// Shamir threshold.
    t: u32,
    /// `"complete"` or `"harary"`.
    graph: &'static str,
    /// The inputs, echoed so a saved answer says what it answers.
    clients: u32,
    /// As given.
    dropout_rate: f64,
    /// As given.
    corrupt_rate: f64,
    /// As given.
    threat_model: String,
}

/// Runs `tessera params`.
pub(crate) fn run(args: ParamsArgs) -> anyhow::Result<ExitCode> {
    let threat_model = args.threat_model.into();
    let request = ParamsRequest {
        clients: args.clients,
        dropout_rate: args.dropout_rate,
        corrupt_rate: args.corrupt_rate,
        threat_model,
    };
    let params = match find_params(&request) {
        Ok(params) => params,
        Err(e) => usage!("{e}"),
    };
    let output = ParamsOutput {
        k: params.k,
        t: params.threshold,
        graph: graph_name(params.graph),
        clients: args.clients,
        dropout_rate: args.dropout_rate,
        corrupt_rate: args.corrupt_rate,
        threat_model: threat_model.to_string(),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let line = serde_json::to_string(&output).context("serialising the parameters")?;
        writeln!(out, "{line}")?;
    } else {
        writeln!(
            out,
            "n = {}, dropout rate {}, corrupt rate {}, {} server:",
            output.clients, output.dropout_rate, output.corrupt_rate, output.threat_model
        )?;
        writeln!(out, "graph: {}", output.graph)?;
        writeln!(out, "k:     {} neighbours per client", output.k)?;
        writeln!(
            out,
            "t:     {} of the {} share holders (the client's neighbours) rebuild a secret",
            output.t, output.k
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The graph family's name as printed and as `--graph` accepts it.
pub(crate) fn graph_name(graph: GraphKind) -> &'static str {
    match graph {
        GraphKind::Complete => "complete",
        GraphKind::Harary { .. } => "harary",
    }
}
