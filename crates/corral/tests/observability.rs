//! The operator's tools checked against a live replica: every metric the Grafana dashboard
//! (`deploy/grafana/corral.json`) and the Prometheus rules (`deploy/prometheus/`) query is
//! one a running corral exports, and promtool accepts the rules and passes their unit tests.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

#[path = "common/otlp.rs"]
mod otlp;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path)
}

const PROMQL_FUNCTIONS_AND_KEYWORDS: &[&str] = &[
    // Aggregation operators may be followed by `by (...)` rather than `(`.
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    // Binary and modifier keywords.
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression reads: identifiers that are not functions,
/// aggregations or keywords, outside label matchers `{...}`, ranges `[...]`, grouping label
/// lists, strings, numbers and Grafana `$variables`.
fn metric_names(expr: &str) -> Vec<String> {
    let c: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_string = |i: &mut usize| {
        let q = c[*i];
        *i += 1;
        while *i < c.len() && c[*i] != q {
            if c[*i] == '\\' {
                *i += 1;
            }
            *i += 1;
        }
        *i += 1;
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            skip_string(&mut i);
        } else if ch == '{' || ch == '[' {
            let close = if ch == '{' { '}' } else { ']' };
            while i < c.len() && c[i] != close {
                if c[i] == '"' || c[i] == '\'' || c[i] == '`' {
                    skip_string(&mut i);
                } else {
                    i += 1;
                }
            }
            i += 1;
        } else if ch == '$' {
            i += 1;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else if ch.is_ascii_digit() || ch == '.' {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let mut j = i;
            while j < c.len() && c[j].is_whitespace() {
                j += 1;
            }
            let call = j < c.len() && c[j] == '(';
            if GROUPING.contains(&word.as_str()) && call {
                while i < c.len() && c[i] != ')' {
                    i += 1;
                }
            } else if !call && !PROMQL_FUNCTIONS_AND_KEYWORDS.contains(&word.as_str()) {
                out.push(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn metric_names_are_read_from_promql() {
    let cases: &[(&str, &[&str])] = &[
        ("corral_peers", &["corral_peers"]),
        (
            r#"sum by (cache) (rate(corral_requests_total{instance=~"$instance",cache="hit"}[$__rate_interval]))"#,
            &["corral_requests_total"],
        ),
        (
            "histogram_quantile(0.99, sum by (instance, le) (rate(corral_event_propagation_seconds_bucket[10m]))) > 2",
            &["corral_event_propagation_seconds_bucket"],
        ),
        (
            "a_total / clamp_min(b_total, 1e-9) and on(instance) c offset 1d",
            &["a_total", "b_total", "c"],
        ),
        (
            "instance:corral_hit_ratio:rate5m < 0.5 * (x{a='}'} offset 5m)",
            &["instance:corral_hit_ratio:rate5m", "x"],
        ),
        ("max without (endpoint) (up) == bool 1", &["up"]),
    ];
    for (expr, want) in cases {
        assert_eq!(&metric_names(expr), want, "{expr}");
    }
}

/// Every PromQL expression in the dashboard: panel targets and the template variables'
/// queries (`label_values(metric, label)` reads `metric`).
fn dashboard_queries(v: &serde_json::Value, where_: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            let here = m
                .get("title")
                .and_then(|t| t.as_str())
                .map_or(where_.to_string(), str::to_string);
            for (k, child) in m {
                match (k.as_str(), child) {
                    ("expr", serde_json::Value::String(e)) => out.push((here.clone(), e.clone())),
                    ("definition", serde_json::Value::String(q)) => {
                        let q = q.trim();
                        let inner = q
                            .strip_prefix("label_values(")
                            .and_then(|r| r.rsplit_once(','))
                            .map(|(metric, _label)| metric.to_string())
                            .unwrap_or_else(|| {
                                panic!("template query {q:?}: not label_values(metric, label)")
                            });
                        out.push((format!("variable {here}"), inner));
                    }
                    _ => dashboard_queries(child, &here, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|c| dashboard_queries(c, where_, out)),
        _ => {}
    }
}

/// `(alert or record name, expr)` from a rules file, and the names `record:` defines. A
/// deliberately small reader for the two forms the file uses (`expr: …` on one line, or a
/// block scalar indented under it); the caller checks that it found one expr per rule.
fn rule_exprs(yaml: &str) -> (Vec<(String, String)>, BTreeSet<String>, usize) {
    let lines: Vec<&str> = yaml.lines().collect();
    let (mut exprs, mut recorded, mut rules) = (Vec::new(), BTreeSet::new(), 0);
    let mut name = String::new();
    for (n, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if let Some(v) = t
            .strip_prefix("- alert:")
            .or_else(|| t.strip_prefix("- record:"))
        {
            rules += 1;
            name = v.trim().to_string();
            if t.starts_with("- record:") {
                recorded.insert(name.clone());
            }
        } else if let Some(v) = t.strip_prefix("expr:") {
            let v = v.trim();
            let indent = line.len() - t.len();
            let e = if v.starts_with('|') || v.starts_with('>') {
                lines[n + 1..]
                    .iter()
                    .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                    .map(|l| l.trim())
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                v.trim_matches(|c| c == '\'' || c == '"').to_string()
            };
            exprs.push((name.clone(), e));
        }
    }
    (exprs, recorded, rules)
}

/// The sample names a replica exports right now (histograms as `_bucket`, `_sum`, `_count`).
async fn exported(c: &Corral) -> BTreeSet<String> {
    let text = c.admin_text("/metrics").await;
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy("prometheus"))
        .output()
        .expect("promtool is installed (scripts/test.sh installs Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// A replica with every subsystem the dashboard shows (two upstreams, one of them dead, the
/// Redis tier, a peer, a webhook, traces), exercised so that labelled series exist.
async fn busy_replica(origin: &Origin, redis: &Redis, otlp: &otlp::Receiver) -> (Corral, Corral) {
    let (port_a, port_b) = (replica_port(), replica_port());
    let admin = |i: u8, p: u16| format!("127.0.0.{i}:{p}");
    let dead = free_port("127.0.0.1");
    let config = |i: u8| {
        format!(
            r#"[[upstreams]]
name = "web"
discovery = {{ kind = "static", addresses = ["{origin}"] }}
health = {{ path = "/health", interval = "1s" }}
[[upstreams]]
name = "dead"
url = "http://127.0.0.1:{dead}"
[[routes]]
path_prefix = "/dead/"
upstream = "dead"
[[routes]]
path_prefix = "/"
upstream = "web"
[cache.l2]
kind = "redis"
url = "{redis}"
[cluster]
discovery = {{ kind = "static", addresses = ["{a}", "{b}"] }}
advertise = "{me}"
heartbeat = "300ms"
[[forward]]
url = "{origin_url}/invalidate"
body = '{{"key": "{{tag}}"}}'
[telemetry]
otlp_endpoint = "{otlp}"
export_interval = "100ms"
"#,
            origin = origin.addr,
            redis = redis.url(),
            a = admin(11, port_a),
            b = admin(12, port_a),
            me = admin(i, port_a),
            origin_url = origin.url(),
            otlp = otlp.url(),
        )
    };
    let env = [(
        "CORRAL_CLUSTER_SECRET",
        "observability-test-secret-0123456789",
    )];
    let start = |i: u8| {
        let config = config(i);
        async move {
            let proxy = format!("127.0.0.{i}:{port_b}").parse().unwrap();
            let admin = admin(i, port_a).parse().unwrap();
            Corral::start_on(proxy, admin, &config, &env).await
        }
    };
    let a = start(11).await;
    let b = start(12).await;
    otlp::prime_l2(&a).await;
    for path in ["/page", "/page", "/nostore", "/dead/x"] {
        let _ = a.get(path).await;
    }
    purge(&a, serde_json::json!({"tags": ["t1"]})).await;
    let delivered = eventually(Duration::from_secs(20), async || {
        a.metric("corral_peer_events_sent_total").await >= 1.0
            && a.metric("corral_telemetry_spans_exported_total").await >= 1.0
    })
    .await;
    assert!(
        delivered,
        "the purge reached the peer and spans were exported"
    );
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_metric_is_exported_by_a_live_replica() {
    let origin = Origin::start(|s| match s.uri.as_str() {
        "/nostore" => Reply::ok("private").header("cache-control", "no-store"),
        _ => Reply::ok("page")
            .header("cache-control", "max-age=60")
            .header("surrogate-key", "t1"),
    })
    .await;
    let redis = Redis::start().await;
    let otlp = otlp::Receiver::start().await;
    let (a, _b) = busy_replica(&origin, &redis, &otlp).await;
    let names = exported(&a).await;

    let dashboard: serde_json::Value =
        serde_json::from_slice(&std::fs::read(deploy("grafana/corral.json")).unwrap())
            .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, "dashboard", &mut queries);
    assert!(
        queries.len() > 30,
        "the dashboard has its queries: {}",
        queries.len()
    );

    let rules = std::fs::read_to_string(deploy("prometheus/corral-rules.yml")).unwrap();
    let (exprs, recorded, n_rules) = rule_exprs(&rules);
    assert_eq!(exprs.len(), n_rules, "one expr read per rule");
    assert!(n_rules >= 10, "the rules file has its rules");
    queries.extend(exprs.into_iter().map(|(n, e)| (format!("rule {n}"), e)));

    let mut missing = Vec::new();
    for (where_, expr) in &queries {
        let used = metric_names(expr);
        assert!(!used.is_empty(), "{where_}: no metric read from {expr:?}");
        for m in used {
            if !names.contains(&m) && !recorded.contains(&m) {
                missing.push(format!("{where_}: {m} (in {expr})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "queries use metrics the replica does not export:\n{}",
        missing.join("\n")
    );

    let checked = promtool(&["check", "rules", "corral-rules.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "corral-rules.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metric_check_catches_a_name_corral_does_not_export() {
    // The check above is only worth something if a wrong name fails it.
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let c = Corral::start(&config(&origin, "")).await;
    let names = exported(&c).await;
    assert!(names.contains("corral_requests_total"));
    assert!(names.contains("corral_request_duration_seconds_bucket"));
    for wrong in ["corral_request_total", "corral_request_duration_seconds"] {
        assert!(!names.contains(wrong), "{wrong} is not a sample name");
    }
    // Off by default: no exporter metrics without [telemetry].
    assert!(!names.iter().any(|n| n.starts_with("corral_telemetry_")));
}
