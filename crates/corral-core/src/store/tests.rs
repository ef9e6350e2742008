//! The store on its own: bound, eviction order, expiry, variants, purges and tag counts.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::*;
use crate::cache_control::ResponseDirectives;
use crate::clock::ManualClock;
use crate::entry::Variant;
use crate::invalidation::Selectors;
use crate::policy::freshness::{Freshness, Timing};
use crate::CachePolicy;

/// An entry with `body` bytes, fresh for `max_age` seconds, carrying `tags`.
pub(crate) fn entry(store: &Store, key: &str, body: usize, max_age: u64, tags: &[&str]) -> Entry {
    entry_varying(store, key, body, max_age, tags, Variant::default())
}

fn entry_varying(
    store: &Store,
    key: &str,
    body: usize,
    max_age: u64,
    tags: &[&str],
    variant: Variant,
) -> Entry {
    let mut headers = HeaderMap::new();
    headers.insert(
        "cache-control",
        HeaderValue::from_str(&format!("max-age={max_age}")).unwrap(),
    );
    let now = store.now();
    let timing = Timing::new(now, now, &headers);
    let cc = ResponseDirectives::from_headers(&headers);
    let freshness = Freshness::compute(
        StatusCode::OK,
        &headers,
        &cc,
        &timing,
        &CachePolicy::default(),
    );
    Entry::new(
        key_ref(key),
        StatusCode::OK,
        &headers,
        &vec![b'x'; body],
        timing,
        freshness,
        tags,
        variant,
        store.purge_seq(),
        Duration::ZERO,
    )
}

fn store(max_bytes: u64) -> Store {
    store_on_a_manual_clock(max_bytes).0
}

/// A store whose time moves only when the test advances the clock.
fn store_on_a_manual_clock(max_bytes: u64) -> (Store, Arc<ManualClock>) {
    let clock = ManualClock::starting_now();
    let config = StoreConfig {
        max_bytes,
        ..StoreConfig::default()
    };
    (Store::with_clock(config, clock.clone()), clock)
}

/// A key the test spells out (`G|host|path`).
fn key_ref(encoded: &str) -> KeyRef<'_> {
    KeyRef::parse(encoded).unwrap_or_else(|| panic!("not a key: {encoded:?}"))
}

fn found(store: &Store, key: &str) -> bool {
    matches!(
        store.lookup(key_ref(key), &HeaderMap::new()),
        Lookup::Found(_)
    )
}

/// A hard purge of `selectors`.
fn purge(s: &Store, selectors: Selectors) -> PurgeOutcome {
    s.purge(&Purge::new(selectors, Mode::Hard))
}

fn purge_tag(s: &Store, tag: &str) -> PurgeOutcome {
    s.purge(&Purge::hard().tag(tag))
}

fn key(i: usize) -> String {
    format!("G|h|/k/{i}")
}

#[test]
fn the_bound_holds_and_counts_add_up() {
    let s = store(64 * 1024);
    let per = entry(&s, &key(999), 1000, 60, &[]).size() as u64;
    for i in 0..1000 {
        s.insert(entry(&s, &key(i), 1000, 60, &["all"]), 4);
        assert!(s.weighted_size() <= 64 * 1024, "{}", s.weighted_size());
    }
    let kept = (0..1000).filter(|&i| found(&s, &key(i))).count() as u64;
    assert_eq!(kept, s.entry_count());
    assert!(kept >= 64 * 1024 / (per + 16) - 2, "kept {kept}");
    assert!(kept * per <= 64 * 1024);
    let covered = purge_tag(&s, "all");
    assert_eq!(covered.covered as u64, kept, "tag counts follow evictions");
}

