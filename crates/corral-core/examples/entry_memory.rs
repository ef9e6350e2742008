//! Resident memory per stored entry, beyond its body: the store alone, no sockets.
//!
//! Builds entries the way the gateway does for a small origin answer (six headers, two tags,
//! a short key) and inserts `N` of them, then prints the growth in resident memory per entry
//! and the bytes charged against the bound per entry. Uses the binary's allocator (mimalloc)
//! so the figure matches the server's.
//!
//! ```sh
//! cargo run --release -p corral-core --example entry_memory -- 500000 16
//! ```

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, SystemTime};

use corral_core::cache_control::ResponseDirectives;
use corral_core::entry::{Entry, Variant};
use corral_core::policy::freshness::{Freshness, Timing};
use corral_core::store::{Store, StoreConfig};
use corral_core::tags::TagPolicy;
use corral_core::CachePolicy;
use http::{HeaderMap, HeaderValue, StatusCode};

/// mimalloc, counting the bytes asked for and the allocations live: RSS minus that is what
/// size-class rounding and fragmentation cost.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_ALLOCS: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        mimalloc::MiMalloc.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
        mimalloc::MiMalloc.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn rss() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .unwrap_or(0)
        * 1024
}

fn response_headers(i: usize, body: usize) -> HeaderMap {
    let mut h = HeaderMap::new();
    let now = httpdate::fmt_http_date(SystemTime::now());
    let set = |h: &mut HeaderMap, n: &'static str, v: String| {
        h.insert(n, HeaderValue::from_str(&v).unwrap());
    };
    set(&mut h, "content-type", "application/octet-stream".into());
    set(&mut h, "content-length", body.to_string());
    set(&mut h, "cache-control", "public, max-age=3600".into());
    set(&mut h, "etag", format!("\"k{i}-{body}\""));
    set(&mut h, "last-modified", now.clone());
    set(&mut h, "date", now);
    set(&mut h, "surrogate-key", format!("key-{i} mem"));
    h
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(500_000);
    let body_len: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let store = Store::new(StoreConfig {
        max_bytes: u64::MAX >> 1,
        ..StoreConfig::default()
    });
    let policy = CachePolicy::default();
    let tags = TagPolicy::default();
    let request = HeaderMap::new();
    let body = vec![b'x'; body_len];
    // CORRAL_MEMORY_VEC=1 keeps the entries in a plain Vec instead: the store's own share is
    // the difference between the two runs.
    let in_vec = std::env::var_os("CORRAL_MEMORY_VEC").is_some();
    let mut kept = Vec::new();
    let before = rss();
    let (bytes0, allocs0) = (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_ALLOCS.load(Ordering::Relaxed),
    );
    for i in 0..n {
        let mut headers = response_headers(i, body_len);
        let parsed = tags.parse(&headers);
        tags.strip(&mut headers);
        let now = SystemTime::now();
        let timing = Timing::new(now, now, &headers);
        let cc = ResponseDirectives::from_headers(&headers);
        let freshness = Freshness::compute(StatusCode::OK, &headers, &cc, &timing, &policy);
        let variant = Variant::of(&request, &headers, &[]);
        let key = format!("G|127.0.0.1:18001|/key/m-{i}?size={body_len}");
        let entry = Entry::new(
            corral_core::KeyRef::parse(&key).unwrap(),
            StatusCode::OK,
            &headers,
            &body,
            timing,
            freshness,
            &parsed.tags,
            variant,
            store.purge_seq(),
            Duration::ZERO,
        );
        if in_vec {
            kept.push(entry);
        } else {
            store.insert(entry, 8);
        }
    }
    store.run_pending_tasks();
    let after = rss();
    let asked = (LIVE_BYTES.load(Ordering::Relaxed) - bytes0) as f64 / n as f64;
    let allocs = (LIVE_ALLOCS.load(Ordering::Relaxed) - allocs0) as f64 / n as f64;
    let per_entry = (after - before) as f64 / n as f64;
    println!(
        "entries {n}  body {body_len} B  rss growth {:.1} MiB  per entry {:.0} B  beyond body {:.0} B  charged {:.0} B  asked {asked:.0} B in {allocs:.1} allocations",
        (after - before) as f64 / (1 << 20) as f64,
        per_entry,
        per_entry - body_len as f64,
        store.weighted_size() as f64 / n as f64,
    );
    drop(kept);
}
