//! Rules: which tags and URLs a changed row purges.
//!
//! A rule names a table, tag and URL templates whose `{column}` placeholders take the row's
//! values, the operations it fires on, and an optional column filter. An update renders every
//! template twice — with the old values and with the new — so a row whose key changed purges
//! both the entry it was and the one it became. Purges are idempotent, so rendering the same
//! target twice costs nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

/// A row's values by column; `None` is SQL NULL (a template needing it renders nothing).
pub type Row = BTreeMap<String, Option<String>>;

/// The longest template accepted: configuration is operator input, still bounded.
const MAX_TEMPLATE: usize = 1024;

/// What happened to a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
}

/// One committed row change, as a decoder reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub table: String,
    pub op: Op,
    /// The values before (update with a replica identity, delete).
    pub old: Option<Row>,
    /// The values after (insert, update).
    pub new: Option<Row>,
}

/// A rule as written in `[[sources.rules]]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub table: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub urls: Vec<String>,
    /// Empty means all three operations.
    #[serde(default)]
    pub on: Vec<Op>,
    #[serde(default)]
    pub only_columns: Vec<String>,
    #[serde(default)]
    pub ignore_columns: Vec<String>,
}

/// Why a rule was rejected; every message names the table (and the column when there is one).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("rule for table {table:?}: no tags and no urls, it would purge nothing")]
    Empty { table: String },
    #[error("rule has an empty table name")]
    NoTable,
    #[error("rule for table {table:?}: template {template:?}: {reason}")]
    Template {
        table: String,
        template: String,
        reason: &'static str,
    },
    #[error("rule for table {table:?}: only_columns and ignore_columns together are ambiguous")]
    BothFilters { table: String },
    #[error("rule for table {table:?}: column {column:?} does not exist")]
    MissingColumn { table: String, column: String },
    #[error("rule for table {table:?}: urls must be paths starting with '/', not {url:?}")]
    NotAPath { table: String, url: String },
}

/// A piece of a template: literal text or a column's value.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Column(String),
}

/// A parsed `{column}` template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

/// The tags and URLs one change purges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    pub tags: BTreeSet<String>,
    pub urls: BTreeSet<String>,
}

impl Targets {
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.urls.is_empty()
    }

    /// Adds another change's targets (a transaction purges the union of its rows').
    pub fn extend(&mut self, other: Targets) {
        self.tags.extend(other.tags);
        self.urls.extend(other.urls);
    }
}

/// The filter on which columns an update must touch to purge.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Filter {
    All,
    Only(BTreeSet<String>),
    Ignore(BTreeSet<String>),
}

/// A validated rule.
#[derive(Clone, Debug)]
pub struct Rule {
    table: String,
    tags: Vec<Template>,
    urls: Vec<Template>,
    on: Vec<Op>,
    filter: Filter,
}

impl Template {
    /// Parses `text`; `{` and `}` only delimit a column name (no nesting, no escapes).
    pub fn parse(text: &str) -> Result<Template, &'static str> {
        if text.len() > MAX_TEMPLATE {
            return Err("longer than 1024 bytes");
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err("'}' without '{'");
            }
            push_text(&mut pieces, &rest[..open]);
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or("'{' without '}'")?;
            let name = &after[..close];
            if name.is_empty() || name.contains('{') {
                return Err("a placeholder must name a column");
            }
            pieces.push(Piece::Column(name.to_owned()));
            rest = &after[close + 1..];
        }
        push_text(&mut pieces, rest);
        Ok(Template(pieces))
    }

    /// The columns this template reads.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|piece| match piece {
            Piece::Column(name) => Some(name.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// The template with `row`'s values; `None` when a column is missing or NULL.
    pub fn render(&self, row: &Row) -> Option<String> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Column(name) => out.push_str(row.get(name)?.as_deref()?),
            }
        }
        Some(out)
    }
}

fn push_text(pieces: &mut Vec<Piece>, text: &str) {
    if !text.is_empty() {
        pieces.push(Piece::Text(text.to_owned()));
    }
}

