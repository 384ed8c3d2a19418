//! The malicious-server threat model, attacked: a scripted server (this
//! test, playing the server's part by hand) drives real `ClientSession`s
//! with the messages an actively malicious server would send, and every
//! attack is refused by the honest clients.
//!
//! Each attack also runs without its defence, where that can be shown in
//! the same test: the same script against clients of an unsigned round
//! (semi-malicious model, the same code minus the signature checks), which
//! accept it. That is the evidence that the test is red without the check.

mod common;

use std::sync::Arc;

use common::{Net, config, identities, ids, violation};
use tessera_aggregation::ThreatModel;
use tessera_aggregation::client::Violation;
use tessera_aggregation::config::ConfigError;
use tessera_aggregation::identity::{IdentityDirectory, IdentitySignature};
use tessera_aggregation::keys::PublicKeys;
use tessera_aggregation::messages::{
    Advert, ClientBody, ClientMessage, ServerBody, ServerMessage, UnmaskResponse,
};
use tessera_aggregation::server::ClientViolation;
use tessera_aggregation::shamir::{self, Share};
use tessera_aggregation::sim::{Outcome, SimConfig, run_round};
use tessera_aggregation::{ClientId, ClientSessionError, ServerSessionError, Stage};

fn malicious_config(n: u32, t: u32) -> tessera_aggregation::RoundConfig {
    let mut cfg = config(n, t, 16);
    cfg.threat_model = ThreatModel::MaliciousServer;
    cfg
}

fn neighbour_keys(out: &[(ClientId, ServerMessage)], to: u32) -> Vec<(ClientId, Advert)> {
    match &out.iter().find(|(id, _)| id.0 == to).unwrap().1.body {
        ServerBody::NeighbourKeys(keys) => keys.clone(),
        other => panic!("{other:?}"),
    }
}

fn send(net: &mut Net, to: u32, body: ServerBody) -> Result<(), ClientSessionError> {
    let message = ServerMessage {
        round_id: net.config.round_id,
        body,
    };
    let message = ServerMessage::decode(&message.encode()).unwrap();
    let now = net.now;
    net.clients[to as usize].handle_message(now, message)
}

fn reply(net: &mut Net, from: u32) -> Option<ClientBody> {
    net.clients[from as usize]
        .poll_transmit()
        .map(|m| ClientMessage::decode(&m.encode()).unwrap().body)
}

#[test]
fn a_substituted_key_is_refused_and_accepted_without_signatures() {
    let attacker = PublicKeys {
        c_pk: [0x42; 32],
        s_pk: [0x43; 32],
    };
    for signed in [true, false] {
        let mut cfg = malicious_config(5, 4);
        if !signed {
            cfg.threat_model = ThreatModel::SemiMalicious;
        }
        let mut net = Net::new(cfg, 3);
        let out = net.run_until(|b| matches!(b, ServerBody::NeighbourKeys(_)));
        let mut keys = neighbour_keys(&out, 0);
        // The server puts its own keys in client 1's advert, keeping 1's
        // signature, to open the shares client 0 seals for 1.
        keys[0].1.keys = attacker;
        assert_eq!(keys[0].0, ClientId(1));
        let result = send(&mut net, 0, ServerBody::NeighbourKeys(keys));
        if signed {
            assert_eq!(
                violation(result),
                Violation::BadSignature {
                    client: ClientId(1),
                    what: "advert"
                }
            );
            assert!(reply(&mut net, 0).is_none(), "no share leaves client 0");
        } else {
            // Without the signature check the attack goes through: client 0
            // seals a share bundle under the server's key.
            result.unwrap();
            assert!(matches!(reply(&mut net, 0), Some(ClientBody::ShareKeys(_))));
        }
    }
}

