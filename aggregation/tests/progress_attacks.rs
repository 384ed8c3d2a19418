//! Attacks on the protocol's state machines: the server's roster (each
//! client's `Progress` and `Standing`) and the sessions' transitions
//! (`State::step`). Each test plays a hostile party against
//! the real sessions and pins a defence: which clients the
//! server still hears from and counts, what an evicted client can still do,
//! and what a client session refuses from a lying server (delivered in
//! process, without the byte codec, as the gRPC conversion delivers them:
//! the session's own checks are the only ones on that path).

mod common;

use common::{Net, config, ids, violation};
use tessera_aggregation::ThreatModel;
use tessera_aggregation::client::Violation;
use tessera_aggregation::messages::{
    ClientBody, ClientMessage, ServerBody, ServerMessage, UnmaskResponse,
};
use tessera_aggregation::server::ClientViolation;
// One name to change if the session errors are renamed.
use tessera_aggregation::ServerSessionError;
use tessera_aggregation::{ClientId, RoundConfig, ServerEvent, Stage};

fn semi_malicious(n: u32, t: u32) -> RoundConfig {
    let mut cfg = config(n, t, 8);
    cfg.threat_model = ThreatModel::SemiMalicious;
    cfg
}

/// Sends every message `id`'s session has queued; returns the server's
/// answers.
fn send_all(net: &mut Net, id: u32) -> Vec<Result<(), ServerSessionError>> {
    let mut results = Vec::new();
    while let Some(message) = net.clients[id as usize].poll_transmit() {
        results.push(net.server.handle_message(net.now, ClientId(id), message));
    }
    results
}

/// The stages completed since the last call: (stage, survivors, dropped).
fn stage_completions(net: &mut Net) -> Vec<(Stage, u32, u32)> {
    std::iter::from_fn(|| net.server.poll_event())
        .filter_map(|e| match e {
            ServerEvent::StageCompleted {
                stage,
                survivors,
                dropped,
            } => Some((stage, survivors, dropped)),
            _ => None,
        })
        .collect()
}

/// A client that never sent its share bundles is not sent anyone's shares
/// and cannot slip a masked input into the sum afterwards: it is not in
/// the round any more.
#[test]
fn a_client_that_skipped_share_keys_cannot_add_a_masked_input() {
    let mut net = Net::new(config(5, 3, 8), 71);
    net.step();
    assert_eq!(net.server.stage(), Some(Stage::ShareKeys));
    // Client 4 keeps its bundles back; the stage closes by its deadline.
    net.kill(&[4]);
    net.clients_send();
    net.expire_stage(Some(Stage::ShareKeys));
    assert_eq!(net.server.stage(), Some(Stage::MaskedInput));
    let out = net.server_outbox();
    assert!(out.iter().all(|(to, _)| to.0 != 4), "shares relayed to 4");
    net.deliver(out);
    // It then sends a well-formed masked input (a copy of client 0's).
    net.clients[0].submit_input(net.inputs[0].clone()).unwrap();
    let masked = net.clients[0].poll_transmit().unwrap();
    assert!(matches!(masked.body, ClientBody::MaskedInput(_)));
    assert_eq!(
        net.server
            .handle_message(net.now, ClientId(4), masked.clone()),
        Err(ServerSessionError::NotInRound {
            client: ClientId(4)
        })
    );
    net.server
        .handle_message(net.now, ClientId(0), masked)
        .unwrap();
    let output = net.run(&[]).expect("the round completes without 4");
    assert_eq!(output.contributors, ids(&[0, 1, 2, 3]));
    assert!(output.dropped_after_sharing.is_empty());
    assert_eq!(output.sum, net.plain_sum(&output.contributors));
}

