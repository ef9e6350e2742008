//! Coherence by joining the cluster directly: three members on 127.0.0.11, .12, .13 (one port,
//! a static peer list), signed HTTP fan-out as between Corral gateways.

use std::time::Duration;

use corral_cache::cluster::{Member, MemberConfig, MemberError};
use corral_cache::Cache;
use corral_discovery::Spec;

const SECRET: &str = "member-test-secret-0123456789";

use corral_testkit::{eventually, replica_port};

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
            eventually(Duration::from_secs(10), async || c
                .get(&"a1".into())
                .is_none())
            .await,
            "pod {i}"
        );
        assert_eq!(c.get(&"a2".into()), Some(100));
    }
    caches[1].invalidate_tag("provider-b");
    for c in &caches {
        assert!(
            eventually(Duration::from_secs(10), async || c
                .get(&"b1".into())
                .is_none())
            .await
        );
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
