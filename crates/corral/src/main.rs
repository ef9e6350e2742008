//! `corral`: the caching gateway binary. A thin layer over the library crates: command line,
//! configuration, wiring, the admin API and `corral demo`.

mod admin;
mod admin_client;
mod admin_listener;
mod config;
mod config_admin;
mod config_cache;
mod config_cluster;
mod config_ingress;
mod config_redis;
mod config_server;
mod config_source_tls;
mod config_sources;
mod config_telemetry;
mod config_tls;
mod demo;
mod discovery_config;
mod feed;
mod forward;
mod invalidation;
mod owner_tier;
mod purge_cli;
mod redis_tier;
mod route_config;
mod source_leader;
mod sources;
mod top;
mod ui;
mod upstream_config;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use corral_cluster::hub::{Hub, PurgeMetrics};
use corral_cluster::{Cluster, ClusterConfig, Secret};
use corral_core::store::{Store, StoreConfig};
use corral_core::Reclaimer;
use corral_http::access::{PurgeAccess, Token};
use corral_http::{Gateway, GatewayConfig, Metrics, Route, Router, Upstream};

use crate::config::{Config, Overrides, RawConfig};

/// mimalloc: many small, long-lived entries allocated and freed from several threads fragment
/// glibc's malloc (measured: twice the resident memory per entry), and it is faster on the hit
/// path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad flags or configuration (clap uses 2 as well).
const EXIT_CONFIG: u8 = 2;

/// `corral --version`: the crate's version and the git revision it was built from (build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("CORRAL_GIT_REV"), ")");

#[derive(Parser)]
#[command(
    name = "corral",
    version = VERSION,
    about = "A caching gateway for microservices that keeps every replica's cache coherent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gateway.
    Serve {
        /// Configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Proxy listener, e.g. 0.0.0.0:8080 (overrides server.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Admin listener, e.g. 127.0.0.1:9090 (overrides server.admin_listen).
        #[arg(long)]
        admin_listen: Option<String>,
        /// Origin URL for a single catch-all route, e.g. http://127.0.0.1:3000 (overrides `[upstream] url`).
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Runs a bundled example origin and a small coherent cluster of gateways; no external services.
    Demo {
        /// Proxy listener of the demo gateway.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Admin listener of the demo gateway.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: String,
        /// Listener of the example origin.
        #[arg(long, default_value = "127.0.0.1:3000")]
        origin_listen: String,
        /// How many gateway replicas (ports count up from --listen and --admin-listen).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
        replicas: u16,
    },
    /// Purges cached content through a running Corral's admin API.
    Purge(purge_cli::PurgeArgs),
    /// A terminal view of one replica: traffic, store, peers, upstreams, purges (q quits).
    Top(top::TopArgs),
    /// Validates a configuration file: exit 0, or a clear error and exit 2.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Runs only the bundled example origin (for benchmarks and tests).
    #[command(hide = true)]
    Origin {
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: String,
        /// Delay added to every response, e.g. "200ms".
        #[arg(long)]
        delay: Option<String>,
        /// A Corral admin URL the origin calls to purge a package when its price changes.
        #[arg(long)]
        purge_url: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("corral: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve {
            config,
            listen,
            admin_listen,
            upstream,
        } => {
            let overrides = Overrides {
                listen,
                admin_listen,
                upstream,
            };
            let cfg = match load_config(config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(cfg.log_json);
            runtime.block_on(run(cfg))
        }
        Command::Demo {
            listen,
            admin_listen,
            origin_listen,
            replicas,
        } => {
            init_logging(false);
            runtime.block_on(demo::run(listen, admin_listen, origin_listen, replicas))
        }
        Command::Purge(args) => runtime.block_on(purge_cli::run(args)),
        Command::Top(args) => runtime.block_on(top::run(args)),
        Command::CheckConfig { file } => match load_config(Some(&file), &Overrides::default()) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} upstream(s), {} route(s), cache {} MiB)",
                    file.display(),
                    cfg.upstreams.len(),
                    cfg.routes.len(),
                    cfg.max_size >> 20
                );
                print!("{}", config_ingress::describe(&cfg));
                print!("{}", config_tls::describe(&cfg));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Origin {
            listen,
            delay,
            purge_url,
        } => {
            init_logging(false);
            runtime.block_on(demo::run_origin(listen, delay, purge_url))
        }
    }
}

