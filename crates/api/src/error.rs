//! The one error envelope: `{"error":{"type","code","message","param","request_id"}}`, with
//! `reasons` on `risk_declined`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use puhui_ledger::ResultCode;
use serde::Serialize;
use utoipa::ToSchema;

tokio::task_local! {
    /// The id of the request being served (set by the request-id middleware).
    pub static REQUEST_ID: String;
}

/// The request id of the current task, or empty outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(|id| id.clone()).unwrap_or_default()
}

/// Error codes of the API itself (the ledger's result codes are codes too: see `ResultCode`).
pub const API_ERROR_CODES: &[&str] = &[
    "invalid_json",
    "invalid_request",
    "invalid_id",
    "invalid_currency",
    "invalid_amount",
    "amount_too_large",
    "invalid_timestamp",
    "invalid_cursor",
    "parameter_unknown",
    "batch_too_large",
    "batch_empty",
    "body_too_large",
    "unauthenticated",
    "forbidden",
    "not_found",
    "route_not_found",
    "method_not_allowed",
    "idempotency_key_reused",
    "idempotency_key_invalid",
    "request_in_progress",
    "rate_limited",
    "overloaded",
    "unavailable",
    "internal_error",
    "risk_declined",
    "decision_exists",
    "exists_with_different_event",
    "under_review",
    "review_resolved",
    "review_in_progress",
    "review_unresolvable",
    "invalid_ruleset",
    "ruleset_version_conflict",
    "invalid_list",
    "limit_exceeded",
    "not_checkpointed",
    "request_timeout",
    "not_available",
];

/// The error object inside the envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Broad class: `invalid_request_error`, `authentication_error`, `idempotency_error`,
    /// `ledger_error` (a ledger result code), `rate_limit_error`, `api_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Stable machine-readable code: one of the API's codes or a ledger result code.
    pub code: String,
    /// A sentence for people.
    pub message: String,
    /// The request field at fault, if one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// `risk_declined`: the reason codes of the rules that declined (empty if none gave one;
    /// absent when they are no longer known: a decline older than the decisions kept in memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
    /// The request's id (also in the `Request-Id` header and the logs).
    pub request_id: String,
}

/// `{"error": {...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// An API error: status, class, code, message, parameter.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Error class (`type`).
    pub kind: &'static str,
    /// Stable code.
    pub code: String,
    /// Message for people.
    pub message: String,
    /// Field at fault.
    pub param: Option<String>,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after_secs: Option<u64>,
    /// Reason codes (`risk_declined`).
    pub reasons: Option<Vec<String>>,
}

impl ApiError {
    /// A 400 `invalid_request_error`.
    pub fn invalid(code: &str, message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: code.into(),
            message: message.into(),
            param: param.map(Into::into),
            retry_after_secs: None,
            reasons: None,
        }
    }

    /// An error with an explicit status and class.
    pub fn new(status: StatusCode, kind: &'static str, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            code: code.into(),
            message: message.into(),
            param: None,
            retry_after_secs: None,
            reasons: None,
        }
    }

    /// 501 `not_available`: `feature` needs the embedded store and this server runs on PostgreSQL.
    pub fn not_available(feature: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "api_error",
            "not_available",
            format!("{feature} needs the embedded store; this server runs on PostgreSQL (--store)"),
        )
    }

    /// 404 for a missing (or another tenant's) object.
    pub fn not_found(what: &str, param: &str) -> ApiError {
        ApiError {
            param: Some(param.into()),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "not_found",
                format!("no such {what}"),
            )
        }
    }

    /// 401.
    pub fn unauthenticated(message: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", "unauthenticated", message)
    }

    /// With a parameter.
    pub fn with_param(mut self, param: &str) -> ApiError {
        self.param = Some(param.into());
        self
    }

    /// The error for a ledger result code that refused an event.
    pub fn from_result(code: ResultCode, param: Option<&str>) -> ApiError {
        ApiError {
            status: status_of(code),
            kind: if status_of(code) == StatusCode::BAD_REQUEST {
                "invalid_request_error"
            } else {
                "ledger_error"
            },
            code: code.as_str().into(),
            message: code.message().into(),
            param: param.map(Into::into),
            retry_after_secs: None,
            reasons: None,
        }
    }
}

/// The HTTP status a ledger result code maps to.
pub fn status_of(code: ResultCode) -> StatusCode {
    use ResultCode::*;
    match code {
        Ok => StatusCode::CREATED,
        Exists => StatusCode::OK,
        ExistsWithDifferentKind
        | ExistsWithDifferentPendingId
        | ExistsWithDifferentTimeout
        | ExistsWithDifferentAccounts
        | ExistsWithDifferentAmount
        | ExistsWithDifferentCurrency
        | ExistsWithDifferentCode
        | ExistsWithDifferentMetadata
        | ExistsWithDifferentReferences
        | ExistsWithDifferentFlags
        | ExistsWithDifferentLimit => StatusCode::CONFLICT,
        AccountNotFound | PendingNotFound => StatusCode::NOT_FOUND,
        SameAccount
        | AmountMustBePositive
        | FlagsAreMutuallyExclusive
        | MetadataTooLarge
        | ReferenceInvalid
        | TimeoutTooLarge
        | TimeoutReservedForPending
        | AccountRequired
        | CurrencyRequired
        | LimitRequiresFlag
        | LinkedEventChainOpen
        | AmountReservedForPost => StatusCode::BAD_REQUEST,
        CapacityExceeded => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorEnvelope {
            error: ErrorBody {
                kind: self.kind,
                code: self.code,
                message: self.message,
                param: self.param,
                reasons: self.reasons,
                request_id: current_request_id(),
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<puhui_store::StoreError> for ApiError {
    fn from(e: puhui_store::StoreError) -> Self {
        use puhui_store::StoreError::*;
        match e {
            BatchTooLarge { len, max } => ApiError::invalid(
                "batch_too_large",
                format!("a batch holds at most {max} transfers; this one has {len}"),
                Some("transfers"),
            ),
            Overloaded => ApiError {
                retry_after_secs: Some(1),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "api_error", "overloaded", e.to_string())
            },
            RecordTooLarge { .. } => ApiError::invalid("invalid_request", e.to_string(), None),
            AccountNotFound => ApiError::not_found("account", "id"),
            CursorNotFound => ApiError::invalid("invalid_cursor", e.to_string(), Some("starting_after")),
            Unavailable(_) | Io(_) | Corrupt(_) | Locked(_) => ApiError {
                retry_after_secs: Some(1),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "api_error", "unavailable", e.to_string())
            },
        }
    }
}
