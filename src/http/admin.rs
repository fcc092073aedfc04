//! /v1/admin: API keys and per-user quotas, for admins (the same as `eigenprune keys` and
//! `eigenprune users`). A new key is in the creation response only.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{quoted, ApiError, ApiResult, ErrorBody, Json, Path, Query};
use super::ids::check_id;
use crate::app::AppState;
use crate::db::users::KeyRow;
use crate::identity::{issue_key, valid_user_name, Caller, Quota};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// The key's user (created if new): 1 to 64 of A-Z a-z 0-9 . _ -
    pub user: String,
    /// Make the user an admin.
    #[serde(default)]
    pub admin: bool,
}

/// An API key as lists show it (never the key itself).
#[derive(Serialize, ToSchema)]
pub struct ApiKey {
    pub id: String,
    /// `api_key`
    pub object: String,
    pub user: String,
    /// The key's first characters.
    pub prefix: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A key just created: `key` is shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub info: ApiKey,
    /// `ep-...`, for `Authorization: Bearer`.
    pub key: String,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyList {
    /// `list`
    pub object: String,
    pub data: Vec<ApiKey>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyQuery {
    /// Only this user's keys.
    user: Option<String>,
}

/// A user's quota: what they override and what applies.
#[derive(Serialize, ToSchema)]
pub struct UserQuota {
    pub user: String,
    pub admin: bool,
    /// Limits this user sets (null: the server's default; 0: no limit).
    pub overrides: Quota,
    /// The limits that apply (null: none).
    pub effective: Quota,
}

fn key_view(k: &KeyRow) -> ApiKey {
    ApiKey {
        id: k.id.clone(),
        object: "api_key".into(),
        user: k.user_name.clone(),
        prefix: k.prefix.clone(),
        created_at: k.created_at,
        last_used_at: k.last_used_at,
        revoked_at: k.revoked_at,
    }
}

fn check_user(name: &str) -> ApiResult<()> {
    if valid_user_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid("invalid_user", "user: 1 to 64 of A-Z a-z 0-9 . _ -").param("user"))
    }
}

/// Create an API key (admins).
#[utoipa::path(post, path = "/v1/admin/keys", tag = "admin", request_body = CreateKey,
    responses((status = 200, description = "The key; `key` is shown only here", body = CreatedKey),
              (status = "4XX", description = "Not an admin, or invalid", body = ErrorBody)))]
pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<CreateKey>,
) -> ApiResult<Json<CreatedKey>> {
    caller.require_admin()?;
    check_user(&req.user)?;
    let (row, key) = issue_key(&state.db, &req.user, req.admin).await?;
    tracing::info!(key = %row.id, user = %row.user_name, by = %caller.user, "API key created");
    Ok(Json(CreatedKey {
        info: key_view(&row),
        key,
    }))
}

/// List API keys (admins).
#[utoipa::path(get, path = "/v1/admin/keys", tag = "admin", params(KeyQuery),
    responses((status = 200, description = "Every key, revoked ones too, oldest first", body = ApiKeyList),
              (status = "4XX", description = "Not an admin", body = ErrorBody)))]
pub async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<KeyQuery>,
) -> ApiResult<Json<ApiKeyList>> {
    caller.require_admin()?;
    if let Some(u) = &q.user {
        check_user(u)?;
    }
    let data = state.db.keys(q.user.as_deref()).await?;
    Ok(Json(ApiKeyList {
        object: "list".into(),
        data: data.iter().map(key_view).collect(),
    }))
}

/// Revoke an API key (admins): it is refused from the next request on.
#[utoipa::path(delete, path = "/v1/admin/keys/{id}", tag = "admin",
    params(("id" = String, Path, description = "The key's id (key_...)")),
    responses((status = 200, description = "The key, revoked", body = ApiKey),
              (status = "4XX", description = "Not an admin, or no such live key", body = ErrorBody)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiKey>> {
    caller.require_admin()?;
    check_id("id", &id)?;
    if !state.db.revoke_key(&id).await? {
        return Err(ApiError::not_found(
            "key_not_found",
            format!("no live key {}", quoted(&id)),
        ));
    }
    let row = state
        .db
        .key(&id)
        .await?
        .ok_or_else(|| ApiError::internal("revoked key vanished"))?;
    tracing::info!(key = %id, by = %caller.user, "API key revoked");
    Ok(Json(key_view(&row)))
}

/// Set a user's quota overrides (admins); a field left out goes back to the default.
#[utoipa::path(put, path = "/v1/admin/users/{name}/quota", tag = "admin", request_body = Quota,
    params(("name" = String, Path, description = "The user")),
    responses((status = 200, description = "The user's quota", body = UserQuota),
              (status = "4XX", description = "Not an admin, or no such user", body = ErrorBody)))]
pub async fn set_quota(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(q): Json<Quota>,
) -> ApiResult<Json<UserQuota>> {
    caller.require_admin()?;
    check_user(&name)?;
    if !state.db.set_quota(&name, &q).await? {
        return Err(ApiError::not_found(
            "user_not_found",
            format!("no user {}", quoted(&name)),
        ));
    }
    let user = state
        .db
        .user(&name)
        .await?
        .ok_or_else(|| ApiError::internal("user vanished"))?;
    Ok(Json(UserQuota {
        user: user.name.clone(),
        admin: user.admin != 0,
        overrides: user.overrides(),
        effective: state.lab.default_quota().with(&user.overrides()),
    }))
}
