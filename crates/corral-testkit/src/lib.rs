//! Test support shared by Corral's crates and examples (a dev-dependency only): the processes
//! process-level tests run against — a scripted [`origin`], [`redis`] servers and clusters, a
//! [`dnsmasq`] DNS server, a throwaway [`postgres`] and [`mariadb`], a test CA ([`tls`]) —
//! loopback ports for them, and [`eventually`], the one wait for an observable state
//! ([`wait_for_process_state`] is one: a signalled process stopped or running again).
//!
//! Tests start real processes (`corral`, `redis-server`, the booking service) that bind the
//! ports a test chose for them. A port handed out by binding `:0` comes from the kernel's
//! ephemeral range, the same range another test's client takes its source ports from; between
//! the choice and the child's bind, such a client once took a replica's port. Ports here come
//! from just below that range instead, at random, and are checked free when chosen.

pub mod dnsmasq;
pub mod mariadb;
pub mod origin;
pub mod postgres;
pub mod redis;
pub mod tls;

use std::hash::{BuildHasher, RandomState};

/// The replica addresses tests run clusters on: 127.0.0.11 to 127.0.0.19.
pub fn replica_ips() -> Vec<String> {
    (11..20).map(|i| format!("127.0.0.{i}")).collect()
}

/// A port free on `ip`, for a server this test or its child is about to bind.
pub fn free_port(ip: &str) -> u16 {
    quiet_port(&[ip.to_string()])
}

/// A port free on every replica address at once. Replicas share one port on different
/// addresses; a port free on .11 alone may be taken on .13 by another test's replica, which
/// would then answer in this test's place.
pub fn replica_port() -> u16 {
    quiet_port(&replica_ips())
}

/// A port below the kernel's ephemeral range, chosen at random, free on every one of `ips`
/// right now.
pub fn quiet_port(ips: &[String]) -> u16 {
    quiet_port_below(0, ips)
}

/// As [`quiet_port`], a port that leaves `gap` more ports below the ephemeral range: the
/// port a server derives from its own (`port + gap`, as a Redis Cluster node's bus) stays
/// out of that range too.
pub fn quiet_port_below(gap: u16, ips: &[String]) -> u16 {
    let low = ephemeral_low();
    let (from, span) = if low > gap + 12_000 {
        (low - gap - 10_000, 10_000)
    } else {
        (40_000, u64::from(20_000 - gap.min(15_000)))
    };
    loop {
        let r = RandomState::new().hash_one(std::time::Instant::now());
        let port = from + (r % span) as u16;
        if ips
            .iter()
            .all(|ip| std::net::TcpListener::bind((ip.as_str(), port)).is_ok())
        {
            return port;
        }
    }
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
}

/// Polls `f` every 50 ms until it holds (an observable state) or `within` passes; whether
/// it held. The one wait every process-level test uses instead of a guessed delay.
pub async fn eventually(within: std::time::Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// Waits (up to 30 s) until `/proc/<pid>/stat` shows the process stopped (`T`, after
/// SIGSTOP) or, with `stopped` false, in any other state (after SIGCONT): a signal takes
/// effect when the kernel delivers it, not when `kill` returns. Whether it did.
pub async fn wait_for_process_state(pid: i32, stopped: bool) -> bool {
    eventually(std::time::Duration::from_secs(30), async || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses and may hold spaces.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        matches!(state, Some('T') | Some('t')) == stopped
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_and_below_the_ephemeral_range() {
        let port = free_port("127.0.0.1");
        let held = std::net::TcpListener::bind(("127.0.0.1", port)).expect("free when chosen");
        let low = ephemeral_low();
        assert!(
            low <= 12_000 || (low - 10_000..low).contains(&port),
            "{port}"
        );
        drop(held);
        let p = replica_port();
        for ip in replica_ips() {
            std::net::TcpListener::bind((ip.as_str(), p)).expect("free on every replica address");
        }
    }
}
