//! `[[sources]]`: database change streams to purge from, as written and resolved.
//!
//! Everything that can be judged without the database is judged here, so `corral
//! check-config` names a bad rule's table (and column, for a template). Whether the columns
//! exist is known only at start, against the database (`crate::sources::preflight`). Secrets
//! are never in the file itself: the password comes from `password_file`, from `dsn_file`,
//! or from the environment (`password_env`, else `CORRAL_SOURCE_<NAME>_PASSWORD`), and is
//! read at start, not by check-config.
//!
//! `kind = "postgres"` follows a logical-replication slot; `kind = "mariadb"` follows a
//! MariaDB server's binlog as a replica (`server_id`), with the same connection keys and
//! secrets (the DSN's `dbname` is the database the rules' tables are in).

use std::path::PathBuf;
use std::sync::Arc;

use corral_source::mariadb;
use corral_source::pg::{self, parse_dsn, ConnectSpec, Password};
use corral_source::rules::{Rule, RuleSpec};
use serde::Deserialize;

use crate::config::{bad, ConfigError};
use crate::config_source_tls::{ssl_of_parts, SslSettings};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub name: Option<String>,
    pub kind: Option<String>,
    /// libpq `key=value` pairs without the password.
    pub dsn: Option<String>,
    /// A file holding the whole DSN, password included (a mounted Secret).
    pub dsn_file: Option<PathBuf>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub database: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// TLS, as libpq names it (with host/port/user/database; a DSN carries its own).
    pub sslmode: Option<String>,
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub slot: Option<String>,
    pub publication: Option<String>,
    /// mariadb: the replica id the follower registers with.
    pub server_id: Option<u32>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

/// Where the connection details and the password come from, read at start.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Connection from the config; the password from a file, an environment variable, or none.
    Parts {
        connect: ConnectSpec,
        ssl: Box<SslSettings>,
        password_file: Option<PathBuf>,
        password_env: String,
    },
    /// The whole DSN from a file.
    DsnFile(PathBuf),
}

/// Which database, and what only that kind has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    Postgres,
    /// `server_id`: the replica id registered with the server (one dump per id).
    MariaDb {
        server_id: u32,
    },
}

/// A resolved `[[sources]]` entry.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub name: String,
    pub kind: SourceKind,
    pub credentials: Credentials,
    /// postgres only (empty for mariadb).
    pub slot: String,
    pub publication: String,
    pub rules: Arc<Vec<Rule>>,
}

/// Checks every `[[sources]]` entry.
pub fn resolve(raw: &[RawSource]) -> Result<Vec<SourceSpec>, ConfigError> {
    let mut out: Vec<SourceSpec> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let spec = resolve_one(i, r)?;
        if out.iter().any(|s| s.name == spec.name) {
            return Err(bad(
                &format!("sources[{i}].name"),
                &spec.name,
                "names must be unique",
            ));
        }
        if let Some(other) = out
            .iter()
            .find(|s| !spec.slot.is_empty() && s.slot == spec.slot)
        {
            let why = format!(
                "source {:?} uses that slot already: one follower per slot",
                other.name
            );
            return Err(bad(&format!("sources[{i}].slot"), &spec.slot, &why));
        }
        if let SourceKind::MariaDb { server_id } = spec.kind {
            if let Some(other) = out
                .iter()
                .find(|s| s.kind == SourceKind::MariaDb { server_id })
            {
                let why = format!(
                    "source {:?} uses that server_id already: the server keeps one binlog dump per replica id",
                    other.name
                );
                return Err(bad(
                    &format!("sources[{i}].server_id"),
                    server_id.to_string(),
                    &why,
                ));
            }
        }
        out.push(spec);
    }
    Ok(out)
}

