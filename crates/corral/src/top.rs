//! `corral top --admin URL`: a terminal view of one replica, refreshed in place — the numbers
//! of the `/ui` dashboard, read from the same `GET /ui/state` document (what to show and how
//! it is computed is decided once, on the server). Plain ANSI; `q` quits.
//!
//! The token comes from `CORRAL_ADMIN_TOKEN`, never from the command line.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use corral_core::Mode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::admin_client::{causes, AdminConnector, AdminTlsArgs};

#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// The admin API of a running Corral.
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    admin: String,
    /// Time between refreshes, e.g. "1s", "500ms".
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Print one screen to standard output and exit (for scripts).
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    tls: AdminTlsArgs,
}

/// The most of an answer read (a state document is a few tens of kilobytes).
const MAX_ANSWER: usize = 4 << 20;

pub async fn run(args: TopArgs) -> ExitCode {
    if args.interval < Duration::from_millis(100) {
        eprintln!("corral top: --interval must be at least 100ms");
        return ExitCode::from(2);
    }
    let url = format!("{}/ui/state", args.admin.trim_end_matches('/'));
    if !url.starts_with("http://") && !url.starts_with("https://") {
        eprintln!(
            "corral top: --admin must be an http:// or https:// URL, got {:?}",
            args.admin
        );
        return ExitCode::from(2);
    }
    let connector = match args.tls.connector(&args.admin) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corral top: {e}");
            return ExitCode::from(2);
        }
    };
    let token = std::env::var("CORRAL_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty());
    let source = Source {
        url,
        token,
        client: Client::builder(TokioExecutor::new()).build(connector),
    };
    if args.once {
        return match source.fetch().await {
            Ok(doc) => {
                print!("{}", render(&doc, &args.admin, 200).join("\n"));
                println!();
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("corral top: {e}");
                ExitCode::FAILURE
            }
        };
    }
    watch(&source, &args).await;
    ExitCode::SUCCESS
}

/// Refreshes the screen until `q`, end of input or Ctrl-C.
async fn watch(source: &Source, args: &TopArgs) {
    let _screen = Screen::enter();
    let (quit_tx, mut quit) = tokio::sync::mpsc::channel::<()>(1);
    // Blocking reads of the terminal on a thread of their own; the process exits with the
    // runtime, so the thread need not be joined.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut byte = [0u8; 1];
        loop {
            match stdin.read(&mut byte) {
                Ok(1) if matches!(byte[0], b'q' | b'Q') => break,
                Ok(1) => continue,
                _ => break,
            }
        }
        let _ = quit_tx.blocking_send(());
    });
    let mut tick = tokio::time::interval(args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = quit.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
        }
        let lines = match source.fetch().await {
            Ok(doc) => render(&doc, &args.admin, terminal_width()),
            Err(e) => vec![
                format!("corral top · {}", args.admin),
                String::new(),
                e,
                "(retrying; q quits)".into(),
            ],
        };
        draw(&lines);
    }
}

/// Where the state document comes from.
struct Source {
    url: String,
    token: Option<String>,
    client: Client<AdminConnector, Empty<bytes::Bytes>>,
}

impl Source {
    async fn fetch(&self) -> Result<Value, String> {
        let mut req = http::Request::get(&self.url);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {}", t.trim()));
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| format!("bad --admin URL {:?}: {e}", self.url))?;
        let resp = tokio::time::timeout(Duration::from_secs(5), self.client.request(req))
            .await
            .map_err(|_| format!("{}: no answer within 5s", self.url))?
            .map_err(|e| format!("{}: {}", self.url, causes(&e)))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("{}: {e}", self.url))?
            .to_bytes();
        if status == http::StatusCode::UNAUTHORIZED {
            return Err(format!(
                "{} answered 401: set CORRAL_ADMIN_TOKEN to this replica's admin token",
                self.url
            ));
        }
        if !status.is_success() {
            return Err(format!(
                "{} answered {status}: {}",
                self.url,
                String::from_utf8_lossy(&body).trim()
            ));
        }
        serde_json::from_slice(&body)
            .map_err(|e| format!("{}: not a state document: {e}", self.url))
    }
}

