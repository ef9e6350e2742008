//! The MariaDB follower against a real `mariadbd` (started by the test on loopback): what a
//! committed change hands to the applier, what a rollback does not, that the stored GTID
//! position moves only when the applier acknowledges, and that a restart resumes from it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use corral_source::mariadb::conn::Connection;
use corral_source::mariadb::follow::{self, Progress, Source};
use corral_source::mariadb::{ConnectSpec, Password};
use corral_source::rules::{Rule, RuleSpec};
use corral_source::transaction::Committed;
use corral_testkit::eventually;
use corral_testkit::mariadb::{MariaDb, DATABASE, USER};
use tokio::sync::mpsc;

fn rule(table: &str, tags: &[&str], urls: &[&str]) -> Rule {
    let spec = RuleSpec {
        table: table.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        urls: urls.iter().map(|u| u.to_string()).collect(),
        ..RuleSpec::default()
    };
    Rule::new(&spec).unwrap()
}

fn source(db: &MariaDb, rules: Vec<Rule>) -> Source {
    Source {
        name: "shop".into(),
        connect: ConnectSpec {
            host: "127.0.0.1".into(),
            port: db.port,
            user: USER.into(),
            database: DATABASE.into(),
            password: Some(Password::new(MariaDb::PASSWORD)),
            tls: None,
        },
        server_id: 4242,
        rules: Arc::new(rules),
    }
}

fn packages_rule() -> Rule {
    rule(
        "packages",
        &["package-{id}", "name-{name}"],
        &["/packages/{id}"],
    )
}

fn database() -> MariaDb {
    let db = MariaDb::start();
    db.sql("CREATE TABLE packages (id INT PRIMARY KEY, name VARCHAR(50), price DECIMAL(10,2)) ENGINE=InnoDB; \
            INSERT INTO packages VALUES (1, 'a', 10.00), (2, 'b', 20.50);");
    db
}

async fn next(rx: &mut mpsc::Receiver<Committed>) -> Committed {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a transaction within 30 s")
        .expect("follower alive")
}

/// Waits until the follower streams (it has decoded the server's first event).
async fn until_streaming(db: &MariaDb, progress: &Progress) {
    let streaming = eventually(Duration::from_secs(30), async || {
        progress.status().streaming
    })
    .await;
    assert!(
        streaming,
        "not streaming: {:?}\n{}",
        progress.status(),
        db.log()
    );
}

fn stored(db: &MariaDb) -> String {
    db.sql("SELECT gtid FROM corral.source_positions WHERE name = 'shop'")
}