#[test]
fn a_stripped_or_foreign_signature_is_refused() {
    let mut net = Net::new(malicious_config(5, 4), 4);
    let out = net.run_until(|b| matches!(b, ServerBody::NeighbourKeys(_)));
    // No signature on client 2's advert.
    let mut keys = neighbour_keys(&out, 0);
    keys[1].1.signature = None;
    assert_eq!(
        violation(send(&mut net, 0, ServerBody::NeighbourKeys(keys))),
        Violation::BadSignature {
            client: ClientId(2),
            what: "advert"
        }
    );
    // Client 3's valid advert relayed as client 4's: the signature binds the
    // client id.
    let mut keys = neighbour_keys(&out, 1);
    let three = keys.iter().find(|(id, _)| id.0 == 3).unwrap().1.clone();
    keys.iter_mut().find(|(id, _)| id.0 == 4).unwrap().1 = three;
    assert_eq!(
        violation(send(&mut net, 1, ServerBody::NeighbourKeys(keys))),
        Violation::BadSignature {
            client: ClientId(4),
            what: "advert"
        }
    );
}

/// Without signatures the replay goes through: an unsigned client of round
/// 12 accepts round 11's adverts re-wrapped (keys the server may have
/// learnt to exploit) and seals its shares under them.
#[test]
fn an_old_rounds_adverts_are_accepted_without_signatures() {
    let mut cfg = config(5, 4, 16);
    cfg.threat_model = ThreatModel::SemiMalicious;
    let mut old = Net::new(cfg.clone(), 9);
    let old_adverts = neighbour_keys(
        &old.run_until(|b| matches!(b, ServerBody::NeighbourKeys(_))),
        0,
    );
    cfg.round_id = 12;
    let mut net = Net::new(cfg, 10);
    net.run_until(|b| matches!(b, ServerBody::NeighbourKeys(_)));
    send(&mut net, 0, ServerBody::NeighbourKeys(old_adverts)).unwrap();
    assert!(matches!(reply(&mut net, 0), Some(ClientBody::ShareKeys(_))));
}

#[test]
fn an_old_rounds_adverts_and_signatures_are_refused_in_a_new_round() {
    let (keys, directory) = identities(6, 9);
    // Round 11: the server records every advert and, later, the
    // survivor-set signatures.
    let mut old = Net::with_identities(malicious_config(6, 4), 9, keys.clone(), directory.clone());
    let out = old.run_until(|b| matches!(b, ServerBody::NeighbourKeys(_)));
    let old_adverts = neighbour_keys(&out, 0);
    old.deliver(out);
    let old_signatures =
        unmask_request(&old.run_until(|b| matches!(b, ServerBody::UnmaskRequest { .. }))).2;
    let mut cfg = malicious_config(6, 4);
    cfg.round_id = 12;
    let mut net = Net::with_identities(cfg, 10, keys, directory);
    let out = net.run_until(|b| matches!(b, ServerBody::NeighbourKeys(_)));
    // The old message as it was: refused for its round id, the session goes
    // on.
    let now = net.now;
    let stale = ServerMessage {
        round_id: 11,
        body: ServerBody::NeighbourKeys(old_adverts.clone()),
    };
    assert_eq!(
        net.clients[0].handle_message(now, stale),
        Err(ClientSessionError::WrongRound {
            expected: 12,
            got: 11
        })
    );
    // Re-wrapped as a round-12 message (the server knows keys whose shares
    // it could open from round 11): the signatures are over round 11.
    assert_eq!(
        violation(send(&mut net, 0, ServerBody::NeighbourKeys(old_adverts))),
        Violation::BadSignature {
            client: ClientId(1),
            what: "advert"
        }
    );

    // Client 0 refused the round; the others go on to unmasking, where
    // round 11's signatures by the same clients over the same survivor set
    // do not verify for round 12.
    net.kill(&[0]);
    net.deliver(out);
    let old_signatures: Vec<_> = old_signatures
        .into_iter()
        .filter(|(id, _)| id.0 != 0)
        .collect();
    let (survivors, dropped, _) =
        unmask_request(&net.run_until(|b| matches!(b, ServerBody::UnmaskRequest { .. })));
    let replayed = send(
        &mut net,
        1,
        ServerBody::UnmaskRequest {
            survivors,
            dropped,
            signatures: old_signatures,
        },
    );
    assert_eq!(
        violation(replayed),
        Violation::BadSignature {
            client: ClientId(1),
            what: "survivor-set"
        }
    );
    assert!(reply(&mut net, 1).is_none());
}

