//! Share-bundle accusations ([`tessera_aggregation::accusation`]): a client
//! that seals garbage for a neighbour is proven wrong and evicted, and the
//! honest clients finish the round; a false accuser is evicted instead; too
//! many accusers abort the round before anything is unmasked; and a server
//! that corrupts relayed bundles where it may deviate gets no share key.

mod common;

use std::collections::HashMap;

use common::{Net, config, ids};
use tessera_aggregation::accusation::{Accusation, BadBundle, open_revealed};
use tessera_aggregation::messages::{
    AbortReason, ClientBody, ClientMessage, ServerBody, ServerMessage,
};
use tessera_aggregation::server::ClientViolation;
use tessera_aggregation::{
    ClientEvent, ClientId, RoundConfig, ServerEvent, ServerSessionError, Stage, ThreatModel,
};

/// Advertise, then ShareKeys with `attacker`'s bundles for `victims`
/// replaced by garbage of the right length (a hostile client: the server
/// cannot tell). Leaves the SealedShares relay undelivered.
fn share_with_garbage(
    config: RoundConfig,
    attacker: ClientId,
    victims: &[u32],
) -> (Net, Vec<(ClientId, ServerMessage)>) {
    let (net, relay, _) = share_with_garbage_keys(config, attacker, victims);
    (net, relay)
}

/// A round stopped with its SealedShares relay undelivered, and every
/// advertised `c_pk` by owner.
type Relayed = (
    Net,
    Vec<(ClientId, ServerMessage)>,
    HashMap<ClientId, [u8; 32]>,
);

/// [`share_with_garbage`], also returning every advertised `c_pk`.
fn share_with_garbage_keys(config: RoundConfig, attacker: ClientId, victims: &[u32]) -> Relayed {
    let mut net = Net::new(config, 71);
    // The server's judging of keyed accusations is under test: every
    // client opts in to proving (off by default: see `crate::accusation`).
    for client in &mut net.clients {
        client.reveal_share_key_when_accusing();
    }
    net.clients_send();
    let adverts = net.server_outbox();
    let mut c_pk = HashMap::new();
    for (_, message) in &adverts {
        if let ServerBody::NeighbourKeys(list) = &message.body {
            for (id, advert) in list {
                c_pk.insert(*id, advert.keys.c_pk);
            }
        }
    }
    net.deliver(adverts);
    let mut own = net.clients[attacker.index()].poll_transmit().unwrap();
    let ClientBody::ShareKeys(bundles) = &mut own.body else {
        panic!("expected the attacker's share bundles")
    };
    for bundle in bundles.iter_mut() {
        if victims.contains(&bundle.peer.0) {
            bundle.ciphertext.iter_mut().for_each(|b| *b ^= 0x5a);
        }
    }
    net.server
        .handle_message(net.now, attacker, own)
        .expect("the server cannot open a bundle: it relays the garbage");
    net.clients_send();
    let relay = net.server_outbox();
    assert!(
        relay
            .iter()
            .all(|(_, m)| matches!(m.body, ServerBody::SealedShares(_)))
    );
    (net, relay, c_pk)
}

/// Sends client `id`'s queued messages (its input submitted if asked
/// for); returns the server's answers.
fn send(net: &mut Net, id: ClientId) -> Vec<Result<(), ServerSessionError>> {
    let client = &mut net.clients[id.index()];
    if client.is_awaiting_input() {
        client.submit_input(net.inputs[id.index()].clone()).unwrap();
    }
    let mut results = Vec::new();
    while let Some(message) = client.poll_transmit() {
        let message = ClientMessage::decode(&message.encode()).unwrap();
        results.push(net.server.handle_message(net.now, id, message));
    }
    results
}

fn events(net: &mut Net) -> Vec<ServerEvent> {
    std::iter::from_fn(|| net.server.poll_event()).collect()
}

