//! `[[sources]]` against a real PostgreSQL started on loopback: a change committed by a plain
//! SQL client (psql) purges exactly the tags its rule maps, on every replica; a rule naming a
//! missing column stops the replica at start, naming the table and the column.

mod common;

use std::time::Duration;

use common::replicas::{tagged, warm_all, Replicas};
use common::{eventually, Origin};
use corral_testkit::postgres::Postgres;

fn database() -> Postgres {
    let pg = Postgres::start();
    pg.psql("CREATE TABLE packages (id int PRIMARY KEY, name text); ALTER TABLE packages OWNER TO corral; INSERT INTO packages VALUES (1, 'a'), (2, 'b');");
    pg
}

fn source_config(pg: &Postgres, dir: &std::path::Path, tag: &str) -> String {
    let password = dir.join("pg-password");
    std::fs::write(&password, Postgres::PASSWORD).unwrap();
    format!(
        "[[sources]]\nname = \"shop\"\nkind = \"postgres\"\ndsn = \"{}\"\npassword_file = \"{}\"\n\
         rules = [ {{ table = \"packages\", tags = [\"{tag}\"] }} ]\n",
        pg.dsn(),
        password.display()
    )
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("corral-sources-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_committed_by_psql_purges_its_tags_on_three_replicas() {
    let pg = database();
    let dir = temp_dir("three");
    let origin = Origin::start(tagged).await;
    let extra = source_config(&pg, &dir, "item-{id}");
    let r = Replicas::start(3, &origin, &extra).await;
    let leader = r.node(0);
    let streaming = eventually(Duration::from_secs(30), async || {
        leader.admin_json("/sources").await["sources"][0]["streaming"] == true
    })
    .await;
    assert!(streaming, "{}", leader.admin_json("/sources").await);
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
    let config = dir.join("corral.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n{}",
        corral_testkit::free_port("127.0.0.1"),
        corral_testkit::free_port("127.0.0.1"),
        source_config(&pg, &dir, "package-{sku}")
    );
    std::fs::write(&config, text).unwrap();
    let check = std::process::Command::new(common::bin())
        .args(["check-config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "check-config cannot know the columns: {check:?}"
    );
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(common::bin())
            .args(["serve", "--config"])
            .arg(&config)
            .output(),
    )
    .await
    .expect("exits within a minute")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("\"packages\"") && stderr.contains("\"sku\""),
        "{stderr}"
    );
    assert!(
        !stderr.contains(Postgres::PASSWORD),
        "the password never reaches a log"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_another_replica_takes_over_from_the_confirmed_position() {
    let pg = database();
    let dir = temp_dir("failover");
    let origin = Origin::start(tagged).await;
    let extra = source_config(&pg, &dir, "item-{id}");
    let mut r = Replicas::start(3, &origin, &extra).await;
    let streaming = eventually(Duration::from_secs(30), async || {
        r.node(0).admin_json("/sources").await["sources"][0]["streaming"] == true
    })
    .await;
    assert!(streaming, "{}", r.node(0).admin_json("/sources").await);
    r.nodes[0] = None; // SIGKILL: its session dies, the slot is free
    for n in r.nodes.iter().flatten() {
        n.get("/items/1").await;
        assert!(n.get("/items/1").await.is_hit());
    }
    // Committed while no replica follows: the slot keeps it for the next leader.
    pg.psql("UPDATE packages SET name = 'd' WHERE id = 1;");
    let next = r.node(1);
    let took_over = eventually(Duration::from_secs(30), async || {
        next.admin_json("/sources").await["sources"][0]["streaming"] == true
    })
    .await;
    assert!(took_over, "{}", next.admin_json("/sources").await);
    for n in r.nodes.iter().flatten() {
        let purged = eventually(Duration::from_secs(30), async || {
            !n.get("/items/1").await.is_hit()
        })
        .await;
        assert!(purged, "/items/1 purged on {} after the failover", n.proxy);
    }
    let _ = std::fs::remove_dir_all(dir);
}
