//! One error type for the API, in OpenAI's shape: `{"error": {"message", "type", "param",
//! "code"}}` with an HTTP status and a stable machine-readable code. Internal errors are logged
//! once and never leak; messages are bounded in length. Our extractors (Json, Query, Path) and
//! the fallbacks answer in the same shape, and `uniform_errors` rewrites whatever else (a body
//! limit's 413, a 405) would leave the router in another one.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Longest message an error carries (characters); longer ones are cut with an ellipsis.
pub const MAX_MESSAGE_CHARS: usize = 1000;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The request parameter at fault, when there is one.
    pub param: Option<String>,
    /// Seconds to wait before retrying (a 429's or 503's `Retry-After`).
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The error body every failing request gets.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// What went wrong, for people (at most 1000 characters).
    pub message: String,
    /// `invalid_request_error` (every 4xx but these), `authentication_error` (401),
    /// `permission_error` (403), `rate_limit_error` (429) or `server_error` (5xx).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request parameter at fault, if any.
    pub param: Option<String>,
    /// A stable machine-readable code, e.g. `invalid_n`, `model_not_found`.
    pub code: &'static str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }
    /// A 429: the caller is over a limit and may retry after `secs` seconds.
    pub fn too_many(code: &'static str, message: impl Into<String>, secs: u64) -> Self {
        Self {
            retry_after: Some(secs.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }
    /// A 401 (the message never repeats what was sent).
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
    /// A 403: the caller sees the object but may not do this to it.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    /// A 400 for a request that is well-formed but asks for something invalid.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    /// Names the parameter at fault.
    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error",
        )
    }

    fn kind(&self) -> &'static str {
        match self.status {
            s if s.is_server_error() => "server_error",
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            _ => "invalid_request_error",
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: bounded(&self.message, MAX_MESSAGE_CHARS),
                kind: self.kind(),
                param: self.param.clone(),
                code: self.code,
            },
        }
    }
}

/// `s` cut to at most `max` characters (an ellipsis marks a cut).
pub fn bounded(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((end, _)) => format!("{}...", &s[..end]),
    }
}

/// A user-given name as messages quote it: at most 64 characters, control characters escaped.
pub fn quoted(s: &str) -> String {
    let short = bounded(s, 64);
    format!("`{}`", short.escape_debug())
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal(e)
    }
}

impl From<crate::hyper::Invalid> for ApiError {
    fn from(e: crate::hyper::Invalid) -> Self {
        Self::invalid(e.code, e.message).param(format!("hyperparameters.{}", e.param))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// `axum::Json` with our error shape for malformed bodies; a body over [`INLINE_JSON_BYTES`]
/// is parsed off the runtime's threads ([`super::offload`]).
pub struct Json<T>(pub T);

/// Bodies up to this size are parsed where they arrive (cheaper than a thread hop).
pub const INLINE_JSON_BYTES: usize = 64 * 1024;

impl<T, S> FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned + Send + 'static,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n <= INLINE_JSON_BYTES) {
            let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
            return Ok(Json(v));
        }
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                let v = v.trim();
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            });
        if !is_json {
            return Err(Self::wrong_type());
        }
        let body = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    e.body_text(),
                )
            })?;
        super::offload::offload(move || {
            axum::Json::<T>::from_bytes(&body)
                .map(|axum::Json(v)| Json(v))
                .map_err(ApiError::from)
        })
        .await
    }
}

impl<T> Json<T> {
    fn wrong_type() -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Expected request with `Content-Type: application/json`",
        )
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query` with our error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// `axum::extract::Path` with our error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => {
                let text = e.body_text();
                match unknown_field(&text) {
                    Some(field) => Self::invalid(
                        "unsupported_parameter",
                        format!("`{field}` is not a parameter this endpoint supports"),
                    )
                    .param(field),
                    None => Self::invalid("invalid_body", text),
                }
            }
            JsonRejection::JsonSyntaxError(e) => Self::invalid("invalid_json", e.body_text()),
            JsonRejection::MissingJsonContentType(e) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                e.body_text(),
            ),
            JsonRejection::BytesRejection(e) => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                e.body_text(),
            ),
            other => Self::invalid("invalid_request", other.body_text()),
        }
    }
}

/// The field serde names in "unknown field `x`, expected ...".
fn unknown_field(text: &str) -> Option<String> {
    let rest = text.split("unknown field `").nth(1)?;
    Some(bounded(rest.split('`').next()?, 64))
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::invalid("invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::invalid("invalid_path", r.body_text())
    }
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// Every error response leaves in the one shape: an error whose body is not JSON (a layer's
/// 413, axum's own rejections) is rewritten, keeping its status. The dashboard's HTML pages
/// (a form shown again with its errors, a 404 page) stay pages.
pub async fn uniform_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let ours = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || ours {
        return response;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_FOUND => "route_not_found",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal_error",
        _ => "invalid_request",
    };
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let mut message = String::from_utf8_lossy(&body).trim().to_string();
    if message.is_empty() || status.is_server_error() {
        message = status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase();
    }
    ApiError::new(status, code, message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_bounded_on_character_boundaries() {
        let long = "é".repeat(5000);
        let b = bounded(&long, 10);
        assert_eq!(b.chars().count(), 13);
        assert_eq!(quoted("a\0b"), "`a\\0b`");
    }

    #[test]
    fn type_follows_the_status() {
        let e = ApiError::internal("boom");
        assert_eq!(e.body().error.kind, "server_error");
        assert_eq!(
            ApiError::invalid("x", "y").body().error.kind,
            "invalid_request_error"
        );
        assert_eq!(
            unknown_field("unknown field `suffix`, expected one of `a`").as_deref(),
            Some("suffix")
        );
    }
}
