//! Server unmasking, the step Flower's SecAgg+ spends 139 s on for this
//! round: n = 100 clients, d = 100,000, complete graph, 10% of clients drop
//! after sharing keys. The server rebuilds 90 self-mask seeds and 10 masking
//! keys (Shamir, t = 51), agrees 10 x 90 pairwise seeds, and expands 990
//! masks of 400 KB into the sum.
//!
//! Run: `cargo bench -p tessera-benches --bench round`

use std::time::Instant;

use chacha20::ChaCha20Rng;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rand_core::SeedableRng;
use tessera_aggregation::mask::Prg;
use tessera_aggregation::{
    ClientId, ClientSession, RoundConfig, ServerEvent, ServerSession, Stage,
};

/// Runs a round up to the point where the server holds every share it needs,
/// and returns the server ready to unmask.
fn server_ready_to_unmask(n: u32, dim: u32, dropped: u32, prg: Prg) -> ServerSession {
    let mut config = RoundConfig::new(1, n, dim);
    config.threshold = n / 2 + 1;
    config.prg = prg;
    let now = Instant::now();
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    let mut clients: Vec<ClientSession> = (0..n)
        .map(|i| ClientSession::new(config.clone(), ClientId(i), now, &mut rng).unwrap())
        .collect();
    let mut server = ServerSession::new(config.clone(), now).unwrap();
    let input = vec![7u32; dim as usize];
    loop {
        let stage = server.stage();
        for (i, client) in clients.iter_mut().enumerate() {
            // The last `dropped` clients vanish after sharing keys, for good.
            let vanished = matches!(stage, Some(s) if s >= Stage::MaskedInput) || stage.is_none();
            if vanished && i as u32 >= n - dropped {
                continue;
            }
            if client.is_awaiting_input() {
                client.submit_input(input.clone()).unwrap();
            }
            while let Some(m) = client.poll_transmit() {
                server.handle_message(now, ClientId(i as u32), m).unwrap();
            }
        }
        if server.stage() == stage && stage.is_some() {
            let deadline = server.poll_timeout().unwrap();
            server.handle_timeout(deadline);
        }
        while let Some((to, m)) = server.poll_transmit() {
            let _ = clients[to.index()].handle_message(now, m);
        }
        while let Some(event) = server.poll_event() {
            if matches!(event, ServerEvent::UnmaskingReady) {
                return server;
            }
            assert!(
                !matches!(event, ServerEvent::Aborted { .. }),
                "round aborted"
            );
        }
    }
}

fn unmasking(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_unmask_n100_d100k_complete_10pct_dropped");
    group.sample_size(10);
    for prg in [Prg::Aes128Ctr, Prg::ChaCha20] {
        group.bench_function(format!("{prg}"), |b| {
            b.iter_batched(
                || server_ready_to_unmask(100, 100_000, 10, prg),
                |mut server| {
                    let output = server.unmask().expect("unmasks");
                    assert_eq!(output.contributors.len(), 90);
                    server
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, unmasking);
criterion_main!(benches);
