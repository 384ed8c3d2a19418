//! A hostile client's advert at AdvertiseKeys: keys that are equal,
//! low-order, or copied from another client's advert. The server refuses
//! each with an error naming the problem and drops that client only; the
//! honest clients finish the round with the right sum.

mod common;

use common::{Net, config, ids};
use tessera_aggregation::identity::session_hash;
use tessera_aggregation::keys::PublicKeys;
use tessera_aggregation::messages::{Advert, ClientBody, ClientMessage};
use tessera_aggregation::server::{AdvertProblem, ClientViolation};
use tessera_aggregation::{ClientId, RoundConfig, ServerSessionError, ThreatModel};

/// The u-coordinate of a point of order 8 (libsodium's blocklist).
const ORDER_8: &str = "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800";

fn point(hex_digits: &str) -> [u8; 32] {
    hex::decode(hex_digits).unwrap().try_into().unwrap()
}

/// The keys the honest clients `0..n-1` advertise, after they sent them.
fn advertised(net: &mut Net, n: u32) -> Vec<(ClientId, PublicKeys)> {
    let mut keys = Vec::new();
    for i in 0..n {
        let message = net.clients[i as usize].poll_transmit().unwrap();
        let ClientBody::AdvertiseKeys(advert) = &message.body else {
            panic!("the first message is the advert")
        };
        keys.push((ClientId(i), advert.keys));
        net.server
            .handle_message(net.now, ClientId(i), message)
            .unwrap();
    }
    keys
}

/// Runs a round in which the last client replaces its advert's keys with
/// `hostile(honest adverts, its own keys)`; returns the server's refusal.
fn round_with_hostile_advert(
    config: RoundConfig,
    hostile: impl Fn(&[(ClientId, PublicKeys)], PublicKeys) -> PublicKeys,
) -> ServerSessionError {
    let n = config.num_clients;
    let attacker = ClientId(n - 1);
    let mut net = Net::new(config, 61);
    let honest = advertised(&mut net, n - 1);
    let own = net.clients[attacker.index()].poll_transmit().unwrap();
    let ClientBody::AdvertiseKeys(advert) = own.body else {
        panic!("the first message is the advert")
    };
    let keys = hostile(&honest, advert.keys);
    // In a signed round the attacker signs its bad keys with its own,
    // enrolled identity: a valid signature does not launder the keys.
    let signature = net.directory.as_ref().map(|directory| {
        let session = session_hash(&net.config, directory);
        net.identities[attacker.index()].sign_advert(&session, attacker, &keys)
    });
    let message = ClientMessage {
        round_id: own.round_id,
        body: ClientBody::AdvertiseKeys(Advert { keys, signature }),
    };
    let refused = net
        .server
        .handle_message(net.now, attacker, message)
        .unwrap_err();
    // The round goes on without the attacker, and the honest clients
    // (which unwrap every message they get) finish it.
    net.kill(&[attacker.0]);
    // Every advert is in, so the stage has closed: the neighbour keys go out.
    let keys = net.server_outbox();
    net.deliver(keys);
    let output = net.run(&[]).expect("the honest clients complete the round");
    let honest_ids = ids(&(0..n - 1).collect::<Vec<_>>());
    assert_eq!(output.contributors, honest_ids);
    assert_eq!(output.sum, net.plain_sum(&honest_ids));
    refused
}

fn problem(error: &ServerSessionError) -> AdvertProblem {
    match error {
        ServerSessionError::ClientMisbehaved {
            violation: ClientViolation::BadAdvert(problem),
            ..
        } => *problem,
        other => panic!("expected a refused advert, got {other}"),
    }
}

#[test]
fn an_advert_with_c_pk_equal_to_s_pk_drops_its_sender_only() {
    let error = round_with_hostile_advert(config(5, 3, 8), |_, own| PublicKeys {
        c_pk: own.s_pk,
        s_pk: own.s_pk,
    });
    assert_eq!(problem(&error), AdvertProblem::SameKeys);
    assert_eq!(
        error.to_string(),
        "client 4 broke the protocol and was dropped from the round: advert: c_pk equals s_pk"
    );
}

#[test]
fn an_all_zero_key_drops_its_sender_only() {
    let error = round_with_hostile_advert(config(5, 3, 8), |_, own| PublicKeys {
        c_pk: [0; 32],
        s_pk: own.s_pk,
    });
    assert_eq!(problem(&error), AdvertProblem::LowOrder("c_pk"));
    assert!(
        error
            .to_string()
            .contains("c_pk is a low-order X25519 point")
    );
}

#[test]
fn a_low_order_key_in_any_encoding_drops_its_sender_only() {
    let error = round_with_hostile_advert(config(5, 3, 8), |_, own| PublicKeys {
        c_pk: own.c_pk,
        s_pk: point(ORDER_8),
    });
    assert_eq!(problem(&error), AdvertProblem::LowOrder("s_pk"));
    // The same point with the top bit set (X25519 ignores it).
    let error = round_with_hostile_advert(config(5, 3, 8), |_, own| PublicKeys {
        c_pk: own.c_pk,
        s_pk: {
            let mut p = point(ORDER_8);
            p[31] |= 0x80;
            p
        },
    });
    assert_eq!(problem(&error), AdvertProblem::LowOrder("s_pk"));
}

#[test]
fn a_key_copied_from_another_advert_drops_the_copier_only() {
    // The victim's share key: the copier would open shares sealed for it.
    let error = round_with_hostile_advert(config(5, 3, 8), |honest, own| PublicKeys {
        c_pk: honest[2].1.c_pk,
        s_pk: own.s_pk,
    });
    assert_eq!(
        problem(&error),
        AdvertProblem::Duplicate {
            key: "c_pk",
            other: ClientId(2),
        }
    );
    assert!(
        error
            .to_string()
            .contains("c_pk duplicates a key that client 2 advertised")
    );
    // Another client's key in the other role counts too.
    let error = round_with_hostile_advert(config(5, 3, 8), |honest, own| PublicKeys {
        c_pk: own.c_pk,
        s_pk: honest[0].1.c_pk,
    });
    assert_eq!(
        problem(&error),
        AdvertProblem::Duplicate {
            key: "s_pk",
            other: ClientId(0),
        }
    );
}

#[test]
fn a_validly_signed_bad_advert_is_refused_in_the_malicious_server_model() {
    let mut cfg = config(5, 3, 8);
    cfg.threat_model = ThreatModel::MaliciousServer;
    let error = round_with_hostile_advert(cfg, |honest, own| PublicKeys {
        c_pk: own.c_pk,
        s_pk: honest[1].1.s_pk,
    });
    assert_eq!(
        problem(&error),
        AdvertProblem::Duplicate {
            key: "s_pk",
            other: ClientId(1),
        }
    );
}
