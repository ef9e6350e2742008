//! `[[sources]]` against a real PostgreSQL started on loopback: a change committed by a plain
//! SQL client (psql) purges exactly the tags its rule maps, on every replica; a rule naming a
//! missing column stops the replica at start, naming the table and the column.

mod common;

use std::time::Duration;

use common::replicas::{tagged, warm_all, Replicas};
use common::sources::{
    assert_missing_column_refused, assert_purged_everywhere, assert_streaming, first_error,
    follows_and_purges, kill_the_leader_and_warm_the_rest, refused_start, shop_source,
    source_state, temp_dir,
};
use common::{eventually, Origin};
use corral_testkit::postgres::Postgres;

fn database() -> Postgres {
    let pg = Postgres::start();
    pg.psql("CREATE TABLE packages (id int PRIMARY KEY, name text); ALTER TABLE packages OWNER TO corral; INSERT INTO packages VALUES (1, 'a'), (2, 'b');");
    pg
}

fn source_config(pg: &Postgres, dir: &std::path::Path, tag: &str) -> String {
    shop_source("postgres", &pg.dsn(), Postgres::PASSWORD, dir, tag)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_committed_by_psql_purges_its_tags_on_three_replicas() {
    let pg = database();
    let dir = temp_dir("three");
    let origin = Origin::start(tagged).await;
    let extra = source_config(&pg, &dir, "item-{id}");
    let r = Replicas::start(3, &origin, &extra).await;
    let leader = r.node(0);
    assert_streaming(leader).await;
    warm_all(&r, "/items/1").await;
    warm_all(&r, "/items/2").await;

    pg.psql("BEGIN; UPDATE packages SET name = 'x' WHERE id = 2; ROLLBACK;");
    pg.psql("UPDATE packages SET name = 'c' WHERE id = 1;");
    for n in r.nodes.iter().flatten() {
        let purged = eventually(Duration::from_secs(30), async || {
            !n.get("/items/1").await.is_hit()
        })
        .await;
        assert!(purged, "/items/1 purged on {}", n.proxy);
        assert!(
            n.get("/items/2").await.is_hit(),
            "/items/2 untouched on {} (rolled back)",
            n.proxy
        );
    }
    let doc = leader.admin_json("/sources").await;
    assert_eq!(doc["sources"][0]["is_leader"], true, "{doc}");
    assert_eq!(
        r.node(1).admin_json("/sources").await["sources"][0]["is_leader"],
        false
    );
    let acked = eventually(Duration::from_secs(30), async || {
        leader
            .metric("corral_source_lag_seconds{source=\"shop\"}")
            .await
            == 0.0
            && leader
                .metric("corral_source_transactions_total{source=\"shop\"}")
                .await
                >= 1.0
    })
    .await;
    assert!(acked, "{}", leader.admin_json("/sources").await);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_naming_a_missing_column_fails_at_start() {
    let pg = database();
    let dir = temp_dir("missing");
    let source = source_config(&pg, &dir, "package-{sku}");
    assert_missing_column_refused(&dir, &source, Postgres::PASSWORD).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_publication_that_leaves_out_a_rules_table_fails_at_start() {
    let pg = database();
    pg.psql("CREATE TABLE other (id int PRIMARY KEY); ALTER TABLE other OWNER TO corral; CREATE PUBLICATION corral FOR TABLE other;");
    let dir = temp_dir("publication");
    let (code, stderr) = refused_start(&dir, &source_config(&pg, &dir, "item-{id}")).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("does not publish [\"packages\"]")
            && stderr.contains("ALTER PUBLICATION \"corral\" ADD TABLE \"packages\""),
        "{stderr}"
    );
    // Once the publication covers the table, the same replica starts.
    pg.psql("ALTER PUBLICATION corral ADD TABLE packages;");
    let origin = Origin::start(tagged).await;
    let r = Replicas::start(1, &origin, &source_config(&pg, &dir, "item-{id}")).await;
    assert_streaming(r.node(0)).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_another_replica_takes_over_from_the_confirmed_position() {
    let pg = database();
    let dir = temp_dir("failover");
    let origin = Origin::start(tagged).await;
    let extra = source_config(&pg, &dir, "item-{id}");
    let mut r = Replicas::start(3, &origin, &extra).await;
    kill_the_leader_and_warm_the_rest(&mut r).await; // its session dies, the slot is free
                                                     // Committed while no replica follows: the slot keeps it for the next leader.
    pg.psql("UPDATE packages SET name = 'd' WHERE id = 1;");
    assert_streaming(r.node(1)).await;
    assert_purged_everywhere(&r, "/items/1", "after the failover").await;
    let _ = std::fs::remove_dir_all(dir);
}

/// `source_config` with `ssl` (libpq's `sslmode=... sslrootcert=...`) added to the DSN.
fn tls_source_config(pg: &Postgres, dir: &std::path::Path, ssl: &str) -> String {
    source_config(pg, dir, "item-{id}").replace(&pg.dsn(), &format!("{} {ssl}", pg.dsn()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_follows_over_verified_tls_and_refuses_a_wrong_ca_or_a_server_in_clear() {
    let pki = corral_testkit::tls::Pki::new("pg");
    let other = corral_testkit::tls::Pki::new("pg-other");
    let cert = pki.server("pg", &["127.0.0.1"]);
    let pg = Postgres::start_tls(&cert);
    pg.psql("CREATE TABLE packages (id int PRIMARY KEY, name text); ALTER TABLE packages OWNER TO corral; INSERT INTO packages VALUES (1, 'a');");
    let dir = temp_dir("tls");
    let origin = Origin::start(tagged).await;

    // verify-full against the CA that signed the server's certificate: follows and purges.
    let ca = pki.ca_file();
    let ssl = format!("sslmode=verify-full sslrootcert={}", ca.display());
    let r = Replicas::start(1, &origin, &tls_source_config(&pg, &dir, &ssl)).await;
    follows_and_purges(&r, || {
        pg.psql("UPDATE packages SET name = 'b' WHERE id = 1;");
    })
    .await;
    drop(r);

    // Another CA: the handshake fails, the source never streams, and it says why.
    let ssl = format!(
        "sslmode=verify-full sslrootcert={}",
        other.ca_file().display()
    );
    let r = Replicas::start(1, &origin, &tls_source_config(&pg, &dir, &ssl)).await;
    let (doc, why) = first_error(r.node(0)).await;
    assert!(why.contains("TLS") && why.contains("certificate"), "{doc}");
    assert_ne!(doc["streaming"], true, "{doc}");
    drop(r);

    // A certificate for another name: verify-full refuses it, verify-ca (the chain only)
    // follows.
    let misnamed = Postgres::start_tls(&pki.server("pg-misnamed", &["db.example"]));
    misnamed.psql("CREATE TABLE packages (id int PRIMARY KEY, name text); ALTER TABLE packages OWNER TO corral;");
    let ssl = format!("sslmode=verify-full sslrootcert={}", ca.display());
    let r = Replicas::start(1, &origin, &tls_source_config(&misnamed, &dir, &ssl)).await;
    let (doc, why) = first_error(r.node(0)).await;
    assert!(why.contains("certificate"), "{doc}");
    drop(r);
    let ssl = format!("sslmode=verify-ca sslrootcert={}", ca.display());
    let r = Replicas::start(1, &origin, &tls_source_config(&misnamed, &dir, &ssl)).await;
    let doc = source_state(r.node(0), |d| d["streaming"] == true).await;
    assert_eq!(
        doc["streaming"], true,
        "verify-ca checks the chain, not the name: {doc}"
    );
    drop(r);

    // A server without TLS and a source that requires it: refused, never sent in clear.
    let plain = database();
    let ssl = format!("sslmode=require sslrootcert={}", ca.display());
    let r = Replicas::start(1, &origin, &tls_source_config(&plain, &dir, &ssl)).await;
    let (doc, why) = first_error(r.node(0)).await;
    assert!(why.contains("does not accept TLS"), "{doc}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A replication slot's confirmed position, as PostgreSQL reports it (`X/Y` hex → u64).
fn confirmed_lsn(pg: &Postgres) -> u64 {
    let text = pg.psql(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'corral_shop'",
    );
    let (hi, lo) = text.trim().split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_between_the_commit_and_the_acknowledgement_purges_again_after_restart() {
    use common::replicas::SECRET;
    let pg = database();
    let dir = temp_dir("unacked");
    let origin = Origin::start(tagged).await;
    let (proxy, admin) = (common::replica_port(), common::replica_port());
    let at = |i| Replicas::addrs(i, proxy, admin);
    // A third peer that never answers holds every purge unacknowledged while it is still
    // presumed live: with 5 s heartbeats, for the first 15 s of each replica's life. That
    // is the window in which the leader is killed.
    let peers: Vec<String> = (0..3).map(|i| format!("\"{}\"", at(i).1)).collect();
    let config = format!(
        "[upstream]\nurl = \"{}\"\n[cluster]\ndiscovery = {{ kind = \"static\", addresses = [{}] }}\nheartbeat = \"5s\"\n{}",
        origin.url(),
        peers.join(", "),
        source_config(&pg, &dir, "item-{id}")
    );
    let env = [("CORRAL_CLUSTER_SECRET", SECRET)];
    let start = |i| {
        let (p, a) = at(i);
        common::Corral::start_on(p, a, &config, &env)
    };
    let leader = start(0).await;
    let peer = start(1).await;
    assert_streaming(&leader).await;
    peer.get("/items/1").await;
    assert!(peer.get("/items/1").await.is_hit());
    let before = confirmed_lsn(&pg);

    pg.psql("UPDATE packages SET name = 'z' WHERE id = 1;");
    let applied = eventually(Duration::from_secs(10), async || {
        !peer.get("/items/1").await.is_hit()
    })
    .await;
    assert!(
        applied,
        "the leader applied the transaction and fanned it out"
    );
    assert_eq!(
        confirmed_lsn(&pg),
        before,
        "not acknowledged: a peer is still waited for"
    );
    drop(leader); // SIGKILL, while it waits for the silent peer's acknowledgement
    assert_eq!(
        confirmed_lsn(&pg),
        before,
        "the kill came between the commit and the acknowledgement"
    );

    // Cached again while no one follows; only a second delivery of the same transaction
    // can purge it now.
    peer.get("/items/1").await;
    assert!(peer.get("/items/1").await.is_hit());
    let restarted = start(0).await;
    let purged = eventually(Duration::from_secs(30), async || {
        !peer.get("/items/1").await.is_hit()
    })
    .await;
    assert!(purged, "{}", restarted.admin_json("/sources").await);
    assert!(
        restarted
            .metric("corral_source_transactions_total{source=\"shop\"}")
            .await
            >= 1.0,
        "the restarted leader applied the transaction again"
    );
    // Once the silent peer is given up on, the slot advances past the transaction.
    let advanced = eventually(Duration::from_secs(60), async || {
        confirmed_lsn(&pg) > before
    })
    .await;
    assert!(advanced, "{}", restarted.admin_json("/sources").await);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_the_lease_holder_leads_and_a_returning_lower_replica_does_not_take_over() {
    let pg = database();
    let redis = common::Redis::start().await;
    let dir = temp_dir("lease");
    let origin = Origin::start(tagged).await;
    let extra = format!(
        "[cache.l2]\nkind = \"redis\"\nurl = \"{}\"\n{}",
        redis.url(),
        source_config(&pg, &dir, "item-{id}")
    );
    let mut r = Replicas::start(3, &origin, &extra).await;
    let holder = || {
        let v = redis.cli(&["GET", "corral:source:shop:leader"]);
        v.split_whitespace().next().unwrap_or_default().to_string()
    };
    let (proxy_port, admin_port) = (r.proxy_port, r.admin_port);
    let admin = |i: usize| Replicas::addrs(i, proxy_port, admin_port).1.to_string();
    // The first replica started first and took the lease.
    let doc = source_state(r.node(0), |d| d["streaming"] == true).await;
    assert_eq!(doc["leadership"], "redis", "{doc}");
    assert_eq!(doc["streaming"], true, "{doc}");
    assert_eq!(holder(), admin(0));

    // The holder dies: its lease expires and another replica takes the source over.
    r.nodes[0] = None;
    let took = eventually(Duration::from_secs(30), async || {
        let h = holder();
        h == admin(1) || h == admin(2)
    })
    .await;
    assert!(took, "the lease moved: {:?}", holder());
    let next = if holder() == admin(1) { 1 } else { 2 };
    let doc = source_state(r.node(next), |d| d["streaming"] == true).await;
    assert_eq!(doc["streaming"], true, "{doc}");

    // The lowest address comes back. By the lowest-address rule it would lead again; the
    // lease stays with its live holder, which the returning replica learns and names.
    r.restart(0).await;
    let doc = source_state(r.node(0), |d| d["leader"].as_str().is_some()).await;
    assert_eq!(doc["leader"].as_str(), Some(admin(next).as_str()), "{doc}");
    assert_eq!(doc["is_leader"], false, "{doc}");
    assert_eq!(holder(), admin(next));

    // And the holder's purges reach every replica, the returned one included.
    warm_all(&r, "/items/1").await;
    pg.psql("UPDATE packages SET name = 'l' WHERE id = 1;");
    assert_purged_everywhere(&r, "/items/1", "by the lease holder").await;
    let _ = std::fs::remove_dir_all(dir);
}
