//! /v1/pruning/jobs: create (validated up front), list, get, cancel, events.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult, Json};
use crate::app::AppState;
use crate::db::events::EventRow;
use crate::db::jobs::{JobRow, NewJob};
use crate::hyper::Hyperparameters;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    pub model: String,
    pub task: Option<String>,
    pub dataset: Option<String>,
    #[serde(default)]
    pub hyperparameters: Hyperparameters,
    pub suffix: Option<String>,
}

/// Checks that the model is served and the task or dataset exists.
pub async fn check_model_and_data(
    state: &AppState,
    model: &str,
    task: Option<&str>,
    dataset: Option<&str>,
    allow_variants: bool,
) -> ApiResult<()> {
    let is_base = state.base_models.iter().any(|m| m == model);
    let is_variant = allow_variants && state.db.variant(model).await?.is_some();
    if !is_base && !is_variant {
        return Err(ApiError::not_found(
            "model_not_found",
            format!(
                "model `{model}` is not served here (base models: {})",
                state.base_models.join(", ")
            ),
        ));
    }
    match (task, dataset) {
        (Some(t), None) if eigenprune_engine::tasks::BUILTIN_TASKS.contains(&t) => Ok(()),
        (Some(t), None) => Err(ApiError::not_found(
            "task_not_found",
            format!(
                "unknown task `{t}` (built-in: {})",
                eigenprune_engine::tasks::BUILTIN_TASKS.join(", ")
            ),
        )),
        (None, Some(d)) => match state.db.dataset(d).await? {
            Some(_) => Ok(()),
            None => Err(ApiError::not_found(
                "dataset_not_found",
                format!("no dataset `{d}`"),
            )),
        },
        _ => Err(ApiError::invalid(
            "task_or_dataset",
            "give exactly one of `task` and `dataset`",
        )),
    }
}

pub async fn create(
    State(state): State<AppState>,
    Json(req): Json<CreateJob>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    req.hyperparameters.to_settings()?;
    if let Some(s) = &req.suffix {
        if s.len() > 64
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ApiError::invalid(
                "invalid_suffix",
                "suffix: up to 64 of [A-Za-z0-9_-]",
            ));
        }
    }
    check_model_and_data(
        &state,
        &req.model,
        req.task.as_deref(),
        req.dataset.as_deref(),
        false,
    )
    .await?;
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
        })
        .await?;
    state.wake.notify_waiters();
    Ok((StatusCode::OK, Json(job_json(&row))))
}

pub fn job_json(j: &JobRow) -> Value {
    let parse = |s: &Option<String>| {
        s.as_deref()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
    };
    let object = if j.kind == "pruning" {
        "pruning.job"
    } else {
        "evaluation"
    };
    let mut v = json!({
        "id": j.id,
        "object": object,
        "model": j.model,
        "task": j.task,
        "dataset": j.dataset,
        "status": j.status,
        "created_at": j.created_at,
        "started_at": j.started_at,
        "finished_at": j.finished_at,
        "result": parse(&j.result),
        "error": j.error_code.as_ref().map(|c| json!({"code": c, "message": j.error_message})),
    });
    if j.kind == "pruning" {
        v["hyperparameters"] = parse(&Some(j.params.clone())).unwrap_or(Value::Null);
        v["suffix"] = json!(j.suffix);
        v["pruned_model"] = json!(j.pruned_model);
    } else {
        v["split"] = parse(&Some(j.params.clone()))
            .and_then(|p| p.get("split").cloned())
            .unwrap_or(Value::Null);
    }
    v
}

#[derive(Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<i64>,
}

pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid(
            "invalid_limit",
            "limit must be in 1..=100",
        ));
    }
    let mut rows = state
        .db
        .list_jobs("pruning", q.after.as_deref(), limit + 1)
        .await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Ok(Json(json!({
        "object": "list",
        "data": rows.iter().map(job_json).collect::<Vec<_>>(),
        "has_more": has_more,
    })))
}

pub async fn find(state: &AppState, id: &str, kind: &str) -> ApiResult<JobRow> {
    match state.db.job(id).await? {
        Some(j) if j.kind == kind => Ok(j),
        _ => Err(ApiError::not_found(
            "job_not_found",
            format!("no {kind} job `{id}`"),
        )),
    }
}

pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(job_json(&find(&state, &id, "pruning").await?)))
}

pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    find(&state, &id, "pruning").await?;
    state.db.request_cancel(&id).await?;
    Ok(Json(job_json(&find(&state, &id, "pruning").await?)))
}

fn event_json(e: &EventRow) -> Value {
    json!({"id": e.id, "object": "pruning.job.event", "created_at": e.created_at,
           "phase": e.phase, "fraction": e.fraction, "message": e.message})
}

/// Progress events as a JSON list, or as Server-Sent Events (`Accept: text/event-stream`)
/// that follow the job until it ends.
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    find(&state, &id, "pruning").await?;
    let wants_sse = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    if !wants_sse {
        let data: Vec<Value> = state
            .db
            .events(&id, 0)
            .await?
            .iter()
            .map(event_json)
            .collect();
        return Ok(
            Json(json!({"object": "list", "data": data, "has_more": false})).into_response(),
        );
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
                let rows = state.db.events(&id, last).await.unwrap_or_default();
                let ended = state.db.job(&id).await.ok().flatten().is_none_or(|j| {
                    ["succeeded", "failed", "cancelled"].contains(&j.status.as_str())
                });
                if !rows.is_empty() || ended {
                    let next = rows.last().map_or(last, |e| e.id);
                    let mut batch: Vec<Result<Event, std::convert::Infallible>> = rows
                        .iter()
                        .map(|e| {
                            Ok(Event::default()
                                .event("progress")
                                .data(event_json(e).to_string()))
                        })
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
