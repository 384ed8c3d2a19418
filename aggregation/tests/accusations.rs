//! Share-bundle accusations ([`tessera_aggregation::accusation`]): a client
//! that seals garbage for a neighbour is proven wrong and evicted, and the
//! honest clients finish the round; a false accuser is evicted instead; the
//! server asks at most margin-many accusers for their keys, before anyone
//! learns who survived, so one garbling client cannot make honest clients
//! hand over enough keys to unmask an input (the old unasked reveal could,
//! and the attack is played here); clients answer only a request they may
//! answer; and a server that corrupts relayed bundles where it may deviate
//! gets no share key.

mod common;

use std::collections::HashMap;

use common::{Net, config, ids};
use tessera_aggregation::accusation::{Accusation, BadBundle, open_revealed};
use tessera_aggregation::keys::PublicKeys;
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
/// advertised key pair by owner.
type Relayed = (
    Net,
    Vec<(ClientId, ServerMessage)>,
    HashMap<ClientId, PublicKeys>,
);

/// [`share_with_garbage`], also returning every advertised key pair; the
/// clients reveal their keys unasked, the old unsafe form whose handling by
/// the server these tests check.
fn share_with_garbage_keys(config: RoundConfig, attacker: ClientId, victims: &[u32]) -> Relayed {
    share_with_garbage_as(config, attacker, victims, true)
}

