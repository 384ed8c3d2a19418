//! The protocol's security invariants, each attacked directly: a scripted
//! server sends real client sessions the requests a curious server would
//! like answered, and misbehaving clients send the real server what a broken
//! or hostile client might.

mod common;

use chacha20::ChaCha20Rng;
use common::{Net, config, ids, violation};
use rand_core::{Rng, SeedableRng};
use tessera_aggregation::ThreatModel;
use tessera_aggregation::client::Violation;
use tessera_aggregation::messages::{ClientBody, ClientMessage, ServerBody, ServerMessage};
use tessera_aggregation::server::ClientViolation;
use tessera_aggregation::{
    ClientEvent, ClientId, ClientSessionError, ServerEvent, ServerSessionError, Stage,
};

/// Runs a round of 8 clients (t = 4) until the server has queued its
/// unmasking requests; client 7 drops before sending its masked input, so
/// requests name both survivors and a dropped client.
fn at_unmasking(threat_model: ThreatModel) -> (Net, Vec<(ClientId, ServerMessage)>) {
    let mut cfg = config(8, 4, 32);
    cfg.threat_model = threat_model;
    let mut net = Net::new(cfg, 21);
    let shares = net.run_until(|b| matches!(b, ServerBody::SealedShares(_)));
    net.deliver(shares);
    net.kill(&[7]);
    let out = net.run_until(|b| matches!(b, ServerBody::UnmaskRequest { .. }));
    (net, out)
}

fn request_for(out: &[(ClientId, ServerMessage)], id: u32) -> (Vec<ClientId>, Vec<ClientId>) {
    let (_, message) = out
        .iter()
        .find(|(to, _)| to.0 == id)
        .expect("request for client");
    match &message.body {
        ServerBody::UnmaskRequest {
            survivors, dropped, ..
        } => (survivors.clone(), dropped.clone()),
        other => panic!("not a request: {other:?}"),
    }
}

fn request(round_id: u64, survivors: Vec<ClientId>, dropped: Vec<ClientId>) -> ServerMessage {
    ServerMessage {
        round_id,
        body: ServerBody::UnmaskRequest {
            survivors,
            dropped,
            signatures: Vec::new(),
        },
    }
}

#[test]
fn a_client_answers_one_unmasking_request_per_round() {
    let (mut net, out) = at_unmasking(ThreatModel::SemiHonest);
    let (survivors, dropped) = request_for(&out, 0);
    assert_eq!(dropped, ids(&[7]));
    let round = net.config.round_id;
    let now = net.now;
    let client = &mut net.clients[0];
    client
        .handle_message(now, request(round, survivors.clone(), dropped.clone()))
        .unwrap();
    assert!(
        client.poll_transmit().is_some(),
        "the first request is answered"
    );

    // The same request again, and one that now calls survivor 1 dropped
    // (asking for its masking key on top of its self-mask share): both
    // refused, nothing sent.
    let again = client.handle_message(now, request(round, survivors.clone(), dropped.clone()));
    assert_eq!(violation(again), Violation::SecondUnmaskRequest);
    let mut flipped_survivors = survivors.clone();
    flipped_survivors.retain(|c| c.0 != 1);
    let flipped = client.handle_message(now, request(round, flipped_survivors, ids(&[1, 7])));
    assert_eq!(violation(flipped), Violation::SecondUnmaskRequest);
    assert!(client.poll_transmit().is_none());
}

#[test]
fn a_client_refuses_a_neighbour_named_both_survivor_and_dropped() {
    let (mut net, out) = at_unmasking(ThreatModel::SemiHonest);
    let (survivors, _) = request_for(&out, 1);
    let round = net.config.round_id;
    let now = net.now;
    let client = &mut net.clients[1];
    let result = client.handle_message(now, request(round, survivors.clone(), ids(&[2, 7])));
    assert_eq!(
        violation(result),
        Violation::SurvivorAndDropped(ClientId(2))
    );
    assert!(
        client.poll_transmit().is_none(),
        "no share leaves a refusing client"
    );
    // The refusal ends the session: not even the honest request is answered.
    let honest = client.handle_message(now, request(round, survivors, ids(&[7])));
    assert!(matches!(
        honest,
        Err(ClientSessionError::SessionEnded { .. })
    ));
    assert!(client.poll_transmit().is_none());
}

