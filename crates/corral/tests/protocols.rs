//! The gateway behaves the same whatever the protocol: one scenario of caching, Cache-Status,
//! coalescing, PURGE and limits, run with curl over HTTP/1.1 and HTTP/2 on the TLS listener,
//! h2c with prior knowledge and HTTP/1.1 on the plain one.

mod common;

use std::time::Duration;

use common::tls::*;
use common::*;

/// How curl reaches the gateway in one mode.
struct Mode {
    name: &'static str,
    args: Vec<String>,
    base: String,
    version: &'static str,
}

fn modes(c: &Corral, tls: std::net::SocketAddr, ca: &std::path::Path) -> Vec<Mode> {
    let resolve = format!("gw.test:{}:{}", tls.port(), tls.ip());
    let https = |v: &str| {
        vec![
            "--cacert".to_string(),
            ca.display().to_string(),
            "--resolve".into(),
            resolve.clone(),
            v.into(),
        ]
    };
    let tls_base = format!("https://gw.test:{}", tls.port());
    vec![
        Mode {
            name: "h1-tls",
            args: https("--http1.1"),
            base: tls_base.clone(),
            version: "1.1",
        },
        Mode {
            name: "h2-tls",
            args: https("--http2"),
            base: tls_base,
            version: "2",
        },
        Mode {
            name: "h2c",
            args: vec!["--http2-prior-knowledge".into()],
            base: format!("http://{}", c.proxy),
            version: "2",
        },
        Mode {
            name: "h1-plain",
            args: vec!["--http1.1".into()],
            base: format!("http://{}", c.proxy),
            version: "1.1",
        },
    ]
}

async fn get(m: &Mode, path: &str, extra: &[&str]) -> Curled {
    let url = format!("{}{path}", m.base);
    let mut args: Vec<&str> = m.args.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args).await
}

#[tokio::test]
async fn caching_coalescing_purges_and_limits_are_the_same_over_http1_and_http2() {
    let origin = Origin::start(|s: &Seen| {
        let r = Reply::ok(format!("body of {}", s.uri)).header("cache-control", "max-age=300");
        if s.uri.starts_with("/slow/") {
            r.delay(Duration::from_millis(400))
        } else {
            r
        }
    })
    .await;
    let pki = Pki::new("protocols");
    let cert = pki.server("gw", &["gw.test"]);
    let (c, addr) = tls_corral(&origin, &cert, "").await;
    for m in modes(&c, addr, &pki.ca_file()) {
        let name = m.name;
        let path = format!("/p/{name}");
        let miss = get(&m, &path, &[]).await;
        assert_eq!(
            (miss.status, miss.version.as_str()),
            (200, m.version),
            "{name}: {miss:?}"
        );
        let cs = miss.header("cache-status").unwrap_or_default();
        assert!(
            cs.starts_with("corral; fwd=uri-miss") || cs.starts_with("corral; fwd=miss"),
            "{name}: {cs}"
        );
        assert!(cs.contains("stored"), "{name}: {cs}");
        let hit = get(&m, &path, &[]).await;
        assert!(hit.is_hit(), "{name}: {hit:?}");
        assert!(hit.header("age").is_some(), "{name}: Age on a hit");
        assert_eq!(hit.body, format!("body of {path}"), "{name}");

        // Coalescing: five concurrent requests for a slow URL make one origin fetch.
        let slow = format!("/slow/{name}");
        let all = futures_util::future::join_all((0..5).map(|_| get(&m, &slow, &[]))).await;
        assert!(all.iter().all(|r| r.status == 200), "{name}: {all:?}");
        assert_eq!(
            origin.count(&slow),
            1,
            "{name}: one fetch for five requests"
        );

        // PURGE on the proxy listener (loopback is in purge_allow by default).
        let purged = get(&m, &path, &["-X", "PURGE"]).await;
        assert_eq!(purged.status, 200, "{name}: {purged:?}");
        let after = get(&m, &path, &[]).await;
        assert!(!after.is_hit(), "{name}: purged: {after:?}");
        assert_eq!(origin.count(&path), 2, "{name}");

        // A request head over max_header_size (64 KiB) never reaches the origin.
        let big = format!("x-big: {}", "a".repeat(70 * 1024));
        let limited = get(&m, &format!("/big/{name}"), &["-H", &big]).await;
        assert_ne!(limited.status, 200, "{name}: {limited:?}");
        assert_eq!(origin.count(&format!("/big/{name}")), 0, "{name}");
    }
}
