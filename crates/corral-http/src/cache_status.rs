//! The `Cache-Status` response header (RFC 9211), always naming `corral`.

use std::fmt::Write as _;
use std::time::Duration;

use http::HeaderValue;

/// Why the request went forward (RFC 9211 §2.2 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// Not cacheable by method or configuration: passed through.
    Bypass,
    /// Nothing stored for the URI.
    Miss,
    /// The URI is stored, but not for this request's `Vary`-selected headers.
    VaryMiss,
    /// A stored response was stale (or soft-purged) and was validated or refetched.
    Stale,
    /// The request's directives (`no-cache`, `max-age=0`, ...) forced the forward.
    Request,
    /// Part of the response was stored; the rest was asked for (RFC 9211 §2.2 `partial`).
    Partial,
}

impl Fwd {
    fn as_str(self) -> &'static str {
        match self {
            Fwd::Bypass => "bypass",
            Fwd::Miss => "miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Stale => "stale",
            Fwd::Request => "request",
            Fwd::Partial => "partial",
        }
    }
}

/// One `Cache-Status` entry, built up as the request walks the phases.
#[derive(Debug, Clone, Default)]
pub struct CacheStatus {
    pub hit: bool,
    pub fwd: Option<Fwd>,
    pub fwd_status: Option<u16>,
    pub stored: bool,
    pub collapsed: bool,
    pub ttl: Option<i64>,
    pub key: Option<String>,
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    pub fn hit(ttl: Duration) -> Self {
        CacheStatus {
            hit: true,
            ttl: Some(ttl.as_secs() as i64),
            ..Default::default()
        }
    }

    pub fn forward(fwd: Fwd) -> Self {
        CacheStatus {
            fwd: Some(fwd),
            ..Default::default()
        }
    }

    /// Renders the header value.
    pub fn to_header(&self) -> HeaderValue {
        let mut s = String::with_capacity(48);
        s.push_str("corral");
        if self.hit {
            s.push_str("; hit");
        }
        if let Some(f) = self.fwd {
            let _ = write!(s, "; fwd={}", f.as_str());
        }
        if let Some(st) = self.fwd_status {
            let _ = write!(s, "; fwd-status={st}");
        }
        if self.stored {
            s.push_str("; stored");
        }
        if self.collapsed {
            s.push_str("; collapsed");
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(s, "; ttl={ttl}");
        }
        if let Some(d) = self.detail {
            let _ = write!(s, "; detail={d}");
        }
        HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("corral"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        assert_eq!(
            CacheStatus::hit(Duration::from_secs(60)).to_header(),
            "corral; hit; ttl=60"
        );
        let mut c = CacheStatus::forward(Fwd::Miss);
        c.fwd_status = Some(200);
        c.stored = true;
        c.ttl = Some(30);
        assert_eq!(
            c.to_header(),
            "corral; fwd=miss; fwd-status=200; stored; ttl=30"
        );
        let mut c = CacheStatus::hit(Duration::ZERO);
        c.ttl = Some(-5);
        c.detail = Some("stale-while-revalidate");
        assert_eq!(
            c.to_header(),
            "corral; hit; ttl=-5; detail=stale-while-revalidate"
        );
    }
}
