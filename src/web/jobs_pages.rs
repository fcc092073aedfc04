//! The jobs list (filterable, live), the job form, and a job's page.

use std::collections::BTreeSet;

use axum::extract::{Multipart, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::job_form::{self, FieldErrors, JobForm};
use super::job_page::{JobPage, Pick};
use super::views::{Analysis, PruneResult};
use super::{error_page, page, with_status};
use crate::app::AppState;
use crate::http::error::{ApiResult, Json, Path};
use crate::http::jobs::{self, CreateJob, Job};
use crate::identity::Caller;

/// Jobs the list reads (newest first); the filters apply to these.
const LISTED: i64 = 500;

#[derive(Deserialize, Default)]
pub struct Filters {
    model: Option<String>,
    task: Option<String>,
    status: Option<String>,
    owner: Option<String>,
    /// The id of a job just submitted through the form.
    submitted: Option<String>,
}

fn task_of(j: &Job) -> &str {
    j.task.as_deref().or(j.dataset.as_deref()).unwrap_or("-")
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(f): Query<Filters>,
) -> Response {
    let rows = match state
        .db
        .list_jobs("pruning", &caller.viewer(), None, LISTED)
        .await
    {
        Ok(rows) => rows,
        Err(e) => return error_page(&state, &caller, e.into()),
    };
    let all: Vec<Job> = rows.iter().map(jobs::job_view).collect();
    let distinct = |get: fn(&Job) -> &str| -> BTreeSet<String> {
        all.iter().map(|j| get(j).to_string()).collect()
    };
    let (models, tasks, statuses, owners) = (
        distinct(|j| &j.model),
        distinct(task_of),
        distinct(|j| &j.status),
        distinct(|j| &j.owner),
    );
    let keep = |want: &Option<String>, have: &str| {
        want.as_deref().is_none_or(|w| w.is_empty() || w == have)
    };
    let shown: Vec<&Job> = all
        .iter()
        .filter(|j| {
            keep(&f.model, &j.model)
                && keep(&f.task, task_of(j))
                && keep(&f.status, &j.status)
                && keep(&f.owner, &j.owner)
        })
        .collect();
    let select = |name: &str, label: &str, options: &BTreeSet<String>, chosen: &Option<String>| {
        html! {
            div class="field" {
                label for={"filter-" (name)} { (label) }
                select id={"filter-" (name)} name=(name) {
                    option value="" { "any" }
                    @for o in options { option selected[chosen.as_deref() == Some(o.as_str())] { (o) } }
                }
            }
        }
    };
    let body = html! {
        h1 { "Pruning jobs" }
        @if let Some(id) = &f.submitted {
            p role="status" id="submitted" { "Job " a href={"/jobs/" (id)} { code { (id) } } " submitted; it updates below as it runs." }
        }
        p { a href="/jobs/new" id="new-job" { "Submit a pruning job" } }
        form method="get" class="filters" aria-label="filter jobs" {
            (select("model", "Model", &models, &f.model))
            (select("task", "Task", &tasks, &f.task))
            (select("status", "Status", &statuses, &f.status))
            (select("owner", "Owner", &owners, &f.owner))
            button type="submit" { "Filter" }
        }
        @if shown.is_empty() {
            p { "No jobs yet." }
        } @else {
            table id="jobs" {
                thead { tr { th { "job" } th { "model" } th { "task" } th { "status" } th { "progress" } th { "before" } th { "after" } th { "variant" } th { "owner" } } }
                tbody {
                    @for j in &shown {
                        @let result: Option<PruneResult> = j.result.clone().and_then(|r| serde_json::from_value(r).ok());
                        tr data-job=(j.id) {
                            td { a href={"/jobs/" (j.id)} { code { (j.id) } } }
                            td { (j.model) }
                            td { (task_of(j)) }
                            td { span class="status" data-status=(j.status) { (j.status) } }
                            td { progress max="1" value=(if j.status == "succeeded" { 1.0 } else { 0.0 }) {} " " span class="phase" {} }
                            td class="num before" { (pct(result.as_ref().map(|r| r.accuracy_before.accuracy))) }
                            td class="num after" { (pct(result.as_ref().and_then(|r| r.portions.first()).map(|p| p.accuracy_after.accuracy))) }
                            td class="variant" {
                                @if let Some(Some(v)) = &j.pruned_model { a href={"/variants/" (v)} { (v) } }
                            }
                            td {
                                (j.owner)
                                @if matches!(j.status.as_str(), "queued" | "running") && caller.can_modify(&j.owner) {
                                    form method="post" action={"/jobs/" (j.id) "/cancel"} class="inline" {
                                        button type="submit" aria-label={"Cancel " (j.id)} { "Cancel" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            p class="hint" { "The newest " (LISTED) " jobs you may see, filtered." }
        }
    };
    page(&state, &caller, "Jobs", body)
}

/// The form's choices: base models, and the data sets the caller may use.
async fn choices(
    state: &AppState,
    caller: &Caller,
) -> ApiResult<(Vec<String>, Vec<(String, String)>)> {
    let models = state.host.base_names();
    let datasets = state
        .db
        .datasets(&caller.viewer())
        .await?
        .into_iter()
        .map(|d| (d.id, d.name))
        .collect();
    Ok((models, datasets))
}

pub async fn new_form(State(state): State<AppState>, caller: Caller) -> Response {
    show_form(&state, &caller, &JobForm::default(), &FieldErrors::new()).await
}

async fn show_form(
    state: &AppState,
    caller: &Caller,
    form: &JobForm,
    errors: &FieldErrors,
) -> Response {
    let (models, datasets) = match choices(state, caller).await {
        Ok(c) => c,
        Err(e) => return error_page(state, caller, e),
    };
    let body = html! {
        h1 { "Submit a pruning job" }
        p class="hint" { "The service validates the job as the API does; nothing is submitted while a field is wrong." }
        (job_form::render(form, errors, &models, &datasets))
    };
    let r = page(state, caller, "New job", body);
    if errors.is_empty() {
        r
    } else {
        with_status(r, StatusCode::BAD_REQUEST)
    }
}

pub async fn submit(State(state): State<AppState>, caller: Caller, body: Multipart) -> Response {
    let form = match JobForm::read(body).await {
        Ok(f) => f,
        Err(e) => {
            let errors = FieldErrors::from([("form".to_string(), e)]);
            return show_form(&state, &caller, &JobForm::default(), &errors).await;
        }
    };
    match create(&state, &caller, &form).await {
        Ok(id) => Redirect::to(&format!("/?submitted={id}")).into_response(),
        Err(errors) => show_form(&state, &caller, &form, &errors).await,
    }
}

/// Checks every field, uploads the data set if one came, then creates the job through the
/// API's handler; any refusal is a field's error.
async fn create(state: &AppState, caller: &Caller, form: &JobForm) -> Result<String, FieldErrors> {
    let as_field = |e: crate::http::error::ApiError, default: &str| {
        let field = e.param.clone().unwrap_or_else(|| default.to_string());
        FieldErrors::from([(field, e.message)])
    };
    let hyperparameters = form.hyperparameters()?;
    crate::catalog::check_served(state, caller, &form.model, false)
        .await
        .map_err(|e| as_field(e, "model"))?;
    let (task, dataset) = match &form.upload {
        Some((file, data)) => {
            let query = crate::http::datasets::UploadQuery {
                name: Some(file.chars().filter(|c| !c.is_control()).take(128).collect()),
                visibility: Some(form.visibility()),
            };
            let Json(ds) = crate::http::datasets::create(
                State(state.clone()),
                caller.clone(),
                crate::http::error::Query(query),
                data.clone(),
            )
            .await
            .map_err(|e| FieldErrors::from([("jsonl".to_string(), e.message)]))?;
            (None, Some(ds.id))
        }
        None if form.task.starts_with("ds-") => (None, Some(form.task.clone())),
        None => (Some(form.task.clone()), None),
    };
    let req = CreateJob {
        model: form.model.clone(),
        task,
        dataset,
        hyperparameters,
        suffix: Some(form.suffix.trim().to_string()).filter(|s| !s.is_empty()),
        visibility: form.visibility(),
    };
    let Json(job) = jobs::create(State(state.clone()), caller.clone(), Json(req))
        .await
        .map_err(|e| {
            let e = match e.param.as_deref() {
                Some("dataset") => e.param("task"),
                _ => e,
            };
            as_field(e, "form")
        })?;
    Ok(job.id)
}

pub async fn job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(pick): Query<Pick>,
) -> Response {
    let row = match jobs::find(&state, &caller, &id, "pruning").await {
        Ok(r) => r,
        Err(e) => return error_page(&state, &caller, e),
    };
    let job = jobs::job_view(&row);
    let result: Option<PruneResult> = job
        .result
        .as_ref()
        .and_then(|r| serde_json::from_value(r.clone()).ok());
    let analysis = load_analysis(&state, &job).await;
    let body = JobPage {
        can_cancel: caller.can_modify(&job.owner),
        job: &job,
        result: result.as_ref(),
        analysis: analysis.as_ref(),
        pick: &pick,
        offline: false,
    }
    .render();
    page(&state, &caller, &format!("Job {}", job.id), body)
}

/// A succeeded job's analysis from the object store (None for jobs older than the dashboard).
async fn load_analysis(state: &AppState, job: &Job) -> Option<Analysis> {
    if job.status != "succeeded" {
        return None;
    }
    let bytes = state
        .storage
        .get(&crate::report::analysis_key(&job.id))
        .await
        .ok()?;
    tokio::task::spawn_blocking(move || serde_json::from_slice(&bytes).ok())
        .await
        .ok()
        .flatten()
}

/// Cancels through the API's handler (its owner or an admin), then back to the job's page.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    match jobs::cancel(State(state.clone()), caller.clone(), Path(id.clone())).await {
        Ok(_) => Redirect::to(&format!("/jobs/{id}")).into_response(),
        Err(e) => error_page(&state, &caller, e),
    }
}
