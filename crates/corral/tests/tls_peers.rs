//! Peers over TLS (`[cluster] tls`): real replicas on 127.0.0.11, .12, ... whose admin
//! listeners serve only TLS with certificates made at test time; events travel verified and
//! still signed, and a replica whose certificate another CA signed is refused, with the
//! refusal counted by reason.

mod common;

use std::time::Duration;

use common::replicas::*;
use common::tls::*;
use common::*;
use serde_json::json;

/// The name every peer's certificate holds and every peer verifies (`server_name`).
const PEERS: &str = "peers.test";

/// Starts one replica of a test fleet (the fleet's cluster secret set) on `proxy` and
/// `admin`, the test reaching its admin listener through `access`.
async fn start_replica(
    proxy: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    config: &str,
    access: AdminAccess,
) -> Corral {
    let env = [("CORRAL_CLUSTER_SECRET", SECRET)];
    Corral::start_as(proxy, admin, config, &env, access).await
}

/// Replica `i` of `n`, its admin listener on TLS with a certificate `pki` signed, trusting
/// `trust` for its peers.
async fn replica(
    i: usize,
    n: usize,
    ports: (u16, u16),
    origin: &Origin,
    pki: &Pki,
    trust: &Pki,
) -> Corral {
    let (proxy, admin) = Replicas::addrs(i, ports.0, ports.1);
    let ip = Replicas::ip(i);
    let cert = pki.server(&format!("replica{i}"), &[PEERS, &ip]);
    let discovery = Replicas::static_discovery(n, ports.1);
    let config = format!(
        "[upstream]\nurl = \"{}\"\n[cluster]\nheartbeat = \"300ms\"\n\
         {discovery}\n\
         tls = {{ ca_file = \"{}\", server_name = \"{PEERS}\", cert_file = \"{}\", key_file = \"{}\" }}\n",
        origin.url(),
        trust.ca_file().display(),
        cert.cert.display(),
        cert.key.display(),
    );
    let access = admin_access(admin, &pki.ca_file(), PEERS, None);
    start_replica(proxy, admin, &config, access).await
}

