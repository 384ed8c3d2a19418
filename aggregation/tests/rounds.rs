//! Whole rounds: the unmasked sum equals the plain sum of the survivors'
//! inputs whatever stage clients drop out in, and a round aborts, revealing
//! nothing, whenever fewer than t clients survive a stage.

mod common;

use std::collections::BTreeMap;

use common::{Net, config};
use tessera_aggregation::ThreatModel;
use tessera_aggregation::graph::GraphKind;
use tessera_aggregation::mask::Prg;
use tessera_aggregation::sim::{FaultCounts, Faults, Outcome, SimConfig, run_round};
use tessera_aggregation::{ClientId, ServerEvent, Stage};

fn ids(range: std::ops::Range<u32>) -> Vec<ClientId> {
    range.map(ClientId).collect()
}

#[test]
fn no_dropouts_gives_the_exact_sum() {
    let mut net = Net::new(config(6, 4, 1000), 1);
    let output = net.run(&[]).expect("round completes");
    assert_eq!(output.contributors, ids(0..6));
    assert!(output.dropped_after_sharing.is_empty());
    assert_eq!(output.sum, net.plain_sum(&output.contributors));
}

#[test]
fn dropouts_at_each_stage_still_give_the_exact_sum() {
    // n = 8, t = 4: two clients drop at one stage.
    for stage in Stage::ALL {
        for threat_model in [ThreatModel::SemiHonest, ThreatModel::SemiMalicious] {
            if stage == Stage::ConsistencyCheck && threat_model == ThreatModel::SemiHonest {
                continue;
            }
            let mut cfg = config(8, 4, 300);
            cfg.threat_model = threat_model;
            let mut net = Net::new(cfg, 2);
            let output = net
                .run(&[(stage, &[2, 5])])
                .unwrap_or_else(|| panic!("round aborted with drops at {stage}"));
            let expected_contributors: Vec<ClientId> = if stage <= Stage::MaskedInput {
                ids(0..8)
                    .into_iter()
                    .filter(|c| c.0 != 2 && c.0 != 5)
                    .collect()
            } else {
                // Dropping after the masked input arrived does not remove the
                // input from the sum.
                ids(0..8)
            };
            assert_eq!(
                output.contributors, expected_contributors,
                "drops at {stage}"
            );
            assert_eq!(
                output.sum,
                net.plain_sum(&output.contributors),
                "drops at {stage}, {threat_model:?}"
            );
            let dropped_after_sharing: Vec<ClientId> = if stage == Stage::MaskedInput {
                vec![ClientId(2), ClientId(5)]
            } else {
                vec![]
            };
            assert_eq!(output.dropped_after_sharing, dropped_after_sharing);
        }
    }
}

#[test]
fn reported_dropouts_close_a_stage_without_waiting_for_its_deadline() {
    // n = 6, t = 3: clients 1 and 4 disconnect before sharing keys; the
    // driver reports it, so the stage closes as soon as the other four
    // answered, well before the deadline, and the sum is exact (each of the
    // four has t = 3 holders among the others).
    let mut net = Net::new(config(6, 3, 200), 4);
    net.step(); // AdvertiseKeys, all six.
    assert_eq!(net.server.stage(), Some(Stage::ShareKeys));
    net.kill(&[1, 4]);
    net.server.handle_dropout(net.now, ClientId(1));
    net.server.handle_dropout(net.now, ClientId(4));
    net.server.handle_dropout(net.now, ClientId(4)); // idempotent
    net.server.handle_dropout(net.now, ClientId(99)); // unknown: ignored
    net.clients_send();
    // Closed by the last answer, not by a timeout: the clock never moved.
    assert_eq!(net.now, net.base);
    assert_eq!(net.server.stage(), Some(Stage::MaskedInput));
    let out = net.server_outbox();
    net.deliver(out);
    let output = net.run(&[]).expect("round completes");
    assert_eq!(
        output.contributors,
        vec![ClientId(0), ClientId(2), ClientId(3), ClientId(5)]
    );
    assert_eq!(output.sum, net.plain_sum(&output.contributors));
}

#[test]
fn dropouts_combined_across_stages() {
    let mut cfg = config(12, 5, 257);
    cfg.threat_model = ThreatModel::SemiMalicious;
    cfg.bits = 20;
    let mut net = Net::new(cfg, 3);
    let output = net
        .run(&[
            (Stage::AdvertiseKeys, &[0]),
            (Stage::ShareKeys, &[11]),
            (Stage::MaskedInput, &[3, 4]),
            (Stage::ConsistencyCheck, &[6]),
            (Stage::Unmasking, &[7]),
        ])
        .expect("6 clients survive every stage: t = 5 holders for each of them");
    let expected: Vec<ClientId> = [1, 2, 5, 6, 7, 8, 9, 10].map(ClientId).to_vec();
    assert_eq!(output.contributors, expected);
    assert_eq!(output.dropped_after_sharing, vec![ClientId(3), ClientId(4)]);
    assert_eq!(output.sum, net.plain_sum(&output.contributors));
    assert!(output.sum.iter().all(|v| *v < 1 << 20));
}

