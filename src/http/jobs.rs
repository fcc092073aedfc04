//! /v1/pruning/jobs: create (validated up front), list, get, cancel, events.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::error::{quoted, ApiError, ApiResult, ErrorBody, Json, Path, Query};
use super::ids::check_id;
use crate::app::AppState;
use crate::db::events::EventRow;
use crate::db::jobs::{JobRow, NewJob};
use crate::hyper::Hyperparameters;
use crate::identity::{Caller, Visibility};

/// A pruning job to create: a base model, a built-in task or an uploaded data set.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// A base model's name (GET /v1/models).
    pub model: String,
    /// A built-in task: int-sum, int-mult, cb, copa or rte (or give `dataset`).
    pub task: Option<String>,
    /// An uploaded data set's id (POST /v1/datasets).
    pub dataset: Option<String>,
    #[serde(default)]
    pub hyperparameters: Hyperparameters,
    /// Part of the variant's id: up to 64 of [A-Za-z0-9_-].
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub suffix: Option<String>,
    /// Who sees the job and its variant: `private` (you and admins) or `lab` (every user).
    #[serde(default)]
    pub visibility: Visibility,
}

/// Checks that the model is served and the task or dataset exists, both usable by `caller`.
pub async fn check_model_and_data(
    state: &AppState,
    caller: &Caller,
    model: &str,
    task: Option<&str>,
    dataset: Option<&str>,
    allow_variants: bool,
) -> ApiResult<()> {
    crate::catalog::check_served(state, caller, model, allow_variants).await?;
    match (task, dataset) {
        (Some(t), None) if eigenprune_engine::tasks::BUILTIN_TASKS.contains(&t) => Ok(()),
        (Some(t), None) => Err(ApiError::not_found(
            "task_not_found",
            format!(
                "unknown task {} (built-in: {})",
                quoted(t),
                eigenprune_engine::tasks::BUILTIN_TASKS.join(", ")
            ),
        )
        .param("task")),
        (None, Some(d)) => {
            check_id("dataset", d)?;
            super::datasets::visible(state, caller, d)
                .await
                .map(|_| ())
                .map_err(|e| e.param("dataset"))
        }
        _ => Err(ApiError::invalid(
            "task_or_dataset",
            "give exactly one of `task` and `dataset`",
        )),
    }
}

/// A job's error.
#[derive(Serialize, ToSchema)]
pub struct JobError {
    pub code: String,
    pub message: Option<String>,
}

/// A pruning or evaluation job.
#[derive(Serialize, ToSchema)]
pub struct Job {
    pub id: String,
    /// `pruning.job` or `evaluation`
    pub object: String,
    pub model: String,
    pub task: Option<String>,
    pub dataset: Option<String>,
    /// queued, running, succeeded, failed or cancelled
    pub status: String,
    /// The user who created it.
    pub owner: String,
    pub visibility: Visibility,
    /// Times a worker took it up (a worker that died or drained makes one more).
    pub attempts: i64,
    /// Seconds since the epoch, to the microsecond (lists are ordered by it).
    pub created_at: f64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// What the job found (accuracies before and after, pruned counts, seconds per phase).
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub error: Option<JobError>,
    /// Pruning jobs: the hyperparameters, as given with defaults filled in.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub hyperparameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suffix: Option<Option<String>>,
    /// Pruning jobs: the variant's id once succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned_model: Option<Option<String>>,
    /// Pruning jobs: whether that variant has since been deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned_model_deleted: Option<bool>,
    /// Evaluations: the split evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct JobList {
    /// `list`
    pub object: String,
    pub data: Vec<Job>,
    pub has_more: bool,
}