/// The alternate screen with the cursor hidden and keys read one at a time (no echo), for as
/// long as it lives; the terminal is given back as it was on drop.
struct Screen {
    #[cfg(target_os = "linux")]
    saved: Option<libc::termios>,
}

impl Screen {
    fn enter() -> Screen {
        let screen = Screen {
            #[cfg(target_os = "linux")]
            saved: raw_keys(),
        };
        if std::io::stdout().is_terminal() {
            let _ = std::io::stdout().write_all(b"\x1b[?1049h\x1b[?25l");
        }
        screen
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        if std::io::stdout().is_terminal() {
            let mut out = std::io::stdout();
            let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
            let _ = out.flush();
        }
        #[cfg(target_os = "linux")]
        if let Some(t) = self.saved {
            // SAFETY: fd 0 with a termios read from it by `raw_keys`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

/// Turns off line buffering and echo on the terminal (Ctrl-C still interrupts); returns the
/// settings to restore, or none when standard input is not a terminal.
#[cfg(target_os = "linux")]
fn raw_keys() -> Option<libc::termios> {
    if !std::io::stdin().is_terminal() {
        return None;
    }
    // SAFETY: termios is plain data; tcgetattr fills it for fd 0, a terminal.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) != 0 {
            return None;
        }
        let saved = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        (libc::tcsetattr(0, libc::TCSANOW, &t) == 0).then_some(saved)
    }
}

fn terminal_width() -> usize {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: winsize is plain data; TIOCGWINSZ fills it for a terminal on fd 1.
        let mut w: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut w) } == 0 && w.ws_col > 0 {
            return usize::from(w.ws_col);
        }
    }
    100
}

/// Redraws in place: home, each line cleared to its end, the rest of the screen cleared.
fn draw(lines: &[String]) {
    let mut frame = String::from("\x1b[H");
    for l in lines {
        frame.push_str(l);
        frame.push_str("\x1b[K\r\n");
    }
    frame.push_str("\x1b[J");
    let mut out = std::io::stdout();
    let _ = out.write_all(frame.as_bytes());
    let _ = out.flush();
}

/// One screen of `doc`, each line at most `width` characters.
pub fn render(doc: &Value, admin: &str, width: usize) -> Vec<String> {
    let mut l = vec![format!(
        "corral top · {} · {admin} · {} · {} UTC   (q quits)",
        text(&doc["instance"]),
        text(&doc["version"]),
        clock(doc["now_ms"].as_u64().unwrap_or(0))
    )];
    l.push(String::new());
    l.extend(traffic(&doc["traffic"], width));
    l.push(store(&doc["store"]));
    l.push(match doc["redis"]["breaker"].as_str() {
        Some(b) => format!("redis    breaker {b}"),
        None => "redis    not configured".into(),
    });
    l.push(String::new());
    l.extend(peers(&doc["cluster"]));
    l.push(String::new());
    l.extend(upstreams(&doc["upstreams"]));
    l.push(String::new());
    l.extend(purges(&doc["purges"]));
    l.into_iter()
        .map(|s| s.chars().take(width).collect())
        .collect()
}

fn traffic(t: &Value, width: usize) -> Vec<String> {
    let m = &t["last_minute"];
    let mut l = vec![format!(
        "traffic  {} req/s   hit ratio {}   p50 {}   p99 {}   (last minute)",
        num(&m["rps"], 1),
        pct(&m["hit_ratio"]),
        ms(&m["p50_ms"]),
        ms(&m["p99_ms"]),
    )];
    let rps: Vec<f64> = t["points"]
        .as_array()
        .map(|p| p.iter().filter_map(|p| p["rps"].as_f64()).collect())
        .unwrap_or_default();
    l.push(format!(
        "req/s    {}",
        sparkline(&rps, width.saturating_sub(10))
    ));
    l
}

