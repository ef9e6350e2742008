//! `sslmode`, `sslrootcert`, `sslcert` and `sslkey` of a `[[sources]]` entry (libpq's names):
//! judged when the config is checked, the files read at start into the rustls config the
//! PostgreSQL follower connects with (`corral_source::pg::tls`).

use std::path::PathBuf;
use std::sync::Arc;

use corral_source::tls::ClientTls;

use crate::config_sources::RawSource;

/// `sslmode` and the files it uses: judged when the config is checked, the files read at start.
///
/// `disable`, `allow` and `prefer` connect in clear: libpq's `allow` and `prefer` settle for
/// clear whenever TLS is refused, which anyone on the path can arrange, so Corral does not
/// pretend they protect anything. `require`, `verify-ca` and `verify-full` use TLS and fail
/// when the server refuses it; all three verify the certificate's chain against `sslrootcert`
/// (else the system's roots), and `require` and `verify-full` its name too (libpq's
/// `require` would verify nothing: there is no unverified mode here).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslSettings {
    /// `None`: in clear; `Some(true)`: verify the chain and the name; `Some(false)`: the chain.
    pub verify_name: Option<bool>,
    pub root_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl SslSettings {
    pub(crate) fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "sslmode" => {
                self.verify_name = match value {
                    "disable" | "allow" | "prefer" => None,
                    "require" | "verify-full" => Some(true),
                    "verify-ca" => Some(false),
                    other => {
                        return Err(format!(
                    "sslmode {other:?}: disable, allow, prefer, require, verify-ca or verify-full"
                ))
                    }
                }
            }
            "sslrootcert" => self.root_cert = Some(value.into()),
            "sslcert" => self.cert = Some(value.into()),
            "sslkey" => self.key = Some(value.into()),
            _ => unreachable!("only the ssl keys reach here"),
        }
        Ok(())
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if self.cert.is_some() != self.key.is_some() {
            return Err("sslcert and sslkey go together".into());
        }
        if self.verify_name.is_none() && (self.root_cert.is_some() || self.cert.is_some()) {
            return Err("sslrootcert/sslcert are set but sslmode does not ask for TLS (require, verify-ca or verify-full)".into());
        }
        Ok(())
    }

    /// The rustls config for a server reached as `host` (reads the files).
    pub fn load(&self, host: &str) -> Result<Option<ClientTls>, String> {
        let Some(verify_name) = self.verify_name else {
            return Ok(None);
        };
        let files = corral_http::tls::client::UpstreamTlsSettings {
            ca_file: self.root_cert.clone(),
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
            ..Default::default()
        };
        let mut config = corral_http::tls::client::client_config(&files)?;
        if !verify_name {
            corral_http::tls::client::verify_chain_only(&mut config, &files)?;
        }
        Ok(Some(ClientTls {
            config: Arc::new(config),
            server_name: corral_http::tls::client::server_name(host)?,
        }))
    }
}

pub(crate) fn ssl_of_parts(r: &RawSource) -> Result<SslSettings, String> {
    let mut ssl = SslSettings::default();
    if let Some(mode) = &r.sslmode {
        ssl.set("sslmode", mode)?;
    }
    ssl.root_cert = r.sslrootcert.clone();
    ssl.cert = r.sslcert.clone();
    ssl.key = r.sslkey.clone();
    ssl.check()?;
    Ok(ssl)
}
