//! Purge cost must not grow with the entries a purge covers: a tag covering 1M entries is
//! purged in (far) less than a millisecond, because the purge only raises a mark.

use std::time::{Duration, SystemTime};

use corral_core::cache_control::ResponseDirectives;
use corral_core::entry::{Entry, Variant};
use corral_core::policy::freshness::{Freshness, Timing};
use corral_core::store::{Lookup, Store, StoreConfig};
use corral_core::{CachePolicy, KeyRef, Purge};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, StatusCode};

fn fill(n: usize) -> Store {
    let store = Store::new(StoreConfig {
        max_bytes: 4 << 30,
        ..Default::default()
    });
    let mut headers = HeaderMap::new();
    headers.insert("cache-control", HeaderValue::from_static("max-age=3600"));
    let now = SystemTime::now();
    let timing = Timing::new(now, now, &headers);
    let cc = ResponseDirectives::from_headers(&headers);
    let fr = Freshness::compute(
        StatusCode::OK,
        &headers,
        &cc,
        &timing,
        &CachePolicy::default(),
    );
    for i in 0..n {
        let key = format!("G|h|/k/{i}");
        let e = Entry::new(
            KeyRef::parse(&key).unwrap(),
            StatusCode::OK,
            &headers,
            b"v",
            timing,
            fr,
            &["hot"],
            Variant::default(),
            store.purge_seq(),
            Duration::ZERO,
        );
        store.insert(e, 4);
    }
    store.run_pending_tasks();
    store
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("purge_tag");
    g.sample_size(20);
    for n in [100_000usize, 1_000_000] {
        let store = fill(n);
        let purge = Purge::hard().tag("hot");
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| store.purge(&purge))
        });
        // After the purge every covered entry is gone on lookup.
        assert!(matches!(
            store.lookup(KeyRef::parse("G|h|/k/1").unwrap(), &HeaderMap::new()),
            Lookup::VaryMiss | Lookup::Miss
        ));
    }
    g.finish();
}

criterion_group!(purge, benches);
criterion_main!(purge);
