//! `[cache]` (and a route's `cache = { ... }` overrides) resolved into a `CachePolicy`, and the
//! tag headers into a `TagPolicy`. Every unset key takes the default of the type its value
//! ends up in (`CachePolicy`, `TagPolicy`, `StoreConfig`, `GatewayConfig`).

use std::time::Duration;

use corral_core::key::NamePattern;
use corral_core::store::StoreConfig;
use corral_core::tags::TagPolicy;
use corral_core::CachePolicy;
use corral_http::GatewayConfig;
use serde::Deserialize;

use crate::config::{bad, dur, parse_duration, parse_size, positive, size, ConfigError};

/// `[cache]`, and a route's `cache = { ... }` overrides (same keys; unset = inherited).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub enabled: Option<bool>,
    pub max_size: Option<String>,
    pub max_object_size: Option<String>,
    pub max_ttl: Option<String>,
    pub default_ttl: Option<String>,
    pub stale_while_revalidate: Option<String>,
    pub stale_if_error: Option<String>,
    pub keep: Option<String>,
    pub heuristic_fraction: Option<f64>,
    pub heuristic_max: Option<String>,
    pub ignore_query: Option<Vec<String>>,
    pub allow_query: Option<Vec<String>>,
    pub key_headers: Option<Vec<String>>,
    pub strip_set_cookie: Option<bool>,
    pub ignore_client_no_cache: Option<bool>,
    pub cacheable_statuses: Option<Vec<u16>>,
    pub cacheable_content_types: Option<Vec<String>>,
    pub max_variants: Option<usize>,
    pub default_ttl_statuses: Option<Vec<u16>>,
    pub unkeyed_headers: Option<Vec<String>>,
    pub forward_override_headers: Option<bool>,
    pub max_key_length: Option<usize>,
    pub targeted_fields: Option<Vec<String>>,
    pub expose_targeted_fields: Option<bool>,
    pub coalesce_timeout: Option<String>,
    pub hit_for_miss: Option<String>,
    pub tag_headers: Option<Vec<String>>,
    pub tag_headers_comma: Option<Vec<String>>,
    pub max_tags: Option<usize>,
    pub max_tag_length: Option<usize>,
    pub expose_tags: Option<bool>,
    pub l2: Option<toml::Table>,
}

/// The smallest store: below it, a few ordinary responses would evict each other.
const MIN_STORE_BYTES: u64 = 1 << 20;

/// `[cache]` resolved: the store's size, the policy routes inherit, the gateway-wide keys and
/// the L2 tier.
#[derive(Debug)]
pub(crate) struct CacheTable {
    pub max_size: u64,
    /// What every route starts from (the `[upstream]` shortcut's catch-all route uses it as is).
    pub base: CachePolicy,
    pub tags: TagPolicy,
    pub coalesce_timeout: Duration,
    pub hit_for_miss: Duration,
    pub l2: Option<crate::config_redis::L2Spec>,
}

/// Resolves `[cache]`.
pub(crate) fn resolve(c: &RawCache) -> Result<CacheTable, ConfigError> {
    let max_size = size(
        "cache.max_size",
        c.max_size.as_deref(),
        StoreConfig::default().max_bytes,
    )?;
    if max_size < MIN_STORE_BYTES {
        return Err(bad(
            "cache.max_size",
            c.max_size.as_deref().unwrap_or(""),
            "must be at least 1MiB",
        ));
    }
    let base = policy("cache", c, &CachePolicy::default())?;
    if base.max_object_size as u64 > max_size {
        return Err(bad(
            "cache.max_object_size",
            c.max_object_size.as_deref().unwrap_or(""),
            "must not exceed cache.max_size",
        ));
    }
    let tags = tag_policy(c)?;
    let gateway = GatewayConfig::default();
    let coalesce_timeout = dur(
        "cache.coalesce_timeout",
        c.coalesce_timeout.as_deref(),
        gateway.coalesce_timeout,
    )?;
    let hit_for_miss = dur(
        "cache.hit_for_miss",
        c.hit_for_miss.as_deref(),
        gateway.hit_for_miss,
    )?;
    let l2 = match &c.l2 {
        Some(t) => Some(crate::config_redis::l2("cache.l2", t)?),
        None => None,
    };
    Ok(CacheTable {
        max_size,
        base,
        tags,
        coalesce_timeout,
        hit_for_miss,
        l2,
    })
}

