//! The simulator's front end, shared by `tessera simulate` and the Python
//! package's `tessera.simulate`: what the user asked for
//! ([`SimulateRequest`], the command's flags as data) becomes a [`Plan`]
//! (the parameter finder fills in the graph, k and t left out, the drops
//! are checked against the stages the threat model runs), and each round of
//! the plan becomes one [`RoundReport`] ([`round_record`]), the record
//! `tessera simulate --json` prints as one line.
//!
//! Both front ends call these functions, so the same arguments and seed give
//! the same records (timings and memory aside), and a refusal carries the
//! same message ([`PlanError`], which names the command's flags).

use std::collections::BTreeMap;

use crate::Stage;
use crate::config::ThreatModel;
use crate::graph::GraphKind;
use crate::mask::Prg;
use crate::params::{
    GraphRequest, ParamSource, ParamsRequest, ResolveError, RoundParams, ThresholdRule,
    resolve_round_params,
};

use super::{Faults, Progress, RoundReport, SimConfig, SimError, run_round};

/// The neighbour graph's family, as `--graph` names it (the degree of a
/// Harary graph is `--neighbours`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphFamily {
    /// Every client is a neighbour of every other (SecAgg).
    Complete,
    /// A Harary graph of even degree k over a random permutation (SecAgg+).
    Harary,
}

impl std::str::FromStr for GraphFamily {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "complete" => Ok(GraphFamily::Complete),
            "harary" => Ok(GraphFamily::Harary),
            other => Err(format!(
                "unknown graph '{other}' (expected one of: complete, harary)"
            )),
        }
    }
}

/// What to simulate: `tessera simulate`'s flags as data. [`Default`] gives
/// the command's defaults, so a front end sets only what its user gave.
#[derive(Clone, Debug, PartialEq)]
pub struct SimulateRequest {
    /// `--clients`: clients invited to each round (at least 2).
    pub clients: u32,
    /// `--dim`: length of each client's input vector (at least 1).
    pub dim: u32,
    /// `--graph`: `None` lets the parameter finder choose (Harary when
    /// `neighbours` is given).
    pub graph: Option<GraphFamily>,
    /// `--neighbours`: the Harary graph's degree k.
    pub neighbours: Option<u32>,
    /// `--threshold`: the Shamir threshold t.
    pub threshold: Option<u32>,
    /// `--dropout-rate` the parameter finder sizes k and t for, in [0, 1).
    pub dropout_rate: f64,
    /// `--corrupt-rate` the parameter finder sizes k and t for, in [0, 1).
    pub corrupt_rate: f64,
    /// `--threat-model`.
    pub threat_model: ThreatModel,
    /// `--drop STAGE=FRACTION`, in the order given (each stage at most
    /// once).
    pub drops: Vec<(Stage, f64)>,
    /// `--bits`: the modulus 2^bits of inputs and masks (1 to 32).
    pub bits: u8,
    /// `--prg`: the stream cipher expanding the masks.
    pub prg: Prg,
    /// `--seed` of everything random.
    pub seed: u64,
    /// `--faults`: an unreliable network, seeded by `seed`.
    pub faults: Option<Faults>,
}

impl Default for SimulateRequest {
    /// The command's defaults: 100 clients, 100,000 values, graph and
    /// threshold from the finder for 10% dropouts and 5% corrupt clients,
    /// semi-honest, 10% dropping at masked-input, 32 bits, AES, seed 42.
    fn default() -> Self {
        SimulateRequest {
            clients: 100,
            dim: 100_000,
            graph: None,
            neighbours: None,
            threshold: None,
            dropout_rate: 0.1,
            corrupt_rate: 0.05,
            threat_model: ThreatModel::SemiHonest,
            drops: vec![(Stage::MaskedInput, 0.1)],
            bits: 32,
            prg: Prg::Aes128Ctr,
            seed: 42,
            faults: None,
        }
    }
}

