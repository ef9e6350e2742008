//! HTTP dates as a recipient must read them (RFC 9110 §5.6.7): the three forms —
//! IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the obsolete RFC 850 form
//! (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`) — with weekday,
//! month and `GMT` compared case-insensitively.
//!
//! The weekday is checked for being a weekday name, not for agreeing with the date: RFC 9110
//! gives it no meaning, and origins that get it wrong still mean the date they wrote. Anything
//! else (another zone, a missing field, a time like `25:00:00`, a day beyond the month) is not
//! a date; what an invalid date means is decided by its field (an invalid `Expires` is already
//! expired, an invalid `Last-Modified` gives no heuristic).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::HeaderMap;
use http::HeaderName;

const WEEKDAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Parses an HTTP-date in any of the three forms; `None` when it is none of them.
pub fn parse(value: &str) -> Option<SystemTime> {
    let v = value.trim_matches([' ', '\t']);
    imf_fixdate(v)
        .or_else(|| rfc850(v, SystemTime::now()))
        .or_else(|| asctime(v))
}

/// The date in a header that has exactly one valid field line; `None` for zero, several, or
/// an invalid one.
pub fn header(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    let mut lines = headers.get_all(name).iter();
    let (Some(v), None) = (lines.next(), lines.next()) else {
        return None;
    };
    parse(v.to_str().ok()?)
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`
fn imf_fixdate(v: &str) -> Option<SystemTime> {
    let (day_name, rest) = v.split_once(", ")?;
    short_weekday(day_name)?;
    let f: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, zone] = f[..] else {
        return None;
    };
    gmt(zone)?;
    (day.len() == 2 && year.len() == 4).then_some(())?;
    at(number(year)?, month_number(month)?, number(day)?, time)
}

/// `Sunday, 06-Nov-94 08:49:37 GMT`. A two-digit year more than 50 years in the future is
/// read as the most recent past year with those digits (RFC 9110 §5.6.7).
fn rfc850(v: &str, now: SystemTime) -> Option<SystemTime> {
    let (day_name, rest) = v.split_once(", ")?;
    WEEKDAYS
        .iter()
        .any(|d| d.eq_ignore_ascii_case(day_name))
        .then_some(())?;
    let f: Vec<&str> = rest.split(' ').collect();
    let [date, time, zone] = f[..] else {
        return None;
    };
    gmt(zone)?;
    let d: Vec<&str> = date.split('-').collect();
    let [day, month, yy] = d[..] else {
        return None;
    };
    (day.len() == 2 && yy.len() == 2).then_some(())?;
    let this_year = civil_year(now);
    let mut year = this_year / 100 * 100 + number(yy)?;
    if year > this_year + 50 {
        year -= 100;
    }
    at(year, month_number(month)?, number(day)?, time)
}

/// `Sun Nov  6 08:49:37 1994` (the day padded with a space, or two digits).
fn asctime(v: &str) -> Option<SystemTime> {
    let f: Vec<&str> = v.split(' ').filter(|s| !s.is_empty()).collect();
    let [day_name, month, day, time, year] = f[..] else {
        return None;
    };
    short_weekday(day_name)?;
    (year.len() == 4 && (1..=2).contains(&day.len())).then_some(())?;
    at(number(year)?, month_number(month)?, number(day)?, time)
}

fn short_weekday(s: &str) -> Option<()> {
    WEEKDAYS
        .iter()
        .any(|d| s.len() == 3 && d[..3].eq_ignore_ascii_case(s))
        .then_some(())
}

fn gmt(zone: &str) -> Option<()> {
    zone.eq_ignore_ascii_case("GMT").then_some(())
}

fn month_number(s: &str) -> Option<u64> {
    let i = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(s))?;
    Some(i as u64 + 1)
}

fn number(s: &str) -> Option<u64> {
    (!s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// The time `hh:mm:ss` of `year-month-day`, UTC; `None` when any part is out of range or the
/// date is before 1970.
fn at(year: u64, month: u64, day: u64, time: &str) -> Option<SystemTime> {
    let t: Vec<&str> = time.split(':').collect();
    let [h, m, s] = t[..] else {
        return None;
    };
    if [h, m, s].iter().any(|p| p.len() != 2) {
        return None;
    }
    let (h, m, s) = (number(h)?, number(m)?, number(s)?);
    // A leap second (:60) is read as the next second rather than refused.
    if h > 23 || m > 59 || s > 60 || year < 1970 || day == 0 || day > days_in(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + m * 60 + s))
}

fn is_leap(y: u64) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`, for years from 1970).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_year(t: SystemTime) -> u64 {
    let days = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400;
    // Walk from 1970: at most a few hundred steps, only for RFC 850 dates.
    let (mut year, mut left) = (1970, days);
    loop {
        let len = if is_leap(year) { 366 } else { 365 };
        if left < len {
            return year;
        }
        left -= len;
        year += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms_name_the_same_instant() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT"), Some(t));
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT"), Some(t));
        assert_eq!(parse("Sun Nov  6 08:49:37 1994"), Some(t));
    }

    #[test]
    fn agrees_with_httpdate_on_what_it_prints() {
        for secs in [0u64, 951_782_400, 1_700_000_000, 4_102_444_799] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(parse(&httpdate::fmt_http_date(t)), Some(t), "{secs}");
        }
    }

    #[test]
    fn rfc850_years_fall_within_fifty_years_ahead() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000); // 2023
        let year = |v: &str| rfc850(v, now).map(civil_year);
        assert_eq!(year("Monday, 01-Jan-73 00:00:00 GMT"), Some(2073));
        assert_eq!(year("Monday, 01-Jan-74 00:00:00 GMT"), Some(1974));
    }
}
