//! The HTTP/2 flood defences, attacked with hand-written frames over a real connection (h2c
//! on the plain listener, and h2 by ALPN on the TLS listener): rapid reset (HEADERS then
//! RST_STREAM, many times, CVE-2023-44487) and the CONTINUATION flood (a header block that
//! never ends). Each time Corral answers GOAWAY with ENHANCE_YOUR_CALM and closes the
//! connection, stays up, and serves a well-behaved client afterwards.

mod common;

use std::time::Duration;

use common::tls::*;
use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A GET's header block in HPACK: `:method GET`, `:scheme`, `:path /`, all from the static
/// table, and `:authority` as a literal.
fn get_block(scheme_https: bool) -> Vec<u8> {
    let mut b = vec![0x82, if scheme_https { 0x87 } else { 0x86 }, 0x84, 0x41];
    let host = b"flood.test";
    b.push(host.len() as u8);
    b.extend_from_slice(host);
    b
}

/// A literal header field `x-flood-N: aaaa…` (never indexed, new name), for CONTINUATION.
fn filler(n: usize) -> Vec<u8> {
    let name = format!("x-flood-{n}");
    let value = vec![b'a'; 100];
    let mut b = vec![0x10, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(&value);
    b
}

/// Rapid reset: 2,000 streams opened and cancelled at once, in one write.
fn rapid_reset(https: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..2000u32 {
        let id = 1 + 2 * i;
        out.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &get_block(https),
        ));
        out.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    out
}

/// The CONTINUATION flood: a HEADERS frame without END_HEADERS and 1,000 CONTINUATION
/// frames after it, none ending the block.
fn continuation_flood(https: bool) -> Vec<u8> {
    let mut out = frame(HEADERS, END_STREAM, 1, &get_block(https));
    for n in 0..1000 {
        out.extend(frame(CONTINUATION, 0, 1, &filler(n)));
    }
    out
}

/// Opens the connection as a client does, sends `attack`, and reads until the server's
/// GOAWAY; returns its error code once the server has also closed the connection.
async fn attack<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, attack: &[u8]) -> u32 {
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    // The server may stop reading mid-attack: a failed write is part of being cut off.
    let _ = s.write_all(attack).await;
    let _ = s.flush().await;
    let read = async {
        let mut goaway = None;
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return goaway; // closed
            }
            let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return goaway;
            }
            if head[3] == GOAWAY && len >= 8 {
                goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the server closes the abusive connection")
        .expect("a GOAWAY before the close")
}

async fn tls_stream(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
) -> impl AsyncRead + AsyncWrite + Unpin {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("flood.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls
}

/// Corral is still running and serves well-behaved clients over h2c, h2 and HTTP/1.1.
async fn still_serving(c: &mut Corral, tls: std::net::SocketAddr, ca: &std::path::Path) {
    assert!(
        c.child.try_wait().unwrap().is_none(),
        "corral is still running"
    );
    let h2c = curl(&["--http2-prior-knowledge", &c.url("/after")]).await;
    assert_eq!((h2c.status, h2c.version.as_str()), (200, "2"), "{h2c:?}");
    let h2 = curl_tls(ca, "flood.test", tls, "/after", &["--http2"]).await;
    assert_eq!((h2.status, h2.version.as_str()), (200, "2"), "{h2:?}");
    assert_eq!(c.get("/after").await.status, 200);
}

async fn gateway(origin: &Origin, pki: &Pki) -> (Corral, std::net::SocketAddr) {
    let cert = pki.server("flood", &["flood.test"]);
    let tls = tls_addr();
    let c = Corral::start(&format!(
        "{}{}",
        tls_line(tls, &cert, ""),
        config(origin, "")
    ))
    .await;
    (c, tls)
}

fn reply(s: &Seen) -> Reply {
    Reply::ok(format!("body of {}", s.uri)).header("cache-control", "max-age=300")
}

#[tokio::test]
async fn rapid_reset_gets_goaway_and_the_gateway_keeps_serving() {
    let origin = Origin::start(reply).await;
    let pki = Pki::new("rapid-reset");
    let (mut c, tls) = gateway(&origin, &pki).await;
    let plain = tokio::net::TcpStream::connect(c.proxy).await.unwrap();
    assert_eq!(
        attack(plain, &rapid_reset(false)).await,
        ENHANCE_YOUR_CALM,
        "h2c"
    );
    let ca = pki.ca_file();
    let over_tls = tls_stream(tls, &ca).await;
    assert_eq!(
        attack(over_tls, &rapid_reset(true)).await,
        ENHANCE_YOUR_CALM,
        "h2"
    );
    // The resets were bounded: far fewer than the 4,000 streams opened reached the origin.
    assert!(
        origin.count("/") < 400,
        "{} origin requests",
        origin.count("/")
    );
    still_serving(&mut c, tls, &ca).await;
}

#[tokio::test]
async fn a_continuation_flood_gets_goaway_and_the_gateway_keeps_serving() {
    let origin = Origin::start(reply).await;
    let pki = Pki::new("continuation");
    let (mut c, tls) = gateway(&origin, &pki).await;
    let plain = tokio::net::TcpStream::connect(c.proxy).await.unwrap();
    assert_eq!(
        attack(plain, &continuation_flood(false)).await,
        ENHANCE_YOUR_CALM,
        "h2c"
    );
    let ca = pki.ca_file();
    let over_tls = tls_stream(tls, &ca).await;
    assert_eq!(
        attack(over_tls, &continuation_flood(true)).await,
        ENHANCE_YOUR_CALM,
        "h2"
    );
    // The endless header block never became a request.
    assert_eq!(origin.count("/"), 0);
    still_serving(&mut c, tls, &ca).await;
}