type Request = (
    Vec<ClientId>,
    Vec<ClientId>,
    Vec<(ClientId, IdentitySignature)>,
);

/// The unmasking request the honest server queued for client 1.
fn unmask_request(out: &[(ClientId, ServerMessage)]) -> Request {
    match &out.iter().find(|(id, _)| id.0 == 1).unwrap().1.body {
        ServerBody::UnmaskRequest {
            survivors,
            dropped,
            signatures,
        } => (survivors.clone(), dropped.clone(), signatures.clone()),
        other => panic!("{other:?}"),
    }
}

/// The survivor-set signatures in a reply.
fn signature_of(body: Option<ClientBody>) -> Option<IdentitySignature> {
    match body {
        Some(ClientBody::ConsistencyCheck(signature)) => signature,
        other => panic!("expected a confirmation, got {other:?}"),
    }
}

fn unmask_shares(body: Option<ClientBody>) -> UnmaskResponse {
    match body {
        Some(ClientBody::Unmasking(response)) => response,
        other => panic!("expected shares, got {other:?}"),
    }
}

/// The equivocation attack on a round of 7 clients (complete graph):
/// the server tells clients 0, 1, 2 and 6 that everyone survived, and
/// clients 3, 4, 5 that client 6 dropped, hoping to collect t shares of
/// client 6's self-mask seed from the first group and t shares of its
/// masking key from the second: with both it removes every mask from 6's
/// masked input and reads 6's input. Returns the shares of 6's two secrets
/// the server collected, and the refusals of the second group.
struct Loot {
    self_mask_shares: Vec<Share>,
    masking_key_shares: Vec<Share>,
    refusals: Vec<Violation>,
    advertised_s_pk: [u8; 32],
}

fn equivocate(threat_model: ThreatModel, t: u32) -> Loot {
    let mut cfg = config(7, t, 16);
    cfg.threat_model = threat_model;
    let mut net = Net::new(cfg, 12);
    let out = net.run_until(|b| matches!(b, ServerBody::NeighbourKeys(_)));
    let advertised_s_pk = neighbour_keys(&out, 0)
        .iter()
        .find(|(id, _)| id.0 == 6)
        .unwrap()
        .1
        .keys
        .s_pk;
    net.deliver(out);
    net.run_until(|b| matches!(b, ServerBody::ConsistencyCheck { .. }));

    let story_a = ids(&[0, 1, 2, 3, 4, 5, 6]);
    let story_b = ids(&[0, 1, 2, 3, 4, 5]);
    let group_a = [0u32, 1, 2, 6];
    let group_b = [3u32, 4, 5];
    let mut signed_a = Vec::new();
    let mut signed_b = Vec::new();
    for &c in &group_a {
        send(
            &mut net,
            c,
            ServerBody::ConsistencyCheck {
                survivors: story_a.clone(),
            },
        )
        .unwrap();
        if let Some(signature) = signature_of(reply(&mut net, c)) {
            signed_a.push((ClientId(c), signature));
        }
    }
    for &c in &group_b {
        send(
            &mut net,
            c,
            ServerBody::ConsistencyCheck {
                survivors: story_b.clone(),
            },
        )
        .unwrap();
        if let Some(signature) = signature_of(reply(&mut net, c)) {
            signed_b.push((ClientId(c), signature));
        }
    }

    let mut loot = Loot {
        self_mask_shares: Vec::new(),
        masking_key_shares: Vec::new(),
        refusals: Vec::new(),
        advertised_s_pk,
    };
    for &c in &group_a {
        send(
            &mut net,
            c,
            ServerBody::UnmaskRequest {
                survivors: story_a.clone(),
                dropped: vec![],
                signatures: signed_a.clone(),
            },
        )
        .unwrap();
        let response = unmask_shares(reply(&mut net, c));
        for (owner, share) in response.self_mask_shares {
            if owner.0 == 6 {
                loot.self_mask_shares.push(share);
            }
        }
    }
    // The second group is shown its own signatures and, to make up the
    // quorum, others: client 0's signature (over story A), or one forged
    // for client 6 (not in story B).
    let mut with_a = signed_b.clone();
    with_a.extend(signed_a.iter().filter(|(id, _)| id.0 == 0).cloned());
    with_a.sort_by_key(|(id, _)| *id);
    let mut with_forged = signed_b.clone();
    with_forged.push((ClientId(6), IdentitySignature([7; 64])));
    for (c, signatures) in group_b.iter().zip([signed_b.clone(), with_a, with_forged]) {
        let result = send(
            &mut net,
            *c,
            ServerBody::UnmaskRequest {
                survivors: story_b.clone(),
                dropped: ids(&[6]),
                signatures,
            },
        );
        match result {
            Ok(()) => {
                let response = unmask_shares(reply(&mut net, *c));
                for (owner, share) in response.masking_key_shares {
                    if owner.0 == 6 {
                        loot.masking_key_shares.push(share);
                    }
                }
            }
            Err(e) => {
                loot.refusals.push(violation(Err(e)));
                assert!(reply(&mut net, *c).is_none(), "no share leaves {c}");
            }
        }
    }
    loot
}

