//! booking-service: lab-test packages (inclusions, prices, providers) from SQLite, cached
//! in-process with `corral-cache`, coherent across replicas.
//!
//! ```text
//! GET  /packages              every package (cached list)
//! GET  /packages/{id}         one package: inclusions, price, providers (x-cache: hit|miss)
//! PUT  /admin/packages/{id}/price   {"price_cents": 1999}   write-through, every replica sees it
//! GET  /healthz  /readyz  /metrics
//! ```
//!
//! Coherence: `--sidecar http://127.0.0.1:9090` follows the local Corral's invalidation feed
//! (and publishes through it); or `--cluster-listen ADDR --peer ADDR...` joins the cluster
//! directly (CORRAL_CLUSTER_SECRET in the environment). See README.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use clap::Parser;
use corral_cache::{BoxError, Cache, LibraryMetrics};
use serde::{Deserialize, Serialize};

#[derive(Parser, Debug)]
#[command(about = "Example booking service cached with corral-cache")]
struct Args {
    /// Where to serve HTTP.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// The SQLite database file (shared by every replica).
    #[arg(long, default_value = "booking.db")]
    db: PathBuf,
    /// Create the schema and demo data if the database is empty.
    #[arg(long)]
    seed: bool,
    /// This replica's name (in responses and cluster events).
    #[arg(long, default_value = "booking")]
    name: String,
    /// The co-located Corral's admin URL: follow its invalidation feed.
    #[arg(long)]
    sidecar: Option<String>,
    /// Join the cluster directly: listen for peers' events here.
    #[arg(long)]
    cluster_listen: Option<SocketAddr>,
    /// Cluster peers (with --cluster-listen), repeatable.
    #[arg(long = "peer")]
    peers: Vec<SocketAddr>,
    /// Cache time-to-live, the safety net under invalidation.
    #[arg(long, default_value = "300")]
    ttl_secs: u64,
    /// Verifier period: sample cached packages and compare them with the database.
    #[arg(long, default_value = "60")]
    verify_every_secs: u64,
}

/// One package as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Package {
    pub id: u64,
    pub name: String,
    pub price_cents: i64,
    pub version: u64,
    pub inclusions: Vec<String>,
    pub providers: Vec<Provider>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provider {
    pub name: String,
    pub city: String,
}

/// id, name, price, inclusions, providers (name, city).
type SeedPackage = (
    u64,
    &'static str,
    i64,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

struct Db {
    path: PathBuf,
}

impl Db {
    fn open(&self) -> rusqlite::Result<rusqlite::Connection> {
        let c = rusqlite::Connection::open(&self.path)?;
        c.busy_timeout(Duration::from_secs(5))?;
        c.pragma_update(None, "journal_mode", "WAL")?;
        Ok(c)
    }

    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, BoxError> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = db.open()?;
            f(&mut c)
        })
        .await?
        .map_err(Into::into)
    }

    fn seed(&self) -> rusqlite::Result<()> {
        let c = self.open()?;
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS packages (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                 price_cents INTEGER NOT NULL, version INTEGER NOT NULL DEFAULT 1);
             CREATE TABLE IF NOT EXISTS inclusions (package_id INTEGER NOT NULL, test TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS providers (package_id INTEGER NOT NULL, name TEXT NOT NULL,
                 city TEXT NOT NULL);",
        )?;
        let n: i64 = c.query_row("SELECT COUNT(*) FROM packages", [], |r| r.get(0))?;
        if n > 0 {
            return Ok(());
        }
        let packages: [SeedPackage; 4] = [
            (
                1,
                "Basic health check",
                4900,
                &["Complete blood count", "Fasting glucose", "Lipid panel"],
                &[("North Lab", "Pune"), ("CityDiag", "Mumbai")],
            ),
            (
                2,
                "Thyroid profile",
                2900,
                &["TSH", "Free T3", "Free T4"],
                &[("North Lab", "Pune")],
            ),
            (
                3,
                "Diabetes care",
                3900,
                &["HbA1c", "Fasting glucose", "Urine microalbumin"],
                &[("CityDiag", "Mumbai"), ("Sunrise Labs", "Delhi")],
            ),
            (
                4,
                "Full body premium",
                12900,
                &[
                    "Complete blood count",
                    "Lipid panel",
                    "Liver function",
                    "Kidney function",
                    "Vitamin D",
                    "Vitamin B12",
                ],
                &[("Sunrise Labs", "Delhi")],
            ),
        ];
        for (id, name, price, tests, providers) in packages {
            c.execute(
                "INSERT INTO packages (id, name, price_cents) VALUES (?1, ?2, ?3)",
                rusqlite::params![id, name, price],
            )?;
            for t in tests {
                c.execute(
                    "INSERT INTO inclusions VALUES (?1, ?2)",
                    rusqlite::params![id, t],
                )?;
            }
            for (p, city) in providers {
                c.execute(
                    "INSERT INTO providers VALUES (?1, ?2, ?3)",
                    rusqlite::params![id, p, city],
                )?;
            }
        }
        Ok(())
    }
}