/// [`share_with_garbage_keys`] with clients that reveal their keys unasked
/// (`unasked`, the old form) or only when the server asks (the default).
fn share_with_garbage_as(
    config: RoundConfig,
    attacker: ClientId,
    victims: &[u32],
    unasked: bool,
) -> Relayed {
    let mut net = Net::new(config, 71);
    if unasked {
        for client in &mut net.clients {
            client.reveal_share_key_when_accusing();
        }
    }
    net.clients_send();
    let adverts = net.server_outbox();
    let mut keys = HashMap::new();
    for (_, message) in &adverts {
        if let ServerBody::NeighbourKeys(list) = &message.body {
            for (id, advert) in list {
                keys.insert(*id, advert.keys);
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
    (net, relay, keys)
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
            &keys[&ClientId(1)].c_pk,
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
                &keys[&sender].c_pk,
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

// ---- The two-step reveal: the server asks, within the margin ----

/// The server's reveal requests in `out`, as (accuser, senders).
fn reveal_requests(out: &[(ClientId, ServerMessage)]) -> Vec<(ClientId, Vec<ClientId>)> {
    out.iter()
        .filter_map(|(to, m)| match &m.body {
            ServerBody::RevealShareKeyRequest { senders } => Some((*to, senders.clone())),
            _ => None,
        })
        .collect()
}

/// Hands client `id`'s queued messages to the server, noting every share
/// key in them as a semi-honest server that keeps what it sees would.
fn send_keeping_keys(
    net: &mut Net,
    id: ClientId,
    seen: &mut Vec<(ClientId, zeroize::Zeroizing<[u8; 32]>)>,
) -> Vec<Result<(), ServerSessionError>> {
    let client = &mut net.clients[id.index()];
    if client.is_awaiting_input() {
        client.submit_input(net.inputs[id.index()].clone()).unwrap();
    }
    let mut results = Vec::new();
    while let Some(message) = client.poll_transmit() {
        let message = ClientMessage::decode(&message.encode()).unwrap();
        match &message.body {
            ClientBody::Accusation(Accusation {
                share_secret: Some(key),
                ..
            }) => seen.push((id, key.clone())),
            ClientBody::ShareKeyReveal(reveal) => seen.push((id, reveal.share_secret.clone())),
            _ => {}
        }
        results.push(net.server.handle_message(net.now, id, message));
    }
    results
}

/// What a server holding the share keys in `keys` makes of `victim`'s
/// masked input: it opens the bundles the victim sealed for those key
/// holders (relayed to them in `relay`), rebuilds the victim's self-mask
/// seed and masking key from the shares inside, and strips every mask.
/// With fewer than t keys the secrets do not rebuild (`None`), or rebuild
/// wrong, and so does the result.
fn unmask_with_keys(
    config: &RoundConfig,
    keys: &[(ClientId, zeroize::Zeroizing<[u8; 32]>)],
    relay: &[(ClientId, ServerMessage)],
    adverts: &HashMap<ClientId, PublicKeys>,
    victim: ClientId,
    masked: Vec<u32>,
) -> Option<Vec<u32>> {
    use tessera_aggregation::keys::pairwise_mask_seed;
    use tessera_aggregation::shamir;
    let mut masking_key_shares = Vec::new();
    let mut self_mask_shares = Vec::new();
    for (holder, key) in keys {
        let (_, message) = relay.iter().find(|(to, _)| to == holder).unwrap();
        let ServerBody::SealedShares(bundles) = &message.body else {
            panic!("expected bundles")
        };
        let bundle = bundles.iter().find(|b| b.peer == victim).unwrap();
        let (masking_key, self_mask) = open_revealed(
            key,
            &adverts[&victim].c_pk,
            config.round_id,
            victim,
            *holder,
            &bundle.ciphertext,
        )
        .expect("the victim's bundle opens under its holder's key");
        masking_key_shares.push(masking_key);
        self_mask_shares.push(self_mask);
    }
    let b = shamir::reconstruct(&self_mask_shares.iter().collect::<Vec<_>>()).ok()?;
    let s_sk = x25519_dalek::StaticSecret::from(
        shamir::reconstruct(&masking_key_shares.iter().collect::<Vec<_>>()).ok()?,
    );
    let pairwise = (0..config.num_clients)
        .map(ClientId)
        .filter(|u| *u != victim)
        .filter_map(|u| {
            let seed = pairwise_mask_seed(&s_sk, &adverts[&u].s_pk, config.round_id, victim, u);
            seed.ok().map(|seed| (u, seed))
        })
        .collect();
    Some(common::strip_masks(config, victim, &b, pairwise, masked))
}

/// Client `id`'s masked input, handed to the server; returns it unpacked,
/// as the server holds it.
fn masked_input_of(net: &mut Net, id: ClientId) -> Vec<u32> {
    let client = &mut net.clients[id.index()];
    client.submit_input(net.inputs[id.index()].clone()).unwrap();
    let message = client.poll_transmit().unwrap();
    let ClientBody::MaskedInput(packed) = &message.body else {
        panic!("expected a masked input")
    };
    let masked =
        tessera_aggregation::packing::unpack(packed, net.config.bits, net.config.dim as usize)
            .unwrap();
    net.server.handle_message(net.now, id, message).unwrap();
    masked
}

#[test]
fn unasked_reveals_beyond_the_margin_unmask_an_honest_input_and_the_asked_reveal_does_not() {
    // Eight clients, t = 3: each client's shares may be exposed at 2
    // holders. Client 5 seals garbage for 0, 1 and 2; client 3 is honest,
    // and its input is what a semi-honest server that keeps every key it
    // sees is after.
    let attacker = ClientId(5);
    let victim = ClientId(3);
    let honest_input = |net: &Net| net.inputs[victim.index()].clone();
    for unasked in [true, false] {
        let (mut net, relay, adverts) =
            share_with_garbage_as(config(8, 3, 16), attacker, &[0, 1, 2], unasked);
        let margin = tessera_aggregation::params::exposure_margin(
            net.config.threat_model,
            8,
            0,
            net.config.graph,
            3,
        );
        assert_eq!(margin, Some(2));
        net.deliver(relay.clone());
        let masked = masked_input_of(&mut net, victim);
        let mut keys = Vec::new();
        for id in [0, 1, 2, 4, 5, 6, 7] {
            send_keeping_keys(&mut net, ClientId(id), &mut keys);
        }
        if !unasked {
            // Two steps: the stage closed, and the server asks only the
            // accusers the margin affords, lowest id first.
            let out = net.server_outbox();
            let requests = reveal_requests(&out);
            assert_eq!(
                requests,
                vec![(ClientId(0), vec![attacker]), (ClientId(1), vec![attacker])]
            );
            assert_eq!(requests.len(), out.len(), "nothing else goes out yet");
            net.deliver(out);
            for id in [0, 1, 2] {
                for result in send_keeping_keys(&mut net, ClientId(id), &mut keys) {
                    result.unwrap();
                }
            }
        }
        let recovered = unmask_with_keys(&net.config, &keys, &relay, &adverts, victim, masked);
        if unasked {
            // Each accuser decided alone: three keys went out, and the
            // margin check that aborted the round came too late.
            assert_eq!(keys.len(), 3);
            assert_eq!(net.server.abort_reason(), Some(AbortReason::Accusations));
            assert_eq!(
                recovered,
                Some(honest_input(&net)),
                "the attack the old form allows"
            );
        } else {
            assert_eq!(keys.len(), 2, "at most margin-many keys");
            assert_ne!(
                recovered,
                Some(honest_input(&net)),
                "two shares rebuild nothing"
            );
            assert!(events(&mut net).iter().any(|e| matches!(
                e,
                ServerEvent::AccusationUnproven {
                    accuser: ClientId(2),
                    reason: tessera_aggregation::server::Unproven::Margin,
                    ..
                }
            )));
            // And the round goes on: the garbler is evicted (its input,
            // already in the sum, is unmasked like a dropout's).
            net.kill(&[0, 1, 2, attacker.0]);
            let out = net.server_outbox();
            net.deliver(out);
            let output = net.run(&[]).expect("the round completes");
            let contributors = ids(&[3, 4, 5, 6, 7]);
            assert_eq!(output.contributors, contributors);
            assert_eq!(output.sum, net.plain_sum(&contributors));
        }
    }
}

#[test]
fn a_default_client_proves_a_garbler_when_asked_and_the_round_completes() {
    let attacker = ClientId(5);
    let (mut net, relay, _) = share_with_garbage_as(config(6, 3, 16), attacker, &[0], false);
    net.deliver(relay);
    let accusation = accusation_of(&mut net, ClientId(0));
    assert!(accusation.share_secret.is_none(), "no key goes unasked");
    let message = ClientMessage {
        round_id: net.config.round_id,
        body: ClientBody::Accusation(accusation),
    };
    net.server
        .handle_message(net.now, ClientId(0), message)
        .unwrap();
    for id in 1..5 {
        for result in send(&mut net, ClientId(id)) {
            result.unwrap();
        }
    }
    // The garbler's input is not sent: it is out before it could be.
    assert_eq!(net.server.stage(), Some(Stage::MaskedInput));
    net.kill(&[attacker.0]);
    let deadline = net.server.poll_timeout().unwrap();
    net.now = deadline;
    net.server.handle_timeout(deadline);
    let out = net.server_outbox();
    assert_eq!(reveal_requests(&out), vec![(ClientId(0), vec![attacker])]);
    net.deliver(out);
    assert_eq!(
        net.clients[0].poll_event(),
        Some(ClientEvent::ShareKeyRevealed(vec![attacker]))
    );
    for result in send(&mut net, ClientId(0)) {
        result.unwrap();
    }
    let seen = events(&mut net);
    assert!(seen.iter().any(|e| matches!(
        e,
        ServerEvent::Evicted {
            client,
            violation: ClientViolation::BadBundle { receiver: ClientId(0), problem: BadBundle::Decrypt },
        } if *client == attacker
    )));
    assert!(seen.iter().any(|e| matches!(
        e,
        ServerEvent::Accused { accuser: ClientId(0), proven: true, accused } if *accused == vec![attacker]
    )));
    assert!(seen.iter().any(|e| matches!(
        e,
        ServerEvent::RevealStepCompleted {
            asked: 1,
            answered: 1
        }
    )));
    net.kill(&[0]);
    let out = net.server_outbox();
    net.deliver(out);
    let output = net.run(&[]).expect("the honest clients complete the round");
    let honest = ids(&[1, 2, 3, 4]);
    assert_eq!(output.contributors, honest);
    assert_eq!(output.sum, net.plain_sum(&honest));
}

/// Client 0 accuses client 3 falsely (handed a corrupted copy of 3's good
/// bundle), every other client sends its input, and the server's reveal
/// request to 0 is returned undelivered.
fn false_accusation_until_request(model: ThreatModel) -> (Net, Vec<(ClientId, ServerMessage)>) {
    let mut cfg = config(7, 4, 8);
    cfg.threat_model = model;
    let mut net = Net::new(cfg, 75);
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
        .ciphertext[0] ^= 1;
    net.deliver(relay);
    for id in 0..7 {
        for result in send(&mut net, ClientId(id)) {
            result.unwrap();
        }
    }
    let out = net.server_outbox();
    (net, out)
}

#[test]
fn a_false_accusation_proven_by_the_asked_key_evicts_the_accuser() {
    let (mut net, out) = false_accusation_until_request(ThreatModel::SemiHonest);
    assert_eq!(reveal_requests(&out), vec![(ClientId(0), ids(&[3]))]);
    net.deliver(out);
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
        !events(&mut net)
            .iter()
            .any(|e| matches!(e, ServerEvent::Evicted { .. })),
        "the accused stays"
    );
    net.kill(&[0]);
    let out = net.server_outbox();
    net.deliver(out);
    let output = net.run(&[]).expect("the others complete the round");
    let contributors = ids(&[1, 2, 3, 4, 5, 6]);
    assert_eq!(output.contributors, contributors);
    assert_eq!(output.sum, net.plain_sum(&contributors));
}

#[test]
fn an_asked_key_that_is_not_the_accusers_is_a_violation() {
    let (mut net, out) = false_accusation_until_request(ThreatModel::SemiHonest);
    net.deliver(out);
    let mut message = net.clients[0].poll_transmit().unwrap();
    let ClientBody::ShareKeyReveal(reveal) = &mut message.body else {
        panic!("expected the reveal")
    };
    reveal.share_secret = zeroize::Zeroizing::new([7; 32]);
    let error = net
        .server
        .handle_message(net.now, ClientId(0), message)
        .unwrap_err();
    assert!(
        matches!(
            &error,
            ServerSessionError::ClientMisbehaved {
                client: ClientId(0),
                violation: ClientViolation::Accusation(what),
            } if what.contains("not the one behind the advertised c_pk")
        ),
        "{error}"
    );
}

#[test]
fn a_client_refuses_a_request_for_senders_it_did_not_accuse_or_a_second_one() {
    let (mut net, out) = false_accusation_until_request(ThreatModel::SemiHonest);
    let round_id = net.config.round_id;
    let request = |senders| ServerMessage {
        round_id,
        body: ServerBody::RevealShareKeyRequest { senders },
    };
    // Client 0 accused 3 only: a request naming 2 as well is refused, and
    // so is one naming nobody, and nothing is queued.
    assert_eq!(
        common::violation(net.clients[0].handle_message(net.now, request(ids(&[2, 3])))),
        tessera_aggregation::client::Violation::RevealForUnaccused(ClientId(2))
    );
    assert_eq!(
        common::violation(net.clients[0].handle_message(net.now, request(Vec::new()))),
        tessera_aggregation::client::Violation::EmptyRevealRequest
    );
    assert!(!net.clients[0].has_transmit());
    // A client that accused nobody refuses any request.
    assert!(matches!(
        common::violation(net.clients[1].handle_message(net.now, request(ids(&[3])))),
        tessera_aggregation::client::Violation::UnexpectedMessage {
            message: "RevealShareKeyRequest",
            ..
        }
    ));
    // The real request is answered once; a second is refused.
    net.deliver(out);
    assert!(matches!(
        net.clients[0].poll_transmit().map(|m| m.body),
        Some(ClientBody::ShareKeyReveal(_))
    ));
    assert_eq!(
        common::violation(net.clients[0].handle_message(net.now, request(ids(&[3])))),
        tessera_aggregation::client::Violation::SecondRevealRequest
    );
    assert!(!net.clients[0].has_transmit());
}

#[test]
fn where_the_server_may_deviate_nobody_is_asked_and_a_request_is_refused() {
    for model in [ThreatModel::SemiMalicious, ThreatModel::MaliciousServer] {
        let (mut net, out) = false_accusation_until_request(model);
        assert!(reveal_requests(&out).is_empty(), "{model}");
        assert!(events(&mut net).iter().any(|e| matches!(
            e,
            ServerEvent::AccusationUnproven {
                accuser: ClientId(0),
                reason: tessera_aggregation::server::Unproven::ThreatModel,
                ..
            }
        )));
        // A server that asks anyway is refused, and gets no key.
        let request = ServerMessage {
            round_id: net.config.round_id,
            body: ServerBody::RevealShareKeyRequest { senders: ids(&[3]) },
        };
        assert_eq!(
            common::violation(net.clients[0].handle_message(net.now, request)),
            tessera_aggregation::client::Violation::RevealInThreatModel(model)
        );
        assert!(!net.clients[0].has_transmit());
    }
}

#[test]
fn no_request_goes_out_once_the_survivors_are_told_and_late_keys_are_refused() {
    let (mut net, out) = false_accusation_until_request(ThreatModel::SemiHonest);
    assert_eq!(reveal_requests(&out).len(), out.len());
    // The asked accuser stays silent: at the step's deadline its
    // accusation stays unproven, nobody is evicted, and only then are the
    // survivors asked to unmask.
    let deadline = net.server.poll_timeout().unwrap();
    net.now = deadline;
    net.server.handle_timeout(deadline);
    let seen = events(&mut net);
    assert!(seen.iter().any(|e| matches!(
        e,
        ServerEvent::AccusationUnproven {
            accuser: ClientId(0),
            reason: tessera_aggregation::server::Unproven::NoAnswer,
            ..
        }
    )));
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, ServerEvent::Evicted { .. }))
    );
    let unmask = net.server_outbox();
    assert!(!unmask.is_empty());
    assert!(
        unmask
            .iter()
            .all(|(_, m)| matches!(m.body, ServerBody::UnmaskRequest { .. }))
    );
    // The key that comes now is refused: the server no longer asks.
    net.deliver(out);
    let late = send(&mut net, ClientId(0));
    assert!(matches!(
        late.as_slice(),
        [Err(ServerSessionError::ClientMisbehaved {
            client: ClientId(0),
            violation: ClientViolation::Accusation(what),
        })] if what.contains("did not ask for")
    ));
    net.deliver(unmask);
    net.kill(&[0]);
    let output = net.run(&[]).expect("the others complete the round");
    let contributors = ids(&[1, 2, 3, 4, 5, 6]);
    assert_eq!(output.contributors, contributors);
    assert_eq!(output.sum, net.plain_sum(&contributors));
    // Nothing else the server sent in the round was a request.
    assert!(reveal_requests(&net.server_outbox()).is_empty());
}

