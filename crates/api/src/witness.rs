//! Checkpoint witnesses over the network: every signed checkpoint the node makes is published where
//! someone else holds it, so that a journal rewritten later (even with re-computed hashes and
//! re-signed checkpoints) is caught by a consistency check against what was witnessed
//! (`puhui journal verify --witness FILE`, docs/VERIFIABILITY.md).
//!
//! Two kinds, each run by its own task with its own cursor, so one being down does not hold up the
//! other or the API:
//! - **NATS JetStream** ([`NatsWitness`]): each checkpoint, as its JSON line, on subject
//!   `<subject>.<key id>` of a stream of its own (no age limit: checkpoints are ~300 bytes each).
//!   `Nats-Msg-Id: <key id>:<size>` makes a re-publish a no-op. The cursor is the last message on
//!   the subject, so a restart publishes exactly what is missing. A partner copies the stream into a
//!   witness file with `puhui journal witness-fetch`.
//! - **A partner's webhook** ([`WebhookWitness`]): `POST` of the JSON line, signed like every
//!   webhook (`Puhui-Signature`, HMAC-SHA256 with a shared secret), with `Puhui-Checkpoint-Size`.
//!   Any 2xx is an acknowledgement; anything else is retried with backoff, in order, forever.
//!   The cursor (last acknowledged size) is kept in `DATA_DIR/witness-webhook.json`; a receiver
//!   must accept a checkpoint it already holds (same size) again, since a crash between its
//!   answer and the cursor's save re-sends it.
//!
//! Checkpoints are sent oldest first and never skipped. At shutdown the store makes a last
//! checkpoint, then each witness gets up to [`WITNESS_SHUTDOWN_DRAIN_MS`] to publish it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::Publish, stream};
use puhui_store::verifiable::Checkpoint;
use puhui_store::EmbeddedStore;

/// How often a witness looks for new checkpoints.
pub const WITNESS_POLL_MS: u64 = 250;
/// Checkpoints published per look, at most.
pub const WITNESS_BATCH_MAX: usize = 256;
/// First retry delay after a failure; it doubles up to [`WITNESS_BACKOFF_MS_MAX`].
pub const WITNESS_BACKOFF_MS_MIN: u64 = 250;
/// Longest retry delay.
pub const WITNESS_BACKOFF_MS_MAX: u64 = 30_000;
/// Time a witness may take at shutdown to publish the last checkpoints.
pub const WITNESS_SHUTDOWN_DRAIN_MS: u64 = 5_000;
/// Time allowed for one NATS request or one webhook call.
pub const WITNESS_TIMEOUT_MS: u64 = 5_000;
/// The webhook witness's cursor file in the data directory.
pub const WEBHOOK_CURSOR_FILE: &str = "witness-webhook.json";
/// Header: the checkpoint's tree size (webhook witness).
pub const HEADER_CHECKPOINT_SIZE: &str = "Puhui-Checkpoint-Size";

/// Publish checkpoints to NATS JetStream.
#[derive(Debug, Clone)]
pub struct NatsWitness {
    /// Server URL, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The stream (created or updated at start); default `PUHUI_CHECKPOINTS`.
    pub stream: String,
    /// Subject prefix; each node's checkpoints go to `<subject>.<key id>`. Default
    /// `puhui_checkpoints` (outside the events stream's `puhui.>`).
    pub subject: String,
}

impl NatsWitness {
    /// Defaults for `url`.
    pub fn new(url: &str) -> NatsWitness {
        NatsWitness {
            url: url.into(),
            stream: "PUHUI_CHECKPOINTS".into(),
            subject: "puhui_checkpoints".into(),
        }
    }
}

/// POST checkpoints to a partner's URL.
#[derive(Clone)]
pub struct WebhookWitness {
    /// The partner's URL.
    pub url: String,
    /// The HMAC secret shared with the partner (`PUHUI_WITNESS_WEBHOOK_SECRET`).
    pub secret: String,
}

impl std::fmt::Debug for WebhookWitness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookWitness").field("url", &self.url).field("secret", &"…").finish()
    }
}