/// Reads, overrides and validates the configuration; prints the error and gives exit code 2.
pub fn load_config(
    path: Option<&std::path::Path>,
    overrides: &Overrides,
) -> Result<Config, ExitCode> {
    let raw = match path {
        Some(p) => RawConfig::load(p),
        None => Ok(RawConfig::default()),
    };
    match raw.and_then(|r| r.resolve(overrides)) {
        Ok(c) => Ok(c),
        Err(e) => {
            eprintln!("corral: configuration error: {e}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Reads the admin token: `admin.token_file`, else `CORRAL_ADMIN_TOKEN`. Never from flags.
fn admin_token(cfg: &Config) -> Result<Option<Token>, String> {
    if let Some(path) = &cfg.admin_token_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "admin.token_file = {:?}: cannot read it: {e}",
                path.display()
            )
        })?;
        return Token::new(&text)
            .map(Some)
            .ok_or_else(|| format!("admin.token_file = {:?}: the file is empty", path.display()));
    }
    Ok(std::env::var("CORRAL_ADMIN_TOKEN")
        .ok()
        .and_then(|t| Token::new(&t)))
}

/// Reads the cluster signing key: `cluster.secret_file`, else `CORRAL_CLUSTER_SECRET`. A
/// cluster without a secret refuses to start.
fn cluster_secret(spec: &config::ClusterSpec) -> Result<Secret, String> {
    let text = match &spec.secret_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cluster.secret_file = {:?}: cannot read it: {e}", path.display()))?,
        None => std::env::var("CORRAL_CLUSTER_SECRET").map_err(|_| {
            "[cluster] is configured but there is no secret: set cluster.secret_file or CORRAL_CLUSTER_SECRET".to_string()
        })?,
    };
    Secret::new(&text).map_err(|e| format!("cluster secret: {e}"))
}

/// A name for this replica in events and logs.
fn instance_name(cfg: &Config) -> String {
    let addr = cfg
        .cluster
        .as_ref()
        .map_or(cfg.admin_listen, |c| c.advertise);
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .map(|h| format!("{h}@{addr}"))
        .unwrap_or_else(|_| addr.to_string())
}

/// The process's parts, wired together, and its listeners bound.
pub struct Gatewayd {
    pub gateway: Arc<Gateway>,
    pub admin: Arc<admin::AdminState>,
    pub hub: Arc<Hub>,
    /// Gives back the memory of purged and expired entries; `serve` runs it.
    pub reclaimer: Arc<Reclaimer>,
    /// The TLS listener's certificates and handshakes, when `[server] tls` is set.
    pub tls: Option<Arc<corral_http::tls::ServerTls>>,
    /// The admin listener's TLS, when `[admin] tls` (or `[cluster] tls`) gives a certificate.
    pub admin_tls: Option<Arc<corral_http::tls::ServerTls>>,
}

