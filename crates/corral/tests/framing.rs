//! Request framing on real sockets: the defences hyper gives us, pinned by our own tests, and
//! the ones Corral adds (bodies on GET, absolute-form targets, ambiguous paths and hosts).
//! Every attack tries to smuggle `GET /smuggled` past the parser or to store a response under
//! the wrong key; the origin must never see `/smuggled`, and a victim's clean request must
//! get the clean page.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn page(s: &Seen) -> Reply {
    Reply::ok(format!("page {} {}", s.method, s.uri)).header("cache-control", "max-age=300")
}

/// Writes `raw` on a fresh connection and reads until the server closes it or `within`
/// passes (a server that neither answers nor closes is a failing test, not a hang).
async fn exchange(c: &Corral, raw: &[u8], within: Duration) -> String {
    let mut s = TcpStream::connect(c.proxy).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(
        read.is_ok(),
        "no answer and no close within {within:?}; got:\n{text}"
    );
    text
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

async fn gateway(origin: &Origin, server: &str) -> Corral {
    Corral::start(&format!("{server}\n{}", config(origin, ""))).await
}

fn never_smuggled(origin: &Origin) {
    let paths: Vec<String> = origin.requests().iter().map(|s| s.uri.clone()).collect();
    assert!(
        !paths.iter().any(|p| p.contains("smuggled")),
        "a smuggled request reached the origin: {paths:?}"
    );
}

#[tokio::test]
async fn malformed_framing_is_refused_and_nothing_is_smuggled() {
    let origin = Origin::start(page).await;
    let c = gateway(&origin, "").await;
    let smuggle = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let attacks: Vec<(&str, String)> = vec![
        (
            "CL and TE together",
            format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggle}"),
        ),
        (
            "TE other than chunked",
            format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{smuggle}"),
        ),
        (
            "TE chunked not last",
            format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggle}"),
        ),
        (
            "two different Content-Lengths",
            format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n{smuggle}"),
        ),
        (
            "a malformed Content-Length",
            format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\n{smuggle}"),
        ),
        (
            "obs-fold",
            format!("GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n{smuggle}"),
        ),
        (
            "a bare CR",
            format!("GET /a HTTP/1.1\r\nHost: x\rX-B: 1\r\n\r\n{smuggle}"),
        ),
        (
            "an oversized chunk extension",
            format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4;{}\r\nabcd\r\n0\r\n\r\n{smuggle}", "e".repeat(70_000)),
        ),
        (
            "a chunk size overflow",
            format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n{smuggle}"),
        ),
    ];
    for (what, raw) in attacks {
        let answer = exchange(&c, raw.as_bytes(), Duration::from_secs(15)).await;
        let status = status_line(&answer);
        // Refused at the head (400, 501), or failed mid-body (the request's body errors out
        // while it is forwarded: 502), or the connection is simply closed.
        let code = status.split(' ').nth(1).unwrap_or("");
        let refused = status.is_empty() || code.starts_with('4') || code.starts_with('5');
        // CL+TE: hyper reads the body by Transfer-Encoding alone and closes the connection
        // after answering (RFC 9112 §6.1), so what follows the body is never read.
        let answered_then_closed =
            answer.matches("HTTP/1.1 ").count() == 1 && answer.contains("connection: close");
        assert!(refused || answered_then_closed, "{what}: {answer}");
        never_smuggled(&origin);
    }
    assert_eq!(c.get("/a").await.text(), "page GET /a");
}

