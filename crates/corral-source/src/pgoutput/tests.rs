use proptest::prelude::*;

use super::*;

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn text(out: &mut Vec<u8>, values: &[Option<&str>]) {
    out.extend_from_slice(&(values.len() as u16).to_be_bytes());
    for value in values {
        match value {
            None => out.push(b'n'),
            Some(v) => {
                out.push(b't');
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v.as_bytes());
            }
        }
    }
}

fn relation_bytes() -> Vec<u8> {
    let mut out = vec![b'R'];
    out.extend_from_slice(&16384u32.to_be_bytes());
    cstr(&mut out, "public");
    cstr(&mut out, "packages");
    out.push(b'd');
    out.extend_from_slice(&2u16.to_be_bytes());
    for (flags, name) in [(1u8, "id"), (0, "price")] {
        out.push(flags);
        cstr(&mut out, name);
        out.extend_from_slice(&23u32.to_be_bytes());
        out.extend_from_slice(&u32::MAX.to_be_bytes());
    }
    out
}

fn update_bytes() -> Vec<u8> {
    let mut out = vec![b'U'];
    out.extend_from_slice(&16384u32.to_be_bytes());
    out.push(b'O');
    text(&mut out, &[Some("7"), Some("1")]);
    out.push(b'N');
    text(&mut out, &[Some("8"), None]);
    out
}

fn valid_messages() -> Vec<Vec<u8>> {
    let mut begin = vec![b'B'];
    begin.extend_from_slice(&0x16B_3748u64.to_be_bytes());
    begin.extend_from_slice(&5i64.to_be_bytes());
    begin.extend_from_slice(&731u32.to_be_bytes());
    let mut commit = vec![b'C', 0];
    for n in [1u64, 2, 3] {
        commit.extend_from_slice(&n.to_be_bytes());
    }
    let mut truncate = vec![b'T'];
    truncate.extend_from_slice(&2u32.to_be_bytes());
    truncate.push(0);
    truncate.extend_from_slice(&1u32.to_be_bytes());
    truncate.extend_from_slice(&2u32.to_be_bytes());
    let mut delete = vec![b'D'];
    delete.extend_from_slice(&16384u32.to_be_bytes());
    delete.push(b'K');
    text(&mut delete, &[Some("7"), None]);
    vec![
        begin,
        commit,
        relation_bytes(),
        update_bytes(),
        truncate,
        delete,
    ]
}

#[test]
fn each_message_decodes() {
    let [begin, commit, relation, update, truncate, delete] = &valid_messages()[..] else {
        unreachable!("six messages");
    };
    assert_eq!(
        decode(begin),
        Ok(Message::Begin {
            final_lsn: 0x16B_3748,
            commit_time: 5,
            xid: 731
        })
    );
    assert_eq!(
        decode(commit),
        Ok(Message::Commit {
            commit_lsn: 1,
            end_lsn: 2,
            commit_time: 3
        })
    );
    let Ok(Message::Relation(rel)) = decode(relation) else {
        panic!("not a relation")
    };
    assert_eq!(
        (rel.namespace.as_str(), rel.name.as_str()),
        ("public", "packages")
    );
    assert_eq!(rel.columns, ["id", "price"]);
    let Ok(Message::Update {
        relation: 16384,
        old: Some(old),
        new,
    }) = decode(update)
    else {
        panic!("not an update with its old row")
    };
    assert_eq!(rel.row(&old).unwrap()["id"].as_deref(), Some("7"));
    assert_eq!(rel.row(&new).unwrap()["price"], None);
    assert_eq!(
        decode(truncate),
        Ok(Message::Truncate {
            relations: vec![1, 2]
        })
    );
    assert!(matches!(
        decode(delete),
        Ok(Message::Delete {
            relation: 16384,
            ..
        })
    ));
}

#[test]
fn garbage_is_an_error() {
    assert_eq!(decode(b""), Err(DecodeError::Truncated { wanted: 1 }));
    assert_eq!(decode(b"Z"), Err(DecodeError::UnknownMessage(b'Z')));
    let mut trailing = update_bytes();
    trailing.push(0);
    assert_eq!(decode(&trailing), Err(DecodeError::Trailing(1)));
    let mut wide = vec![b'I', 0, 0, 0, 1, b'N'];
    wide.extend_from_slice(&2000u16.to_be_bytes());
    assert_eq!(decode(&wide), Err(DecodeError::TooManyColumns(2000)));
    let mut huge_truncate = vec![b'T'];
    huge_truncate.extend_from_slice(&u32::MAX.to_be_bytes());
    huge_truncate.push(0);
    assert!(matches!(
        decode(&huge_truncate),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn a_tuple_must_match_its_relation() {
    let Ok(Message::Relation(rel)) = decode(&relation_bytes()) else {
        panic!("relation")
    };
    let short = Tuple(vec![Value::Null]);
    let err = rel.row(&short).unwrap_err();
    assert_eq!(
        err,
        DecodeError::ColumnCount {
            relation: 16384,
            got: 1,
            want: 2
        }
    );
    let toasted = Tuple(vec![Value::Text("1".into()), Value::Unchanged]);
    assert!(!rel.row(&toasted).unwrap().contains_key("price"));
}

#[test]
fn every_strict_prefix_of_a_message_is_an_error() {
    for message in valid_messages() {
        for end in 0..message.len() {
            assert!(
                decode(&message[..end]).is_err(),
                "prefix {end} of {message:?} decoded"
            );
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn corrupting_one_byte_never_panics(which in 0usize..6, at in any::<usize>(), byte in any::<u8>()) {
        let mut message = valid_messages().swap_remove(which);
        let at = at % message.len();
        message[at] = byte;
        let _ = decode(&message);
    }
}