// ---- What a hostile party can and cannot do with the two-step reveal ----

#[test]
fn the_asked_keys_a_colluders_key_and_every_unmasking_answer_do_not_unmask_an_honest_input() {
    // Ten clients, t = 4, one assumed colluder: each client's shares may be
    // exposed at t - 1 - 1 = 2 holders. The colluder (9) garbles the
    // bundles of 0, 1 and 2 and hands the semi-honest server everything it
    // holds (its share key, taken here from its twin); client 6 drops
    // after sharing. The server keeps every key it is sent and every
    // unmasking answer, and goes after honest client 3's input: it gets
    // t = 4 shares of 3's self-mask seed (3 survived: that is the
    // protocol) but only 2 + 1 = 3 of its masking key, so the pairwise
    // masks stay on.
    use tessera_aggregation::shamir;
    let mut cfg = config(10, 4, 16);
    cfg.corrupt = 1;
    assert_eq!(
        tessera_aggregation::params::exposure_margin(cfg.threat_model, 10, 1, cfg.graph, 4),
        Some(2)
    );
    let colluder = ClientId(9);
    let victim = ClientId(3);
    let mut net = Net::new(cfg, 76);
    net.twin(colluder, 77);
    net.clients_send();
    let adverts = net.server_outbox();
    let mut public = HashMap::new();
    for (_, message) in &adverts {
        if let ServerBody::NeighbourKeys(list) = &message.body {
            for (id, advert) in list {
                public.insert(*id, advert.keys);
            }
        }
    }
    net.deliver(adverts);
    let mut own = net.clients[colluder.index()].poll_transmit().unwrap();
    let ClientBody::ShareKeys(bundles) = &mut own.body else {
        panic!("expected the colluder's share bundles")
    };
    for bundle in bundles.iter_mut().filter(|b| b.peer.0 <= 2) {
        bundle.ciphertext.iter_mut().for_each(|b| *b ^= 0x5a);
    }
    net.server.handle_message(net.now, colluder, own).unwrap();
    net.clients_send();
    let relay = net.server_outbox();
    // The colluder's key: its twin (same keys, same bundles received)
    // is made to accuse with the key in the accusation.
    let mut keys = Vec::new();
    {
        let (_, twin) = net.twin.as_mut().unwrap();
        twin.reveal_share_key_when_accusing();
        let (_, message) = relay.iter().find(|(to, _)| *to == colluder).unwrap();
        let mut corrupted = message.clone();
        if let ServerBody::SealedShares(bundles) = &mut corrupted.body {
            bundles[0].ciphertext[0] ^= 1;
        }
        twin.handle_message(net.now, corrupted).unwrap();
        let _ = twin.poll_event();
        let message = twin.poll_transmit().unwrap();
        let ClientBody::Accusation(accusation) = message.body else {
            panic!("expected the twin's accusation")
        };
        keys.push((colluder, accusation.share_secret.expect("keyed")));
        net.twin = None;
    }
    net.deliver(relay.clone());
    masked_input_of(&mut net, victim);
    net.kill(&[6]);
    for id in [0, 1, 2, 4, 5, 7, 8, 9] {
        send_keeping_keys(&mut net, ClientId(id), &mut keys);
    }
    net.expire_stage(Some(Stage::MaskedInput));
    let out = net.server_outbox();
    assert_eq!(
        reveal_requests(&out),
        vec![(ClientId(0), vec![colluder]), (ClientId(1), vec![colluder])]
    );
    net.deliver(out);
    for id in [0, 1, 2] {
        for result in send_keeping_keys(&mut net, ClientId(id), &mut keys) {
            result.unwrap();
        }
    }
    assert_eq!(keys.len(), 3, "two asked accusers and the colluder");
    // The unmasking requests and every answer, as the server keeps them.
    let unmask = net.server_outbox();
    assert!(
        unmask
            .iter()
            .all(|(_, m)| matches!(m.body, ServerBody::UnmaskRequest { .. }))
    );
    net.deliver(unmask);
    let mut self_mask = Vec::new();
    let mut masking_key = Vec::new();
    for id in [3, 4, 5, 7, 8] {
        let message = net.clients[id].poll_transmit().unwrap();
        let ClientBody::Unmasking(response) = &message.body else {
            panic!("expected an unmasking answer")
        };
        self_mask.extend(
            response
                .self_mask_shares
                .iter()
                .filter(|(owner, _)| *owner == victim)
                .map(|(_, s)| s.clone()),
        );
        masking_key.extend(
            response
                .masking_key_shares
                .iter()
                .filter(|(owner, _)| *owner == victim)
                .map(|(_, s)| s.clone()),
        );
        net.server
            .handle_message(net.now, ClientId(id as u32), message)
            .unwrap();
    }
    // Every share of the victim's secrets behind the keys it holds.
    for (holder, key) in &keys {
        let (_, message) = relay.iter().find(|(to, _)| to == holder).unwrap();
        let ServerBody::SealedShares(bundles) = &message.body else {
            panic!("expected bundles")
        };
        let bundle = bundles.iter().find(|b| b.peer == victim).unwrap();
        let (m, s) = open_revealed(
            key,
            &public[&victim].c_pk,
            net.config.round_id,
            victim,
            *holder,
            &bundle.ciphertext,
        )
        .unwrap();
        masking_key.push(m);
        self_mask.push(s);
    }
    let distinct = |shares: &mut Vec<shamir::Share>| {
        shares.sort_by_key(shamir::Share::x);
        shares.dedup_by_key(|s| s.x());
        shares.len()
    };
    assert!(distinct(&mut self_mask) >= 4, "the survivor's seed is out");
    assert!(shamir::reconstruct(&self_mask.iter().collect::<Vec<_>>()).is_ok());
    // The masking key: t - 1 shares, which rebuild nothing (the check in
    // the share encoding refuses them, or the key is not the victim's),
    // so the pairwise masks cannot be taken off the masked input.
    assert_eq!(distinct(&mut masking_key), 3, "t - 1 masking-key shares");
    let rebuilt = shamir::reconstruct(&masking_key.iter().collect::<Vec<_>>());
    if let Ok(s_sk) = rebuilt {
        let public_key = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(s_sk));
        assert_ne!(
            public_key.to_bytes(),
            public[&victim].s_pk,
            "three shares rebuild the victim's masking key"
        );
    }
    // The same count of self-mask shares rebuilds nothing either: three is
    // short of the threshold whichever secret it is.
    assert!(shamir::reconstruct(&self_mask.iter().take(3).collect::<Vec<_>>()).is_err());
    // And the round itself completes, the garbler's input unmasked like a
    // dropout's.
    let mut output = None;
    while let Some(event) = net.server.poll_event() {
        if let ServerEvent::UnmaskingReady = event {
            output = net.server.unmask().cloned();
        }
    }
    let output = output.expect("the round completes");
    let contributors = ids(&[3, 4, 5, 7, 8, 9]);
    assert_eq!(output.contributors, contributors);
    assert_eq!(output.sum, net.plain_sum(&contributors));
}