/// Create a pruning job.
#[utoipa::path(post, path = "/v1/pruning/jobs", tag = "pruning",
    request_body = CreateJob,
    responses((status = 200, description = "The job, queued", body = Job),
              (status = "4XX", description = "Invalid request", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<CreateJob>,
) -> ApiResult<Json<Job>> {
    req.hyperparameters.to_settings()?;
    if let Some(s) = &req.suffix {
        if s.is_empty()
            || s.len() > 64
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(
                ApiError::invalid("invalid_suffix", "suffix: up to 64 of [A-Za-z0-9_-]")
                    .param("suffix"),
            );
        }
    }
    crate::catalog::refuse_variant_of_variant(&state, &caller, &req.model).await?;
    check_model_and_data(
        &state,
        &caller,
        &req.model,
        req.task.as_deref(),
        req.dataset.as_deref(),
        false,
    )
    .await?;
    crate::http::limits::check_job_quota(&state, &caller).await?;
    let id = format!("pj-{}", uuid::Uuid::new_v4().simple());
    let params = serde_json::to_string(&req.hyperparameters).map_err(ApiError::internal)?;
    let row = state
        .db
        .insert_job(&NewJob {
            id: &id,
            kind: "pruning",
            model: &req.model,
            task: req.task.as_deref(),
            dataset: req.dataset.as_deref(),
            params: &params,
            suffix: req.suffix.as_deref(),
            owner: &caller.user,
            visibility: req.visibility.name(),
        })
        .await?;
    state.wake.notify_waiters();
    Ok(Json(job_view(&row)))
}

pub fn job_view(j: &JobRow) -> Job {
    let parse = |s: &str| serde_json::from_str::<Value>(s).ok();
    let pruning = j.kind == "pruning";
    let params = parse(&j.params);
    Job {
        id: j.id.clone(),
        object: if pruning { "pruning.job" } else { "evaluation" }.into(),
        model: j.model.clone(),
        task: j.task.clone(),
        dataset: j.dataset.clone(),
        status: j.status.clone(),
        owner: j.owner.clone(),
        visibility: Visibility::parse(&j.visibility),
        attempts: j.attempts,
        created_at: j.created_seconds(),
        started_at: j.started_at,
        finished_at: j.finished_at,
        result: j.result.as_deref().and_then(parse),
        error: j.error_code.as_ref().map(|c| JobError {
            code: c.clone(),
            message: j.error_message.clone(),
        }),
        hyperparameters: if pruning { params.clone() } else { None },
        suffix: pruning.then(|| j.suffix.clone()),
        pruned_model: pruning.then(|| j.pruned_model.clone()),
        pruned_model_deleted: pruning.then_some(j.variant_deleted_at.is_some()),
        split: (!pruning).then(|| {
            params
                .as_ref()
                .and_then(|p| p["split"].as_str())
                .unwrap_or("test")
                .to_string()
        }),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// A job id: list the jobs after it (older ones).
    after: Option<String>,
    /// Jobs per page.
    #[param(minimum = 1, maximum = 100, default = 20)]
    limit: Option<i64>,
}

/// List pruning jobs, newest first.
#[utoipa::path(get, path = "/v1/pruning/jobs", tag = "pruning", params(ListQuery),
    responses((status = 200, description = "Pruning jobs, newest first", body = JobList),
              (status = "4XX", description = "Invalid request", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<JobList>> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("invalid_limit", "limit must be in 1..=100").param("limit"));
    }
    if let Some(after) = &q.after {
        check_id("after", after)?;
    }
    let mut rows = state
        .db
        .list_jobs("pruning", &caller.viewer(), q.after.as_deref(), limit + 1)
        .await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Ok(Json(JobList {
        object: "list".into(),
        data: rows.iter().map(job_view).collect(),
        has_more,
    }))
}

/// The job `id` of this kind, if `caller` may see it (else a 404, as if there were none).
pub async fn find(state: &AppState, caller: &Caller, id: &str, kind: &str) -> ApiResult<JobRow> {
    check_id("id", id)?;
    match state.db.job(id).await? {
        Some(j)
            if j.kind == kind && caller.can_read(&j.owner, Visibility::parse(&j.visibility)) =>
        {
            Ok(j)
        }
        _ => Err(ApiError::not_found(
            "job_not_found",
            format!("no {kind} job {}", quoted(id)),
        )),
    }
}