/// Without signatures, a threshold a lying server can beat lets it read a
/// client's input: t = 3 of 7 passes `validate` in the semi-malicious model
/// (which trusts the operator's t), and the server ends with 3 + 3 shares.
#[test]
fn equivocation_unmasks_a_client_without_the_malicious_server_defences() {
    let loot = equivocate(ThreatModel::SemiMalicious, 3);
    assert!(loot.refusals.is_empty(), "{:?}", loot.refusals);
    assert!(loot.self_mask_shares.len() >= 3);
    assert!(loot.masking_key_shares.len() >= 3);
    // The server really has client 6's masking key: the rebuilt secret is
    // the one behind the s_pk 6 advertised.
    let shares: Vec<&Share> = loot.masking_key_shares.iter().collect();
    let secret = shamir::reconstruct(&shares).unwrap();
    let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret));
    assert_eq!(public.to_bytes(), loot.advertised_s_pk);
}

#[test]
fn equivocation_is_refused_in_the_malicious_server_model() {
    // The same t = 3 is refused outright: t > (n + corrupt) / 2 is enforced.
    let mut cfg = malicious_config(7, 3);
    assert_eq!(
        cfg.validate(),
        Err(ConfigError::MaliciousThreshold {
            threshold: 3,
            floor: 4,
            corrupt: 0
        })
    );
    // Two colluders answer both requests: 4 of 7 is then beatable (2 + 2
    // honest shares of each secret), 5 is not (it would take 3 + 3 of the 5
    // honest holders).
    cfg.corrupt = 2;
    cfg.threshold = 4;
    assert!(cfg.validate().is_err(), "4 of 7 is beatable with 2 corrupt");
    cfg.threshold = 5;
    assert!(cfg.validate().is_ok());

    // With the smallest allowed t = 4, every client of the second group
    // refuses, each for its own reason, and the server ends with no share
    // of client 6's masking key.
    let loot = equivocate(ThreatModel::MaliciousServer, 4);
    assert_eq!(
        loot.refusals,
        vec![
            Violation::TooFewSignatures { have: 3, need: 4 },
            Violation::BadSignature {
                client: ClientId(0),
                what: "survivor-set"
            },
            Violation::SignerNotSurvivor(ClientId(6)),
        ]
    );
    assert!(loot.masking_key_shares.is_empty());
    // The first group's quorum was genuine (4 of 7 signed story A), so its
    // self-mask shares flowed: that is the honest round's unmasking, which
    // reveals the sum and nothing else. Client 6 holds no share of its own
    // seed: 0, 1 and 2 gave one each.
    assert_eq!(loot.self_mask_shares.len(), 3);
}

