//! HTTPS upstreams: a test origin behind a TLS front with its own CA. Verification on by
//! default, SNI from the configured name (not the endpoint IP), client certificates, h2 by
//! ALPN, health checks over the same TLS, and each refused certificate a 502 naming why.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use common::tls::*;
use common::*;

fn cached(s: &Seen) -> Reply {
    Reply::ok(format!("from origin: {}", s.uri)).header("cache-control", "max-age=300")
}

fn upstream(name: &str, front: &TlsFront, tls: &str, extra: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"{name}\"\nurl = \"https://{}\"\ntls = {{ {tls} }}\n{extra}\n[[routes]]\npath_prefix = \"/{name}/\"\nupstream = \"{name}\"\n",
        front.addr
    )
}

#[tokio::test]
async fn an_https_upstream_is_verified_with_its_ca_under_the_configured_name() {
    let origin = Origin::start(cached).await;
    let pki = Pki::new("upstream");
    let cert = pki.server("origin", &["origin.test"]);
    let front = TlsFront::start(origin.addr, &cert, &[b"http/1.1"], None).await;
    let tls = format!(
        "ca_file = \"{}\", server_name = \"origin.test\"",
        pki.ca_file().display()
    );
    let health = "health = { path = \"/health\", interval = \"200ms\", timeout = \"200ms\" }";
    let c = Corral::start(&upstream("ok", &front, &tls, health)).await;

    let first = c.get("/ok/a").await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.text(), "from origin: /ok/a");
    assert!(
        c.get("/ok/a").await.is_hit(),
        "an https fill is cached like any other"
    );
    assert_eq!(origin.count("/ok/a"), 1);
    let sent = front.sni.lock().unwrap().clone();
    assert!(
        !sent.is_empty() && sent.iter().all(|n| n == "origin.test"),
        "SNI is the configured name, never the IP: {sent:?}"
    );
    // Health checks reach the origin only through the TLS front: they speak the same TLS.
    assert!(
        eventually(Duration::from_secs(20), async || origin.count("/health")
            >= 2)
        .await,
        "health checks over TLS"
    );
    let ups: serde_json::Value = c.admin_json("/upstreams").await;
    let ok = ups["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "ok")
        .unwrap();
    assert_eq!(ok["scheme"], "https");
    assert_eq!(ok["endpoints"][0]["healthy"], true, "{ok}");
}

#[tokio::test]
async fn a_refused_certificate_is_a_502_that_names_the_reason() {
    let origin = Origin::start(cached).await;
    let trusted = Pki::new("trusted");
    let stranger = Pki::new("stranger");
    let unknown = TlsFront::start(
        origin.addr,
        &stranger.server("s", &["origin.test"]),
        &[],
        None,
    )
    .await;
    let expired = TlsFront::start(
        origin.addr,
        &trusted.expired("e", &["origin.test"]),
        &[],
        None,
    )
    .await;
    let wrong = TlsFront::start(
        origin.addr,
        &trusted.server("w", &["elsewhere.test"]),
        &[],
        None,
    )
    .await;
    let tls = format!(
        "ca_file = \"{}\", server_name = \"origin.test\"",
        trusted.ca_file().display()
    );
    let no_retry = "retries = 0";
    let config = [
        upstream("unknown", &unknown, &tls, no_retry),
        upstream("expired", &expired, &tls, no_retry),
        upstream("wrong", &wrong, &tls, no_retry),
    ]
    .concat();
    let c = Corral::start(&config).await;
    for (path, says) in [
        ("/unknown/x", "not signed by a trusted CA (unknown_ca)"),
        ("/expired/x", "has expired (expired)"),
        ("/wrong/x", "does not name the host it was asked for"),
    ] {
        let r = c.get(path).await;
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        assert!(
            r.text().contains("TLS to the upstream failed") && r.text().contains(says),
            "{path}: {}",
            r.text()
        );
        assert!(
            r.cache_status().contains("detail=tls"),
            "{path}: {}",
            r.cache_status()
        );
    }
    assert_eq!(
        origin.requests().len(),
        0,
        "no request went past a refused certificate"
    );
    assert_eq!(
        c.metric("corral_upstream_errors_total{kind=\"tls\"}").await,
        3.0
    );
}

