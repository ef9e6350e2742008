//! HTTP dates as four bytes: `Date`, `Last-Modified` and `Expires` take 29 bytes each as text
//! and 4 as seconds since the epoch. Only dates that print back byte for byte are stored as
//! numbers (IMF-fixdate between 1970 and 2106); anything else stays text, so a replayed
//! response is exactly what the origin sent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// The IMF-fixdate length: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(super) const LEN: usize = 29;

/// The seconds `value` names, if it is an IMF-fixdate that [`format`] reproduces exactly.
pub(super) fn parse_exact(value: &[u8]) -> Option<u32> {
    if value.len() != LEN {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    let t = httpdate::parse_http_date(text).ok()?;
    let secs = u32::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()?;
    (format(secs) == *value).then_some(secs)
}

/// `secs` since the epoch as an IMF-fixdate (RFC 9110 §5.6.7).
pub(super) fn format(secs: u32) -> [u8; LEN] {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil(days);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    two(&mut out[5..7], day);
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    two(&mut out[12..14], year / 100);
    two(&mut out[14..16], year % 100);
    two(&mut out[17..19], rem / 3600);
    two(&mut out[20..22], rem / 60 % 60);
    two(&mut out[23..25], rem % 60);
    out
}

fn two(out: &mut [u8], n: u32) {
    out[0] = b'0' + (n / 10) as u8;
    out[1] = b'0' + (n % 10) as u8;
}

/// Year, month (1–12) and day (1–31) of a day count since 1970-01-01, in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil(days: u32) -> (u32, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u32::from(month <= 2);
    (year, month, day)
}

/// `secs` since the epoch as a time, for tests and callers that want one.
#[allow(dead_code)]
pub(super) fn time(secs: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_httpdate() {
        for secs in [
            0,
            1,
            59,
            86_399,
            86_400,
            784_111_777,
            951_782_400,
            4_102_444_800,
            u32::MAX,
        ] {
            let ours = format(secs);
            let theirs = httpdate::fmt_http_date(time(secs));
            assert_eq!(std::str::from_utf8(&ours).unwrap(), theirs, "{secs}");
            assert_eq!(parse_exact(&ours), Some(secs));
        }
    }

    #[test]
    fn other_forms_stay_text() {
        for v in [
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "sun, 06 Nov 1994 08:49:37 GMT",
            "Mon, 06 Nov 1994 08:49:37 GMT", // wrong weekday: printing it back would change it
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "",
            "0",
        ] {
            assert_eq!(parse_exact(v.as_bytes()), None, "{v}");
        }
    }

    proptest::proptest! {
        #[test]
        fn every_second_round_trips(secs: u32) {
            let ours = format(secs);
            proptest::prop_assert_eq!(std::str::from_utf8(&ours).unwrap(), httpdate::fmt_http_date(time(secs)));
            proptest::prop_assert_eq!(parse_exact(&ours), Some(secs));
        }
    }
}
