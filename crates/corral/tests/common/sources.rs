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
