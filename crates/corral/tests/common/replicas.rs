//! Several real `corral` replicas on 127.0.0.11, .12, .13 ... sharing a proxy port and an
//! admin port, in front of one origin, finding each other through a static list.

use std::net::SocketAddr;

use super::{replica_port, Corral, Origin, Reply, Seen};

pub const SECRET: &str = "cluster-test-secret-0123456789";

/// The origin of the cluster tests: `/items/{id}` cached 300 s, tagged `item-{id}` and `items`.
pub fn tagged(s: &Seen) -> Reply {
    let id = s.uri.rsplit('/').next().unwrap_or("").to_string();
    Reply::ok(format!("item {id}"))
        .header("cache-control", "max-age=300")
        .header("surrogate-key", &format!("item-{id} items"))
}

/// N replicas sharing a proxy port and an admin port on 127.0.0.11, .12, ...
pub struct Replicas {
    pub nodes: Vec<Option<Corral>>,
    pub proxy_port: u16,
    pub admin_port: u16,
    extra: String,
    origin_url: String,
    discovery: String,
}

impl Replicas {
    pub fn ip(i: usize) -> String {
        format!("127.0.0.{}", 11 + i)
    }

    pub fn addrs(i: usize, proxy: u16, admin: u16) -> (SocketAddr, SocketAddr) {
        (
            format!("{}:{proxy}", Self::ip(i)).parse().unwrap(),
            format!("{}:{admin}", Self::ip(i)).parse().unwrap(),
        )
    }

    /// The `[cluster] discovery` line listing the admin listeners of replicas `0..n`.
    pub fn static_discovery(n: usize, admin_port: u16) -> String {
        let peers: Vec<String> = (0..n)
            .map(|i| format!("\"{}:{admin_port}\"", Self::ip(i)))
            .collect();
        format!(
            "discovery = {{ kind = \"static\", addresses = [{}] }}",
            peers.join(", ")
        )
    }

    /// `n` replicas that find each other through a static list.
    pub async fn start(n: usize, origin: &Origin, extra: &str) -> Replicas {
        let proxy_port = replica_port();
        let admin_port = replica_port();
        let discovery = Self::static_discovery(n, admin_port);
        Self::start_with(n, origin, extra, discovery, proxy_port, admin_port).await
    }

    pub async fn start_with(
        n: usize,
        origin: &Origin,
        extra: &str,
        discovery: String,
        proxy_port: u16,
        admin_port: u16,
    ) -> Replicas {
        let mut r = Replicas {
            nodes: Vec::new(),
            proxy_port,
            admin_port,
            extra: extra.into(),
            origin_url: origin.url(),
            discovery,
        };
        for i in 0..n {
            let node = r.spawn(i).await;
            r.nodes.push(Some(node));
        }
        r
    }

    pub async fn spawn(&self, i: usize) -> Corral {
        let (proxy, admin) = Self::addrs(i, self.proxy_port, self.admin_port);
        let config = format!(
            "[upstream]\nurl = \"{}\"\n[cluster]\n{}\nheartbeat = \"300ms\"\n{}\n",
            self.origin_url, self.discovery, self.extra
        );
        Corral::start_on(proxy, admin, &config, &[("CORRAL_CLUSTER_SECRET", SECRET)]).await
    }

    pub fn node(&self, i: usize) -> &Corral {
        self.nodes[i].as_ref().expect("replica running")
    }

    pub async fn restart(&mut self, i: usize) {
        self.nodes[i] = None;
        let node = self.spawn(i).await;
        self.nodes[i] = Some(node);
    }
}

pub async fn warm_all(r: &Replicas, path: &str) {
    for n in r.nodes.iter().flatten() {
        n.get(path).await;
        assert!(n.get(path).await.is_hit(), "{path} cached on {}", n.proxy);
    }
}