/// Builds the gateway from a validated configuration.
pub fn build(cfg: &Config) -> Result<Gatewayd, String> {
    let token = admin_token(cfg)?;
    if !cfg.admin_listen.ip().is_loopback() && token.is_none() {
        return Err(format!(
            "server.admin_listen = \"{}\" is not loopback-only, so the admin API needs a token: \
             set admin.token_file or CORRAL_ADMIN_TOKEN",
            cfg.admin_listen
        ));
    }
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let purge_metrics = PurgeMetrics::register(&mut registry);
    let discovery_metrics = corral_discovery::DiscoveryMetrics::register(&mut registry);
    let longest_fetch = cfg
        .upstreams
        .iter()
        .map(|u| u.config.timeouts.total)
        .max()
        .unwrap_or_default();
    let store = Arc::new(Store::new(StoreConfig {
        max_bytes: cfg.max_size,
        fetch_horizon: longest_fetch + std::time::Duration::from_secs(60),
    }));
    let instance = instance_name(cfg);
    if let Some(t) = &cfg.telemetry {
        config_telemetry::start(t, &instance, &mut registry)?;
    }
    let reclaimer = Reclaimer::new(store.clone());
    let hub = Hub::new(
        store.clone(),
        instance.clone(),
        purge_metrics,
        reclaimer.clone(),
    );
    // The hub's subscribers, added before any event can be applied (the cluster starts below):
    // the journal, then the feed, which numbers every event in the order it was applied.
    let journal = Arc::new(ui::journal::Journal::default());
    hub.add_subscriber(journal.clone());
    let feed = Arc::new(feed::Feed::new(
        hub.source().epoch(),
        instance.clone(),
        cfg.feed,
        feed::FeedMetrics::register(&mut registry),
    ));
    hub.add_subscriber(feed.clone());
    if !cfg.forward.is_empty() {
        // Subscribed before any event can be applied: every invalidation is forwarded.
        let fm = forward::ForwardMetrics::register(&mut registry);
        forward::start(cfg.forward.clone(), hub.subscribe(), fm);
    }
    let tls = match &cfg.tls {
        Some(spec) => {
            let metrics = corral_http::tls::TlsMetrics::register(&mut registry);
            let tls = corral_http::tls::ServerTls::new(spec.settings.clone(), metrics)
                .map_err(|e| format!("server.tls: {e}"))?;
            Some(tls)
        }
        None => None,
    };
    let admin_tls = match &cfg.admin_tls {
        Some(settings) => {
            let metrics = corral_http::tls::TlsMetrics::register_admin(&mut registry);
            Some(
                corral_http::tls::ServerTls::new(settings.clone(), metrics)
                    .map_err(|e| format!("admin listener TLS (admin.tls, or cluster.tls): {e}"))?,
            )
        }
        None => None,
    };
    let pool_metrics = corral_http::PoolMetrics::register(&mut registry);
    let mut upstreams = HashMap::new();
    let mut upstream_list = Vec::new();
    let tls_reloads = corral_http::tls::metrics::register_upstream_reloads(&mut registry);
    for u in &cfg.upstreams {
        let health = discovery_metrics.source(&format!("upstream:{}", u.name), u.discovery.kind());
        let endpoints = corral_discovery::spawn(&u.discovery, health.clone());
        let mut config = u.config.clone();
        if let Some(tls) = &u.tls {
            config.tls = Some(tls.load(tls_reloads.clone())?);
        }
        let up = Upstream::start(config, u.discovery.kind(), health, endpoints, &pool_metrics);
        upstream_list.push(up.clone());
        upstreams.insert(u.name.clone(), up);
    }
    let routes = cfg
        .routes
        .iter()
        .map(|r| Route {
            name: r.name.clone(),
            host: r.host.clone(),
            path_prefix: r.path_prefix.clone(),
            upstream: upstreams[&r.upstream].clone(),
            policy: Arc::new(r.policy.clone()),
            cache_methods: r.cache_methods.clone(),
        })
        .collect();
    let gcfg = GatewayConfig {
        tags: cfg.tags.clone(),
        purge: PurgeAccess {
            allow: cfg.purge_allow.clone(),
            token: token.clone(),
        },
        coalesce_timeout: cfg.coalesce_timeout,
        hit_for_miss: cfg.hit_for_miss,
        host_header: cfg.host_header.clone(),
        access_log: cfg.access_log,
        ingress: cfg.ingress.clone(),
    };
    let sink = Arc::new(invalidation::GatewaySink(hub.clone()));
    let gateway = Gateway::new(store, Router::new(routes), gcfg, metrics, sink);
    let mut discovery = None;
    let mut warmup = None;
    let mut owner = None;
    if let Some(spec) = &cfg.cluster {
        let secret = cluster_secret(spec)?;
        let mut c = ClusterConfig::new(
            secret,
            spec.advertise,
            instance.clone(),
            hub.source().epoch(),
        );
        c.heartbeat = spec.heartbeat;
        c.replay_window = spec.replay_window;
        c.queue_capacity = spec.queue_capacity;
        c.log_capacity = spec.log_capacity;
        c.fanout = spec.fanout;
        c.relay_budget = spec.relay_budget;
        if let Some(tls) = &spec.tls {
            let reloads = corral_http::tls::metrics::register_peer_reloads(&mut registry);
            c.tls = Some(tls.load(reloads)?);
        }
        let metrics = corral_cluster::ClusterMetrics::register(&mut registry);
        let health = discovery_metrics.source("peers", spec.discovery.kind());
        let cluster = Cluster::start(
            c,
            corral_cluster::peers::discovered(&spec.discovery, health.clone()),
            hub.clone(),
            metrics,
        );
        hub.attach_cluster(cluster.clone());
        let w = warmup_of(cfg, spec, gateway.store(), &mut registry);
        cluster.attach_warmup(w.clone());
        warmup = Some(w);
        discovery = Some(health);
        if let Some(shard) = &spec.shard {
            owner = Some(owner_tier::OwnerTier {
                cluster,
                store: gateway.store().clone(),
                shard: shard.clone(),
                limits: warmup_limits(cfg),
                l2: None,
            });
        }
    }
    // One shared tier: the L2 alone, owner routing alone, or owner routing in front of the L2
    // (the owner's fill goes through its L2 and lease; see `owner_tier`).
    let redis = redis_tier::start(cfg, &hub, &mut registry)?;
    match (owner, redis.tier) {
        (Some(mut owner), l2) => {
            owner.l2 = l2;
            gateway.set_shared_tier(Arc::new(owner));
        }
        (None, Some(l2)) => gateway.set_shared_tier(l2),
        (None, None) => {}
    }
    registry.register_collector(Box::new(ui::StoreCollector(gateway.store().clone())));
    let sources = sources::Sources::new(cfg, redis.leases, &mut registry)?;
    let admin = Arc::new(admin::AdminState {
        discovery,
        upstreams: upstream_list,
        hub: hub.clone(),
        feed,
        journal,
        wait_timeout: cfg
            .cluster
            .as_ref()
            .map_or(config_cluster::DEFAULT_WAIT_TIMEOUT, |c| c.wait_timeout),
        gateway: gateway.clone(),
        registry,
        token,
        ready: false.into(),
        warming: false.into(),
        warmup,
        listen: cfg.listen,
        instance,
        samples: ui::state::Samples::default(),
        sources,
    });
    Ok(Gatewayd {
        gateway,
        admin,
        hub,
        reclaimer,
        tls,
        admin_tls,
    })
}