#[tokio::test]
async fn pipelined_requests_after_a_body_are_framed_by_its_length() {
    let origin = Origin::start(page).await;
    let c = gateway(&origin, "").await;
    // The body is exactly four bytes; what follows is a second request, answered as one.
    let raw = "POST /w HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nGET GET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = exchange(&c, raw.as_bytes(), Duration::from_secs(15)).await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    let seen: Vec<(String, String)> = origin
        .requests()
        .iter()
        .map(|s| (s.method.clone(), s.uri.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![("POST".into(), "/w".into()), ("GET".into(), "/p".into())]
    );
    assert_eq!(origin.requests()[0].body.as_ref(), b"GET ");
}

#[tokio::test]
async fn an_upgrade_is_not_a_way_around_the_parser() {
    let origin = Origin::start(page).await;
    let c = gateway(&origin, "").await;
    // No 101 comes back (Corral does not tunnel upgrades), so what follows is not a tunnel.
    let raw = "GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = exchange(&c, raw.as_bytes(), Duration::from_secs(15)).await;
    assert!(!answer.contains(" 101 "), "{answer}");
    let up = origin.last("/up").unwrap();
    assert!(up.headers.get("upgrade").is_none(), "Upgrade is hop-by-hop");
    // The second request is a request of its own, never a smuggled body of the first.
    assert!(answer.contains("page GET /up"), "{answer}");
}

#[tokio::test]
async fn a_get_body_in_every_framing_is_answered_not_hung() {
    let origin = Origin::start(page).await;
    let c = Corral::start(&format!(
        "[upstream]\nurl = \"{}\"\nfirst_byte_timeout = \"2s\"\n",
        origin.url()
    ))
    .await;
    let cases = [
        ("Content-Length", "GET /g1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nevil!".to_string()),
        ("chunked", "GET /g2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nevil!\r\n0\r\n\r\n".to_string()),
        ("Expect: 100-continue", "GET /g3 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nevil!".to_string()),
    ];
    for (what, raw) in cases {
        let answer = exchange(&c, raw.as_bytes(), Duration::from_secs(15)).await;
        assert!(answer.contains("200 OK"), "{what}: {answer}");
        assert!(
            answer.contains("detail=request-body"),
            "{what}: passed: {answer}"
        );
    }
    for p in ["/g1", "/g2", "/g3"] {
        assert_eq!(
            origin.last(p).unwrap().body.as_ref(),
            b"evil!",
            "{p}: body intact"
        );
        assert!(
            !c.get(p).await.is_hit(),
            "{p}: nothing stored from a request with a body"
        );
    }
    // A client that promises a body and stops sending: answered within the upstream's limits.
    let stalled = "GET /g4 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-part";
    let mut s = TcpStream::connect(c.proxy).await.unwrap();
    s.write_all(stalled.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
        .await
        .expect("a stalled body is answered within the configured timeouts")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 5") || n == 0, "{answer}");
}

#[tokio::test]
async fn targets_and_hosts_that_could_be_read_two_ways_are_refused() {
    let origin = Origin::start(page).await;
    let c = gateway(&origin, "").await;
    let port = c.proxy.port();
    let refused = [
        (
            "absolute form naming another host",
            format!("GET http://evil.example/t HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
        ),
        (
            "two Host headers",
            "GET /t HTTP/1.1\r\nHost: a.example\r\nHost: evil.example\r\n\r\n".to_string(),
        ),
        ("no Host", "GET /t HTTP/1.1\r\n\r\n".to_string()),
        (
            "a Host with a path",
            "GET /t HTTP/1.1\r\nHost: evil.example/x\r\n\r\n".to_string(),
        ),
        (
            "an encoded NUL",
            "GET /t%00.css HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        ),
        (
            "a malformed escape",
            "GET /t%zz HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        ),
        (
            "a raw backslash",
            "GET /t\\..\\admin HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        ),
    ];
    for (what, raw) in &refused {
        let answer = exchange(&c, raw.as_bytes(), Duration::from_secs(15)).await;
        assert!(status_line(&answer).contains(" 400 "), "{what}: {answer}");
    }
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
    // Absolute form naming the Host it carries is fine, and keyed like origin form.
    let abs = format!("GET http://127.0.0.1:{port}/t HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let answer = exchange(&c, abs.as_bytes(), Duration::from_secs(15)).await;
    assert!(answer.contains("page GET /t"), "{answer}");
    assert!(c.get("/t").await.is_hit());
    assert_eq!(origin.requests()[0].uri, "/t", "fetched in origin form");
}
