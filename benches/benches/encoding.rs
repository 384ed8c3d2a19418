//! The fixed-point encoding and the wire packing of one client's update,
//! at d = 100,000 coordinates.
//!
//! - `encode`: clip, scale and randomized rounding of an `f32` update (C = 1,
//!   f = 16, bits sized for 100 clients, so 24), what each client pays
//!   before masking;
//! - `decode_sum`: the server's decoding of the unmasked sum;
//! - `pack` / `unpack`: the masked vector to and from the wire at 20 bits (a
//!   generic width) and at the encoding's 24 bits.
//!
//! Run with `cargo bench -p tessera-benches --bench encoding`.

use std::hint::black_box;
use std::time::Duration;

use chacha20::ChaCha20Rng;
use criterion::{BenchmarkId, Criterion, Throughput};
use rand_core::SeedableRng;
use tessera_aggregation::packing::{pack, unpack, value_mask};
use tessera_dp::encoding::FixedPoint;

const D: usize = 100_000;
const CLIENTS: u32 = 100;

/// A deterministic update of norm about 2.2, so clipping to C = 1 happens.
fn update() -> Vec<f32> {
    (0..D).map(|i| (i as f32).sin() * 0.01).collect()
}

fn bench_fixed_point(c: &mut Criterion) {
    let fp = FixedPoint::for_clients(CLIENTS, 1.0, 16).expect("format");
    let x = update();
    let mut rng = ChaCha20Rng::from_seed([7; 32]);
    let encoded = fp.encode(&x, &mut rng).expect("finite update");
    let mut g = c.benchmark_group("encoding/fixed_point_d1e5");
    g.throughput(Throughput::Elements(D as u64));
    g.bench_function(BenchmarkId::new("encode", fp.bits), |b| {
        b.iter(|| fp.encode(black_box(&x), &mut rng).expect("finite update"));
    });
    g.bench_function(BenchmarkId::new("decode_sum", fp.bits), |b| {
        b.iter(|| fp.decode_sum(black_box(&encoded.values), CLIENTS));
    });
    g.finish();
}

fn bench_packing(c: &mut Criterion) {
    let mut g = c.benchmark_group("encoding/packing_d1e5");
    g.throughput(Throughput::Elements(D as u64));
    for bits in [20u8, 24] {
        // Masked values are uniform in Z_{2^bits}; any spread of bits will do.
        let values: Vec<u32> = (0..D as u32)
            .map(|i| i.wrapping_mul(0x9E37_79B9) & value_mask(bits))
            .collect();
        let packed = pack(&values, bits);
        g.bench_function(BenchmarkId::new("pack", bits), |b| {
            b.iter(|| pack(black_box(&values), bits));
        });
        g.bench_function(BenchmarkId::new("unpack", bits), |b| {
            b.iter(|| unpack(black_box(&packed), bits, D).expect("canonical"));
        });
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_fixed_point(&mut c);
    bench_packing(&mut c);
    c.final_summary();
}
