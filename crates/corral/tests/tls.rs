//! The TLS listener with real clients (curl, openssl s_client, a rustls client): ALPN, SNI,
//! TLS 1.2 and 1.3, the scheme in the key, startup errors, mTLS, and certificate rotation
//! under load.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::tls::*;
use common::*;

fn origin_reply(s: &Seen) -> Reply {
    Reply::ok(format!("body of {}", s.uri)).header("cache-control", "max-age=300")
}

#[tokio::test]
async fn alpn_picks_h2_or_http1_and_https_entries_are_kept_apart_from_http() {
    let origin = Origin::start(origin_reply).await;
    let pki = Pki::new("alpn");
    let cert = pki.server("gw", &["gw.test"]);
    let (c, addr) = tls_corral(&origin, &cert, "").await;
    let ca = pki.ca_file();

    let h2 = curl_tls(&ca, "gw.test", addr, "/a", &["--http2"]).await;
    assert_eq!((h2.status, h2.version.as_str()), (200, "2"), "{h2:?}");
    assert!(!h2.is_hit());
    let h1 = curl_tls(&ca, "gw.test", addr, "/a", &["--http1.1"]).await;
    assert_eq!((h1.status, h1.version.as_str()), (200, "1.1"), "{h1:?}");
    assert!(
        h1.is_hit(),
        "the https entry serves https over either protocol: {h1:?}"
    );
    assert_eq!(h1.body, "body of /a");
    let seen = origin.last("/a").unwrap();
    assert_eq!(
        seen.headers["x-forwarded-proto"], "https",
        "the origin learns the client used TLS"
    );
    assert_eq!(
        seen.headers["x-forwarded-port"],
        addr.port().to_string().as_str()
    );

    // The same URL (same Host) over plain HTTP is another entry: the scheme is in the key.
    let host = format!("gw.test:{}", addr.port());
    let plain = c.get_with("/a", &[("host", &host)]).await;
    assert!(!plain.is_hit(), "{:?}", plain.cache_status());
    assert_eq!(origin.count("/a"), 2, "one fill per scheme");
    assert!(c.get_with("/a", &[("host", &host)]).await.is_hit());
    assert_eq!(
        origin.last("/a").unwrap().headers["x-forwarded-proto"],
        "http"
    );

    assert_eq!(
        c.metric("corral_tls_handshakes_total{protocol=\"h2\"")
            .await,
        1.0
    );
    assert_eq!(
        c.metric("corral_tls_handshakes_total{protocol=\"http/1.1\"")
            .await,
        1.0
    );
}

#[tokio::test]
async fn key_scheme_false_shares_entries_between_http_and_https() {
    let origin = Origin::start(origin_reply).await;
    let pki = Pki::new("shared");
    let cert = pki.server("gw", &["gw.test"]);
    let (c, addr) = tls_corral(&origin, &cert, ", key_scheme = false").await;
    let host = format!("gw.test:{}", addr.port());
    assert!(!c.get_with("/s", &[("host", &host)]).await.is_hit());
    let tls = curl_tls(&pki.ca_file(), "gw.test", addr, "/s", &[]).await;
    assert!(tls.is_hit(), "configured to share: {tls:?}");
    assert_eq!(origin.count("/s"), 1);
}

