//! `puhui serve`: opens the data directory, binds, serves until SIGTERM/SIGINT, then drains in-flight
//! requests, lets the committer finish (its last group is synced and a snapshot written) and exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use puhui_store::{EmbeddedStore, StoreOptions, SystemClock};
use tokio::sync::Semaphore;

use crate::idempotency::{Idempotency, RateLimiter};
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
    /// The risk feature store's bounds (`--risk-keys-max`, `--risk-events-per-key-max`).
    pub feature_limits: puhui_risk::FeatureLimits,
    /// When the risk snapshot is written while serving (`--risk-snapshot-every`,
    /// `--risk-snapshot-interval-min-secs`; embedded store only).
    pub risk_snapshots: crate::risk::CheckpointPolicy,
    /// Publish every committed change to NATS JetStream (`--nats`); `None`: events are served by
    /// `GET /v1/events` and webhooks only.
    pub nats: Option<puhui_events::NatsConfig>,
    /// Velocity features shared by every node (`--redis`, `puhui-risk-redis`); `None`: each node
    /// keeps its own counters in memory.
    pub shared_features: Option<Arc<dyn puhui_risk::SharedFeatures>>,
    /// The ledger on PostgreSQL (`--store postgres://…[?schema=NAME]`, several nodes on one
    /// database); `None`: the embedded store in `data_dir`. On PostgreSQL the data directory holds
    /// only the admin token this node generated (everything else is in the database).
    pub store_url: Option<String>,
    /// Network witnesses of the signed checkpoints (`--witness-nats`, `--witness-webhook`;
    /// embedded store only, like the verifiable journal).
    pub witness: crate::witness::WitnessConfig,
}

/// The admin token in `DATA_DIR/admin.token`, if the file is there.
fn file_admin_token(config: &ServeConfig) -> Result<Option<String>, String> {
    let path = config.data_dir.join(ADMIN_TOKEN_FILE);
    let Ok(token) = std::fs::read_to_string(&path) else { return Ok(None) };
    let token = token.trim().to_string();
    if token.len() < 16 {
        return Err(format!(
            "{} holds an empty or short admin token (a crash while writing it?); delete it to generate a new one",
            path.display()
        ));
    }
    Ok(Some(token))
}

/// Generates an admin token and writes it to `DATA_DIR/admin.token` (mode 0600, fsync'd).
fn generate_admin_token(config: &ServeConfig) -> Result<String, String> {
    use rand::Rng;
    let path = config.data_dir.join(ADMIN_TOKEN_FILE);
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
    Ok(token)
}

