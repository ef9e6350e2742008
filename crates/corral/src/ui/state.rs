//! The dashboard's numbers: a small ring of samples read from the metrics registry (the one
//! `/metrics` encodes, so the page and Prometheus never disagree), and the series and summary
//! derived from it.
//!
//! A sample every [`INTERVAL`] for [`KEPT`] samples: five minutes of history for a few
//! kilobytes. Taking one encodes the registry once (what a scrape costs); answering
//! `/ui/state` reads the ring and never encodes anything.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// Time between samples.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept: five minutes.
pub const KEPT: usize = 150;
/// The summary's window ("the last minute").
pub const SUMMARY_WINDOW: Duration = Duration::from_secs(60);

const LATENCY: &str = "corral_request_duration_seconds_bucket{le=\"";
const BREAKER: &str = "corral_redis_breaker_state";

/// The metric values one sample reads, parsed from the registry's text encoding.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    series: HashMap<String, f64>,
}

impl Scrape {
    /// Encodes `registry` and parses every sample line (`name{labels} value`).
    pub fn of(registry: &Registry) -> Scrape {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
            return Scrape::default();
        }
        Scrape::parse(&text)
    }

    fn parse(text: &str) -> Scrape {
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect();
        Scrape { series }
    }

    /// One series' value (`name{labels}` exactly as encoded).
    pub fn get(&self, series: &str) -> Option<f64> {
        self.series.get(series).copied()
    }

    /// Requests answered with `cache` outcome.
    fn requests(&self, cache: &str) -> f64 {
        self.get(&format!("corral_requests_total{{cache=\"{cache}\"}}"))
            .unwrap_or(0.0)
    }

    /// The latency histogram's cumulative buckets, by upper bound (`+Inf` last).
    fn latency_buckets(&self) -> Vec<(f64, f64)> {
        let mut b: Vec<(f64, f64)> = self
            .series
            .iter()
            .filter_map(|(k, v)| {
                let le = k.strip_prefix(LATENCY)?.strip_suffix("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, *v))
            })
            .collect();
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        b
    }
}

/// What the dashboard derives its series from.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    at_ms: u64,
    /// Answered from the cache: hit, stale.
    served_from_cache: f64,
    /// Every answered request: hit, stale, miss, revalidated, bypass.
    requests: f64,
    latency: Vec<(f64, f64)>,
}

impl Sample {
    fn of(scrape: &Scrape) -> Sample {
        let cached = scrape.requests("hit") + scrape.requests("stale");
        let other = ["miss", "revalidated", "bypass"]
            .iter()
            .map(|c| scrape.requests(c))
            .sum::<f64>();
        Sample {
            at: Instant::now(),
            at_ms: corral_core::invalidation::now_ms(),
            served_from_cache: cached,
            requests: cached + other,
            latency: scrape.latency_buckets(),
        }
    }
}

/// Traffic between two samples.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// End of the interval, milliseconds since the Unix epoch.
    pub t_ms: u64,
    /// Seconds the interval spans.
    pub seconds: f64,
    pub requests: f64,
    pub rps: f64,
    /// Share of requests answered from the cache (hit or stale); none without requests.
    pub hit_ratio: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Point {
    fn between(a: &Sample, b: &Sample) -> Point {
        let seconds = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
        let requests = (b.requests - a.requests).max(0.0);
        let cached = (b.served_from_cache - a.served_from_cache).max(0.0);
        let window: Vec<(f64, f64)> = b
            .latency
            .iter()
            .map(|&(le, n)| {
                let before = a.latency.iter().find(|x| x.0 == le).map_or(0.0, |x| x.1);
                (le, (n - before).max(0.0))
            })
            .collect();
        Point {
            t_ms: b.at_ms,
            seconds,
            requests,
            rps: requests / seconds,
            hit_ratio: (requests > 0.0).then(|| cached / requests),
            p50_ms: quantile(&window, 0.5).map(|s| s * 1000.0),
            p99_ms: quantile(&window, 0.99).map(|s| s * 1000.0),
        }
    }
}

