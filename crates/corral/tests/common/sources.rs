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
