//! A small hand-driven network for the protocol tests: real client sessions
//! and a real server session, messages passed through their byte encodings,
//! virtual time. Tests can stop it at any stage and play the server's part
//! themselves.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;
use tessera_aggregation::identity::{ClientIdentity, IdentityDirectory, IdentityKey};
use tessera_aggregation::messages::{ClientMessage, ServerMessage};
use tessera_aggregation::packing::value_mask;
use tessera_aggregation::server::RoundOutput;
use tessera_aggregation::{ClientId, ClientSession, RoundConfig, ServerEvent, ServerSession};

pub struct Net {
    pub config: RoundConfig,
    pub clients: Vec<ClientSession>,
    pub server: ServerSession,
    pub base: Instant,
    pub now: Instant,
    /// Clients that stopped talking (dropped out).
    pub dead: Vec<bool>,
    pub inputs: Vec<Vec<u32>>,
    /// Malicious-server rounds: each client's identity and the directory.
    pub identities: Vec<IdentityKey>,
    pub directory: Option<Arc<IdentityDirectory>>,
    /// A corrupt client's second copy ([`Net::twin`]): it receives what the
    /// client receives, so a colluding server can ask the two copies
    /// different questions, as a corrupt client answering both would.
    pub twin: Option<(ClientId, ClientSession)>,
}

/// Long-term identities for `n` clients, from a seed.
pub fn identities(n: u32, seed: u8) -> (Vec<IdentityKey>, Arc<IdentityDirectory>) {
    let mut rng = ChaCha20Rng::from_seed([seed ^ 0x5a; 32]);
    let keys: Vec<IdentityKey> = (0..n).map(|_| IdentityKey::generate(&mut rng)).collect();
    let directory =
        IdentityDirectory::new(keys.iter().map(|k| k.verifying_key()).collect()).unwrap();
    (keys, Arc::new(directory))
}

pub fn config(n: u32, t: u32, dim: u32) -> RoundConfig {
    let mut config = RoundConfig::new(11, n, dim);
    config.threshold = t;
    config.stage_timeout = Duration::from_secs(10);
    config
}

impl Net {
    /// A round of real sessions; in a malicious-server round each client
    /// gets an identity from [`identities`] with the same seed.
    pub fn new(config: RoundConfig, seed: u8) -> Self {
        let n = config.num_clients;
        if config.is_signed() {
            let (keys, directory) = identities(n, seed);
            Self::with_identities(config, seed, keys, directory)
        } else {
            Self::build(config, seed, Vec::new(), None)
        }
    }

    /// A malicious-server round whose clients hold `keys`.
    pub fn with_identities(
        config: RoundConfig,
        seed: u8,
        keys: Vec<IdentityKey>,
        directory: Arc<IdentityDirectory>,
    ) -> Self {
        Self::build(config, seed, keys, Some(directory))
    }

    fn build(
        config: RoundConfig,
        seed: u8,
        keys: Vec<IdentityKey>,
        directory: Option<Arc<IdentityDirectory>>,
    ) -> Self {
        let base = Instant::now();
        let mut rng = ChaCha20Rng::from_seed([seed; 32]);
        let n = config.num_clients;
        let graph = config.neighbour_graph().unwrap();
        let clients: Vec<ClientSession> = (0..n)
            .map(|i| match &directory {
                Some(directory) => ClientSession::with_identity(
                    config.clone(),
                    &graph,
                    ClientId(i),
                    ClientIdentity {
                        key: keys[i as usize].clone(),
                        directory: Arc::clone(directory),
                    },
                    base,
                    &mut rng,
                )
                .unwrap(),
                None => ClientSession::new(config.clone(), ClientId(i), base, &mut rng).unwrap(),
            })
            .collect();
        let mask = value_mask(config.bits);
        let inputs = (0..n)
            .map(|i| {
                (0..config.dim)
                    .map(|j| {
                        (i.wrapping_mul(7919) ^ j.wrapping_mul(104_729)).wrapping_mul(2_654_435_761)
                            & mask
                    })
                    .collect()
            })
            .collect();
        let server = match &directory {
            Some(directory) => {
                ServerSession::with_identities(config.clone(), graph, Arc::clone(directory), base)
                    .unwrap()
            }
            None => ServerSession::new(config.clone(), base).unwrap(),
        };
        Net {
            identities: keys,
            directory,
            config,
            clients,
            server,
            base,
            now: base,
            dead: vec![false; n as usize],
            inputs,
            twin: None,
        }
    }

