//! The attacks of issue 11, run end to end against real client sessions: a
//! scripted lying server, one corrupt client that answers every question
//! (played by two identical copies of its session, see [`common::Net::twin`]),
//! and honest clients. Each attack ends by trying to read the victim's exact
//! input from its masked vector; the tests assert that it cannot.
//!
//! - The split attack: the server tells some of the victim's share holders
//!   that the victim survived (they reveal shares of its self-mask seed `b`)
//!   and the others that it dropped (they reveal shares of its masking key
//!   `s_sk`). With t shares of both, the server removes every mask from the
//!   victim's masked input. A client that held a share of its own `b` and
//!   revealed it gave the server one more honest holder than the finder's
//!   bound `2t > k + a` counts; that unmasked the victim at n = 10 with the
//!   finder's own parameters. Now a client holds no share of its own secrets.
//! - The same-round-id replay: signatures over (round id, survivor set)
//!   from an honest run of round R verified again in a second session of
//!   round R, so the server could show the victim the old quorum while the
//!   others signed the set without it. Now every survivor-set signature is
//!   bound to the session's transcript (the round configuration, the
//!   identity roster and every signed advert, with the fresh keys of this
//!   session), and the old quorum does not verify.

mod common;

use std::sync::Arc;

use common::{Net, config, identities};
use tessera_aggregation::ThreatModel;
use tessera_aggregation::client::Violation;
use tessera_aggregation::config::ConfigError;
use tessera_aggregation::graph::GraphKind;
use tessera_aggregation::identity::{IdentityDirectory, IdentityKey, IdentitySignature};
use tessera_aggregation::keys::pairwise_mask_seed;
use tessera_aggregation::messages::{ClientBody, ClientMessage, ServerBody, ServerMessage};
use tessera_aggregation::packing::unpack;
use tessera_aggregation::params::{ParamsRequest, find_params, worst_count};
use tessera_aggregation::shamir::{self, Share};
use tessera_aggregation::{ClientId, ClientSessionError, RoundConfig};

type Signatures = Vec<(ClientId, IdentitySignature)>;

/// What the lying server ended with.
#[derive(Debug, Default)]
struct Loot {
    /// Revealed shares of the victim's self-mask seed.
    self_mask_shares: Vec<Share>,
    /// Revealed shares of the victim's masking key.
    masking_key_shares: Vec<Share>,
    /// The clients that refused the server's request, and why.
    refusals: Vec<(ClientId, Violation)>,
    /// Whether the server rebuilt both secrets and read the victim's exact
    /// input.
    unmasked: bool,
}

/// The stories a lying server tells.
struct Script {
    /// Whom the server tells that the victim survived (the victim and the
    /// corrupt client are always told so). Everyone else, and the corrupt
    /// client's twin, is told that the victim dropped.
    told_survived: Vec<ClientId>,
    /// Malicious-server model: the quorum shown to those told the victim
    /// survived, instead of their own signatures (a replay).
    replayed_quorum: Option<Signatures>,
}

fn deliver(
    net: &mut Net,
    to: ClientId,
    twin: bool,
    body: ServerBody,
) -> Result<(), ClientSessionError> {
    let message = ServerMessage {
        round_id: net.config.round_id,
        body,
    };
    let message = ServerMessage::decode(&message.encode()).unwrap();
    let now = net.now;
    match (&mut net.twin, twin) {
        (Some((_, session)), true) => session.handle_message(now, message),
        _ => net.clients[to.index()].handle_message(now, message),
    }
}

fn answer(net: &mut Net, from: ClientId, twin: bool) -> Option<ClientBody> {
    let message = match (&mut net.twin, twin) {
        (Some((_, session)), true) => session.poll_transmit(),
        _ => net.clients[from.index()].poll_transmit(),
    }?;
    Some(ClientMessage::decode(&message.encode()).unwrap().body)
}

