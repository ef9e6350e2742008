//! TLS for tests: a certificate authority made at test time, certificates it signs (valid,
//! expired, for other names, for clients), a TLS front that wraps a plain test origin, and an
//! HTTPS client that trusts the test CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::ServerName;

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test certificate authority writing its files into `dir`.
pub struct Pki {
    pub dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Pki {
    /// A new CA named `name`, with its files in a fresh directory under the system temp dir.
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "corral-pki-{}-{}-{name}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    /// The CA certificate (PEM), to trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate for `names`, valid now, as `{stem}.pem` and `{stem}.key`.
    pub fn server(&self, stem: &str, names: &[&str]) -> CertFiles {
        self.issue(stem, names, |_| {})
    }

    /// A server certificate for `names` that expired in 2020.
    pub fn expired(&self, stem: &str, names: &[&str]) -> CertFiles {
        self.issue(stem, names, |p| {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        })
    }

    /// A client certificate (for mTLS) named `cn`.
    pub fn client(&self, stem: &str, cn: &str) -> CertFiles {
        self.issue(stem, &[], |p| {
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        })
    }

    fn issue(
        &self,
        stem: &str,
        names: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> CertFiles {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        edit(&mut params);
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let files = CertFiles {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
        };
        write_atomically(&files.key, key.serialize_pem().as_bytes());
        write_atomically(&files.cert, cert.pem().as_bytes());
        files
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Replaces `path` whole (write beside it, then rename), as a Secret volume update does.
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Copies `from` over `to` (certificate and key) atomically each.
pub fn install(from: &CertFiles, to: &CertFiles) {
    write_atomically(&to.key, &std::fs::read(&from.key).unwrap());
    write_atomically(&to.cert, &std::fs::read(&from.cert).unwrap());
}

/// A directory laid out as the kubelet lays out a mounted Secret: each file a symlink through
/// `..data` to a versioned directory. An update writes a new version and renames a new
/// `..data` link over the old one, so every file changes at once — a reader never sees a new
/// certificate beside an old key, unless it reads across the swap.
pub struct SecretVolume {
    pub dir: PathBuf,
    version: usize,
}

impl SecretVolume {
    /// A volume in `dir` (created) holding `files` (name, contents).
    pub fn new(dir: &Path, files: &[(&str, &[u8])]) -> SecretVolume {
        std::fs::create_dir_all(dir).unwrap();
        let mut v = SecretVolume {
            dir: dir.to_path_buf(),
            version: 0,
        };
        v.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name)).unwrap();
        }
        v
    }

    /// Where a reader finds `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Replaces every file at once (the same names as at creation).
    pub fn update(&mut self, files: &[(&str, &[u8])]) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let versioned = self.dir.join(&version);
        std::fs::create_dir(&versioned).unwrap();
        for (name, bytes) in files {
            std::fs::write(versioned.join(name), bytes).unwrap();
        }
        let link = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &link).unwrap();
        std::fs::rename(&link, self.dir.join("..data")).unwrap();
        if self.version > 1 {
            let old = self.dir.join(format!("..v{}", self.version - 1));
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

/// A TLS front for a plain origin: terminates TLS with `cert` and relays the bytes to
/// `backend`. Offers `alpn` (e.g. `[b"h2"]` in front of an origin that speaks h2c).
pub struct TlsFront {
    pub addr: SocketAddr,
    /// Handshakes completed.
    pub handshakes: Arc<AtomicUsize>,
    /// The server names clients sent by SNI, one per handshake (empty string: none sent).
    pub sni: Arc<std::sync::Mutex<Vec<String>>>,
}

impl TlsFront {
    pub async fn start(
        backend: SocketAddr,
        cert: &CertFiles,
        alpn: &[&[u8]],
        client_ca: Option<&Path>,
    ) -> TlsFront {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = rustls::pki_types::CertificateDer::pem_file_iter(&cert.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&cert.key).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
                    roots.add(c.unwrap()).unwrap();
                }
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(v)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let sni: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let (count, names) = (handshakes.clone(), sni.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, count, names) = (acceptor.clone(), count.clone(), names.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let name = tls.get_ref().1.server_name().unwrap_or("").to_string();
                    names.lock().unwrap().push(name);
                    count.fetch_add(1, Ordering::Relaxed);
                    let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront {
            addr,
            handshakes,
            sni,
        }
    }
}

/// An HTTPS client trusting `ca`, verifying `server_name` whatever address it connects to.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// An HTTPS client for tests: trusts `ca`, sends `server_name` as SNI, offers h2 when `h2`.
/// With `reuse = false`, every request makes a new connection (and handshake).
pub fn https_client(ca: &Path, server_name: &str, h2: bool, reuse: bool) -> HttpsClient {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let b = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .with_server_name_resolver(FixedServerNameResolver::new(name));
    let connector = if h2 {
        b.enable_http2().build()
    } else {
        b.enable_http1().build()
    };
    let mut client = Client::builder(TokioExecutor::new());
    if !reuse {
        client.pool_max_idle_per_host(0);
    }
    if h2 {
        client.http2_only(true);
    }
    client.build(connector)
}

/// A GET through `client`: status, the `cache-status` header, the HTTP version and the body.
pub async fn https_get(client: &HttpsClient, url: &str) -> Result<Fetched, String> {
    let req = http::Request::get(url)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let version = resp.version();
    let cache_status = resp
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Fetched {
        status,
        version,
        cache_status,
        body,
    })
}

/// A response read whole.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub version: http::Version,
    pub cache_status: String,
    pub body: Bytes,
}

impl Fetched {
    pub fn is_hit(&self) -> bool {
        self.cache_status.split(';').any(|p| p.trim() == "hit")
    }
}