#[tokio::test]
async fn sni_chooses_among_several_certificates_over_tls_1_2_and_1_3() {
    let origin = Origin::start(origin_reply).await;
    let pki = Pki::new("sni");
    let a = pki.server("a", &["a.test"]);
    let b = pki.server("b", &["b.test", "*.b.test"]);
    let extra = format!(
        ", certificates = [{{ cert_file = \"{}\", key_file = \"{}\" }}]",
        b.cert.display(),
        b.key.display()
    );
    let (_c, addr) = tls_corral(&origin, &a, &extra).await;
    let ca = pki.ca_file();
    // curl verifies the name: each succeeds only with the certificate that names its host.
    for host in ["a.test", "b.test", "x.b.test"] {
        for version in [
            ["--tlsv1.2", "--tls-max", "1.2"],
            ["--tlsv1.3", "--tls-max", "1.3"],
        ] {
            let r = curl_tls(&ca, host, addr, "/", &version).await;
            assert_eq!(r.status, 200, "{host} {version:?}: {}", r.stderr);
        }
    }
    // No SNI, or a name no certificate holds: the first (default) certificate.
    let r = curl_tls(&ca, "c.test", addr, "/", &[]).await;
    assert_eq!(r.status, 0, "c.test is named by no certificate");
    assert!(r.stderr.contains("certificate"), "{}", r.stderr);

    // openssl verifies the chain and the name it asks for by SNI.
    let ca = ca.display().to_string();
    let verify = |host: &'static str| {
        [
            "-CAfile",
            ca.as_str(),
            "-servername",
            host,
            "-verify_hostname",
            host,
        ]
    };
    let mut args = verify("b.test").to_vec();
    args.extend(["-alpn", "h2,http/1.1", "-tls1_2"]);
    let out = s_client(addr, &args).await;
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    assert!(out.contains("Protocol  : TLSv1.2"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    let mut args = verify("a.test").to_vec();
    args.extend(["-alpn", "http/1.1", "-tls1_3"]);
    let out = s_client(addr, &args).await;
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
}

#[tokio::test]
async fn missing_unreadable_or_mismatched_files_stop_the_start_naming_them() {
    let pki = Pki::new("bad");
    let one = pki.server("one", &["one.test"]);
    let two = pki.server("two", &["two.test"]);
    let garbage = pki.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let missing = pki.dir.join("missing.pem");
    let cases = [
        (
            CertFiles {
                cert: missing.clone(),
                key: one.key.clone(),
            },
            "cannot read",
        ),
        (
            CertFiles {
                cert: one.cert.clone(),
                key: two.key.clone(),
            },
            "does not match the certificate",
        ),
        (
            CertFiles {
                cert: garbage.clone(),
                key: one.key.clone(),
            },
            "no PEM certificate",
        ),
        (
            CertFiles {
                cert: one.cert.clone(),
                key: garbage.clone(),
            },
            "no PEM private key",
        ),
    ];
    for (files, expected) in cases {
        let text = format!(
            "{}{}",
            loopback_server_table(),
            tls_line(tls_addr(), &files, "")
        );
        let path = config_file(&pki.dir, &text);
        // check-config checks keys, not files (it validates configs for other machines).
        let check = check_config(&path);
        assert_eq!(
            check.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let out = serve_to_exit(&path);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{expected}: {err}");
        assert!(
            err.contains("server.tls") && err.contains(expected),
            "{expected}: {err}"
        );
    }
}

#[tokio::test]
async fn mtls_requires_a_certificate_from_the_configured_ca() {
    let origin = Origin::start(origin_reply).await;
    let pki = Pki::new("mtls");
    let other = Pki::new("mtls-other");
    let cert = pki.server("gw", &["gw.test"]);
    let good = pki.client("client", "app");
    let stranger = other.client("stranger", "app");
    let extra = format!(", client_ca_file = \"{}\"", pki.ca_file().display());
    let (c, addr) = tls_corral(&origin, &cert, &extra).await;
    let ca = pki.ca_file();

    let none = curl_tls(&ca, "gw.test", addr, "/m", &[]).await;
    assert_eq!(none.status, 0, "no client certificate: {none:?}");
    let ok = curl_tls_as(&ca, "gw.test", addr, "/m", &good).await;
    assert_eq!(ok.status, 200, "{}", ok.stderr);
    let bad = curl_tls_as(&ca, "gw.test", addr, "/m", &stranger).await;
    assert_eq!(bad.status, 0, "a certificate from another CA: {bad:?}");
    assert_eq!(origin.count("/m"), 1);
    let counted = eventually(Duration::from_secs(10), async || {
        c.metric("corral_tls_handshake_failures_total{reason=\"no_client_certificate\"}")
            .await
            == 1.0
            && c.metric("corral_tls_handshake_failures_total{reason=\"bad_client_certificate\"}")
                .await
                == 1.0
    })
    .await;
    assert!(counted, "failures counted by reason");
}

/// Whether `c` counts a certificate reload with `result` ("ok" or "error") within 20 s: it
/// has read the rotated files.
async fn reload_counted(c: &Corral, result: &str) -> bool {
    let metric = format!("corral_tls_certificate_reloads_total{{result=\"{result}\"}}");
    c.metric_holds_within(&metric, Duration::from_secs(20), |n| n >= 1.0)
        .await
}

#[tokio::test]
async fn certificates_rotate_under_load_without_a_failed_request() {
    let origin = Origin::start(origin_reply).await;
    let pki = Pki::new("rotate");
    let live = pki.server("live", &["gw.test"]);
    let (c, addr) = tls_corral(&origin, &live, ", reload_interval = \"100ms\"").await;
    let ca = pki.ca_file();
    let url = format!("https://{addr}/load");

    // A keep-alive h2 connection opened before the rotation, and clients making a new
    // handshake for every request, all running until the new certificate is seen.
    let kept = https_client(&ca, "gw.test", true, true);
    assert_eq!(https_get(&kept, &url).await.unwrap().status, 200);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (ca, url, stop, done) = (ca.clone(), url.clone(), stop.clone(), done.clone());
        load.push(tokio::spawn(async move {
            let fresh = https_client(&ca, "gw.test", false, false);
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match https_get(&fresh, &url).await {
                    Ok(r) if r.status == 200 => {}
                    other => failures.push(format!("{other:?}")),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    assert!(
        eventually(Duration::from_secs(20), async || done
            .load(Ordering::Relaxed)
            >= 20)
        .await
    );

    // Rotate to a certificate that also names rotated.test, as a Secret update would.
    let next = pki.server("next", &["gw.test", "rotated.test"]);
    install(&next, &live);
    assert!(reload_counted(&c, "ok").await, "the reload was counted");
    let before = done.load(Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(20), async || done
            .load(Ordering::Relaxed)
            >= before + 20)
        .await
    );
    let r = curl_tls(&ca, "rotated.test", addr, "/load", &[]).await;
    assert_eq!(
        r.status, 200,
        "new handshakes get the new certificate: {}",
        r.stderr
    );
    assert_eq!(
        https_get(&kept, &url).await.unwrap().status,
        200,
        "the old connection lives on"
    );
    stop.store(true, Ordering::Relaxed);
    for task in load {
        let failures = task.await.unwrap();
        assert!(
            failures.is_empty(),
            "failed requests during rotation: {failures:?}"
        );
    }

    // A broken update (a key that is not the certificate's) keeps the loaded certificates.
    let stray = pki.server("stray", &["gw.test"]);
    install(
        &CertFiles {
            cert: next.cert.clone(),
            key: stray.key.clone(),
        },
        &live,
    );
    assert!(
        reload_counted(&c, "error").await,
        "the failed reload was counted"
    );
    let r = curl_tls(&ca, "rotated.test", addr, "/load", &[]).await;
    assert_eq!(
        r.status, 200,
        "still serving the last good certificate: {}",
        r.stderr
    );
}

#[tokio::test]
async fn http2_announces_its_stream_and_header_limits() {
    let origin = Origin::start(origin_reply).await;
    let pki = Pki::new("h2-limits");
    let cert = pki.server("gw", &["gw.test"]);
    let addr = tls_addr();
    let line = format!(
        "h2_max_concurrent_streams = 64\n{}",
        tls_line(addr, &cert, "")
    );
    let _c = Corral::start(&format!("{line}{}", config(&origin, ""))).await;
    // nghttp (nghttp2-client) prints the SETTINGS frame the server sends.
    let out = tokio::process::Command::new("nghttp")
        .args(["-nv", &format!("https://{addr}/h2")])
        .output()
        .await
        .expect("nghttp runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):64"),
        "{text}"
    );
    assert!(
        text.contains("SETTINGS_MAX_HEADER_LIST_SIZE(0x06):65536"),
        "{text}"
    );
    assert_eq!(origin.count("/h2"), 1, "{text}");
}

#[tokio::test]
async fn a_tls_upstream_whose_files_are_missing_stops_the_start() {
    let pki = Pki::new("upstream-files");
    let missing = pki.dir.join("no-such-ca.pem");
    let text = format!(
        "{}[[upstreams]]\nname = \"api\"\nurl = \"https://127.0.0.1:1\"\ntls = {{ ca_file = \"{}\" }}\n",
        loopback_server_table(),
        missing.display()
    );
    let out = serve_to_exit(&config_file(&pki.dir, &text));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("upstreams[0].tls") && err.contains("no-such-ca.pem"),
        "{err}"
    );
}