#[test]
fn colluders_that_accuse_falsely_use_up_the_margin_but_evict_nobody_honest() {
    // t = 3 of 8: room for two asked accusers. Colluders 0 and 1 claim
    // honest client 5's bundle does not open; colluder 7 garbles honest
    // client 2's. Lower ids are asked first, so the colluders take the
    // margin and 2's true accusation stays unproven (the limit of the
    // rule, which the README states). What they cannot do: 5 is not
    // evicted (the keys show its bundle opens, and the liars go), the
    // round completes, and no one honest is blamed.
    let garbler = ClientId(7);
    let (mut net, mut relay, _) = share_with_garbage_as(config(8, 3, 16), garbler, &[2], false);
    // Each colluder spoils its own copy of 5's bundle, so its session
    // accuses 5 (without a key, as every client does).
    for liar in [0, 1] {
        let (_, message) = relay.iter_mut().find(|(to, _)| to.0 == liar).unwrap();
        let ServerBody::SealedShares(bundles) = &mut message.body else {
            panic!("expected bundles")
        };
        bundles
            .iter_mut()
            .find(|b| b.peer.0 == 5)
            .unwrap()
            .ciphertext[0] ^= 1;
    }
    net.deliver(relay);
    for id in 0..8 {
        for result in send(&mut net, ClientId(id)) {
            result.unwrap();
        }
    }
    let out = net.server_outbox();
    assert_eq!(
        reveal_requests(&out),
        vec![(ClientId(0), ids(&[5])), (ClientId(1), ids(&[5]))]
    );
    assert!(events(&mut net).iter().any(|e| matches!(
        e,
        ServerEvent::AccusationUnproven {
            accuser: ClientId(2),
            reason: tessera_aggregation::server::Unproven::Margin,
            ..
        }
    )));
    net.deliver(out);
    for liar in [0, 1] {
        assert_eq!(
            send(&mut net, ClientId(liar)),
            vec![Err(ServerSessionError::ClientMisbehaved {
                client: ClientId(liar),
                violation: ClientViolation::FalseAccusation {
                    accused: ClientId(5)
                },
            })]
        );
    }
    assert!(
        !events(&mut net)
            .iter()
            .any(|e| matches!(e, ServerEvent::Evicted { .. })),
        "neither 5 nor the garbler is evicted"
    );
    net.kill(&[0, 1, 2]);
    let out = net.server_outbox();
    net.deliver(out);
    let output = net.run(&[]).expect("the round completes");
    let contributors = ids(&[3, 4, 5, 6, 7]);
    assert_eq!(output.contributors, contributors);
    assert_eq!(output.sum, net.plain_sum(&contributors));
}

