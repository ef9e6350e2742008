//! `corral demo`: the bundled example origin (a lab-test package catalogue) with the gateway in
//! front of it, on loopback, with no external services.

use std::process::ExitCode;
use std::time::Duration;

use crate::config::{Overrides, RawConfig};

/// Runs the origin alone (`corral origin`).
pub async fn run_origin(
    listen: String,
    delay: Option<String>,
    purge_url: Option<String>,
) -> ExitCode {
    let delay = match delay
        .as_deref()
        .map(|d| crate::config::parse_duration("--delay", d))
    {
        Some(Err(e)) => {
            eprintln!("corral origin: {e}");
            return ExitCode::from(2);
        }
        Some(Ok(d)) => d,
        None => Duration::ZERO,
    };
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("corral origin: cannot bind {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = corral_origin::OriginConfig {
        delay,
        purge_url,
        admin_token: std::env::var("CORRAL_ADMIN_TOKEN").ok(),
    };
    tracing::info!(%listen, "example origin serving");
    match corral_origin::serve(listener, config, crate::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corral origin: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the demo: origin + gateway, and prints what to try.
pub async fn run(listen: String, admin_listen: String, origin_listen: String) -> ExitCode {
    let origin = match tokio::net::TcpListener::bind(&origin_listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("corral demo: cannot bind the example origin on {origin_listen}: {e} (use --origin-listen)");
            return ExitCode::FAILURE;
        }
    };
    let origin_config = corral_origin::OriginConfig {
        purge_url: Some(format!("http://{admin_listen}")),
        ..Default::default()
    };
    tokio::spawn(async move {
        let forever = std::future::pending::<()>();
        if let Err(e) = corral_origin::serve(origin, origin_config, forever).await {
            tracing::error!(error = %e, "example origin stopped");
        }
    });
    let overrides = Overrides {
        listen: Some(listen.clone()),
        admin_listen: Some(admin_listen.clone()),
        upstream: Some(format!("http://{origin_listen}")),
    };
    let cfg = match RawConfig::default().resolve(&overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corral demo: {e}");
            return ExitCode::from(2);
        }
    };
    let parts = match crate::build(&cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("corral demo: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        r#"
Corral demo: a lab-test package catalogue (the origin, {origin_listen}) behind the gateway ({listen}).

  curl -si http://{listen}/packages/1 | grep -i -E 'cache-status|age|price'   # first: fwd=miss; stored
  curl -si http://{listen}/packages/1 | grep -i -E 'cache-status|age|price'   # then:  hit
  curl -s -X POST http://{origin_listen}/admin/packages/1/price -d '{{"price_cents": 4999}}'
                                                        # the origin changes the price and purges tag package-1
  curl -si http://{listen}/packages/1 | grep -i -E 'cache-status|price'       # miss again, new price
  corral purge --admin http://{admin_listen} --tag packages                   # purge by tag from the CLI
  curl -s http://{admin_listen}/metrics | grep corral_requests_total

Ctrl-C stops it.
"#
    );
    match crate::serve(cfg, parts, crate::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corral demo: {e}");
            ExitCode::FAILURE
        }
    }
}
