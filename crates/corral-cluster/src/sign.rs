//! Message signing: HMAC-SHA256 over the timestamp, method, path and body, with a replay
//! window. Verification is constant time in the signature.

use std::time::Duration;

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Header carrying the signing time, milliseconds since the Unix epoch.
pub const TIMESTAMP: &str = "x-corral-timestamp";
/// Header carrying the hex HMAC-SHA256.
pub const SIGNATURE: &str = "x-corral-signature";

/// The cluster's shared signing key. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(Box<[u8]>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// A key from its text (surrounding whitespace dropped); at least 16 bytes.
    pub fn new(text: &str) -> Result<Secret, String> {
        let t = text.trim();
        if t.len() < 16 {
            return Err(format!(
                "the cluster secret is {} bytes long; use at least 16",
                t.len()
            ));
        }
        Ok(Secret(t.as_bytes().into()))
    }

    fn mac(&self, ts: u64, method: &str, path: &str, body: &[u8]) -> [u8; 32] {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(ts.to_string().as_bytes());
        m.update(b"\n");
        m.update(method.as_bytes());
        m.update(b"\n");
        m.update(path.as_bytes());
        m.update(b"\n");
        m.update(body);
        m.finalize().into_bytes().into()
    }

    /// The signature headers for a request.
    pub fn sign(&self, method: &str, path: &str, body: &[u8]) -> [(&'static str, String); 2] {
        let ts = corral_core::invalidation::now_ms();
        [
            (TIMESTAMP, ts.to_string()),
            (SIGNATURE, hex::encode(self.mac(ts, method, path, body))),
        ]
    }

    /// Checks a request's signature and freshness.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        method: &str,
        path: &str,
        body: &[u8],
        window: Duration,
    ) -> Result<(), Rejection> {
        let ts: u64 = headers
            .get(TIMESTAMP)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or(Rejection::Unsigned)?;
        let sig = headers
            .get(SIGNATURE)
            .and_then(|v| hex::decode(v.as_bytes()).ok())
            .ok_or(Rejection::Unsigned)?;
        let expected = self.mac(ts, method, path, body);
        if !bool::from(sig.as_slice().ct_eq(&expected)) {
            return Err(Rejection::BadSignature);
        }
        let now = corral_core::invalidation::now_ms();
        if now.abs_diff(ts) > window.as_millis() as u64 {
            return Err(Rejection::Stale);
        }
        Ok(())
    }
}

/// Why a peer message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Unsigned,
    BadSignature,
    /// Signed outside the replay window.
    Stale,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned",
            Rejection::BadSignature => "bad signature",
            Rejection::Stale => "timestamp outside the replay window",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn sign_and_verify() {
        let s = Secret::new("0123456789abcdef-secret").unwrap();
        let w = Duration::from_secs(30);
        let h = headers(&s.sign("POST", "/e", b"body"));
        assert_eq!(s.verify(&h, "POST", "/e", b"body", w), Ok(()));
        assert_eq!(
            s.verify(&h, "POST", "/e", b"bodY", w),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            s.verify(&h, "GET", "/e", b"body", w),
            Err(Rejection::BadSignature)
        );
        let other = Secret::new("another-secret-of-length").unwrap();
        assert_eq!(
            other.verify(&h, "POST", "/e", b"body", w),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            s.verify(&HeaderMap::new(), "POST", "/e", b"body", w),
            Err(Rejection::Unsigned)
        );
        // An old but validly signed message is refused.
        let ts = corral_core::invalidation::now_ms() - 60_000;
        let mac = hex::encode(s.mac(ts, "POST", "/e", b"body"));
        let h = headers(&[(TIMESTAMP, ts.to_string()), (SIGNATURE, mac)]);
        assert_eq!(
            s.verify(&h, "POST", "/e", b"body", w),
            Err(Rejection::Stale)
        );
        assert!(Secret::new("short").is_err());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }
}
