//! The state-machine harness shared by the `client_session` and
//! `server_session` fuzz targets.
//!
//! A round of 3 to 7 real `ClientSession`s and one real `ServerSession`
//! (any of the three threat models) runs under a sequence of operations the
//! fuzzer chooses: honest sends and relays interleaved with raw bytes to any
//! party, mutated relays, replays, impersonation, dropouts and time jumps.
//! Every message crosses its canonical byte encoding.
//!
//! Checked on every input: nothing panics; and when the server produced a
//! sum without ever having accepted a message the honest clients did not
//! send, the sum is exactly the sum of the contributors' inputs. In the
//! unsigned models that holds only if no client accepted a tampered server
//! message: a flipped bit in a relayed `s_pk` gives that client a pairwise
//! mask its neighbour does not share, and the sum comes out wrong without
//! anyone noticing (this fuzzer found it; TLS keeps it off the wire, and the
//! regression test `a_tampered_relay_corrupts_the_sum_only_without_signatures`
//! pins it). In malicious-server rounds the signatures catch it, so there
//! the check holds whatever the clients accepted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chacha20::ChaCha20Rng;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use rand_core::SeedableRng;
use tessera_aggregation::identity::{ClientIdentity, IdentityDirectory, IdentityKey};
use tessera_aggregation::ThreatModel;
use tessera_aggregation::{
    ClientId, ClientMessage, ClientSession, RoundConfig, ServerEvent, ServerMessage, ServerSession,
};

/// One step of the scenario.
#[derive(Debug, Arbitrary)]
pub enum Op {
    /// Every live client hands its queued messages to the server.
    ClientsSend,
    /// The server's queued messages go to their clients.
    ServerRelay,
    /// The server's next queued message, with one byte flipped, to its
    /// client (the rest of the queue is delivered as is).
    MutateRelay { byte: u16, xor: u8 },
    /// Raw bytes to a client, as a server message.
    ToClient { to: u8, bytes: Vec<u8> },
    /// Raw bytes to the server, as a message from `from`.
    ToServer { from: u8, bytes: Vec<u8> },
    /// A client's last message sent again, as itself or as another client.
    Replay { from: u8, as_from: u8 },
    /// A client hangs up.
    Drop { who: u8 },
    /// Time passes for everyone.
    Advance { millis: u16 },
}

/// The scenario.
#[derive(Debug, Arbitrary)]
pub struct Scenario {
    clients: u8,
    model: u8,
    ops: Vec<Op>,
}

/// Which parties the fuzzer may feed raw bytes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Focus {
    /// Raw and mutated messages to clients only.
    Clients,
    /// Raw, replayed and impersonated messages to the server only.
    Server,
}

struct Round {
    config: RoundConfig,
    server: ServerSession,
    clients: Vec<ClientSession>,
    alive: Vec<bool>,
    inputs: Vec<Vec<u32>>,
    last_sent: Vec<Option<Vec<u8>>>,
    now: Instant,
    /// The server accepted a message no honest client sent.
    forged_accepted: bool,
    /// A client accepted a server message the server did not send.
    client_tampered: bool,
}

impl Round {
    fn new(n: u32, model: ThreatModel) -> Round {
        let mut config = RoundConfig::new(5, n, 8);
        config.threshold = n / 2 + 1;
        config.bits = 16;
        config.threat_model = model;
        config.stage_timeout = Duration::from_secs(1);
        let graph = config.neighbour_graph().expect("valid graph");
        let now = Instant::now();
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let identities: Vec<IdentityKey> =
            (0..n).map(|_| IdentityKey::generate(&mut rng)).collect();
        let directory = Arc::new(
            IdentityDirectory::new(identities.iter().map(|k| k.verifying_key()).collect())
                .expect("distinct"),
        );
        let clients = (0..n)
            .map(|i| {
                let id = ClientId(i);
                if config.is_signed() {
                    let identity = ClientIdentity {
                        key: identities[i as usize].clone(),
                        directory: Arc::clone(&directory),
                    };
                    ClientSession::with_identity(
                        config.clone(),
                        &graph,
                        id,
                        identity,
                        now,
                        &mut rng,
                    )
                } else {
                    ClientSession::with_graph(config.clone(), &graph, id, now, &mut rng)
                }
                .expect("valid client")
            })
            .collect();
        let server = if config.is_signed() {
            ServerSession::with_identities(config.clone(), graph, directory, now)
                .expect("valid server")
        } else {
            ServerSession::with_graph(config.clone(), graph, now)
        };
        let inputs = (0..n)
            .map(|i| (0..8).map(|j| (i * 977 + j * 131) & 0xffff).collect())
            .collect();
        Round {
            config,
            server,
            clients,
            alive: vec![true; n as usize],
            inputs,
            last_sent: vec![None; n as usize],
            now,
            forged_accepted: false,
            client_tampered: false,
        }
    }

