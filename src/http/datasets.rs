//! /v1/datasets: JSONL uploads, validated row by row (the first bad line is named; nothing is
//! stored on error: the object is written after validation and removed if its row cannot be).

use axum::body::Bytes;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{quoted, ApiError, ApiResult, ErrorBody, Json, Path, Query};
use super::ids::{check_id, check_name};
use crate::app::AppState;
use crate::db::datasets::DatasetRow;
use crate::identity::{Caller, Visibility};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// A display name (1 to 128 characters, no control characters); default: the id.
    pub name: Option<String>,
    /// `private` (you and admins; the default) or `lab` (every user).
    pub visibility: Option<Visibility>,
}

#[derive(Serialize, ToSchema)]
pub struct Dataset {
    pub id: String,
    /// `dataset`
    pub object: String,
    pub name: String,
    pub rows: i64,
    pub bytes: i64,
    pub created_at: i64,
    pub owner: String,
    pub visibility: Visibility,
}

#[derive(Serialize, ToSchema)]
pub struct DatasetList {
    /// `list`
    pub object: String,
    pub data: Vec<Dataset>,
}

fn dataset_view(d: &DatasetRow) -> Dataset {
    Dataset {
        id: d.id.clone(),
        object: "dataset".into(),
        name: d.name.clone(),
        rows: d.rows,
        bytes: d.bytes,
        created_at: d.created_at,
        owner: d.owner.clone(),
        visibility: Visibility::parse(&d.visibility),
    }
}

/// Upload a JSONL data set.
#[utoipa::path(post, path = "/v1/datasets", tag = "datasets", params(UploadQuery),
    request_body(content((String = "application/jsonl"), (String = "text/plain")),
                 description = "JSONL (any content type): rows of {\"prompt\", \"answer\"} or {\"prompt\", \"choices\", \"label\"}"),
    responses((status = 200, description = "The data set, stored", body = Dataset),
              (status = "4XX", description = "Invalid JSONL (the first bad line is named)", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<UploadQuery>,
    body: Bytes,
) -> ApiResult<Json<Dataset>> {
    if let Some(name) = &q.name {
        check_name("name", name)?;
    }
    let parsed = body.clone();
    let rows = tokio::task::spawn_blocking(move || {
        let text = std::str::from_utf8(&parsed)
            .map_err(|_| ApiError::invalid("invalid_jsonl", "the body is not UTF-8"))?;
        eigenprune_engine::tasks::parse_jsonl(text)
            .map_err(|e| ApiError::invalid("invalid_jsonl", e.to_string()))
    })
    .await
    .map_err(ApiError::internal)??;
    if rows.len() < 2 {
        return Err(ApiError::invalid(
            "invalid_jsonl",
            "a data set needs at least 2 rows (train and test)",
        ));
    }
    let id = format!("ds-{}", uuid::Uuid::new_v4().simple());
    let key = format!("datasets/{id}.jsonl");
    let row = DatasetRow {
        id: id.clone(),
        name: q.name.unwrap_or_else(|| id.clone()),
        rows: rows.len() as i64,
        bytes: body.len() as i64,
        object_key: key.clone(),
        created_at: crate::db::now(),
        owner: caller.user.clone(),
        visibility: q.visibility.unwrap_or_default().name().into(),
    };
    state
        .storage
        .put(&key, body)
        .await
        .map_err(ApiError::internal)?;
    if let Err(e) = state.db.insert_dataset(&row).await {
        if let Err(d) = state.storage.delete(&key).await {
            tracing::warn!(error = %d, %key, "data set row failed; its object is left behind");
        }
        return Err(e.into());
    }
    Ok(Json(dataset_view(&row)))
}

/// List data sets.
#[utoipa::path(get, path = "/v1/datasets", tag = "datasets",
    responses((status = 200, description = "Uploaded data sets", body = DatasetList)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<DatasetList>> {
    let data = state
        .db
        .datasets(&caller.viewer())
        .await?
        .iter()
        .map(dataset_view)
        .collect();
    Ok(Json(DatasetList {
        object: "list".into(),
        data,
    }))
}

/// A deleted data set.
#[derive(Serialize, ToSchema)]
pub struct DeletedDataset {
    pub id: String,
    /// `dataset`
    pub object: String,
    pub deleted: bool,
}

/// The data set `id` if `caller` may see it.
pub async fn visible(state: &AppState, caller: &Caller, id: &str) -> ApiResult<DatasetRow> {
    check_id("id", id)?;
    match state.db.dataset(id).await? {
        Some(d) if caller.can_read(&d.owner, Visibility::parse(&d.visibility)) => Ok(d),
        _ => Err(ApiError::not_found(
            "dataset_not_found",
            format!("no dataset {}", quoted(id)),
        )),
    }
}

/// Delete a data set (its owner or an admin); jobs still queued on it fail with
/// `dataset_not_found`.
#[utoipa::path(delete, path = "/v1/datasets/{id}", tag = "datasets",
    params(("id" = String, Path, description = "The data set's id")),
    responses((status = 200, description = "Deleted", body = DeletedDataset),
              (status = "4XX", description = "No such data set, or not yours", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DeletedDataset>> {
    let d = visible(&state, &caller, &id).await?;
    if !caller.can_modify(&d.owner) {
        return Err(super::jobs::not_owner("data set"));
    }
    state.db.delete_dataset(&id).await?;
    if let Err(e) = state.storage.delete(&d.object_key).await {
        tracing::warn!(error = %e, key = %d.object_key, "data set row deleted, object left behind");
    }
    Ok(Json(DeletedDataset {
        id,
        object: "dataset".into(),
        deleted: true,
    }))
}

/// A data set.
#[utoipa::path(get, path = "/v1/datasets/{id}", tag = "datasets",
    params(("id" = String, Path, description = "The data set's id")),
    responses((status = 200, description = "The data set", body = Dataset),
              (status = "4XX", description = "No such data set", body = ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Dataset>> {
    Ok(Json(dataset_view(&visible(&state, &caller, &id).await?)))
}
