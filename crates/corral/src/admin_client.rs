//! How the command line's admin-API clients (`corral purge`, `corral top`) connect: plain
//! HTTP, or HTTPS verified as upstreams and peers are (`corral_http::tls::client`), with an
//! optional client certificate for an admin listener that requires one.

use std::path::PathBuf;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

/// The connector every admin-API client uses.
pub type AdminConnector = HttpsConnector<HttpConnector>;

/// `--ca-file`, `--cert-file`, `--key-file`: TLS to an `https://` `--admin`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AdminTlsArgs {
    /// With an https:// --admin: the CA (PEM) its certificate is verified against (else the
    /// system roots).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// With an https:// --admin that requires client certificates: this one (PEM) ...
    #[arg(long, requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// ... and its key (PEM).
    #[arg(long, requires = "cert_file")]
    key_file: Option<PathBuf>,
}

impl AdminTlsArgs {
    /// The connector for `admin` (a URL): TLS files are refused with a plain `http://` URL,
    /// so they are never silently ignored.
    pub fn connector(&self, admin: &str) -> Result<AdminConnector, String> {
        let config = if admin.starts_with("https://") {
            let settings = corral_http::tls::UpstreamTlsSettings {
                ca_file: self.ca_file.clone(),
                cert_file: self.cert_file.clone(),
                key_file: self.key_file.clone(),
                ..Default::default()
            };
            corral_http::tls::client::client_config(&settings)?
        } else if self.ca_file.is_some() || self.cert_file.is_some() {
            return Err("--ca-file and --cert-file need an https:// --admin URL".into());
        } else {
            // Never used: a plain URL starts no TLS.
            rustls::ClientConfig::clone(&corral_http::tls::UpstreamTls::unused().config.borrow())
        };
        Ok(hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build())
    }
}

/// An error and its causes, so a refused certificate says so rather than "Connect".
pub fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out += &format!(": {c}");
        cur = c.source();
    }
    out
}