#[test]
fn a_scan_of_one_off_keys_does_not_flush_the_popular_ones() {
    let s = store(256 * 1024);
    let per = entry(&s, &key(0), 1000, 60, &[]).size() as u64;
    let full = (256 * 1024 / per) as usize;
    for i in 0..full {
        s.insert(entry(&s, &key(i), 1000, 60, &[]), 4);
    }
    // A few popular keys among them, asked for 8 times each. Few, so that the odds of a
    // one-off key's four sketch counters each sharing one with a popular key (a count-min
    // sketch over-counts, never under-counts) stay negligible: ~1e-4 over the whole crawl.
    let hot = 16;
    for _ in 0..8 {
        for i in 0..hot {
            assert!(found(&s, &key(i)));
        }
    }
    // A crawl: a thousand keys, each asked for once (a miss, then stored).
    for i in 10_000..11_000 {
        assert!(!found(&s, &key(i)));
        s.insert(entry(&s, &key(i), 1000, 60, &[]), 4);
    }
    let kept = (0..hot).filter(|&i| found(&s, &key(i))).count();
    assert_eq!(kept, hot, "the popular keys outrank one-off ones");
    assert!(
        s.admissions_refused() > 0,
        "newcomers turned away for a popular key are counted"
    );
    assert!(s.weighted_size() <= 256 * 1024);
    let newest = (10_000..11_000).filter(|&i| found(&s, &key(i))).count();
    assert!(
        newest > 0,
        "one-off keys still fill the room the popular ones leave"
    );
}

#[test]
fn a_referenced_entry_survives_a_scan() {
    let s = store(40 * 1024);
    s.insert(entry(&s, "G|h|/hot", 1000, 60, &[]), 4);
    for i in 0..2000 {
        assert!(found(&s, "G|h|/hot"), "evicted at {i}");
        s.insert(entry(&s, &key(i), 1000, 60, &[]), 4);
    }
}

#[test]
fn an_entry_larger_than_the_bound_is_not_stored() {
    let s = store(4096);
    s.insert(entry(&s, "G|h|/big", 8192, 60, &["t"]), 4);
    assert!(!found(&s, "G|h|/big"));
    assert_eq!((s.entry_count(), s.weighted_size()), (0, 0));
}

#[test]
fn expired_entries_are_invisible_and_swept() {
    let (s, clock) = store_on_a_manual_clock(1 << 20);
    s.insert(entry(&s, "G|h|/gone", 10, 0, &["t"]), 4);
    s.insert(entry(&s, "G|h|/kept", 10, 60, &["t"]), 4);
    assert!(!found(&s, "G|h|/gone"));
    assert_eq!(s.entry_count(), 2);
    clock.advance(Duration::from_secs(2));
    s.run_pending_tasks();
    assert_eq!(s.entry_count(), 1);
    assert!(found(&s, "G|h|/kept"));
    let kept = purge_tag(&s, "t");
    assert_eq!(kept.covered, 1);
}

#[test]
fn variants_replace_their_own_and_keep_the_others() {
    let s = store(1 << 20);
    let lang = HeaderName::from_static("accept-language");
    let mut vary = HeaderMap::new();
    vary.insert("vary", HeaderValue::from_static("accept-language"));
    let req = |l: &str| {
        let mut h = HeaderMap::new();
        h.insert(lang.clone(), HeaderValue::from_str(l).unwrap());
        h
    };
    for (l, n) in [("en", 1), ("fr", 2), ("en", 3)] {
        let v = Variant::of(&req(l), &vary, &[]);
        s.insert(entry_varying(&s, "G|h|/v", n, 60, &[], v), 4);
    }
    let body = |l: &str| match s.lookup(key_ref("G|h|/v"), &req(l)) {
        Lookup::Found(e) => e.body_bytes().len(),
        other => panic!("{other:?}"),
    };
    assert_eq!((body("en"), body("fr")), (3, 2));
    assert!(matches!(
        s.lookup(key_ref("G|h|/v"), &req("de")),
        Lookup::VaryMiss
    ));
    assert_eq!(s.entry_count(), 1);
    let covered = s.purge(&Purge::hard().url("/v"));
    assert_eq!(covered.covered, 2);
    assert_eq!(s.reclaim(), 2);
    assert_eq!((s.entry_count(), s.weighted_size()), (0, 0));
}