    /// Makes `id` a corrupt client with a twin: its session is rebuilt from
    /// a fixed seed and a second, identical session is kept beside it (the
    /// same keys, the same shares received). The server's questions to the
    /// twin stand for a corrupt client answering what an honest one would
    /// refuse. Call before any message is sent.
    pub fn twin(&mut self, id: ClientId, seed: u8) {
        let graph = self.config.neighbour_graph().unwrap();
        let make = || {
            let mut rng = ChaCha20Rng::from_seed([seed; 32]);
            match &self.directory {
                Some(directory) => ClientSession::with_identity(
                    self.config.clone(),
                    &graph,
                    id,
                    ClientIdentity {
                        key: self.identities[id.index()].clone(),
                        directory: Arc::clone(directory),
                    },
                    self.base,
                    &mut rng,
                )
                .unwrap(),
                None => {
                    ClientSession::with_graph(self.config.clone(), &graph, id, self.base, &mut rng)
                        .unwrap()
                }
            }
        };
        self.clients[id.index()] = make();
        self.twin = Some((id, make()));
    }

    pub fn kill(&mut self, ids: &[u32]) {
        for id in ids {
            self.dead[*id as usize] = true;
        }
    }

    /// Every live client hands its queued messages to the server (through
    /// the byte encoding); inputs are submitted when asked for.
    pub fn clients_send(&mut self) {
        for (i, client) in self.clients.iter_mut().enumerate() {
            if self.dead[i] {
                continue;
            }
            if client.is_awaiting_input() {
                client.submit_input(self.inputs[i].clone()).unwrap();
            }
            while let Some(message) = client.poll_transmit() {
                let message = ClientMessage::decode(&message.encode()).unwrap();
                self.server
                    .handle_message(self.now, ClientId(i as u32), message)
                    .unwrap();
            }
        }
        // The twin says what its original says: nothing of it reaches the
        // server.
        if let Some((id, twin)) = &mut self.twin {
            if twin.is_awaiting_input() {
                twin.submit_input(self.inputs[id.index()].clone()).unwrap();
            }
            while twin.poll_transmit().is_some() {}
        }
    }

    /// Closes `stage` by its deadline if dropped clients left it open.
    pub fn expire_stage(&mut self, stage: Option<tessera_aggregation::Stage>) {
        if let Some(deadline) = self.server.poll_timeout()
            && stage.is_some()
            && self.server.stage() == stage
        {
            self.now = deadline;
            self.server.handle_timeout(deadline);
        }
    }

    /// Everything the server wants to send, encoded and decoded.
    pub fn server_outbox(&mut self) -> Vec<(ClientId, ServerMessage)> {
        let mut out = Vec::new();
        while let Some((to, message)) = self.server.poll_transmit() {
            out.push((to, ServerMessage::decode(&message.encode()).unwrap()));
        }
        out
    }

    /// Delivers server messages to live clients.
    pub fn deliver(&mut self, messages: Vec<(ClientId, ServerMessage)>) {
        for (to, message) in messages {
            if !self.dead[to.index()] {
                if let Some((id, twin)) = &mut self.twin
                    && *id == to
                {
                    twin.handle_message(self.now, message.clone()).unwrap();
                }
                self.clients[to.index()]
                    .handle_message(self.now, message)
                    .unwrap();
            }
        }
    }

    /// One stage: clients send, the stage closes, the server's answers are
    /// delivered.
    pub fn step(&mut self) {
        let stage = self.server.stage();
        self.clients_send();
        self.expire_stage(stage);
        let out = self.server_outbox();
        self.deliver(out);
    }