#[tokio::test]
async fn purges_reach_every_replica_over_tls_and_a_replica_of_another_ca_is_refused() {
    let origin = Origin::start(tagged).await;
    let fleet = Pki::new("fleet");
    let other = Pki::new("other");
    let ports = (replica_port(), replica_port());
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(replica(i, 4, ports, &origin, &fleet, &fleet).await);
    }
    // The fourth holds a certificate from another CA and trusts only that CA.
    let stranger = replica(3, 4, ports, &origin, &other, &other).await;
    for n in nodes.iter().chain([&stranger]) {
        n.get("/items/1").await;
        assert!(n.get("/items/1").await.is_hit(), "cached on {}", n.proxy);
    }

    let v = purge(&nodes[0], json!({"tags": ["item-1"], "wait": true})).await;
    let acked = acknowledged(&v);
    let addr = |i: usize| format!("{}:{}", Replicas::ip(i), ports.1);
    assert_eq!(acked, [addr(1), addr(2)], "{v}");
    assert_eq!(v["pending"], json!([addr(3)]), "{v}");
    for n in &nodes {
        assert!(!n.get("/items/1").await.is_hit(), "purged on {}", n.proxy);
    }
    // Delivered over TLS: the receivers' admin listeners completed handshakes, and applied.
    for n in &nodes[1..] {
        assert!(n.metric("corral_admin_tls_handshakes_total").await >= 1.0);
        assert_eq!(n.metric("corral_peer_events_received_total").await, 1.0);
    }

    // The stranger's certificate is not the fleet's: every delivery to it is refused by the
    // sender's verification, counted by reason, and it keeps its entry.
    let refused = "corral_peer_tls_failures_total{reason=\"unknown_ca\"}";
    assert!(
        eventually(Duration::from_secs(10), async || nodes[0]
            .metric(refused)
            .await
            >= 1.0)
        .await,
        "{}",
        nodes[0].admin_text("/metrics").await
    );
    assert!(stranger.get("/items/1").await.is_hit(), "never reached");
    assert_eq!(
        stranger.metric("corral_peer_events_received_total").await,
        0.0
    );
    // And it refuses the fleet in turn (it trusts only its own CA).
    assert!(
        eventually(Duration::from_secs(10), async || stranger
            .metric(refused)
            .await
            >= 1.0)
        .await
    );

    // `corral purge` reaches an admin listener over TLS with --ca-file; without it (the
    // system roots do not hold the test CA) it is refused, saying why.
    let admin = format!("https://{}", addr(1));
    let ca = fleet.ca_file();
    let run = |args: Vec<String>| {
        std::process::Command::new(bin())
            .arg("purge")
            .args(args)
            .env_remove("CORRAL_ADMIN_TOKEN")
            .output()
            .unwrap()
    };
    let ok = run(vec![
        "--admin".into(),
        admin.clone(),
        "--ca-file".into(),
        ca.display().to_string(),
        "--tag".into(),
        "items".into(),
    ]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("purged"));
    let no_ca = run(vec!["--admin".into(), admin.clone(), "--all".into()]);
    assert!(!no_ca.status.success());
    let err = String::from_utf8_lossy(&no_ca.stderr);
    assert!(err.contains("certificate") || err.contains("CA"), "{err}");

    // `corral top` reads the same API over the same verified TLS.
    let top = |tls: &[&str]| {
        std::process::Command::new(bin())
            .args(["top", "--once", "--admin", &admin])
            .args(tls)
            .env_remove("CORRAL_ADMIN_TOKEN")
            .output()
            .unwrap()
    };
    let ca = ca.display().to_string();
    let shown = top(&["--ca-file", &ca]);
    assert!(shown.status.success(), "{shown:?}");
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("corral top"),
        "{shown:?}"
    );
    let refused = top(&[]);
    assert!(!refused.status.success(), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("certificate"), "{err}");
}

/// Replica `i` of 3 whose admin listener requires client certificates from `pki`; with
/// `present`, it presents its own certificate to its peers.
async fn mtls_replica(
    i: usize,
    ports: (u16, u16),
    origin: &Origin,
    pki: &Pki,
    operator: &CertFiles,
    present: bool,
) -> Corral {
    let (proxy, admin) = Replicas::addrs(i, ports.0, ports.1);
    let cert = pki.server(&format!("mtls{i}"), &[PEERS]);
    let discovery = Replicas::static_discovery(3, ports.1);
    let files = format!(
        "cert_file = \"{}\", key_file = \"{}\"",
        cert.cert.display(),
        cert.key.display()
    );
    let ca = pki.ca_file().display().to_string();
    let config = format!(
        "[upstream]\nurl = \"{}\"\n[admin]\ntls = {{ {files}, client_ca_file = \"{ca}\" }}\n\
         [cluster]\nheartbeat = \"300ms\"\n\
         {discovery}\n\
         tls = {{ ca_file = \"{ca}\", server_name = \"{PEERS}\"{} }}\n",
        origin.url(),
        if present {
            format!(", {files}")
        } else {
            String::new()
        },
    );
    let access = admin_access(admin, &pki.ca_file(), PEERS, Some(operator));
    start_replica(proxy, admin, &config, access).await
}

