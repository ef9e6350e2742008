//! `corral demo`: the bundled example origin (a lab-test package catalogue) with the gateway in
//! front of it, on loopback, with no external services.

use std::net::SocketAddr;
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

/// Runs the demo: the origin and `replicas` gateways that keep each other coherent, and prints
/// what to try.
pub async fn run(
    listen: String,
    admin_listen: String,
    origin_listen: String,
    replicas: u16,
) -> ExitCode {
    let (Ok(first), Ok(first_admin)) = (
        listen.parse::<SocketAddr>(),
        admin_listen.parse::<SocketAddr>(),
    ) else {
        eprintln!("corral demo: --listen and --admin-listen take addresses like 127.0.0.1:8080");
        return ExitCode::from(2);
    };
    let nth = |a: SocketAddr, i: u16| SocketAddr::new(a.ip(), a.port() + i);
    let admins: Vec<SocketAddr> = (0..replicas).map(|i| nth(first_admin, i)).collect();
    let origin = match tokio::net::TcpListener::bind(&origin_listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("corral demo: cannot bind the example origin on {origin_listen}: {e} (use --origin-listen)");
            return ExitCode::FAILURE;
        }
    };
    let origin_config = corral_origin::OriginConfig {
        delay: Duration::ZERO,
        purge_url: Some(format!("http://{first_admin}")),
        admin_token: None,
    };
    tokio::spawn(async move {
        let forever = std::future::pending::<()>();
        if let Err(e) = corral_origin::serve(origin, origin_config, forever).await {
            tracing::error!(error = %e, "example origin stopped");
        }
    });
    let secret_file = match demo_secret() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("corral demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut servers = Vec::new();
    for i in 0..replicas {
        let raw = RawConfig {
            cluster: Some(crate::config::RawCluster {
                secret_file: Some(secret_file.clone()),
                discovery: Some(static_discovery(&admins)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let overrides = Overrides {
            listen: Some(nth(first, i).to_string()),
            admin_listen: Some(admins[usize::from(i)].to_string()),
            upstream: Some(format!("http://{origin_listen}")),
        };
        let cfg = match raw.resolve(&overrides) {
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
        servers.push(tokio::spawn(crate::serve(
            cfg,
            parts,
            crate::shutdown_signal(),
        )));
    }
    let proxies: Vec<String> = (0..replicas).map(|i| nth(first, i).to_string()).collect();
    println!(
        r#"
Corral demo: a lab-test package catalogue (the origin, {origin_listen}) behind {replicas} gateway
replicas that keep each other coherent: {proxies}.

  for p in {ports}; do curl -s -o /dev/null -w "$p %{{http_code}} " http://127.0.0.1:$p/packages/1; done; echo
      # fills each replica's cache (fwd=miss), then ask again: every replica answers from memory
  curl -si http://{p0}/packages/1 | grep -i -E 'cache-status|price_cents'
  curl -si http://{p2}/packages/1 | grep -i -E 'cache-status|price_cents'
  curl -s -X POST http://{origin_listen}/admin/packages/1/price -d '{{"price_cents": 4999}}'
      # the origin changes the price and purges tag package-1 through replica 1's admin API;
      # the purge reaches every replica:
  for p in {ports}; do curl -s http://127.0.0.1:$p/packages/1 | grep -o '"price_cents":[0-9]*'; done
  curl -s http://{a0}/peers                                       # each peer, acknowledged sequence, lag
  corral purge --admin http://{a1} --tag packages                 # purge from any replica
  curl -s http://{a2}/metrics | grep -E 'corral_(requests|peer_events)'
  corral top --admin http://{a0}                                 # a live view in the terminal (q quits)
  # or open http://{a0}/ui in a browser: the live dashboard

Ctrl-C stops it.
"#,
        proxies = proxies.join(", "),
        ports = (0..replicas)
            .map(|i| (first.port() + i).to_string())
            .collect::<Vec<_>>()
            .join(" "),
        p0 = proxies[0],
        p2 = proxies[proxies.len() - 1],
        a0 = admins[0],
        a1 = admins[admins.len().min(2) - 1],
        a2 = admins[admins.len() - 1],
    );
    let mut code = ExitCode::SUCCESS;
    for s in servers {
        if !matches!(s.await, Ok(Ok(()))) {
            code = ExitCode::FAILURE;
        }
    }
    let _ = std::fs::remove_file(&secret_file);
    code
}

fn static_discovery(admins: &[SocketAddr]) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("kind".into(), "static".into());
    t.insert(
        "addresses".into(),
        toml::Value::Array(admins.iter().map(|a| a.to_string().into()).collect()),
    );
    t
}

/// A fresh cluster secret for this demo run, in a file only we can read: secrets never go on
/// a command line, even in a demo.
fn demo_secret() -> Result<std::path::PathBuf, String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(|e| e.to_string())?,
        &mut bytes,
    )
    .map_err(|e| e.to_string())?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = std::env::temp_dir().join(format!("corral-demo-{}.secret", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(secret.as_bytes()).map_err(|e| e.to_string())?;
    Ok(path)
}
