//! Events built by hand, byte by byte as MariaDB 10.11 writes them (with CRC32 checksums),
//! decoded and folded; then every truncation and arbitrary bytes, which must give an error,
//! never a panic.

use proptest::prelude::*;

use super::*;
use crate::mariadb::fold::{Fold, Group};
use crate::mariadb::gtid::Gtid;
use crate::mariadb::value::{self, types};
use crate::rules::{Op, Rule, RuleSpec};

/// An event: the common header, `body`, and a CRC32 when `checksum`.
fn event(kind: u8, log_pos: u32, body: &[u8], checksum: bool) -> Vec<u8> {
    let size = HEADER_LEN + body.len() + if checksum { 4 } else { 0 };
    let mut e = Vec::new();
    e.extend_from_slice(&1_764_870_000u32.to_le_bytes());
    e.push(kind);
    e.extend_from_slice(&1u32.to_le_bytes()); // server id
    e.extend_from_slice(&(size as u32).to_le_bytes());
    e.extend_from_slice(&log_pos.to_le_bytes());
    e.extend_from_slice(&0u16.to_le_bytes());
    e.extend_from_slice(body);
    if checksum {
        let crc = crc32(&e);
        e.extend_from_slice(&crc.to_le_bytes());
    }
    e
}

fn format_description() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&4u16.to_le_bytes());
    let mut version = b"10.11.19-MariaDB-log".to_vec();
    version.resize(50, 0);
    body.extend_from_slice(&version);
    body.extend_from_slice(&0u32.to_le_bytes());
    body.push(HEADER_LEN as u8);
    let mut lengths = vec![0u8; 170];
    for (kind, len) in [(QUERY, 13), (ROTATE, 8), (TABLE_MAP, 8), (GTID, 19)] {
        lengths[usize::from(kind) - 1] = len;
    }
    for kind in [WRITE_ROWS_V2, UPDATE_ROWS_V2, DELETE_ROWS_V2] {
        lengths[usize::from(kind) - 1] = 10;
    }
    body.extend_from_slice(&lengths);
    body.push(1); // CRC32
    event(FORMAT_DESCRIPTION, 256, &body, true)
}

fn rotate(file: &str) -> Vec<u8> {
    let mut body = 4u64.to_le_bytes().to_vec();
    body.extend_from_slice(file.as_bytes());
    event(ROTATE, 0, &body, true)
}

fn gtid(sequence: u64, flags: u8, log_pos: u32) -> Vec<u8> {
    let mut body = sequence.to_le_bytes().to_vec();
    body.extend_from_slice(&0u32.to_le_bytes()); // domain
    body.push(flags);
    body.extend_from_slice(&[0; 6]);
    event(GTID, log_pos, &body, true)
}

fn lenenc_str(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// `database.table (id INT, name VARCHAR(200), price DECIMAL(10,2), big BIGINT UNSIGNED)`.
fn table_map(database: &str, table: &str, log_pos: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&[42, 0, 0, 0, 0, 0]); // table id
    b.extend_from_slice(&1u16.to_le_bytes());
    for name in [database, table] {
        lenenc_str(&mut b, name);
        b.push(0);
    }
    b.push(4);
    b.extend_from_slice(&[
        types::LONG,
        types::VARCHAR,
        types::NEWDECIMAL,
        types::LONGLONG,
    ]);
    let meta = [200u16.to_le_bytes()[0], 0, 10, 2];
    b.push(meta.len() as u8);
    b.extend_from_slice(&meta);
    b.push(0b1110); // nullability
                    // SIGNEDNESS over the three numeric columns (id, price, big): big is unsigned.
    b.extend_from_slice(&[1, 1, 0b0010_0000]);
    let mut names = Vec::new();
    for n in ["id", "name", "price", "big"] {
        lenenc_str(&mut names, n);
    }
    b.push(4);
    b.push(names.len() as u8);
    b.extend_from_slice(&names);
    event(TABLE_MAP, log_pos, &b, true)
}

/// The image of (id, name, price 10.50, big NULL or u64::MAX).
fn image(out: &mut Vec<u8>, id: i32, name: &str, big: Option<u64>) {
    out.push(if big.is_none() { 0b1000 } else { 0 });
    out.extend_from_slice(&id.to_le_bytes());
    lenenc_str(out, name);
    // DECIMAL(10,2) 10.50: 8 integer digits in 4 bytes, 2 fraction digits in 1, sign bit set.
    out.extend_from_slice(&[0x80, 0, 0, 10, 50]);
    if let Some(big) = big {
        out.extend_from_slice(&big.to_le_bytes());
    }
}

fn update(log_pos: u32) -> Vec<u8> {
    let mut b = vec![42, 0, 0, 0, 0, 0];
    b.extend_from_slice(&1u16.to_le_bytes()); // STMT_END
    b.extend_from_slice(&2u16.to_le_bytes()); // no extra data
    b.push(4);
    b.extend_from_slice(&[0x0f, 0x0f]);
    image(&mut b, 1, "a", None);
    image(&mut b, 1, "b", Some(u64::MAX));
    event(UPDATE_ROWS_V2, log_pos, &b, true)
}