/// Shrinking the survivor set. In a SecAgg+ round (20 clients, Harary
/// k = 4, t = 3) the server tells client 0 that only it and its 4
/// neighbours survived, so the output would be the sum of 5 inputs, from
/// which colluding clients could subtract their own: an unsigned client
/// sees only its neighbourhood and, with 4 surviving holders >= t, goes on.
/// The malicious-server model refuses the sparse graph outright, and on the
/// complete graph a client checks the whole set against the signature
/// quorum (11 of 20) and refuses a set of 5.
#[test]
fn a_shrunken_survivor_set_passes_unsigned_clients_and_not_signed_ones() {
    let mut cfg = config(20, 3, 8);
    cfg.graph = tessera_aggregation::graph::GraphKind::Harary { k: 4 };
    cfg.threat_model = ThreatModel::SemiMalicious;
    let mut net = Net::new(cfg.clone(), 13);
    net.run_until(|b| matches!(b, ServerBody::ConsistencyCheck { .. }));
    let mut few = net.clients[0].neighbours().to_vec();
    few.push(ClientId(0));
    few.sort();
    send(&mut net, 0, ServerBody::ConsistencyCheck { survivors: few }).unwrap();
    assert!(matches!(
        reply(&mut net, 0),
        Some(ClientBody::ConsistencyCheck(None))
    ));

    cfg.threat_model = ThreatModel::MaliciousServer;
    assert_eq!(
        cfg.validate(),
        Err(ConfigError::SparseGraphUnderMaliciousServer { k: 4 })
    );
    let mut cfg = malicious_config(20, 11);
    cfg.graph = tessera_aggregation::graph::GraphKind::Complete;
    let mut net = Net::new(cfg, 13);
    net.run_until(|b| matches!(b, ServerBody::ConsistencyCheck { .. }));
    let result = send(
        &mut net,
        0,
        ServerBody::ConsistencyCheck {
            survivors: ids(&[0, 1, 2, 3, 4]),
        },
    );
    assert_eq!(
        violation(result),
        Violation::BelowThreshold {
            have: 5,
            threshold: 11
        }
    );
    assert!(reply(&mut net, 0).is_none());
}

/// Asking one client for both secrets of a neighbour (its self-mask share
/// and its masking-key share), in one request or in two. The defences are
/// the client's own checks (a client named both survivor and dropped; one
/// answer per round), the same in every threat model; without them the
/// client would hand over both shares, and with t - 1 more of each from
/// other clients the neighbour's input would be unmasked (the equivocation
/// test above shows that end state with real shares).
#[test]
fn asking_for_both_secrets_of_one_client_is_refused() {
    let mut net = Net::new(malicious_config(6, 4), 14);
    let out = net.run_until(|b| matches!(b, ServerBody::UnmaskRequest { .. }));
    let (_, message) = out.iter().find(|(to, _)| to.0 == 0).unwrap().clone();
    let ServerBody::UnmaskRequest {
        survivors,
        signatures,
        ..
    } = message.body
    else {
        panic!("not a request")
    };
    // The genuine request, plus client 2 named as dropped too.
    let result = send(
        &mut net,
        0,
        ServerBody::UnmaskRequest {
            survivors: survivors.clone(),
            dropped: ids(&[2]),
            signatures: signatures.clone(),
        },
    );
    assert_eq!(
        violation(result),
        Violation::SurvivorAndDropped(ClientId(2))
    );
    // Another client: the genuine request is answered once, a second one
    // (the other secret) is refused.
    send(
        &mut net,
        1,
        ServerBody::UnmaskRequest {
            survivors: survivors.clone(),
            dropped: vec![],
            signatures: signatures.clone(),
        },
    )
    .unwrap();
    assert!(reply(&mut net, 1).is_some());
    let mut fewer = survivors.clone();
    fewer.retain(|c| c.0 != 2);
    let second = send(
        &mut net,
        1,
        ServerBody::UnmaskRequest {
            survivors: fewer,
            dropped: ids(&[2]),
            signatures,
        },
    );
    assert_eq!(violation(second), Violation::SecondUnmaskRequest);
    assert!(reply(&mut net, 1).is_none());
}