#[test]
fn stray_and_malformed_keys_in_the_reveal_step_cost_only_their_senders() {
    // During the reveal step: a key that does not decode, a key for
    // another round, a key from a survivor nobody asked, and one from a
    // client that is not in the round. Each is refused; only the unasked
    // survivor is evicted; the asked accuser's answer still settles the
    // step and the round completes.
    let (mut net, out) = false_accusation_until_request(ThreatModel::SemiHonest);
    assert_eq!(reveal_requests(&out), vec![(ClientId(0), ids(&[3]))]);
    let round_id = net.config.round_id;
    let key = |round_id| ClientMessage {
        round_id,
        body: ClientBody::ShareKeyReveal(tessera_aggregation::accusation::ShareKeyReveal {
            share_secret: zeroize::Zeroizing::new([9; 32]),
        }),
    };
    let mut bytes = key(round_id).encode();
    bytes.truncate(bytes.len() - 1);
    assert!(ClientMessage::decode(&bytes).is_err());
    assert!(matches!(
        net.server
            .handle_message(net.now, ClientId(0), key(round_id + 1)),
        Err(ServerSessionError::WrongRound { .. })
    ));
    assert!(matches!(
        net.server
            .handle_message(net.now, ClientId(42), key(round_id)),
        Err(ServerSessionError::UnknownClient { .. })
    ));
    assert!(matches!(
        net.server
            .handle_message(net.now, ClientId(4), key(round_id)),
        Err(ServerSessionError::ClientMisbehaved {
            client: ClientId(4),
            violation: ClientViolation::Accusation(_),
        })
    ));
    assert_eq!(
        net.server.stage(),
        Some(Stage::MaskedInput),
        "still waiting"
    );
    // The client also ignores a request from another round.
    let stale = ServerMessage {
        round_id: round_id + 1,
        body: ServerBody::RevealShareKeyRequest { senders: ids(&[3]) },
    };
    assert!(matches!(
        net.clients[0].handle_message(net.now, stale),
        Err(tessera_aggregation::ClientSessionError::WrongRound { .. })
    ));
    assert!(!net.clients[0].has_transmit());
    net.deliver(out);
    let results = send(&mut net, ClientId(0));
    assert!(matches!(
        results.as_slice(),
        [Err(ServerSessionError::ClientMisbehaved {
            violation: ClientViolation::FalseAccusation { .. },
            ..
        })]
    ));
    net.kill(&[0, 4]);
    let out = net.server_outbox();
    net.deliver(out);
    let output = net.run(&[]).expect("the others complete the round");
    let contributors = ids(&[1, 2, 3, 4, 5, 6]);
    assert_eq!(output.contributors, contributors);
    assert_eq!(output.sum, net.plain_sum(&contributors));
}

