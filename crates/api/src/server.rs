//! `puhui serve`: opens the data directory, binds, serves until SIGTERM/SIGINT, then drains in-flight
//! requests, lets the committer finish (its last group is synced and a snapshot written) and exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use puhui_store::{EmbeddedStore, StoreOptions, SystemClock};
use tokio::sync::Semaphore;

use crate::idempotency::{IdempotencyCache, RateLimiter};
use crate::limits::IN_FLIGHT_REQUESTS_MAX;
use crate::tenants::TenantRegistry;
use crate::AppState;

/// How to run the server (one typed place for its configuration).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The data directory (journal, snapshot, tenants, admin token).
    pub data_dir: PathBuf,
    /// Where to listen; port 0 picks a free port (printed on start).
    pub listen: SocketAddr,
    /// The admin token; from `PUHUI_ADMIN_TOKEN`, else read from or written to `DATA_DIR/admin.token`.
    pub admin_token: Option<String>,
    /// Sustained requests per second per API key.
    pub rate_limit_per_key: u32,
    /// Store tunables.
    pub store: StoreOptions,
    /// The risk ruleset file (TOML; model paths relative to it); `None` runs the shipped starter.
    pub ruleset: Option<PathBuf>,
    /// Publish every committed change to NATS JetStream (`--nats`); `None`: events are served by
    /// `GET /v1/events` and webhooks only.
    pub nats: Option<puhui_events::NatsConfig>,
    /// Velocity features shared by every node (`--redis`, `puhui-risk-redis`); `None`: each node
    /// keeps its own counters in memory.
    pub shared_features: Option<Arc<dyn puhui_risk::SharedFeatures>>,
    /// The ledger on PostgreSQL (`--store postgres://…[?schema=NAME]`, several nodes on one
    /// database); `None`: the embedded store in `data_dir`. The data directory still holds the
    /// tenants and the admin token.
    pub store_url: Option<String>,
}

