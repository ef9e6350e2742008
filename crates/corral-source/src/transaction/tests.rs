use super::*;
use crate::pgoutput::Value;
use crate::rules::RuleSpec;

fn rules() -> Vec<Rule> {
    let spec = RuleSpec {
        table: "packages".into(),
        tags: vec!["package-{id}".into(), "packages".into()],
        ..RuleSpec::default()
    };
    vec![Rule::new(&spec).unwrap()]
}

fn relation() -> Message {
    Message::Relation(Relation {
        id: 1,
        namespace: "public".into(),
        name: "packages".into(),
        columns: vec!["id".into()],
    })
}

fn id(v: &str) -> Tuple {
    Tuple(vec![Value::Text(v.into())])
}

fn commit() -> Message {
    Message::Commit {
        commit_lsn: 90,
        end_lsn: 100,
        commit_time: 5,
    }
}

#[test]
fn a_transaction_purges_the_union_of_its_rows_at_commit() {
    let rules = rules();
    let mut fold = Fold::new(&rules);
    assert_eq!(
        fold.push(Message::Begin {
            final_lsn: 90,
            commit_time: 5,
            xid: 9
        }),
        Ok(None)
    );
    assert_eq!(fold.push(relation()), Ok(None));
    assert_eq!(
        fold.push(Message::Insert {
            relation: 1,
            new: id("1")
        }),
        Ok(None)
    );
    assert_eq!(
        fold.push(Message::Delete {
            relation: 1,
            old: id("2")
        }),
        Ok(None)
    );
    let done = fold.push(commit()).unwrap().expect("committed");
    assert_eq!((done.xid, done.end_lsn), (9, 100));
    let tags: Vec<_> = done.targets.tags.into_iter().collect();
    assert_eq!(tags, ["package-1", "package-2", "packages"]);
}

#[test]
fn a_truncate_purges_the_constant_templates() {
    let rules = rules();
    let mut fold = Fold::new(&rules);
    fold.push(relation()).unwrap();
    fold.push(Message::Begin {
        final_lsn: 90,
        commit_time: 5,
        xid: 9,
    })
    .unwrap();
    fold.push(Message::Truncate { relations: vec![1] }).unwrap();
    let done = fold.push(commit()).unwrap().expect("committed");
    assert_eq!(
        done.targets.tags.into_iter().collect::<Vec<_>>(),
        ["packages"]
    );
}

#[test]
fn changes_out_of_order_are_errors() {
    let rules = rules();
    let mut fold = Fold::new(&rules);
    let insert = Message::Insert {
        relation: 1,
        new: id("1"),
    };
    assert_eq!(
        fold.push(insert.clone()),
        Err(FoldError::UnknownRelation(1))
    );
    fold.push(relation()).unwrap();
    assert_eq!(fold.push(insert), Err(FoldError::OutsideTransaction));
    assert_eq!(fold.push(commit()), Err(FoldError::OutsideTransaction));
}
