//! Coherence by joining the cluster directly: three members on 127.0.0.11, .12, .13 (one port,
//! a static peer list), signed HTTP fan-out as between Corral gateways.

use std::time::{Duration, Instant};

use corral_cache::cluster::{Member, MemberConfig, MemberError};
use corral_cache::Cache;
use corral_discovery::Spec;

const SECRET: &str = "member-test-secret-0123456789";

/// A port free on every replica address (127.0.0.11 to .19) at once: replicas share one port
/// on different addresses, and other tests run replicas on the same addresses meanwhile.
fn replica_port() -> u16 {
    quiet_port(&replica_ips())
}

/// A port below the kernel's ephemeral range, chosen at random, free on every one of `ips`
/// right now. Below that range no outgoing connection (another test's client) can be holding
/// it by the time a child process binds it; a port handed out by binding `:0` comes from that
/// very range, and one was seen taken in that window.
fn quiet_port(ips: &[String]) -> u16 {
    use std::hash::BuildHasher;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (from, span) = if low > 12_000 {
        (low - 10_000, 10_000)
    } else {
        (40_000, 20_000)
    };
    loop {
        let r = std::hash::RandomState::new().hash_one(std::time::Instant::now());
        let port = from + (r % span) as u16;
        if ips
            .iter()
            .all(|ip| std::net::TcpListener::bind((ip.as_str(), port)).is_ok())
        {
            return port;
        }
    }
}

fn replica_ips() -> Vec<String> {
    (11..20).map(|i| format!("127.0.0.{i}")).collect()
}

async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_in_one_pod_reaches_every_pod() {
    let port = replica_port();
    let addrs: Vec<_> = (0..3)
        .map(|i| (format!("127.0.0.{}:{port}", 11 + i).parse().unwrap(), 1))
        .collect();
    let mut members = Vec::new();
    let mut caches = Vec::new();
    for i in 0..3 {
        let m = Member::start(MemberConfig {
            listen: addrs[i].0,
            advertise: None,
            instance: format!("svc-{i}"),
            secret: SECRET.into(),
            peers: Spec::Static(addrs.clone()),
        })
        .await
        .unwrap();
        let c: Cache<String, u32> = Cache::builder("prices")
            .tags(|k: &String, _| vec![format!("provider-{}", &k[..1])])
            .build()
            .unwrap();
        m.attach(&c);
        for k in ["a1", "a2", "b1"] {
            c.insert(k.to_string(), 100);
        }
        members.push(m);
        caches.push(c);
    }
    caches[0].invalidate(&"a1".to_string());
    for (i, c) in caches.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(10), || c.get(&"a1".into()).is_none()).await,
            "pod {i}"
        );
        assert_eq!(c.get(&"a2".into()), Some(100));
    }
    caches[1].invalidate_tag("provider-b");
    for c in &caches {
        assert!(eventually(Duration::from_secs(10), || c.get(&"b1".into()).is_none()).await);
        assert_eq!(c.get(&"a2".into()), Some(100));
    }
    // Every peer acknowledged pod 0's event.
    let peers = members[0].peers_json();
    assert!(
        peers.to_string().contains(&format!("127.0.0.12:{port}")),
        "{peers}"
    );
    assert!(members[0]
        .metrics_text()
        .contains("corral_peer_events_sent_total"));
}

#[tokio::test]
async fn bad_member_settings_are_refused() {
    let e = Member::start(MemberConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        instance: "x".into(),
        secret: "short".into(),
        peers: Spec::Static(vec![]),
    })
    .await
    .err()
    .unwrap();
    assert!(matches!(e, MemberError::Secret(_)), "{e}");
    assert!(e.to_string().contains("16"));
}
