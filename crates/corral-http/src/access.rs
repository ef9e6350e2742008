//! Who may purge: a bearer token (compared in constant time) or a client address in an
//! allow-list.

use std::net::IpAddr;

use http::header::{HeaderMap, AUTHORIZATION};
use ipnet::IpNet;
use subtle::ConstantTimeEq;

/// A secret bearer token. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct Token(Box<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token from its text; surrounding whitespace (a file's trailing newline) is dropped.
    pub fn new(secret: &str) -> Option<Token> {
        let t = secret.trim();
        (!t.is_empty()).then(|| Token(t.as_bytes().into()))
    }

    /// True when `headers` carry `Authorization: Bearer <this token>`. Constant time in the
    /// token's content (the length is not secret).
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        let Some(v) = headers.get(AUTHORIZATION) else {
            return false;
        };
        let v = v.as_bytes();
        let Some(given) = v
            .strip_prefix(b"Bearer ")
            .or_else(|| v.strip_prefix(b"bearer "))
        else {
            return false;
        };
        bool::from(given.trim_ascii().ct_eq(&self.0))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The `PURGE` method's access rule.
#[derive(Debug, Clone, Default)]
pub struct PurgeAccess {
    pub allow: Vec<IpNet>,
    pub token: Option<Token>,
}

impl PurgeAccess {
    pub fn permits(&self, client: IpAddr, headers: &HeaderMap) -> bool {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
        self.allow.iter().any(|n| n.contains(&client))
            || self.token.as_ref().is_some_and(|t| t.authorizes(headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_checks() {
        let t = Token::new("s3cret\n").unwrap();
        let mut h = HeaderMap::new();
        assert!(!t.authorizes(&h));
        h.insert(AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(t.authorizes(&h));
        h.insert(AUTHORIZATION, "Bearer s3cre".parse().unwrap());
        assert!(!t.authorizes(&h));
        h.insert(AUTHORIZATION, "Basic s3cret".parse().unwrap());
        assert!(!t.authorizes(&h));
        assert!(Token::new("  ").is_none());
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    #[test]
    fn acl() {
        let a = PurgeAccess {
            allow: vec!["127.0.0.1/32".parse().unwrap()],
            token: None,
        };
        let h = HeaderMap::new();
        assert!(a.permits("127.0.0.1".parse().unwrap(), &h));
        assert!(a.permits("::ffff:127.0.0.1".parse().unwrap(), &h));
        assert!(!a.permits("127.0.0.2".parse().unwrap(), &h));
    }
}
