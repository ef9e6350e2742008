//! TLS helpers for the tests: a corral with a TLS listener, and real clients (`curl`,
//! `openssl s_client`).
#![allow(dead_code)]

use std::net::SocketAddr;

// Not every test binary uses each.
#[allow(unused_imports)]
pub use corral_testkit::tls::{
    https_client, https_get, install, CertFiles, Pki, SecretVolume, TlsFront,
};

/// A free loopback address for a TLS listener.
pub fn tls_addr() -> SocketAddr {
    super::loopback_addr()
}

/// The `[server] tls = { ... }` line for `cert` on `addr`, with `extra` keys.
pub fn tls_line(addr: SocketAddr, cert: &CertFiles, extra: &str) -> String {
    format!(
        "tls = {{ listen = \"{addr}\", cert_file = \"{}\", key_file = \"{}\"{extra} }}\n",
        cert.cert.display(),
        cert.key.display()
    )
}

/// A corral in front of `origin` with a TLS listener on a fresh loopback address serving
/// `cert` (`extra` keys added to its `tls` table): the corral and the TLS listener's address.
pub async fn tls_corral(
    origin: &super::Origin,
    cert: &CertFiles,
    extra: &str,
) -> (super::Corral, SocketAddr) {
    let addr = tls_addr();
    let config = format!(
        "{}{}",
        tls_line(addr, cert, extra),
        super::config(origin, "")
    );
    (super::Corral::start(&config).await, addr)
}

/// What curl saw.
#[derive(Debug)]
pub struct Curled {
    /// 0 when curl failed (no HTTP response).
    pub status: u16,
    /// `1.1` or `2`.
    pub version: String,
    pub headers: String,
    pub body: String,
    pub exit: i32,
    pub stderr: String,
}

impl Curled {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
    pub fn is_hit(&self) -> bool {
        self.header("cache-status")
            .is_some_and(|c| c.split(';').any(|p| p.trim() == "hit"))
    }
}

/// Runs curl with `args` (the URL among them); `-s`, a timeout and the write-out are added.
pub async fn curl(args: &[&str]) -> Curled {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-D",
            "/dev/stderr",
            "-w",
            "\n@@%{http_code} %{http_version}",
        ])
        .args(["--noproxy", "*"])
        .args(args)
        .output()
        .await
        .expect("curl runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let (body, tail) = stdout.rsplit_once("\n@@").unwrap_or((&stdout, "0 0"));
    let (code, version) = tail.split_once(' ').unwrap_or(("0", "0"));
    Curled {
        status: code.trim().parse().unwrap_or(0),
        version: version.trim().to_string(),
        headers: stderr.clone(),
        body: body.to_string(),
        exit: out.status.code().unwrap_or(-1),
        stderr,
    }
}

/// [`curl_tls`] presenting `client`'s certificate and key (mTLS).
pub async fn curl_tls_as(
    ca: &std::path::Path,
    host: &str,
    addr: SocketAddr,
    path: &str,
    client: &CertFiles,
) -> Curled {
    let (cert, key) = (client.cert.display(), client.key.display());
    let (cert, key) = (cert.to_string(), key.to_string());
    curl_tls(ca, host, addr, path, &["--cert", &cert, "--key", &key]).await
}

/// curl over TLS to `addr` as `host` (SNI and Host), trusting `ca`.
pub async fn curl_tls(
    ca: &std::path::Path,
    host: &str,
    addr: SocketAddr,
    path: &str,
    extra: &[&str],
) -> Curled {
    let resolve = format!("{host}:{}:{}", addr.port(), addr.ip());
    let url = format!("https://{host}:{}{path}", addr.port());
    let ca = ca.display().to_string();
    let mut args = vec!["--cacert", ca.as_str(), "--resolve", resolve.as_str()];
    args.extend_from_slice(extra);
    args.push(url.as_str());
    curl(&args).await
}

/// `openssl s_client` against `addr` with `args` (e.g. `-servername`, `-alpn`); its output.
pub async fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    let out = tokio::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("openssl runs");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Reaches an admin listener on `admin` over TLS as `name` (SNI and verified name), trusting
/// `ca`, presenting `client_cert` when given (mTLS).
pub fn admin_access(
    admin: SocketAddr,
    ca: &std::path::Path,
    name: &str,
    client_cert: Option<&CertFiles>,
) -> super::AdminAccess {
    super::AdminAccess {
        base: format!("https://{name}:{}", admin.port()),
        client: tls_client(admin, ca, name, client_cert),
    }
}

/// A reqwest client over TLS to `addr` as `name`, trusting `ca`, with an optional client
/// certificate.
pub fn tls_client(
    addr: SocketAddr,
    ca: &std::path::Path,
    name: &str,
    client_cert: Option<&CertFiles>,
) -> reqwest::Client {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client_cert {
        Some(c) => {
            let chain = CertificateDer::pem_file_iter(&c.cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(&c.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .resolve(name, addr)
        .no_proxy()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}