/// Warm-up from peers: what a received record may hold follows the routes' largest
/// `max_object_size` and `max_variants`.
fn warmup_of(
    cfg: &Config,
    spec: &config::ClusterSpec,
    store: &Arc<Store>,
    registry: &mut prometheus_client::registry::Registry,
) -> Arc<corral_cluster::warmup::Warmup> {
    let max_variants = cfg
        .routes
        .iter()
        .map(|r| r.policy.max_variants)
        .max()
        .unwrap_or(32);
    Arc::new(corral_cluster::warmup::Warmup::new(
        spec.warmup.clone(),
        corral_cluster::warmup::WarmupMetrics::register(registry),
        store.clone(),
        warmup_limits(cfg),
        max_variants,
    ))
}

/// What an entry record from a peer may hold: bodies up to the routes' largest
/// `max_object_size`.
fn warmup_limits(cfg: &Config) -> corral_core::entry::wire::Limits {
    let max_body = cfg
        .routes
        .iter()
        .map(|r| r.policy.max_object_size)
        .max()
        .unwrap_or(8 << 20);
    corral_core::entry::wire::Limits {
        max_body,
        ..Default::default()
    }
}

/// Warms the store from a peer when `[cluster] warmup` is on: readiness waits for it, or for
/// its deadline (`Warmup::receive` never takes longer).
async fn warm_up(admin: &admin::AdminState) {
    let (Some(cluster), Some(w)) = (admin.hub.cluster(), admin.warmup.as_ref()) else {
        return;
    };
    if !w.config.enabled {
        return;
    }
    admin.warming.store(true, Ordering::Release);
    w.receive(cluster).await;
    admin.warming.store(false, Ordering::Release);
}

