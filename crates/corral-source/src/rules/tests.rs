use super::*;

fn row(pairs: &[(&str, Option<&str>)]) -> Row {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
        .collect()
}

fn packages() -> RuleSpec {
    RuleSpec {
        table: "packages".into(),
        tags: vec!["package-{id}".into(), "packages".into()],
        urls: vec!["/packages/{id}".into()],
        ignore_columns: vec!["view_count".into()],
        ..RuleSpec::default()
    }
}

fn update(old: Row, new: Row) -> Change {
    Change {
        table: "packages".into(),
        op: Op::Update,
        old: Some(old),
        new: Some(new),
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn an_update_purges_the_mapped_tags_and_urls() {
    let rule = Rule::new(&packages()).unwrap();
    let old = row(&[("id", Some("7")), ("price", Some("1"))]);
    let new = row(&[("id", Some("7")), ("price", Some("2"))]);
    let got = rule.targets(&update(old, new));
    assert_eq!(got.tags, set(&["package-7", "packages"]));
    assert_eq!(got.urls, set(&["/packages/7"]));
}

#[test]
fn a_changed_key_purges_the_old_and_the_new_entry() {
    let rule = Rule::new(&packages()).unwrap();
    let got = rule.targets(&update(
        row(&[("id", Some("7"))]),
        row(&[("id", Some("8"))]),
    ));
    assert_eq!(got.tags, set(&["package-7", "package-8", "packages"]));
    assert_eq!(got.urls, set(&["/packages/7", "/packages/8"]));
}

#[test]
fn an_update_touching_only_an_ignored_column_purges_nothing() {
    let rule = Rule::new(&packages()).unwrap();
    let old = row(&[("id", Some("7")), ("view_count", Some("1"))]);
    let new = row(&[("id", Some("7")), ("view_count", Some("2"))]);
    assert!(rule.targets(&update(old, new)).is_empty());
}

#[test]
fn only_columns_purge_when_one_of_them_changed() {
    let spec = RuleSpec {
        only_columns: vec!["price".into()],
        ignore_columns: vec![],
        ..packages()
    };
    let rule = Rule::new(&spec).unwrap();
    let base = row(&[("id", Some("7")), ("price", Some("1")), ("name", Some("a"))]);
    let mut renamed = base.clone();
    renamed.insert("name".into(), Some("b".into()));
    let mut repriced = base.clone();
    repriced.insert("price".into(), Some("2".into()));
    assert!(rule.targets(&update(base.clone(), renamed)).is_empty());
    assert!(!rule.targets(&update(base, repriced)).is_empty());
}

#[test]
fn without_the_old_row_every_column_counts_as_changed() {
    let rule = Rule::new(&packages()).unwrap();
    let change = Change {
        old: None,
        ..update(
            Row::new(),
            row(&[("id", Some("7")), ("view_count", Some("2"))]),
        )
    };
    assert_eq!(rule.targets(&change).urls, set(&["/packages/7"]));
}

#[test]
fn on_limits_the_operations_and_tables_must_match() {
    let spec = RuleSpec {
        on: vec![Op::Delete],
        ..packages()
    };
    let rule = Rule::new(&spec).unwrap();
    let new = row(&[("id", Some("7"))]);
    let insert = Change {
        table: "packages".into(),
        op: Op::Insert,
        old: None,
        new: Some(new),
    };
    assert!(rule.targets(&insert).is_empty());
    let delete = Change {
        op: Op::Delete,
        old: insert.new.clone(),
        new: None,
        ..insert.clone()
    };
    assert_eq!(rule.targets(&delete).tags, set(&["package-7", "packages"]));
    let other = Change {
        table: "users".into(),
        ..delete
    };
    assert!(rule.targets(&other).is_empty());
}

#[test]
fn a_null_value_renders_no_target_from_that_template() {
    let rule = Rule::new(&packages()).unwrap();
    let new = row(&[("id", None)]);
    let insert = Change {
        table: "packages".into(),
        op: Op::Insert,
        old: None,
        new: Some(new),
    };
    assert_eq!(rule.targets(&insert).tags, set(&["packages"]));
    assert!(rule.targets(&insert).urls.is_empty());
}

#[test]
fn invalid_rules_are_rejected_naming_the_table() {
    let cases: Vec<(RuleSpec, &str)> = vec![
        (
            RuleSpec {
                table: "".into(),
                ..packages()
            },
            "empty table name",
        ),
        (
            RuleSpec {
                tags: vec![],
                urls: vec![],
                ..packages()
            },
            "purge nothing",
        ),
        (
            RuleSpec {
                tags: vec!["p-{id".into()],
                ..packages()
            },
            "'{' without '}'",
        ),
        (
            RuleSpec {
                tags: vec!["p-id}".into()],
                ..packages()
            },
            "'}' without '{'",
        ),
        (
            RuleSpec {
                tags: vec!["p-{}".into()],
                ..packages()
            },
            "must name a column",
        ),
        (
            RuleSpec {
                urls: vec!["packages/{id}".into()],
                ..packages()
            },
            "starting with '/'",
        ),
        (
            RuleSpec {
                only_columns: vec!["a".into()],
                ..packages()
            },
            "ambiguous",
        ),
        (
            RuleSpec {
                tags: vec!["x".repeat(2000)],
                ..packages()
            },
            "longer than 1024",
        ),
    ];
    for (spec, expected) in cases {
        let message = Rule::new(&spec).unwrap_err().to_string();
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        if !spec.table.is_empty() {
            assert!(
                message.contains("\"packages\""),
                "{message:?} does not name the table"
            );
        }
    }
}

#[test]
fn a_missing_column_is_named_with_its_table() {
    let rule = Rule::new(&packages()).unwrap();
    assert_eq!(rule.check_columns(["id", "view_count", "price"]), Ok(()));
    let err = rule.check_columns(["id", "price"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "rule for table \"packages\": column \"view_count\" does not exist"
    );
}

#[test]
fn rules_combine_into_one_union() {
    let mut second = packages();
    second.tags = vec!["catalog".into()];
    second.urls = vec![];
    let rules = [Rule::new(&packages()).unwrap(), Rule::new(&second).unwrap()];
    let new = row(&[("id", Some("1"))]);
    let insert = Change {
        table: "packages".into(),
        op: Op::Insert,
        old: None,
        new: Some(new),
    };
    assert_eq!(
        targets(&rules, &insert).tags,
        set(&["catalog", "package-1", "packages"])
    );
}
