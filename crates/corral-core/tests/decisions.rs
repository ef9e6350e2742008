//! Table-driven checks of the two decisions a shared cache makes about every response:
//! may it be stored (RFC 9111 §3), and for how long is it fresh (§4.2) — then, may a given
//! request reuse it at a given age (§4.2, §5.2.1, RFC 5861).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use corral_core::cache_control::{RequestDirectives, ResponseDirectives};
use corral_core::policy::freshness::{self, Freshness, Reuse, RevalidateReason, Timing};
use corral_core::policy::storability::{self, RequestFacts};
use corral_core::CachePolicy;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// A fixed "now" so Date/Expires arithmetic is exact.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn date(offset: i64) -> String {
    let t = if offset >= 0 {
        now() + Duration::from_secs(offset as u64)
    } else {
        now() - Duration::from_secs((-offset) as u64)
    };
    httpdate::fmt_http_date(t)
}

fn headers(pairs: &[(&str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn s(v: &str) -> String {
    v.to_string()
}

/// What we expect of a response: stored (with a lifetime in seconds) or not (with the reason).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Store(u64),
    Not(&'static str),
}
use Expect::*;

struct Case {
    name: &'static str,
    method: Method,
    req: Vec<(&'static str, String)>,
    status: u16,
    resp: Vec<(&'static str, String)>,
    policy: fn() -> CachePolicy,
    expect: Expect,
}

fn default_policy() -> CachePolicy {
    CachePolicy::default()
}
fn default_ttl_302_404_policy() -> CachePolicy {
    CachePolicy {
        default_ttl_statuses: vec![200, 302, 404],
        ..default_ttl_policy()
    }
}

fn default_ttl_policy() -> CachePolicy {
    CachePolicy {
        default_ttl: Some(Duration::from_secs(30)),
        ..Default::default()
    }
}
fn strip_cookie_policy() -> CachePolicy {
    CachePolicy {
        strip_set_cookie: true,
        ..Default::default()
    }
}
fn short_max_ttl() -> CachePolicy {
    CachePolicy {
        max_ttl: Duration::from_secs(60),
        ..Default::default()
    }
}
fn only_200() -> CachePolicy {
    CachePolicy {
        cacheable_statuses: Some(vec![200]),
        ..Default::default()
    }
}
fn json_only() -> CachePolicy {
    CachePolicy {
        cacheable_content_types: Some(vec!["application/json".into()]),
        ..Default::default()
    }
}
fn disabled() -> CachePolicy {
    CachePolicy {
        enabled: false,
        ..Default::default()
    }
}

fn case(
    name: &'static str,
    status: u16,
    resp: Vec<(&'static str, String)>,
    expect: Expect,
) -> Case {
    Case {
        name,
        method: Method::GET,
        req: vec![],
        status,
        resp,
        policy: default_policy,
        expect,
    }
}

fn with_dated(mut resp: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
    if !resp.iter().any(|(n, _)| *n == "date") {
        resp.push(("date", date(0)));
    }
    resp
}

fn storability_cases() -> Vec<Case> {
    let lm_100d = ("last-modified", date(-100 * 86400));
    let mut v = vec![
        // Explicit freshness and its precedence (§4.2.1).
        case(
            "max-age",
            200,
            vec![("cache-control", s("max-age=60"))],
            Store(60),
        ),
        case(
            "s-maxage beats max-age",
            200,
            vec![("cache-control", s("max-age=60, s-maxage=120"))],
            Store(120),
        ),
        case(
            "s-maxage zero",
            200,
            vec![("cache-control", s("s-maxage=0, max-age=60"))],
            Store(0),
        ),
        case(
            "max-age beats Expires",
            200,
            vec![("cache-control", s("max-age=10")), ("expires", date(1000))],
            Store(10),
        ),
        case(
            "Expires minus Date",
            200,
            vec![("expires", date(300))],
            Store(300),
        ),
        case(
            "Expires in the past",
            200,
            vec![("expires", date(-300))],
            Store(0),
        ),
        case(
            "Expires 0 is expired",
            200,
            vec![("expires", s("0"))],
            Store(0),
        ),
        case(
            "Expires garbage is expired",
            200,
            vec![("expires", s("next tuesday"))],
            Store(0),
        ),
        case(
            "two Expires lines are expired",
            200,
            vec![("expires", date(300)), ("expires", date(600))],
            Store(0),
        ),
        case(
            "Expires without Date uses receipt time",
            200,
            vec![("expires", date(120)), ("date", date(0))],
            Store(120),
        ),
        case(
            "max-age=0",
            200,
            vec![("cache-control", s("max-age=0"))],
            Store(0),
        ),
        case(
            "quoted max-age",
            200,
            vec![("cache-control", s("max-age=\"90\""))],
            Store(90),
        ),
        case(
            "uppercase directive",
            200,
            vec![("cache-control", s("MAX-AGE=70"))],
            Store(70),
        ),
        case(
            "whitespace around",
            200,
            vec![("cache-control", s("  public ,  max-age=45 "))],
            Store(45),
        ),
        case(
            "two Cache-Control lines",
            200,
            vec![
                ("cache-control", s("public")),
                ("cache-control", s("max-age=33")),
            ],
            Store(33),
        ),
        case(
            "duplicate max-age keeps first",
            200,
            vec![("cache-control", s("max-age=5, max-age=500"))],
            Store(5),
        ),
        case(
            "invalid max-age is stale",
            200,
            vec![("cache-control", s("max-age=a100"))],
            Store(0),
        ),
        case(
            "negative max-age is stale",
            200,
            vec![("cache-control", s("max-age=-5"))],
            Store(0),
        ),
        case(
            "fractional max-age is stale",
            200,
            vec![("cache-control", s("max-age=1.5"))],
            Store(0),
        ),
        case(
            "empty max-age is stale",
            200,
            vec![("cache-control", s("max-age="))],
            Store(0),
        ),
        case(
            "invalid max-age beats Expires",
            200,
            vec![("cache-control", s("max-age=x")), ("expires", date(500))],
            Store(0),
        ),
        case(
            "huge max-age capped by max_ttl",
            200,
            vec![("cache-control", s("max-age=99999999999"))],
            Store(86400),
        ),
        case(
            "unknown directives ignored",
            200,
            vec![("cache-control", s("foo=bar, max-age=20, baz"))],
            Store(20),
        ),
        case(
            "comma in quoted value",
            200,
            vec![("cache-control", s("no-cache=\"a, b\", max-age=25"))],
            Store(25),
        ),
        case(
            "immutable",
            200,
            vec![("cache-control", s("max-age=100, immutable"))],
            Store(100),
        ),
        case(
            "Age counts against max-age",
            200,
            vec![("cache-control", s("max-age=100")), ("age", s("30"))],
            Store(70),
        ),
        case(
            "Age beyond max-age",
            200,
            vec![("cache-control", s("max-age=100")), ("age", s("300"))],
            Store(0),
        ),
        case(
            "invalid Age makes it stale (see edges.rs)",
            200,
            vec![("cache-control", s("max-age=100")), ("age", s("abc"))],
            Store(0),
        ),
        case(
            "Date in the past adds apparent age",
            200,
            vec![("cache-control", s("max-age=100")), ("date", date(-40))],
            Store(60),
        ),
        case(
            "Date in the future: no negative age",
            200,
            vec![("cache-control", s("max-age=100")), ("date", date(40))],
            Store(100),
        ),
        // Heuristics (§4.2.2).
        case(
            "heuristic 10% of Last-Modified",
            200,
            vec![lm_100d.clone()],
            Store(86400),
        ),
        case(
            "heuristic small",
            200,
            vec![("last-modified", date(-1000))],
            Store(100),
        ),
        case(
            "no heuristic for an error: 404 (CPDoS)",
            404,
            vec![("last-modified", date(-1000))],
            Not("error-status"),
        ),
        case(
            "heuristic on 301",
            301,
            vec![("last-modified", date(-1000)), ("location", s("/x"))],
            Store(100),
        ),
        case(
            "no heuristic for an error: 410 (CPDoS)",
            410,
            vec![("last-modified", date(-1000))],
            Not("error-status"),
        ),
        case("no heuristic without Last-Modified", 200, vec![], Store(0)),
        case(
            "no heuristic for 302",
            302,
            vec![("last-modified", date(-1000))],
            Not("no-freshness"),
        ),
        case(
            "no heuristic for 500",
            500,
            vec![("last-modified", date(-1000))],
            Not("error-status"),
        ),
        case(
            "an error with explicit freshness is stored: 404",
            404,
            vec![("cache-control", s("max-age=20"))],
            Store(20),
        ),
        case(
            "an error with explicit freshness is stored: 503",
            503,
            vec![("expires", date(9))],
            Store(9),
        ),
        case(
            "a public error without a lifetime is not (CPDoS)",
            400,
            vec![("cache-control", s("public"))],
            Not("error-status"),
        ),
        case(
            "Last-Modified in the future: no heuristic",
            200,
            vec![("last-modified", date(1000))],
            Store(0),
        ),
        case(
            "explicit freshness beats heuristic",
            200,
            vec![("cache-control", s("max-age=7")), lm_100d.clone()],
            Store(7),
        ),
        case(
            "no-cache has no heuristic",
            200,
            vec![
                ("cache-control", s("no-cache")),
                ("last-modified", date(-1000)),
            ],
            Store(100),
        ),
        // Statuses (RFC 9110 §15.1).
        case(
            "302 with max-age",
            302,
            vec![("cache-control", s("max-age=60")), ("location", s("/y"))],
            Store(60),
        ),
        case(
            "500 with max-age",
            500,
            vec![("cache-control", s("max-age=5"))],
            Store(5),
        ),
        case(
            "307 with Expires",
            307,
            vec![("expires", date(50))],
            Store(50),
        ),
        case(
            "204 heuristic",
            204,
            vec![("last-modified", date(-100))],
            Store(10),
        ),
        case(
            "206 without a range request never",
            206,
            vec![
                ("cache-control", s("max-age=60")),
                ("content-range", s("bytes 0-1/10")),
            ],
            Not("partial"),
        ),
        case(
            "Content-Range never",
            200,
            vec![
                ("cache-control", s("max-age=60")),
                ("content-range", s("bytes 0-1/10")),
            ],
            Not("partial"),
        ),
        case(
            "304 never stored itself",
            304,
            vec![("cache-control", s("max-age=60"))],
            Not("status"),
        ),
        case("100 never", 100, vec![], Not("status")),
        case(
            "303 without freshness",
            303,
            vec![("location", s("/z"))],
            Not("no-freshness"),
        ),
        case(
            "public makes 302 storable",
            302,
            vec![("cache-control", s("public"))],
            Store(0),
        ),
        // no-store / private / must-understand.
        case(
            "no-store",
            200,
            vec![("cache-control", s("no-store, max-age=60"))],
            Not("no-store"),
        ),
        case(
            "NO-STORE uppercase",
            200,
            vec![("cache-control", s("NO-STORE"))],
            Not("no-store"),
        ),
        case(
            "no-store on a second line",
            200,
            vec![
                ("cache-control", s("max-age=60")),
                ("cache-control", s("no-store")),
            ],
            Not("no-store"),
        ),
        case(
            "must-understand overrides no-store",
            200,
            vec![("cache-control", s("no-store, must-understand, max-age=60"))],
            Store(60),
        ),
        case(
            "private",
            200,
            vec![("cache-control", s("private, max-age=60"))],
            Not("private"),
        ),
        case(
            "private with fields is storable",
            200,
            vec![
                ("cache-control", s("private=\"x-user\", max-age=60")),
                ("x-user", s("bob")),
            ],
            Store(60),
        ),
        case(
            "public and private: private wins",
            200,
            vec![("cache-control", s("public, private, max-age=60"))],
            Not("private"),
        ),
        // Set-Cookie, Vary.
        case(
            "Set-Cookie bypasses",
            200,
            vec![("cache-control", s("max-age=60")), ("set-cookie", s("a=1"))],
            Not("set-cookie"),
        ),
        case(
            "Vary star never",
            200,
            vec![("cache-control", s("max-age=60")), ("vary", s("*"))],
            Not("vary-star"),
        ),
        case(
            "Vary star in a list",
            200,
            vec![("cache-control", s("max-age=60")), ("vary", s("Accept, *"))],
            Not("vary-star"),
        ),
        case(
            "Vary header is fine",
            200,
            vec![
                ("cache-control", s("max-age=60")),
                ("vary", s("Accept-Encoding")),
            ],
            Store(60),
        ),
        // no-cache responses are stored for revalidation.
        case(
            "no-cache stored",
            200,
            vec![("cache-control", s("no-cache")), ("etag", s("\"e\""))],
            Store(0),
        ),
        case(
            "no-cache with max-age",
            200,
            vec![("cache-control", s("no-cache, max-age=60"))],
            Store(60),
        ),
    ];
    // Request-side rules.
    let mut add = |name: &'static str,
                   method: Method,
                   req: Vec<(&'static str, String)>,
                   resp: Vec<(&'static str, String)>,
                   expect: Expect| {
        v.push(Case {
            name,
            method,
            req,
            status: 200,
            resp,
            policy: default_policy,
            expect,
        });
    };
    add(
        "POST never stored",
        Method::POST,
        vec![],
        vec![("cache-control", s("max-age=60"))],
        Not("method"),
    );
    add(
        "HEAD not stored",
        Method::HEAD,
        vec![],
        vec![("cache-control", s("max-age=60"))],
        Not("method"),
    );
    add(
        "request no-store",
        Method::GET,
        vec![("cache-control", s("no-store"))],
        vec![("cache-control", s("max-age=60"))],
        Not("request-no-store"),
    );
    add(
        "Authorization without permission",
        Method::GET,
        vec![("authorization", s("Bearer x"))],
        vec![("cache-control", s("max-age=60"))],
        Not("authorization"),
    );
    add(
        "Authorization with public",
        Method::GET,
        vec![("authorization", s("Bearer x"))],
        vec![("cache-control", s("public, max-age=60"))],
        Store(60),
    );
    add(
        "Authorization with s-maxage",
        Method::GET,
        vec![("authorization", s("Bearer x"))],
        vec![("cache-control", s("s-maxage=30"))],
        Store(30),
    );
    add(
        "Authorization with must-revalidate",
        Method::GET,
        vec![("authorization", s("Bearer x"))],
        vec![("cache-control", s("must-revalidate, max-age=20"))],
        Store(20),
    );
    add(
        "request no-cache does not prevent storing",
        Method::GET,
        vec![("cache-control", s("no-cache"))],
        vec![("cache-control", s("max-age=60"))],
        Store(60),
    );
    add(
        "request max-age=0 does not prevent storing",
        Method::GET,
        vec![("cache-control", s("max-age=0"))],
        vec![("cache-control", s("max-age=60"))],
        Store(60),
    );
    add(
        "an unkeyed request header makes the fill unstorable",
        Method::GET,
        vec![("x-device", s("mobile"))],
        vec![("cache-control", s("max-age=60"))],
        Not("unkeyed-header"),
    );
    add(
        "an unkeyed request header the response varies on is keyed",
        Method::GET,
        vec![("x-device", s("mobile"))],
        vec![
            ("cache-control", s("max-age=60")),
            ("vary", s("Accept, X-Device")),
        ],
        Store(60),
    );
    add(
        "browser metadata is on the allow-list",
        Method::GET,
        vec![
            ("sec-fetch-mode", s("navigate")),
            ("user-agent", s("Mozilla/5.0")),
            ("accept-language", s("de")),
        ],
        vec![("cache-control", s("max-age=60"))],
        Store(60),
    );
    add(
        "Pragma in request does not prevent storing",
        Method::GET,
        vec![("pragma", s("no-cache"))],
        vec![("cache-control", s("max-age=60"))],
        Store(60),
    );
    // Policy switches.
    let mut pol = |name: &'static str,
                   policy: fn() -> CachePolicy,
                   status: u16,
                   resp: Vec<(&'static str, String)>,
                   expect: Expect| {
        v.push(Case {
            name,
            method: Method::GET,
            req: vec![],
            status,
            resp,
            policy,
            expect,
        });
    };
    pol(
        "default_ttl applies without explicit freshness",
        default_ttl_policy,
        200,
        vec![],
        Store(30),
    );
    pol(
        "default_ttl beats heuristics",
        default_ttl_policy,
        200,
        vec![("last-modified", date(-100_000))],
        Store(30),
    );
    pol(
        "default_ttl does not override max-age",
        default_ttl_policy,
        200,
        vec![("cache-control", s("max-age=5"))],
        Store(5),
    );
    pol(
        "default_ttl does not override Expires",
        default_ttl_policy,
        200,
        vec![("expires", date(7))],
        Store(7),
    );
    pol(
        "default_ttl skips statuses it does not list: 302",
        default_ttl_policy,
        302,
        vec![],
        Not("no-freshness"),
    );
    pol(
        "default_ttl never makes an error storable by default: 500 (CPDoS)",
        default_ttl_policy,
        500,
        vec![],
        Not("error-status"),
    );
    pol(
        "default_ttl never makes an error storable by default: 404 (CPDoS)",
        default_ttl_policy,
        404,
        vec![],
        Not("error-status"),
    );
    pol(
        "default_ttl_statuses lists 302",
        default_ttl_302_404_policy,
        302,
        vec![],
        Store(30),
    );
    pol(
        "default_ttl_statuses lists 404: the operator's choice",
        default_ttl_302_404_policy,
        404,
        vec![],
        Store(30),
    );
    pol(
        "strip_set_cookie stores",
        strip_cookie_policy,
        200,
        vec![("cache-control", s("max-age=60")), ("set-cookie", s("a=1"))],
        Store(60),
    );
    pol(
        "max_ttl caps max-age",
        short_max_ttl,
        200,
        vec![("cache-control", s("max-age=3600"))],
        Store(60),
    );
    pol(
        "max_ttl caps s-maxage",
        short_max_ttl,
        200,
        vec![("cache-control", s("s-maxage=3600"))],
        Store(60),
    );
    pol(
        "max_ttl keeps shorter lifetimes",
        short_max_ttl,
        200,
        vec![("cache-control", s("max-age=10"))],
        Store(10),
    );
    pol(
        "max_ttl counts from receipt, not origin age",
        short_max_ttl,
        200,
        vec![("cache-control", s("max-age=3600")), ("age", s("100"))],
        Store(60),
    );
    pol(
        "cacheable_statuses excludes 404",
        only_200,
        404,
        vec![("cache-control", s("max-age=60"))],
        Not("status"),
    );
    pol(
        "cacheable_statuses includes 200",
        only_200,
        200,
        vec![("cache-control", s("max-age=60"))],
        Store(60),
    );
    pol(
        "content type allow-list match",
        json_only,
        200,
        vec![
            ("cache-control", s("max-age=60")),
            ("content-type", s("application/json; charset=utf-8")),
        ],
        Store(60),
    );
    pol(
        "content type allow-list miss",
        json_only,
        200,
        vec![
            ("cache-control", s("max-age=60")),
            ("content-type", s("text/html")),
        ],
        Not("content-type"),
    );
    pol(
        "caching disabled",
        disabled,
        200,
        vec![("cache-control", s("max-age=60"))],
        Not("disabled"),
    );
    v
}

#[test]
fn storability_and_lifetime_table() {
    let cases = storability_cases();
    let mut failures = Vec::new();
    for c in &cases {
        let req = headers(&c.req);
        let resp = headers(&with_dated(c.resp.clone()));
        let rd = RequestDirectives::from_headers(&req);
        let cc = ResponseDirectives::from_headers(&resp);
        let policy = (c.policy)();
        let status = StatusCode::from_u16(c.status).unwrap();
        let facts = RequestFacts {
            method: &c.method,
            headers: &req,
            directives: &rd,
        };
        let got = match storability::check(&facts, status, &resp, &cc, &policy) {
            Err(reason) => Not(reason.as_str()),
            Ok(()) => {
                let timing = Timing::new(now(), now(), &resp);
                let f = Freshness::compute(status, &resp, &cc, &timing, &policy);
                Store(f.ttl(timing.initial_age).as_secs())
            }
        };
        if got != c.expect {
            failures.push(format!(
                "{}: expected {:?}, got {:?}",
                c.name, c.expect, got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Request headers of a table row.
type Req = Vec<(&'static str, String)>;

/// Reuse decisions: (name, response Cache-Control, age, request headers, soft-purged, expected).
#[test]
fn reuse_table() {
    use Reuse::*;
    let rev = |r| Revalidate(r);
    let cases: Vec<(&str, &str, u64, Req, bool, Reuse)> = vec![
        (
            "fresh",
            "max-age=60",
            10,
            vec![],
            false,
            Fresh {
                ttl: Duration::from_secs(50),
            },
        ),
        (
            "exactly expired",
            "max-age=60",
            60,
            vec![],
            false,
            rev(RevalidateReason::Stale),
        ),
        (
            "stale",
            "max-age=60",
            100,
            vec![],
            false,
            rev(RevalidateReason::Stale),
        ),
        (
            "no-cache response always validates",
            "no-cache, max-age=60",
            0,
            vec![],
            false,
            rev(RevalidateReason::NoCache),
        ),
        (
            "soft purge forces validation",
            "max-age=60",
            0,
            vec![],
            true,
            rev(RevalidateReason::Purged),
        ),
        (
            "request no-cache",
            "max-age=60",
            0,
            vec![("cache-control", s("no-cache"))],
            false,
            rev(RevalidateReason::Request),
        ),
        (
            "request Pragma no-cache",
            "max-age=60",
            0,
            vec![("pragma", s("no-cache"))],
            false,
            rev(RevalidateReason::Request),
        ),
        (
            "Pragma ignored with Cache-Control",
            "max-age=60",
            0,
            vec![("pragma", s("no-cache")), ("cache-control", s("max-stale"))],
            false,
            Fresh {
                ttl: Duration::from_secs(60),
            },
        ),
        (
            "request max-age=0",
            "max-age=60",
            1,
            vec![("cache-control", s("max-age=0"))],
            false,
            rev(RevalidateReason::Request),
        ),
        (
            "request max-age allows younger",
            "max-age=60",
            5,
            vec![("cache-control", s("max-age=10"))],
            false,
            Fresh {
                ttl: Duration::from_secs(55),
            },
        ),
        (
            "request max-age refuses older",
            "max-age=60",
            20,
            vec![("cache-control", s("max-age=10"))],
            false,
            rev(RevalidateReason::Request),
        ),
        (
            "min-fresh satisfied",
            "max-age=60",
            10,
            vec![("cache-control", s("min-fresh=20"))],
            false,
            Fresh {
                ttl: Duration::from_secs(50),
            },
        ),
        (
            "min-fresh unsatisfied",
            "max-age=60",
            50,
            vec![("cache-control", s("min-fresh=20"))],
            false,
            rev(RevalidateReason::Request),
        ),
        (
            "max-stale any",
            "max-age=60",
            1000,
            vec![("cache-control", s("max-stale"))],
            false,
            StaleAccepted,
        ),
        (
            "max-stale within",
            "max-age=60",
            70,
            vec![("cache-control", s("max-stale=20"))],
            false,
            StaleAccepted,
        ),
        (
            "max-stale beyond",
            "max-age=60",
            100,
            vec![("cache-control", s("max-stale=20"))],
            false,
            rev(RevalidateReason::Stale),
        ),
        (
            "max-stale vs must-revalidate",
            "max-age=60, must-revalidate",
            70,
            vec![("cache-control", s("max-stale"))],
            false,
            rev(RevalidateReason::Stale),
        ),
        (
            "max-stale vs proxy-revalidate",
            "max-age=60, proxy-revalidate",
            70,
            vec![("cache-control", s("max-stale"))],
            false,
            rev(RevalidateReason::Stale),
        ),
        (
            "max-stale vs s-maxage",
            "s-maxage=60",
            70,
            vec![("cache-control", s("max-stale"))],
            false,
            rev(RevalidateReason::Stale),
        ),
        (
            "max-stale vs no-cache",
            "no-cache",
            70,
            vec![("cache-control", s("max-stale"))],
            false,
            rev(RevalidateReason::NoCache),
        ),
        (
            "swr within",
            "max-age=60, stale-while-revalidate=30",
            70,
            vec![],
            false,
            StaleWhileRevalidate,
        ),
        (
            "swr beyond",
            "max-age=60, stale-while-revalidate=30",
            100,
            vec![],
            false,
            rev(RevalidateReason::Stale),
        ),
        (
            "swr vs must-revalidate",
            "max-age=60, stale-while-revalidate=30, must-revalidate",
            70,
            vec![],
            false,
            rev(RevalidateReason::Stale),
        ),
        (
            "swr not for a request max-age",
            "max-age=60, stale-while-revalidate=30",
            70,
            vec![("cache-control", s("max-age=100"))],
            false,
            rev(RevalidateReason::Stale),
        ),
        (
            "swr not when soft-purged",
            "max-age=60, stale-while-revalidate=30",
            10,
            vec![],
            true,
            rev(RevalidateReason::Purged),
        ),
        (
            "invalid swr means none",
            "max-age=60, stale-while-revalidate=x",
            70,
            vec![],
            false,
            rev(RevalidateReason::Stale),
        ),
        (
            "fresh despite swr",
            "max-age=60, stale-while-revalidate=30",
            10,
            vec![],
            false,
            Fresh {
                ttl: Duration::from_secs(50),
            },
        ),
        (
            "zero lifetime",
            "max-age=0",
            0,
            vec![],
            false,
            rev(RevalidateReason::Stale),
        ),
        (
            "only-if-cached does not change freshness",
            "max-age=60",
            10,
            vec![("cache-control", s("only-if-cached"))],
            false,
            Fresh {
                ttl: Duration::from_secs(50),
            },
        ),
    ];
    let policy = CachePolicy::default();
    let mut failures = Vec::new();
    for (name, cc, age, req, soft, expect) in &cases {
        let resp = headers(&[("cache-control", s(cc)), ("date", date(0))]);
        let rcc = ResponseDirectives::from_headers(&resp);
        let timing = Timing::new(now(), now(), &resp);
        let f = Freshness::compute(StatusCode::OK, &resp, &rcc, &timing, &policy);
        let rd = RequestDirectives::from_headers(&headers(req));
        let got = freshness::reuse(&f, Duration::from_secs(*age), &rd, *soft, true);
        if got != *expect {
            failures.push(format!("{name}: expected {expect:?}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// stale-if-error: (name, response Cache-Control, age, request headers, config default, allowed).
#[test]
fn stale_if_error_table() {
    let cases: Vec<(&str, &str, u64, Req, u64, bool)> = vec![
        (
            "within the response's window",
            "max-age=10, stale-if-error=60",
            30,
            vec![],
            0,
            true,
        ),
        (
            "beyond the response's window",
            "max-age=10, stale-if-error=60",
            100,
            vec![],
            0,
            false,
        ),
        ("no window", "max-age=10", 30, vec![], 0, false),
        ("configured default", "max-age=10", 30, vec![], 60, true),
        (
            "response window beats the default",
            "max-age=10, stale-if-error=5",
            30,
            vec![],
            60,
            false,
        ),
        (
            "request window widens",
            "max-age=10",
            30,
            vec![("cache-control", s("stale-if-error=60"))],
            0,
            true,
        ),
        (
            "must-revalidate forbids",
            "max-age=10, stale-if-error=60, must-revalidate",
            30,
            vec![],
            0,
            false,
        ),
        (
            "s-maxage forbids",
            "s-maxage=10, stale-if-error=60",
            30,
            vec![],
            0,
            false,
        ),
        (
            "no-cache forbids",
            "no-cache, stale-if-error=60",
            30,
            vec![],
            0,
            false,
        ),
        (
            "fresh is fine",
            "max-age=100, stale-if-error=60",
            30,
            vec![],
            0,
            true,
        ),
    ];
    for (name, cc, age, req, default, expect) in cases {
        let policy = CachePolicy {
            stale_if_error: Duration::from_secs(default),
            ..Default::default()
        };
        let resp = headers(&[("cache-control", s(cc)), ("date", date(0))]);
        let rcc = ResponseDirectives::from_headers(&resp);
        let timing = Timing::new(now(), now(), &resp);
        let f = Freshness::compute(StatusCode::OK, &resp, &rcc, &timing, &policy);
        let rd = RequestDirectives::from_headers(&headers(&req));
        assert_eq!(
            freshness::usable_on_error(&f, Duration::from_secs(age), &rd),
            expect,
            "{name}"
        );
    }
}
