//! What the server pays to check one advert at AdvertiseKeys: each of its
//! two public keys is tested for low order
//! (`tessera_aggregation::keys::is_low_order`: a comparison with the seven
//! small-order encodings; one X25519 scalar multiplication per key, 59 us,
//! before 2026-12-02) before the advert is stored.
//! The server's round driver handles adverts one after another, so at
//! n clients this is n times the per-advert figure on one core, once per
//! round.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tessera_aggregation::keys::{ClientKeys, is_low_order};

fn bench_adverts(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0xad_7e);
    let keys = ClientKeys::generate(&mut rng).public();
    c.bench_function("low-order test of one public key", |b| {
        b.iter(|| assert!(!is_low_order(black_box(&keys.c_pk))))
    });
    c.bench_function("check one advert's two keys", |b| {
        b.iter(|| {
            assert!(!is_low_order(black_box(&keys.c_pk)));
            assert!(!is_low_order(black_box(&keys.s_pk)));
        })
    });
}

criterion_group!(benches, bench_adverts);
criterion_main!(benches);
