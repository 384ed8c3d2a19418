//! A round's graph and threshold from what its operator asked for: the
//! parameter finder for what was left open, a rule or a count for the
//! threshold, and where each value came from.
//!
//! The server ([`ThresholdRule`]s from its configuration) and the simulator
//! (flags) resolve through [`resolve_round_params`]. It only resolves: it
//! reports the threat model's floor under the threshold
//! ([`RoundParams::floor`]) but does not enforce it, so the server can
//! refuse an explicit setting below it while the simulator runs it for
//! research (and its round configuration says why it is not secure).

use core::fmt;
use core::str::FromStr;

use super::{Params, ParamsError, ParamsRequest, find_params, threshold_floor, worst_count};
use crate::graph::GraphKind;

/// How the Shamir threshold t follows from the number of share holders
/// (a client's neighbours: n − 1 on the complete graph, k on a Harary
/// graph).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum ThresholdRule {
    /// `holders / 2 + 1`, a strict majority of each client's share
    /// holders, raised to the threat model's floor ([`threshold_floor`])
    /// where that is higher: the default, so a server started with no
    /// threshold setting is safe in every model.
    #[default]
    Majority,
    /// `ceil(fraction * holders)`, at least 2.
    Fraction(f64),
    /// A fixed t (capped at the number of holders).
    Count(u32),
}

impl FromStr for ThresholdRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "majority" {
            return Ok(ThresholdRule::Majority);
        }
        if s.contains('.') {
            return match s.parse::<f64>() {
                Ok(f) if f > 0.0 && f <= 1.0 => Ok(ThresholdRule::Fraction(f)),
                _ => Err(format!("'{s}': a threshold fraction must be in (0, 1]")),
            };
        }
        match s.parse::<u32>() {
            Ok(t) if t >= 2 => Ok(ThresholdRule::Count(t)),
            _ => Err(format!(
                "'{s}' is not a threshold: expected majority, a fraction such as 0.66, or a count >= 2"
            )),
        }
    }
}

impl fmt::Display for ThresholdRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThresholdRule::Majority => f.write_str("majority"),
            ThresholdRule::Fraction(x) => write!(f, "{x}"),
            ThresholdRule::Count(t) => write!(f, "{t}"),
        }
    }
}

/// The neighbour graph a round is asked to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphRequest {
    /// Whatever the parameter finder picks, graph and degree.
    Finder,
    /// A Harary graph of the degree the parameter finder picks; refused
    /// ([`ResolveError::FinderChoseComplete`]) if it picks the complete
    /// graph.
    FinderHarary,
    /// This graph, as given.
    Given(GraphKind),
}

/// Where a resolved graph or threshold came from, so that the server's logs
/// and the simulator's header can say whether a value was chosen or
/// defaulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamSource {
    /// Given by the caller: a graph, or a threshold count or fraction.
    Explicit,
    /// The SecAgg+ parameter finder's choice ([`find_params`]).
    Finder,
    /// A strict majority of the share holders, `holders / 2 + 1`.
    Majority,
    /// The majority rule raised to the threat model's floor
    /// ([`threshold_floor`]), which was higher.
    Floor,
}

/// Why a round's parameters could not be resolved.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The parameter finder was needed and failed.
    #[error(transparent)]
    Finder(#[from] ParamsError),
    /// [`GraphRequest::FinderHarary`], but the finder chose the complete
    /// graph.
    #[error("the parameter finder chose the complete graph")]
    FinderChoseComplete,
}

/// A round's graph and threshold, where each came from, and the floor the
/// threat model puts under the threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundParams {
    /// The neighbour graph.
    pub graph: GraphKind,
    /// Where the graph (and its degree) came from: [`ParamSource::Explicit`]
    /// or [`ParamSource::Finder`].
    pub graph_source: ParamSource,
    /// The Shamir threshold t.
    pub threshold: u32,
    /// Where t came from.
    pub threshold_source: ParamSource,
    /// The lowest t the threat model allows on this graph with
    /// [`RoundParams::corrupt`] corrupt clients ([`threshold_floor`]).
    /// Not enforced here: a t below it is reported, not refused.
    pub floor: u32,
    /// The most corrupt clients the round assumes, ⌊corrupt_rate · n⌋.
    pub corrupt: u32,
    /// What the parameter finder answered, if it was asked (it is asked
    /// only for what was left to it, so explicit parameters never fail
    /// because the finder finds the rates infeasible).
    pub finder: Option<Result<Params, ParamsError>>,
}