#[test]
fn harary_graph_round_with_dropouts_before_and_after_masking() {
    let mut cfg = config(30, 4, 500);
    cfg.graph = GraphKind::Harary { k: 8 };
    cfg.graph_seed = [9; 32];
    let mut net = Net::new(cfg, 4);
    let output = net
        .run(&[
            (Stage::ShareKeys, &[1]),
            (Stage::MaskedInput, &[5, 17, 29]),
            (Stage::Unmasking, &[20]),
        ])
        .expect("round completes");
    assert_eq!(output.contributors.len(), 26);
    assert_eq!(output.sum, net.plain_sum(&output.contributors));
}

/// Clients needed to survive a stage is t; one fewer aborts the round there,
/// and the server never produces a sum.
#[test]
fn below_threshold_at_any_stage_aborts_and_reveals_nothing() {
    for stage in Stage::ALL {
        let mut cfg = config(6, 4, 64);
        cfg.threat_model = ThreatModel::SemiMalicious;
        let mut net = Net::new(cfg, 5);
        // 3 of 6 survive: below t = 4.
        net.kill(&[]);
        let mut killed = false;
        let mut events = Vec::new();
        for _ in 0..6 {
            if net.server.stage() == Some(stage) && !killed {
                net.kill(&[0, 1, 2]);
                killed = true;
            }
            net.step();
            while let Some(event) = net.server.poll_event() {
                if matches!(event, ServerEvent::UnmaskingReady) {
                    net.server.unmask();
                }
                events.push(event);
            }
        }
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ServerEvent::Aborted { stage: s, .. } if *s == stage)),
            "no abort at {stage}: {events:?}"
        );
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, ServerEvent::Completed(_))),
            "a sum was produced below the threshold at {stage}"
        );
        assert!(net.server.is_finished());
        assert!(
            net.server.unmask().is_none(),
            "unmask after abort must do nothing"
        );
        // Surviving clients were told.
        for i in 3..6 {
            assert_eq!(
                net.clients[i].abort_reason(),
                Some(tessera_aggregation::messages::AbortReason::BelowThreshold),
                "client {i} at {stage}"
            );
        }
    }
}

/// A client holds no share of its own secrets, so each survivor's self-mask
/// seed needs t shares from the other survivors: t + 1 survivors complete a
/// round, t do not (and the server aborts before asking for any share).
#[test]
fn t_plus_one_survivors_complete_and_t_abort_before_unmasking() {
    let mut net = Net::new(config(6, 4, 64), 6);
    let output = net
        .run(&[(Stage::MaskedInput, &[0])])
        .expect("t + 1 survivors suffice");
    assert_eq!(output.contributors, ids(1..6));
    assert_eq!(output.sum, net.plain_sum(&output.contributors));

    let mut net = Net::new(config(6, 4, 64), 6);
    assert!(net.run(&[(Stage::MaskedInput, &[0, 1])]).is_none());
    for i in 2..6 {
        assert_eq!(
            net.clients[i].abort_reason(),
            Some(tessera_aggregation::messages::AbortReason::SharesMissing),
            "client {i}"
        );
    }
}

#[test]
fn a_survivor_floor_above_t_aborts_before_any_share_is_revealed() {
    // A SecAgg+ round whose DP noise is calibrated for 10 survivors: t = 3
    // per neighbourhood would let it go on with far fewer, the floor does
    // not.
    let mut cfg = config(12, 3, 64);
    cfg.graph = GraphKind::Harary { k: 6 };
    cfg.min_survivors = 10;
    assert_eq!(cfg.survivor_floor(), 10);
    let mut net = Net::new(cfg.clone(), 9);
    let output = net
        .run(&[(Stage::MaskedInput, &[0, 5])])
        .expect("10 survivors meet the floor");
    assert_eq!(output.sum, net.plain_sum(&output.contributors));
    let mut net = Net::new(cfg.clone(), 9);
    assert!(
        net.run(&[(Stage::MaskedInput, &[0, 5, 8])]).is_none(),
        "9 survivors are below the floor though far above t"
    );
    cfg.min_survivors = 13;
    assert!(cfg.validate().is_err(), "a floor above n is refused");
}

