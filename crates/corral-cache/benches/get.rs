//! `get` on a hit: corral-cache against moka (the store underneath it).
//!
//! `cargo bench -p corral-cache --bench get -- --warm-up-time 1 --measurement-time 3`

use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn get_hit(c: &mut Criterion) {
    const N: u64 = 10_000;
    let ours: corral_cache::Cache<u64, String> = corral_cache::Cache::builder("bench")
        .max_entries(100_000)
        .build()
        .unwrap();
    let tagged: corral_cache::Cache<u64, String> = corral_cache::Cache::builder("bench-tagged")
        .max_entries(100_000)
        .tags(|k, _| vec![format!("t{}", k % 100)])
        .build()
        .unwrap();
    let moka: moka::sync::Cache<u64, String> = moka::sync::Cache::new(100_000);
    // moka with a per-entry expiry policy and Arc'd values, as corral-cache configures it.
    struct Ttl;
    impl moka::Expiry<u64, std::sync::Arc<String>> for Ttl {
        fn expire_after_create(
            &self,
            _: &u64,
            _: &std::sync::Arc<String>,
            _: std::time::Instant,
        ) -> Option<std::time::Duration> {
            Some(std::time::Duration::from_secs(3600))
        }
    }
    let moka_expiry: moka::sync::Cache<u64, std::sync::Arc<String>> = moka::sync::Cache::builder()
        .max_capacity(100_000)
        .expire_after(Ttl)
        .build();
    for k in 0..N {
        ours.insert(k, format!("value {k}"));
        tagged.insert(k, format!("value {k}"));
        moka.insert(k, format!("value {k}"));
        moka_expiry.insert(k, std::sync::Arc::new(format!("value {k}")));
    }
    tagged.invalidate_tag("unrelated"); // a tag mark exists: lookups check marks
    let mut g = c.benchmark_group("get_hit");
    let mut k = 0u64;
    g.bench_function("moka", |b| {
        b.iter(|| {
            k = (k + 7) % N;
            black_box(moka.get(&k))
        })
    });
    g.bench_function("moka_expiry_arc", |b| {
        b.iter(|| {
            k = (k + 7) % N;
            black_box(moka_expiry.get(&k).map(|v| (*v).clone()))
        })
    });
    g.bench_function("corral_cache", |b| {
        b.iter(|| {
            k = (k + 7) % N;
            black_box(ours.get(&k))
        })
    });
    g.bench_function("corral_cache_tagged", |b| {
        b.iter(|| {
            k = (k + 7) % N;
            black_box(tagged.get(&k))
        })
    });
    g.finish();
}

criterion_group!(benches, get_hit);
criterion_main!(benches);