/// Resolves a `[cache]` table (or a route's overrides) over `base`.
pub(crate) fn policy(
    prefix: &str,
    c: &RawCache,
    base: &CachePolicy,
) -> Result<CachePolicy, ConfigError> {
    let k = |name: &str| format!("{prefix}.{name}");
    let d =
        |name: &str, v: &Option<String>, default: Duration| dur(&k(name), v.as_deref(), default);
    let mut p = base.clone();
    p.enabled = c.enabled.unwrap_or(base.enabled);
    if let Some(s) = &c.max_object_size {
        p.max_object_size = parse_size(&k("max_object_size"), s)? as usize;
    }
    p.max_ttl = d("max_ttl", &c.max_ttl, base.max_ttl)?;
    if p.max_ttl.is_zero() {
        return Err(bad(
            &k("max_ttl"),
            c.max_ttl.as_deref().unwrap_or(""),
            "must be more than 0s",
        ));
    }
    if let Some(s) = &c.default_ttl {
        let t = parse_duration(&k("default_ttl"), s)?;
        p.default_ttl = (!t.is_zero()).then_some(t);
    }
    p.stale_while_revalidate = d(
        "stale_while_revalidate",
        &c.stale_while_revalidate,
        base.stale_while_revalidate,
    )?;
    p.stale_if_error = d("stale_if_error", &c.stale_if_error, base.stale_if_error)?;
    p.keep = d("keep", &c.keep, base.keep)?;
    p.heuristic_max = d("heuristic_max", &c.heuristic_max, base.heuristic_max)?;
    if let Some(f) = c.heuristic_fraction {
        if !(0.0..=1.0).contains(&f) {
            return Err(bad(
                &k("heuristic_fraction"),
                f,
                "must be between 0.0 and 1.0",
            ));
        }
        p.heuristic_fraction = f;
    }
    if let Some(q) = &c.ignore_query {
        p.query.ignore = patterns(&k("ignore_query"), q)?;
    }
    if let Some(q) = &c.allow_query {
        p.query.allow = Some(patterns(&k("allow_query"), q)?);
    }
    if let Some(h) = &c.key_headers {
        p.key_headers = header_names(&k("key_headers"), h)?;
    }
    p.strip_set_cookie = c.strip_set_cookie.unwrap_or(base.strip_set_cookie);
    if let Some(ignore) = c.ignore_client_no_cache {
        p.honor_request_no_cache = !ignore;
    }
    if let Some(s) = &c.cacheable_statuses {
        if let Some(bad_status) = s
            .iter()
            .find(|s| !(200..600).contains(*s) || **s == 206 || **s == 304)
        {
            return Err(bad(
                &k("cacheable_statuses"),
                bad_status,
                "statuses must be final (200-599), not 206 or 304",
            ));
        }
        p.cacheable_statuses = Some(s.clone());
    }
    if let Some(t) = &c.cacheable_content_types {
        p.cacheable_content_types = Some(t.clone());
    }
    if let Some(v) = c.max_variants {
        p.max_variants = positive(&k("max_variants"), v)?;
    }
    targeted(prefix, c, &mut p)?;
    crate::config_ingress::policy(prefix, c, &mut p)?;
    Ok(p)
}

/// The most targeted fields a `[cache]` may list (RFC 9213 names one; a CDN chain, a few).
const MAX_TARGETED_FIELDS: usize = 8;