/// The accusation client `id` queued.
fn accusation_of(net: &mut Net, id: ClientId) -> Accusation {
    assert!(matches!(
        net.clients[id.index()].poll_event(),
        Some(ClientEvent::Accused(_))
    ));
    let message = net.clients[id.index()].poll_transmit().unwrap();
    let ClientBody::Accusation(accusation) = message.body else {
        panic!("expected an accusation, got {message:?}")
    };
    accusation
}

#[test]
fn a_garbage_bundle_sender_is_evicted_and_the_round_completes_without_its_input() {
    let attacker = ClientId(5);
    let (mut net, relay) = share_with_garbage(config(6, 3, 16), attacker, &[0]);
    // Every honest client takes its bundles without refusing the round.
    net.deliver(relay);
    // The victim's accusation arrives first, then the honest inputs.
    for id in 0..5 {
        for result in send(&mut net, ClientId(id)) {
            result.unwrap();
        }
    }
    let seen = events(&mut net);
    assert!(seen.iter().any(|e| matches!(
        e,
        ServerEvent::Evicted {
            client,
            violation: ClientViolation::BadBundle { receiver, problem: BadBundle::Decrypt },
        } if *client == attacker && *receiver == ClientId(0)
    )));
    assert!(seen.iter().any(|e| matches!(
        e,
        ServerEvent::Accused { accuser, accused, proven: true }
            if *accuser == ClientId(0) && *accused == vec![attacker]
    )));
    // The attacker's masked input, sent after its eviction, is refused.
    let late = send(&mut net, attacker);
    assert_eq!(
        late,
        vec![Err(ServerSessionError::NotInRound { client: attacker })]
    );
    net.kill(&[attacker.0, 0]);
    let out = net.server_outbox();
    net.deliver(out);
    let output = net.run(&[]).expect("the honest clients complete the round");
    let honest = ids(&[1, 2, 3, 4]);
    assert_eq!(output.contributors, honest);
    assert_eq!(output.dropped_after_sharing, ids(&[0, 5]));
    assert_eq!(output.sum, net.plain_sum(&honest));
}

#[test]
fn an_evicted_senders_input_already_in_the_sum_is_unmasked_like_a_dropouts() {
    // The race the other way: the attacker's masked input arrives before
    // the accusation. Its self-mask seed is rebuilt from the four honest
    // holders of valid shares, and the sum is still exact.
    let attacker = ClientId(5);
    let (mut net, relay) = share_with_garbage(config(6, 3, 16), attacker, &[0]);
    net.deliver(relay);
    for result in send(&mut net, attacker) {
        result.unwrap();
    }
    for id in 0..5 {
        for result in send(&mut net, ClientId(id)) {
            result.unwrap();
        }
    }
    assert!(events(&mut net).iter().any(|e| matches!(
        e,
        ServerEvent::Evicted { client, .. } if *client == attacker
    )));
    net.kill(&[attacker.0, 0]);
    let out = net.server_outbox();
    net.deliver(out);
    let output = net.run(&[]).expect("the honest clients complete the round");
    let contributors = ids(&[1, 2, 3, 4, 5]);
    assert_eq!(output.contributors, contributors);
    assert_eq!(output.sum, net.plain_sum(&contributors));
}

#[test]
fn a_false_accusation_evicts_the_accuser_not_the_accused() {
    let mut net = Net::new(config(6, 3, 16), 72);
    net.clients[0].reveal_share_key_when_accusing();
    net.step();
    net.clients_send();
    let mut relay = net.server_outbox();
    // Client 0 is handed a corrupted copy of client 3's (good) bundle, so
    // it accuses 3, revealing its key; the bundle the server relayed opens.
    let (_, message) = relay.iter_mut().find(|(to, _)| to.0 == 0).unwrap();
    let ServerBody::SealedShares(bundles) = &mut message.body else {
        panic!("expected bundles")
    };
    let from_3 = bundles.iter_mut().find(|b| b.peer.0 == 3).unwrap();
    from_3.ciphertext[0] ^= 1;
    net.deliver(relay);
    let results = send(&mut net, ClientId(0));
    assert_eq!(
        results,
        vec![Err(ServerSessionError::ClientMisbehaved {
            client: ClientId(0),
            violation: ClientViolation::FalseAccusation {
                accused: ClientId(3)
            },
        })]
    );
    assert!(
        results[0].as_ref().unwrap_err().to_string().contains(
            "client 0 broke the protocol and was dropped from the round: accused client 3"
        )
    );
    net.kill(&[0]);
    let output = net.run(&[]).expect("the others complete the round");
    let contributors = ids(&[1, 2, 3, 4, 5]);
    assert_eq!(output.contributors, contributors);
    assert_eq!(output.sum, net.plain_sum(&contributors));
}

