//! The forwarding path with real processes: large bodies stream through with flat memory, a
//! slow client cannot hold the origin's connection past `total_timeout`, and a connection whose
//! response was not read to its end is never reused (issue 20).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;

/// Resident memory of a process, in KiB (`VmRSS`).
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// A raw HTTP/1.1 request on its own connection, so the test decides how fast it reads.
fn request(c: &Corral, path: &str, headers: &str) -> TcpStream {
    send(c, "GET", path, headers)
}

fn send(c: &Corral, method: &str, path: &str, headers: &str) -> TcpStream {
    let mut s = TcpStream::connect(c.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: example.test\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    s
}

/// Reads the whole response (head and body) and returns the body length and the peak RSS of
/// `pid` seen while reading, sampled every MiB.
fn read_all_sampling(mut s: TcpStream, pid: i32) -> (u64, u64) {
    let mut buf = vec![0u8; 256 * 1024];
    let (mut total, mut head, mut peak, mut next_sample) = (0u64, None, 0u64, 0u64);
    let mut first = Vec::new();
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        if head.is_none() {
            first.extend_from_slice(&buf[..n]);
            head = first
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| i as u64 + 4);
        }
        if total >= next_sample {
            peak = peak.max(rss_kib(pid));
            next_sample = total + MIB;
        }
    }
    let head = head.expect("a response head");
    let text = String::from_utf8_lossy(&first[..head as usize]).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "answered {text}");
    (total - head, peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_through_a_miss_with_flat_memory() {
    // 10 MiB with a Content-Length (over max_object_size: never buffered) and 100 MiB chunked
    // (length unknown: buffered up to max_object_size, then dropped and only streamed).
    let origin = Origin::start(|s| {
        let n = if s.uri.starts_with("/ten") { 10 } else { 100 } * MIB;
        let r = Reply::ok("")
            .header("cache-control", "public, max-age=600")
            .stream(n);
        if s.uri.starts_with("/ten") {
            r.header("content-length", &n.to_string())
        } else {
            r
        }
    })
    .await;
    let c = Corral::start(&config(
        &origin,
        "max_size = \"64MiB\"\nmax_object_size = \"4MiB\"",
    ))
    .await;
    let pid = c.pid();
    // Warm the allocator and the connection pool with a small miss first.
    let _ = c.get("/warm").await;
    let idle = rss_kib(pid);
    for (path, size) in [("/ten", 10 * MIB), ("/hundred", 100 * MIB)] {
        let s = request(&c, path, "");
        let (got, peak) = tokio::task::spawn_blocking(move || read_all_sampling(s, pid))
            .await
            .unwrap();
        // Chunked framing adds a few bytes per frame; the body is at least `size`.
        assert!(
            got >= size && got < size + size / 100 + 64,
            "{path}: {got} bytes"
        );
        let grew_mib = peak.saturating_sub(idle) as f64 / 1024.0;
        // A fully buffered body would add 10 or 100 MiB; the bound is the 4 MiB fill buffer
        // plus hyper's buffers and allocator slack.
        assert!(
            grew_mib < 24.0,
            "{path}: RSS grew {grew_mib:.1} MiB during the transfer (idle {idle} KiB)"
        );
    }
    // Over max_object_size: neither was stored.
    let before = origin.count("/ten");
    let s = request(&c, "/ten", "");
    tokio::task::spawn_blocking(move || read_all_sampling(s, pid))
        .await
        .unwrap();
    assert_eq!(
        origin.count("/ten"),
        before + 1,
        "a 10 MiB body is not stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_never_holds_the_origin_connection_past_total_timeout() {
    // The client reads a little and then stops: hyper stops polling the body, so only a
    // watchdog can let go of the origin's connection at the deadline.
    // `/pass` goes through the pass phase (a POST), `/miss` through a fill (cacheable, of
    // unknown length: buffered up to max_object_size until it is known to be too large).
    let origin = Origin::start(|s| {
        let cc = if s.uri.starts_with("/miss") {
            "public, max-age=60"
        } else {
            "no-store"
        };
        Reply::ok("").header("cache-control", cc).stream(1024 * MIB)
    })
    .await;
    let cfg = format!(
        "[upstream]\nurl = \"{}\"\ntotal_timeout = \"2s\"\n[cache]\nmax_object_size = \"2MiB\"\n",
        origin.url()
    );
    let c = Corral::start(&cfg).await;
    let pid = c.pid();
    let idle = rss_kib(pid);
    for (method, path) in [("POST", "/pass"), ("GET", "/miss")] {
        let closed = origin.closed();
        let started = Instant::now();
        let mut s = send(&c, method, path, "Content-Length: 0\r\n");
        let mut buf = vec![0u8; 64 * 1024];
        s.read_exact(&mut buf).unwrap();
        // The client holds its socket open without reading; the origin must see its
        // connection end, and not before the configured deadline.
        let cut = eventually(Duration::from_secs(20), async || origin.closed() > closed).await;
        let after = started.elapsed();
        assert!(
            cut,
            "{path}: the origin connection was still held after 20 s"
        );
        assert!(
            after >= Duration::from_millis(1900),
            "{path}: cut after {after:?}, before total_timeout (2s)"
        );
        let grew_mib = rss_kib(pid).saturating_sub(idle) as f64 / 1024.0;
        // The origin offers 1 GiB at loopback speed: buffering it would grow RSS by hundreds
        // of MiB within the 2 s; hyper's buffers, the 2 MiB fill buffer and the allocator's
        // slack stay far below this bound.
        assert!(
            grew_mib < 64.0,
            "{path}: RSS grew {grew_mib:.1} MiB while the client stalled"
        );
        drop(s);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_response_was_not_read_to_its_end_is_never_reused() {
    let origin = Origin::start(|s| {
        if s.uri.starts_with("/big") {
            Reply::ok("")
                .header("cache-control", "no-store")
                .stream(64 * MIB)
        } else {
            Reply::ok("small").header("cache-control", "no-store")
        }
    })
    .await;
    let c = Corral::start(&config(&origin, "")).await;
    // The client reads part of the big body and goes away.
    let mut s = request(&c, "/big", "");
    let mut buf = vec![0u8; 256 * 1024];
    s.read_exact(&mut buf).unwrap();
    drop(s);
    assert_eq!(origin.accepted(), 1);
    assert!(
        eventually(Duration::from_secs(10), async || origin.closed() == 1).await,
        "the half-read upstream connection was not closed"
    );
    // The next request gets a connection of its own and an answer of its own.
    let r = c.get("/small").await;
    assert_eq!((r.status, r.text().as_str()), (200, "small"));
    assert_eq!(origin.accepted(), 2, "the half-read connection was reused");
    // A response read to its end leaves its connection for the next request.
    let r = c.get("/small").await;
    assert_eq!(r.text(), "small");
    assert_eq!(
        origin.accepted(),
        2,
        "a fully read connection was not reused"
    );
}

/// An origin that answers `ok` and lets nothing be stored (every request reaches it, so its
/// connection counts are the pool's), and a corral in front with `[upstream] keepalive = {
/// <keepalive> }`.
async fn keepalive_origin(keepalive: &str) -> (Origin, Corral) {
    let origin = Origin::start(|_| Reply::ok("ok").header("cache-control", "no-store")).await;
    let cfg = format!(
        "[upstream]\nurl = \"{}\"\nkeepalive = {{ {keepalive} }}\n",
        origin.url()
    );
    let c = Corral::start(&cfg).await;
    (origin, c)
}

/// `n` requests for `/a` through `c`, one after another, each answered `ok`.
async fn get_ok(c: &Corral, n: usize) {
    for i in 0..n {
        assert_eq!(c.get("/a").await.text(), "ok", "request {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_bounds_come_from_the_config() {
    // No idle connection kept: every request opens its own.
    let (origin, c) = keepalive_origin("max_idle_per_endpoint = 0").await;
    get_ok(&c, 3).await;
    assert_eq!(
        origin.accepted(),
        3,
        "max_idle_per_endpoint = 0 reused a connection"
    );
    drop(c);

    // An idle connection is closed once idle_timeout has passed.
    let (origin, c) = keepalive_origin(r#"idle_timeout = "1s", max_idle_per_endpoint = 4"#).await;
    get_ok(&c, 2).await;
    assert_eq!(origin.accepted(), 1, "kept alive between requests");
    // Nobody checks the connection out: the pool's reaper closes it by itself.
    assert!(
        eventually(Duration::from_secs(15), async || origin.closed() == 1).await,
        "the idle connection outlived idle_timeout"
    );
    assert_eq!(c.get("/a").await.text(), "ok");
    assert_eq!(origin.accepted(), 2, "a closed connection was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_retired_after_max_requests() {
    let (origin, c) = keepalive_origin("max_requests = 3").await;
    get_ok(&c, 3).await;
    assert_eq!(origin.accepted(), 1, "kept alive up to max_requests");
    // The third answer was the connection's last: it is closed, not parked.
    assert!(
        eventually(Duration::from_secs(10), async || origin.closed() == 1).await,
        "the connection outlived its max_requests"
    );
    assert_eq!(c.get("/a").await.text(), "ok");
    assert_eq!(
        origin.accepted(),
        2,
        "max_requests = 3 let a 4th request through"
    );
    drop(c);

    // 0: no limit.
    let (origin, c) = keepalive_origin("max_requests = 0").await;
    get_ok(&c, 20).await;
    assert_eq!(
        origin.accepted(),
        1,
        "max_requests = 0 retired a connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_origin_closes_is_not_reused() {
    // Each answer ends its connection: a parked connection may be closed under the pool.
    let origin = Origin::start(|_| {
        Reply::ok("ok")
            .header("cache-control", "no-store")
            .header("connection", "close")
    })
    .await;
    let c = Corral::start(&config(&origin, "")).await;
    for i in 0..5 {
        let r = c.get("/a").await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "request {i}");
    }
    assert_eq!(origin.accepted(), 5);
}

#[test]
fn keepalive_values_are_checked() {
    for (bad, says) in [
        (
            "keepalive = { idle_timeout = \"0s\" }",
            "keepalive.idle_timeout",
        ),
        (
            "keepalive = { max_idle_per_endpoint = -1 }",
            "keepalive.max_idle_per_endpoint",
        ),
        (
            "keepalive = { max_requests = -1 }",
            "keepalive.max_requests",
        ),
        (
            "keepalive = { max_requests = \"many\" }",
            "keepalive.max_requests",
        ),
        ("keepalive = { max_request = 5 }", "keepalive.max_request"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("[upstream]\nurl = \"http://127.0.0.1:1\"\n{bad}\n");
        let out = check_config(&config_file(dir.path(), &text));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let text = "[upstream]\nurl = \"http://127.0.0.1:1\"\nkeepalive = { max_requests = 5 }\n";
    let out = check_config(&config_file(dir.path(), text));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "max_requests = 5 refused: {err}");
}