impl RoundParams {
    /// A client's share holders: its neighbours, n − 1 or k (a client holds
    /// no share of its own secrets).
    pub fn holders(&self, clients: u32) -> u32 {
        holders(self.graph, clients)
    }
}

fn holders(graph: GraphKind, clients: u32) -> u32 {
    match graph {
        GraphKind::Complete => clients - 1,
        GraphKind::Harary { k } => k,
    }
}

/// Resolves a round's graph and threshold for `request.clients` clients.
///
/// `threshold`: `None` takes the finder's t if the finder chose this same
/// graph (asking it if the graph did not), else a strict majority of the
/// share holders, not raised to the floor. A rule is applied as
/// [`ThresholdRule`] says and kept within `[2, holders]`.
///
/// The finder is asked at most once, and only when the graph or the
/// threshold is left to it.
///
/// # Errors
///
/// [`ResolveError`] when the graph is left to the finder and it fails, or
/// chooses the complete graph where a Harary graph was asked for.
pub fn resolve_round_params(
    request: &ParamsRequest,
    graph: GraphRequest,
    threshold: Option<ThresholdRule>,
) -> Result<RoundParams, ResolveError> {
    let n = request.clients;
    let mut finder = None;
    let (graph, graph_source) = match graph {
        GraphRequest::Given(graph) => (graph, ParamSource::Explicit),
        GraphRequest::Finder => {
            let found = finder.insert(find_params(request)).clone()?;
            (found.graph, ParamSource::Finder)
        }
        GraphRequest::FinderHarary => {
            let found = finder.insert(find_params(request)).clone()?;
            if found.graph == GraphKind::Complete {
                return Err(ResolveError::FinderChoseComplete);
            }
            (found.graph, ParamSource::Finder)
        }
    };
    let corrupt = worst_count(request.corrupt_rate, n);
    let floor = threshold_floor(request.threat_model, n, corrupt, graph);
    let holders = holders(graph, n);
    let majority = holders / 2 + 1;
    let within = |t: u32| t.clamp(2, holders.max(2));
    let (threshold, threshold_source) = match threshold {
        None => match finder.get_or_insert_with(|| find_params(request)) {
            Ok(p) if p.graph == graph => (p.threshold, ParamSource::Finder),
            _ => (majority, ParamSource::Majority),
        },
        Some(ThresholdRule::Majority) if majority >= floor => {
            (within(majority), ParamSource::Majority)
        }
        Some(ThresholdRule::Majority) => (within(floor), ParamSource::Floor),
        Some(ThresholdRule::Fraction(f)) => (
            within((f * f64::from(holders)).ceil() as u32),
            ParamSource::Explicit,
        ),
        Some(ThresholdRule::Count(t)) => (within(t), ParamSource::Explicit),
    };
    Ok(RoundParams {
        graph,
        graph_source,
        threshold,
        threshold_source,
        floor,
        corrupt,
        finder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ThreatModel;

    fn request(clients: u32, threat_model: ThreatModel) -> ParamsRequest {
        ParamsRequest {
            clients,
            dropout_rate: 0.1,
            corrupt_rate: 0.05,
            threat_model,
        }
    }

    #[test]
    fn explicit_parameters_never_ask_the_finder() {
        // Infeasible rates: an explicit graph and count still resolve.
        let req = ParamsRequest {
            corrupt_rate: 0.9,
            ..request(10, ThreatModel::SemiHonest)
        };
        let p = resolve_round_params(
            &req,
            GraphRequest::Given(GraphKind::Complete),
            Some(ThresholdRule::Count(3)),
        )
        .unwrap();
        assert_eq!((p.graph, p.threshold), (GraphKind::Complete, 3));
        assert_eq!(p.graph_source, ParamSource::Explicit);
        assert_eq!(p.threshold_source, ParamSource::Explicit);
        assert_eq!(p.finder, None);
        // Reported, not refused: 9 corrupt need t of at least 10.
        assert!(p.threshold < p.floor);
    }

    #[test]
    fn the_finder_decides_what_was_left_to_it() {
        let req = request(1000, ThreatModel::SemiHonest);
        let found = find_params(&req).unwrap();
        let p = resolve_round_params(&req, GraphRequest::Finder, None).unwrap();
        assert_eq!((p.graph, p.threshold), (found.graph, found.threshold));
        assert_eq!(p.graph_source, ParamSource::Finder);
        assert_eq!(p.threshold_source, ParamSource::Finder);
        assert_eq!(p.finder, Some(Ok(found)));
        // The same graph given explicitly takes the finder's t; another one
        // a plain majority of its holders.
        let p = resolve_round_params(&req, GraphRequest::Given(found.graph), None).unwrap();
        assert_eq!(p.threshold_source, ParamSource::Finder);
        let other = GraphKind::Harary { k: found.k + 2 };
        let p = resolve_round_params(&req, GraphRequest::Given(other), None).unwrap();
        assert_eq!(p.threshold, (found.k + 2) / 2 + 1);
        assert_eq!(p.threshold_source, ParamSource::Majority);
    }

    #[test]
    fn a_harary_graph_from_the_finder_needs_the_finder_to_choose_one() {
        // Against a malicious server the finder only picks complete graphs.
        let small = request(10, ThreatModel::MaliciousServer);
        assert_eq!(
            resolve_round_params(&small, GraphRequest::FinderHarary, None),
            Err(ResolveError::FinderChoseComplete)
        );
        let bad = ParamsRequest {
            corrupt_rate: 1.0,
            ..small
        };
        assert!(matches!(
            resolve_round_params(&bad, GraphRequest::Finder, None),
            Err(ResolveError::Finder(ParamsError::InvalidRate { .. }))
        ));
    }

    #[test]
    fn the_majority_rule_rises_to_the_floor_and_rules_stay_within_the_holders() {
        // Semi-malicious, 10 clients, 1 corrupt on the complete graph: the
        // floor (9 + 1)/2 + 1 = 6 is above the majority 5 of 9 holders.
        let req = ParamsRequest {
            corrupt_rate: 0.1,
            ..request(10, ThreatModel::SemiMalicious)
        };
        let complete = GraphRequest::Given(GraphKind::Complete);
        let p = resolve_round_params(&req, complete, Some(ThresholdRule::Majority)).unwrap();
        assert_eq!((p.threshold, p.floor), (6, 6));
        assert_eq!(p.threshold_source, ParamSource::Floor);
        let p = resolve_round_params(&req, complete, Some(ThresholdRule::Count(50))).unwrap();
        assert_eq!(p.threshold, 9);
        let p = resolve_round_params(&req, complete, Some(ThresholdRule::Fraction(0.66))).unwrap();
        assert_eq!(p.threshold, 6);
        let semi_honest = request(10, ThreatModel::SemiHonest);
        let p =
            resolve_round_params(&semi_honest, complete, Some(ThresholdRule::Majority)).unwrap();
        assert_eq!(p.threshold, 5);
        assert_eq!(p.threshold_source, ParamSource::Majority);
    }

    #[test]
    fn threshold_rules_parse_and_print() {
        for (text, rule) in [
            ("majority", ThresholdRule::Majority),
            ("0.75", ThresholdRule::Fraction(0.75)),
            ("7", ThresholdRule::Count(7)),
        ] {
            assert_eq!(text.parse::<ThresholdRule>(), Ok(rule));
            assert_eq!(rule.to_string(), text);
        }
        for bad in ["1", "1.5", "0.0", "most"] {
            assert!(bad.parse::<ThresholdRule>().is_err(), "{bad}");
        }
    }
}
