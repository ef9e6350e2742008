//! Following a MariaDB server's change stream: the row-based binlog, read as a replica that
//! names its position by GTID.
//!
//! [`packet`] frames the client protocol and reads fields with every length bounded; [`conn`]
//! logs in (`mysql_native_password`) and runs text queries; [`event`] decodes binlog events
//! and [`value`] the column values of row images; [`fold`] turns events into each committed
//! transaction's purges; [`follow`] registers as a replica, streams from the stored GTID
//! position and stores the new one (in `corral.source_positions` on the followed server)
//! only once a transaction's purges were acknowledged. No TLS yet.
//!
//! Tested against MariaDB 10.11. MySQL's binlog differs (its GTID events, its
//! `caching_sha2_password` default), so MySQL servers are not claimed to work.

pub mod conn;
pub mod event;
pub mod fold;
pub mod follow;
pub mod gtid;
pub mod packet;
pub mod value;

pub use crate::pg::{ConnectSpec, Password};

/// Why talking to the server failed. Never carries the password.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("connection: {0}")]
    Io(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("server said {message} (error {code}, SQLSTATE {state})")]
    Server {
        code: u16,
        state: String,
        message: String,
    },
    /// A server setting the follower needs is not set (a DBA can fix it while we retry).
    #[error("server settings: {0}")]
    Settings(String),
    /// The rules do not fit the database (a missing table or column): retrying cannot help
    /// until someone changes the configuration or the schema.
    #[error("{0}")]
    Rules(String),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

impl Error {
    pub(crate) fn protocol(what: impl Into<String>) -> Error {
        Error::Protocol(what.into())
    }
}

/// A string as a MariaDB SQL literal: quoted, with `\` and `'` escaped (the server's default
/// `sql_mode` treats backslash as an escape).
pub fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// An identifier in backquotes (a backquote inside doubled).
pub fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_identifiers_are_quoted() {
        assert_eq!(literal(r"it's a \ test"), r"'it\'s a \\ test'");
        assert_eq!(ident("we`ird"), "`we``ird`");
    }
}