/// A pruning job.
#[utoipa::path(get, path = "/v1/pruning/jobs/{id}", tag = "pruning",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The job", body = Job),
              (status = "4XX", description = "No such job", body = ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    Ok(Json(job_view(
        &find(&state, &caller, &id, "pruning").await?,
    )))
}

/// Cancel a pruning job.
#[utoipa::path(post, path = "/v1/pruning/jobs/{id}/cancel", tag = "pruning",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The job: cancelled at once when queued, between batches when running", body = Job),
              (status = "4XX", description = "No such job", body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    let job = find(&state, &caller, &id, "pruning").await?;
    if !caller.can_modify(&job.owner) {
        return Err(not_owner("job"));
    }
    state.db.request_cancel(&id).await?;
    Ok(Json(job_view(
        &find(&state, &caller, &id, "pruning").await?,
    )))
}

/// A 403 for a lab object the caller sees but does not own.
pub fn not_owner(what: &str) -> ApiError {
    ApiError::forbidden(
        "not_owner",
        format!("this {what} is shared with the lab, but only its owner or an admin may change it"),
    )
}

/// A progress event of a job.
#[derive(Serialize, ToSchema)]
pub struct JobEvent {
    pub id: i64,
    /// `pruning.job.event`
    pub object: String,
    pub created_at: i64,
    pub phase: String,
    pub fraction: f64,
    pub message: String,
    /// The attempt that wrote it (1 for the first run; a re-run after a worker died or drained
    /// counts up).
    pub attempt: i64,
}

#[derive(Serialize, ToSchema)]
pub struct EventList {
    /// `list`
    pub object: String,
    pub data: Vec<JobEvent>,
    pub has_more: bool,
}

fn event_view(e: &EventRow) -> JobEvent {
    JobEvent {
        id: e.id,
        object: "pruning.job.event".into(),
        created_at: e.created_at,
        phase: e.phase.clone(),
        fraction: e.fraction,
        message: e.message.clone(),
        attempt: e.attempt,
    }
}

fn event_json(e: &EventRow) -> String {
    serde_json::to_string(&event_view(e)).unwrap_or_default()
}

/// Progress events of a pruning job.
///
/// A JSON list, or Server-Sent Events (`Accept: text/event-stream`) that follow the job until
/// it ends.
#[utoipa::path(get, path = "/v1/pruning/jobs/{id}/events", tag = "pruning",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The events so far; with `Accept: text/event-stream`, Server-Sent Events (`progress`, then `end`) until the job ends", body = EventList),
              (status = "4XX", description = "No such job", body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    find(&state, &caller, &id, "pruning").await?;
    let wants_sse = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    if !wants_sse {
        let data = state
            .db
            .events(&id, 0)
            .await?
            .iter()
            .map(event_view)
            .collect();
        return Ok(Json(EventList {
            object: "list".into(),
            data,
            has_more: false,
        })
        .into_response());
    }
    // State: (last event id sent, job ended). Poll the table; stop once the job has ended and
    // every event was sent.
    let stream = futures::stream::unfold(
        (state, id, 0i64, false),
        |(state, id, last, done)| async move {
            if done {
                return None;
            }
            loop {
                if state.shutdown.is_cancelled() {
                    return None;
                }
                let rows = state.db.events(&id, last).await.unwrap_or_default();
                let ended = state.db.job(&id).await.ok().flatten().is_none_or(|j| {
                    ["succeeded", "failed", "cancelled"].contains(&j.status.as_str())
                });
                if !rows.is_empty() || ended {
                    let next = rows.last().map_or(last, |e| e.id);
                    let mut batch: Vec<Result<Event, std::convert::Infallible>> = rows
                        .iter()
                        .map(|e| Ok(Event::default().event("progress").data(event_json(e))))
                        .collect();
                    if ended {
                        batch.push(Ok(Event::default().event("end").data("{}")));
                    }
                    return Some((futures::stream::iter(batch), (state, id, next, ended)));
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        },
    )
    .flatten();
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