fn xid(log_pos: u32) -> Vec<u8> {
    event(XID, log_pos, &99u64.to_le_bytes(), true)
}

fn query(sql: &str, log_pos: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&[0; 8]); // thread, exec time
    b.push(4); // "shop"
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&0u16.to_le_bytes()); // no status vars
    b.extend_from_slice(b"shop\0");
    b.extend_from_slice(sql.as_bytes());
    event(QUERY, log_pos, &b, true)
}

fn rules() -> Vec<Rule> {
    let spec = RuleSpec {
        table: "packages".into(),
        tags: vec![
            "package-{id}-{name}".into(),
            "big-{big}".into(),
            "packages".into(),
        ],
        ..RuleSpec::default()
    };
    vec![Rule::new(&spec).unwrap()]
}

#[test]
fn a_table_map_carries_names_types_and_signedness() {
    let bytes = table_map("shop", "packages", 500);
    let (header, e) = decode(&bytes, &Format::initial(true)).unwrap();
    assert_eq!((header.kind, header.log_pos), (TABLE_MAP, 500));
    let Event::TableMap(map) = e else {
        panic!("{e:?}")
    };
    assert_eq!(
        (map.table_id, &map.database[..], &map.table[..]),
        (42, "shop", "packages")
    );
    let names: Vec<_> = map
        .columns
        .iter()
        .map(|c| c.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["id", "name", "price", "big"]);
    let unsigned: Vec<_> = map.columns.iter().map(|c| c.unsigned).collect();
    assert_eq!(unsigned, [false, false, false, true]);
    assert_eq!(map.columns[2].meta, 10 << 8 | 2);
}

#[test]
fn an_update_gives_old_and_new_rows() {
    let format = Format::initial(true);
    let Event::TableMap(map) = decode(&table_map("shop", "packages", 1), &format)
        .unwrap()
        .1
    else {
        panic!()
    };
    let bytes = update(2);
    let Event::Rows(rows) = decode(&bytes, &format).unwrap().1 else {
        panic!()
    };
    let changes = value::changes(&rows, &map).unwrap();
    assert_eq!(changes.len(), 1);
    let c = &changes[0];
    assert_eq!(c.op, Op::Update);
    let old = c.old.as_ref().unwrap();
    let new = c.new.as_ref().unwrap();
    assert_eq!(old["name"].as_deref(), Some("a"));
    assert_eq!(old["price"].as_deref(), Some("10.50"));
    assert_eq!(old["big"], None, "NULL");
    assert_eq!(new["name"].as_deref(), Some("b"));
    assert_eq!(new["big"].as_deref(), Some("18446744073709551615"));
}

#[test]
fn the_fold_ends_groups_at_xid_and_standalone_queries_and_skips_its_own_writes() {
    let rules = rules();
    let mut fold = Fold::new(&rules, "shop", true);
    let stream = [
        rotate("binlog.000003"),
        format_description(),
        gtid(7, 0, 300),
        table_map("shop", "packages", 400),
        update(500),
        xid(600),
    ];
    let mut groups: Vec<Group> = Vec::new();
    for e in &stream {
        groups.extend(fold.push(e).unwrap());
    }
    assert_eq!(groups.len(), 1);
    let g = groups.pop().unwrap();
    assert_eq!(
        g.gtid,
        Gtid {
            domain: 0,
            server: 1,
            sequence: 7
        }
    );
    let c = g.committed.unwrap();
    assert_eq!(c.end_lsn, 3 << 32 | 600);
    assert_eq!(c.gtid.as_deref(), Some("0-1-7"));
    let tags: Vec<&str> = c.targets.tags.iter().map(String::as_str).collect();
    assert_eq!(
        tags,
        [
            "big-18446744073709551615",
            "package-1-a",
            "package-1-b",
            "packages"
        ]
    );

    // The same table in another database purges nothing; the follower's own table is skipped.
    for (database, table, purges) in [
        ("other", "packages", Some(0)),
        ("corral", "source_positions", None),
    ] {
        for e in [
            gtid(8, 0, 700),
            table_map(database, table, 800),
            update(900),
            xid(1000),
        ] {
            if let Some(g) = fold.push(&e).unwrap() {
                assert_eq!(
                    g.committed.map(|c| c.targets.tags.len()),
                    purges,
                    "{database}.{table}"
                );
            }
        }
    }

    // A standalone group (DDL) ends after its statement; a truncate purges the constants.
    assert!(fold.push(&gtid(9, FL_STANDALONE, 1100)).unwrap().is_none());
    let g = fold
        .push(&query("TRUNCATE TABLE packages", 1200))
        .unwrap()
        .unwrap();
    let c = g.committed.unwrap();
    assert_eq!(c.targets.tags.iter().collect::<Vec<_>>(), ["packages"]);
    assert!(!fold.is_open());

    // An XA transaction's prepared group ends at its XA_PREPARE event, with its rows' purges.
    for e in [
        gtid(11, 0, 1500),
        table_map("shop", "packages", 1600),
        update(1700),
    ] {
        assert!(fold.push(&e).unwrap().is_none());
    }
    let xa = fold
        .push(&event(XA_PREPARE, 1800, &[0; 12], true))
        .unwrap()
        .unwrap();
    assert_eq!(xa.committed.unwrap().targets.tags.len(), 4);

    // A non-transactional group ends at its COMMIT query.
    assert!(fold.push(&gtid(10, 0, 1300)).unwrap().is_none());
    assert!(fold.push(&query("BEGIN", 1350)).unwrap().is_none());
    assert!(fold.push(&query("COMMIT", 1400)).unwrap().is_some());
}

