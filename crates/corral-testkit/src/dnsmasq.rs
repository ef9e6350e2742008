//! A real DNS server (dnsmasq) on loopback answering for a name from a hosts file, for the
//! tests of DNS discovery: [`Dnsmasq::set`] rewrites the records and has dnsmasq reread them
//! (SIGHUP), as a headless service's endpoints change. Killed on drop.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// A running dnsmasq.
pub struct Dnsmasq {
    child: Child,
    hosts: PathBuf,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq answering `name` with `ips`, and returns once it answers a query.
    pub fn start<S: AsRef<str>>(name: &str, ips: &[S]) -> Dnsmasq {
        Self::start_with(&hosts_text(name, ips), &[])
    }

    /// Starts dnsmasq answering from `hosts` (a hosts file's text: `ip name` lines), with
    /// `extra` arguments (`--srv-host=...` records), and returns once it answers a query.
    pub fn start_with(hosts_text: &str, extra: &[String]) -> Dnsmasq {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, hosts_text).unwrap();
        let port = free_port("127.0.0.1");
        let child = Command::new("dnsmasq")
            .args([
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                &format!("--port={port}"),
                &format!("--addn-hosts={}", hosts.display()),
                "--local-ttl=1",
                &format!("--pid-file={}", dir.path().join("pid").display()),
                "--user=root",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq is installed (scripts/test.sh installs it)");
        let mut d = Dnsmasq {
            child,
            hosts,
            port,
            _dir: dir,
        };
        // Any name: dnsmasq answers every query (NXDOMAIN or REFUSED for the names it lacks).
        d.wait_answering(
            hosts_text
                .split_whitespace()
                .nth(1)
                .unwrap_or("corral.test"),
        );
        d
    }

    /// Waits until dnsmasq answers a query for `name` (any answer: it serves).
    fn wait_answering(&mut self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let query = query(0x2f2f, name);
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("dnsmasq on port {} exited at start: {status}", self.port);
            }
            let _ = socket.send_to(&query, ("127.0.0.1", self.port));
            if let Ok(n) = socket.recv(&mut buf) {
                if n >= 2 && buf[..2] == query[..2] {
                    return;
                }
            }
        }
        panic!("dnsmasq on port {} did not answer", self.port);
    }

    /// Rewrites the records and tells dnsmasq to reread them.
    pub fn set<S: AsRef<str>>(&self, name: &str, ips: &[S]) {
        std::fs::write(&self.hosts, hosts_text(name, ips)).unwrap();
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hosts file's text naming each of `ips` `name`.
fn hosts_text<S: AsRef<str>>(name: &str, ips: &[S]) -> String {
    ips.iter()
        .map(|ip| format!("{} {name}\n", ip.as_ref()))
        .collect()
}

/// A DNS query (recursion desired) for `name`'s A records.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}