#[test]
fn remove_and_reclaim_give_the_bytes_back() {
    let s = store(1 << 20);
    for i in 0..100 {
        s.insert(
            entry(
                &s,
                &key(i),
                100,
                60,
                &[if i % 2 == 0 { "even" } else { "odd" }],
            ),
            4,
        );
    }
    s.remove(key_ref(&key(1)));
    assert!(!found(&s, &key(1)));
    purge_tag(&s, "even");
    assert!(!found(&s, &key(0)) && found(&s, &key(3)));
    assert_eq!(s.reclaim(), 49); // key 0 went at the lookup above
    assert_eq!(s.entry_count(), 49);
    assert_eq!(s.tag_counts.len(), 1, "a tag no entry carries is forgotten");
    assert_eq!(s.tag_counts.get("odd"), 49);
    let left: usize = (3..100)
        .step_by(2)
        .map(|i| entry(&s, &key(i), 100, 60, &["odd"]).size())
        .sum();
    assert_eq!(s.weighted_size(), left as u64);
}

#[test]
fn concurrent_writers_keep_the_accounting_exact() {
    let s = Arc::new(store(256 * 1024));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..5000 {
                    let k = key((i * 7 + t) % 3000);
                    s.insert(entry(&s, &k, 200, 60, &["c"]), 4);
                    found(&s, &key(i % 3000));
                    if i % 97 == 0 {
                        s.remove(key_ref(&k));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut count = 0;
    let mut bytes = 0;
    s.table.for_each(
        |k, variants| {
            count += 1;
            assert!(variants.iter().all(|e| e.has_key(k)));
            bytes += variants.iter().map(|e| e.size()).sum::<usize>();
        },
        &mut || {},
    );
    assert_eq!((count, bytes as u64), (s.entry_count(), s.weighted_size()));
    assert!(s.weighted_size() <= 256 * 1024);
    let covered = purge_tag(&s, "c");
    assert_eq!(covered.covered as u64, s.entry_count());
}

#[test]
fn the_expiry_sweep_goes_round_in_bounded_steps() {
    let (s, clock) = store_on_a_manual_clock(16 << 20);
    for i in 0..2000 {
        let max_age = if i % 2 == 0 { 0 } else { 60 };
        s.insert(entry(&s, &key(i), 10, max_age, &["t"]), 4);
    }
    clock.advance(Duration::from_secs(2));
    let mut swept = 0;
    let mut steps = 0;
    while swept < 1000 {
        let n = s.sweep_expired(100);
        assert!(n <= 100, "a step looks at 100 slots at most: {n}");
        swept += n;
        steps += 1;
        assert!(steps < 100, "one lap is ~2,064 slot visits: {swept} swept");
    }
    assert_eq!(swept, 1000);
    assert_eq!(s.entry_count(), 1000);
    assert!((1..2000).step_by(2).all(|i| found(&s, &key(i))));
    assert_eq!(s.sweep_expired(5000), 0);
}

fn purge_url(s: &Store, url: &str) -> PurgeOutcome {
    purge(
        s,
        Selectors {
            urls: vec![url.to_string()],
            ..Default::default()
        },
    )
}

#[test]
fn url_purges_count_by_lookup_and_by_scan_alike() {
    for hosts in [3, MAX_HOSTS + 5] {
        let s = store(64 << 20);
        for h in 0..hosts {
            s.insert(entry(&s, &format!("G|h{h}:8080|/p?a=1"), 10, 60, &[]), 4);
            s.insert(entry(&s, &format!("G|h{h}:8080|/q"), 10, 60, &[]), 4);
        }
        assert_eq!(s.hosts.read().is_some(), hosts <= MAX_HOSTS);
        assert_eq!(purge_url(&s, "/nothing").covered, 0);
        assert_eq!(purge_url(&s, "http://h1:8080/q").covered, 1);
        assert_eq!(
            purge_url(&s, "http://H2:8080/q").covered,
            1,
            "hosts are case-blind"
        );
        assert_eq!(purge_url(&s, "/p?a=1").covered, hosts, "every host's");
        assert_eq!(
            purge_url(&s, "/p?a=1").covered,
            hosts,
            "still stored until reclaimed"
        );
        assert!(!found(&s, "G|h0:8080|/p?a=1") && found(&s, "G|h0:8080|/q"));
    }
}

/// Warm-up: what a donor exports, and how a receiver judges what arrives.
mod warmup {
    use super::*;
    use crate::entry::wire;

    #[test]
    fn hottest_ranks_by_requests_within_budgets_and_leaves_out_the_purged() {
        let s = store(1 << 20);
        for (k, asks) in [
            ("G|h|/cold", 1),
            ("G|h|/warm", 3),
            ("G|h|/hot", 6),
            ("G|h|/gone", 9),
        ] {
            s.insert(entry(&s, k, 100, 60, &[k]), 8);
            for _ in 0..asks {
                assert!(found(&s, k));
            }
        }
        purge_tag(&s, "G|h|/gone");
        let keys = |v: Vec<Entry>| {
            v.iter()
                .map(|e| e.key().as_str().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(s.hottest(10, u64::MAX)),
            ["G|h|/hot", "G|h|/warm", "G|h|/cold"]
        );
        assert_eq!(keys(s.hottest(2, u64::MAX)), ["G|h|/hot", "G|h|/warm"]);
        let one = s.hottest(10, u64::MAX)[0].size() as u64;
        assert_eq!(keys(s.hottest(10, one)), ["G|h|/hot"], "the byte budget");
    }

    #[test]
    fn a_warmed_entry_fetched_before_a_purge_applied_here_is_refused() {
        let (donor, _) = store_on_a_manual_clock(1 << 20);
        let (receiver, clock) = store_on_a_manual_clock(1 << 20);
        let before = entry(&donor, "G|h|/a", 10, 60, &["t"]);
        clock.advance(Duration::from_secs(1));
        purge_tag(&receiver, "t");
        clock.advance(Duration::from_secs(1));
        let after_at = receiver.now();
        let warm = |e: &Entry| {
            let mut out = Vec::new();
            wire::encode(e, &mut out);
            let r = wire::decode(&out, wire::Limits::default()).unwrap();
            receiver.insert_warmed(r, Duration::ZERO, 8)
        };
        assert_eq!(warm(&before), Warmed::Purged);
        assert!(
            !found(&receiver, "G|h|/a"),
            "fetched before the purge: refused"
        );
        // The same response fetched after the purge was applied here is stored.
        let donor2 = Store::with_clock(StoreConfig::default(), ManualClock::at(after_at));
        let fresh = entry(&donor2, "G|h|/a", 10, 60, &["t"]);
        assert_eq!(warm(&fresh), Warmed::Stored);
        assert!(found(&receiver, "G|h|/a"));
        // ... unless the clocks may disagree by more than the time between.
        receiver.remove(key_ref("G|h|/a"));
        let mut out = Vec::new();
        wire::encode(&fresh, &mut out);
        let r = wire::decode(&out, wire::Limits::default()).unwrap();
        assert_eq!(
            receiver.insert_warmed(r, Duration::from_secs(2), 8),
            Warmed::Purged
        );
    }

    /// A donor's entry as a record, the way it crosses the wire. A record borrows the buffer
    /// it was decoded from: the test leaks that buffer (a few hundred bytes) to return it.
    fn record(e: &Entry) -> wire::Record<'static> {
        let mut out = Vec::new();
        wire::encode(e, &mut out);
        wire::decode(out.leak(), wire::Limits::default()).unwrap()
    }

    /// After a reset (a gap no log could fill), a re-warm from a live peer takes what that
    /// peer holds valid, though fetched before the reset, yet still refuses what a purge this
    /// replica applied covers; and the reset still judges a fill that was in flight here.
    #[test]
    fn a_rewarm_after_a_reset_is_judged_by_real_purges_only() {
        let (receiver, clock) = store_on_a_manual_clock(1 << 20);
        let donor = Store::with_clock(StoreConfig::default(), clock.clone());
        let at = |e: &Entry| record(e);
        let keep = entry(&donor, "G|h|/keep", 10, 60, &["keep"]);
        let gone = entry(&donor, "G|h|/gone", 10, 60, &["gone"]);
        let soft = entry(&donor, "G|h|/soft", 10, 60, &["soft"]);
        let in_flight = entry(&receiver, "G|h|/local", 10, 60, &["local"]);
        clock.advance(Duration::from_secs(1));
        purge_tag(&receiver, "gone");
        receiver.purge(&Purge::soft().tag("soft"));
        clock.advance(Duration::from_secs(1));
        let reset = receiver.reset().seq;
        assert_eq!(receiver.last_reset(), reset);
        clock.advance(Duration::from_secs(1));
        let w = Duration::ZERO;

        // The rule for a warm-up at start: the reset refuses everything fetched before it.
        assert_eq!(receiver.insert_warmed(at(&keep), w, 8), Warmed::Purged);
        // A re-warm answering that reset: the peer's valid entry is taken and served...
        assert_eq!(
            receiver.insert_rewarmed(at(&keep), w, 8, reset),
            Warmed::Stored
        );
        assert!(found(&receiver, "G|h|/keep"), "re-warmed, and served");
        // ...but what this replica purged itself, hard or soft, stays purged.
        assert_eq!(
            receiver.insert_rewarmed(at(&gone), w, 8, reset),
            Warmed::Purged
        );
        assert_eq!(
            receiver.insert_rewarmed(at(&soft), w, 8, reset),
            Warmed::Purged
        );
        assert!(!found(&receiver, "G|h|/gone") && !found(&receiver, "G|h|/soft"));
        // A local fill whose fetch started before the reset is still covered by it.
        receiver.insert(in_flight, 8);
        assert!(
            !found(&receiver, "G|h|/local"),
            "the reset judges local fills"
        );
        // An allowance reaching back past every purge here changes nothing: only the real
        // purges decide, and none covers /keep.
        receiver.remove(key_ref("G|h|/keep"));
        assert_eq!(
            receiver.insert_rewarmed(at(&keep), Duration::from_secs(5), 8, reset),
            Warmed::Stored,
            "no real purge covers /keep"
        );
        assert_eq!(
            receiver.insert_rewarmed(at(&gone), Duration::from_secs(5), 8, reset),
            Warmed::Purged
        );

        // Purges after the re-warm judge the re-warmed entry on lookup, as any entry.
        purge_tag(&receiver, "keep");
        assert!(!found(&receiver, "G|h|/keep"), "a later purge covers it");
        let keep2 = entry(&donor, "G|h|/keep2", 10, 60, &["keep2"]);
        assert_eq!(
            receiver.insert_rewarmed(at(&keep2), w, 8, reset),
            Warmed::Stored
        );
        // A later reset (another gap) covers it, and refuses what a re-warm answering the
        // earlier one still carries: that donor's snapshot may predate what it stands in for.
        clock.advance(Duration::from_secs(1));
        let later = receiver.reset().seq;
        assert!(!found(&receiver, "G|h|/keep2"), "the later reset covers it");
        assert_eq!(
            receiver.insert_rewarmed(at(&keep2), w, 8, reset),
            Warmed::Purged
        );
        assert_eq!(
            receiver.insert_rewarmed(at(&keep2), w, 8, later),
            Warmed::Stored
        );
        // A real purge of everything is judged like any real purge: re-warming cannot undo it.
        clock.advance(Duration::from_secs(1));
        receiver.purge(&Purge::hard().all());
        receiver.remove(key_ref("G|h|/keep2"));
        assert_eq!(
            receiver.insert_rewarmed(at(&keep2), w, 8, later),
            Warmed::Purged
        );
    }
}