/// `targeted_fields` (RFC 9213, in order of precedence) and `expose_targeted_fields`.
fn targeted(prefix: &str, c: &RawCache, p: &mut CachePolicy) -> Result<(), ConfigError> {
    let k = |name: &str| format!("{prefix}.{name}");
    if let Some(list) = &c.targeted_fields {
        if list.len() > MAX_TARGETED_FIELDS {
            return Err(bad(
                &k("targeted_fields"),
                list.len(),
                &format!("at most {MAX_TARGETED_FIELDS} fields"),
            ));
        }
        let names = header_names(&k("targeted_fields"), list)?;
        for (i, n) in names.iter().enumerate() {
            let key = format!("{}[{i}]", k("targeted_fields"));
            if *n == http::header::CACHE_CONTROL || *n == http::header::EXPIRES {
                return Err(bad(
                    &key,
                    n,
                    "Cache-Control and Expires are what a targeted field replaces",
                ));
            }
            if names[..i].contains(n) {
                return Err(bad(&key, n, "listed twice"));
            }
        }
        p.targeted.fields = names;
    }
    if let Some(expose) = c.expose_targeted_fields {
        p.targeted.expose_own = expose;
    }
    Ok(())
}

pub(crate) fn tag_policy(c: &RawCache) -> Result<TagPolicy, ConfigError> {
    let mut t = TagPolicy::default();
    if let Some(h) = &c.tag_headers {
        t.space_separated = header_names("cache.tag_headers", h)?;
    }
    if let Some(h) = &c.tag_headers_comma {
        t.comma_separated = header_names("cache.tag_headers_comma", h)?;
    }
    if let Some(n) = c.max_tags {
        t.max_tags = positive("cache.max_tags", n)?;
    }
    if let Some(n) = c.max_tag_length {
        t.max_tag_len = positive("cache.max_tag_length", n)?;
    }
    t.expose = c.expose_tags.unwrap_or(t.expose);
    Ok(t)
}

pub(crate) fn patterns(key: &str, list: &[String]) -> Result<Vec<NamePattern>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            if p.is_empty() || p.contains(['&', '=']) {
                Err(bad(
                    &format!("{key}[{i}]"),
                    p,
                    "expected a parameter name, '*' as wildcard",
                ))
            } else {
                Ok(NamePattern::new(p.clone()))
            }
        })
        .collect()
}

/// A list of header names, each error naming `key[i]`.
pub(crate) fn header_names(
    key: &str,
    list: &[String],
) -> Result<Vec<http::HeaderName>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, n)| {
            http::HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| bad(&format!("{key}[{i}]"), n, "expected a header name"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_targeted(fields: &[&str], expose: Option<bool>) -> Result<CachePolicy, ConfigError> {
        let c = RawCache {
            targeted_fields: Some(fields.iter().map(|f| f.to_string()).collect()),
            expose_targeted_fields: expose,
            ..Default::default()
        };
        policy("cache", &c, &CachePolicy::default())
    }

    #[test]
    fn targeted_fields_are_header_names_in_order() {
        let p = with_targeted(&["CDN-Cache-Control", "Corral-Cache-Control"], Some(true)).unwrap();
        let names: Vec<&str> = p.targeted.fields.iter().map(|n| n.as_str()).collect();
        assert_eq!(names, ["cdn-cache-control", "corral-cache-control"]);
        assert!(p.targeted.expose_own);
        assert!(
            with_targeted(&[], None).unwrap().targeted.fields.is_empty(),
            "empty: off"
        );
        let defaults = policy("cache", &RawCache::default(), &CachePolicy::default()).unwrap();
        assert_eq!(
            defaults.targeted,
            corral_core::policy::targeted::TargetedFields::default()
        );
    }

    #[test]
    fn bad_targeted_fields_say_which() {
        for (fields, says) in [
            (&["bad name"][..], "cache.targeted_fields[0]"),
            (&["Cache-Control"], "replaces"),
            (&["a-cc", "A-CC"], "listed twice"),
            (&["a", "b", "c", "d", "e", "f", "g", "h", "i"], "at most 8"),
        ] {
            let err = with_targeted(fields, None).unwrap_err().to_string();
            assert!(err.contains(says), "{fields:?}: {err}");
        }
    }
}
