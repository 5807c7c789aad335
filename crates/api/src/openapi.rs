//! The OpenAPI 3.1 document, generated from the handlers and models (utoipa).

use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorEnvelope, API_ERROR_CODES};
use crate::models::*;
use crate::routes;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        for (name, what) in [("api_key", "a tenant's API key"), ("admin_token", "the server's admin token")] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(what)).build(),
                ),
            );
        }
        let mut codes: Vec<String> = API_ERROR_CODES.iter().map(|c| c.to_string()).collect();
        codes.extend(puhui_ledger::ResultCode::ALL.iter().map(|c| c.as_str().to_string()));
        codes.push("limit_reached".into());
        codes.push("metadata_too_large".into());
        codes.sort();
        codes.dedup();
        let schema = ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .enum_values(Some(codes))
            .description(Some(
                "Every `error.code` the API returns: the API's own codes and the ledger's result codes \
                 (the same names appear as `result` of batch items and transfers).",
            ))
            .build();
        components.schemas.insert("ErrorCode".to_string(), RefOr::T(Schema::Object(schema)));
    }
}

/// Documents the answers the middleware gives on any operation, where a handler's own list does not
/// name them: 400 (a malformed path, query, body or `Idempotency-Key`), 401 (no or a wrong key or
/// token), 429 (an API key's rate limit), and on POST 409 (the idempotency key is in use or was used
/// with another request), 413 (the body is too large) and 503 (the write queue is full, the store
/// unavailable). A fuzzer (schemathesis) against the spec found them undocumented.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::HttpMethod;
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |what: &str| {
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorEnvelope"))).build(),
                )
                .build()
        };
        for item in doc.paths.paths.values_mut() {
            let operations = [
                (HttpMethod::Get, item.get.as_mut()),
                (HttpMethod::Post, item.post.as_mut()),
                (HttpMethod::Put, item.put.as_mut()),
                (HttpMethod::Delete, item.delete.as_mut()),
                (HttpMethod::Patch, item.patch.as_mut()),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                let schemes: Vec<String> = operation
                    .security
                    .iter()
                    .flatten()
                    .filter_map(|r| serde_json::to_value(r).ok())
                    .filter_map(|v| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()))
                    .flatten()
                    .collect();
                let mut common = vec![
                    ("414", "the path and query are longer than 8 KiB"),
                    ("431", "the headers are larger than 32 KiB"),
                ];
                if !schemes.is_empty() {
                    common.push(("400", "invalid input (path, query, body or Idempotency-Key)"));
                    common.push(("401", "missing, unknown or revoked key or token"));
                }
                if schemes.iter().any(|s| s == "api_key") {
                    common.push(("429", "this API key's rate limit; retry after Retry-After seconds"));
                }
                if method == HttpMethod::Post && !schemes.is_empty() {
                    common.push(("409", "the Idempotency-Key is in use, or was used with another request"));
                    common.push(("413", "the body is too large"));
                    common.push(("503", "the write queue is full or the store unavailable; retry shortly"));
                }
                for (status, what) in common {
                    let responses = &mut operation.responses.responses;
                    if !responses.contains_key(status) {
                        responses.insert(status.to_string(), RefOr::T(error(what)));
                    }
                }
            }
        }
    }
}

/// The API's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "puhui partner API",
        description = "Double-entry ledger for inclusive finance: accounts, transfers, holds, linked \
                       batches. Amounts are integers of minor units. Every POST takes an \
                       Idempotency-Key. Errors: {\"error\":{\"type\",\"code\",\"message\",\"param\",\"request_id\"}}."
    ),
    paths(
        routes::create_account, routes::get_account, routes::list_account_transfers, routes::get_balance,
        routes::freeze_account, routes::unfreeze_account, routes::close_account,
        routes::create_transfer, routes::create_transfer_batch, routes::get_transfer,
        routes::post_transfer, routes::void_transfer,
        routes::create_tenant, routes::create_key, routes::list_keys, routes::revoke_key,
        routes::healthz, routes::readyz, routes::metrics_endpoint, routes::openapi_json,
        crate::risk::create_decision, crate::risk::get_decision, crate::risk::list_reviews,
        crate::risk::approve_review, crate::risk::decline_review, crate::risk::label_decision,
        crate::journal::decision_proof,
        crate::risk::create_ruleset, crate::risk::list_rulesets, crate::risk::get_ruleset,
        crate::risk::activate_ruleset, crate::risk::list_add, crate::risk::list_remove, crate::risk::get_list,
        crate::risk::admin_list_add, crate::risk::admin_list_remove, crate::risk::admin_get_list,
        crate::journal::latest_checkpoint, crate::journal::checkpoint, crate::journal::transfer_proof,
        crate::journal::consistency, crate::journal::public_key,
        crate::events::list_events, crate::events::get_event,
        crate::webhooks::create_endpoint, crate::webhooks::list_endpoints, crate::webhooks::get_endpoint,
        crate::webhooks::delete_endpoint, crate::webhooks::rotate_secret, crate::webhooks::list_deliveries,
        crate::webhooks::redeliver_event,
    ),
    components(schemas(
        ErrorEnvelope, ErrorBody, CreateAccount, AccountObject, BalancesObject, BalanceAtObject,
        TransferType, CreateTransfer, TransferObject, PostPending, VoidPending, CreateTransferBatch,
        BatchItemResult, BatchResultObject, TransferList, CreateTenant, TenantCreated, KeyCreated, KeyObject, Health,
        crate::risk::CreateDecision, crate::risk::RiskContext, crate::risk::DecisionObject, crate::risk::DecisionEventObject, crate::risk::FiredRuleObject,
        crate::risk::ReviewObject, crate::risk::ReviewList, crate::risk::ShadowObject,
        crate::risk::CreateLabel, crate::risk::LabelObject, crate::risk::RulesetObject, crate::risk::CreateRuleset,
        crate::risk::RulesetList, crate::risk::Activation, crate::risk::ListChange, crate::risk::RiskListObject,
        crate::events::EventObject, crate::events::EventList, crate::webhooks::CreateWebhookEndpoint,
        crate::webhooks::RotateSecret, crate::webhooks::Redeliver, crate::webhooks::WebhookEndpointObject,
        crate::webhooks::DeletedObject, crate::webhooks::WebhookEndpointList, crate::webhooks::WebhookDeliveryObject,
        crate::webhooks::WebhookDeliveryList, crate::webhooks::DeliveryStatus,
    )),
    modifiers(&Security, &CommonResponses),
    tags(
        (name = "accounts", description = "Accounts and balances"),
        (name = "transfers", description = "Transfers, holds, batches"),
        (name = "tenants", description = "Tenants and API keys (admin token)"),
        (name = "risk", description = "Risk decisions (rules over velocity features)"),
        (name = "journal", description = "Verifiable journal: signed checkpoints and Merkle proofs"),
        (name = "events", description = "Every committed change as an event (also on NATS JetStream with --nats)"),
        (name = "webhooks", description = "Signed webhook deliveries: Puhui-Signature t=<unix>,v1=<hex HMAC-SHA256(secret, \"<t>.<body>\")>"),
        (name = "operations", description = "Health, metrics, this document"),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON (what `/openapi.json` serves and `docs/openapi.json` holds).
pub fn document() -> String {
    let mut json = ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serialises");
    json.push('\n');
    json
}
