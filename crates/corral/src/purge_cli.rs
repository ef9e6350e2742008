//! `corral purge`: a client for the admin API's `POST /purge`.

use std::path::PathBuf;
use std::process::ExitCode;

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::admin_client::{causes, AdminTlsArgs};

#[derive(clap::Args, Debug)]
pub struct PurgeArgs {
    /// The admin API of a running Corral.
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    admin: String,
    /// A URL path (every host) or absolute URL to purge; repeatable.
    #[arg(long = "url")]
    urls: Vec<String>,
    /// A surrogate key (tag) to purge; repeatable.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// A path prefix to purge; repeatable.
    #[arg(long = "prefix")]
    prefixes: Vec<String>,
    /// Purge everything.
    #[arg(long)]
    all: bool,
    /// Mark stale instead of removing (the next request revalidates).
    #[arg(long)]
    soft: bool,
    /// File holding the admin token (else CORRAL_ADMIN_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    tls: AdminTlsArgs,
}

pub async fn run(args: PurgeArgs) -> ExitCode {
    match purge(args).await {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("corral purge: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn purge(args: PurgeArgs) -> Result<String, String> {
    if args.urls.is_empty() && args.tags.is_empty() && args.prefixes.is_empty() && !args.all {
        return Err("nothing to purge: give --url, --tag, --prefix or --all".into());
    }
    let token = match &args.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read --token-file {}: {e}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("CORRAL_ADMIN_TOKEN").ok(),
    };
    let body = serde_json::json!({
        "urls": args.urls, "tags": args.tags, "prefixes": args.prefixes,
        "all": args.all, "soft": args.soft,
    });
    let url = format!("{}/purge", args.admin.trim_end_matches('/'));
    let mut req = http::Request::post(&url).header("content-type", "application/json");
    if let Some(t) = token.filter(|t| !t.is_empty()) {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .map_err(|e| format!("bad --admin URL {:?}: {e}", args.admin))?;
    let client = Client::builder(TokioExecutor::new()).build(args.tls.connector(&args.admin)?);
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| format!("{url}: no answer within 30s"))?
        .map_err(|e| format!("{url}: {}", causes(&e)))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    if !status.is_success() {
        return Err(format!("{url} answered {status}: {text}"));
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| format!("unexpected answer: {text}"))?;
    Ok(format!(
        "purged {} entries (event {})",
        v["purged"],
        v["event"].as_str().unwrap_or("?")
    ))
}