/// Which network witnesses run (the witness file is a store option).
#[derive(Debug, Clone, Default)]
pub struct WitnessConfig {
    /// `--witness-nats`.
    pub nats: Option<NatsWitness>,
    /// `--witness-webhook`.
    pub webhook: Option<WebhookWitness>,
}

impl WitnessConfig {
    /// Whether any network witness is configured.
    pub fn any(&self) -> bool {
        self.nats.is_some() || self.webhook.is_some()
    }
}

/// Starts one task per configured witness on the current runtime; they stop after `shutdown`
/// turns true (and the last checkpoint is out, or the drain time is up).
pub fn spawn(
    store: &Arc<EmbeddedStore>,
    config: WitnessConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    if !config.any() {
        return Ok(Vec::new());
    }
    let key_id = store
        .public_key()
        .map_err(|e| format!("checkpoint witnesses need the verifiable journal: {e}"))?
        .key_id();
    let mut handles = Vec::new();
    if let Some(nats) = config.nats {
        let sink = Sink::Nats { config: nats, key_id: key_id.clone(), js: None };
        handles.push(tokio::spawn(run(Arc::clone(store), sink, shutdown.clone())));
    }
    if let Some(webhook) = config.webhook {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(WITNESS_TIMEOUT_MS))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("puhui-witness/1")
            .build()
            .map_err(|e| format!("witness HTTP client: {e}"))?;
        let cursor = store.data_dir().join(WEBHOOK_CURSOR_FILE);
        handles.push(tokio::spawn(run(
            Arc::clone(store),
            Sink::Webhook { config: webhook, http, cursor },
            shutdown,
        )));
    }
    Ok(handles)
}

enum Sink {
    Nats { config: NatsWitness, key_id: String, js: Option<jetstream::Context> },
    Webhook { config: WebhookWitness, http: reqwest::Client, cursor: PathBuf },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WebhookCursor {
    url: String,
    size: u64,
}

impl Sink {
    fn name(&self) -> &'static str {
        match self {
            Sink::Nats { .. } => "nats",
            Sink::Webhook { .. } => "webhook",
        }
    }

    /// Connects if needed and returns the size of the last checkpoint the witness holds.
    async fn resume(&mut self) -> Result<u64, String> {
        match self {
            Sink::Nats { config, key_id, js } => {
                let context = puhui_events::connect_jetstream(&config.url, WITNESS_TIMEOUT_MS).await?;
                let wanted = stream::Config {
                    name: config.stream.clone(),
                    description: Some("puhui signed journal checkpoints (witness)".into()),
                    subjects: vec![format!("{}.>", config.subject)],
                    retention: stream::RetentionPolicy::Limits,
                    storage: stream::StorageType::File,
                    duplicate_window: Duration::from_secs(600),
                    ..Default::default()
                };
                let stream = match context.get_stream(&config.stream).await {
                    Ok(stream) => stream,
                    Err(_) => context
                        .create_stream(wanted)
                        .await
                        .map_err(|e| format!("creating stream {}: {e}", config.stream))?,
                };
                let subject = format!("{}.{key_id}", config.subject);
                let size = match stream.get_last_raw_message_by_subject(&subject).await {
                    Ok(message) => {
                        let c: Checkpoint = serde_json::from_slice(&message.payload)
                            .map_err(|e| format!("the last message on {subject} is not a checkpoint: {e}"))?;
                        c.size
                    }
                    Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => 0,
                    Err(e) => return Err(format!("reading the last checkpoint on {subject}: {e}")),
                };
                *js = Some(context);
                Ok(size)
            }
            Sink::Webhook { config, cursor, .. } => {
                let saved = std::fs::read(&*cursor)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<WebhookCursor>(&b).ok());
                Ok(saved.filter(|c| c.url == config.url).map_or(0, |c| c.size))
            }
        }
    }

    /// Publishes one checkpoint; `Ok` once the witness acknowledged it.
    async fn publish(&mut self, checkpoint: &Checkpoint) -> Result<(), String> {
        let line = checkpoint.to_line();
        match self {
            Sink::Nats { config, key_id, js } => {
                let js = js.as_ref().ok_or("not connected")?;
                let publish = Publish::build()
                    .payload(line.into_bytes().into())
                    .message_id(format!("{key_id}:{}", checkpoint.size));
                let ack = js
                    .send_publish(format!("{}.{key_id}", config.subject), publish)
                    .await
                    .map_err(|e| format!("publishing checkpoint {}: {e}", checkpoint.size))?;
                ack.await.map_err(|e| format!("acknowledgement of checkpoint {}: {e}", checkpoint.size))?;
                Ok(())
            }
            Sink::Webhook { config, http, .. } => {
                let t = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
                let signature =
                    crate::webhooks::signature_header([config.secret.as_str()], t, line.as_bytes());
                let response = http
                    .post(&config.url)
                    .header("Content-Type", "application/json")
                    .header(crate::webhooks::SIGNATURE_HEADER, signature)
                    .header(HEADER_CHECKPOINT_SIZE, checkpoint.size.to_string())
                    .body(line)
                    .send()
                    .await
                    .map_err(|e| format!("POST {}: {e}", config.url))?;
                if !response.status().is_success() {
                    return Err(format!("POST {}: HTTP {}", config.url, response.status().as_u16()));
                }
                Ok(())
            }
        }
    }

    /// Remembers the last acknowledged size where the witness cannot tell it (webhook).
    async fn save(&self, size: u64) {
        if let Sink::Webhook { config, cursor, .. } = self {
            let body =
                serde_json::to_vec(&WebhookCursor { url: config.url.clone(), size }).expect("serialises");
            let (path, tmp) = (cursor.clone(), cursor.with_extension("json.tmp"));
            let saved = tokio::task::spawn_blocking(move || {
                std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, &path))
            })
            .await;
            if let Ok(Err(e)) = saved {
                tracing::warn!(error = %e, "witness: cannot save the webhook cursor (checkpoints may be sent twice)");
            }
        }
    }
}