    /// Lets the honest server and clients run stages until the server queues
    /// a message `stop` matches; returns that batch undelivered, for the
    /// test to play the server's part from there.
    pub fn run_until(
        &mut self,
        stop: impl Fn(&tessera_aggregation::messages::ServerBody) -> bool,
    ) -> Vec<(ClientId, ServerMessage)> {
        loop {
            let stage = self.server.stage().expect("round in progress");
            self.clients_send();
            self.expire_stage(Some(stage));
            let out = self.server_outbox();
            if out.iter().any(|(_, m)| stop(&m.body)) {
                return out;
            }
            self.deliver(out);
        }
    }

    /// Runs the round to its end with `drops[s]` clients killed just before
    /// they send their stage-`s` message; returns the output, or `None` if
    /// the round aborted.
    pub fn run(&mut self, drops: &[(tessera_aggregation::Stage, &[u32])]) -> Option<RoundOutput> {
        for _ in 0..6 {
            if let Some(stage) = self.server.stage() {
                for (s, ids) in drops {
                    if *s == stage {
                        self.kill(ids);
                    }
                }
            }
            self.step();
            while let Some(event) = self.server.poll_event() {
                match event {
                    ServerEvent::UnmaskingReady => {
                        self.server.unmask();
                    }
                    ServerEvent::Completed(output) => return Some(output),
                    ServerEvent::Aborted { .. } => return None,
                    _ => {}
                }
            }
        }
        None
    }

    /// The plain sum of the given clients' inputs mod 2^bits.
    pub fn plain_sum(&self, contributors: &[ClientId]) -> Vec<u32> {
        let mask = value_mask(self.config.bits);
        let mut sum = vec![0u32; self.config.dim as usize];
        for id in contributors {
            for (acc, v) in sum.iter_mut().zip(&self.inputs[id.index()]) {
                *acc = acc.wrapping_add(*v);
            }
        }
        sum.iter().map(|v| v & mask).collect()
    }
}

/// Client ids from numbers.
pub fn ids(v: &[u32]) -> Vec<ClientId> {
    v.iter().copied().map(ClientId).collect()
}

/// The protocol violation a client refused a message with.
pub fn violation(
    result: Result<(), tessera_aggregation::ClientSessionError>,
) -> tessera_aggregation::client::Violation {
    match result {
        Err(tessera_aggregation::ClientSessionError::ServerMisbehaved(v)) => v,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// What a server that rebuilt a victim's self-mask seed `b` and the pairwise
/// seed it shares with each of its neighbours reads: the victim's masked
/// input with every mask taken away (the attack tests compare it with the
/// victim's input).
#[allow(dead_code)] // not every test binary plays an attack
pub fn strip_masks(
    config: &RoundConfig,
    victim: ClientId,
    b: &[u8; 32],
    pairwise: Vec<(ClientId, tessera_aggregation::mask::MaskSeed)>,
    mut masked: Vec<u32>,
) -> Vec<u32> {
    use tessera_aggregation::keys::self_mask_seed;
    use tessera_aggregation::mask::{MaskSign, apply_masks};
    let own = self_mask_seed(b, config.round_id, victim);
    let mut seeds = vec![(&own, MaskSign::Subtract)];
    for (neighbour, seed) in &pairwise {
        // The victim added +PRG(s_vu) for v < u: take it away.
        let sign = if victim < *neighbour {
            MaskSign::Subtract
        } else {
            MaskSign::Add
        };
        seeds.push((seed, sign));
    }
    apply_masks(config.prg, &seeds, config.bits, &mut masked);
    masked
}

/// Every masking public key the server relayed in these NeighbourKeys
/// messages, by owner: what a server keeps to rebuild pairwise masks later.
#[allow(dead_code)] // not every test binary plays an attack
pub fn advertised_s_pk(
    out: &[(ClientId, ServerMessage)],
) -> std::collections::HashMap<ClientId, [u8; 32]> {
    let mut s_pk = std::collections::HashMap::new();
    for (_, message) in out {
        if let tessera_aggregation::messages::ServerBody::NeighbourKeys(adverts) = &message.body {
            for (id, advert) in adverts {
                s_pk.insert(*id, advert.keys.s_pk);
            }
        }
    }
    s_pk
}