impl Rule {
    /// Validates a spec: non-empty, well-formed templates, URL paths, one filter at most.
    pub fn new(spec: &RuleSpec) -> Result<Rule, RuleError> {
        let table = spec.table.clone();
        if table.is_empty() {
            return Err(RuleError::NoTable);
        }
        if spec.tags.is_empty() && spec.urls.is_empty() {
            return Err(RuleError::Empty { table });
        }
        for url in &spec.urls {
            if !url.starts_with('/') {
                let url = url.clone();
                return Err(RuleError::NotAPath { table, url });
            }
        }
        let filter = match (&spec.only_columns[..], &spec.ignore_columns[..]) {
            ([], []) => Filter::All,
            (only, []) => Filter::Only(only.iter().cloned().collect()),
            ([], ignore) => Filter::Ignore(ignore.iter().cloned().collect()),
            _ => return Err(RuleError::BothFilters { table }),
        };
        let tags = parse_all(&table, &spec.tags)?;
        let urls = parse_all(&table, &spec.urls)?;
        let on = match &spec.on[..] {
            [] => vec![Op::Insert, Op::Update, Op::Delete],
            on => on.to_vec(),
        };
        Ok(Rule {
            table,
            tags,
            urls,
            on,
            filter,
        })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Every column the rule names (templates and filters), for checking against the table.
    pub fn columns(&self) -> BTreeSet<&str> {
        let templates = self.tags.iter().chain(&self.urls);
        let mut names: BTreeSet<&str> = templates.flat_map(Template::columns).collect();
        match &self.filter {
            Filter::All => {}
            Filter::Only(set) | Filter::Ignore(set) => names.extend(set.iter().map(String::as_str)),
        }
        names
    }

    /// Fails on the first column the rule names that `existing` lacks (checked at start, when
    /// the table's columns are known).
    pub fn check_columns<'a>(
        &self,
        existing: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), RuleError> {
        let existing: BTreeSet<&str> = existing.into_iter().collect();
        match self.columns().into_iter().find(|c| !existing.contains(c)) {
            None => Ok(()),
            Some(column) => Err(RuleError::MissingColumn {
                table: self.table.clone(),
                column: column.to_owned(),
            }),
        }
    }

    /// What `change` purges under this rule (empty when the rule does not apply).
    pub fn targets(&self, change: &Change) -> Targets {
        let mut targets = Targets::default();
        if change.table != self.table || !self.on.contains(&change.op) || !self.passes(change) {
            return targets;
        }
        for row in change.old.iter().chain(&change.new) {
            targets
                .tags
                .extend(self.tags.iter().filter_map(|t| t.render(row)));
            targets
                .urls
                .extend(self.urls.iter().filter_map(|t| t.render(row)));
        }
        targets
    }

    /// What the rule purges without a row: the templates with no placeholder (a truncate).
    pub fn constant_targets(&self) -> Targets {
        let row = Row::new();
        Targets {
            tags: self.tags.iter().filter_map(|t| t.render(&row)).collect(),
            urls: self.urls.iter().filter_map(|t| t.render(&row)).collect(),
        }
    }

    /// The column filter: only an update can leave columns untouched.
    fn passes(&self, change: &Change) -> bool {
        let (Op::Update, Some(old), Some(new)) = (change.op, &change.old, &change.new) else {
            return true;
        };
        // Without the old row (no REPLICA IDENTITY FULL) every column counts as changed.
        let changed = new
            .iter()
            .filter(|(name, value)| old.get(*name) != Some(value));
        let mut changed = changed.map(|(name, _)| name);
        match &self.filter {
            Filter::All => true,
            Filter::Only(only) => changed.any(|c| only.contains(c)),
            Filter::Ignore(ignore) => changed.any(|c| !ignore.contains(c)),
        }
    }
}

fn parse_all(table: &str, templates: &[String]) -> Result<Vec<Template>, RuleError> {
    let parse = |text: &String| {
        Template::parse(text).map_err(|reason| RuleError::Template {
            table: table.to_owned(),
            template: text.clone(),
            reason,
        })
    };
    templates.iter().map(parse).collect()
}

/// The union of what every rule purges for `change`.
pub fn targets(rules: &[Rule], change: &Change) -> Targets {
    let mut all = Targets::default();
    for rule in rules {
        all.extend(rule.targets(change));
    }
    all
}

#[cfg(test)]
mod tests;
