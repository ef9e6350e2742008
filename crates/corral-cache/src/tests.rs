//! Unit and property tests of every pattern.

use super::*;
use proptest::prelude::*;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

fn cache() -> Cache<u64, String> {
    Cache::builder("t").max_entries(10_000).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_under_1000_concurrent_callers_is_one_load() {
    let c = cache();
    let loads = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let c = c.clone();
        let loads = loads.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            c.get_with(1, async move {
                loads.fetch_add(1, Ordering::SeqCst);
                // Hold the load open until every caller has arrived.
                gate.notified().await;
                "v".to_string()
            })
            .await
        }));
    }
    // Wait until all 999 others wait on the leader, then let it finish.
    while c.inner.metrics.coalesced.get() < 999 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    gate.notify_one();
    for t in tasks {
        assert_eq!(t.await.unwrap(), "v");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(c.inner.metrics.loads.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_reach_every_waiter_and_are_never_cached() {
    let c = cache();
    let loads = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let c = c.clone();
        let loads = loads.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            c.try_get_with(1, async move {
                loads.fetch_add(1, Ordering::SeqCst);
                gate.notified().await;
                Err::<String, _>("boom".to_string())
            })
            .await
        }));
    }
    while c.inner.metrics.coalesced.get() < 49 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    gate.notify_one();
    for t in tasks {
        assert_eq!(*t.await.unwrap().unwrap_err(), "boom");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(c.get(&1), None);
    // The next call loads again, and a success is cached.
    let v = c
        .try_get_with(1, async { Ok::<_, String>("ok".to_string()) })
        .await
        .unwrap();
    assert_eq!(v, "ok");
    assert_eq!(c.get(&1).as_deref(), Some("ok"));
}