#[test]
fn an_honest_malicious_server_round_completes_with_drops() {
    for (stage, killed) in [
        (Stage::ShareKeys, [5u32]),
        (Stage::MaskedInput, [5]),
        (Stage::ConsistencyCheck, [5]),
        (Stage::Unmasking, [5]),
    ] {
        let mut net = Net::new(malicious_config(6, 4), 15);
        let output = net
            .run(&[(stage, &killed)])
            .unwrap_or_else(|| panic!("round with a drop at {stage} aborted"));
        let expected = net.plain_sum(&output.contributors);
        assert_eq!(output.sum, expected, "drop at {stage}");
    }
}

#[test]
fn the_server_drops_a_client_with_a_bad_signature_and_the_round_goes_on() {
    let mut net = Net::new(malicious_config(6, 4), 16);
    // Client 5 signs its advert with a key that is not its enrolled one.
    let other = identities(6, 99).0.remove(5);
    let advert = net.clients[5].poll_transmit().unwrap();
    let ClientBody::AdvertiseKeys(mut body) = advert.body else {
        panic!("first message is the advert")
    };
    let session = tessera_aggregation::identity::session_hash(
        &net.config,
        net.directory.as_ref().expect("a signed round"),
    );
    body.signature = Some(other.sign_advert(&session, ClientId(5), &body.keys));
    let now = net.now;
    let forged = ClientMessage {
        round_id: net.config.round_id,
        body: ClientBody::AdvertiseKeys(body),
    };
    assert!(matches!(
        net.server.handle_message(now, ClientId(5), forged),
        Err(ServerSessionError::ClientMisbehaved {
            client: ClientId(5),
            violation: ClientViolation::Signature(_)
        })
    ));
    net.kill(&[5]);
    let output = net.run(&[]).expect("the other five complete the round");
    assert_eq!(output.contributors, ids(&[0, 1, 2, 3, 4]));
    assert_eq!(output.sum, net.plain_sum(&output.contributors));
}

#[test]
fn sessions_refuse_a_directory_that_does_not_fit() {
    let cfg = malicious_config(5, 4);
    let graph = cfg.neighbour_graph().unwrap();
    let mut rng = <chacha20::ChaCha20Rng as rand_core::SeedableRng>::from_seed([1; 32]);
    let now = std::time::Instant::now();
    // No identity at all.
    assert!(matches!(
        tessera_aggregation::ClientSession::new(cfg.clone(), ClientId(0), now, &mut rng),
        Err(ClientSessionError::IdentityRequired(
            ThreatModel::MaliciousServer
        ))
    ));
    let (keys, directory) = identities(5, 1);
    // Another client's key in this client's slot.
    let wrong = tessera_aggregation::identity::ClientIdentity {
        key: keys[1].clone(),
        directory: directory.clone(),
    };
    assert!(matches!(
        tessera_aggregation::ClientSession::with_identity(
            cfg.clone(),
            &graph,
            ClientId(0),
            wrong,
            now,
            &mut rng
        ),
        Err(ClientSessionError::Directory(_))
    ));
    // A directory for another round size.
    let small = Arc::new(IdentityDirectory::new(directory.keys()[..4].to_vec()).unwrap());
    assert!(matches!(
        tessera_aggregation::ServerSession::with_identities(cfg, graph, small, now),
        Err(ServerSessionError::Directory(_))
    ));
}