    fn client(&self, raw: u8) -> usize {
        usize::from(raw) % self.clients.len()
    }

    fn clients_send(&mut self) {
        for i in 0..self.clients.len() {
            if !self.alive[i] {
                continue;
            }
            if self.clients[i].is_awaiting_input() {
                let _ = self.clients[i].submit_input(self.inputs[i].clone());
            }
            while let Some(message) = self.clients[i].poll_transmit() {
                let bytes = message.encode();
                let decoded = ClientMessage::decode(&bytes).expect("honest messages decode");
                let _ = self
                    .server
                    .handle_message(self.now, ClientId(i as u32), decoded);
                self.last_sent[i] = Some(bytes);
            }
        }
    }

    fn relay(&mut self, mutate: Option<(u16, u8)>) {
        let mut first = true;
        while let Some((to, message)) = self.server.poll_transmit() {
            let mut bytes = message.encode();
            if first && let Some((byte, xor)) = mutate {
                let at = usize::from(byte) % bytes.len();
                bytes[at] ^= xor.max(1);
            }
            let tampered = first && mutate.is_some();
            first = false;
            self.deliver_to_client(to.index(), &bytes, tampered);
        }
    }

    fn deliver_to_client(&mut self, to: usize, bytes: &[u8], tampered: bool) {
        if !self.alive[to] {
            return;
        }
        if let Ok(message) = ServerMessage::decode(bytes)
            && self.clients[to].handle_message(self.now, message).is_ok()
            && tampered
        {
            self.client_tampered = true;
        }
    }

    fn deliver_to_server(&mut self, from: usize, bytes: &[u8]) {
        if let Ok(message) = ClientMessage::decode(bytes)
            && self
                .server
                .handle_message(self.now, ClientId(from as u32), message)
                .is_ok()
        {
            self.forged_accepted = true;
        }
    }

    fn check_events(&mut self) {
        while let Some(event) = self.server.poll_event() {
            match event {
                ServerEvent::UnmaskingReady => {
                    self.server.unmask();
                }
                ServerEvent::Completed(output)
                    if !self.forged_accepted
                        && (self.config.is_signed() || !self.client_tampered) =>
                {
                    let mask = (1u32 << self.config.bits) - 1;
                    let mut expected = vec![0u32; self.config.dim as usize];
                    for id in &output.contributors {
                        for (e, v) in expected.iter_mut().zip(&self.inputs[id.index()]) {
                            *e = e.wrapping_add(*v) & mask;
                        }
                    }
                    assert_eq!(output.sum, expected, "a wrong sum from an unforged round");
                }
                _ => {}
            }
        }
    }
}

/// Runs a scenario; panics only on a broken invariant.
pub fn run(scenario: &Scenario, focus: Focus) {
    let n = u32::from(scenario.clients % 5) + 3;
    let model = match scenario.model % 3 {
        0 => ThreatModel::SemiHonest,
        1 => ThreatModel::SemiMalicious,
        _ => ThreatModel::MaliciousServer,
    };
    let mut round = Round::new(n, model);
    for op in scenario.ops.iter().take(64) {
        match op {
            Op::ClientsSend => round.clients_send(),
            Op::ServerRelay => round.relay(None),
            Op::MutateRelay { byte, xor } if focus == Focus::Clients => {
                round.relay(Some((*byte, *xor)))
            }
            Op::ToClient { to, bytes } if focus == Focus::Clients => {
                let to = round.client(*to);
                round.deliver_to_client(to, bytes, true);
            }
            Op::ToServer { from, bytes } if focus == Focus::Server => {
                // Ids past the round are tried too: the server must refuse
                // them, not index out of bounds.
                round.deliver_to_server(usize::from(*from % 10), bytes);
            }
            Op::Replay { from, as_from } if focus == Focus::Server => {
                let from = round.client(*from);
                if let Some(bytes) = round.last_sent[from].clone() {
                    round.deliver_to_server(round.client(*as_from), &bytes);
                }
            }
            Op::Drop { who } => {
                let who = round.client(*who);
                round.alive[who] = false;
                round.server.handle_dropout(round.now, ClientId(who as u32));
            }
            Op::Advance { millis } => {
                round.now += Duration::from_millis(u64::from(*millis) * 4);
                round.server.handle_timeout(round.now);
                for client in &mut round.clients {
                    client.handle_timeout(round.now);
                }
            }
            _ => {}
        }
        round.check_events();
    }
    // Let the honest parties finish what they can.
    for _ in 0..6 {
        round.clients_send();
        round.now += Duration::from_secs(1);
        round.server.handle_timeout(round.now);
        round.relay(None);
        round.check_events();
    }
}