fn sim(
    clients: u32,
    graph: GraphKind,
    threshold: u32,
    drops: &[(Stage, f64)],
    prg: Prg,
) -> SimConfig {
    SimConfig {
        clients,
        dim: 2000,
        graph,
        threshold,
        bits: 24,
        prg,
        threat_model: ThreatModel::SemiHonest,
        corrupt: 0,
        drops: drops.iter().copied().collect::<BTreeMap<_, _>>(),
        seed: 7,
        faults: None,
    }
}

#[test]
fn simulator_verifies_sums_for_both_prgs_and_graphs() {
    for prg in [Prg::Aes128Ctr, Prg::ChaCha20] {
        for (graph, t) in [(GraphKind::Complete, 30), (GraphKind::Harary { k: 12 }, 6)] {
            let config = sim(
                60,
                graph,
                t,
                &[
                    (Stage::AdvertiseKeys, 0.05),
                    (Stage::ShareKeys, 0.05),
                    (Stage::MaskedInput, 0.1),
                ],
                prg,
            );
            let report = run_round(&config, 0, &|_| {}).unwrap();
            assert_eq!(report.outcome, Outcome::Completed, "{prg:?} {graph:?}");
            assert!(report.verified, "{prg:?} {graph:?}");
            assert_eq!(report.dropped[&Stage::AdvertiseKeys], 3);
            assert!(report.survivors < 60 && report.survivors >= t);
        }
    }
}

#[test]
fn simulator_reports_abort_below_threshold() {
    let config = sim(
        20,
        GraphKind::Complete,
        15,
        &[(Stage::ShareKeys, 0.5)],
        Prg::Aes128Ctr,
    );
    let report = run_round(&config, 0, &|_| {}).unwrap();
    assert_eq!(report.outcome, Outcome::Aborted);
    assert!(!report.verified);
    assert_eq!(report.abort_stage, Some(Stage::ShareKeys));
}

#[test]
fn simulator_is_reproducible_from_its_seed() {
    let config = sim(
        25,
        GraphKind::Harary { k: 6 },
        4,
        &[(Stage::MaskedInput, 0.2)],
        Prg::Aes128Ctr,
    );
    let a = run_round(&config, 3, &|_| {}).unwrap();
    let b = run_round(&config, 3, &|_| {}).unwrap();
    assert_eq!(a.dropped, b.dropped);
    assert_eq!(a.survivors, b.survivors);
    assert_eq!(a.server_bytes_received, b.server_bytes_received);
}

#[test]
fn an_unreliable_network_never_produces_a_wrong_sum() {
    let faults: Faults = "loss=0.01,duplicate=0.01,delay=0.01,reorder"
        .parse()
        .unwrap();
    let (mut completed, mut aborted) = (0, 0);
    let mut counts = FaultCounts::default();
    for (graph, threshold, threat_model) in [
        (GraphKind::Complete, 16, ThreatModel::SemiHonest),
        (GraphKind::Harary { k: 10 }, 6, ThreatModel::SemiMalicious),
        (GraphKind::Complete, 16, ThreatModel::MaliciousServer),
    ] {
        for seed in 0..8 {
            let mut cfg = sim(30, graph, threshold, &[], Prg::Aes128Ctr);
            cfg.dim = 64;
            cfg.seed = seed;
            cfg.threat_model = threat_model;
            cfg.faults = Some(faults);
            let report = run_round(&cfg, 0, &|_| {}).unwrap();
            match report.outcome {
                Outcome::Completed => {
                    assert!(report.verified, "{threat_model} seed {seed}: wrong sum");
                    completed += 1;
                }
                Outcome::Aborted => aborted += 1,
            }
            counts.lost += report.faults.lost;
            counts.duplicated += report.faults.duplicated;
            counts.delayed += report.faults.delayed;
            counts.refused += report.faults.refused;
        }
    }
    // The faults happened, were refused where they had to be, and most
    // rounds still completed.
    assert!(
        counts.lost > 0 && counts.duplicated > 0 && counts.delayed > 0,
        "{counts:?}"
    );
    assert!(counts.refused > 0, "{counts:?}");
    assert!(completed >= 12, "{completed} completed, {aborted} aborted");
}

#[test]
fn fault_specs_parse_and_bad_ones_are_refused() {
    let f: Faults = "loss=0.1, delay=0.2,reorder".parse().unwrap();
    assert_eq!(
        (f.loss, f.duplicate, f.delay, f.reorder),
        (0.1, 0.0, 0.2, true)
    );
    for bad in ["loss", "loss=2", "drop=0.1", "loss=x"] {
        assert!(bad.parse::<Faults>().is_err(), "{bad}");
    }
}
