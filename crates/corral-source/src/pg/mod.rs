//! Following a PostgreSQL database's change stream: logical replication with `pgoutput`.
//!
//! [`conn`] speaks the wire protocol (startup, authentication, simple queries), [`follow`]
//! prepares the publication and the slot and streams from it, reporting back only the
//! position whose purges were acknowledged. [`tls`] switches the session to TLS when the
//! source asks for it (`sslmode` `require`, `verify-ca` or `verify-full`: always verified).

pub mod auth;
pub mod conn;
pub mod follow;
pub mod tls;
pub mod wire;

use std::fmt;

/// Why talking to the database failed. Never carries the password.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PgError {
    #[error("connection: {0}")]
    Io(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("server said {message} (SQLSTATE {code})")]
    Server { code: String, message: String },
    /// The rules do not fit the database (a missing table or column): retrying cannot help
    /// until someone changes the configuration or the schema.
    #[error("{0}")]
    Rules(String),
}

impl From<std::io::Error> for PgError {
    fn from(e: std::io::Error) -> Self {
        PgError::Io(e.to_string())
    }
}

/// A password: shown as `***` by `Debug`, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(text: &str) -> Password {
        Password(text.trim_end_matches(['\r', '\n']).to_owned())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where and as whom to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectSpec {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    pub password: Option<Password>,
    /// TLS to the server (`None`: in clear).
    pub tls: Option<crate::tls::ClientTls>,
}

impl ConnectSpec {
    fn password_or_fail(&self) -> Result<&str, PgError> {
        self.password.as_ref().map(Password::expose).ok_or_else(|| {
            PgError::Auth("the server asks for a password and none is configured".into())
        })
    }
}

/// The `key=value` pairs of a libpq connection string (values may be single-quoted, with
/// `\'` and `\\` escapes). Unknown keys are the caller's to judge.
pub fn parse_dsn(dsn: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = dsn.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("{key:?} has no '=value'"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("the value of {key:?} has no closing quote")),
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())));
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_pairs_with_quotes_and_spaces() {
        let p = parse_dsn(" host=127.0.0.1 port = 5432 dbname='my db' password='it\\'s' ").unwrap();
        let want = [
            ("host", "127.0.0.1"),
            ("port", "5432"),
            ("dbname", "my db"),
            ("password", "it's"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(p, want);
        assert!(parse_dsn("host").is_err());
        assert!(parse_dsn("host='x").is_err());
    }

    #[test]
    fn a_password_never_shows_in_debug() {
        let spec = ConnectSpec {
            host: "h".into(),
            port: 1,
            user: "u".into(),
            database: "d".into(),
            password: Some(Password::new("hunter2\n")),
            tls: None,
        };
        assert!(!format!("{spec:?}").contains("hunter2"));
        assert_eq!(spec.password.unwrap().expose(), "hunter2");
    }
}