/// The admin token's SHA-256 on the embedded store: `PUHUI_ADMIN_TOKEN`, else `DATA_DIR/admin.token`,
/// else a new token written there (and logged once).
fn admin_token(config: &ServeConfig) -> Result<[u8; 32], String> {
    if let Some(token) = &config.admin_token {
        return Ok(crate::sha256(token.as_bytes()));
    }
    if let Some(token) = file_admin_token(config)? {
        return Ok(crate::sha256(token.as_bytes()));
    }
    let token = generate_admin_token(config)?;
    let path = config.data_dir.join(ADMIN_TOKEN_FILE);
    tracing::info!(path = %path.display(), token = %token, "generated the admin token (shown once; it is in the file)");
    Ok(crate::sha256(token.as_bytes()))
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The admin token's SHA-256 on PostgreSQL, shared by every node (setting [`ADMIN_TOKEN_SETTING`]):
/// `PUHUI_ADMIN_TOKEN` sets it (replacing another: a rotation); else the database's stands; else
/// this node's `DATA_DIR/admin.token`, or a new token written there, is stored unless another node
/// stored one first. A node that did not make the token verifies against the hash only.
fn admin_token_shared(
    config: &ServeConfig,
    control: &puhui_store_pg::control::PgControl,
) -> Result<[u8; 32], String> {
    let db = |e: puhui_store::StoreError| format!("the admin token in PostgreSQL: {e}");
    if let Some(token) = &config.admin_token {
        let hash = crate::sha256(token.as_bytes());
        let old = control.set_setting(ADMIN_TOKEN_SETTING, &hex(&hash)).map_err(db)?;
        if old.is_some_and(|old| old != hex(&hash)) {
            tracing::warn!("PUHUI_ADMIN_TOKEN replaced the admin token every node on this database accepted");
        }
        return Ok(hash);
    }
    let parse = |text: &str| -> Result<[u8; 32], String> {
        let bytes: Vec<u8> = (0..text.len())
            .step_by(2)
            .filter_map(|i| text.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
            .collect();
        bytes.try_into().map_err(|_| format!("setting {ADMIN_TOKEN_SETTING} is not a SHA-256 in hex"))
    };
    let file = file_admin_token(config)?;
    if let Some(stored) = control.setting(ADMIN_TOKEN_SETTING).map_err(db)? {
        let hash = parse(&stored)?;
        if file.is_some_and(|t| crate::sha256(t.as_bytes()) != hash) {
            tracing::warn!(
                "{} is not the admin token of this database (another node's stands)",
                config.data_dir.join(ADMIN_TOKEN_FILE).display()
            );
        }
        return Ok(hash);
    }
    let (token, generated) = match file {
        Some(token) => (token, false),
        None => (generate_admin_token(config)?, true),
    };
    let ours = crate::sha256(token.as_bytes());
    let stands = parse(&control.setting_or_insert(ADMIN_TOKEN_SETTING, &hex(&ours)).map_err(db)?)?;
    if stands != ours {
        // Another node got there first: its token stands.
        if generated {
            let _ = std::fs::remove_file(config.data_dir.join(ADMIN_TOKEN_FILE));
        }
        return Ok(stands);
    }
    if generated {
        let path = config.data_dir.join(ADMIN_TOKEN_FILE);
        tracing::info!(path = %path.display(), token = %token,
            "generated the admin token of this database (shown once; it is in the file)");
    }
    Ok(ours)
}

/// The file holding the admin token in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// On PostgreSQL: the setting holding the admin token's SHA-256.
pub const ADMIN_TOKEN_SETTING: &str = "admin_token_sha256";

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
        if config.witness.any() {
            return Err("checkpoint witnesses (--witness-nats, --witness-webhook) need the embedded store: the verifiable journal is embedded-only".into());
        }
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
    // Idempotency claims are read back in the same pass over the journal as the risk records (and
    // risk control's snapshot carries them, so that pass starts at its position).
    let idempotency = Arc::new(crate::idempotency::IdempotencyCache::default());
    let risk = start_risk(
        &config,
        crate::Backend::Embedded(Arc::clone(&store)),
        "the journal",
        Some(Arc::clone(&idempotency)),
    )
    .await?;
    tracing::info!(keys = idempotency.len(), "idempotency keys of the last 24 hours read back");
    let (event_log, webhooks, mut event_tasks) = crate::events::start(&store, config.nats.clone())?;
    event_tasks.add(|shutdown| crate::witness::spawn(&store, config.witness.clone(), shutdown))?;
    let state = Arc::new(AppState {
        store: crate::Backend::Embedded(Arc::clone(&store)),
        tenants: Arc::new(tenants),
        idempotency: Idempotency::Memory(idempotency),
        limiter: RateLimiter::new(config.rate_limit_per_key),
        admin_token_sha256: admin_token(&config)?,
        metrics,
        in_flight: Arc::new(Semaphore::new(IN_FLIGHT_REQUESTS_MAX)),
        risk: Some(Arc::new(risk)),
        events: Some(event_log),
        webhooks: Some(webhooks),
    });
    listen_and_serve(config.listen, state, event_tasks, on_listening).await
}

/// Binds `listen`, serves until SIGTERM/SIGINT and every request in flight is answered, then lets
/// the store finish what is queued (the embedded committer syncs its last group and snapshots;
/// PostgreSQL's committers commit theirs), and only then lets the relay publish what is durable and
/// the webhook dispatcher save its state.
async fn listen_and_serve(
    listen: SocketAddr,
    state: Arc<AppState>,
    event_tasks: crate::events::EventTasks,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let (store, risk) = (state.store.clone(), state.risk.clone());
    if let Some(risk) = risk.clone() {
        // The queue is made to match the ledger's open review holds: those missing get their
        // review back, and the replay's reviews of holds resolved since (or never recorded) leave
        // (in the background: requests meanwhile see a queue that looks fuller, or lacks a review).
        let app = Arc::clone(&state);
        tokio::spawn(async move {
            match crate::risk::reviews_at_start(&app, &risk).await {
                Ok(done) => {
                    metrics::gauge!("puhui_risk_start_reviews_restored").set(done.restored as f64);
                    metrics::gauge!("puhui_risk_start_reviews_dropped").set(done.dropped as f64);
                    tracing::info!(
                        restored = done.restored,
                        without_review = done.without_review,
                        dropped = done.dropped,
                        open = risk.review_ids().len(),
                        "review queue checked against the open review holds"
                    )
                }
                Err(e) => tracing::warn!(error = %e.message, "could not check the reviews' holds at start"),
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("{listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    on_listening(addr);
    // TCP_NODELAY on every connection: with Nagle's algorithm a response written in two segments
    // waits for the client's delayed ACK (up to 40 ms), and with every connection in flight
    // waiting, a fixed-rate client saw ~100 ms stalls that no server histogram showed.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
    });
    axum::serve(listener, crate::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
    if let Some(risk) = risk.clone() {
        tokio::task::spawn_blocking(move || risk.confirm_shared()).await.map_err(|e| e.to_string())?;
    }
    tokio::task::spawn_blocking(move || {
        store.shutdown();
        // Everything decided is durable now: the next start re-applies only what comes after.
        match risk.map(|risk| risk.write_snapshot()) {
            Some(Ok(Some(w))) => tracing::info!(
                entries = w.entries,
                bytes = w.bytes,
                took_ms = w.took.as_millis() as u64,
                "risk snapshot saved"
            ),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "could not save a risk snapshot; the next start re-applies more")
            }
            _ => {}
        }
    })
    .await
    .map_err(|e| e.to_string())?;
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
    idempotency: Option<Arc<crate::idempotency::IdempotencyCache>>,
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
    let feature_limits = config.feature_limits;
    let (risk, restore) = tokio::task::spawn_blocking(move || {
        crate::risk::RiskService::open(store, startup, shared_features, feature_limits, idempotency)
    })
    .await
    .map_err(|e| e.to_string())??;
    tracing::info!(
        active = %restore.active,
        shadow = ?restore.shadow,
        records = restore.records,
        decisions = restore.decisions,
        snapshot_entries = ?restore.snapshot_entries,
        carried = restore.carried,
        entries_read = restore.entries_read,
        skipped = restore.skipped,
        "risk control ready (records replayed from {journal})"
    );
    // What the start cost, for an operator to see on /metrics: decisions re-applied from the
    // journal, the journal entries read (from the risk snapshot's position on, if one was used)
    // and the records (rulesets, lists, idempotency keys) the snapshot carried instead.
    metrics::gauge!("puhui_risk_start_decisions_replayed").set(restore.decisions as f64);
    metrics::gauge!("puhui_risk_start_journal_entries_read").set(restore.entries_read as f64);
    metrics::gauge!("puhui_risk_start_records_carried").set(restore.carried as f64);
    if let Some(e) = &restore.snapshot_error {
        tracing::warn!(error = %e, "the risk snapshot was not used; re-applied every risk record");
    }
    match &restore.snapshot_written {
        Some(Ok(w)) => tracing::info!(
            entries = w.entries,
            bytes = w.bytes,
            took_ms = w.took.as_millis() as u64,
            "risk snapshot saved after a long replay"
        ),
        Some(Err(e)) => tracing::warn!(error = %e, "could not save a risk snapshot"),
        None => {}
    }
    risk.start_checkpoints(config.risk_snapshots)?;
    Ok(risk)
}

/// Opens the state shared by both backends: the metrics recorder (and its upkeep task).
fn install_metrics() -> Result<Option<metrics_exporter_prometheus::PrometheusHandle>, String> {
    // Fine between 1 and 6 ms, so that a p99 can be read against the 5 ms target.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005, 0.006, 0.01, 0.025,
            0.05, 0.1, 0.25, 1.0,
        ])
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

/// Applies the risk records other nodes journal, every [`crate::risk::FOLLOW_EVERY_MS`].
fn spawn_risk_follower(risk: Arc<crate::risk::RiskService>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(crate::risk::FOLLOW_EVERY_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let risk = Arc::clone(&risk);
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || risk.catch_up()).await {
                tracing::warn!(error = %e, "following the risk records of other nodes");
            }
        }
    });
}

