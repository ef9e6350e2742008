//! The hit path's pieces: key building, Cache-Control parsing, the freshness decision, and a
//! store lookup.

use std::time::{Duration, SystemTime};

use corral_core::cache_control::{RequestDirectives, ResponseDirectives};
use corral_core::entry::{Entry, Variant};
use corral_core::key::{primary_key, KeyRef, MethodClass, NamePattern, QueryPolicy, Scheme};
use corral_core::policy::freshness::{self, Freshness, Timing};
use corral_core::store::{Store, StoreConfig};
use corral_core::CachePolicy;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, StatusCode};

fn entry(store: &Store, key: &str, headers: HeaderMap) -> Entry {
    let now = SystemTime::now();
    let timing = Timing::new(now, now, &headers);
    let cc = ResponseDirectives::from_headers(&headers);
    let policy = CachePolicy::default();
    let fr = Freshness::compute(StatusCode::OK, &headers, &cc, &timing, &policy);
    Entry::new(
        KeyRef::parse(key).unwrap(),
        StatusCode::OK,
        &headers,
        &[b'x'; 1024],
        timing,
        fr,
        &["t"],
        Variant::default(),
        store.purge_seq(),
        Duration::ZERO,
    )
}

fn benches(c: &mut Criterion) {
    let policy = QueryPolicy {
        ignore: vec![NamePattern::new("utm_*")],
        allow: None,
    };
    c.bench_function("key/plain", |b| {
        b.iter(|| {
            primary_key(
                MethodClass::Get,
                Scheme::Http,
                black_box("api.example.com"),
                black_box("/packages/123"),
                None,
                &policy,
            )
        })
    });
    c.bench_function("key/query", |b| {
        b.iter(|| {
            primary_key(
                MethodClass::Get,
                Scheme::Http,
                black_box("api.example.com"),
                black_box("/search"),
                Some(black_box("q=x&page=2&utm_source=y")),
                &policy,
            )
        })
    });
    let mut h = HeaderMap::new();
    h.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=3600, stale-while-revalidate=60, s-maxage=600"),
    );
    c.bench_function("cache_control/response", |b| {
        b.iter(|| ResponseDirectives::from_headers(black_box(&h)))
    });
    let req = HeaderMap::new();
    c.bench_function("cache_control/request_empty", |b| {
        b.iter(|| RequestDirectives::from_headers(black_box(&req)))
    });

    let store = Store::new(StoreConfig::default());
    let mut resp = HeaderMap::new();
    resp.insert("cache-control", HeaderValue::from_static("max-age=3600"));
    let e = store.insert(entry(&store, "G|h|/a", resp), 8);
    let rd = RequestDirectives::default();
    c.bench_function("freshness/reuse", |b| {
        b.iter(|| {
            let age = e.age(SystemTime::now());
            freshness::reuse(black_box(&e.freshness()), age, &rd, false, true)
        })
    });
    for i in 0..10_000 {
        let mut resp = HeaderMap::new();
        resp.insert("cache-control", HeaderValue::from_static("max-age=3600"));
        let key = format!("G|h|/k/{i}");
        store.insert(entry(&store, &key, resp), 8);
    }
    store.run_pending_tasks();
    c.bench_function("store/lookup_hit", |b| {
        let key = KeyRef::parse("G|h|/k/777").unwrap();
        b.iter(|| store.lookup(black_box(key), &req))
    });
    c.bench_function("store/lookup_miss", |b| {
        let key = KeyRef::parse("G|h|/nope").unwrap();
        b.iter(|| store.lookup(black_box(key), &req))
    });
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