/// Why a [`SimulateRequest`] cannot run. The messages name the command's
/// flags: the CLI prints them as usage errors, the Python package raises
/// them as `InvalidInput`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// A value outside the range its flag accepts (the CLI's argument parser
    /// refuses these first; other front ends reach this check).
    #[error("invalid value {value} for --{flag}: {expected}")]
    OutOfRange {
        /// The flag, without its dashes.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What the flag accepts.
        expected: &'static str,
    },
    /// `--neighbours` with `--graph complete`.
    #[error("--neighbours applies only to --graph harary (the complete graph has k = n - 1)")]
    NeighboursWithComplete,
    /// A Harary degree that is odd, below 2 or not below n.
    #[error(
        "--neighbours {k} must be even, at least 2 and less than --clients {clients} \
         (use --graph complete for k = n - 1)"
    )]
    Neighbours {
        /// The degree given.
        k: u32,
        /// The clients of the round.
        clients: u32,
    },
    /// `--graph harary` without a degree, and the finder chose the complete
    /// graph.
    #[error(
        "--graph harary needs --neighbours K: the parameter finder chose the complete \
         graph for n = {clients} ({inputs})"
    )]
    FinderChoseComplete {
        /// The clients of the round.
        clients: u32,
        /// The finder's inputs, spelt out.
        inputs: String,
    },
    /// `--graph harary` without a degree, and the finder failed.
    #[error("--graph harary needs --neighbours K: the parameter finder failed: {0}")]
    HararyFinder(ResolveError),
    /// The finder was needed and failed.
    #[error(
        "{0}; pass --graph and --threshold (and --neighbours for harary) to choose \
         the parameters yourself, or change --dropout-rate / --corrupt-rate"
    )]
    Finder(ResolveError),
    /// A threshold below 2 or above the share holders.
    #[error(
        "--threshold {t} must be between 2 and {holders}, the share holders per \
         client (its {holders} neighbours)"
    )]
    Threshold {
        /// The threshold given.
        t: u32,
        /// Share holders per client (its neighbours).
        holders: u32,
    },
    /// A drop at a stage this threat model does not run.
    #[error("--drop {0}=...: the {0} stage runs only with --threat-model semi-malicious")]
    DropStage(Stage),
    /// Two drops for one stage.
    #[error("--drop given twice for {0}")]
    DropTwice(Stage),
}

/// The round parameters after defaults are filled in, with where each came
/// from.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The simulator's configuration.
    pub sim: SimConfig,
    /// Neighbours per client.
    pub k: u32,
    /// The stages the round runs, in order.
    pub stages: Vec<Stage>,
    /// Where the graph, k and t came from (a flag or the parameter finder),
    /// for a header, so nobody mistakes a default for a choice.
    pub origin: String,
    /// A warning for the user when the drops are likely to abort rounds
    /// (they still run).
    pub warning: Option<String>,
}

/// Fills in the graph, k and t the request left out and checks the values
/// that only make sense together.
pub fn plan(request: &SimulateRequest) -> Result<Plan, PlanError> {
    check_ranges(request)?;
    let n = request.clients;
    let threat_model = request.threat_model;
    let params_request = ParamsRequest {
        clients: n,
        dropout_rate: request.dropout_rate,
        corrupt_rate: request.corrupt_rate,
        threat_model,
    };
    let graph = graph_request(request)?;
    let params = round_params(&params_request, graph, request.threshold)?;
    let stages = stages_for(threat_model);
    let drops = drops_by_stage(&request.drops, &stages)?;
    let warning = drop_warning(
        n,
        params.threshold,
        &drops,
        &stages,
        params.threshold_source == ParamSource::Finder,
        request.dropout_rate,
    );
    let sim = SimConfig {
        clients: n,
        dim: request.dim,
        graph: params.graph,
        threshold: params.threshold,
        bits: request.bits,
        prg: request.prg,
        threat_model,
        // The corrupt count the finder assumed is the one the
        // malicious-server thresholds are checked against.
        corrupt: params.corrupt,
        drops,
        seed: request.seed,
        faults: request.faults,
    };
    Ok(Plan {
        sim,
        k: params.holders(n),
        stages,
        origin: origin(&params_request, graph, &params),
        warning,
    })
}

/// Runs round `round` of `plan` and returns its record, the line
/// `tessera simulate --json` prints for it: the simulator's report with the
/// process's peak memory so far filled in.
pub fn round_record(
    plan: &Plan,
    round: u32,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<RoundReport, SimError> {
    let mut report = run_round(&plan.sim, round, progress)?;
    report.peak_rss_bytes = peak_rss_bytes();
    Ok(report)
}

/// The message when completed rounds produced a wrong sum (a bug; the
/// records say which rounds: `verified` is false), or `None` when every
/// completed round verified.
pub fn unverified_error(records: &[RoundReport]) -> Option<String> {
    let unverified = records
        .iter()
        .filter(|r| r.outcome == super::Outcome::Completed && !r.verified)
        .count();
    (unverified > 0).then(|| {
        format!(
            "{unverified} completed round(s) produced a sum that differs from the sum of the \
             accepted inputs"
        )
    })
}

/// Parses a rate (`--dropout-rate`, `--corrupt-rate`): a fraction in
/// [0, 1), the range the parameter finder accepts.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let value: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    check_rate(value)
}