#[test]
fn a_client_refuses_when_fewer_than_t_survivors_are_named() {
    // The attack: claim most survivors dropped, to collect their masking
    // keys while their self-masks are revealed by others.
    let (mut net, _) = at_unmasking(ThreatModel::SemiHonest);
    let round = net.config.round_id;
    let now = net.now;
    let client = &mut net.clients[0];
    let result = client.handle_message(now, request(round, ids(&[0, 1, 2]), ids(&[3, 4, 5, 6, 7])));
    assert_eq!(
        violation(result),
        Violation::BelowThreshold {
            have: 3,
            threshold: 4
        }
    );
    assert!(client.poll_transmit().is_none());
}

#[test]
fn a_client_refuses_requests_below_the_survivor_floor() {
    // Distributed DP noise is calibrated for min_survivors: a request naming
    // fewer survivors than that (though at least t) would unmask a sum with
    // too little noise, so the client answers none.
    let mut cfg = config(8, 4, 32);
    cfg.min_survivors = 7;
    let mut net = Net::new(cfg, 22);
    net.run_until(|b| matches!(b, ServerBody::UnmaskRequest { .. }));
    let round = net.config.round_id;
    let now = net.now;
    let client = &mut net.clients[0];
    let result = client.handle_message(now, request(round, ids(&[0, 1, 2, 3, 4, 5]), ids(&[6, 7])));
    assert_eq!(
        violation(result),
        Violation::BelowThreshold {
            have: 6,
            threshold: 7
        }
    );
    assert!(client.poll_transmit().is_none());
}

#[test]
fn a_client_refuses_requests_that_omit_or_invent_clients_or_leave_it_out() {
    let (net, out) = at_unmasking(ThreatModel::SemiHonest);
    let (survivors, dropped) = request_for(&out, 2);
    let round = net.config.round_id;
    let cases: Vec<(Vec<ClientId>, Vec<ClientId>, Violation)> = vec![
        // Neighbour 7 not mentioned: it could be asked about later.
        (
            survivors.clone(),
            vec![],
            Violation::Unaccounted(ClientId(7)),
        ),
        // Self named dropped.
        (
            survivors.iter().copied().filter(|c| c.0 != 2).collect(),
            ids(&[2, 7]),
            Violation::SelfNotSurvivor,
        ),
        // Unsorted survivors.
        (
            survivors.iter().rev().copied().collect(),
            dropped.clone(),
            Violation::Unsorted("survivors"),
        ),
    ];
    for (s, d, expected) in cases {
        let (mut net, _) = at_unmasking(ThreatModel::SemiHonest);
        let now = net.now;
        let result = net.clients[2].handle_message(now, request(round, s, d));
        assert_eq!(violation(result), expected);
        assert!(net.clients[2].poll_transmit().is_none());
    }
}

/// Whatever split of its neighbours into survivors and dropped a server
/// proposes, a client reveals at most one secret per neighbour.
#[test]
fn a_client_never_reveals_both_secrets_of_one_neighbour() {
    let mut rng = ChaCha20Rng::from_seed([3; 32]);
    for trial in 0..40 {
        let (mut net, _) = at_unmasking(ThreatModel::SemiHonest);
        let round = net.config.round_id;
        let now = net.now;
        let me = (trial % 7) as u32;
        // A random assignment of each other client to survivor, dropped,
        // both or neither.
        let mut survivors = vec![ClientId(me)];
        let mut dropped = vec![];
        for v in 0..8u32 {
            if v == me {
                continue;
            }
            match rng.next_u32() % 4 {
                0 => survivors.push(ClientId(v)),
                1 => dropped.push(ClientId(v)),
                2 => {
                    survivors.push(ClientId(v));
                    dropped.push(ClientId(v));
                }
                _ => {}
            }
        }
        survivors.sort();
        let client = &mut net.clients[me as usize];
        let result = client.handle_message(now, request(round, survivors, dropped));
        if result.is_ok() {
            let Some(ClientMessage {
                body: ClientBody::Unmasking(response),
                ..
            }) = client.poll_transmit()
            else {
                panic!("an accepted request is answered")
            };
            for (owner, _) in &response.self_mask_shares {
                assert!(
                    response.masking_key_shares.iter().all(|(o, _)| o != owner),
                    "both secrets of {owner} revealed"
                );
            }
        } else {
            assert!(client.poll_transmit().is_none());
        }
    }
}

