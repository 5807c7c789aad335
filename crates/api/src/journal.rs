//! The verifiable journal over HTTP: signed checkpoints, inclusion proofs for a tenant's transfers,
//! consistency proofs between checkpoints, and the node's public key. The JSON is the same as the
//! CLI's proof files, so `puhui journal verify-proof` checks what these endpoints return.
//!
//! Checkpoints cover the whole ledger (every tenant): a tenant learns the tree size and root, never
//! another tenant's entries.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use puhui_store::verifiable::Error as VError;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::{ApiError, ErrorEnvelope};
use crate::models::scoped_lookup;
use crate::routes::ApiPath;
use crate::tenants::Principal;
use crate::AppState;

fn error(e: VError) -> ApiError {
    match e {
        VError::Disabled => ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            "the verifiable journal is switched off on this node",
        ),
        VError::NoCheckpoint | VError::CheckpointNotFound { .. } => ApiError::not_found("checkpoint", "size"),
        VError::TransferNotFound(_) | VError::EntryNotFound { .. } => ApiError::not_found("transfer", "id"),
        VError::NotCheckpointed { .. } => ApiError {
            retry_after_secs: Some(1),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                "not_checkpointed",
                "no signed checkpoint covers this entry yet; retry after the next checkpoint (about a second)",
            )
        },
        VError::InvalidRange { .. } => {
            ApiError::invalid("invalid_request", "`from` must not exceed `to`", Some("from"))
        }
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "internal_error", other.to_string()),
    }
}

fn json<T: serde::Serialize>(value: &T) -> Response {
    ([("content-type", "application/json")], serde_json::to_string(value).expect("proof types serialise"))
        .into_response()
}

async fn blocking<T: Send + 'static>(
    app: &Arc<AppState>,
    f: impl FnOnce(&puhui_store::EmbeddedStore) -> Result<T, VError> + Send + 'static,
) -> Result<T, ApiError> {
    blocking_raw(app, f).await?.map_err(error)
}

async fn blocking_raw<T: Send + 'static>(
    app: &Arc<AppState>,
    f: impl FnOnce(&puhui_store::EmbeddedStore) -> Result<T, VError> + Send + 'static,
) -> Result<Result<T, VError>, ApiError> {
    let store = Arc::clone(
        app.store
            .embedded()
            .ok_or_else(|| ApiError::not_available("the verifiable journal (checkpoints, proofs)"))?,
    );
    tokio::task::spawn_blocking(move || f(&store)).await.map_err(|_| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "internal_error", "proof task failed")
    })
}

/// The latest signed checkpoint (tree size, root, time, ed25519 signature).
#[utoipa::path(get, path = "/v1/journal/checkpoints/latest", tag = "journal",
    responses((status = 200, description = "checkpoint JSON"), (status = 404, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn latest_checkpoint(State(app): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let c = blocking(&app, |s| s.latest_checkpoint()).await?;
    Ok(json(&c))
}

/// The signed checkpoint of a tree size.
#[utoipa::path(get, path = "/v1/journal/checkpoints/{size}", tag = "journal",
    params(("size" = u64, Path, description = "tree size")),
    responses((status = 200, description = "checkpoint JSON"), (status = 404, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn checkpoint(
    State(app): State<Arc<AppState>>,
    ApiPath(size): ApiPath<String>,
) -> Result<Response, ApiError> {
    let size: u64 = size.parse().map_err(|_| ApiError::not_found("checkpoint", "size"))?;
    let c = blocking(&app, move |s| s.checkpoint(size)).await?;
    Ok(json(&c))
}

/// `?checkpoint=` of the proof endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProofQuery {
    /// Prove against this checkpoint size (default: the latest).
    pub checkpoint: Option<u64>,
}

/// An inclusion proof of one of your transfers against a signed checkpoint (verify offline with
/// `puhui journal verify-proof FILE --public-key KEY`).
#[utoipa::path(get, path = "/v1/transfers/{id}/proof", tag = "journal",
    params(("id" = String, Path, description = "transfer id"), ProofQuery),
    responses((status = 200, description = "inclusion proof JSON"), (status = 404, body = ErrorEnvelope),
              (status = 409, body = ErrorEnvelope, description = "not covered by a checkpoint yet")),
    security(("api_key" = [])))]
pub async fn transfer_proof(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    query: Result<Query<ProofQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let checkpoint = checkpoint_of(query)?;
    let id = scoped_lookup(&principal.tenant, &id, "transfer")?;
    proof_response(&app, checkpoint, move |s| s.inclusion_proof_for_transfer(&id, checkpoint)).await
}

fn checkpoint_of(
    query: Result<Query<ProofQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Option<u64>, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::invalid("invalid_request", e.body_text(), Some("checkpoint")))?;
    Ok(query.checkpoint)
}