/// Semi-malicious model: a client that did not confirm the survivor set is
/// not asked for shares, and its own answer to the unmasking request is
/// refused as from a client out of the round; its confirmation, sent late,
/// does not bring it back.
#[test]
fn a_client_that_did_not_confirm_the_survivors_cannot_answer_the_unmask_request() {
    let mut net = Net::new(semi_malicious(5, 3), 72);
    let check = net.run_until(|b| matches!(b, ServerBody::ConsistencyCheck { .. }));
    net.deliver(check);
    assert_eq!(net.server.stage(), Some(Stage::ConsistencyCheck));
    let confirmation = net.clients[4].poll_transmit().unwrap();
    net.kill(&[4]);
    net.clients_send();
    net.expire_stage(Some(Stage::ConsistencyCheck));
    assert_eq!(net.server.stage(), Some(Stage::Unmasking));
    assert_eq!(
        stage_completions(&mut net).last(),
        Some(&(Stage::ConsistencyCheck, 4, 1))
    );
    let requests = net.server_outbox();
    assert_eq!(
        requests.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
        ids(&[0, 1, 2, 3]),
        "only the clients that confirmed are asked"
    );
    let answer = ClientMessage {
        round_id: net.config.round_id,
        body: ClientBody::Unmasking(UnmaskResponse {
            self_mask_shares: Vec::new(),
            masking_key_shares: Vec::new(),
        }),
    };
    assert_eq!(
        net.server.handle_message(net.now, ClientId(4), answer),
        Err(ServerSessionError::NotInRound {
            client: ClientId(4)
        })
    );
    assert_eq!(
        net.server
            .handle_message(net.now, ClientId(4), confirmation),
        Err(ServerSessionError::Late {
            client: ClientId(4),
            stage: Stage::ConsistencyCheck
        })
    );
    net.deliver(requests);
    let output = net.run(&[]).expect("the round completes");
    // Its masked input is in the sum all the same, its self-mask rebuilt.
    assert_eq!(output.contributors, ids(&[0, 1, 2, 3, 4]));
    assert_eq!(output.sum, net.plain_sum(&output.contributors));
}

/// A client dropped twice (its connection closes after it was evicted for
/// misbehaving, or the transport reports it twice) counts once: the stage
/// keeps waiting for the clients it still expects instead of closing early
/// without them.
#[test]
fn an_evicted_client_stops_the_stage_waiting_for_it_only_once() {
    let mut net = Net::new(config(6, 3, 8), 73);
    let mut adverts = Vec::new();
    for i in 0..3 {
        let advert = net.clients[i].poll_transmit().unwrap();
        adverts.push(advert.clone());
        net.server
            .handle_message(net.now, ClientId(i as u32), advert)
            .unwrap();
    }
    net.server.handle_dropout(net.now, ClientId(3));
    net.server.handle_dropout(net.now, ClientId(3));
    assert_eq!(send_all(&mut net, 4), [Ok(())]);
    assert_eq!(
        net.server.stage(),
        Some(Stage::AdvertiseKeys),
        "the stage closed without client 5"
    );
    assert_eq!(send_all(&mut net, 5), [Ok(())]);
    assert_eq!(net.server.stage(), Some(Stage::ShareKeys));
    assert_eq!(stage_completions(&mut net), [(Stage::AdvertiseKeys, 5, 1)]);
    net.kill(&[3]);
    let out = net.server_outbox();
    assert!(out.iter().all(|(to, _)| to.0 != 3), "keys sent to 3");
    net.deliver(out);

    // Client 0 re-sends its advert: a duplicate, it is dropped, and its
    // connection then closes. The stage still waits for 1, 2, 4 and 5.
    let err = net
        .server
        .handle_message(net.now, ClientId(0), adverts[0].clone())
        .unwrap_err();
    assert_eq!(
        err,
        ServerSessionError::ClientMisbehaved {
            client: ClientId(0),
            violation: ClientViolation::Duplicate(Stage::AdvertiseKeys),
        }
    );
    net.server.handle_dropout(net.now, ClientId(0));
    net.server.handle_dropout(net.now, ClientId(0));
    for i in [1, 2, 4] {
        assert_eq!(send_all(&mut net, i), [Ok(())]);
    }
    assert_eq!(
        net.server.stage(),
        Some(Stage::ShareKeys),
        "the stage closed without client 5"
    );
    // Its bundles are refused: it is out of the round.
    assert_eq!(
        send_all(&mut net, 0),
        [Err(ServerSessionError::NotInRound {
            client: ClientId(0)
        })]
    );
    assert_eq!(send_all(&mut net, 5), [Ok(())]);
    assert_eq!(net.server.stage(), Some(Stage::MaskedInput));
    assert_eq!(stage_completions(&mut net), [(Stage::ShareKeys, 4, 1)]);
}

/// A contributor evicted during unmasking (its connection closed) is sent
/// nothing more and its answer is refused, yet its masked input stays in
/// the sum, unmasked with its neighbours' shares.
#[test]
fn an_evicted_contributor_cannot_answer_but_stays_in_the_sum() {
    let mut net = Net::new(config(5, 3, 8), 74);
    let requests = net.run_until(|b| matches!(b, ServerBody::UnmaskRequest { .. }));
    net.deliver(requests);
    net.server.handle_dropout(net.now, ClientId(2));
    assert_eq!(
        send_all(&mut net, 2),
        [Err(ServerSessionError::NotInRound {
            client: ClientId(2)
        })]
    );
    net.kill(&[2]);
    let output = net.run(&[]).expect("the round completes");
    assert_eq!(output.contributors, ids(&[0, 1, 2, 3, 4]));
    assert_eq!(output.sum, net.plain_sum(&output.contributors));
}