fn resolve_one(i: usize, r: &RawSource) -> Result<SourceSpec, ConfigError> {
    let at = |key: &str| format!("sources[{i}].{key}");
    let name = r
        .name
        .clone()
        .ok_or_else(|| ConfigError(format!("{}: required", at("name"))))?;
    if !is_name(&name, |c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(bad(
            &at("name"),
            &name,
            "1 to 63 letters, digits, '-' or '_'",
        ));
    }
    let kind = match r.kind.as_deref() {
        Some("postgres") => SourceKind::Postgres,
        Some("mariadb") => SourceKind::MariaDb {
            server_id: match r.server_id {
                Some(0) => {
                    return Err(bad(
                        &at("server_id"),
                        "0",
                        "1 to 4294967295 (0 is refused by the server)",
                    ))
                }
                Some(id) => id,
                None => default_server_id(&name),
            },
        },
        // MariaDB's GTIDs and binlog events are what the follower speaks; MySQL's differ and
        // are not tested, so "mysql" is not taken to mean them.
        Some("mysql") => {
            return Err(bad(
                &at("kind"),
                "mysql",
                "MySQL's binlog is not supported yet; \"postgres\" and \"mariadb\" are",
            ))
        }
        other => {
            return Err(bad(
                &at("kind"),
                other.unwrap_or(""),
                "\"postgres\" or \"mariadb\"",
            ))
        }
    };
    if kind != SourceKind::Postgres {
        return resolve_mariadb(i, r, name, kind);
    }
    if r.server_id.is_some() {
        return Err(ConfigError(format!(
            "{}: mariadb only (postgres follows a slot)",
            at("server_id")
        )));
    }
    let slot = r
        .slot
        .clone()
        .unwrap_or_else(|| format!("corral_{}", name.replace('-', "_").to_lowercase()));
    if !is_name(&slot, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
    }) {
        return Err(bad(
            &at("slot"),
            &slot,
            "1 to 63 lower-case letters, digits or '_' (PostgreSQL's rule for slot names)",
        ));
    }
    let publication = r.publication.clone().unwrap_or_else(|| "corral".into());
    if !is_name(&publication, |c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(bad(
            &at("publication"),
            &publication,
            "1 to 63 letters, digits or '_'",
        ));
    }
    Ok(SourceSpec {
        credentials: credentials(i, &name, r, 5432)?,
        rules: rules(i, r)?,
        name,
        kind: SourceKind::Postgres,
        slot,
        publication,
    })
}

fn resolve_mariadb(
    i: usize,
    r: &RawSource,
    name: String,
    kind: SourceKind,
) -> Result<SourceSpec, ConfigError> {
    for (key, given) in [("slot", &r.slot), ("publication", &r.publication)] {
        if given.is_some() {
            return Err(ConfigError(format!(
                "sources[{i}].{key}: postgres only (mariadb follows the binlog from a GTID position stored in corral.source_positions)"
            )));
        }
    }
    Ok(SourceSpec {
        credentials: credentials(i, &name, r, 3306)?,
        rules: rules(i, r)?,
        name,
        kind,
        slot: String::new(),
        publication: String::new(),
    })
}

fn rules(i: usize, r: &RawSource) -> Result<Arc<Vec<Rule>>, ConfigError> {
    let at = format!("sources[{i}].rules");
    if r.rules.is_empty() {
        return Err(ConfigError(format!(
            "{at}: at least one rule is needed (a source that purges nothing)"
        )));
    }
    let mut rules = Vec::new();
    for (j, spec) in r.rules.iter().enumerate() {
        rules.push(Rule::new(spec).map_err(|e| ConfigError(format!("{at}[{j}]: {e}")))?);
    }
    Ok(Arc::new(rules))
}

/// A replica id from the source's name (FNV-1a), in the upper half of the range where
/// operators rarely number their servers, so two sources' followers never share one.
fn default_server_id(name: &str) -> u32 {
    let hash = name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    0x8000_0000 | hash
}

fn is_name(s: &str, ok: impl Fn(char) -> bool) -> bool {
    (1..=63).contains(&s.len()) && s.chars().all(ok)
}