/// A rate in [0, 1), or the message saying it is not.
fn check_rate(value: f64) -> Result<f64, String> {
    if (0.0..1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("must be a fraction in [0, 1), got {value}"))
    }
}

/// Parses one `--drop STAGE=FRACTION`.
pub fn parse_drop(s: &str) -> Result<(Stage, f64), String> {
    let (stage, fraction) = s
        .split_once('=')
        .ok_or_else(|| format!("expected STAGE=FRACTION (e.g. masked-input=0.1), got '{s}'"))?;
    let stage: Stage = stage.trim().parse()?;
    let fraction: f64 = fraction
        .trim()
        .parse()
        .map_err(|_| format!("fraction '{fraction}' for {stage} is not a number"))?;
    if !(0.0..=1.0).contains(&fraction) {
        return Err(format!(
            "fraction for {stage} must be in [0, 1], got {fraction}"
        ));
    }
    Ok((stage, fraction))
}

/// Peak resident set size of this process so far (`VmHWM` in
/// /proc/self/status), in bytes; `None` where that file does not exist or
/// does not parse (non-Linux systems). The one read of the operating
/// system in this crate, for the records' `peak_rss_bytes`.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

/// The `VmHWM:   1234 kB` line of a /proc status file, in bytes.
fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut fields = line["VmHWM:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

/// The ranges the CLI's argument parser enforces, for front ends without
/// it.
fn check_ranges(request: &SimulateRequest) -> Result<(), PlanError> {
    let out_of_range = |flag, value: &dyn std::fmt::Display, expected| PlanError::OutOfRange {
        flag,
        value: value.to_string(),
        expected,
    };
    if request.clients < 2 {
        return Err(out_of_range("clients", &request.clients, "at least 2"));
    }
    if request.dim < 1 {
        return Err(out_of_range("dim", &request.dim, "at least 1"));
    }
    if !(1..=32).contains(&request.bits) {
        return Err(out_of_range("bits", &request.bits, "1 to 32"));
    }
    for (flag, rate) in [
        ("dropout-rate", request.dropout_rate),
        ("corrupt-rate", request.corrupt_rate),
    ] {
        if check_rate(rate).is_err() {
            return Err(out_of_range(flag, &rate, "a fraction in [0, 1)"));
        }
    }
    for &(stage, fraction) in &request.drops {
        if !(0.0..=1.0).contains(&fraction) {
            let value = format!("{stage}={fraction}");
            return Err(out_of_range("drop", &value, "a fraction in [0, 1]"));
        }
    }
    Ok(())
}

/// The graph `--graph` and `--neighbours` ask for, once their combination
/// and k are checked.
fn graph_request(request: &SimulateRequest) -> Result<GraphRequest, PlanError> {
    let clients = request.clients;
    Ok(match (request.graph, request.neighbours) {
        (Some(GraphFamily::Complete), Some(_)) => return Err(PlanError::NeighboursWithComplete),
        (Some(GraphFamily::Complete), None) => GraphRequest::Given(GraphKind::Complete),
        (_, Some(k)) => {
            if k < 2 || k % 2 == 1 || k >= clients {
                return Err(PlanError::Neighbours { k, clients });
            }
            GraphRequest::Given(GraphKind::Harary { k })
        }
        (Some(GraphFamily::Harary), None) => GraphRequest::FinderHarary,
        (None, None) => GraphRequest::Finder,
    })
}

/// The graph and threshold ([`resolve_round_params`]): the finder fills in
/// what the request left out. An explicit threshold must lie between 2 and
/// the share holders; below the threat model's floor it still runs.
fn round_params(
    request: &ParamsRequest,
    graph: GraphRequest,
    threshold: Option<u32>,
) -> Result<RoundParams, PlanError> {
    let params = resolve_round_params(request, graph, threshold.map(ThresholdRule::Count))
        .map_err(|e| match e {
            ResolveError::FinderChoseComplete => PlanError::FinderChoseComplete {
                clients: request.clients,
                inputs: finder_inputs(request),
            },
            e if graph == GraphRequest::FinderHarary => PlanError::HararyFinder(e),
            e => PlanError::Finder(e),
        })?;
    // A client holds no share of its own secrets: its holders are its k
    // neighbours.
    let holders = params.holders(request.clients);
    if let Some(t) = threshold
        && (t < 2 || t > holders)
    {
        return Err(PlanError::Threshold { t, holders });
    }
    Ok(params)
}

/// The finder's inputs, as the origin line and errors name them.
fn finder_inputs(request: &ParamsRequest) -> String {
    format!(
        "dropout rate {}, corrupt rate {}, {}",
        request.dropout_rate, request.corrupt_rate, request.threat_model
    )
}

/// Where the graph, k and t came from, with the finder's inputs if it was
/// asked.
fn origin(request: &ParamsRequest, graph: GraphRequest, params: &RoundParams) -> String {
    let graph_origin = match graph {
        GraphRequest::Given(GraphKind::Complete) => "graph from --graph",
        GraphRequest::Given(GraphKind::Harary { .. }) => "k from --neighbours",
        GraphRequest::FinderHarary => "k from the parameter finder",
        GraphRequest::Finder => "graph and k from the parameter finder",
    };
    let mut origin = match (graph, params.threshold_source) {
        (GraphRequest::Finder, ParamSource::Finder) => {
            "graph, k and t from the parameter finder".to_owned()
        }
        (GraphRequest::FinderHarary, ParamSource::Finder) => {
            "k and t from the parameter finder".to_owned()
        }
        (_, source) => format!("{graph_origin}; {}", threshold_origin(source, params)),
    };
    if params.finder.is_some() {
        origin.push_str(&format!(" [finder inputs: {}]", finder_inputs(request)));
    }
    origin
}

/// Where t came from; for a majority, why the finder's t was not taken.
fn threshold_origin(source: ParamSource, params: &RoundParams) -> String {
    match source {
        ParamSource::Explicit => "t from --threshold".to_owned(),
        ParamSource::Finder => "t from the parameter finder".to_owned(),
        ParamSource::Majority | ParamSource::Floor => {
            let name = match params.graph {
                GraphKind::Complete => "(n-1)/2+1",
                GraphKind::Harary { .. } => "K/2+1",
            };
            let t = params.threshold;
            match &params.finder {
                Some(Ok(p)) => {
                    let chose = match p.graph {
                        GraphKind::Complete => "the complete graph".to_owned(),
                        GraphKind::Harary { k } => format!("harary with k = {k}"),
                    };
                    format!("t = {name} = {t} (the parameter finder chose {chose})")
                }
                Some(Err(e)) => format!("t = {name} = {t} (the parameter finder failed: {e})"),
                None => format!("t = {name} = {t}"),
            }
        }
    }
}

/// The stages a round runs under this threat model, in order.
fn stages_for(threat_model: ThreatModel) -> Vec<Stage> {
    Stage::ALL
        .into_iter()
        .filter(|s| *s != Stage::ConsistencyCheck || threat_model.guards_dropout_story())
        .collect()
}

/// The drops by stage: each for a stage the round runs, at most once.
fn drops_by_stage(
    requested: &[(Stage, f64)],
    stages: &[Stage],
) -> Result<BTreeMap<Stage, f64>, PlanError> {
    let mut drops = BTreeMap::new();
    for &(stage, fraction) in requested {
        if !stages.contains(&stage) {
            return Err(PlanError::DropStage(stage));
        }
        if drops.insert(stage, fraction).is_some() {
            return Err(PlanError::DropTwice(stage));
        }
    }
    Ok(drops)
}

/// A warning when the drops asked for will, or may well, abort every round:
/// the user probably wants to know before waiting for them.
fn drop_warning(
    n: u32,
    threshold: u32,
    drops: &BTreeMap<Stage, f64>,
    stages: &[Stage],
    threshold_from_finder: bool,
    dropout_rate: f64,
) -> Option<String> {
    // The simulator drops round(fraction * clients still in) at each stage.
    let mut remaining = n;
    for stage in stages {
        let fraction = drops.get(stage).copied().unwrap_or(0.0);
        remaining -= (fraction * f64::from(remaining)).round() as u32;
    }
    if remaining < threshold {
        return Some(format!(
            "--drop leaves {remaining} of the {n} clients, fewer than t = {threshold}: \
             every round will abort"
        ));
    }
    let lost = 1.0 - f64::from(remaining) / f64::from(n);
    (threshold_from_finder && lost > dropout_rate + 1e-9).then(|| {
        format!(
            "--drop removes {:.1}% of the clients over a round, more than the \
                 --dropout-rate {dropout_rate} that t was chosen for: rounds may abort",
            lost * 100.0,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::find_params;

    /// The default request with `change` applied.
    fn request(change: impl FnOnce(&mut SimulateRequest)) -> SimulateRequest {
        let mut request = SimulateRequest::default();
        change(&mut request);
        request
    }

    /// The error `change` must cause.
    fn refusal(change: impl FnOnce(&mut SimulateRequest)) -> String {
        plan(&request(change))
            .expect_err("the request should be refused")
            .to_string()
    }

    #[test]
    fn defaults_come_from_the_finder() {
        let plan = plan(&SimulateRequest::default()).unwrap();
        let expected = find_params(&ParamsRequest {
            clients: 100,
            dropout_rate: 0.1,
            corrupt_rate: 0.05,
            threat_model: ThreatModel::SemiHonest,
        })
        .unwrap();
        assert_eq!(plan.sim.graph, expected.graph);
        assert_eq!(plan.k, expected.k);
        assert_eq!(plan.sim.threshold, expected.threshold);
        assert_eq!(plan.sim.drops, BTreeMap::from([(Stage::MaskedInput, 0.1)]));
        assert_eq!(
            (plan.sim.dim, plan.sim.bits, plan.sim.seed),
            (100_000, 32, 42)
        );
        assert!(!plan.stages.contains(&Stage::ConsistencyCheck));
        assert!(plan.warning.is_none());
    }

    #[test]
    fn explicit_harary_without_threshold_uses_a_majority_unless_the_finder_agrees() {
        let finder = find_params(&ParamsRequest {
            clients: 1000,
            dropout_rate: 0.1,
            corrupt_rate: 0.05,
            threat_model: ThreatModel::SemiHonest,
        })
        .unwrap();
        let GraphKind::Harary { k } = finder.graph else {
            panic!("n = 1000 should get a Harary graph");
        };
        let harary = |k| {
            plan(&request(|r| {
                r.clients = 1000;
                r.neighbours = Some(k);
            }))
            .unwrap()
        };
        let same = harary(k);
        assert_eq!(same.sim.threshold, finder.threshold);
        assert!(
            same.origin
                .starts_with("k from --neighbours; t from the parameter finder")
        );
        let different = harary(k + 2);
        assert_eq!(different.sim.threshold, (k + 2) / 2 + 1);
        assert!(
            different.origin.contains("t = K/2+1"),
            "{}",
            different.origin
        );
    }

    #[test]
    fn complete_graph_without_threshold_takes_a_majority_when_the_finder_prefers_harary() {
        let plan = plan(&request(|r| {
            r.clients = 1000;
            r.graph = Some(GraphFamily::Complete);
        }))
        .unwrap();
        assert_eq!(plan.sim.graph, GraphKind::Complete);
        assert_eq!(plan.k, 999);
        // A majority of the 999 share holders (a client holds none of its
        // own secrets).
        assert_eq!(plan.sim.threshold, 500);
    }

    #[test]
    fn bad_combinations_name_the_flag() {
        let neighbours = |clients, k| {
            refusal(|r| {
                r.clients = clients;
                r.neighbours = Some(k);
            })
        };
        assert!(neighbours(10, 3).contains("--neighbours 3 must be even"));
        assert!(neighbours(10, 10).contains("less than --clients 10"));
        assert!(
            refusal(|r| {
                r.graph = Some(GraphFamily::Complete);
                r.neighbours = Some(4);
            })
            .contains("--neighbours applies only to --graph harary")
        );
        for t in [1, 10] {
            let message = refusal(|r| {
                r.clients = 10;
                r.graph = Some(GraphFamily::Complete);
                r.threshold = Some(t);
            });
            assert!(
                message.starts_with(&format!("--threshold {t} must be between 2 and 9")),
                "{message}"
            );
        }
        assert!(
            refusal(|r| r.drops = vec![(Stage::ConsistencyCheck, 0.1)])
                .contains("runs only with --threat-model semi-malicious")
        );
        assert!(
            refusal(|r| r.drops = vec![(Stage::ShareKeys, 0.1), (Stage::ShareKeys, 0.2)])
                .contains("--drop given twice for share-keys")
        );
    }

    #[test]
    fn values_the_cli_parser_would_refuse_are_refused_here_too() {
        assert_eq!(
            refusal(|r| r.clients = 1),
            "invalid value 1 for --clients: at least 2"
        );
        assert!(refusal(|r| r.dim = 0).contains("--dim"));
        assert!(refusal(|r| r.bits = 0).contains("--bits"));
        assert!(refusal(|r| r.bits = 33).contains("--bits"));
        assert!(refusal(|r| r.dropout_rate = 1.0).contains("--dropout-rate"));
        assert!(refusal(|r| r.corrupt_rate = -0.1).contains("--corrupt-rate"));
        assert!(refusal(|r| r.corrupt_rate = f64::NAN).contains("--corrupt-rate"));
        assert!(
            refusal(|r| r.drops = vec![(Stage::ShareKeys, 1.5)])
                .contains("--drop: a fraction in [0, 1]")
        );
    }

    #[test]
    fn heavy_drops_warn_when_the_finder_chose_t() {
        // 100 clients: 20 drop at share-keys, then 8 of the 80 left.
        let heavy = plan(&request(|r| {
            r.drops = vec![(Stage::ShareKeys, 0.2), (Stage::MaskedInput, 0.1)];
        }))
        .unwrap();
        assert!(heavy.warning.unwrap().contains("28.0%"));
        let complete = |t| {
            plan(&request(|r| {
                r.graph = Some(GraphFamily::Complete);
                r.threshold = Some(t);
                r.drops = vec![(Stage::ShareKeys, 0.5)];
            }))
            .unwrap()
        };
        assert!(complete(20).warning.is_none());
        assert!(
            complete(60)
                .warning
                .unwrap()
                .contains("leaves 50 of the 100")
        );
    }

    #[test]
    fn drop_and_rate_parsers_take_every_stage_and_refuse_bad_input() {
        for stage in Stage::ALL {
            assert_eq!(
                parse_drop(&format!("{}=0.25", stage.name())),
                Ok((stage, 0.25))
            );
        }
        assert_eq!(parse_drop("unmasking=1"), Ok((Stage::Unmasking, 1.0)));
        assert_eq!(parse_drop("unmasking=0"), Ok((Stage::Unmasking, 0.0)));
        for bad in [
            "bogus=0.1",
            "masked-input",
            "masked-input=",
            "masked-input=1.5",
            "masked-input=-0.1",
            "masked-input=NaN",
            "masked-input=x",
        ] {
            assert!(parse_drop(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert_eq!(parse_rate("0.05"), Ok(0.05));
        for bad in ["1", "1.2", "-0.01", "NaN", "inf", "five"] {
            assert!(parse_rate(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn graph_families_parse_by_their_flag_names() {
        assert_eq!("complete".parse(), Ok(GraphFamily::Complete));
        assert_eq!("harary".parse(), Ok(GraphFamily::Harary));
        assert!("ring".parse::<GraphFamily>().unwrap_err().contains("ring"));
    }

    #[test]
    fn a_record_is_the_round_with_the_peak_memory() {
        let plan = plan(&request(|r| {
            r.clients = 5;
            r.dim = 8;
            r.graph = Some(GraphFamily::Complete);
            r.threshold = Some(3);
            r.drops = vec![(Stage::MaskedInput, 0.2)];
        }))
        .unwrap();
        let record = round_record(&plan, 1, &|_| {}).unwrap();
        let bare = run_round(&plan.sim, 1, &|_| {}).unwrap();
        assert_eq!(record.round, 1);
        assert!(record.verified);
        assert_eq!(
            (record.survivors, &record.dropped),
            (bare.survivors, &bare.dropped)
        );
        assert_eq!(record.survivors, 4);
        assert_eq!(record.peak_rss_bytes.is_some(), cfg!(target_os = "linux"));
        assert_eq!(unverified_error(std::slice::from_ref(&record)), None);
        let mut wrong = record;
        wrong.verified = false;
        assert_eq!(
            unverified_error(&[wrong.clone(), wrong]).as_deref(),
            Some(
                "2 completed round(s) produced a sum that differs from the sum of the \
                 accepted inputs"
            )
        );
    }

    #[test]
    fn vm_hwm_is_read_in_kib() {
        let status = "Name:\ttessera\nVmPeak:\t  9999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2048 * 1024));
        assert_eq!(parse_vm_hwm("VmRSS:\t 1 kB\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\t 12 MB\n"), None);
        // On Linux the real file has the line, and a running process has
        // touched at least a page.
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().is_some_and(|b| b >= 4096));
        }
    }
}