#[test]
fn the_unmasking_request_must_match_the_confirmed_survivor_set() {
    let (mut net, out) = at_unmasking(ThreatModel::SemiMalicious);
    let (survivors, dropped) = request_for(&out, 0);
    // A second story for client 0: survivor 3 now "dropped".
    let round = net.config.round_id;
    let now = net.now;
    let mut other = survivors.clone();
    other.retain(|c| c.0 != 3);
    let mut other_dropped = dropped.clone();
    other_dropped.insert(0, ClientId(3));
    let result = net.clients[0].handle_message(now, request(round, other, other_dropped));
    assert_eq!(violation(result), Violation::InconsistentSurvivors);
    assert!(net.clients[0].poll_transmit().is_none());
}

#[test]
fn readdressed_share_bundles_fail_to_open() {
    let mut net = Net::new(config(5, 3, 8), 31);
    net.step(); // AdvertiseKeys -> keys delivered
    net.clients_send(); // ShareKeys
    let mut out = net.server_outbox();
    let (_, message) = out.iter_mut().find(|(to, _)| to.0 == 0).unwrap();
    let ServerBody::SealedShares(bundles) = &mut message.body else {
        panic!("expected bundles")
    };
    // Label the bundle from client 1 as coming from client 2 (and drop the
    // real one from 2): the AEAD's associated data names the sender.
    bundles[0].ciphertext = bundles[1].ciphertext.clone();
    let message = message.clone();
    net.clients[0].handle_message(net.now, message).unwrap();
    // The bundle labelled as client 1's does not open: client 0 accuses
    // client 1 (only 1: the real bundle from 2 opens) instead of masking.
    assert_eq!(
        net.clients[0].poll_event(),
        Some(ClientEvent::Accused(vec![ClientId(1)]))
    );
    let accusation = net.clients[0].poll_transmit().unwrap();
    let ClientBody::Accusation(accusation) = accusation.body else {
        panic!("expected an accusation, got {accusation:?}")
    };
    assert_eq!(accusation.accused, vec![ClientId(1)]);
    assert!(
        accusation.share_secret.is_none(),
        "no client reveals its share key unless it opted in (see accusation.rs)"
    );
}

#[test]
fn a_message_for_another_round_is_refused_without_ending_the_session() {
    let mut net = Net::new(config(4, 3, 8), 41);
    let now = net.now;
    let result = net.clients[0].handle_message(
        now,
        ServerMessage {
            round_id: 99,
            body: ServerBody::NeighbourKeys(vec![]),
        },
    );
    assert!(matches!(
        result,
        Err(ClientSessionError::WrongRound {
            expected: 11,
            got: 99
        })
    ));
    assert!(!net.clients[0].is_closed());
    // The server refuses clients' messages from another round too.
    let advert = net.clients[0].poll_transmit().unwrap();
    let stale = ClientMessage {
        round_id: 10,
        ..advert
    };
    assert!(matches!(
        net.server.handle_message(now, ClientId(0), stale),
        Err(ServerSessionError::WrongRound { .. })
    ));
}

/// A malformed masked input gets its sender a precise error and drops it;
/// the others' round completes with the exact sum.
#[test]
fn a_malformed_message_drops_only_its_sender() {
    let mut net = Net::new(config(6, 3, 100), 51);
    net.step();
    net.step();
    assert_eq!(net.server.stage(), Some(Stage::MaskedInput));
    let now = net.now;
    // Client 2 sends a masked input one byte short.
    let client = &mut net.clients[2];
    client.submit_input(net.inputs[2].clone()).unwrap();
    let mut message = client.poll_transmit().unwrap();
    let ClientBody::MaskedInput(packed) = &mut message.body else {
        panic!()
    };
    packed.pop();
    let err = net
        .server
        .handle_message(now, ClientId(2), message.clone())
        .unwrap_err();
    assert!(
        matches!(
            err,
            ServerSessionError::ClientMisbehaved {
                client: ClientId(2),
                violation: ClientViolation::MaskedInput(_)
            }
        ),
        "{err}"
    );
    // Sending again (even a good message) does not get it back in.
    assert_eq!(
        net.server.handle_message(now, ClientId(2), message),
        Err(ServerSessionError::NotInRound {
            client: ClientId(2)
        })
    );
    net.kill(&[2]);
    let mut output = None;
    for _ in 0..3 {
        net.step();
        while let Some(event) = net.server.poll_event() {
            match event {
                ServerEvent::UnmaskingReady => {
                    net.server.unmask();
                }
                ServerEvent::Completed(o) => output = Some(o),
                _ => {}
            }
        }
    }
    let output = output.expect("the round completes without client 2");
    assert_eq!(output.contributors, ids(&[0, 1, 3, 4, 5]));
    assert_eq!(output.dropped_after_sharing, ids(&[2]));
    assert_eq!(output.sum, net.plain_sum(&output.contributors));
}