/// Reloads a shared tenant registry every [`crate::tenants::REGISTRY_RELOAD_MS`] (revocations made
/// on other nodes).
fn spawn_registry_reload(tenants: Arc<TenantRegistry>) {
    tokio::spawn(async move {
        let mut tick =
            tokio::time::interval(std::time::Duration::from_millis(crate::tenants::REGISTRY_RELOAD_MS));
        loop {
            tick.tick().await;
            let tenants = Arc::clone(&tenants);
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || tenants.reload()).await {
                tracing::warn!(error = %e, "reloading the tenant registry");
            }
        }
    });
}

/// `serve` on PostgreSQL: the ledger, the risk records, tenants and keys, the admin token's hash,
/// idempotency keys and the webhook state live in the database, so every node on it is stateless
/// (sees the same ledger, serves every node's events). The NATS relay and the webhook dispatcher
/// run on one node at a time (a lease). The verifiable-journal endpoints need the embedded journal
/// file: they answer `not_available` here.
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
    let (base, schema) = puhui_store_pg::split_schema(url);
    let control = tokio::task::spawn_blocking(move || {
        let control = Arc::new(
            puhui_store_pg::control::PgControl::open(&base, schema.as_deref())
                .map_err(|e| format!("opening the control tables: {e}"))?,
        );
        let tenants = TenantRegistry::open_postgres(Arc::clone(&control))?;
        Ok::<_, String>((control, tenants))
    });
    let (control, tenants) = control.await.map_err(|e| e.to_string())??;
    let admin_token_sha256 = {
        let (config, control) = (config.clone(), Arc::clone(&control));
        tokio::task::spawn_blocking(move || admin_token_shared(&config, &control))
            .await
            .map_err(|e| e.to_string())??
    };
    tracing::info!("tenants, API keys, the admin token and idempotency keys are shared through PostgreSQL");
    let tenants = Arc::new(tenants);
    spawn_registry_reload(Arc::clone(&tenants));
    let idempotency = Idempotency::Postgres(control);
    idempotency.spawn_expiry();
    let metrics = install_metrics()?;
    let risk = Arc::new(start_risk(config, store.clone(), "the SQL journal", None).await?);
    spawn_risk_follower(Arc::clone(&risk));
    let (event_log, webhooks, event_tasks) =
        crate::events::start_postgres(&pg, config.nats.clone(), &config.data_dir).await?;
    tracing::warn!(
        "the verifiable-journal endpoints are disabled on PostgreSQL (they answer 501 not_available)"
    );
    let state = Arc::new(AppState {
        store: store.clone(),
        tenants,
        idempotency,
        limiter: RateLimiter::new(config.rate_limit_per_key),
        admin_token_sha256,
        metrics,
        in_flight: Arc::new(Semaphore::new(IN_FLIGHT_REQUESTS_MAX)),
        risk: Some(risk),
        events: Some(event_log),
        webhooks: Some(webhooks),
    });
    listen_and_serve(config.listen, state, event_tasks, on_listening).await
}