fn credentials(
    i: usize,
    name: &str,
    r: &RawSource,
    default_port: u16,
) -> Result<Credentials, ConfigError> {
    let at = |key: &str| format!("sources[{i}].{key}");
    let parts = r.host.is_some() || r.port.is_some() || r.user.is_some() || r.database.is_some();
    if let Some(file) = &r.dsn_file {
        if r.dsn.is_some() || parts || r.password_file.is_some() || r.password_env.is_some() {
            return Err(ConfigError(format!(
                "{}: the file holds the whole connection string; give nothing else",
                at("dsn_file")
            )));
        }
        return Ok(Credentials::DsnFile(file.clone()));
    }
    if r.dsn.is_some() && parts {
        return Err(ConfigError(format!(
            "{}: give dsn or host/port/user/database, not both",
            at("dsn")
        )));
    }
    let ssl_parts =
        r.sslmode.is_some() || r.sslrootcert.is_some() || r.sslcert.is_some() || r.sslkey.is_some();
    if ssl_parts && (r.dsn.is_some() || r.dsn_file.is_some()) {
        return Err(ConfigError(format!(
            "{}: a DSN carries its own sslmode/sslrootcert/sslcert/sslkey",
            at("sslmode")
        )));
    }
    let (connect, ssl) = match &r.dsn {
        Some(dsn) => connect_from_dsn(dsn, false, default_port)
            .map_err(|e| ConfigError(format!("{}: {e}", at("dsn"))))?,
        None => (
            ConnectSpec {
                host: r.host.clone().unwrap_or_else(|| "127.0.0.1".into()),
                port: r.port.unwrap_or(default_port),
                user: r.user.clone().ok_or_else(|| {
                    ConfigError(format!("{}: required (or give dsn)", at("user")))
                })?,
                database: r.database.clone().ok_or_else(|| {
                    ConfigError(format!("{}: required (or give dsn)", at("database")))
                })?,
                password: None,
                tls: None,
            },
            ssl_of_parts(r).map_err(|e| ConfigError(format!("{}: {e}", at("sslmode"))))?,
        ),
    };
    if r.password_file.is_some() && r.password_env.is_some() {
        return Err(ConfigError(format!(
            "{}: give password_file or password_env, not both",
            at("password_file")
        )));
    }
    let default_env = format!(
        "CORRAL_SOURCE_{}_PASSWORD",
        name.to_uppercase().replace('-', "_")
    );
    Ok(Credentials::Parts {
        connect,
        ssl: Box::new(ssl),
        password_file: r.password_file.clone(),
        password_env: r.password_env.clone().unwrap_or(default_env),
    })
}

/// A libpq-style DSN as a [`ConnectSpec`] and its TLS settings (the same keys for MariaDB,
/// whose `default_port` is 3306). `with_password`: only a DSN read from a file may carry one.
pub fn connect_from_dsn(
    dsn: &str,
    with_password: bool,
    default_port: u16,
) -> Result<(ConnectSpec, SslSettings), String> {
    let mut c = ConnectSpec {
        host: "127.0.0.1".into(),
        port: default_port,
        user: String::new(),
        database: String::new(),
        password: None,
        tls: None,
    };
    let mut ssl = SslSettings::default();
    for (key, value) in parse_dsn(dsn)? {
        match key.as_str() {
            "host" | "hostaddr" if value.starts_with('/') => return Err("Unix sockets are not supported: give a TCP host".into()),
            "host" | "hostaddr" => c.host = value,
            "port" => c.port = value.parse().map_err(|_| format!("port {value:?} is not a port number"))?,
            "user" => c.user = value,
            "dbname" => c.database = value,
            "password" if with_password => c.password = Some(Password::new(&value)),
            "password" => return Err("no password here (it would be in the config file): use dsn_file, password_file or CORRAL_SOURCE_<NAME>_PASSWORD".into()),
            "sslmode" | "sslrootcert" | "sslcert" | "sslkey" => ssl.set(&key, &value)?,
            "application_name" | "connect_timeout" => {}
            other => return Err(format!("{other:?} is not a key Corral understands (host, port, user, dbname, sslmode, sslrootcert, sslcert, sslkey)")),
        }
    }
    if c.user.is_empty() || c.database.is_empty() {
        return Err("user and dbname are required".into());
    }
    ssl.check()?;
    Ok((c, ssl))
}