fn admin_token(config: &ServeConfig) -> Result<String, String> {
    if let Some(token) = &config.admin_token {
        return Ok(token.clone());
    }
    let path = config.data_dir.join("admin.token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_string();
        if token.len() < 16 {
            return Err(format!(
                "{} holds an empty or short admin token (a crash while writing it?); delete it to generate a new one",
                path.display()
            ));
        }
        return Ok(token);
    }
    use rand::Rng;
    let token: String = {
        let mut rng = rand::rng();
        (0..40)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
            .collect()
    };
    let token = format!("adm_{token}");
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(token.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    tracing::info!(path = %path.display(), token = %token, "generated the admin token (shown once; it is in the file)");
    Ok(token)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down: no new connections; finishing requests in flight");
}

/// Runs the server until a termination signal. `on_listening` gets the bound address.
pub async fn serve(config: ServeConfig, on_listening: impl FnOnce(SocketAddr)) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
    if let Some(url) = &config.store_url {
        return serve_postgres(&config, url, on_listening).await;
    }
    let data_dir = config.data_dir.clone();
    let options = config.store.clone();
    let store = tokio::task::spawn_blocking(move || {
        EmbeddedStore::open_with(&data_dir, Arc::new(SystemClock), options)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let report = store.open_report().clone();
    tracing::info!(
        entries_replayed = report.entries_replayed,
        snapshot_entries = report.snapshot_entries,
        recovery_ms = report.recovery.as_millis() as u64,
        "ledger recovered"
    );
    if let Some(e) = &report.snapshot_error {
        tracing::warn!(error = %e, "the snapshot was not usable; replayed the whole journal");
    }
    if let Some(path) = &report.torn_tail_saved_to {
        tracing::warn!(saved = %path.display(), "cut a torn journal tail (an unacknowledged write)");
    }
    let tenants = TenantRegistry::open(&config.data_dir)?;
    let metrics = install_metrics()?;
    let store = Arc::new(store);
    let risk = start_risk(&config, crate::Backend::Embedded(Arc::clone(&store)), "the journal").await?;
    let (event_log, webhooks, event_tasks) = crate::events::start(&store, config.nats.clone())?;
    let state = Arc::new(AppState {
        store: crate::Backend::Embedded(Arc::clone(&store)),
        tenants: Arc::new(tenants),
        idempotency: IdempotencyCache::default(),
        limiter: RateLimiter::new(config.rate_limit_per_key),
        admin_token: admin_token(&config)?,
        metrics,
        in_flight: Arc::new(Semaphore::new(IN_FLIGHT_REQUESTS_MAX)),
        risk: Some(Arc::new(risk)),
        events: Some(event_log),
        webhooks: Some(webhooks),
    });
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.map_err(|e| format!("{}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    on_listening(addr);
    axum::serve(listener, crate::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
    // Every request has been answered; let the committer sync its last group and snapshot.
    tokio::task::spawn_blocking(move || store.shutdown()).await.map_err(|e| e.to_string())?;
    // Then the relay publishes what is durable and the webhook dispatcher saves its state.
    event_tasks.stop().await;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Starts risk control on either backend: reads `--ruleset`, says whether velocity counters are
/// shared (Redis) or per node, and replays the risk records from `journal` (named in the log).
async fn start_risk(
    config: &ServeConfig,
    store: crate::Backend,
    journal: &'static str,
) -> Result<crate::risk::RiskService, String> {
    let startup = match &config.ruleset {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let dir = path.parent().unwrap_or(std::path::Path::new(".")).to_path_buf();
            Some((text, dir))
        }
        None => None,
    };
    match &config.shared_features {
        Some(shared) => {
            tracing::info!(backend = ?shared, "velocity counters are shared by every node (Redis)")
        }
        None => tracing::info!(
            "velocity counters are per node (in memory): with several nodes each sees only its own events; \
             use --redis to share them"
        ),
    }
    let shared_features = config.shared_features.clone();
    let (risk, restore) =
        tokio::task::spawn_blocking(move || crate::risk::RiskService::open(store, startup, shared_features))
            .await
            .map_err(|e| e.to_string())??;
    tracing::info!(
        active = %restore.active,
        shadow = ?restore.shadow,
        records = restore.records,
        decisions = restore.decisions,
        "risk control ready (records replayed from {journal})"
    );
    Ok(risk)
}

/// Opens the state shared by both backends: the metrics recorder (and its upkeep task).
fn install_metrics() -> Result<Option<metrics_exporter_prometheus::PrometheusHandle>, String> {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0])
        .map_err(|e| e.to_string())?
        .install_recorder()
        .ok();
    if let Some(handle) = metrics.clone() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    }
    Ok(metrics)
}

/// `serve` on PostgreSQL: the ledger, the risk records and the webhook state live in the database
/// (every node on it sees the same ledger and serves every node's events); tenants and the admin
/// token stay in the data directory. The NATS relay and the webhook dispatcher run on one node at a
/// time (a lease). The verifiable-journal endpoints need the embedded journal file: they answer
/// `not_available` here.
async fn serve_postgres(
    config: &ServeConfig,
    url: &str,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let (base, schema) = puhui_store_pg::split_schema(url);
    let redacted = puhui_store_pg::redact(&base);
    let options = puhui_store_pg::PgOptions { schema: schema.clone(), ..Default::default() };
    let store = tokio::task::spawn_blocking(move || puhui_store_pg::PgStore::open_with(&base, options))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("opening the PostgreSQL store: {e}"))?;
    let pg = Arc::new(store);
    let store = crate::Backend::Postgres(Arc::clone(&pg));
    tracing::info!(url = %redacted, schema = ?schema, "ledger on PostgreSQL (schema migrated)");
    let tenants = TenantRegistry::open(&config.data_dir)?;
    let metrics = install_metrics()?;
    let risk = start_risk(config, store.clone(), "the SQL journal").await?;
    let (event_log, webhooks, event_tasks) =
        crate::events::start_postgres(&pg, config.nats.clone(), &config.data_dir).await?;
    tracing::warn!(
        "the verifiable-journal endpoints are disabled on PostgreSQL (they answer 501 not_available)"
    );
    let state = Arc::new(AppState {
        store: store.clone(),
        tenants: Arc::new(tenants),
        idempotency: IdempotencyCache::default(),
        limiter: RateLimiter::new(config.rate_limit_per_key),
        admin_token: admin_token(config)?,
        metrics,
        in_flight: Arc::new(Semaphore::new(IN_FLIGHT_REQUESTS_MAX)),
        risk: Some(Arc::new(risk)),
        events: Some(event_log),
        webhooks: Some(webhooks),
    });
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.map_err(|e| format!("{}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    on_listening(addr);
    axum::serve(listener, crate::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
    // Every request has been answered; the committers finish what is queued.
    tokio::task::spawn_blocking(move || store.shutdown()).await.map_err(|e| e.to_string())?;
    // Then the relay publishes what is durable and the webhook dispatcher stops.
    event_tasks.stop().await;
    tracing::info!("stopped cleanly");
    Ok(())
}
