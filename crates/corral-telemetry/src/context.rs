//! W3C Trace Context: the `traceparent` header (<https://www.w3.org/TR/trace-context/>).
//!
//! `version-traceid-parentid-flags`, lowercase hex: `00-<32>-<16>-<2>`. A header that does not
//! parse is ignored (the request starts a trace of its own), as the specification asks; a
//! future version is read for its first four fields when it is at least as long as version 00.

use http::HeaderValue;

/// The header's name.
pub const TRACEPARENT: &str = "traceparent";

/// A 16-byte trace id (never all zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id (never all zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    pub fn random() -> TraceId {
        loop {
            let id: [u8; 16] = rand::random();
            if id != [0; 16] {
                return TraceId(id);
            }
        }
    }
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

impl SpanId {
    pub fn random() -> SpanId {
        loop {
            let id: [u8; 8] = rand::random();
            if id != [0; 8] {
                return SpanId(id);
            }
        }
    }
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

/// Where a span sits in its trace: the trace, the span itself, and whether it is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

impl SpanContext {
    /// Parses a `traceparent` value; `None` when it is not a valid one.
    pub fn parse(value: &[u8]) -> Option<SpanContext> {
        let s = std::str::from_utf8(value).ok()?;
        if s.len() < 55 || !s.is_char_boundary(55) {
            return None;
        }
        let (head, rest) = s.split_at(55);
        let version = &head[0..2];
        // Version 00 is exactly 55 characters; a later one may append `-...` fields.
        if version == "ff" || (version == "00" && !rest.is_empty()) {
            return None;
        }
        if !rest.is_empty() && !rest.starts_with('-') {
            return None;
        }
        let b = head.as_bytes();
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let lower_hex = |f: &str| f.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        let (trace, span, flags) = (&head[3..35], &head[36..52], &head[53..55]);
        if !(lower_hex(version) && lower_hex(trace) && lower_hex(span) && lower_hex(flags)) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(span, &mut span_id).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(SpanContext {
            trace_id: TraceId(trace_id),
            span_id: SpanId(span_id),
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` value naming this span as the parent.
    pub fn header(&self) -> HeaderValue {
        let v = format!(
            "00-{}-{}-{:02x}",
            self.trace_id.to_hex(),
            self.span_id.to_hex(),
            u8::from(self.sampled)
        );
        HeaderValue::from_str(&v).expect("hex and dashes are a valid header value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips() {
        let c = SpanContext::parse(VALID.as_bytes()).expect("valid");
        assert_eq!(c.trace_id.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id.to_hex(), "00f067aa0ba902b7");
        assert!(c.sampled);
        assert_eq!(c.header(), VALID);
    }

    #[test]
    fn what_parses_and_what_does_not() {
        let cases: &[(&str, bool)] = &[
            (VALID, true),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                true,
            ),
            // A later version may carry more fields.
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what",
                true,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                false,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                false,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                false,
            ),
            ("", false),
            (
                "00-ééééééééééééééééééééééééééééééé-00f067aa0ba902b7-01",
                false,
            ),
        ];
        for (value, ok) in cases {
            assert_eq!(
                SpanContext::parse(value.as_bytes()).is_some(),
                *ok,
                "traceparent {value:?} should {}parse",
                if *ok { "" } else { "not " }
            );
        }
    }

    #[test]
    fn the_sampled_flag_is_bit_zero() {
        let c = SpanContext::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02")
            .expect("valid");
        assert!(!c.sampled);
    }
}
