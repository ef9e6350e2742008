//! TLS follows its files, both ends, against a real TLS listener in process that requires
//! client certificates:
//! * the peer client (`tls::client::reloading_client_config`): a client certificate of another
//!   CA is refused, the rotated one is presented on the next handshake, and a bad update keeps
//!   the previous one;
//! * the listener (`ServerTls`): a rotated `client_ca_file` decides the next handshake, a
//!   connection made before the rotation stays up, and a bad CA file keeps the previous CA.
//!
//! Reloads are driven by hand (`reload_if_changed`), so nothing waits for an interval.

use std::sync::Arc;
use std::time::Duration;

use corral_http::tls::client::reloading_client_config;
use corral_http::tls::metrics::ResultLabel;
use corral_http::tls::{CertPair, ServerTls, ServerTlsSettings, TlsMetrics, UpstreamTlsSettings};
use corral_testkit::tls::{CertFiles, Pki, SecretVolume};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NAME: &str = "peers.test";

/// A listener requiring client certificates from `client_ca`; it echoes one byte on every
/// connection whose handshake succeeded.
async fn listener(cert: &CertFiles, client_ca: &std::path::Path) -> std::net::SocketAddr {
    listener_tls(cert, client_ca).await.0
}

/// [`listener`], with its TLS side to reload by hand.
async fn listener_tls(
    cert: &CertFiles,
    client_ca: &std::path::Path,
) -> (std::net::SocketAddr, Arc<ServerTls>) {
    let tls = ServerTls::new(
        ServerTlsSettings {
            certificates: vec![CertPair {
                cert_file: cert.cert.clone(),
                key_file: cert.key.clone(),
            }],
            client_ca_file: Some(client_ca.to_path_buf()),
            reload_interval: Duration::from_secs(3600),
            http2: false,
            key_scheme: true,
            handshake_timeout: Duration::from_secs(10),
        },
        TlsMetrics::default(),
    )
    .unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let serving = tls.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = tcp.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                if let Some((mut s, _)) = tls.accept(conn).await {
                    let mut b = [0u8; 1];
                    while s.read_exact(&mut b).await.is_ok() {
                        if s.write_all(&b).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, serving)
}

/// A connection with `config`, and whether one byte makes the round trip (over TLS 1.3 a
/// refused client certificate shows only after the handshake, on the first read).
async fn round_trip(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(NAME).unwrap();
    let mut s = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .ok()?;
    s.write_all(b"x").await.ok()?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.ok()?;
    Some(s)
}

fn secret(ca: &Pki, client: &CertFiles) -> [(&'static str, Vec<u8>); 3] {
    [
        ("ca.pem", std::fs::read(ca.ca_file()).unwrap()),
        ("tls.crt", std::fs::read(&client.cert).unwrap()),
        ("tls.key", std::fs::read(&client.key).unwrap()),
    ]
}

fn files<'a>(f: &'a [(&'static str, Vec<u8>)]) -> Vec<(&'static str, &'a [u8])> {
    f.iter().map(|(n, b)| (*n, b.as_slice())).collect()
}

#[tokio::test]
async fn a_rotated_client_certificate_is_presented_on_the_next_handshake_and_a_bad_one_is_not_taken(
) {
    let old = Pki::new("old-clients");
    let new = Pki::new("new-clients");
    let addr = listener(&new.server("listener", &[NAME]), &new.ca_file()).await;

    // The client trusts the listener's CA but presents a certificate of the old CA.
    let first = secret(&new, &old.client("peer-old", "peer"));
    let mut volume = SecretVolume::new(&old.dir.join("secret"), &files(&first));
    let settings = UpstreamTlsSettings {
        ca_file: Some(volume.path("ca.pem")),
        cert_file: Some(volume.path("tls.crt")),
        key_file: Some(volume.path("tls.key")),
        ..Default::default()
    };
    let reloads = Family::<ResultLabel, Counter>::default();
    let count = |result| reloads.get_or_create(&ResultLabel { result }).get();
    let watched = reloading_client_config(
        "peer TLS",
        &settings,
        vec![b"http/1.1".to_vec()],
        reloads.clone(),
    )
    .unwrap();
    let seen = watched.subscribe();
    assert!(
        round_trip(addr, watched.current()).await.is_none(),
        "a client certificate of another CA is refused"
    );

    // The Secret rotates to a certificate of the listener's client CA.
    let rotated = secret(&new, &new.client("peer-new", "peer"));
    volume.update(&files(&rotated));
    assert!(watched.reload_if_changed(), "the rotation is loaded");
    assert_eq!(count("ok"), 1);
    let mut kept = round_trip(addr, seen.borrow().clone())
        .await
        .expect("the next handshake presents the new certificate");

    // A key that is not the certificate's: refused, counted, the previous config stays.
    let mut mismatched = rotated.clone();
    mismatched[2].1 = std::fs::read(new.client("stray", "stray").key).unwrap();
    volume.update(&files(&mismatched));
    assert!(!watched.reload_if_changed());
    assert_eq!(count("error"), 1);
    // Garbage in the CA file: the same.
    let mut garbage = rotated.clone();
    garbage[0].1 = b"not a certificate\n".to_vec();
    volume.update(&files(&garbage));
    assert!(!watched.reload_if_changed());
    assert_eq!(count("error"), 2);
    assert_eq!(count("ok"), 1, "nothing bad was swapped in");
    assert!(
        round_trip(addr, watched.current()).await.is_some(),
        "new handshakes still use the last good config"
    );
    // And the connection made before the bad updates still works.
    kept.write_all(b"y").await.unwrap();
    let mut b = [0u8; 1];
    kept.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"y");
}

/// A client that trusts `server`'s CA and presents `client`.
fn client_config(server: &Pki, client: &CertFiles) -> Arc<rustls::ClientConfig> {
    let settings = UpstreamTlsSettings {
        ca_file: Some(server.ca_file()),
        cert_file: Some(client.cert.clone()),
        key_file: Some(client.key.clone()),
        ..Default::default()
    };
    reloading_client_config(
        "test client",
        &settings,
        vec![b"http/1.1".to_vec()],
        Family::default(),
    )
    .unwrap()
    .current()
}

#[tokio::test]
async fn a_rotated_client_ca_decides_the_next_handshake_and_a_bad_one_is_not_taken() {
    let server = Pki::new("listener");
    let old = Pki::new("old-clients");
    let new = Pki::new("new-clients");
    let old_client = client_config(&server, &old.client("peer-old", "peer"));
    let new_client = client_config(&server, &new.client("peer-new", "peer"));
    let ca = |pki: &Pki| std::fs::read(pki.ca_file()).unwrap();
    let mut volume = SecretVolume::new(
        &server.dir.join("client-ca"),
        &[("ca.pem", ca(&old).as_slice())],
    );
    let (addr, tls) =
        listener_tls(&server.server("listener", &[NAME]), &volume.path("ca.pem")).await;

    let mut kept = round_trip(addr, old_client.clone())
        .await
        .expect("a client of the configured CA is let in");
    assert!(
        round_trip(addr, new_client.clone()).await.is_none(),
        "a client of another CA is refused"
    );

    // The client CA rotates.
    volume.update(&[("ca.pem", ca(&new).as_slice())]);
    assert!(tls.reload_if_changed(), "the new client CA is loaded");
    assert!(
        round_trip(addr, new_client.clone()).await.is_some(),
        "the next handshake verifies against the new CA"
    );
    // The old client holds a session ticket from its first connection: a resumed session
    // skips client-certificate verification, so it must not resume past the rotation.
    assert!(
        round_trip(addr, old_client.clone()).await.is_none(),
        "the old CA's clients are refused from now on, even holding a ticket"
    );
    kept.write_all(b"y").await.unwrap();
    let mut b = [0u8; 1];
    kept.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"y", "a connection made before the rotation stays up");

    // Garbage in the CA file: refused, the rotated CA stays.
    volume.update(&[("ca.pem", b"not a certificate\n".as_slice())]);
    assert!(!tls.reload_if_changed(), "a bad CA file is not swapped in");
    assert!(
        round_trip(addr, new_client).await.is_some(),
        "new handshakes still verify against the last good CA"
    );
    assert!(round_trip(addr, old_client).await.is_none());
}