#[test]
fn a_corrupted_event_fails_its_checksum() {
    let mut e = update(2);
    e[HEADER_LEN + 12] ^= 1;
    let err = decode(&e, &Format::initial(true)).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    // A rule's table map without names (binlog_row_metadata = MINIMAL) is refused by name.
    let rules = rules();
    let mut fold = Fold::new(&rules, "shop", false);
    let mut map = table_map("shop", "packages", 1);
    let mut body = map[HEADER_LEN..map.len() - 4].to_vec();
    let names_at = body.len() - (2 + 18); // COLUMN_NAME: type, length, 18 bytes of names
    body.truncate(names_at);
    map = event(TABLE_MAP, 1, &body, false);
    fold.push(&event(
        GTID,
        1,
        &gtid(1, 0, 1)[HEADER_LEN..HEADER_LEN + 19],
        false,
    ))
    .unwrap();
    fold.push(&map).unwrap();
    let update = update(2);
    let err = fold
        .push(&event(
            UPDATE_ROWS_V2,
            2,
            &update[HEADER_LEN..update.len() - 4],
            false,
        ))
        .unwrap_err();
    assert!(
        err.to_string().contains("binlog_row_metadata = FULL"),
        "{err}"
    );
}

/// `e` cut to `n` bytes, with its size field and checksum made to agree (so decoding goes
/// past the first checks and into the body).
fn truncated(e: &[u8], n: usize) -> Vec<u8> {
    let mut t = e[..n.min(e.len() - 4)].to_vec();
    if t.len() >= HEADER_LEN {
        let size = (t.len() + 4) as u32;
        t[9..13].copy_from_slice(&size.to_le_bytes());
    }
    let crc = crc32(&t);
    t.extend_from_slice(&crc.to_le_bytes());
    t
}

#[test]
fn every_truncation_is_an_error_or_a_shorter_event_never_a_panic() {
    let events = [
        format_description(),
        rotate("binlog.000001"),
        gtid(1, 0, 1),
        table_map("shop", "packages", 1),
        update(1),
        xid(1),
        query("COMMIT", 1),
    ];
    let format = Format::initial(true);
    let Event::TableMap(map) = decode(&events[3], &format).unwrap().1 else {
        panic!()
    };
    for e in &events {
        for n in 0..e.len() {
            let t = truncated(e, n);
            if let Ok((_, Event::Rows(rows))) = decode(&t, &format) {
                let _ = value::changes(&rows, &map);
            }
            let _ = decode(&e[..n], &format);
        }
    }
}

/// Every column type the decoder knows, with the smallest metadata that reaches each branch.
fn every_kind_of_column() -> TableMap {
    use types::*;
    let kinds: [(u8, u16); 24] = [
        (TINY, 0),
        (SHORT, 0),
        (INT24, 0),
        (LONG, 0),
        (LONGLONG, 0),
        (FLOAT, 4),
        (DOUBLE, 8),
        (YEAR, 0),
        (DATE, 0),
        (TIMESTAMP, 0),
        (TIMESTAMP2, 6),
        (DATETIME, 0),
        (DATETIME2, 3),
        (TIME, 0),
        (TIME2, 2),
        (VARCHAR, 300),
        (STRING, 20),
        (ENUM, 2),
        (SET, 1),
        (BLOB, 2),
        (NEWDECIMAL, 30 << 8 | 10),
        (BIT, 2 << 8 | 3),
        (JSON, 4),
        (VAR_STRING, 10),
    ];
    let columns = kinds
        .iter()
        .enumerate()
        .map(|(i, (kind, meta))| Column {
            name: Some(format!("c{i}")),
            kind: *kind,
            meta: *meta,
            unsigned: i % 2 == 0,
        })
        .collect();
    TableMap {
        table_id: 1,
        database: "d".into(),
        table: "t".into(),
        columns,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_events_never_panic(kind in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let e = event(kind, 1, &body, true);
        let _ = decode(&e, &Format::initial(true));
        let _ = decode(&e, &Format::initial(false));
    }

    #[test]
    fn arbitrary_row_images_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
        let map = every_kind_of_column();
        for kind in [RowsKind::Write, RowsKind::Update, RowsKind::Delete] {
            let mut b = vec![map.columns.len() as u8];
            b.extend_from_slice(&body);
            let _ = value::changes(&Rows { kind, table_id: 1, body: &b }, &map);
        }
    }
}