#[test]
fn a_share_key_never_shows_in_a_message_debug_print_or_a_refusal() {
    // Whatever carries a key (an asked reveal, the old keyed accusation)
    // prints without it, and the refusals a key can earn name no key: a
    // log line or an error built from them holds nothing secret.
    let secret = [0xab_u8; 32];
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let decimal = format!("{:?}", &secret[..4]);
    let messages = [
        ClientBody::ShareKeyReveal(tessera_aggregation::accusation::ShareKeyReveal {
            share_secret: zeroize::Zeroizing::new(secret),
        }),
        ClientBody::Accusation(Accusation {
            share_secret: Some(zeroize::Zeroizing::new(secret)),
            accused: ids(&[1]),
        }),
    ];
    for body in messages {
        let printed = format!("{:?}", ClientMessage { round_id: 1, body });
        assert!(!printed.contains(&hex), "{printed}");
        assert!(!printed.contains(&decimal), "{printed}");
        assert!(!printed.contains("171"), "{printed}");
    }
    // The key that does not match, a false accusation, a key unasked:
    // what the server says names ids and what was wrong, never the key.
    let (mut net, out) = false_accusation_until_request(ThreatModel::SemiHonest);
    let stray = ClientMessage {
        round_id: net.config.round_id,
        body: ClientBody::ShareKeyReveal(tessera_aggregation::accusation::ShareKeyReveal {
            share_secret: zeroize::Zeroizing::new(secret),
        }),
    };
    let unasked = net
        .server
        .handle_message(net.now, ClientId(4), stray.clone())
        .unwrap_err();
    let wrong = net
        .server
        .handle_message(net.now, ClientId(0), stray)
        .unwrap_err();
    for error in [unasked, wrong] {
        let text = format!("{error} {error:?}");
        assert!(!text.contains(&hex) && !text.contains("171"), "{text}");
    }
    drop(out);
}
