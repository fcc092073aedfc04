//! /v1/models: base models (served from start-up) and pruned variants (which name a parent).

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult, Json};
use crate::app::AppState;
use crate::db::variants::VariantRow;

fn base_json(id: &str) -> Value {
    json!({"id": id, "object": "model", "owned_by": "eigenprune", "parent": null, "created": 0})
}

fn variant_json(v: &VariantRow) -> Value {
    json!({
        "id": v.id, "object": "model", "owned_by": "eigenprune", "parent": v.parent,
        "created": v.created_at, "job": v.job_id,
        "summary": serde_json::from_str::<Value>(&v.summary).unwrap_or(Value::Null),
    })
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let mut data: Vec<Value> = state.base_models.iter().map(|m| base_json(m)).collect();
    data.extend(state.db.variants().await?.iter().map(variant_json));
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if state.base_models.contains(&id) {
        return Ok(Json(base_json(&id)));
    }
    match state.db.variant(&id).await? {
        Some(v) => Ok(Json(variant_json(&v))),
        None => Err(ApiError::not_found(
            "model_not_found",
            format!("no model `{id}`"),
        )),
    }
}

pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if state.base_models.contains(&id) {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "base_model",
            "base models cannot be deleted; only pruned variants",
        ));
    }
    let Some(v) = state.db.variant(&id).await? else {
        return Err(ApiError::not_found(
            "model_not_found",
            format!("no model `{id}`"),
        ));
    };
    state.db.delete_variant(&id).await?;
    if let Err(e) = state.storage.delete(&v.object_key).await {
        tracing::warn!(error = %e, key = %v.object_key, "variant row deleted, object left behind");
    }
    Ok(Json(json!({"id": id, "object": "model", "deleted": true})))
}