/// The `q` quantile of cumulative buckets, interpolated linearly inside the bucket it falls
/// in (as Prometheus' `histogram_quantile`); the last finite bound when it falls in `+Inf`.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let share = if n > lower.1 {
                (rank - lower.1) / (n - lower.1)
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * share);
        }
        lower = (le, n);
    }
    Some(lower.0)
}

/// The ring of samples.
#[derive(Default)]
pub struct Samples {
    ring: Mutex<VecDeque<Sample>>,
    /// The newest scrape, for the values read as they are now (breaker state).
    latest: Mutex<Scrape>,
}

/// The dashboard's traffic section.
#[derive(Debug, Clone, Serialize)]
pub struct Traffic {
    pub interval_s: u64,
    /// How many points a full ring gives (the charts' width).
    pub capacity: usize,
    /// Oldest first.
    pub points: Vec<Point>,
    /// Over the last minute (or since start, when younger).
    pub last_minute: Option<Point>,
}

impl Samples {
    /// Takes a sample of `registry` now.
    pub fn take(&self, registry: &Registry) {
        let scrape = Scrape::of(registry);
        let sample = Sample::of(&scrape);
        *self.latest.lock() = scrape;
        let mut ring = self.ring.lock();
        if ring.len() >= KEPT {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    pub fn traffic(&self) -> Traffic {
        let ring = self.ring.lock();
        let points = ring
            .iter()
            .zip(ring.iter().skip(1))
            .map(|(a, b)| Point::between(a, b))
            .collect();
        let last_minute = ring.back().map(|newest| {
            let from = ring
                .iter()
                .find(|s| newest.at.duration_since(s.at) <= SUMMARY_WINDOW)
                .unwrap_or(newest);
            Point::between(from, newest)
        });
        Traffic {
            interval_s: INTERVAL.as_secs(),
            capacity: KEPT - 1,
            points,
            last_minute: last_minute.filter(|p| p.seconds > 1e-3),
        }
    }

    /// The Redis tier's breaker as the registry says now: none without a tier.
    pub fn breaker(&self) -> Option<&'static str> {
        let state = self.latest.lock().get(BREAKER)?;
        Some(match state as i64 {
            0 => "closed",
            1 => "open",
            _ => "half-open",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        // 100 requests: 50 under 1 ms, 40 more under 2 ms, 10 more under 4 ms.
        let b = [
            (0.001, 50.0),
            (0.002, 90.0),
            (0.004, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(quantile(&b, 0.5), Some(0.001));
        let p99 = quantile(&b, 0.99).unwrap();
        assert!((p99 - 0.0038).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(&[(0.001, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        // Beyond the last finite bound: that bound, not infinity.
        assert_eq!(
            quantile(&[(0.001, 0.0), (f64::INFINITY, 5.0)], 0.5),
            Some(0.001)
        );
    }

    #[test]
    fn a_point_reads_the_difference_between_two_scrapes() {
        let text = |hits: u32, misses: u32, fast: u32, slow: u32| {
            format!(
                "corral_requests_total{{cache=\"hit\"}} {hits}\n\
                 corral_requests_total{{cache=\"miss\"}} {misses}\n\
                 {LATENCY}0.001\"}} {fast}\n\
                 {LATENCY}0.1\"}} {}\n\
                 {LATENCY}+Inf\"}} {}\n",
                fast + slow,
                fast + slow
            )
        };
        let a = Sample::of(&Scrape::parse(&text(10, 10, 20, 0)));
        let mut b = Sample::of(&Scrape::parse(&text(40, 20, 50, 10)));
        b.at = a.at + Duration::from_secs(2);
        let p = Point::between(&a, &b);
        assert_eq!(p.requests, 40.0);
        assert_eq!(p.rps, 20.0);
        assert_eq!(p.hit_ratio, Some(0.75));
        assert!(p.p50_ms.unwrap() <= 1.0, "{p:?}");
        assert!(p.p99_ms.unwrap() > 1.0, "{p:?}");
    }
}
