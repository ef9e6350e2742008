//! The admin API over TLS (`[admin] tls`): real TLS clients (reqwest, curl), client
//! certificates required when `client_ca_file` is set, and the certificate reloaded when its
//! files change, as the proxy's TLS listener does.

mod common;

use std::time::Duration;

use common::tls::*;
use common::*;
use serde_json::json;

fn origin_reply(s: &Seen) -> Reply {
    Reply::ok(format!("body of {}", s.uri)).header("cache-control", "max-age=300")
}

/// `[admin] tls` with `cert`, requiring client certificates from `clients`, reloaded often.
fn admin_tls(cert: &CertFiles, clients: &Pki) -> String {
    format!(
        "[admin]\ntls = {{ cert_file = \"{}\", key_file = \"{}\", client_ca_file = \"{}\", reload_interval = \"100ms\" }}\n",
        cert.cert.display(),
        cert.key.display(),
        clients.ca_file().display()
    )
}

#[tokio::test]
async fn the_admin_api_over_tls_requires_a_client_certificate_and_reloads_its_own() {
    let origin = Origin::start(origin_reply).await;
    let pki = Pki::new("admin");
    let clients = Pki::new("admin-clients");
    let strangers = Pki::new("strangers");
    let served = pki.server("admin", &["admin.test"]);
    let operator = clients.client("operator", "operator");
    let (proxy, admin) = (loopback_addr(), loopback_addr());
    let config = format!("{}{}", admin_tls(&served, &clients), config(&origin, ""));
    let access = admin_access(admin, &pki.ca_file(), "admin.test", Some(&operator));
    // Ready is observed over TLS with the operator's certificate.
    let c = Corral::start_as(proxy, admin, &config, &[], access).await;

    // The API works over TLS: a purge removes a cached entry.
    c.get("/a").await;
    assert!(c.get("/a").await.is_hit());
    let v = purge(&c, json!({"urls": ["/a"]})).await;
    assert_eq!(v["purged"], 1, "{v}");
    assert!(!c.get("/a").await.is_hit());
    assert!(c.metric("corral_admin_tls_handshakes_total").await >= 1.0);

    // curl with the operator's certificate is served; without one, or with another CA's, the
    // handshake is refused and counted by reason.
    let ca = pki.ca_file();
    let ok = curl_tls_as(&ca, "admin.test", admin, "/healthz", &operator).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    c.get("/b").await;
    assert!(c.get("/b").await.is_hit());
    let bare = curl_tls(
        &ca,
        "admin.test",
        admin,
        "/purge",
        &["-X", "POST", "-d", "{\"all\":true}"],
    )
    .await;
    assert_eq!(bare.status, 0, "no client certificate: {bare:?}");
    let stranger = strangers.client("stranger", "stranger");
    let other = curl_tls_as(&ca, "admin.test", admin, "/metrics", &stranger).await;
    assert_eq!(other.status, 0, "another CA's certificate: {other:?}");
    let failures = "corral_admin_tls_handshake_failures_total";
    for reason in ["no_client_certificate", "bad_client_certificate"] {
        let name = format!("{failures}{{reason=\"{reason}\"}}");
        assert!(
            c.metric_holds_within(&name, Duration::from_secs(10), |n| n >= 1.0)
                .await,
            "{reason}: {}",
            c.admin_text("/metrics").await
        );
    }
    // The refused POST purged nothing.
    assert!(c.get("/b").await.is_hit());

    // Plain HTTP is not served on a TLS admin listener.
    let plain = client().get(format!("http://{admin}/healthz")).send().await;
    assert!(plain.is_err(), "{plain:?}");

    // Rotation: a certificate for another name replaces the files; new handshakes get it.
    let renamed = pki.server("renamed", &["admin2.test"]);
    install(&renamed, &served);
    let reloads = "corral_admin_tls_certificate_reloads_total{result=\"ok\"}";
    assert!(
        c.metric_holds_within(reloads, Duration::from_secs(10), |n| n >= 1.0)
            .await
    );
    let after = curl_tls_as(&ca, "admin2.test", admin, "/healthz", &operator).await;
    assert_eq!(after.status, 200, "{after:?}");
    let old_name = curl_tls_as(&ca, "admin.test", admin, "/healthz", &operator).await;
    assert_eq!(
        old_name.status, 0,
        "the old certificate is gone: {old_name:?}"
    );
}

#[tokio::test]
async fn a_missing_admin_certificate_stops_the_start_naming_the_key() {
    let pki = Pki::new("admin-bad");
    let dir = tempfile::tempdir().unwrap();
    let missing = pki.dir.join("missing.pem");
    let text = format!(
        "{}[admin]\ntls = {{ cert_file = \"{}\", key_file = \"{}\" }}\n",
        loopback_server_table(),
        missing.display(),
        missing.display()
    );
    let out = serve_to_exit(&config_file(dir.path(), &text));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.tls") && err.contains("cannot read"),
        "{err}"
    );
}
