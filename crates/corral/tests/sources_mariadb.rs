//! `[[sources]] kind = "mariadb"` against a real `mariadbd` started on loopback: a change
//! committed by a plain SQL client (`mariadb`) purges exactly the tags its rule maps, on
//! every replica, and its GTID is stored once acknowledged; a rule naming a missing column
//! stops the replica at start, naming the table and the column.

mod common;

use std::time::Duration;

use common::replicas::{tagged, warm_all, Replicas};
use common::sources::{
    assert_missing_column_refused, assert_purged_everywhere, assert_streaming, first_error,
    follows_and_purges, kill_the_leader_and_warm_the_rest, shop_source, temp_dir,
};
use common::{eventually, Origin};
use corral_testkit::mariadb::MariaDb;

fn database() -> MariaDb {
    let db = MariaDb::start();
    db.sql("CREATE TABLE packages (id INT PRIMARY KEY, name VARCHAR(40)) ENGINE=InnoDB; INSERT INTO packages VALUES (1, 'a'), (2, 'b'), (3, 'c');");
    db
}

fn source_config(db: &MariaDb, dir: &std::path::Path, tag: &str) -> String {
    shop_source("mariadb", &db.dsn(), MariaDb::PASSWORD, dir, tag)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_committed_by_the_mariadb_client_purges_its_tags_on_three_replicas() {
    let db = database();
    let dir = temp_dir("my-three");
    let origin = Origin::start(tagged).await;
    let extra = source_config(&db, &dir, "item-{id}");
    let r = Replicas::start(3, &origin, &extra).await;
    let leader = r.node(0);
    assert_streaming(leader).await;
    for path in ["/items/1", "/items/2", "/items/3", "/items/4"] {
        warm_all(&r, path).await;
    }

    db.sql("BEGIN; UPDATE packages SET name = 'x' WHERE id = 2; ROLLBACK;");
    // The key changes: the old and the new row's tags are both purged.
    db.sql("UPDATE packages SET id = 4 WHERE id = 1;");
    for n in r.nodes.iter().flatten() {
        for path in ["/items/1", "/items/4"] {
            let purged = eventually(Duration::from_secs(30), async || {
                !n.get(path).await.is_hit()
            })
            .await;
            assert!(purged, "{path} purged on {}", n.proxy);
        }
        for path in ["/items/2", "/items/3"] {
            assert!(
                n.get(path).await.is_hit(),
                "{path} untouched on {} (rolled back / not changed)",
                n.proxy
            );
        }
    }
    let doc = leader.admin_json("/sources").await;
    assert_eq!(doc["sources"][0]["kind"], "mariadb", "{doc}");
    assert_eq!(doc["sources"][0]["is_leader"], true, "{doc}");
    assert_eq!(
        r.node(1).admin_json("/sources").await["sources"][0]["is_leader"],
        false
    );
    // Acknowledged by every replica, then stored in the followed server.
    let gtid = doc["sources"][0]["last_transaction"]["gtid"]
        .as_str()
        .expect("the transaction's GTID")
        .to_string();
    let stored = eventually(Duration::from_secs(30), async || {
        db.sql("SELECT gtid FROM corral.source_positions WHERE name = 'shop'") == gtid
    })
    .await;
    assert!(stored, "{}", leader.admin_json("/sources").await);
    let confirmed = eventually(Duration::from_secs(30), async || {
        let doc = leader.admin_json("/sources").await;
        doc["sources"][0]["confirmed_gtid"] == gtid.as_str() && doc["sources"][0]["lag_bytes"] == 0
    })
    .await;
    assert!(confirmed, "{}", leader.admin_json("/sources").await);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_naming_a_missing_column_fails_at_start() {
    let db = database();
    let dir = temp_dir("my-missing");
    let source = source_config(&db, &dir, "package-{sku}");
    assert_missing_column_refused(&dir, &source, MariaDb::PASSWORD).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_another_replica_resumes_from_the_stored_gtid() {
    let db = database();
    let dir = temp_dir("my-failover");
    let origin = Origin::start(tagged).await;
    let extra = source_config(&db, &dir, "item-{id}");
    let mut r = Replicas::start(3, &origin, &extra).await;
    kill_the_leader_and_warm_the_rest(&mut r).await; // its dump connection dies with it
                                                     // Committed while no replica follows: the stored position is before it, so the next
                                                     // leader reads it.
    db.sql("UPDATE packages SET name = 'd' WHERE id = 1;");
    assert_streaming(r.node(1)).await;
    assert_purged_everywhere(&r, "/items/1", "after the failover").await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_source_follows_over_verified_tls_and_refuses_a_wrong_ca_or_a_server_in_clear() {
    let pki = corral_testkit::tls::Pki::new("mariadb");
    let other = corral_testkit::tls::Pki::new("mariadb-other");
    let db = MariaDb::start_tls(&pki.server("mariadb", &["127.0.0.1"]));
    db.sql("CREATE TABLE packages (id INT PRIMARY KEY, name VARCHAR(40)) ENGINE=InnoDB; INSERT INTO packages VALUES (1, 'a');");
    let dir = temp_dir("my-tls");
    let origin = Origin::start(tagged).await;
    let with = |db: &MariaDb, ssl: &str| {
        source_config(db, &dir, "item-{id}").replace(&db.dsn(), &format!("{} {ssl}", db.dsn()))
    };

    // verify-full against the CA that signed the server's certificate; the user may log in
    // only over TLS (REQUIRE SSL), so following at all shows the session is encrypted.
    let ssl = format!(
        "sslmode=verify-full sslrootcert={}",
        pki.ca_file().display()
    );
    let r = Replicas::start(1, &origin, &with(&db, &ssl)).await;
    follows_and_purges(&r, || {
        db.sql("UPDATE packages SET name = 'b' WHERE id = 1;");
    })
    .await;
    drop(r);

    // Another CA: the handshake fails and the source says why.
    let ssl = format!(
        "sslmode=verify-full sslrootcert={}",
        other.ca_file().display()
    );
    let r = Replicas::start(1, &origin, &with(&db, &ssl)).await;
    let (doc, why) = first_error(r.node(0)).await;
    assert!(why.contains("TLS") && why.contains("certificate"), "{doc}");
    assert_ne!(doc["streaming"], true, "{doc}");
    drop(r);

    // A server without TLS and a source that requires it: refused, the password's proof
    // never sent in clear.
    let plain = database();
    let ssl = format!("sslmode=require sslrootcert={}", pki.ca_file().display());
    let r = Replicas::start(1, &origin, &with(&plain, &ssl)).await;
    let (doc, why) = first_error(r.node(0)).await;
    assert!(why.contains("does not accept TLS"), "{doc}");
    let _ = std::fs::remove_dir_all(dir);
}