#[test]
fn an_accusation_with_a_key_that_is_not_the_accusers_proves_nothing() {
    let attacker = ClientId(5);
    let (mut net, relay) = share_with_garbage(config(6, 3, 16), attacker, &[0]);
    net.deliver(relay);
    let mut accusation = accusation_of(&mut net, ClientId(0));
    // A hostile accuser swaps in another key (and one naming a client that
    // sealed nothing for it would fare no better).
    accusation.share_secret = Some(zeroize::Zeroizing::new([7; 32]));
    let message = ClientMessage {
        round_id: net.config.round_id,
        body: ClientBody::Accusation(accusation),
    };
    let error = net
        .server
        .handle_message(net.now, ClientId(0), message)
        .unwrap_err();
    assert!(matches!(
        error,
        ServerSessionError::ClientMisbehaved {
            client: ClientId(0),
            violation: ClientViolation::Accusation(_),
        }
    ));
    // The accused stays: nothing was proven against it.
    assert!(
        !events(&mut net)
            .iter()
            .any(|e| matches!(e, ServerEvent::Evicted { .. }))
    );
}

#[test]
fn accusers_beyond_the_thresholds_margin_abort_the_round_before_any_unmasking() {
    // t = 3 against no assumed colluder: each client's shares may be
    // exposed at up to 2 holders. Client 5 garbles the bundles of 0, 1, 2.
    let attacker = ClientId(5);
    let (mut net, relay) = share_with_garbage(config(6, 3, 16), attacker, &[0, 1, 2]);
    net.deliver(relay);
    for id in [0, 1] {
        for result in send(&mut net, ClientId(id)) {
            result.unwrap();
        }
        assert_eq!(net.server.stage(), Some(Stage::MaskedInput));
    }
    // The third key would put 3 = t shares of clients 3, 4 (and 5) in the
    // server's hands: the round aborts instead.
    for result in send(&mut net, ClientId(2)) {
        result.unwrap();
    }
    assert_eq!(net.server.abort_reason(), Some(AbortReason::Accusations));
    assert!(events(&mut net).iter().any(|e| matches!(
        e,
        ServerEvent::Aborted {
            stage: Stage::MaskedInput,
            reason: AbortReason::Accusations,
            ..
        }
    )));
    // Every client still in the round is told why, and no one was ever
    // asked for a share.
    let told = net.server_outbox();
    assert!(!told.is_empty());
    for (to, message) in &told {
        assert_eq!(message.body, ServerBody::Aborted(AbortReason::Accusations));
        net.clients[to.index()]
            .handle_message(net.now, message.clone())
            .unwrap();
        assert_eq!(
            net.clients[to.index()].abort_reason(),
            Some(AbortReason::Accusations)
        );
    }
    assert!(
        AbortReason::Accusations
            .to_string()
            .contains("revealed their share keys")
    );
}

