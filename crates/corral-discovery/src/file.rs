//! File discovery: a JSON (`["10.0.0.2:9090", ...]` or `{"addresses": [...]}`) or TOML
//! (`addresses = [...]`) list of peers, re-read when its content changes. A file that cannot be
//! read or parsed keeps the last known peers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::{publish, Endpoint, Health};

/// Parses the file's text into addresses and weights. Each entry is `"ip:port"` or
/// `{"address": "ip:port", "weight": 3}` (weight 1 when not given).
pub fn parse(text: &str) -> Result<Vec<(SocketAddr, u32)>, String> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Item {
        Plain(String),
        Weighted {
            address: String,
            weight: Option<u32>,
        },
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Doc {
        List(Vec<Item>),
        Table { addresses: Vec<Item> },
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
        .map(|item| {
            let (a, w) = match item {
                Item::Plain(a) => (a, 1),
                Item::Weighted { address, weight } => (address, weight.unwrap_or(1)),
            };
            if w == 0 {
                return Err(format!("{a:?}: weight must be at least 1"));
            }
            a.trim()
                .parse::<SocketAddr>()
                .map(|addr| (addr, w))
                .map_err(|_| format!("{a:?} is not an ip:port address"))
        })
        .collect()
}

/// Follows `path` until the receiver is dropped.
pub async fn follow(
    tx: watch::Sender<Vec<Endpoint>>,
    path: PathBuf,
    health: std::sync::Arc<Health>,
) {
    let mut last: Option<String> = None;
    while !tx.is_closed() {
        match tokio::fs::read_to_string(&path).await {
            Ok(text) if last.as_deref() != Some(text.as_str()) => {
                match parse(&text) {
                    Ok(addrs) => {
                        health.ok();
                        let set = addrs
                            .into_iter()
                            .map(|(a, w)| Endpoint::weighted(a, w))
                            .collect();
                        publish(&tx, set, &health);
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
        let want: Vec<(SocketAddr, u32)> = vec![("10.0.0.2:9090".parse().unwrap(), 1)];
        assert_eq!(parse(r#"["10.0.0.2:9090"]"#).unwrap(), want);
        assert_eq!(parse(r#"{"addresses": ["10.0.0.2:9090"]}"#).unwrap(), want);
        assert_eq!(parse("addresses = [\"10.0.0.2:9090\"]").unwrap(), want);
        assert!(parse("[\"nope\"]").unwrap_err().contains("nope"));
        assert_eq!(
            parse(r#"[{"address": "10.0.0.2:9090", "weight": 3}]"#).unwrap(),
            vec![("10.0.0.2:9090".parse().unwrap(), 3)]
        );
        assert!(parse(r#"[{"address": "10.0.0.2:9090", "weight": 0}]"#).is_err());
        assert!(parse("{{{").is_err());
    }
}
