//! Mask expansion against its floor, the cipher's keystream alone.
//!
//! DESIGN.md's targets, for each PRG:
//! - (a) `keystream`: 41 x 4,000,000 bytes of raw keystream (k = 40
//!   neighbours + the self-mask, d = 1,000,000 words), the floor;
//! - (b) `client`: `apply_masks` with 41 seeds into d = 1,000,000 words,
//!   bits = 32; target (b)/(a) <= 1.3, printed from one run after the
//!   criterion groups;
//! - (c) `server`: `apply_masks_parallel` with 990 seeds into d = 100,000
//!   words (n = 100, complete graph, 10% dropout); target < 70 ms on 2 cores.
//!
//! Run with `cargo bench -p tessera-benches --bench masking`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use tessera_aggregation::mask::{
    MaskSeed, MaskSign, Prg, aes_hardware_accelerated, apply_masks, apply_masks_parallel,
    fill_keystream,
};

const CLIENT_SEEDS: usize = 41;
const CLIENT_D: usize = 1_000_000;
const SERVER_SEEDS: usize = 990;
const SERVER_D: usize = 100_000;

/// Distinct fixed seeds; their values do not change the speed.
fn seeds(n: usize) -> Vec<MaskSeed> {
    (0..n as u64)
        .map(|i| {
            let mut bytes = [0x5a; 32];
            bytes[..8].copy_from_slice(&i.to_le_bytes());
            MaskSeed::from_bytes(bytes)
        })
        .collect()
}

fn masks(seeds: &[MaskSeed], sign: MaskSign) -> Vec<(&MaskSeed, MaskSign)> {
    seeds.iter().map(|s| (s, sign)).collect()
}

/// (a): the keystream a client needs, into one reused 4 MB buffer.
fn keystream_floor(prg: Prg, seeds: &[MaskSeed], buf: &mut [u8]) {
    for s in seeds {
        fill_keystream(prg, s, buf);
        black_box(&mut *buf);
    }
}

fn bench_client(c: &mut Criterion) {
    let seeds = seeds(CLIENT_SEEDS);
    let masks = masks(&seeds, MaskSign::Add);
    let mut buf = vec![0u8; 4 * CLIENT_D];
    let mut out = vec![0u32; CLIENT_D];
    let mut g = c.benchmark_group("masking/client_d1e6_k40");
    g.throughput(Throughput::Bytes((CLIENT_SEEDS * 4 * CLIENT_D) as u64));
    for prg in Prg::ALL {
        g.bench_function(BenchmarkId::new("keystream", prg), |b| {
            b.iter(|| keystream_floor(prg, &seeds, &mut buf));
        });
        g.bench_function(BenchmarkId::new("apply_masks", prg), |b| {
            b.iter(|| apply_masks(prg, &masks, 32, black_box(&mut out)));
        });
    }
    g.finish();
}

fn bench_server(c: &mut Criterion) {
    let seeds = seeds(SERVER_SEEDS);
    let masks = masks(&seeds, MaskSign::Subtract);
    let mut out = vec![0u32; SERVER_D];
    let mut g = c.benchmark_group("masking/server_d1e5_990_seeds");
    g.throughput(Throughput::Bytes((SERVER_SEEDS * 4 * SERVER_D) as u64));
    for prg in Prg::ALL {
        g.bench_function(BenchmarkId::new("apply_masks_parallel", prg), |b| {
            b.iter(|| apply_masks_parallel(prg, &masks, 32, black_box(&mut out)));
        });
    }
    g.finish();
}

fn time(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn best_of(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs).map(|_| time(&mut f)).min().unwrap_or_default()
}

/// The ratios of DESIGN.md, from one process: floor and masking are timed
/// alternately (best of several runs each) so a busy neighbour on the
/// machine hits both alike.
fn print_ratios() {
    let client_seeds = seeds(CLIENT_SEEDS);
    let client_masks = masks(&client_seeds, MaskSign::Add);
    let server_seeds = seeds(SERVER_SEEDS);
    let server_masks = masks(&server_seeds, MaskSign::Subtract);
    let mut buf = vec![0u8; 4 * CLIENT_D];
    let mut out = vec![0u32; CLIENT_D];
    let mut server_out = vec![0u32; SERVER_D];
    println!(
        "\nmasking summary, best of 7 (AES instructions: {}; cpus: {})\n\
         targets: (b)/(a) <= 1.3 for both PRGs; (c) < 70 ms with AES-128-CTR",
        aes_hardware_accelerated(),
        cpus()
    );
    for prg in Prg::ALL {
        let (mut floor, mut client) = (Duration::MAX, Duration::MAX);
        for _ in 0..7 {
            floor = floor.min(time(|| keystream_floor(prg, &client_seeds, &mut buf)));
            client = client.min(time(|| {
                apply_masks(prg, &client_masks, 32, black_box(&mut out));
            }));
        }
        let server = best_of(7, || {
            apply_masks_parallel(prg, &server_masks, 32, black_box(&mut server_out));
        });
        let gbps = |bytes: usize, t: Duration| bytes as f64 / t.as_secs_f64() / 1e9;
        let client_bytes = CLIENT_SEEDS * 4 * CLIENT_D;
        println!(
            "{:>8}: (a) keystream {:6.2} ms ({:.2} GB/s)  (b) client {:6.2} ms  \
             (b)/(a) = {:.3}  (c) server {:6.2} ms ({:.2} GB/s)",
            prg.name(),
            floor.as_secs_f64() * 1e3,
            gbps(client_bytes, floor),
            client.as_secs_f64() * 1e3,
            client.as_secs_f64() / floor.as_secs_f64(),
            server.as_secs_f64() * 1e3,
            gbps(SERVER_SEEDS * 4 * SERVER_D, server),
        );
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_client(&mut c);
    bench_server(&mut c);
    c.final_summary();
    // `cargo test --benches` runs each bench once with `--test`: no summary.
    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        print_ratios();
    }
}