#[test]
fn where_the_server_may_deviate_an_accusation_reveals_no_key() {
    for model in [ThreatModel::SemiMalicious, ThreatModel::MaliciousServer] {
        // A hostile server corrupts a relayed bundle for every client,
        // hoping to collect share keys: each would open every share its
        // client holds, and t of them every client's secrets.
        let mut cfg = config(7, 4, 8);
        cfg.threat_model = model;
        let mut net = Net::new(cfg, 73);
        net.step();
        net.clients_send();
        let mut relay = net.server_outbox();
        let mut harvested = Vec::new();
        for (to, message) in &mut relay {
            let ServerBody::SealedShares(bundles) = &mut message.body else {
                panic!("expected bundles")
            };
            bundles[0].ciphertext[0] ^= 1;
            let corrupted = bundles[0].peer;
            net.clients[to.index()]
                .handle_message(net.now, message.clone())
                .unwrap();
            let accusation = accusation_of(&mut net, *to);
            assert_eq!(accusation.accused, vec![corrupted]);
            harvested.push(accusation.share_secret);
        }
        // Not one key, so not one share beyond what the protocol reveals.
        assert_eq!(harvested.len(), 7);
        assert!(harvested.iter().all(Option::is_none), "{model}");
    }
}

#[test]
fn an_unproven_accusation_evicts_nobody_and_the_round_goes_on() {
    // Malicious-server model: client 0 gets a corrupted bundle from
    // client 3 (whoever corrupted it). It leaves without its input and
    // without revealing anything; the server cannot judge, evicts nobody,
    // and the six others complete the round.
    let mut cfg = config(7, 4, 8);
    cfg.threat_model = ThreatModel::MaliciousServer;
    let mut net = Net::new(cfg, 74);
    net.step();
    net.clients_send();
    let mut relay = net.server_outbox();
    let (_, message) = relay.iter_mut().find(|(to, _)| to.0 == 0).unwrap();
    let ServerBody::SealedShares(bundles) = &mut message.body else {
        panic!("expected bundles")
    };
    bundles
        .iter_mut()
        .find(|b| b.peer.0 == 3)
        .unwrap()
        .ciphertext[5] ^= 1;
    net.deliver(relay);
    for result in send(&mut net, ClientId(0)) {
        result.unwrap();
    }
    let seen = events(&mut net);
    assert!(seen.iter().any(|e| matches!(
        e,
        ServerEvent::Accused { accuser, proven: false, .. } if *accuser == ClientId(0)
    )));
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, ServerEvent::Evicted { .. }))
    );
    net.kill(&[0]);
    let output = net.run(&[]).expect("the others complete the round");
    let contributors = ids(&[1, 2, 3, 4, 5, 6]);
    assert_eq!(output.contributors, contributors);
    assert_eq!(output.sum, net.plain_sum(&contributors));
}

#[test]
fn a_revealed_key_opens_only_the_bundle_of_its_round_sender_and_receiver() {
    // What the server re-derives from a revealed key is bound to round,
    // sender and receiver: a bundle relayed under another label, or from
    // another round, fails the judgement as it failed the receiver.
    let attacker = ClientId(5);
    let (mut net, relay, keys) = share_with_garbage_keys(config(6, 3, 16), attacker, &[0]);
    let bundles_for_0 = match &relay.iter().find(|(to, _)| to.0 == 0).unwrap().1.body {
        ServerBody::SealedShares(bundles) => bundles.clone(),
        _ => unreachable!(),
    };
    net.deliver(relay);
    let accusation = accusation_of(&mut net, ClientId(0));
    let secret = accusation.share_secret.expect("semi-honest: revealed");
    let round = net.config.round_id;
    let good = bundles_for_0.iter().find(|b| b.peer.0 == 1).unwrap();
    assert!(
        open_revealed(
            &secret,
            &keys[&ClientId(1)],
            round,
            ClientId(1),
            ClientId(0),
            &good.ciphertext
        )
        .is_ok()
    );
    for (round, sender, receiver) in [
        (round + 1, ClientId(1), ClientId(0)),
        (round, ClientId(2), ClientId(0)),
        (round, ClientId(1), ClientId(4)),
    ] {
        assert_eq!(
            open_revealed(
                &secret,
                &keys[&sender],
                round,
                sender,
                receiver,
                &good.ciphertext
            )
            .unwrap_err(),
            BadBundle::Decrypt
        );
    }
}