/// The series as ASCII levels, newest at the right.
fn sparkline(values: &[f64], width: usize) -> String {
    const LEVELS: &[u8] = b" .:-=+*#%@";
    let shown = &values[values.len().saturating_sub(width)..];
    let top = shown.iter().copied().fold(0.0, f64::max);
    shown
        .iter()
        .map(|v| {
            let i = if top > 0.0 {
                ((v / top) * (LEVELS.len() - 1) as f64).round() as usize
            } else {
                0
            };
            LEVELS[i.min(LEVELS.len() - 1)] as char
        })
        .collect()
}

fn store(s: &Value) -> String {
    let (bytes, max) = (s["bytes"].as_u64(), s["max_bytes"].as_u64());
    let share = match (bytes, max) {
        (Some(b), Some(m)) if m > 0 => format!(" ({:.1}%)", b as f64 * 100.0 / m as f64),
        _ => String::new(),
    };
    format!(
        "store    {} of {}{share}   entries {}   admissions refused {}",
        size(bytes),
        size(max),
        num(&s["entries"], 0),
        num(&s["admissions_refused"], 0)
    )
}

fn peers(c: &Value) -> Vec<String> {
    let list = c["peers"].as_array().cloned().unwrap_or_default();
    let mut l = vec![format!(
        "peers ({})   self {} last_seq {}{}",
        list.len(),
        text(&c["self"]["address"]),
        num(&c["self"]["last_seq"], 0),
        if c["cluster"].is_string() {
            "   (no cluster configured)"
        } else {
            ""
        }
    )];
    l.push(format!(
        "  {:<22} {:>7} {:>5} {:>6} {:<7} {}",
        "ADDRESS", "ACKED", "LAG", "QUEUE", "STATE", "LAST ERROR"
    ));
    for p in &list {
        let state = if p["silent"].as_bool() == Some(true) {
            "silent"
        } else {
            "ok"
        };
        l.push(format!(
            "  {:<22} {:>7} {:>5} {:>6} {:<7} {}",
            text(&p["address"]),
            num(&p["last_acknowledged_seq"], 0),
            num(&p["lag"], 0),
            num(&p["queue"], 0),
            state,
            p["last_error"].as_str().unwrap_or("-")
        ));
    }
    l
}

fn upstreams(u: &Value) -> Vec<String> {
    let mut l = vec![format!(
        "  {:<16} {:<24} {:<9} {:<8} {}",
        "UPSTREAM", "ENDPOINT", "HEALTH", "EJECTED", "IN FLIGHT"
    )];
    for up in u["upstreams"].as_array().into_iter().flatten() {
        let endpoints = up["endpoints"].as_array().cloned().unwrap_or_default();
        if endpoints.is_empty() {
            l.push(format!("  {:<16} (no endpoints)", text(&up["name"])));
        }
        for e in &endpoints {
            let health = if e["healthy"].as_bool() == Some(true) {
                "healthy"
            } else {
                "unhealthy"
            };
            l.push(format!(
                "  {:<16} {:<24} {:<9} {:<8} {}",
                text(&up["name"]),
                text(&e["address"]),
                health,
                if e["ejected"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                },
                num(&e["in_flight"], 0)
            ));
        }
    }
    l
}

fn purges(p: &Value) -> Vec<String> {
    let mut l = vec![format!(
        "  {:<9} {:<6} {:<13} {:<15} {:<22} {:>7}  {}",
        "APPLIED", "FROM", "CAUSE", "WHO", "WHAT", "ENTRIES", "FAN-OUT"
    )];
    for r in p.as_array().into_iter().flatten().take(12) {
        l.push(format!(
            "  {:<9} {:<6} {:<13} {:<15} {:<22} {:>7}  {}",
            clock(r["applied_ms"].as_u64().unwrap_or(0)),
            text(&r["source"]),
            text(&r["cause"]),
            text(&r["who"]),
            what(
                &r["what"],
                Mode::from_soft(r["soft"].as_bool() == Some(true))
            ),
            num(&r["purged"], 0),
            fanout(&r["fanout"])
        ));
    }
    l
}

