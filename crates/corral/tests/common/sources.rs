//! What the `[[sources]]` tests (PostgreSQL's and MariaDB's) share.

use std::time::Duration;

use super::{eventually, Corral};

/// A fresh directory for one test's files (passwords, configs).
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("corral-sources-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// What `/sources` says of the one source once it says `want` (or after 30 s, to fail on).
pub async fn source_state(
    c: &Corral,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut doc = serde_json::Value::Null;
    eventually(Duration::from_secs(30), async || {
        doc = c.admin_json("/sources").await["sources"][0].clone();
        want(&doc)
    })
    .await;
    doc
}

/// The `[[sources]]` table of the tests: one source `shop` of `kind` at `dsn`, its password in
/// a file under `dir`, one rule mapping the `packages` table to `tag`.
pub fn shop_source(
    kind: &str,
    dsn: &str,
    password: &str,
    dir: &std::path::Path,
    tag: &str,
) -> String {
    let file = dir.join(format!("{kind}-password"));
    std::fs::write(&file, password).unwrap();
    format!(
        "[[sources]]\nname = \"shop\"\nkind = \"{kind}\"\ndsn = \"{dsn}\"\npassword_file = \"{}\"\n\
         rules = [ {{ table = \"packages\", tags = [\"{tag}\"] }} ]\n",
        file.display()
    )
}

/// Waits until replica `c`'s one source streams (fails after 30 s, showing `/sources`).
pub async fn assert_streaming(c: &Corral) {
    let doc = source_state(c, |d| d["streaming"] == true).await;
    assert_eq!(doc["streaming"], true, "{doc}");
}

/// Waits until every live replica of `r` misses `path` (its copy purged); `when` says when,
/// for the failure message.
pub async fn assert_purged_everywhere(r: &super::replicas::Replicas, path: &str, when: &str) {
    for n in r.nodes.iter().flatten() {
        let purged = eventually(Duration::from_secs(30), async || {
            !n.get(path).await.is_hit()
        })
        .await;
        assert!(purged, "{path} purged on {} {when}", n.proxy);
    }
}

/// Waits until replica `c`'s one source has failed at least once (a refused connection or
/// handshake): what `/sources` says of it, and its `last_error`.
pub async fn first_error(c: &Corral) -> (serde_json::Value, String) {
    let doc = source_state(c, |d| d["errors"].as_u64() >= Some(1)).await;
    let why = doc["last_error"].as_str().unwrap_or_default().to_string();
    (doc, why)
}

/// The one replica of `r` follows its source (over TLS, in the tests that call it) and purges
/// `/items/1` once `commit` has changed the row behind it.
pub async fn follows_and_purges(r: &super::replicas::Replicas, commit: impl FnOnce()) {
    assert_streaming(r.node(0)).await;
    super::replicas::warm_all(r, "/items/1").await;
    commit();
    assert_purged_everywhere(r, "/items/1", "after an update over TLS").await;
}

/// Once replica 0 of `r` follows the source, kills it (SIGKILL: its connection to the
/// database dies with it) and caches `/items/1` on the others, for a change committed while
/// no replica follows.
pub async fn kill_the_leader_and_warm_the_rest(r: &mut super::replicas::Replicas) {
    assert_streaming(r.node(0)).await;
    r.nodes[0] = None;
    for n in r.nodes.iter().flatten() {
        n.get("/items/1").await;
        assert!(n.get("/items/1").await.is_hit());
    }
}

/// A replica whose rule names the column `sku`, which the `packages` table lacks, must refuse
/// to start (exit 2) naming the table and the column, and never log `password`.
pub async fn assert_missing_column_refused(dir: &std::path::Path, source: &str, password: &str) {
    let (code, stderr) = refused_start(dir, source).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("\"packages\"") && stderr.contains("\"sku\""),
        "{stderr}"
    );
    assert!(
        !stderr.contains(password),
        "the password never reaches a log"
    );
}

/// Writes a one-replica config with `source` beside it and starts `corral serve`, which must
/// refuse to start: its exit code and stderr. (`check-config` alone is asked first: it cannot
/// know the database, so it must accept the file.)
pub async fn refused_start(dir: &std::path::Path, source: &str) -> (Option<i32>, String) {
    let config = dir.join("corral.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n{source}",
        corral_testkit::free_port("127.0.0.1"),
        corral_testkit::free_port("127.0.0.1"),
    );
    std::fs::write(&config, text).unwrap();
    let check = std::process::Command::new(super::bin())
        .args(["check-config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "check-config cannot know the database: {check:?}"
    );
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(super::bin())
            .args(["serve", "--config"])
            .arg(&config)
            .output(),
    )
    .await
    .expect("exits within a minute")
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
