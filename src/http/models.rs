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

/// `GET /v1/models/{id}` and `GET /v1/models/{id}/export` (ids may contain slashes).
pub async fn get_one(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    if let Some(model) = id.strip_suffix("/export") {
        return export(&state, model).await;
    }
    if state.base_models.contains(&id) {
        return Ok(Json(base_json(&id)).into_response());
    }
    match state.db.variant(&id).await? {
        Some(v) => Ok(Json(variant_json(&v)).into_response()),
        None => Err(ApiError::not_found(
            "model_not_found",
            format!("no model `{id}`"),
        )),
    }
}

/// The model (base, or base + edit) as one safetensors file in its checkpoint's own layout,
/// streamed from a temporary export.
async fn export(state: &AppState, id: &str) -> ApiResult<Response> {
    let model = crate::http::completions::resolve_model(state, id).await?;
    let dir = std::env::temp_dir().join(format!(
        "eigenprune-export-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let d = dir.clone();
    tokio::task::spawn_blocking(move || {
        eigenprune_engine::export::export_checkpoint(
            &model.model,
            &model.config_json,
            &model.tokenizer,
            &d,
        )
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let file = tokio::fs::File::open(dir.join("model.safetensors"))
        .await
        .map_err(ApiError::internal)?;
    // The open handle keeps the data readable after the directory is removed.
    let _ = tokio::fs::remove_dir_all(&dir).await;
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream"),
        (
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"model.safetensors\"",
        ),
    ];
    Ok((headers, body).into_response())
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
