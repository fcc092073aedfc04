//! /v1/evaluations: an evaluation job of a base model or variant (or of several: a base's
//! variants evaluated in one batched pass) on a task's split.

use axum::extract::State;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, ErrorBody, Json, Path};
use super::jobs::{check_model_and_data, find, job_view, Job};
use crate::app::AppState;
use crate::db::jobs::NewJob;
use crate::identity::{Caller, Visibility};

/// Models one evaluation job takes at most.
pub const MAX_MODELS: usize = 64;

/// Split evaluated.
#[derive(Deserialize, ToSchema, Clone, Copy, Default)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    #[default]
    Test,
    Train,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEvaluation {
    /// A base model's name or a pruned variant's id (or give `models`).
    pub model: Option<String>,
    /// Several models evaluated in one job: the variants of one base (and the base itself)
    /// run together, each batch of examples holding every variant's rows. The result lists
    /// each model's accuracy.
    #[schema(min_items = 1, max_items = 64)]
    pub models: Option<Vec<String>>,
    /// A built-in task (or give `dataset`).
    pub task: Option<String>,
    /// An uploaded data set's id.
    pub dataset: Option<String>,
    #[serde(default)]
    pub split: Split,
    /// `private` (you and admins) or `lab` (every user).
    #[serde(default)]
    pub visibility: Visibility,
}

/// Create an evaluation job.
#[utoipa::path(post, path = "/v1/evaluations", tag = "evaluations",
    request_body = CreateEvaluation,
    responses((status = 200, description = "The evaluation job, queued", body = Job),
              (status = "4XX", description = "Invalid request", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<CreateEvaluation>,
) -> ApiResult<Json<Job>> {
    let models = match (&req.model, &req.models) {
        (Some(m), None) => vec![m.clone()],
        (None, Some(ms)) if (1..=MAX_MODELS).contains(&ms.len()) => ms.clone(),
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "invalid_models",
                format!("models lists 1 to {MAX_MODELS} models"),
            )
            .param("models"))
        }
        _ => {
            return Err(ApiError::invalid(
                "model_or_models",
                "give exactly one of `model` and `models`",
            )
            .param("model"))
        }
    };
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = models.iter().find(|m| !seen.insert(m.as_str())) {
        return Err(ApiError::invalid(
            "duplicate_model",
            format!("{} is listed twice", super::error::quoted(twice)),
        )
        .param("models"));
    }
    for m in &models {
        check_model_and_data(
            &state,
            &caller,
            m,
            req.task.as_deref(),
            req.dataset.as_deref(),
            true,
        )
        .await
        .map_err(|e| {
            if req.models.is_some() && e.param.as_deref() == Some("model") {
                e.param("models")
            } else {
                e
            }
        })?;
    }
    crate::http::limits::check_job_quota(&state, &caller).await?;
    let id = format!("ev-{}", uuid::Uuid::new_v4().simple());
    let split = match req.split {
        Split::Test => "test",
        Split::Train => "train",
    };
    let params = match &req.models {
        Some(ms) => json!({ "split": split, "models": ms }),
        None => json!({ "split": split }),
    }
    .to_string();
    let row = state
        .db
        .insert_job(&NewJob {
            id: &id,
            kind: "evaluation",
            model: &models[0],
            task: req.task.as_deref(),
            dataset: req.dataset.as_deref(),
            params: &params,
            suffix: None,
            owner: &caller.user,
            visibility: req.visibility.name(),
        })
        .await
        .map_err(ApiError::from)?;
    state.wake.notify_waiters();
    Ok(Json(job_view(&row)))
}

/// An evaluation job.
#[utoipa::path(get, path = "/v1/evaluations/{id}", tag = "evaluations",
    params(("id" = String, Path, description = "The evaluation's id")),
    responses((status = 200, description = "The evaluation job", body = Job),
              (status = "4XX", description = "No such evaluation", body = ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    Ok(Json(job_view(
        &find(&state, &caller, &id, "evaluation").await?,
    )))
}
