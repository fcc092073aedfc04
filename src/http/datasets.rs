//! /v1/datasets: JSONL uploads, validated row by row (the first bad line is named; nothing is
//! stored on error).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult, Json};
use crate::app::AppState;
use crate::db::datasets::DatasetRow;

#[derive(Deserialize)]
pub struct UploadQuery {
    name: Option<String>,
}

fn dataset_json(d: &DatasetRow) -> Value {
    json!({"id": d.id, "object": "dataset", "name": d.name, "rows": d.rows, "bytes": d.bytes, "created_at": d.created_at})
}

pub async fn create(
    State(state): State<AppState>,
    Query(q): Query<UploadQuery>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::invalid("invalid_jsonl", "the body is not UTF-8"))?;
    let rows = eigenprune_engine::tasks::parse_jsonl(text)
        .map_err(|e| ApiError::invalid("invalid_jsonl", e.to_string()))?;
    if rows.len() < 2 {
        return Err(ApiError::invalid(
            "invalid_jsonl",
            "a data set needs at least 2 rows (train and test)",
        ));
    }
    let id = format!("ds-{}", uuid::Uuid::new_v4().simple());
    let key = format!("datasets/{id}.jsonl");
    state
        .storage
        .put(&key, body.clone())
        .await
        .map_err(ApiError::internal)?;
    let row = DatasetRow {
        id: id.clone(),
        name: q.name.unwrap_or_else(|| id.clone()),
        rows: rows.len() as i64,
        bytes: body.len() as i64,
        object_key: key,
        created_at: crate::db::now(),
    };
    state.db.insert_dataset(&row).await?;
    Ok(Json(dataset_json(&row)))
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let data: Vec<Value> = state
        .db
        .datasets()
        .await?
        .iter()
        .map(dataset_json)
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    match state.db.dataset(&id).await? {
        Some(d) => Ok(Json(dataset_json(&d))),
        None => Err(ApiError::not_found(
            "dataset_not_found",
            format!("no dataset `{id}`"),
        )),
    }
}