/// Runs a proof on a blocking thread and answers it as JSON, or as the typed error.
async fn proof_response(
    app: &Arc<AppState>,
    checkpoint: Option<u64>,
    prove: impl FnOnce(&puhui_store::EmbeddedStore) -> Result<puhui_store::verifiable::InclusionProof, VError>
        + Send
        + 'static,
) -> Result<Response, ApiError> {
    match blocking_raw(app, prove).await? {
        Ok(proof) => Ok(json(&proof)),
        // No checkpoint at all yet: like an entry newer than the latest one, retry shortly.
        Err(VError::NoCheckpoint) if checkpoint.is_none() => {
            Err(error(VError::NotCheckpointed { seq: 0, checkpoint_size: 0 }))
        }
        Err(e) => Err(error(e)),
    }
}

/// An inclusion proof of one of your risk decisions (its journal record, with every input, feature
/// and fired rule) against a signed checkpoint.
#[utoipa::path(get, path = "/v1/decisions/{id}/proof", tag = "journal",
    params(("id" = String, Path, description = "decision id"), ProofQuery),
    responses((status = 200, description = "inclusion proof JSON"), (status = 404, body = ErrorEnvelope),
              (status = 409, body = ErrorEnvelope, description = "not covered by a checkpoint yet"),
              (status = 503, body = ErrorEnvelope,
               description = "an old decision while the events index reads the journal after a start")),
    security(("api_key" = [])))]
pub async fn decision_proof(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    query: Result<Query<ProofQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let checkpoint = checkpoint_of(query)?;
    let id = scoped_lookup(&principal.tenant, &id, "decision")?;
    let risk = app.risk.as_ref().ok_or_else(|| ApiError::not_found("decision", "id"))?;
    let seq = match risk.decision(id.as_str()) {
        Some(decision) => decision.journal_seq,
        // Older than the memory: its entry is read back (the id checked against the record, since
        // the memory keeps only the id's hash), then proved by its place.
        None => match crate::risk::forgotten_from_journal(&app, risk, id.as_str()).await? {
            Some((_, seq, _)) => Some(seq),
            None => return Err(ApiError::not_found("decision", "id")),
        },
    };
    let Some(seq) = seq else {
        return Err(error(VError::NotCheckpointed { seq: 0, checkpoint_size: 0 }));
    };
    proof_response(&app, checkpoint, move |s| s.inclusion_proof_for_entry(seq, checkpoint)).await
}

/// `?from=&to=` of the consistency endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    /// The older checkpoint's size.
    pub from: u64,
    /// The newer checkpoint's size.
    pub to: u64,
}

/// A consistency proof: the checkpoint of size `to` extends the one of size `from` (nothing was
/// rewritten in between).
#[utoipa::path(get, path = "/v1/journal/consistency", tag = "journal", params(ConsistencyQuery),
    responses((status = 200, description = "consistency proof JSON"), (status = 400, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn consistency(
    State(app): State<Arc<AppState>>,
    query: Result<Query<ConsistencyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("invalid_request", e.body_text(), Some("from")))?;
    let proof = blocking(&app, move |s| s.consistency(q.from, q.to)).await?;
    Ok(json(&proof))
}

/// The node's public key (hex) and key id, to verify checkpoints and proofs.
#[utoipa::path(get, path = "/v1/journal/public-key", tag = "journal",
    responses((status = 200, description = "{\"public_key\": hex, \"key_id\": …}"), (status = 404, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn public_key(State(app): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let key = blocking(&app, |s| s.public_key()).await?;
    Ok(json(&serde_json::json!({"object": "public_key", "public_key": key.to_hex(), "key_id": key.key_id()})))
}