#[tokio::test]
async fn a_cancelled_leader_hands_over_to_a_waiter() {
    let c = cache();
    let leader = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get_with(5, std::future::pending::<String>()).await;
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move { c.get_with(5, async { "w".to_string() }).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    leader.abort();
    assert_eq!(waiter.await.unwrap(), "w");
}

#[tokio::test]
async fn negative_caching_has_its_own_ttl_and_is_off_by_default() {
    let off = cache();
    let r = off
        .try_get_optional_with(1, async { Ok::<_, ()>(None) })
        .await
        .unwrap();
    assert_eq!(r, None);
    assert_eq!(off.get_entry(&1), None, "absence not cached by default");

    let on: Cache<u64, String> = Cache::builder("n")
        .negative_ttl(Duration::from_millis(800))
        .build()
        .unwrap();
    on.try_get_optional_with(1, async { Ok::<_, ()>(None) })
        .await
        .unwrap();
    assert_eq!(on.get_entry(&1), Some(None));
    // A cached absence answers without calling the loader.
    let r = on
        .try_get_optional_with(1, async { panic!("must not load") })
        .await
        .map_err(|_: Arc<()>| ());
    assert_eq!(r, Ok(None));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(on.get_entry(&1), None, "expired after the negative TTL");
}

#[tokio::test]
async fn ttl_expires_entries() {
    let c: Cache<u64, String> = Cache::builder("ttl")
        .time_to_live(Duration::from_millis(500))
        .build()
        .unwrap();
    c.insert(1, "a".into());
    assert!(c.get(&1).is_some());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(c.get(&1), None);
}

#[test]
fn versioned_writes_refuse_older_versions_even_after_invalidation() {
    let c = cache();
    assert!(c.insert_versioned(1, "v2".into(), 2));
    assert!(!c.insert_versioned(1, "v1".into(), 1));
    assert!(!c.insert_versioned(1, "v2'".into(), 2));
    assert_eq!(c.get(&1).as_deref(), Some("v2"));
    c.invalidate(&1);
    assert!(
        !c.insert_versioned(1, "v1".into(), 1),
        "a slow writer arriving after the invalidation must not resurrect an old version"
    );
    assert!(c.insert_versioned(1, "v3".into(), 3));
    assert_eq!(c.version_of(&1), Some(3));
}

proptest! {
    #[test]
    fn versioned_writes_never_regress(writes in proptest::collection::vec((0u64..4, 1u64..50), 1..200)) {
        let c = cache();
        let mut best: HashMap<u64, u64> = HashMap::new();
        for (k, ver) in writes {
            let stored = c.insert_versioned(k, ver.to_string(), ver);
            let b = best.entry(k).or_insert(0);
            prop_assert_eq!(stored, ver > *b);
            *b = (*b).max(ver);
            prop_assert_eq!(c.get(&k), Some(b.to_string()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_versioned_writers_end_on_the_highest_version() {
    let c = cache();
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for v in (1..=200u64).filter(|v| v % 8 == w) {
                c.insert_versioned(9, v.to_string(), v);
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(c.get(&9).as_deref(), Some("200"));
}

#[tokio::test]
async fn write_through_writes_the_source_then_the_cache() {
    let c = cache();
    let v = c
        .write_through(1, "new".to_string(), async { Ok::<_, ()>(7) })
        .await
        .unwrap();
    assert_eq!(v, 7);
    assert_eq!(c.get(&1).as_deref(), Some("new"));
    assert_eq!(c.version_of(&1), Some(7));
    // A source failure leaves nothing cached.
    c.insert(2, "old".into());
    let r = c
        .write_through(2, "x".to_string(), async { Err::<u64, _>("db") })
        .await;
    assert!(r.is_err());
    assert_eq!(c.get(&2), None);
}

/// Starts `c.get_with(1, ..)` in a task and returns once its load has begun: the load then
/// waits, as a slow read of the source would, until the returned sender fires, and answers
/// `value`. The task's handle (what `get_with` returned) and that sender.
async fn held_load(
    c: &Cache<u64, String>,
    value: &'static str,
) -> (
    tokio::task::JoinHandle<String>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let c = c.clone();
    let loader = tokio::spawn(async move {
        c.get_with(1, async move {
            started_tx.send(()).unwrap();
            rx.await.unwrap();
            value.to_string()
        })
        .await
    });
    started.await.unwrap();
    (loader, tx)
}

#[tokio::test]
async fn a_load_racing_an_invalidation_is_not_cached() {
    let c = cache();
    let (loader, tx) = held_load(&c, "read before the write").await;
    c.invalidate(&1); // the row changed while the load was reading it
    tx.send(()).unwrap();
    assert_eq!(loader.await.unwrap(), "read before the write");
    assert_eq!(c.get(&1), None, "the possibly stale load was not cached");
}

#[tokio::test]
async fn a_load_never_overwrites_a_newer_write() {
    let c = cache();
    let (loader, tx) = held_load(&c, "old").await;
    c.insert_versioned(1, "new".into(), 5);
    tx.send(()).unwrap();
    loader.await.unwrap();
    assert_eq!(c.get(&1).as_deref(), Some("new"));
}

#[test]
fn tags_and_namespace_bump() {
    let c: Cache<u64, String> = Cache::builder("tags")
        .tags(|k, _| vec![format!("k{}", k % 2)])
        .build()
        .unwrap();
    for k in 0..6 {
        c.insert(k, k.to_string());
    }
    c.insert_tagged(10, "x".into(), vec!["other".into()]);
    c.invalidate_tag("k0");
    assert_eq!(c.get(&0), None);
    assert_eq!(c.get(&2), None);
    assert_eq!(c.get(&1).as_deref(), Some("1"));
    // Entries stored after the purge are fine.
    c.insert(4, "4".into());
    assert_eq!(c.get(&4).as_deref(), Some("4"));
    let v0 = c.namespace_version();
    assert_eq!(c.bump_namespace(), v0 + 1);
    assert_eq!(c.get(&1), None);
    assert_eq!(c.get(&10), None);
    c.insert(1, "again".into());
    assert_eq!(c.get(&1).as_deref(), Some("again"));
}

#[tokio::test]
async fn soft_invalidation_serves_stale_while_refreshing() {
    let source = Arc::new(parking_lot::Mutex::new("v1".to_string()));
    let s = source.clone();
    let c: Cache<u64, String> = Cache::builder("soft")
        .loader(move |_k| {
            let s = s.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                Ok::<_, BoxError>(Some(s.lock().clone()))
            }
        })
        .tags(|_, _| vec!["all-prices".into()])
        .build()
        .unwrap();
    assert_eq!(c.get_or_load(1).await.unwrap().as_deref(), Some("v1"));
    *source.lock() = "v2".into();
    c.soft_invalidate_tag("all-prices");
    // Served stale at once, refreshed in the background.
    assert_eq!(c.get(&1).as_deref(), Some("v1"));
    for _ in 0..200 {
        if c.get(&1).as_deref() == Some("v2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.get(&1).as_deref(), Some("v2"));
    // Without a loader, a soft-invalidated entry is a miss.
    let plain = cache();
    plain.insert(1, "x".into());
    plain.soft_invalidate(&1);
    assert_eq!(plain.get(&1), None);
}

#[tokio::test]
async fn refresh_ahead_keeps_a_hot_key_from_expiring() {
    let loads = Arc::new(AtomicUsize::new(0));
    let l = loads.clone();
    let c: Cache<u64, usize> = Cache::builder("ahead")
        .time_to_live(Duration::from_secs(5))
        .refresh_ahead(Duration::from_millis(4900))
        .loader(move |_k| {
            let n = l.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok::<_, BoxError>(Some(n)) }
        })
        .build()
        .unwrap();
    assert_eq!(c.get_or_load(1).await.unwrap(), Some(1));
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Within the window: served at once, reloaded in the background.
    assert_eq!(c.get(&1), Some(1));
    for _ in 0..200 {
        if c.get(&1).is_some_and(|v| v >= 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        c.get(&1).is_some_and(|v| v >= 2),
        "reloaded in the background"
    );
}

#[tokio::test]
async fn xfetch_refreshes_early_with_a_large_beta() {
    let loads = Arc::new(AtomicUsize::new(0));
    let l = loads.clone();
    let c: Cache<u64, usize> = Cache::builder("xfetch")
        .time_to_live(Duration::from_secs(60))
        .xfetch_beta(1e9) // delta * beta dwarfs the TTL: every read refreshes
        .loader(move |_k| {
            let n = l.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok::<_, BoxError>(Some(n))
            }
        })
        .build()
        .unwrap();
    c.get_or_load(1).await.unwrap();
    for _ in 0..200 {
        c.get(&1);
        if loads.load(Ordering::SeqCst) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(loads.load(Ordering::SeqCst) >= 2);
    // beta = 0 never refreshes early.
    let l2 = Arc::new(AtomicUsize::new(0));
    let l = l2.clone();
    let c: Cache<u64, usize> = Cache::builder("no-xfetch")
        .loader(move |_k| {
            l.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(Some(0)) }
        })
        .build()
        .unwrap();
    c.get_or_load(1).await.unwrap();
    for _ in 0..100 {
        c.get(&1);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(l2.load(Ordering::SeqCst), 1);
}

#[test]
fn byte_bound_holds() {
    let c: Cache<u64, Vec<u8>> = Cache::builder("bytes")
        .max_bytes(100_000)
        .weigher(|_, v: &Vec<u8>| v.len() as u32)
        .build()
        .unwrap();
    for k in 0..1000 {
        c.insert(k, vec![0; 1000]);
    }
    c.run_pending_tasks();
    assert!(c.weighted_size() <= 100_000, "{}", c.weighted_size());
    assert!(c.entry_count() > 0);
}

#[test]
fn bad_settings_are_named() {
    let e = Cache::<u64, u64>::builder("has space").build().unwrap_err();
    assert_eq!(e.setting, "namespace");
    assert!(e.to_string().contains("has space"));
    let e = Cache::<u64, u64>::builder("ok")
        .time_to_live(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(e.setting, "time_to_live");
    let e = Cache::<u64, u64>::builder("ok")
        .xfetch_beta(f64::NAN)
        .build()
        .unwrap_err();
    assert_eq!(e.setting, "xfetch_beta");
    let e = Cache::<u64, u64>::builder("ok")
        .max_bytes(1)
        .max_entries(1)
        .build()
        .unwrap_err();
    assert_eq!(e.setting, "max_bytes/max_entries");
}

#[test]
fn remote_selectors_apply_by_path_tag_and_prefix() {
    let c: Cache<String, u32> = Cache::builder("prices").build().unwrap();
    c.insert("pkg 1/a".into(), 1);
    c.insert("pkg-2".into(), 2);
    c.insert("other-3".into(), 3);
    assert_eq!(c.wire_path(&"pkg 1/a".to_string()), "/prices/pkg%201%2Fa");
    assert_eq!(
        c.storage_key(&"pkg-2".to_string()),
        "prices:v1:pkg-2".to_string()
    );
    c.apply_local(
        &Purge::hard()
            .url("/prices/pkg%201%2Fa")
            .url("/elsewhere/pkg-2"),
    );
    assert_eq!(c.get(&"pkg 1/a".to_string()), None);
    assert_eq!(c.get(&"pkg-2".to_string()), Some(2));
    c.apply_local(&Purge::hard().prefix("/prices/pkg"));
    assert_eq!(c.get(&"pkg-2".to_string()), None);
    assert_eq!(c.get(&"other-3".to_string()), Some(3));
    c.apply_local(&Purge::hard().prefix("/"));
    assert_eq!(c.get(&"other-3".to_string()), None);
}

#[derive(Default)]
struct Recorder(parking_lot::Mutex<Vec<Purge>>);
impl Publish for Recorder {
    fn publish(&self, purge: Purge) {
        self.0.lock().push(purge);
    }
}

#[test]
fn invalidations_are_published_once_and_remote_ones_never() {
    let c = cache();
    let r = Arc::new(Recorder::default());
    c.attach_publisher(r.clone());
    c.invalidate(&1);
    c.soft_invalidate_tag("x");
    c.bump_namespace();
    c.apply_local(&Purge::hard().all());
    let got = r.0.lock().clone();
    assert_eq!(
        got,
        [
            Purge::hard().url("/t/1"),
            Purge::soft().tag("x"),
            Purge::hard().prefix("/t/")
        ]
    );
}

#[tokio::test]
async fn verifier_finds_and_fixes_a_drifted_entry() {
    let source: Arc<parking_lot::Mutex<HashMap<u64, String>>> = Arc::default();
    for k in 0..20 {
        source.lock().insert(k, format!("v{k}"));
    }
    let s = source.clone();
    let metrics = LibraryMetrics::default();
    let c: Cache<u64, String> = Cache::builder("verify")
        .metrics(&metrics)
        .loader(move |k| {
            let v = s.lock().get(&k).cloned();
            async move { Ok::<_, BoxError>(v) }
        })
        .build()
        .unwrap();
    c.warm(0..20, warming::Warm::default()).await;
    assert_eq!(c.verify_sample(100).await.drifted, 0);
    // A write that bypassed the cache: entry 7 drifts.
    source.lock().insert(7, "changed".into());
    let report = c.verify_sample(100).await;
    assert_eq!(report.checked, 20);
    assert_eq!(report.drifted, 1);
    assert!((report.drift_ratio() - 0.05).abs() < 1e-9);
    assert_eq!(c.get(&7), None, "the drifted entry was invalidated");
    assert_eq!(c.get_or_load(7).await.unwrap().as_deref(), Some("changed"));
    let label = metrics::CacheLabel {
        cache: "verify".into(),
    };
    assert_eq!(metrics.verifier_drifted.get_or_create(&label).get(), 1);
}

#[tokio::test]
async fn warming_loads_every_key_and_gates_readiness() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let c: Cache<u64, u64> = Cache::builder("warm")
        .loader(move |k| {
            let g = g.clone();
            async move {
                g.acquire().await.unwrap().forget();
                if k == 13 {
                    Err::<Option<u64>, BoxError>("unlucky".into())
                } else if k == 14 {
                    Ok(None)
                } else {
                    Ok(Some(k * 10))
                }
            }
        })
        .build()
        .unwrap();
    assert!(c.is_ready());
    let w = {
        let c = c.clone();
        tokio::spawn(async move {
            c.warm(
                0..20,
                warming::Warm {
                    concurrency: 3,
                    jitter: Duration::from_millis(10),
                },
            )
            .await
        })
    };
    // The source is held closed: warming cannot finish, so the cache is not ready.
    while c.is_ready() {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!c.is_ready(), "not ready while warming");
    gate.add_permits(1000);
    let report = w.await.unwrap();
    assert!(c.is_ready());
    assert_eq!(
        report,
        warming::WarmReport {
            loaded: 18,
            not_found: 1,
            failed: 1
        }
    );
    assert!(c.contains_key(&5));
}

#[tokio::test]
async fn write_behind_flushes_everything_on_shutdown_and_bounds_its_queue() {
    use write_behind::{WriteBehind, WriteError};
    let c = cache();
    let flushed: Arc<parking_lot::Mutex<Vec<(u64, String)>>> = Arc::default();
    let batches = Arc::new(AtomicUsize::new(0));
    let (f, b) = (flushed.clone(), batches.clone());
    let open = Arc::new(tokio::sync::Semaphore::new(0));
    let o = open.clone();
    let wb = WriteBehind::builder()
        .capacity(10)
        .batch(4)
        .flush_interval(Duration::from_secs(3600))
        .build(c.clone(), move |batch: Vec<(u64, String)>| {
            let (f, b, o) = (f.clone(), b.clone(), o.clone());
            async move {
                // The source is "slow" until the test opens it.
                o.acquire().await.unwrap().forget();
                assert!(batch.len() <= 4);
                b.fetch_add(1, Ordering::SeqCst);
                f.lock().extend(batch);
                Ok::<_, BoxError>(())
            }
        });
    for k in 0..10 {
        wb.try_write(k, k.to_string()).unwrap();
        assert_eq!(c.get(&k), Some(k.to_string()), "readable at once");
    }
    // The flusher holds one batch of 4 (waiting on the source); 6 queued; bound is 10.
    assert_eq!(wb.try_write(99, "x".into()), Err(WriteError::Full));
    open.add_permits(1000);
    wb.shutdown().await;
    let mut got = flushed.lock().clone();
    got.sort();
    assert_eq!(got, (0..10).map(|k| (k, k.to_string())).collect::<Vec<_>>());
    assert!(batches.load(Ordering::SeqCst) >= 3);
    assert_eq!(wb.depth(), 0);
    assert_eq!(wb.try_write(1, "late".into()), Err(WriteError::Closed));
}

#[tokio::test]
async fn write_behind_retries_then_counts_failures() {
    use write_behind::WriteBehind;
    let metrics = LibraryMetrics::default();
    let c: Cache<u64, String> = Cache::builder("wbfail").metrics(&metrics).build().unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let wb = WriteBehind::builder()
        .retries(2, Duration::from_millis(1))
        .flush_interval(Duration::from_millis(5))
        .build(c, move |_b: Vec<(u64, String)>| {
            let n = a.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err::<(), BoxError>("flaky".into())
                } else {
                    Ok(())
                }
            }
        });
    wb.write(1, "a".into()).await.unwrap();
    wb.shutdown().await;
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let label = metrics::CacheLabel {
        cache: "wbfail".into(),
    };
    assert_eq!(metrics.write_behind_flushed.get_or_create(&label).get(), 1);
    assert_eq!(metrics.write_behind_failed.get_or_create(&label).get(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn write_behind_never_loses_an_accepted_write(n in 1usize..200, cap in 1usize..50, batch in 1usize..20) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let c = cache();
            let flushed: Arc<parking_lot::Mutex<Vec<u64>>> = Arc::default();
            let f = flushed.clone();
            let wb = write_behind::WriteBehind::builder()
                .capacity(cap)
                .batch(batch)
                .flush_interval(Duration::from_millis(1))
                .build(c, move |b: Vec<(u64, String)>| {
                    let f = f.clone();
                    async move {
                        f.lock().extend(b.into_iter().map(|(k, _)| k));
                        Ok::<_, BoxError>(())
                    }
                });
            for k in 0..n as u64 {
                wb.write(k, String::new()).await.unwrap();
                assert!(wb.depth() <= cap);
            }
            wb.shutdown().await;
            let mut got = flushed.lock().clone();
            got.sort();
            assert_eq!(got, (0..n as u64).collect::<Vec<_>>());
        });
    }
}

#[test]
fn metrics_register_under_corral_library() {
    let mut r = prometheus_client::registry::Registry::default();
    let m = LibraryMetrics::register(&mut r);
    let c: Cache<u64, u64> = Cache::builder("m").metrics(&m).build().unwrap();
    c.insert(1, 1);
    c.get(&1);
    c.get(&2);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
    assert!(
        text.contains("corral_library_hits_total{cache=\"m\"} 1"),
        "{text}"
    );
    assert!(text.contains("corral_library_misses_total{cache=\"m\"} 1"));
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(line.starts_with("corral_library_"), "{line}");
    }
}

#[test]
fn old_tag_marks_are_pruned_and_recent_ones_still_apply() {
    let c: Cache<u64, String> = Cache::builder("marks")
        .time_to_live(Duration::from_millis(50))
        .build()
        .unwrap();
    for i in 0..MARKS_PRUNE_AT {
        c.invalidate_tag(&format!("t{i}"));
    }
    std::thread::sleep(Duration::from_millis(60));
    c.insert_tagged(1, "x".into(), vec!["fresh".into()]);
    c.invalidate_tag("fresh");
    c.invalidate_tag("another");
    assert!(c.inner.tag_marks.read().len() <= 2);
    assert_eq!(c.get(&1), None, "the recent mark still applies");
}

#[tokio::test]
async fn time_to_idle_drops_entries_not_read() {
    let c: Cache<u64, String> = Cache::builder("tti")
        .time_to_idle(Duration::from_secs(1))
        .build()
        .unwrap();
    c.insert(1, "a".into());
    c.insert(2, "b".into());
    // Read key 1 every 50 ms for 1.5 s (a generous margin under the 1 s idle time).
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(c.get(&1).is_some(), "read often: kept");
    }
    assert_eq!(
        c.get(&2),
        None,
        "not read for longer than the idle time: dropped"
    );
}

#[tokio::test]
async fn write_behind_reports_depth_and_age() {
    let metrics = LibraryMetrics::default();
    let c: Cache<u64, String> = Cache::builder("wbm").metrics(&metrics).build().unwrap();
    let wb = write_behind::WriteBehind::builder()
        .batch(100)
        .flush_interval(Duration::from_secs(3600))
        .build(c, |_b: Vec<(u64, String)>| async { Ok::<_, BoxError>(()) });
    for k in 0..3 {
        wb.write(k, String::new()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    wb.write(3, String::new()).await.unwrap();
    let label = metrics::CacheLabel {
        cache: "wbm".into(),
    };
    assert_eq!(metrics.write_behind_depth.get_or_create(&label).get(), 4);
    assert!(
        metrics
            .write_behind_oldest_seconds
            .get_or_create(&label)
            .get()
            >= 0.02
    );
    wb.shutdown().await;
    assert_eq!(metrics.write_behind_depth.get_or_create(&label).get(), 0);
    assert_eq!(metrics.write_behind_flushed.get_or_create(&label).get(), 4);
}

#[tokio::test]
async fn a_load_racing_a_soft_invalidation_is_cached_stale() {
    let c = cache();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let loader = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get_with(1, async move {
                started_tx.send(()).unwrap();
                rx.await.unwrap();
                "maybe old".to_string()
            })
            .await
        })
    };
    started.await.unwrap();
    c.soft_invalidate(&1);
    tx.send(()).unwrap();
    loader.await.unwrap();
    assert!(!c.contains_key(&1), "cached, but stale");
    // Without a loader a stale entry is a miss: the next get_with reloads.
    assert_eq!(c.get_with(1, async { "new".to_string() }).await, "new");
    assert!(c.contains_key(&1));
}
