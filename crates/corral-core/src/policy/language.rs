//! Language variants (`Vary: Accept-Language`, RFC 9110 §12.5.4): equivalent preferences share
//! one stored variant, and a stored variant whose `Content-Language` the request's first
//! preference selects is reused even when the two requests spelled their preferences
//! differently.
//!
//! Normalisation (for the secondary key): ranges lowercased, whitespace dropped, `q` values
//! read as numbers (`q=0.50` = `q=0.5`, `q=1` = no weight), members ordered by weight (ties
//! keep the client's order, which servers read as preference), repeated ranges dropped.
//! A value that does not parse as `Accept-Language` is left to the generic normalisation.
//!
//! Selection (RFC 4647 §3.3.1 basic filtering): the request's most preferred range (highest
//! weight, first among equals, weight above 0) matches a language tag equal to it or
//! beginning with it and `-`; `*` matches any. Only the most preferred range counts: a lower
//! preference would need to know which other languages the origin has.

/// One `language-range [;q=w]` with the weight in thousandths.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Preference {
    range: String,
    weight: u16,
}

fn preferences(value: &str) -> Option<Vec<Preference>> {
    let mut out: Vec<Preference> = Vec::new();
    for member in value.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let mut parts = member.split(';');
        let range = parts.next()?.trim_matches([' ', '\t']).to_ascii_lowercase();
        if !is_range(&range) {
            return None;
        }
        let mut weight = 1000;
        for p in parts {
            let p = p.trim_matches([' ', '\t']);
            let q = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q="))?;
            weight = qvalue(q)?;
        }
        if !out.iter().any(|p| p.range == range) {
            out.push(Preference { range, weight });
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.weight));
    Some(out)
}

fn is_range(r: &str) -> bool {
    if r == "*" {
        return true;
    }
    let mut subtags = r.split('-');
    let first_ok = subtags
        .next()
        .is_some_and(|s| (1..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphabetic()));
    first_ok
        && subtags
            .all(|s| (1..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn qvalue(q: &str) -> Option<u16> {
    let (int, frac) = q.split_once('.').unwrap_or((q, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths: u16 = format!("{frac:0<3}").parse().ok()?;
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The normalised form of an `Accept-Language` value, or `None` when it does not parse.
pub fn normalize(value: &str) -> Option<String> {
    let prefs = preferences(value)?;
    let mut out = String::new();
    for p in prefs {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&p.range);
        if p.weight < 1000 {
            let q = format!("{:03}", p.weight);
            out.push_str(";q=0.");
            out.push_str(q.trim_end_matches('0'));
            if p.weight == 0 {
                out.push('0');
            }
        }
    }
    Some(out)
}

/// True when the request's most preferred language range (`accept_language`, as sent or
/// normalised) selects one of the tags of `content_language`.
pub fn selects(accept_language: &str, content_language: &str) -> bool {
    let Some(top) = preferences(accept_language)
        .and_then(|p| p.into_iter().next())
        .filter(|p| p.weight > 0)
    else {
        return false;
    };
    content_language.split(',').any(|tag| {
        let tag = tag.trim().to_ascii_lowercase();
        !tag.is_empty()
            && (top.range == "*"
                || tag == top.range
                || tag
                    .strip_prefix(&top.range)
                    .is_some_and(|rest| rest.starts_with('-')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equivalent_preferences_normalise_alike() {
        let n = |v| normalize(v).unwrap();
        assert_eq!(n("en-US, fr;q=0.5"), "en-us,fr;q=0.5");
        assert_eq!(n("fr;q=0.50,EN-us"), "en-us,fr;q=0.5");
        assert_eq!(n("en-us ; q=1.000 ,  fr ;q=0.5, en-us"), "en-us,fr;q=0.5");
        assert_eq!(n("de;q=0"), "de;q=0.0");
        assert_eq!(n("da, en-gb;q=0.8, en;q=0.7"), "da,en-gb;q=0.8,en;q=0.7");
        assert_eq!(normalize("en;q=2"), None);
        assert_eq!(normalize("not a range"), None);
    }

    #[test]
    fn the_first_preference_selects() {
        assert!(selects("fr-CH, fr;q=0.9", "fr-CH"));
        assert!(selects("fr", "fr-CH"));
        assert!(selects("de;q=0.5, fr", "fr"));
        assert!(!selects("fr-CH", "fr"));
        assert!(!selects("fr;q=0.5, de", "fr"));
        assert!(!selects("frx", "fr"));
        assert!(!selects("fr;q=0", "fr"));
        assert!(selects("*", "en"));
        assert!(!selects("en", ""));
    }
}
