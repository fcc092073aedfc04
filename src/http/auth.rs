//! Authentication: `Authorization: Bearer ep-...` becomes the request's [`Caller`] (with the
//! user's quota), or a 401 that never repeats what was sent. With `--auth none` every caller
//! is the admin `local`. The per-user request rate is taken here too.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::app::AppState;
use crate::db::jobs::Viewer;
use crate::identity::{key_hash, Caller, LOCAL_USER};
use crate::lab::AuthMode;

/// Paths anyone may read: liveness probes and the API's description.
pub const PUBLIC_PATHS: &[&str] = &[
    "/health",
    "/ready",
    "/openapi.json",
    "/docs",
    "/docs/rapidoc-min.js",
    "/signin",
    "/ui/dashboard.js",
];

/// Seconds between writes of a key's last-used time.
const TOUCH_EVERY_SECS: i64 = 60;

pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if PUBLIC_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let caller = match caller(&state, req.headers()).await {
        Ok(c) => c,
        // A dashboard page without a session goes to the sign-in page.
        Err(e) if crate::web::is_page(req.uri().path()) && e.status.as_u16() == 401 => {
            return axum::response::Redirect::to("/signin").into_response()
        }
        Err(e) => return e.into_response(),
    };
    if let Err(e) = state
        .limiter
        .request(&caller.user, caller.quota.requests_per_minute)
    {
        return e.into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

async fn caller(state: &AppState, headers: &axum::http::HeaderMap) -> Result<Caller, ApiError> {
    let defaults = state.lab.default_quota();
    if state.auth == AuthMode::None {
        return Ok(Caller {
            user: LOCAL_USER.into(),
            admin: true,
            quota: defaults,
        });
    }
    let invalid = || {
        ApiError::unauthorized(
            "invalid_api_key",
            "the API key is not valid (unknown, revoked or malformed)",
        )
    };
    // The dashboard's session cookie stands for its key when no key is sent.
    let hash = match (
        headers.get(header::AUTHORIZATION),
        crate::web::session::session_id(headers),
    ) {
        (None, Some(session)) => state.sessions.key_hash(session).ok_or_else(|| {
            ApiError::unauthorized(
                "session_expired",
                "the dashboard session has ended: sign in again",
            )
        })?,
        (None, None) => {
            return Err(ApiError::unauthorized(
                "missing_api_key",
                "this server needs an API key: send `Authorization: Bearer ep-...` (an admin \
                 creates keys with `eigenprune keys create --user NAME`)",
            ))
        }
        (Some(value), _) => {
            let key = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .unwrap_or_default();
            if key.is_empty() || key.len() > 256 {
                return Err(invalid());
            }
            key_hash(key)
        }
    };
    let Some((k, user)) = state.db.key_by_hash(&hash).await? else {
        return Err(invalid());
    };
    if k.last_used_at
        .is_none_or(|t| crate::db::now() - t >= TOUCH_EVERY_SECS)
    {
        state.db.touch_key(&k.id).await?;
    }
    Ok(Caller {
        admin: user.admin != 0,
        quota: defaults.with(&user.overrides()),
        user: user.name,
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::internal("a handler ran without authentication"))
    }
}

impl Caller {
    /// The caller as the database filters lists.
    pub fn viewer(&self) -> Viewer<'_> {
        Viewer {
            user: &self.user,
            admin: self.admin,
        }
    }

    /// A 403 unless the caller is an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "admin_required",
                "this needs an admin's key",
            ))
        }
    }
}