#[tokio::test]
async fn peers_requiring_client_certificates_accept_only_replicas_that_present_one() {
    let origin = Origin::start(tagged).await;
    let pki = Pki::new("mtls-fleet");
    let operator = pki.client("operator", "operator");
    let ports = (replica_port(), replica_port());
    let mut nodes = Vec::new();
    for i in 0..2 {
        nodes.push(mtls_replica(i, ports, &origin, &pki, &operator, true).await);
    }
    // The third serves the same TLS but presents no client certificate to its peers.
    let anonymous = mtls_replica(2, ports, &origin, &pki, &operator, false).await;
    for n in nodes.iter().chain([&anonymous]) {
        for path in ["/items/1", "/items/2"] {
            n.get(path).await;
            assert!(n.get(path).await.is_hit(), "{path} cached on {}", n.proxy);
        }
    }

    // From a replica that presents its certificate, the purge reaches every peer.
    let v = purge(&nodes[0], json!({"tags": ["item-1"], "wait": true})).await;
    assert_eq!(v["pending"], json!([]), "{v}");
    for n in nodes.iter().chain([&anonymous]) {
        assert!(!n.get("/items/1").await.is_hit(), "purged on {}", n.proxy);
    }

    // From the one that presents none, peers refuse the handshake: nothing reaches them.
    let v = purge(&anonymous, json!({"tags": ["item-2"], "wait": true})).await;
    assert_eq!(
        v["acknowledged"],
        json!([]),
        "no peer accepted an anonymous replica: {v}"
    );
    let refused = "corral_admin_tls_handshake_failures_total{reason=\"no_client_certificate\"}";
    for n in &nodes {
        assert!(
            eventually(Duration::from_secs(10), async || n.metric(refused).await
                >= 1.0)
            .await,
            "{}",
            n.admin_text("/metrics").await
        );
        assert!(
            n.get("/items/2").await.is_hit(),
            "not purged on {}",
            n.proxy
        );
    }
}