#[test]
fn server_refuses_late_duplicate_unknown_and_out_of_stage_messages() {
    let mut net = Net::new(config(6, 3, 8), 61);
    let now = net.now;
    let advert = net.clients[0].poll_transmit().unwrap();
    // Unknown sender.
    assert!(matches!(
        net.server.handle_message(now, ClientId(9), advert.clone()),
        Err(ServerSessionError::UnknownClient { .. })
    ));
    // A message of a later stage is misbehaviour.
    let early = ClientMessage {
        round_id: advert.round_id,
        body: ClientBody::MaskedInput(vec![0; 32]),
    };
    assert!(matches!(
        net.server.handle_message(now, ClientId(1), early),
        Err(ServerSessionError::ClientMisbehaved {
            violation: ClientViolation::WrongStage { .. },
            ..
        })
    ));
    // A duplicate is misbehaviour.
    net.server
        .handle_message(now, ClientId(0), advert.clone())
        .unwrap();
    assert!(matches!(
        net.server.handle_message(now, ClientId(0), advert),
        Err(ServerSessionError::ClientMisbehaved {
            violation: ClientViolation::Duplicate(Stage::AdvertiseKeys),
            ..
        })
    ));
    // Clients 2 to 4 advertise in time (client 0 was dropped for its
    // duplicate); the deadline closes the stage.
    for i in 2..5 {
        let m = net.clients[i].poll_transmit().unwrap();
        net.server
            .handle_message(now, ClientId(i as u32), m)
            .unwrap();
    }
    net.expire_stage(Some(Stage::AdvertiseKeys));
    let events: Vec<_> = std::iter::from_fn(|| net.server.poll_event()).collect();
    assert_eq!(net.server.stage(), Some(Stage::ShareKeys), "{events:?}");
    // Client 5's advert arrives after that: late, with a precise error.
    let late = net.clients[5].poll_transmit().unwrap();
    assert_eq!(
        net.server.handle_message(net.now, ClientId(5), late),
        Err(ServerSessionError::Late {
            client: ClientId(5),
            stage: Stage::AdvertiseKeys
        })
    );
    // Client 1, dropped for misbehaving, stays out.
    let m = net.clients[1].poll_transmit().unwrap();
    assert_eq!(
        net.server.handle_message(net.now, ClientId(1), m),
        Err(ServerSessionError::NotInRound {
            client: ClientId(1)
        })
    );
}

#[test]
fn an_unmasking_response_with_the_wrong_shares_is_refused() {
    let (mut net, out) = at_unmasking(ThreatModel::SemiHonest);
    let now = net.now;
    net.deliver(out);
    let mut response = net.clients[0].poll_transmit().unwrap();
    let ClientBody::Unmasking(r) = &mut response.body else {
        panic!()
    };
    // Drop the masking-key share of client 7: not what was asked.
    r.masking_key_shares.clear();
    assert!(matches!(
        net.server.handle_message(now, ClientId(0), response),
        Err(ServerSessionError::ClientMisbehaved {
            violation: ClientViolation::Response(_),
            ..
        })
    ));
}

#[test]
fn a_client_gives_up_when_the_server_falls_silent() {
    let mut net = Net::new(config(4, 3, 8), 71);
    let client = &mut net.clients[0];
    let deadline = client
        .poll_timeout()
        .expect("a waiting client has a deadline");
    assert_eq!(deadline, net.base + net.config.stage_timeout * 2);
    client.handle_timeout(deadline - std::time::Duration::from_millis(1));
    assert!(!client.is_closed(), "not before the deadline");
    client.handle_timeout(deadline);
    assert!(client.is_closed());
    assert_eq!(
        client.poll_event(),
        Some(tessera_aggregation::ClientEvent::TimedOut)
    );
    assert!(
        client.poll_transmit().is_none(),
        "a timed-out client sends nothing"
    );
}
