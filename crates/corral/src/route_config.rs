//! Checks a `[[routes]]` entry for contradictions a type check cannot see, naming the route:
//! caching off yet tuned, an allow-list and an ignore-list for the same query, a default TTL
//! above the safety net, two routes with the same match (the second could never win), cache
//! methods other than GET and HEAD. Also resolves the table, after the upstreams it names.

use corral_core::CachePolicy;
use http::Method;
use serde::Deserialize;

use crate::config::{bad, ConfigError, RawCache, UpstreamSpec};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub upstream: String,
    #[serde(default)]
    pub cache: RawCache,
    /// Methods whose responses may be cached (a subset of GET, HEAD).
    pub cache_methods: Option<Vec<String>>,
}

/// A resolved route.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub host: Option<String>,
    pub path_prefix: String,
    pub upstream: String,
    pub policy: CachePolicy,
    pub cache_methods: Vec<http::Method>,
}

/// Resolves `[[routes]]` in order (each `cache` over `base`, each `upstream` one of
/// `upstreams`), then adds the `[upstream]` shortcut's catch-all route (when `shortcut`) unless
/// a route already matches every host at `/`.
pub(crate) fn resolve_all(
    routes: &[RawRoute],
    shortcut: bool,
    base: &CachePolicy,
    upstreams: &[UpstreamSpec],
) -> Result<Vec<RouteSpec>, ConfigError> {
    let mut out = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        let name = r.name.clone().unwrap_or_else(|| key.clone());
        if !upstreams.iter().any(|u| u.name == r.upstream) {
            let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
            return Err(bad(
                &format!("{key}.upstream"),
                &r.upstream,
                &format!("no such upstream; defined: {names:?}"),
            ));
        }
        let path_prefix = r.path_prefix.clone().unwrap_or_else(|| "/".into());
        if !path_prefix.starts_with('/') {
            return Err(bad(
                &format!("{key}.path_prefix"),
                &path_prefix,
                "must start with '/'",
            ));
        }
        if r.cache.max_size.is_some() || r.cache.l2.is_some() {
            return Err(bad(
                &format!("{key}.cache.max_size"),
                "...",
                "the store is shared: set max_size in [cache] only",
            ));
        }
        let policy = crate::config_cache::policy(&format!("{key}.cache"), &r.cache, base)?;
        let cache_methods = check(&key, &name, r, &policy, &out)?;
        out.push(RouteSpec {
            name,
            host: r.host.clone(),
            path_prefix,
            upstream: r.upstream.clone(),
            policy,
            cache_methods,
        });
    }
    // The [upstream] shortcut is the catch-all route.
    if let Some(default) = upstreams.iter().find(|u| u.name == "default") {
        if shortcut && !out.iter().any(|r| r.path_prefix == "/" && r.host.is_none()) {
            out.push(RouteSpec {
                name: "default".into(),
                host: None,
                path_prefix: "/".into(),
                upstream: default.name.clone(),
                policy: base.clone(),
                cache_methods: default_methods(),
            });
        }
    }
    Ok(out)
}

/// Checks route `key` (named `name`) against itself and the routes before it; returns the
/// methods whose responses it caches.
pub fn check(
    key: &str,
    name: &str,
    r: &RawRoute,
    policy: &CachePolicy,
    earlier: &[RouteSpec],
) -> Result<Vec<Method>, ConfigError> {
    let why = |what: &str| format!("route {name:?}: {what}");
    if let Some(h) = &r.host {
        if h.is_empty() || h.contains(['/', ' ']) {
            return Err(bad(
                &format!("{key}.host"),
                h,
                &why("expected a host name like \"api.example.com\""),
            ));
        }
    }
    let prefix = r.path_prefix.as_deref().unwrap_or("/");
    let host = r.host.as_deref().map(str::to_ascii_lowercase);
    if let Some(twin) = earlier
        .iter()
        .find(|o| o.path_prefix == prefix && o.host.as_deref().map(str::to_ascii_lowercase) == host)
    {
        return Err(bad(
            &format!("{key}.path_prefix"),
            prefix,
            &why(&format!(
                "route {:?} already matches the same host and path_prefix, so this one could never be chosen",
                twin.name
            )),
        ));
    }
    let c = &r.cache;
    if c.enabled == Some(false) {
        let tuned = [
            ("default_ttl", c.default_ttl.is_some()),
            ("max_ttl", c.max_ttl.is_some()),
            ("stale_while_revalidate", c.stale_while_revalidate.is_some()),
            ("stale_if_error", c.stale_if_error.is_some()),
            ("allow_query", c.allow_query.is_some()),
            ("ignore_query", c.ignore_query.is_some()),
            ("key_headers", c.key_headers.is_some()),
            ("strip_set_cookie", c.strip_set_cookie.is_some()),
            ("cacheable_statuses", c.cacheable_statuses.is_some()),
            (
                "cacheable_content_types",
                c.cacheable_content_types.is_some(),
            ),
            ("max_object_size", c.max_object_size.is_some()),
        ];
        if let Some((k, _)) = tuned.iter().find(|(_, set)| *set) {
            return Err(bad(
                &format!("{key}.cache.enabled"),
                false,
                &why(&format!(
                    "caching is off, so cache.{k} would never apply; remove one of them"
                )),
            ));
        }
        if r.cache_methods.is_some() {
            return Err(bad(
                &format!("{key}.cache_methods"),
                "[...]",
                &why("caching is off (cache.enabled = false), so cache_methods would never apply"),
            ));
        }
    }
    if c.allow_query.is_some() && c.ignore_query.is_some() {
        return Err(bad(
            &format!("{key}.cache.allow_query"),
            "[...]",
            &why("give allow_query (keep only these parameters) or ignore_query (drop these), not both"),
        ));
    }
    if let Some(ttl) = policy.default_ttl {
        if ttl > policy.max_ttl {
            return Err(bad(
                &format!("{key}.cache.default_ttl"),
                humantime::format_duration(ttl),
                &why(&format!(
                    "must not exceed max_ttl ({})",
                    humantime::format_duration(policy.max_ttl)
                )),
            ));
        }
    }
    if matches!(&c.cacheable_statuses, Some(s) if s.is_empty()) {
        return Err(bad(
            &format!("{key}.cache.cacheable_statuses"),
            "[]",
            &why("an empty list stores nothing; use cache.enabled = false"),
        ));
    }
    if policy.max_object_size == 0 {
        return Err(bad(
            &format!("{key}.cache.max_object_size"),
            0,
            &why("must be more than 0; use cache.enabled = false to store nothing"),
        ));
    }
    let methods = match &r.cache_methods {
        None => default_methods(),
        Some(list) if list.is_empty() => {
            return Err(bad(
                &format!("{key}.cache_methods"),
                "[]",
                &why("an empty list caches nothing; use cache.enabled = false"),
            ))
        }
        Some(list) => list
            .iter()
            .map(|m| match m.to_ascii_uppercase().as_str() {
                "GET" => Ok(Method::GET),
                "HEAD" => Ok(Method::HEAD),
                _ => Err(bad(
                    &format!("{key}.cache_methods"),
                    m,
                    &why("allowed: \"GET\", \"HEAD\" (other methods are never cached)"),
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(methods)
}

/// What `cache_methods` is when unset: the two methods whose responses are ever cached.
fn default_methods() -> Vec<Method> {
    vec![Method::GET, Method::HEAD]
}