/// The simulator runs malicious-server rounds on the complete graph, and
/// refuses a sparse one (the server would choose who neighbours whom).
#[test]
fn the_simulator_runs_malicious_server_rounds_on_the_complete_graph_only() {
    for (graph, threshold) in [
        (tessera_aggregation::graph::GraphKind::Complete, 21),
        (tessera_aggregation::graph::GraphKind::Harary { k: 10 }, 8),
    ] {
        let sim = SimConfig {
            clients: 40,
            dim: 64,
            graph,
            threshold,
            bits: 20,
            prg: tessera_aggregation::mask::Prg::Aes128Ctr,
            threat_model: ThreatModel::MaliciousServer,
            corrupt: 1,
            drops: [(Stage::MaskedInput, 0.05), (Stage::Unmasking, 0.05)]
                .into_iter()
                .collect(),
            seed: 3,
            faults: None,
        };
        let report = run_round(&sim, 0, &|_| {});
        if graph == tessera_aggregation::graph::GraphKind::Complete {
            let report = report.unwrap();
            assert_eq!(report.outcome, Outcome::Completed, "{graph:?}");
            assert!(report.verified, "{graph:?}");
        } else {
            assert!(matches!(
                report,
                Err(tessera_aggregation::sim::SimError::Config(
                    ConfigError::SparseGraphUnderMaliciousServer { k: 10 }
                ))
            ));
        }
    }
}

/// Found by the `client_session` fuzzer: one flipped bit in the `s_pk` the
/// server relays to client 0 gives client 0 a pairwise mask with that
/// neighbour that the neighbour does not share. Without signatures nobody
/// notices and the round "completes" with a wrong sum (an integrity
/// failure only; TLS keeps it off the wire, and a server that does it only
/// spoils its own output). With signatures the tampered advert is refused
/// and the round completes without client 0, with the right sum.
#[test]
fn a_tampered_relay_corrupts_the_sum_only_without_signatures() {
    for threat_model in [ThreatModel::SemiHonest, ThreatModel::MaliciousServer] {
        let mut cfg = config(6, 4, 8);
        cfg.threat_model = threat_model;
        let mut net = Net::new(cfg, 17);
        let mut out = net.run_until(|b| matches!(b, ServerBody::NeighbourKeys(_)));
        let (_, to_zero) = out.iter_mut().find(|(id, _)| id.0 == 0).unwrap();
        let ServerBody::NeighbourKeys(keys) = &mut to_zero.body else {
            panic!("neighbour keys")
        };
        keys[0].1.keys.s_pk[5] ^= 0x10;
        let (to_zero, rest): (Vec<_>, Vec<_>) = out.into_iter().partition(|(id, _)| id.0 == 0);
        net.deliver(rest);
        let now = net.now;
        let accepted = net.clients[0]
            .handle_message(now, to_zero[0].1.clone())
            .is_ok();
        if threat_model == ThreatModel::MaliciousServer {
            assert!(!accepted, "the signature check refuses the tampered key");
            net.kill(&[0]);
        } else {
            assert!(accepted);
        }
        let output = net.run(&[]).expect("the round completes");
        let right = output.sum == net.plain_sum(&output.contributors);
        match threat_model {
            ThreatModel::MaliciousServer => {
                assert!(right, "signed rounds keep the sum right");
                assert!(!output.contributors.contains(&ClientId(0)));
            }
            _ => assert!(!right, "the unsigned round's sum is silently wrong"),
        }
    }
}

#[test]
fn clients_told_different_encodings_refuse_each_others_adverts() {
    // The server tells client 0 one encoding (say, less DP noise) and the
    // others another. Each side binds what it was told into its session
    // hash (`RoundConfig::encoding_digest`), so the others' adverts do not
    // verify for client 0, and it refuses before sealing any share. Two
    // rounds from one seed: the same identities and keys, only the
    // encoding differs.
    let told = |digest: u8| {
        let mut cfg = malicious_config(5, 4);
        cfg.encoding_digest = [digest; 32];
        Net::new(cfg, 9)
    };
    let (mut victim, mut others) = (told(1), told(2));
    victim.run_until(|b| matches!(b, ServerBody::NeighbourKeys(_)));
    let out = others.run_until(|b| matches!(b, ServerBody::NeighbourKeys(_)));
    let keys = neighbour_keys(&out, 0);
    let first = keys[0].0;
    let result = send(&mut victim, 0, ServerBody::NeighbourKeys(keys));
    assert_eq!(
        violation(result),
        Violation::BadSignature {
            client: first,
            what: "advert"
        }
    );
    assert!(reply(&mut victim, 0).is_none(), "no share leaves client 0");
}
