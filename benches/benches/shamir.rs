//! Shamir sharing of one 32-byte secret (an `s_sk` or a seed `b`): what each
//! client pays per neighbour set in ShareKeys, and what the server pays per
//! secret in Unmasking, with and without reusing the holder set's basis.
//!
//! Target (shared/DESIGN.md): split 100 ways plus rebuild from 50 shares in
//! under 50 microseconds.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tessera_aggregation::shamir::{self, LagrangeBasis, Share};

const HOLDERS: u32 = 100;
const THRESHOLD: usize = 50;

fn bench_shamir(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0x5eca);
    let secret = [0xa5u8; 32];
    let xs: Vec<u32> = (1..=HOLDERS).collect();

    c.bench_function("share one 32-byte secret 100 ways (t = 50)", |b| {
        b.iter(|| shamir::split(black_box(&secret), THRESHOLD, black_box(&xs), &mut rng).unwrap())
    });

    // Every other holder answers, as after scattered dropouts.
    let shares = shamir::split(&secret, THRESHOLD, &xs, &mut rng).unwrap();
    let answered: Vec<&Share> = shares.iter().step_by(2).collect();
    assert_eq!(answered.len(), THRESHOLD);
    assert_eq!(shamir::reconstruct(&answered).unwrap(), secret);

    c.bench_function(
        "rebuild from 50 shares (including LagrangeBasis::new)",
        |b| b.iter(|| shamir::reconstruct(black_box(&answered)).unwrap()),
    );

    let answered_xs: Vec<u32> = answered.iter().map(|s| s.x()).collect();
    let basis = LagrangeBasis::new(&answered_xs).unwrap();
    c.bench_function("rebuild with a precomputed basis", |b| {
        b.iter(|| basis.reconstruct(black_box(&answered)).unwrap())
    });

    c.bench_function("LagrangeBasis::new for 50 holders", |b| {
        b.iter(|| LagrangeBasis::new(black_box(&answered_xs)).unwrap())
    });
}

criterion_group!(benches, bench_shamir);
criterion_main!(benches);
