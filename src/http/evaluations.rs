//! /v1/evaluations: an evaluation job of a base model or variant on a task's split.

use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult, Json};
use super::jobs::{check_model_and_data, find, job_json};
use crate::app::AppState;
use crate::db::jobs::NewJob;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEvaluation {
    pub model: String,
    pub task: Option<String>,
    pub dataset: Option<String>,
    #[serde(default = "test_split")]
    pub split: String,
}

fn test_split() -> String {
    "test".into()
}

pub async fn create(
    State(state): State<AppState>,
    Json(req): Json<CreateEvaluation>,
) -> ApiResult<Json<Value>> {
    if req.split != "test" && req.split != "train" {
        return Err(ApiError::invalid(
            "invalid_split",
            "split must be `test` or `train`",
        ));
    }
    check_model_and_data(
        &state,
        &req.model,
        req.task.as_deref(),
        req.dataset.as_deref(),
        true,
    )
    .await?;
    let id = format!("ev-{}", uuid::Uuid::new_v4().simple());
    let params = json!({"split": req.split}).to_string();
    let row = state
        .db
        .insert_job(&NewJob {
            id: &id,
            kind: "evaluation",
            model: &req.model,
            task: req.task.as_deref(),
            dataset: req.dataset.as_deref(),
            params: &params,
            suffix: None,
        })
        .await?;
    state.wake.notify_waiters();
    Ok(Json(job_json(&row)))
}

pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(job_json(&find(&state, &id, "evaluation").await?)))
}
