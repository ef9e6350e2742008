//! Column values from hand-built bytes, one row per type (what the bytes are, what renders).

use super::*;

fn column(kind: u8, meta: u16, unsigned: bool) -> Column {
    Column {
        name: Some("c".into()),
        kind,
        meta,
        unsigned,
    }
}

#[test]
fn values_render_as_the_client_prints_them() {
    let cases: &[(u8, u16, bool, &[u8], &str)] = &[
        (TINY, 0, false, &[0xfb], "-5"),
        (TINY, 0, true, &[0xfb], "251"),
        (INT24, 0, false, &[0, 0, 0x80], "-8388608"),
        (LONGLONG, 0, false, &[0xff; 8], "-1"),
        (YEAR, 0, false, &[124], "2024"),
        // DATE: day | month << 5 | year << 9, three bytes little-endian.
        (DATE, 0, false, &[0x9f, 0x9f, 0x0f], "1999-12-31"),
        // DECIMAL(5,2) -1.50: 3 integer digits in 2 bytes, 2 fraction digits in 1, inverted.
        (NEWDECIMAL, 5 << 8 | 2, false, &[0x7f, 0xfe, 0xcd], "-1.50"),
        (NEWDECIMAL, 5 << 8 | 2, false, &[0x80, 0x00, 0x00], "0.00"),
        // DATETIME2(0) 2024-02-29 23:59:58.
        (
            DATETIME2,
            0,
            false,
            &[0x99, 0xb2, 0xbb, 0x7e, 0xfa],
            "2024-02-29 23:59:58",
        ),
        (TIMESTAMP2, 0, false, &[0, 0, 0, 0], "1970-01-01 00:00:00"),
        (
            TIMESTAMP2,
            2,
            false,
            &[0x65, 0x5f, 0x3b, 0x80, 12],
            "2023-11-23 11:46:08.12",
        ),
        (VARCHAR, 300, false, &[2, 0, b'h', b'i'], "hi"),
        (STRING, 20, false, &[1, b'x'], "x"),
        (BLOB, 2, false, &[3, 0, b'a', b'b', b'c'], "abc"),
        (BIT, 5, false, &[0x15], "21"), // BIT(5): 5 bits, no whole bytes
        (ENUM, 1, false, &[2], "2"),
    ];
    for (kind, meta, unsigned, bytes, want) in cases {
        let c = column(*kind, *meta, *unsigned);
        let mut r = Reader(bytes);
        let got = value(&mut r, &c).unwrap_or_else(|e| panic!("type {kind}: {e}"));
        assert_eq!(&got, want, "type {kind} from {bytes:02x?}");
        assert!(r.is_empty(), "type {kind} left bytes unread");
        for n in 0..bytes.len() {
            assert!(
                value(&mut Reader(&bytes[..n]), &c).is_err(),
                "type {kind} from {n} bytes"
            );
        }
    }
}

#[test]
fn impossible_metadata_is_refused() {
    for (kind, meta) in [
        (NEWDECIMAL, 0),
        (NEWDECIMAL, 70 << 8),
        (BLOB, 9),
        (TIMESTAMP2, 7),
        (BIT, 9 << 8),
    ] {
        let e = value(&mut Reader(&[0; 64]), &column(kind, meta, false));
        assert!(e.is_err(), "type {kind} meta {meta}");
    }
}