/// A replica's `[cluster] tls` files as a Kubernetes Secret volume: `ca.pem`, `tls.crt`,
/// `tls.key`, the certificate `pki` issued for replica `i`.
fn peer_secret(i: usize, pki: &Pki) -> [(&'static str, Vec<u8>); 3] {
    let cert = pki.server(&format!("rotating{i}"), &[PEERS, &Replicas::ip(i)]);
    [
        ("ca.pem", std::fs::read(pki.ca_file()).unwrap()),
        ("tls.crt", std::fs::read(&cert.cert).unwrap()),
        ("tls.key", std::fs::read(&cert.key).unwrap()),
    ]
}

/// The volume's view of a Secret's files.
fn files<'a>(f: &'a [(&'static str, Vec<u8>)]) -> Vec<(&'static str, &'a [u8])> {
    f.iter().map(|(n, b)| (*n, b.as_slice())).collect()
}

/// Replica `i` of 2 whose `[cluster] tls` files are `volume`'s, checked every 200ms; the
/// admin listener serves the same certificate. The test reaches it trusting `bundle`.
async fn rotating_replica(
    i: usize,
    ports: (u16, u16),
    origin: &Origin,
    volume: &SecretVolume,
    bundle: &std::path::Path,
) -> Corral {
    let (proxy, admin) = Replicas::addrs(i, ports.0, ports.1);
    let discovery = Replicas::static_discovery(2, ports.1);
    let config = format!(
        "[upstream]\nurl = \"{}\"\n[cluster]\nheartbeat = \"300ms\"\n\
         {discovery}\n\
         tls = {{ ca_file = \"{}\", server_name = \"{PEERS}\", cert_file = \"{}\", key_file = \"{}\", reload_interval = \"200ms\" }}\n",
        origin.url(),
        volume.path("ca.pem").display(),
        volume.path("tls.crt").display(),
        volume.path("tls.key").display(),
    );
    let access = admin_access(admin, bundle, PEERS, None);
    start_replica(proxy, admin, &config, access).await
}

/// Whether a purge of `tag` from `from` is acknowledged by exactly `by`, within 20 s (a
/// restarted peer is back within a few retries; a refused handshake never is).
async fn reaches(from: &Corral, tag: &str, by: &serde_json::Value) -> bool {
    eventually(Duration::from_secs(20), async || {
        &purge(from, json!({"tags": [tag], "wait": true})).await["acknowledged"] == by
    })
    .await
}

#[tokio::test]
async fn peer_tls_follows_a_rotation_to_a_new_ca_and_keeps_its_config_on_a_bad_file() {
    let origin = Origin::start(tagged).await;
    let before = Pki::new("before");
    let after = Pki::new("after");
    // The test's own client trusts both CAs: it reads metrics across the rotation.
    let bundle = before.dir.join("bundle.pem");
    let both = [before.ca_file(), after.ca_file()].map(|f| std::fs::read(f).unwrap());
    std::fs::write(&bundle, both.concat()).unwrap();
    let ports = (replica_port(), replica_port());
    let mut volumes = Vec::new();
    for i in 0..2 {
        let dir = before.dir.join(format!("secret{i}"));
        volumes.push(SecretVolume::new(&dir, &files(&peer_secret(i, &before))));
    }
    let a = rotating_replica(0, ports, &origin, &volumes[0], &bundle).await;
    let mut b = rotating_replica(1, ports, &origin, &volumes[1], &bundle).await;
    let b_addr = json!([format!("{}:{}", Replicas::ip(1), ports.1)]);
    assert!(reaches(&a, "item-1", &b_addr).await, "before the rotation");

    // Both Secrets move to the new CA at once (one symlink swap each): every replica trusts
    // only the new CA and presents a certificate only the new CA signed.
    for (i, v) in volumes.iter_mut().enumerate() {
        let next = peer_secret(i, &after);
        v.update(&files(&next));
    }
    let ok = "corral_peer_tls_reloads_total{result=\"ok\"}";
    let err = "corral_peer_tls_reloads_total{result=\"error\"}";
    let served = "corral_admin_tls_certificate_reloads_total{result=\"ok\"}";
    for n in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(20), async || n.metric(ok).await >= 1.0
                && n.metric(served).await >= 1.0)
            .await,
            "{}",
            n.admin_text("/metrics").await
        );
        assert_eq!(n.metric(err).await, 0.0, "a whole swap never reads half");
    }
    // Connections pooled before the rotation keep working.
    assert!(reaches(&a, "item-2", &b_addr).await, "after the rotation");

    // A restarted B drops every connection A held to it: A's next ones are new handshakes,
    // which B answers with a certificate of the new CA — the old CA would refuse it.
    drop(b);
    b = rotating_replica(1, ports, &origin, &volumes[1], &bundle).await;
    assert!(reaches(&a, "item-3", &b_addr).await, "new connections");
    assert_eq!(
        a.metric("corral_peer_tls_failures_total").await,
        0.0,
        "no handshake was refused: {}",
        a.admin_text("/metrics").await
    );

    // Garbage for A's CA: counted, and A keeps the config it had.
    let good = peer_secret(0, &after);
    let mut garbage = good.clone();
    garbage[0].1 = b"not a certificate\n".to_vec();
    volumes[0].update(&files(&garbage));
    assert!(
        eventually(Duration::from_secs(20), async || a.metric(err).await >= 1.0).await,
        "{}",
        a.admin_text("/metrics").await
    );
    assert_eq!(a.metric(ok).await, 1.0, "nothing swapped in");
    drop(b);
    b = rotating_replica(1, ports, &origin, &volumes[1], &bundle).await;
    assert!(
        reaches(&a, "item-4", &b_addr).await,
        "new connections with the previous config"
    );

    // A key that is not the certificate's (mTLS material checked as the listener's is):
    // counted again, purges still flow both ways.
    let mut mismatched = good.clone();
    mismatched[2].1 = std::fs::read(after.server("stray", &[PEERS]).key).unwrap();
    volumes[0].update(&files(&mismatched));
    assert!(
        eventually(Duration::from_secs(20), async || a.metric(err).await >= 2.0).await,
        "{}",
        a.admin_text("/metrics").await
    );
    assert!(reaches(&a, "item-5", &b_addr).await);
    let a_addr = json!([format!("{}:{}", Replicas::ip(0), ports.1)]);
    assert!(reaches(&b, "item-6", &a_addr).await);
    assert_eq!(a.metric("corral_peer_tls_failures_total").await, 0.0);
    assert_eq!(b.metric("corral_peer_tls_failures_total").await, 0.0);
}
