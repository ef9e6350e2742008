//! The command line: config validation, flags, exit codes, secrets policy.

mod common;

use std::process::Command;

use common::*;

fn corral(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env_remove("CORRAL_ADMIN_TOKEN")
        .output()
        .unwrap()
}

#[test]
fn version() {
    let out = corral(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("corral "));
}

#[test]
fn check_config_accepts_the_contract_example() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ok.toml");
    std::fs::write(
        &f,
        r#"
[server]
listen = "0.0.0.0:8080"
admin_listen = "127.0.0.1:9090"
shutdown_grace = "30s"

[upstream]
url = "http://127.0.0.1:3000"

[cache]
max_size = "256MiB"
max_object_size = "8MiB"
max_ttl = "24h"
stale_while_revalidate = "0s"
stale_if_error = "0s"
ignore_query = ["utm_*", "fbclid"]
key_headers = []

[admin]
purge_allow = ["127.0.0.1/32"]

[[upstreams]]
name = "catalog"
discovery = { kind = "static", addresses = ["127.0.0.1:3001", "127.0.0.1:3002"] }
balance = "round_robin"

[[routes]]
path_prefix = "/api/catalog/"
upstream = "catalog"
cache = { default_ttl = "0s" }
"#,
    )
    .unwrap();
    let out = corral(&["check-config", f.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_values_exit_2_naming_key_value_and_allowed() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key, value) in [
        ("[cache]\nmax_size = \"lots\"", "cache.max_size", "lots"),
        ("[server]\nlisten = \"nowhere\"", "server.listen", "nowhere"),
        ("[cache]\nmax_ttl = \"forever\"", "cache.max_ttl", "forever"),
        ("[cache]\ntypo_key = 1", "typo_key", "typo_key"),
        (
            "[admin]\npurge_allow = [\"10.0.0.0/99\"]",
            "admin.purge_allow[0]",
            "10.0.0.0/99",
        ),
    ] {
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, text).unwrap();
        let out = corral(&["check-config", f.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key) && err.contains(value), "{text}: {err}");
        // serve refuses the same file at start, with the same exit code.
        let out = corral(&["serve", "--config", f.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "serve {text}");
    }
    let out = corral(&["serve", "--listen", "not-an-address"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.listen"));
    let out = corral(&["serve", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn admin_off_loopback_requires_a_token() {
    let port = free_port("127.0.0.1");
    let out = corral(&[
        "serve",
        "--admin-listen",
        &format!("0.0.0.0:{port}"),
        "--listen",
        &format!("127.0.0.1:{}", free_port("127.0.0.1")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token"), "{err}");
}
