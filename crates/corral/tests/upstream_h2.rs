//! HTTP/2 to upstreams (`protocol = "http1" | "h2" | "auto"`) against a real h2 origin: a
//! hyper server in the test speaking HTTP/1.1 and HTTP/2, over TLS with ALPN and in
//! cleartext (h2c, prior knowledge). The origin records the version of every request and
//! counts its connections, so reuse and the health checks' protocol are observed, not assumed.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::tls::*;
use common::*;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What the origin saw: each request's path and HTTP version, and connections accepted.
#[derive(Default)]
struct Seen2 {
    requests: Mutex<Vec<(String, http::Version)>>,
    connections: AtomicUsize,
}

impl Seen2 {
    fn versions(&self, prefix: &str) -> Vec<http::Version> {
        let r = self.requests.lock().unwrap();
        r.iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(_, v)| *v)
            .collect()
    }
}

/// An origin speaking HTTP/1.1 and HTTP/2 (hyper's auto builder: h2 by preface), over TLS
/// with ALPN `h2`, `http/1.1` when `cert` is given.
async fn h2_origin(cert: Option<&CertFiles>) -> (SocketAddr, Arc<Seen2>) {
    let acceptor = cert.map(|c| {
        use rustls::pki_types::pem::PemObject;
        let chain = rustls::pki_types::CertificateDer::pem_file_iter(&c.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&c.key).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen2::default());
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            s.connections.fetch_add(1, Ordering::SeqCst);
            let (s, acceptor) = (s.clone(), acceptor.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            s.requests
                                .lock()
                                .unwrap()
                                .push((path.clone(), req.version()));
                            let resp = http::Response::builder()
                                .header("cache-control", "max-age=300")
                                .body(Full::new(Bytes::from(format!(
                                    "{path} over {:?}",
                                    req.version()
                                ))))
                                .unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = match acceptor {
                    Some(a) => match a.accept(tcp).await {
                        Ok(tls) => builder.serve_connection(TokioIo::new(tls), svc).await,
                        Err(_) => return,
                    },
                    None => builder.serve_connection(TokioIo::new(tcp), svc).await,
                };
            });
        }
    });
    (addr, seen)
}

/// An upstream `o` at `url` with `keys`, checked every 100 ms, behind a catch-all route.
fn upstream(url: &str, keys: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"o\"\nurl = \"{url}\"\n{keys}\n\
         health = {{ path = \"/health\", interval = \"100ms\", timeout = \"100ms\" }}\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"o\"\n"
    )
}

/// Sends one request, then `n` distinct ones at once, through `c`; each must succeed.
async fn traffic(c: &Corral, n: usize) {
    let first = c.get("/r/first").await;
    assert_eq!(first.status, 200, "{}", first.text());
    let cl = client();
    let all = (0..n).map(|i| cl.get(c.url(&format!("/r/{i}"))).send());
    for r in futures_util::future::join_all(all).await {
        assert_eq!(r.unwrap().status(), 200);
    }
}

/// Waits for health checks to reach the origin; returns their versions.
async fn health_versions(seen: &Seen2) -> Vec<http::Version> {
    assert!(
        eventually(Duration::from_secs(20), async || seen
            .versions("/health")
            .len()
            >= 2)
        .await,
        "health checks reach the origin"
    );
    seen.versions("/health")
}

#[tokio::test]
async fn h2c_with_prior_knowledge_reuses_one_connection_for_requests_and_health_checks() {
    let (addr, seen) = h2_origin(None).await;
    let c = Corral::start(&upstream(&format!("http://{addr}"), "protocol = \"h2\"")).await;
    traffic(&c, 32).await;
    let versions = seen.versions("/r/");
    assert_eq!(versions.len(), 33);
    assert!(
        versions.iter().all(|v| *v == http::Version::HTTP_2),
        "{versions:?}"
    );
    assert!(health_versions(&seen)
        .await
        .iter()
        .all(|v| *v == http::Version::HTTP_2));
    // 33 requests (32 at once) and the health checks, multiplexed on one connection.
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    let ups = c.admin_json("/upstreams").await;
    assert_eq!(ups["upstreams"][0]["protocol"], "h2", "{ups}");
}

#[tokio::test]
async fn plain_http_stays_http1_unless_h2_is_configured() {
    let (addr, seen) = h2_origin(None).await;
    let c = Corral::start(&upstream(&format!("http://{addr}"), "")).await;
    traffic(&c, 4).await;
    let versions = seen.versions("/r/");
    assert!(
        versions.iter().all(|v| *v == http::Version::HTTP_11),
        "{versions:?}"
    );
    assert!(health_versions(&seen)
        .await
        .iter()
        .all(|v| *v == http::Version::HTTP_11));
}

#[tokio::test]
async fn over_tls_alpn_chooses_h2_unless_http1_is_configured() {
    let pki = Pki::new("h2-origin");
    let cert = pki.server("origin", &["origin.test"]);
    let tls = format!(
        "tls = {{ ca_file = \"{}\", server_name = \"origin.test\" }}",
        pki.ca_file().display()
    );
    // The most connections the origin may see. With "h2" the pool knows before connecting
    // that one connection serves everything; with ALPN it learns so from the first
    // handshake, which the first health check may race (one more connection, never 17).
    let cases = [
        ("", http::Version::HTTP_2, 2),
        ("protocol = \"auto\"", http::Version::HTTP_2, 2),
        ("protocol = \"h2\"", http::Version::HTTP_2, 1),
        ("protocol = \"http1\"", http::Version::HTTP_11, 18),
    ];
    for (keys, want, most) in cases {
        let (addr, seen) = h2_origin(Some(&cert)).await;
        let c = Corral::start(&upstream(
            &format!("https://{addr}"),
            &format!("{tls}\n{keys}"),
        ))
        .await;
        traffic(&c, 16).await;
        let versions = seen.versions("/r/");
        assert!(
            versions.iter().all(|v| *v == want),
            "{keys:?}: {versions:?}"
        );
        assert!(
            health_versions(&seen).await.iter().all(|v| *v == want),
            "{keys:?}: health checks speak the same protocol"
        );
        let opened = seen.connections.load(Ordering::SeqCst);
        assert!(opened <= most, "{keys:?}: {opened} connections");
        let body = c.get("/r/first").await;
        assert!(body.is_hit(), "{keys:?}: cached as over HTTP/1.1");
    }
}

#[tokio::test]
async fn an_unknown_or_contradictory_protocol_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[upstream]\nurl = \"http://127.0.0.1:1\"\nprotocol = \"h3\"",
            "upstream.protocol",
        ),
        (
            "[upstream]\nurl = \"https://a.test\"\nprotocol = \"h2\"\ntls = { http2 = false }",
            "contradicts tls.http2",
        ),
    ];
    for (text, want) in cases {
        let out = check_config(&config_file(dir.path(), text));
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{text}: {err}");
    }
}