async fn run(store: Arc<EmbeddedStore>, mut sink: Sink, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let name = sink.name();
    let mut witnessed: Option<u64> = None;
    let mut backoff_ms = WITNESS_BACKOFF_MS_MIN;
    let mut deadline: Option<Instant> = None;
    let mut failing_since: Option<Instant> = None;
    loop {
        let stopping = *shutdown.borrow();
        if stopping && deadline.is_none() {
            deadline = Some(Instant::now() + Duration::from_millis(WITNESS_SHUTDOWN_DRAIN_MS));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(
                witness = name,
                "witness: stopping with checkpoints not yet witnessed; they go out at the next start"
            );
            return;
        }
        let round = async {
            let mut size = match witnessed {
                Some(size) => size,
                None => sink.resume().await?,
            };
            witnessed = Some(size);
            let batch = store.checkpoints_after(size, WITNESS_BATCH_MAX).map_err(|e| e.to_string())?;
            let more = batch.len() == WITNESS_BATCH_MAX;
            for checkpoint in &batch {
                sink.publish(checkpoint).await?;
                size = checkpoint.size;
                witnessed = Some(size);
                metrics::counter!("puhui_witness_published_total", "witness" => name).increment(1);
                metrics::gauge!("puhui_witness_size", "witness" => name).set(size as f64);
            }
            if !batch.is_empty() {
                sink.save(size).await;
            }
            Ok::<bool, String>(more)
        };
        match round.await {
            Ok(more) => {
                if failing_since.take().is_some() {
                    tracing::info!(witness = name, "witness: publishing again");
                }
                backoff_ms = WITNESS_BACKOFF_MS_MIN;
                if more {
                    continue;
                }
                if stopping {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(WITNESS_POLL_MS)) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Err(e) => {
                metrics::counter!("puhui_witness_errors_total", "witness" => name).increment(1);
                if failing_since.is_none() {
                    tracing::warn!(witness = name, error = %e, "witness: cannot publish checkpoints; retrying with backoff");
                    failing_since = Some(Instant::now());
                }
                if let Sink::Nats { js, .. } = &mut sink {
                    *js = None;
                    witnessed = None;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
                    _ = shutdown.changed() => {}
                }
                backoff_ms = (backoff_ms * 2).min(WITNESS_BACKOFF_MS_MAX);
            }
        }
    }
}