/// Semi-malicious model: a server that asks for shares before the client
/// confirmed the survivor set is refused, and the refusal also takes back
/// what the client had queued and not yet sent; the session then refuses
/// everything as ended.
#[test]
fn an_unmask_request_before_the_consistency_check_ends_the_session() {
    let mut net = Net::new(semi_malicious(5, 3), 75);
    let shares = net.run_until(|b| matches!(b, ServerBody::SealedShares(_)));
    net.deliver(shares);
    let client = &mut net.clients[0];
    client.submit_input(net.inputs[0].clone()).unwrap();
    assert_eq!(client.stage(), Some(Stage::ConsistencyCheck));
    assert!(client.has_transmit(), "the masked input is queued");
    let round_id = net.config.round_id;
    let early = ServerMessage {
        round_id,
        body: ServerBody::UnmaskRequest {
            survivors: ids(&[0, 1, 2, 3, 4]),
            dropped: Vec::new(),
            signatures: Vec::new(),
        },
    };
    assert_eq!(
        violation(client.handle_message(net.now, early)),
        Violation::UnexpectedMessage {
            stage: "consistency-check",
            message: "UnmaskRequest",
        }
    );
    assert_eq!(client.stage(), None);
    assert_eq!(client.poll_transmit(), None);
    assert_eq!(client.poll_timeout(), None);
    let check = ServerMessage {
        round_id,
        body: ServerBody::ConsistencyCheck {
            survivors: ids(&[0, 1, 2, 3, 4]),
        },
    };
    assert!(client.handle_message(net.now, check).is_err());
    assert_eq!(client.poll_transmit(), None);
}

/// A survivor list that names a client twice could pass a threshold with
/// fewer survivors than it claims. The codec refuses it, but a session fed
/// in process (the gRPC conversion does not re-check the order) refuses it
/// itself: at the consistency check and in the unmasking request.
#[test]
fn a_survivor_list_with_a_repeated_id_is_refused_in_process() {
    // Consistency check: only 0 and 1 survive, claimed as three.
    let mut net = Net::new(semi_malicious(5, 3), 76);
    let check = net.run_until(|b| matches!(b, ServerBody::ConsistencyCheck { .. }));
    drop(check);
    let round_id = net.config.round_id;
    let padded = ServerMessage {
        round_id,
        body: ServerBody::ConsistencyCheck {
            survivors: ids(&[0, 1, 1]),
        },
    };
    let client = &mut net.clients[0];
    while client.poll_transmit().is_some() {}
    assert_eq!(
        violation(client.handle_message(net.now, padded)),
        Violation::Unsorted("survivors")
    );
    assert_eq!(client.poll_transmit(), None, "client 0 confirmed");

    // Unmasking request (semi-honest): 0 and 1 survive, 2 to 4 dropped.
    let mut net = Net::new(config(5, 3, 8), 77);
    let requests = net.run_until(|b| matches!(b, ServerBody::UnmaskRequest { .. }));
    drop(requests);
    let padded = ServerMessage {
        round_id,
        body: ServerBody::UnmaskRequest {
            survivors: ids(&[0, 1, 1]),
            dropped: ids(&[2, 3, 4]),
            signatures: Vec::new(),
        },
    };
    let client = &mut net.clients[0];
    while client.poll_transmit().is_some() {}
    assert_eq!(
        violation(client.handle_message(net.now, padded)),
        Violation::Unsorted("survivors")
    );
    assert_eq!(client.poll_transmit(), None, "client 0 revealed shares");
    // A repeated dropped id is refused the same way.
    let mut net = Net::new(config(5, 3, 8), 78);
    let requests = net.run_until(|b| matches!(b, ServerBody::UnmaskRequest { .. }));
    drop(requests);
    let padded = ServerMessage {
        round_id,
        body: ServerBody::UnmaskRequest {
            survivors: ids(&[0, 1, 2]),
            dropped: ids(&[3, 3, 4]),
            signatures: Vec::new(),
        },
    };
    let client = &mut net.clients[0];
    while client.poll_transmit().is_some() {}
    assert_eq!(
        violation(client.handle_message(net.now, padded)),
        Violation::Unsorted("dropped")
    );
    assert_eq!(client.poll_transmit(), None, "client 0 revealed shares");
}