#[tokio::test]
async fn the_system_roots_are_the_default_and_insecure_skip_verify_is_an_explicit_opt_in() {
    let origin = Origin::start(cached).await;
    let pki = Pki::new("private");
    let front = TlsFront::start(origin.addr, &pki.server("o", &["origin.test"]), &[], None).await;
    let c = Corral::start(
        &[
            upstream(
                "default",
                &front,
                "server_name = \"origin.test\"",
                "retries = 0",
            ),
            upstream("insecure", &front, "insecure_skip_verify = true", ""),
        ]
        .concat(),
    )
    .await;
    let r = c.get("/default/x").await;
    assert_eq!(
        r.status,
        502,
        "a private CA is not among the system roots: {}",
        r.text()
    );
    assert!(r.text().contains("unknown_ca"), "{}", r.text());
    let r = c.get("/insecure/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let origin = Origin::start(cached).await;
    let pki = Pki::new("upstream-mtls");
    let front = TlsFront::start(
        origin.addr,
        &pki.server("o", &["origin.test"]),
        &[],
        Some(&pki.ca_file()),
    )
    .await;
    let me = pki.client("gateway", "corral");
    let ca = pki.ca_file().display().to_string();
    let with = format!(
        "ca_file = \"{ca}\", server_name = \"origin.test\", cert_file = \"{}\", key_file = \"{}\"",
        me.cert.display(),
        me.key.display()
    );
    let without = format!("ca_file = \"{ca}\", server_name = \"origin.test\"");
    let c = Corral::start(
        &[
            upstream("with", &front, &with, ""),
            upstream("without", &front, &without, "retries = 0"),
        ]
        .concat(),
    )
    .await;
    assert_eq!(c.get("/with/x").await.status, 200);
    let r = c.get("/without/x").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text().contains("TLS to the upstream failed"),
        "{}",
        r.text()
    );
}

/// The CA file changes (the upstream's certificate was re-issued by another CA): the next
/// new connection verifies against the new CA without a restart; a file that does not load
/// is counted and the CA that works is kept.
#[tokio::test]
async fn a_rotated_ca_file_is_taken_by_the_next_connection_and_a_bad_one_is_not() {
    let origin = Origin::start(cached).await;
    let before = Pki::new("ca-before");
    let after = Pki::new("ca-after");
    let front = TlsFront::start(origin.addr, &after.server("o", &["origin.test"]), &[], None).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::copy(before.ca_file(), &ca).unwrap();
    let tls = format!(
        "ca_file = \"{}\", server_name = \"origin.test\", reload_interval = \"100ms\"",
        ca.display()
    );
    let c = Corral::start(&upstream("rot", &front, &tls, "retries = 0")).await;
    let r = c.get("/rot/a").await;
    assert_eq!(
        r.status,
        502,
        "signed by the CA not yet trusted: {}",
        r.text()
    );
    assert!(r.text().contains("unknown_ca"), "{}", r.text());

    std::fs::copy(after.ca_file(), &ca).unwrap();
    let ok = "corral_upstream_tls_reloads_total{result=\"ok\"}";
    assert!(
        eventually(Duration::from_secs(20), async || c.metric(ok).await >= 1.0).await,
        "the changed CA file is reloaded"
    );
    let r = c.get("/rot/a").await;
    assert_eq!(r.status, 200, "verified against the new CA: {}", r.text());

    std::fs::write(&ca, "not a certificate").unwrap();
    let error = "corral_upstream_tls_reloads_total{result=\"error\"}";
    assert!(
        eventually(Duration::from_secs(20), async || c.metric(error).await
            >= 1.0)
        .await,
        "a file that does not load is counted"
    );
    assert_eq!(c.metric(ok).await, 1.0, "and not taken");
    let r = c.get("/rot/b").await;
    assert_eq!(r.status, 200, "the CA that works stays: {}", r.text());
}

/// An origin that speaks only HTTP/2 (h2c behind the TLS front) and says which version it got.
async fn h2_only_origin() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!("{:?}", req.version());
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .header("cache-control", "max-age=60")
                                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                .unwrap(),
                        )
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn h2_is_spoken_to_an_upstream_that_agrees_to_it_by_alpn() {
    let origin = h2_only_origin().await;
    let pki = Pki::new("h2-upstream");
    let front = TlsFront::start(origin, &pki.server("o", &["origin.test"]), &[b"h2"], None).await;
    let tls = format!(
        "ca_file = \"{}\", server_name = \"origin.test\"",
        pki.ca_file().display()
    );
    let c = Corral::start(&upstream("h2", &front, &tls, "")).await;
    for i in 0..3 {
        let r = c.get(&format!("/h2/{i}")).await;
        assert_eq!((r.status, r.text().as_str()), (200, "HTTP/2.0"));
    }
    assert_eq!(
        front.handshakes.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one h2 connection, reused"
    );
}
