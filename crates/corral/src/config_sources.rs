//! `[[sources]]`: database change streams to purge from, as written and resolved.
//!
//! Everything that can be judged without the database is judged here, so `corral
//! check-config` names a bad rule's table (and column, for a template). Whether the columns
//! exist is known only at start, against the database (`crate::sources::preflight`). Secrets
//! are never in the file itself: the password comes from `password_file`, from `dsn_file`,
//! or from the environment (`password_env`, else `CORRAL_SOURCE_<NAME>_PASSWORD`), and is
//! read at start, not by check-config.

use std::path::PathBuf;
use std::sync::Arc;

use corral_source::pg::tls::PgTls;
use corral_source::pg::{parse_dsn, ConnectSpec, Password};
use corral_source::rules::{Rule, RuleSpec};
use serde::Deserialize;

use crate::config::{bad, ConfigError};

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

/// `sslmode` and the files it uses: judged when the config is checked, the files read at start.
///
/// `disable`, `allow` and `prefer` connect in clear: libpq's `allow` and `prefer` settle for
/// clear whenever TLS is refused, which anyone on the path can arrange, so Corral does not
/// pretend they protect anything. `require`, `verify-ca` and `verify-full` use TLS and fail
/// when the server refuses it; all three verify the certificate's chain against `sslrootcert`
/// (else the system's roots), and `require` and `verify-full` its name too (libpq's
/// `require` would verify nothing: there is no unverified mode here).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslSettings {
    /// `None`: in clear; `Some(true)`: verify the chain and the name; `Some(false)`: the chain.
    pub verify_name: Option<bool>,
    pub root_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl SslSettings {
    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "sslmode" => {
                self.verify_name = match value {
                    "disable" | "allow" | "prefer" => None,
                    "require" | "verify-full" => Some(true),
                    "verify-ca" => Some(false),
                    other => {
                        return Err(format!(
                    "sslmode {other:?}: disable, allow, prefer, require, verify-ca or verify-full"
                ))
                    }
                }
            }
            "sslrootcert" => self.root_cert = Some(value.into()),
            "sslcert" => self.cert = Some(value.into()),
            "sslkey" => self.key = Some(value.into()),
            _ => unreachable!("only the ssl keys reach here"),
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        if self.cert.is_some() != self.key.is_some() {
            return Err("sslcert and sslkey go together".into());
        }
        if self.verify_name.is_none() && (self.root_cert.is_some() || self.cert.is_some()) {
            return Err("sslrootcert/sslcert are set but sslmode does not ask for TLS (require, verify-ca or verify-full)".into());
        }
        Ok(())
    }

    /// The rustls config for a server reached as `host` (reads the files).
    pub fn load(&self, host: &str) -> Result<Option<PgTls>, String> {
        let Some(verify_name) = self.verify_name else {
            return Ok(None);
        };
        let files = corral_http::tls::client::UpstreamTlsSettings {
            ca_file: self.root_cert.clone(),
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
            ..Default::default()
        };
        let mut config = corral_http::tls::client::client_config(&files)?;
        if !verify_name {
            corral_http::tls::client::verify_chain_only(&mut config, &files)?;
        }
        Ok(Some(PgTls {
            config: Arc::new(config),
            server_name: corral_http::tls::client::server_name(host)?,
        }))
    }
}

/// A resolved `[[sources]]` entry.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub name: String,
    pub credentials: Credentials,
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
        if let Some(other) = out.iter().find(|s| s.slot == spec.slot) {
            let why = format!(
                "source {:?} uses that slot already: one follower per slot",
                other.name
            );
            return Err(bad(&format!("sources[{i}].slot"), &spec.slot, &why));
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
    match r.kind.as_deref() {
        Some("postgres") => {}
        Some("mysql") => {
            return Err(bad(
                &at("kind"),
                "mysql",
                "not supported yet; \"postgres\" is",
            ))
        }
        other => return Err(bad(&at("kind"), other.unwrap_or(""), "\"postgres\"")),
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
    if r.rules.is_empty() {
        return Err(ConfigError(format!(
            "{}: at least one rule is needed (a source that purges nothing)",
            at("rules")
        )));
    }
    let mut rules = Vec::new();
    for (j, spec) in r.rules.iter().enumerate() {
        let rule =
            Rule::new(spec).map_err(|e| ConfigError(format!("{}[{j}]: {e}", at("rules"))))?;
        rules.push(rule);
    }
    Ok(SourceSpec {
        credentials: credentials(i, &name, r)?,
        name,
        slot,
        publication,
        rules: Arc::new(rules),
    })
}

fn is_name(s: &str, ok: impl Fn(char) -> bool) -> bool {
    (1..=63).contains(&s.len()) && s.chars().all(ok)
}

fn credentials(i: usize, name: &str, r: &RawSource) -> Result<Credentials, ConfigError> {
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
        Some(dsn) => {
            connect_from_dsn(dsn, false).map_err(|e| ConfigError(format!("{}: {e}", at("dsn"))))?
        }
        None => (
            ConnectSpec {
                host: r.host.clone().unwrap_or_else(|| "127.0.0.1".into()),
                port: r.port.unwrap_or(5432),
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

fn ssl_of_parts(r: &RawSource) -> Result<SslSettings, String> {
    let mut ssl = SslSettings::default();
    if let Some(mode) = &r.sslmode {
        ssl.set("sslmode", mode)?;
    }
    ssl.root_cert = r.sslrootcert.clone();
    ssl.cert = r.sslcert.clone();
    ssl.key = r.sslkey.clone();
    ssl.check()?;
    Ok(ssl)
}

/// A libpq DSN as a [`ConnectSpec`] and its TLS settings. `with_password`: only a DSN read
/// from a file may carry one.
pub fn connect_from_dsn(
    dsn: &str,
    with_password: bool,
) -> Result<(ConnectSpec, SslSettings), String> {
    let mut c = ConnectSpec {
        host: "127.0.0.1".into(),
        port: 5432,
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

impl SourceSpec {
    /// Reads the credentials (files, environment): the follower's view of this source.
    pub fn load(&self) -> Result<corral_source::pg::follow::Source, String> {
        let at = format!("source {:?}", self.name);
        let (mut connect, ssl) = match &self.credentials {
            Credentials::DsnFile(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("{at}: dsn_file {:?}: cannot read it: {e}", path.display())
                })?;
                connect_from_dsn(text.trim(), true)
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
        Ok(corral_source::pg::follow::Source {
            name: self.name.clone(),
            connect,
            slot: self.slot.clone(),
            publication: self.publication.clone(),
            rules: self.rules.clone(),
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