/// A source as its follower needs it, credentials loaded.
#[derive(Clone, Debug)]
pub enum Follower {
    Postgres(pg::follow::Source),
    MariaDb(mariadb::follow::Source),
}

impl Follower {
    pub fn name(&self) -> &str {
        match self {
            Follower::Postgres(s) => &s.name,
            Follower::MariaDb(s) => &s.name,
        }
    }
}

impl SourceSpec {
    /// Reads the credentials (files, environment): the follower's view of this source.
    pub fn load(&self) -> Result<Follower, String> {
        let at = format!("source {:?}", self.name);
        let (mut connect, ssl) = match &self.credentials {
            Credentials::DsnFile(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("{at}: dsn_file {:?}: cannot read it: {e}", path.display())
                })?;
                let port = match self.kind {
                    SourceKind::Postgres => 5432,
                    SourceKind::MariaDb { .. } => 3306,
                };
                connect_from_dsn(text.trim(), true, port)
                    .map_err(|e| format!("{at}: dsn_file {:?}: {e}", path.display()))?
            }
            Credentials::Parts {
                connect,
                ssl,
                password_file,
                password_env,
            } => {
                let mut connect = connect.clone();
                connect.password = match password_file {
                    Some(path) => Some(Password::new(&std::fs::read_to_string(path).map_err(
                        |e| {
                            format!(
                                "{at}: password_file {:?}: cannot read it: {e}",
                                path.display()
                            )
                        },
                    )?)),
                    None => std::env::var(password_env).ok().map(|p| Password::new(&p)),
                };
                (connect, SslSettings::clone(ssl))
            }
        };
        connect.tls = ssl
            .load(&connect.host)
            .map_err(|e| format!("{at}: TLS to the database: {e}"))?;
        Ok(match self.kind {
            SourceKind::Postgres => Follower::Postgres(pg::follow::Source {
                name: self.name.clone(),
                connect,
                slot: self.slot.clone(),
                publication: self.publication.clone(),
                rules: self.rules.clone(),
            }),
            SourceKind::MariaDb { server_id } => Follower::MariaDb(mariadb::follow::Source {
                name: self.name.clone(),
                connect,
                server_id,
                rules: self.rules.clone(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str) -> Result<Vec<SourceSpec>, String> {
        #[derive(Deserialize)]
        struct File {
            sources: Vec<RawSource>,
        }
        let f: File = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        resolve(&f.sources).map_err(|e| e.0)
    }

    const OK: &str = r#"
        [[sources]]
        name = "shop"
        kind = "postgres"
        dsn = "host=127.0.0.1 port=5433 user=corral dbname=shop"
        rules = [ { table = "packages", tags = ["package-{id}", "packages"], urls = ["/packages/{id}"] } ]
    "#;

    #[test]
    fn a_valid_source_resolves_with_defaults() {
        let s = &check(OK).unwrap()[0];
        assert_eq!(
            (s.slot.as_str(), s.publication.as_str()),
            ("corral_shop", "corral")
        );
        let Credentials::Parts {
            connect,
            password_env,
            ..
        } = &s.credentials
        else {
            panic!()
        };
        assert_eq!((connect.port, connect.user.as_str()), (5433, "corral"));
        assert_eq!(password_env, "CORRAL_SOURCE_SHOP_PASSWORD");
    }

    #[test]
    fn sslmode_decides_tls_and_what_is_verified() {
        let mode = |dsn_extra: &str| {
            let text = OK.replace("dbname=shop", &format!("dbname=shop {dsn_extra}"));
            let s = check(&text).unwrap();
            let Credentials::Parts { ssl, .. } = &s[0].credentials else {
                panic!()
            };
            ssl.clone()
        };
        for clear in ["", "sslmode=disable", "sslmode=allow", "sslmode=prefer"] {
            assert_eq!(mode(clear).verify_name, None, "{clear}");
        }
        assert_eq!(mode("sslmode=require").verify_name, Some(true));
        assert_eq!(mode("sslmode=verify-full").verify_name, Some(true));
        let ca = mode("sslmode=verify-ca sslrootcert=/etc/ca.pem");
        assert_eq!(ca.verify_name, Some(false));
        assert_eq!(
            ca.root_cert.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        // The host/port/user/database form takes the same keys as fields.
        let parts = r#"
            [[sources]]
            name = "shop"
            kind = "postgres"
            host = "db.internal"
            user = "corral"
            database = "shop"
            sslmode = "verify-full"
            rules = [ { table = "packages", tags = ["packages"] } ]
        "#;
        let s = check(parts).unwrap();
        let Credentials::Parts { ssl, .. } = &s[0].credentials else {
            panic!()
        };
        assert_eq!(ssl.verify_name, Some(true));
        // ... but not beside a DSN, which carries its own.
        let both = OK.replace(
            "kind = \"postgres\"",
            "kind = \"postgres\"\nsslmode = \"require\"",
        );
        assert!(check(&both).unwrap_err().contains("carries its own"));
    }

    #[test]
    fn a_mariadb_source_resolves_with_its_port_and_a_replica_id() {
        let text = OK
            .replace("\"postgres\"", "\"mariadb\"")
            .replace(" port=5433", "");
        let s = &check(&text).unwrap()[0];
        let SourceKind::MariaDb { server_id } = s.kind else {
            panic!("{:?}", s.kind)
        };
        assert_eq!(server_id, default_server_id("shop"));
        assert!(server_id >= 0x8000_0000);
        let Credentials::Parts { connect, .. } = &s.credentials else {
            panic!()
        };
        assert_eq!((connect.port, connect.database.as_str()), (3306, "shop"));
        let two = format!("{text}{}", text.replace("\"shop\"", "\"shop2\""));
        assert_eq!(
            check(&two).unwrap().len(),
            2,
            "no slot shared between mariadb sources"
        );
        let same_id = two.replace("rules =", "server_id = 9\nrules =");
        assert!(check(&same_id).unwrap_err().contains("server_id"));
        // TLS is asked for with the same keys as for PostgreSQL.
        let tls = text.replace("dbname=shop", "dbname=shop sslmode=verify-full");
        let Credentials::Parts { ssl, .. } = &check(&tls).unwrap()[0].credentials else {
            panic!()
        };
        assert_eq!(ssl.verify_name, Some(true));
    }

    #[test]
    fn bad_sources_are_refused_naming_what_is_wrong() {
        let cases = [
            (OK.replace("package-{id}", "package-{id"), "\"packages\""),
            (
                OK.replace(
                    r#"urls = ["/packages/{id}"]"#,
                    r#"urls = ["packages/{id}"]"#,
                ),
                "\"packages\"",
            ),
            (
                OK.replace("dbname=shop", "dbname=shop password=x"),
                "no password here",
            ),
            (
                OK.replace("dbname=shop", "dbname=shop sslmode=required"),
                "sslmode \"required\"",
            ),
            (
                OK.replace("dbname=shop", "dbname=shop sslcert=/c.pem sslmode=require"),
                "sslcert and sslkey go together",
            ),
            (
                OK.replace("dbname=shop", "dbname=shop sslrootcert=/ca.pem"),
                "does not ask for TLS",
            ),
            (OK.replace("\"postgres\"", "\"mysql\""), "sources[0].kind"),
            (
                OK.replace("\"postgres\"", "\"mariadb\"")
                    .replace("rules =", "slot = \"x\"\nrules ="),
                "sources[0].slot: postgres only",
            ),
            (
                OK.replace("\"postgres\"", "\"mariadb\"")
                    .replace("rules =", "server_id = 0\nrules ="),
                "sources[0].server_id",
            ),
            (
                OK.replace("rules =", "server_id = 7\nrules ="),
                "mariadb only",
            ),
            (
                OK.replace("name = \"shop\"", "name = \"a b\""),
                "sources[0].name",
            ),
            (format!("{OK}{OK}"), "unique"),
            (
                OK.replace(
                    ", tags = [\"package-{id}\", \"packages\"], urls = [\"/packages/{id}\"]",
                    "",
                ),
                "purge nothing",
            ),
        ];
        for (text, want) in cases {
            let e = check(&text).unwrap_err();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
    }
}