/// What a purge covered, in a few words.
pub fn what(w: &Value, mode: Mode) -> String {
    let mut parts = Vec::new();
    if w["all"].as_bool() == Some(true) {
        parts.push("everything".to_string());
    }
    for (kind, key) in [("tag", "tags"), ("url", "urls"), ("prefix", "prefixes")] {
        for v in w[key].as_array().into_iter().flatten() {
            parts.push(format!("{kind} {}", text(v)));
        }
    }
    if let Some(n) = w["more"].as_u64().filter(|n| *n > 0) {
        parts.push(format!("+{n} more"));
    }
    let mode = match mode {
        Mode::Hard => "",
        Mode::Soft => " (soft)",
    };
    format!("{}{mode}", parts.join(", "))
}

fn fanout(f: &Value) -> String {
    match f["state"].as_str() {
        Some("acknowledged") if f["peers"].as_u64() == Some(0) => "no peers".into(),
        Some("acknowledged") => format!(
            "{n}/{n} acked in {} ms",
            num(&f["after_ms"], 0),
            n = num(&f["peers"], 0),
        ),
        Some("waiting") => "waiting for peers".into(),
        Some("pending") => format!(
            "pending: {}",
            f["pending"]
                .as_array()
                .map(|p| p.iter().map(text).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        ),
        Some("untracked") => "not tracked".into(),
        _ => "-".into(),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn num(v: &Value, decimals: usize) -> String {
    v.as_f64().map_or("-".into(), |n| format!("{n:.decimals$}"))
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |m| format!("{m:.2} ms"))
}

fn size(b: Option<u64>) -> String {
    let Some(b) = b else { return "-".into() };
    let units = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, unit) in units {
        if b >= unit {
            return format!("{:.1} {name}", b as f64 / unit as f64);
        }
    }
    format!("{b} B")
}

/// `HH:MM:SS` UTC of a Unix time in milliseconds.
fn clock(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_screen_shows_every_section_within_its_width() {
        let doc = json!({
            "instance": "a@127.0.0.11:9090", "version": "0.1.0",
            "traffic": {"points": [{"rps": 1.0}, {"rps": 4.0}],
                        "last_minute": {"rps": 2.5, "hit_ratio": 0.5, "p50_ms": 0.4, "p99_ms": 3.0}},
            "store": {"bytes": 1536, "max_bytes": 1 << 20, "entries": 3, "admissions_refused": 7},
            "redis": null,
            "cluster": {"self": {"address": "127.0.0.11:9090", "last_seq": 2},
                        "peers": [{"address": "127.0.0.12:9090", "last_acknowledged_seq": 2, "lag": 0,
                                   "queue": 0, "silent": false, "last_error": null}]},
            "upstreams": {"upstreams": [{"name": "default", "endpoints": [
                {"address": "127.0.0.1:3000", "healthy": true, "ejected": false, "in_flight": 0}]}]},
            "purges": [{"applied_ms": 3_600_000, "source": "local", "cause": "admin", "who": "127.0.0.1",
                        "what": {"tags": ["items"], "urls": [], "prefixes": [], "all": false, "more": 0},
                        "soft": false, "purged": 2,
                        "fanout": {"state": "acknowledged", "after_ms": 3, "peers": 1}}],
        });
        let screen = render(&doc, "http://127.0.0.11:9090", 100).join("\n");
        for expected in [
            "2.5 req/s",
            "hit ratio 50.0%",
            "p99 3.00 ms",
            "1.5 KiB of 1.0 MiB (0.1%)",
            "admissions refused 7",
            "redis    not configured",
            "127.0.0.12:9090",
            "127.0.0.1:3000",
            "healthy",
            "01:00:00",
            "tag items",
            "1/1 acked in 3 ms",
        ] {
            assert!(
                screen.contains(expected),
                "{expected:?} missing from:\n{screen}"
            );
        }
        assert!(screen.lines().all(|l| l.chars().count() <= 100));
    }

    #[test]
    fn a_sparkline_scales_to_the_highest_value() {
        assert_eq!(sparkline(&[0.0, 5.0, 10.0], 10), " +@");
        assert_eq!(sparkline(&[1.0, 2.0, 3.0], 2), "*@", "only the newest fit");
        assert_eq!(sparkline(&[0.0, 0.0], 5), "  ");
    }
}
