//! File discovery: a JSON (`["10.0.0.2:9090", ...]` or `{"addresses": [...]}`) or TOML
//! (`addresses = [...]`) list of peers, re-read when its content changes. A file that cannot be
//! read or parsed keeps the last known peers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use corral_cluster::PeerAddr;
use tokio::sync::watch;

/// Parses the file's text into addresses.
pub fn parse(text: &str) -> Result<Vec<SocketAddr>, String> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Doc {
        List(Vec<String>),
        Table { addresses: Vec<String> },
    }
    let doc: Doc = match serde_json::from_str(text) {
        Ok(d) => d,
        Err(json_err) => toml::from_str(text)
            .map_err(|_| format!("neither a JSON list nor TOML `addresses = [...]`: {json_err}"))?,
    };
    let list = match doc {
        Doc::List(l) | Doc::Table { addresses: l } => l,
    };
    list.iter()
        .map(|a| {
            a.trim()
                .parse::<SocketAddr>()
                .map_err(|_| format!("{a:?} is not an ip:port address"))
        })
        .collect()
}

/// Follows `path` until the receiver is dropped.
pub async fn follow(
    tx: watch::Sender<Vec<PeerAddr>>,
    path: PathBuf,
    health: std::sync::Arc<super::Health>,
) {
    let mut last: Option<String> = None;
    while !tx.is_closed() {
        match tokio::fs::read_to_string(&path).await {
            Ok(text) if last.as_deref() != Some(text.as_str()) => {
                match parse(&text) {
                    Ok(addrs) => {
                        health.ok();
                        let mut set: Vec<PeerAddr> = addrs
                            .into_iter()
                            .map(|addr| PeerAddr {
                                addr,
                                source: "file".into(),
                            })
                            .collect();
                        set.sort();
                        set.dedup();
                        super::publish(&tx, set, "file");
                    }
                    Err(e) => health.failed(&format!("{}: {e}", path.display())),
                }
                last = Some(text);
            }
            Ok(_) => {}
            Err(e) => health.failed(&format!("{}: {e}", path.display())),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let want: Vec<SocketAddr> = vec!["10.0.0.2:9090".parse().unwrap()];
        assert_eq!(parse(r#"["10.0.0.2:9090"]"#).unwrap(), want);
        assert_eq!(parse(r#"{"addresses": ["10.0.0.2:9090"]}"#).unwrap(), want);
        assert_eq!(parse("addresses = [\"10.0.0.2:9090\"]").unwrap(), want);
        assert!(parse("[\"nope\"]").unwrap_err().contains("nope"));
        assert!(parse("{{{").is_err());
    }
}