fn tags(c: &Committed) -> Vec<&str> {
    c.targets.tags.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_updates_purge_old_and_new_rollbacks_nothing_and_restarts_resume_from_the_stored_gtid(
) {
    let db = database();
    let src = source(&db, vec![packages_rule()]);
    let progress = Arc::new(Progress::default());
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(follow::run(src.clone(), progress.clone(), tx));
    until_streaming(&db, &progress).await;

    db.sql("BEGIN; UPDATE packages SET name = 'zz' WHERE id = 1; ROLLBACK;");
    db.sql("UPDATE packages SET name = 'b2' WHERE id = 2;");
    let c = next(&mut rx).await;
    assert_eq!(
        tags(&c),
        ["name-b", "name-b2", "package-2"],
        "old and new values; the rolled-back update purged nothing"
    );
    assert_eq!(c.targets.urls.iter().collect::<Vec<_>>(), ["/packages/2"]);
    let gtid = c.gtid.clone().expect("a MariaDB transaction has a GTID");

    // Not acknowledged: the stored position stays before the transaction.
    let before = stored(&db);
    assert_ne!(before, gtid, "stored {before} before the ack");
    task.abort();
    let _ = task.await;

    // A new follower (a restart) gets the same transaction again.
    let progress = Arc::new(Progress::default());
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(follow::run(src.clone(), progress.clone(), tx));
    let again = next(&mut rx).await;
    assert_eq!(again.gtid, c.gtid, "re-delivered after a restart");
    assert_eq!(again.targets, c.targets);
    progress.acknowledge(again.end_lsn);
    eventually(Duration::from_secs(30), async || stored(&db) == gtid).await;
    assert_eq!(stored(&db), gtid, "the position was stored after the ack");
    assert_eq!(progress.status().confirmed_gtid.as_deref(), Some(&gtid[..]));
    task.abort();
    let _ = task.await;

    // A third follower resumes after the acknowledged transaction: the next one it hands
    // over is new.
    let progress = Arc::new(Progress::default());
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(follow::run(src, progress.clone(), tx));
    until_streaming(&db, &progress).await;
    db.sql("DELETE FROM packages WHERE id = 1;");
    let deleted = next(&mut rx).await;
    assert_eq!(tags(&deleted), ["name-a", "package-1"]);
    assert_ne!(deleted.gtid, c.gtid);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_types_render_as_the_client_prints_them() {
    let db = MariaDb::start();
    db.sql(
        "CREATE TABLE kinds (id INT PRIMARY KEY, i TINYINT, u BIGINT UNSIGNED, m MEDIUMINT, \
         d DECIMAL(20,3), dt DATETIME(3), day DATE, ts TIMESTAMP(6) NULL, c CHAR(5), t TEXT, \
         y YEAR, tm TIME(2), b BIT(5), e ENUM('x','y'), n INT NULL) ENGINE=InnoDB;",
    );
    let columns = [
        "id", "i", "u", "m", "d", "dt", "day", "ts", "c", "t", "y", "tm", "b", "e", "n",
    ];
    let templates: Vec<String> = columns.iter().map(|c| format!("{c}={{{c}}}")).collect();
    let templates: Vec<&str> = templates.iter().map(String::as_str).collect();
    let src = source(&db, vec![rule("kinds", &templates, &[])]);
    let progress = Arc::new(Progress::default());
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(follow::run(src, progress.clone(), tx));
    until_streaming(&db, &progress).await;
    db.sql(
        "SET time_zone = '+00:00'; INSERT INTO kinds VALUES (7, -5, 18446744073709551615, -8388608, \
         -1234567890.125, '2024-02-29 23:59:58.123', '1999-12-31', '2026-12-04 10:11:12.000345', \
         'ab', 'déjà vu', 2024, '-838:59:58.50', b'10101', 'y', NULL);",
    );
    let c = next(&mut rx).await;
    let got: BTreeSet<&str> = c.targets.tags.iter().map(String::as_str).collect();
    let want: BTreeSet<&str> = [
        "id=7",
        "i=-5",
        "u=18446744073709551615",
        "m=-8388608",
        "d=-1234567890.125",
        "dt=2024-02-29 23:59:58.123",
        "day=1999-12-31",
        "ts=2026-12-04 10:11:12.000345",
        "c=ab",
        "t=déjà vu",
        "y=2024",
        "tm=-838:59:58.50",
        "b=21",
        "e=2",
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want, "a NULL renders nothing (n)");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_naming_a_missing_column_is_refused_by_name() {
    let db = database();
    let src = source(&db, vec![rule("packages", &["package-{sku}"], &[])]);
    let mut conn = Connection::open(&src.connect, Duration::from_secs(10))
        .await
        .expect("mysql_native_password login");
    let e = follow::check_rules(&mut conn, &src)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"packages\"") && e.contains("\"sku\""), "{e}");
    let wrong = ConnectSpec {
        password: Some(Password::new("wrong")),
        ..src.connect.clone()
    };
    let e = Connection::open(&wrong, Duration::from_secs(10))
        .await
        .err()
        .expect("a wrong password is refused");
    assert!(e.to_string().contains("Access denied"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unimplemented_auth_plugin_is_refused_by_name() {
    let db = MariaDb::start();
    db.sql(
        "INSTALL SONAME 'auth_ed25519'; \
         CREATE USER 'edwards'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('pw');",
    );
    let spec = ConnectSpec {
        host: "127.0.0.1".into(),
        port: db.port,
        user: "edwards".into(),
        database: String::new(),
        password: Some(Password::new("pw")),
        tls: None,
    };
    let e = Connection::open(&spec, Duration::from_secs(10))
        .await
        .err()
        .expect("ed25519 is not implemented");
    assert!(
        e.to_string().contains("\"client_ed25519\"")
            && e.to_string().contains("mysql_native_password"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binlog_without_column_names_is_reported_not_followed() {
    let db = database();
    db.sql("SET GLOBAL binlog_row_metadata = 'MINIMAL';");
    let progress = Arc::new(Progress::default());
    let (tx, _rx) = mpsc::channel(16);
    let task = tokio::spawn(follow::run(
        source(&db, vec![packages_rule()]),
        progress.clone(),
        tx,
    ));
    let mut last = None;
    eventually(Duration::from_secs(30), async || {
        last = progress.status().last_error;
        last.is_some()
    })
    .await;
    let last = last.expect("an error in the status");
    assert!(last.contains("binlog_row_metadata = FULL"), "{last}");
    assert!(!progress.status().streaming);
    task.abort();
}