fn refusal(result: Result<(), ClientSessionError>) -> Option<Violation> {
    match result {
        Ok(()) => None,
        Err(ClientSessionError::ServerMisbehaved(v)) => Some(v),
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

/// Runs `script` against `victim` (client 0) in a round of `config`, with
/// its first neighbour corrupt. `keys` gives the malicious-server clients
/// their identities (the same ones across sessions of one round).
fn split_attack(
    config: &RoundConfig,
    seed: u8,
    keys: Option<(Vec<IdentityKey>, Arc<IdentityDirectory>)>,
    script: &Script,
) -> Loot {
    let mut net = match keys {
        Some((keys, directory)) => Net::with_identities(config.clone(), seed, keys, directory),
        None => Net::new(config.clone(), seed),
    };
    let n = config.num_clients;
    let victim = ClientId(0);
    let colluder = net.clients[0].neighbours()[0];
    net.twin(colluder, seed ^ 0x77);

    // The server keeps every advertised s_pk and the victim's masked input.
    let out = net.run_until(|b| matches!(b, ServerBody::NeighbourKeys(_)));
    let s_pk = common::advertised_s_pk(&out);
    net.deliver(out);
    let out = net.run_until(|b| matches!(b, ServerBody::SealedShares(_)));
    net.deliver(out);
    let input = net.inputs[0].clone();
    net.clients[0].submit_input(input).unwrap();
    let masked = net.clients[0].poll_transmit().unwrap();
    let ClientBody::MaskedInput(packed) = &masked.body else {
        panic!("expected the masked input, got {masked:?}")
    };
    let masked_input = unpack(packed, config.bits, config.dim as usize).unwrap();
    let now = net.now;
    net.server.handle_message(now, victim, masked).unwrap();
    net.run_until(|b| matches!(b, ServerBody::ConsistencyCheck { .. }));

    // Every client, and the corrupt client's twin, hears one story.
    let everyone: Vec<ClientId> = (0..n).map(ClientId).collect();
    let without_victim: Vec<ClientId> = (1..n).map(ClientId).collect();
    let mut targets: Vec<(ClientId, bool, bool)> = everyone
        .iter()
        .map(|&id| {
            // The corrupt client hears the victim survived, its twin that
            // it dropped.
            let survived = id == victim || id == colluder || script.told_survived.contains(&id);
            (id, false, survived)
        })
        .collect();
    targets.push((colluder, true, false));
    let around = |net: &Net, id: ClientId, story: &[ClientId]| -> Vec<ClientId> {
        let mut ids: Vec<ClientId> = net.clients[id.index()]
            .neighbours()
            .iter()
            .copied()
            .chain([id])
            .filter(|c| story.contains(c))
            .collect();
        ids.sort();
        ids
    };
    let mut loot = Loot::default();
    let mut signed = [Vec::new(), Vec::new()];
    for &(id, twin, survived) in &targets {
        let story = if survived { &everyone } else { &without_victim };
        let survivors = if config.is_signed() {
            story.clone()
        } else {
            around(&net, id, story)
        };
        let result = deliver(
            &mut net,
            id,
            twin,
            ServerBody::ConsistencyCheck { survivors },
        );
        if let Some(v) = refusal(result) {
            loot.refusals.push((id, v));
            continue;
        }
        if let Some(ClientBody::ConsistencyCheck(Some(signature))) = answer(&mut net, id, twin) {
            signed[usize::from(survived)].push((id, signature));
        }
    }
    for list in &mut signed {
        list.sort_by_key(|(id, _)| *id);
    }
    for &(id, twin, survived) in &targets {
        if loot.refusals.iter().any(|(r, _)| *r == id) && !twin {
            continue;
        }
        let story = if survived { &everyone } else { &without_victim };
        let survivors = around(&net, id, story);
        let dropped = if !survived && net.clients[id.index()].neighbours().contains(&victim) {
            vec![victim]
        } else {
            Vec::new()
        };
        let signatures = match (survived, &script.replayed_quorum) {
            (true, Some(old)) => old.clone(),
            _ => signed[usize::from(survived)].clone(),
        };
        let request = ServerBody::UnmaskRequest {
            survivors,
            dropped,
            signatures,
        };
        if let Some(v) = refusal(deliver(&mut net, id, twin, request)) {
            loot.refusals.push((id, v));
            continue;
        }
        let Some(ClientBody::Unmasking(response)) = answer(&mut net, id, twin) else {
            panic!("{id} accepted the request but sent no shares")
        };
        for (owner, share) in response.self_mask_shares {
            if owner == victim {
                loot.self_mask_shares.push(share);
            }
        }
        for (owner, share) in response.masking_key_shares {
            if owner == victim {
                loot.masking_key_shares.push(share);
            }
        }
    }

    // With t shares of both secrets, remove every mask from the victim's
    // masked input.
    let t = config.threshold as usize;
    if loot.self_mask_shares.len() >= t && loot.masking_key_shares.len() >= t {
        let b = shamir::reconstruct(&loot.self_mask_shares.iter().collect::<Vec<_>>()).unwrap();
        let s_sk = x25519_dalek::StaticSecret::from(
            shamir::reconstruct(&loot.masking_key_shares.iter().collect::<Vec<_>>()).unwrap(),
        );
        let pairwise = net.clients[0]
            .neighbours()
            .iter()
            .map(|&u| {
                let seed = pairwise_mask_seed(&s_sk, &s_pk[&u], config.round_id, victim, u);
                (u, seed.unwrap())
            })
            .collect();
        let recovered = common::strip_masks(config, victim, &b, pairwise, masked_input);
        loot.unmasked = recovered == net.inputs[0];
    }
    loot
}

/// The honest neighbours of client 0 (all but the corrupt first one).
fn honest_neighbours(config: &RoundConfig) -> Vec<ClientId> {
    let graph = config.neighbour_graph().unwrap();
    graph.neighbours(0)[1..]
        .iter()
        .copied()
        .map(ClientId)
        .collect()
}

/// The finder's parameters for n = 10, 10% corrupt, 10% dropouts, against a
/// semi-malicious server: Harary k = 4, t = 3, one corrupt client.
fn finder_round_of_ten() -> RoundConfig {
    let request = ParamsRequest {
        clients: 10,
        dropout_rate: 0.1,
        corrupt_rate: 0.1,
        threat_model: ThreatModel::SemiMalicious,
    };
    let params = find_params(&request).unwrap();
    assert_eq!(
        (params.graph, params.threshold),
        (GraphKind::Harary { k: 4 }, 3)
    );
    let mut cfg = config(10, params.threshold, 16);
    cfg.graph = params.graph;
    cfg.threat_model = ThreatModel::SemiMalicious;
    cfg.corrupt = worst_count(0.1, 10);
    cfg.validate().unwrap();
    cfg
}

/// Issue 11, item 2: every way of splitting the victim's honest share
/// holders between the two stories, with the corrupt neighbour answering
/// both. When the victim held (and revealed) a share of its own self-mask
/// seed, the split {victim, one neighbour} / {two neighbours} gave the
/// server 3 + 3 shares and the victim's exact input.
#[test]
fn no_split_of_the_honest_holders_unmasks_a_victim_with_the_finders_parameters() {
    let cfg = finder_round_of_ten();
    let honest = honest_neighbours(&cfg);
    assert_eq!(honest.len(), 3);
    let mut most = (0, 0);
    for split in 0u32..(1 << honest.len()) {
        let told_survived = honest
            .iter()
            .enumerate()
            .filter(|(i, _)| split & (1 << i) != 0)
            .map(|(_, id)| *id)
            .collect();
        let script = Script {
            told_survived,
            replayed_quorum: None,
        };
        let loot = split_attack(&cfg, 31, None, &script);
        assert!(
            !loot.unmasked,
            "split {split:03b}: the server read the victim's input from {} + {} shares",
            loot.self_mask_shares.len(),
            loot.masking_key_shares.len()
        );
        most = most.max((
            loot.self_mask_shares
                .len()
                .min(loot.masking_key_shares.len()),
            split as usize,
        ));
    }
    // The best split still leaves one secret a share short.
    assert!(most.0 < 3, "{most:?}");
}

/// Issue 11, item 3: a second session of round R, with the same id. Round R
/// ran honestly once and the server kept the quorum's signatures over the
/// full survivor set; in the second session it shows the victim that old
/// quorum, while everyone else signs the set without the victim (a genuine
/// quorum) and reveals shares of the victim's masking key. Before the
/// signatures were bound to the session, the victim accepted the old quorum
/// and answered as a survivor: two survivor sets were accepted in one round,
/// the state the signature quorum exists to prevent.
#[test]
fn a_quorum_from_another_session_of_the_same_round_is_refused() {
    let mut cfg = config(7, 0, 16);
    cfg.threat_model = ThreatModel::MaliciousServer;
    cfg.corrupt = 1;
    cfg.threshold = tessera_aggregation::params::threshold_floor(
        ThreatModel::MaliciousServer,
        7,
        1,
        GraphKind::Complete,
    );
    cfg.validate().unwrap();
    let (keys, directory) = identities(7, 41);

    // Session 1 of round R, honest up to the unmasking requests.
    let mut first = Net::with_identities(cfg.clone(), 41, keys.clone(), directory.clone());
    let out = first.run_until(|b| matches!(b, ServerBody::UnmaskRequest { .. }));
    let old_quorum = match &out[0].1.body {
        ServerBody::UnmaskRequest { signatures, .. } => signatures.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(old_quorum.len(), 7);

    // Session 2 of round R: the victim alone is told it survived and shown
    // the old quorum.
    let script = Script {
        told_survived: Vec::new(),
        replayed_quorum: Some(old_quorum),
    };
    let loot = split_attack(&cfg, 42, Some((keys, directory)), &script);
    let victim_refusal = loot
        .refusals
        .iter()
        .find(|(id, _)| id.0 == 0)
        .map(|(_, v)| v.clone());
    assert!(
        matches!(
            victim_refusal,
            Some(Violation::BadSignature {
                what: "survivor-set",
                ..
            })
        ),
        "the victim accepted a quorum from another session: {:?}",
        loot.refusals
    );
    // The others' quorum over the set without the victim is genuine: they
    // answer, and the server holds shares of the victim's masking key only.
    assert!(loot.self_mask_shares.is_empty());
    assert!(!loot.unmasked);
}

/// Issue 11, items 2 and 3 together, as the review ran them: a
/// malicious-server round on the finder's sparse graph for n = 10 (Harary
/// k = 4, t = 3, one corrupt client). The server replays round R's quorum to
/// the victim and one honest neighbour in a second session of R; the
/// victim's own self-mask share, the neighbour's and the colluder's make 3,
/// and the two other honest neighbours and the colluder give 3 shares of
/// the masking key: the victim's input was read. A sparse graph is now
/// refused in the malicious-server model, before any session starts.
#[test]
fn the_combined_replay_and_split_on_a_sparse_graph_cannot_start() {
    let mut cfg = finder_round_of_ten();
    cfg.threat_model = ThreatModel::MaliciousServer;
    if let Err(e) = cfg.validate() {
        assert!(
            matches!(e, ConfigError::SparseGraphUnderMaliciousServer { .. }),
            "{e}"
        );
        return;
    }
    let (keys, directory) = identities(10, 43);
    let mut first = Net::with_identities(cfg.clone(), 43, keys.clone(), directory.clone());
    let out = first.run_until(|b| matches!(b, ServerBody::UnmaskRequest { .. }));
    let old_quorum = match &out[0].1.body {
        ServerBody::UnmaskRequest { signatures, .. } => signatures.clone(),
        other => panic!("{other:?}"),
    };
    let script = Script {
        told_survived: honest_neighbours(&cfg)[..1].to_vec(),
        replayed_quorum: Some(old_quorum),
    };
    let loot = split_attack(&cfg, 44, Some((keys, directory)), &script);
    assert!(
        !loot.unmasked,
        "the server read the victim's input ({} + {} shares)",
        loot.self_mask_shares.len(),
        loot.masking_key_shares.len()
    );
}
