//! The HTTP client discovery sources use: plain HTTP, or HTTPS verified against a given CA
//! (the Kubernetes service-account CA).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A client trusting `ca_pem` (when given) for HTTPS.
pub fn build(ca_pem: Option<&[u8]>) -> Result<HttpClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(|e| format!("bad CA certificate: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("bad CA certificate: {e}"))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// A GET with optional bearer token; the response head, or an error that says what failed.
pub async fn get(
    client: &HttpClient,
    url: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let mut req = http::Request::get(url).header("accept", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Empty::new()).map_err(|e| format!("{url}: {e}"))?;
    tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
        .map_err(|e| format!("{url}: {e}"))
}

/// Reads a whole (bounded) body.
pub async fn body(
    resp: http::Response<hyper::body::Incoming>,
    limit: usize,
) -> Result<Bytes, String> {
    let b = tokio::time::timeout(Duration::from_secs(60), resp.into_body().collect())
        .await
        .map_err(|_| "body timed out".to_string())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    if b.len() > limit {
        return Err(format!("answer larger than {limit} bytes"));
    }
    Ok(b)
}