/// Runs `corral serve` until SIGTERM/SIGINT, then drains.
async fn run(cfg: Config) -> ExitCode {
    let parts = match build(&cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("corral: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = parts.admin.sources.preflight().await {
        eprintln!("corral: configuration error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match serve(cfg, parts, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corral: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Binds both listeners and serves until `shutdown`, then drains within the grace period.
pub async fn serve(
    cfg: Config,
    parts: Gatewayd,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let mut listeners = Vec::new();
    if let Some(listen) = cfg.listen {
        let tcp = corral_http::server::bind(listen)
            .await
            .map_err(|e| e.to_string())?;
        listeners.push(corral_http::server::Listener::plain(tcp));
    }
    if let (Some(spec), Some(tls)) = (&cfg.tls, &parts.tls) {
        let tcp = corral_http::server::bind(spec.listen)
            .await
            .map_err(|e| e.to_string())?;
        tls.spawn_reloader();
        listeners.push(corral_http::server::Listener::tls(tcp, tls.clone()));
    }
    let admin_listener = corral_http::server::bind(cfg.admin_listen)
        .await
        .map_err(|e| e.to_string())?;
    if cfg.routes.is_empty() {
        tracing::warn!("no upstream configured: every proxied request gets 404 (give --upstream URL or [upstream] url)");
    }
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let app = admin::router(parts.admin.clone(), cfg.admin_max_body);
    let admin_task = tokio::spawn(admin_listener::serve(
        admin_listener,
        app,
        parts.admin_tls.clone(),
        async move {
            let _ = admin_stopped.await;
        },
    ));
    tokio::spawn(parts.reclaimer.clone().run());
    let me = cfg
        .cluster
        .as_ref()
        .map_or(cfg.admin_listen, |c| c.advertise);
    parts.admin.sources.start(parts.hub.clone(), me);
    tokio::spawn(ui::run_sampler(parts.admin.clone()));
    // Ready once every upstream's discovery has answered (or 5 s passed: it may be empty).
    for u in &parts.admin.upstreams {
        u.wait_for_endpoints(std::time::Duration::from_secs(5))
            .await;
    }
    warm_up(&parts.admin).await;
    parts.admin.ready.store(true, Ordering::Release);
    let listen = cfg.listen.map(|l| l.to_string());
    let tls_listen = cfg.tls.as_ref().map(|t| t.listen.to_string());
    tracing::info!(?listen, ?tls_listen, admin = %cfg.admin_listen, routes = cfg.routes.len(), "corral is serving");
    let admin = parts.admin.clone();
    let drain = async move {
        shutdown.await;
        admin.ready.store(false, Ordering::Release);
        tracing::info!(grace = ?cfg.shutdown_grace, "draining: readiness is now 503, no new connections");
    };
    corral_http::serve(
        listeners,
        parts.gateway,
        cfg.limits.clone(),
        drain,
        cfg.shutdown_grace,
    )
    .await;
    let _ = admin_stop.send(());
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