fn load_package(c: &rusqlite::Connection, id: u64) -> rusqlite::Result<Option<Package>> {
    use rusqlite::OptionalExtension;
    let Some((name, price_cents, version)) = c
        .query_row(
            "SELECT name, price_cents, version FROM packages WHERE id = ?1",
            [id],
            |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?
    else {
        return Ok(None);
    };
    let mut s = c.prepare("SELECT test FROM inclusions WHERE package_id = ?1 ORDER BY rowid")?;
    let inclusions = s
        .query_map([id], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    let mut s =
        c.prepare("SELECT name, city FROM providers WHERE package_id = ?1 ORDER BY rowid")?;
    let providers = s
        .query_map([id], |r| {
            Ok(Provider {
                name: r.get(0)?,
                city: r.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<Provider>>>()?;
    Ok(Some(Package {
        id,
        name,
        price_cents,
        version,
        inclusions,
        providers,
    }))
}

struct App {
    name: String,
    db: Arc<Db>,
    packages: Cache<u64, Package>,
    registry: prometheus_client::registry::Registry,
    coherence: Coherence,
}

enum Coherence {
    None,
    Sidecar(corral_cache::sidecar::Sidecar),
    Member(corral_cache::cluster::Member),
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BOOKING_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("booking-service: {e}");
        std::process::exit(2);
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    let db = Arc::new(Db {
        path: args.db.clone(),
    });
    if args.seed {
        db.seed()
            .map_err(|e| format!("seeding {}: {e}", args.db.display()))?;
    }
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = LibraryMetrics::register(&mut registry);
    let loader_db = db.clone();
    let packages: Cache<u64, Package> = Cache::builder("packages")
        .schema_version(1)
        .max_bytes(16 << 20)
        .weigher(|_, p: &Package| {
            (p.name.len()
                + p.inclusions.iter().map(String::len).sum::<usize>()
                + p.providers.len() * 48) as u32
        })
        .time_to_live(Duration::from_secs(args.ttl_secs))
        .negative_ttl(Duration::from_secs(5))
        .xfetch_beta(1.0)
        .tags(|_, p: &Package| {
            p.providers
                .iter()
                .map(|pr| format!("provider-{}", pr.name))
                .collect()
        })
        .loader(move |id: u64| {
            let db = loader_db.clone();
            async move { db.run(move |c| load_package(c, id)).await }
        })
        .metrics(&metrics)
        .build()?;

    let coherence = if let Some(url) = &args.sidecar {
        let s =
            corral_cache::sidecar::Sidecar::connect(url, std::env::var("CORRAL_ADMIN_TOKEN").ok());
        s.attach(&packages);
        s.register_metrics(&mut registry);
        // Warm only once the feed is followed: connecting empties the cache (events may
        // have been missed before it).
        if !s.wait_connected(Duration::from_secs(10)).await {
            tracing::warn!(
                url,
                "the sidecar's feed is not connected yet; not ready until it is"
            );
        }
        Coherence::Sidecar(s)
    } else if let Some(listen) = args.cluster_listen {
        let secret = std::env::var("CORRAL_CLUSTER_SECRET")
            .map_err(|_| "--cluster-listen needs CORRAL_CLUSTER_SECRET in the environment")?;
        let m = corral_cache::cluster::Member::start(corral_cache::cluster::MemberConfig {
            listen,
            advertise: None,
            instance: args.name.clone(),
            secret,
            peers: corral_discovery::Spec::Static(args.peers.iter().map(|a| (*a, 1)).collect()),
        })
        .await?;
        m.attach(&packages);
        Coherence::Member(m)
    } else {
        tracing::warn!("no --sidecar and no --cluster-listen: this replica's cache is not coherent with others (TTL only)");
        Coherence::None
    };
    // Warm the hot keys (every package id), staggered with jitter, before reporting ready.
    let ids: Vec<u64> = db
        .run(|c| {
            let mut s = c.prepare("SELECT id FROM packages ORDER BY id")?;
            let ids = s.query_map([], |r| r.get(0))?.collect();
            ids
        })
        .await?;
    let warm = {
        let p = packages.clone();
        tokio::spawn(async move {
            let r = p.warm(ids, corral_cache::warming::Warm::default()).await;
            tracing::info!(?r, "cache warmed");
        })
    };
    // The verifier: up to 20 entries per period compared with the database.
    packages.spawn_verifier(Duration::from_secs(args.verify_every_secs.max(1)), 20);

    let app = Arc::new(App {
        name: args.name.clone(),
        db,
        packages,
        registry,
        coherence,
    });
    let router = Router::new()
        .route("/packages", get(list))
        .route("/packages/{id}", get(one))
        .route("/admin/packages/{id}/price", put(set_price))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    tracing::info!(listen = %args.listen, name = %args.name, "booking-service is serving");
    drop(warm);
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let ready = app.packages.is_ready()
        && match &app.coherence {
            Coherence::Sidecar(s) => s.is_connected(),
            _ => true,
        };
    if ready {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "warming or not connected").into_response()
    }
}

async fn one(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("package id {id:?} is not a number"),
        );
    };
    let hit = app.packages.contains_key(&id);
    match app.packages.get_or_load(id).await {
        Ok(Some(p)) => {
            let mut h = HeaderMap::new();
            h.insert(
                "x-cache",
                HeaderValue::from_static(if hit { "hit" } else { "miss" }),
            );
            h.insert(
                "x-served-by",
                HeaderValue::from_str(&app.name).unwrap_or(HeaderValue::from_static("?")),
            );
            (h, Json(p)).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no package {id}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}")),
    }
}

async fn list(State(app): State<Arc<App>>) -> Response {
    let ids = match app
        .db
        .run(|c| {
            let mut s = c.prepare("SELECT id FROM packages ORDER BY id")?;
            let ids: rusqlite::Result<Vec<u64>> = s.query_map([], |r| r.get(0))?.collect();
            ids
        })
        .await
    {
        Ok(ids) => ids,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}")),
    };
    let mut out = Vec::new();
    for id in ids {
        match app.packages.get_or_load(id).await {
            Ok(Some(p)) => out.push(p),
            Ok(None) => {}
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}")),
        }
    }
    Json(out).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceBody {
    price_cents: i64,
}

async fn set_price(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Result<Json<PriceBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("package id {id:?} is not a number"),
        );
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if !(0..=100_000_000).contains(&body.price_cents) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "price_cents = {}: expected 0 to 100000000",
                body.price_cents
            ),
        );
    }
    let price = body.price_cents;
    // Write-through: the database first (the row's version is bumped in the same statement),
    // then this replica's cache guarded by that version, then every other replica is told.
    let updated = app
        .db
        .run(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE packages SET price_cents = ?1, version = version + 1 WHERE id = ?2",
                rusqlite::params![price, id],
            )?;
            let p = if n == 0 { None } else { load_package(&tx, id)? };
            tx.commit()?;
            Ok(p)
        })
        .await;
    let p = match updated {
        Ok(Some(p)) => p,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no package {id}")),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}")),
    };
    let version = p.version;
    let written = p.clone();
    let r = app
        .packages
        .write_through(id, written, async move { Ok::<_, BoxError>(version) })
        .await;
    if let Err(e) = r {
        return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    Json(p).into_response()
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &app.registry);
    if let Coherence::Member(m) = &app.coherence {
        out.push_str(&m.metrics_text());
    }
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
