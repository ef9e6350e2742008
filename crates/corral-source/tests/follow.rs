//! The follower against a real PostgreSQL (started by the test on loopback): what a committed
//! change hands to the applier, what a rollback does not, and that the slot's position moves
//! only when the applier acknowledges.

use std::sync::Arc;
use std::time::Duration;

use corral_source::pg::follow::{self, Progress, Source};
use corral_source::pg::{ConnectSpec, Password};
use corral_source::rules::{Rule, RuleSpec};
use corral_source::transaction::Committed;
use corral_testkit::eventually;
use corral_testkit::postgres::{Postgres, DATABASE, USER};
use tokio::sync::mpsc;

fn source(pg: &Postgres, slot: &str) -> Source {
    let spec = RuleSpec {
        table: "packages".into(),
        tags: vec!["package-{id}".into(), "packages".into()],
        urls: vec!["/packages/{id}".into()],
        ..RuleSpec::default()
    };
    Source {
        name: "shop".into(),
        connect: ConnectSpec {
            host: "127.0.0.1".into(),
            port: pg.port,
            user: USER.into(),
            database: DATABASE.into(),
            password: Some(Password::new(Postgres::PASSWORD)),
            tls: None,
        },
        slot: slot.into(),
        publication: "corral".into(),
        rules: Arc::new(vec![Rule::new(&spec).unwrap()]),
    }
}

fn database() -> Postgres {
    let pg = Postgres::start();
    pg.psql("CREATE TABLE packages (id int PRIMARY KEY, name text, price int); ALTER TABLE packages OWNER TO corral; INSERT INTO packages VALUES (1, 'a', 10), (2, 'b', 20);");
    pg
}

async fn next(rx: &mut mpsc::Receiver<Committed>) -> Committed {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a transaction within 30 s")
        .expect("follower alive")
}

/// Waits until the slot exists and the follower is streaming (observable states).
async fn until_streaming(pg: &Postgres, progress: &Progress, slot: &str) {
    let streaming = eventually(Duration::from_secs(30), async || {
        let active = pg.psql(&format!(
            "SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ));
        active == "t" && progress.status().streaming
    })
    .await;
    assert!(
        streaming,
        "not streaming: {:?}\n{}",
        progress.status(),
        pg.log()
    );
}

fn confirmed(pg: &Postgres, slot: &str) -> u64 {
    let lsn = pg.psql(&format!(
        "SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ));
    lsn.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_changes_purge_rollbacks_do_not_and_the_slot_waits_for_the_ack() {
    let pg = database();
    let src = source(&pg, "s1");
    let progress = Arc::new(Progress::default());
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(follow::run(src.clone(), progress.clone(), tx));
    until_streaming(&pg, &progress, "s1").await;

    pg.psql("BEGIN; UPDATE packages SET price = 11 WHERE id = 1; ROLLBACK;");
    pg.psql("UPDATE packages SET price = 21 WHERE id = 2;");
    let c = next(&mut rx).await;
    let tags: Vec<&str> = c.targets.tags.iter().map(String::as_str).collect();
    assert_eq!(
        tags,
        ["package-2", "packages"],
        "the rolled-back update purged nothing"
    );
    assert_eq!(c.targets.urls.iter().collect::<Vec<_>>(), ["/packages/2"]);

    // Not acknowledged: the slot stays before the commit, whatever the follower saw.
    let before = confirmed(&pg, "s1");
    assert!(
        before < c.end_lsn,
        "confirmed {before} must stay before {}",
        c.end_lsn
    );
    task.abort();
    let _ = task.await;

    // A new follower (a restart) gets the same transaction again.
    let progress = Arc::new(Progress::default());
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(follow::run(src.clone(), progress.clone(), tx));
    let again = next(&mut rx).await;
    assert_eq!(again.end_lsn, c.end_lsn, "re-delivered after a restart");
    progress.acknowledge(again.end_lsn);
    eventually(Duration::from_secs(30), async || {
        confirmed(&pg, "s1") >= again.end_lsn
    })
    .await;
    assert!(
        confirmed(&pg, "s1") >= again.end_lsn,
        "the slot advanced after the ack"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_naming_a_missing_column_is_refused_by_name() {
    let pg = database();
    let mut src = source(&pg, "s2");
    let spec = RuleSpec {
        table: "packages".into(),
        tags: vec!["package-{sku}".into()],
        ..RuleSpec::default()
    };
    src.rules = Arc::new(vec![Rule::new(&spec).unwrap()]);
    let mut conn = corral_source::pg::conn::Connection::open(&src.connect, Duration::from_secs(10))
        .await
        .expect("SCRAM login");
    let e = follow::check_rules(&mut conn, &src)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"packages\"") && e.contains("\"sku\""), "{e}");
}

#[tokio::test]
async fn a_password_that_sasl_prep_normalises_authenticates() {
    let pg = database();
    // The server hashes SASLprep("Ⅸ-soft\u{AD}hyphen") = "IX-softhyphen"; a client that sent
    // the raw characters through SCRAM would be refused.
    let password = "\u{2168}-soft\u{00AD}hyphen";
    pg.psql(&format!("ALTER ROLE {USER} PASSWORD '{password}'"));
    let mut spec = source(&pg, "s-prep").connect;
    spec.password = Some(Password::new(password));
    let mut conn = corral_source::pg::conn::Connection::open(&spec, Duration::from_secs(10))
        .await
        .expect("authenticated with a password SASLprep changes");
    let rows = conn.query("SELECT current_user").await.unwrap();
    assert_eq!(rows[0][0].as_deref(), Some(USER));
}
