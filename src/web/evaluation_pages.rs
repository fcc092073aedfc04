//! Evaluations: compare several models (bases and variants) on one task in one table and one
//! chart; the form submits one evaluation job of all of them.

use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use eigenprune_engine::tasks::BUILTIN_TASKS;
use maud::{html, Markup};

use super::charts::{self, BarGroup};
use super::views::EvaluationResult;
use super::{error_page, page, with_status};
use crate::app::AppState;
use crate::http::error::{ApiError, Json, Path};
use crate::http::evaluations::{self, CreateEvaluation, Split};
use crate::http::jobs::{self, Job};
use crate::identity::{Caller, Visibility};

/// Evaluations listed, newest first.
const LISTED: i64 = 100;

async fn model_names(state: &AppState, caller: &Caller) -> Result<Vec<String>, ApiError> {
    let mut names = state.host.base_names();
    names.extend(
        state
            .db
            .variants(&caller.viewer())
            .await?
            .into_iter()
            .map(|v| v.id),
    );
    Ok(names)
}

fn form(models: &[String], error: Option<&ApiError>) -> Markup {
    html! {
        form id="evaluation-form" class="stack" method="post" action="/evaluations" enctype="multipart/form-data" {
            @if let Some(e) = error {
                p class="error field-error" role="alert" id="evaluation-error" { (e.message) }
            }
            fieldset {
                legend { "Models (the variants of one base run in one batched pass)" }
                @for m in models {
                    label { input type="checkbox" name="models" value=(m); " " (m) } br;
                }
            }
            div class="field" {
                label for="eval-task" { "Task" }
                select id="eval-task" name="task" { @for t in BUILTIN_TASKS { option value=(t) { (t) } } }
            }
            div class="field" {
                label for="split" { "Split" }
                select id="split" name="split" { option value="test" { "test" } option value="train" { "train" } }
            }
            button type="submit" id="submit-evaluation" { "Evaluate" }
        }
    }
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> Response {
    show(&state, &caller, None).await
}

async fn show(state: &AppState, caller: &Caller, error: Option<ApiError>) -> Response {
    let (rows, models) = match (
        state
            .db
            .list_jobs("evaluation", &caller.viewer(), None, LISTED)
            .await,
        model_names(state, caller).await,
    ) {
        (Ok(r), Ok(m)) => (r, m),
        (Err(e), _) => return error_page(state, caller, e.into()),
        (_, Err(e)) => return error_page(state, caller, e),
    };
    let evaluations: Vec<Job> = rows.iter().map(jobs::job_view).collect();
    let body = html! {
        h1 { "Evaluations" }
        h2 { "Compare models on a task" }
        (form(&models, error.as_ref()))
        h2 { "Recent evaluations" }
        table id="evaluations" {
            thead { tr { th { "evaluation" } th { "models" } th { "task" } th { "status" } th { "owner" } } }
            tbody {
                @for e in &evaluations {
                    tr {
                        td { a href={"/evaluations/" (e.id)} { code { (e.id) } } }
                        td { (e.model) }
                        td { (e.task.as_deref().or(e.dataset.as_deref()).unwrap_or("-")) }
                        td { span class="status" data-status=(e.status) { (e.status) } }
                        td { (e.owner) }
                    }
                }
            }
        }
    };
    let r = page(state, caller, "Evaluations", body);
    if error.is_some() {
        with_status(r, StatusCode::BAD_REQUEST)
    } else {
        r
    }
}

pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    mut body: Multipart,
) -> Response {
    let (mut models, mut task, mut split) = (Vec::new(), String::new(), String::from("test"));
    loop {
        match body.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_string();
                let value = field.text().await.unwrap_or_default();
                match name.as_str() {
                    "models" => models.push(value),
                    "task" => task = value,
                    "split" => split = value,
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(e) => {
                return show(
                    &state,
                    &caller,
                    Some(ApiError::invalid("invalid_form", e.body_text())),
                )
                .await
            }
        }
    }
    if models.is_empty() {
        return show(
            &state,
            &caller,
            Some(ApiError::invalid("invalid_models", "choose at least one model").param("models")),
        )
        .await;
    }
    let req = CreateEvaluation {
        model: None,
        models: Some(models),
        task: Some(task),
        dataset: None,
        split: if split == "train" {
            Split::Train
        } else {
            Split::Test
        },
        visibility: Visibility::Private,
    };
    match evaluations::create(State(state.clone()), caller.clone(), Json(req)).await {
        Ok(Json(job)) => Redirect::to(&format!("/evaluations/{}", job.id)).into_response(),
        Err(e) => show(&state, &caller, Some(e)).await,
    }
}

pub async fn evaluation(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    let row = match jobs::find(&state, &caller, &id, "evaluation").await {
        Ok(r) => r,
        Err(e) => return error_page(&state, &caller, e),
    };
    let job = jobs::job_view(&row);
    let lines = job
        .result
        .clone()
        .and_then(|r| serde_json::from_value::<EvaluationResult>(r).ok())
        .map(|r| r.lines(&job.model));
    let body = html! {
        h1 { "Evaluation " code { (job.id) } }
        dl class="facts" {
            dt { "Task" } dd { (job.task.as_deref().or(job.dataset.as_deref()).unwrap_or("-")) " (" (job.split.as_deref().unwrap_or("test")) ")" }
            dt { "Status" } dd { span class="status" data-status=(job.status) { (job.status) } }
            dt { "Owner" } dd { (job.owner) }
        }
        @if matches!(job.status.as_str(), "queued" | "running") {
            p id="live-evaluation" data-job=(job.id) { "Running; this page reloads when it ends." }
        }
        @if let Some(e) = &job.error {
            p class="error" role="alert" { code { (e.code) } " " (e.message.as_deref().unwrap_or("")) }
        }
        @if let Some(lines) = &lines {
            @let choice = lines.iter().any(|l| l.accuracy.choice_accuracy.is_some());
            @let series: Vec<&str> = if choice { vec!["paper metric", "choice accuracy"] } else { vec!["paper metric"] };
            (charts::grouped_bars("evaluation-chart", "Accuracy per model", &series,
                &lines.iter().map(|l| BarGroup {
                    label: l.model.clone().unwrap_or_default(),
                    bars: std::iter::once((0, l.accuracy.accuracy, format!("{}: {}/{}", l.model.as_deref().unwrap_or(""), l.accuracy.correct, l.accuracy.total)))
                        .chain(l.accuracy.choice_accuracy.map(|c| (1, c, format!("choice {:.2}%", 100.0 * c))))
                        .collect(),
                }).collect::<Vec<_>>(), 1.0, "accuracy"))
            table id="evaluation" {
                thead { tr { th { "model" } th { "paper metric" } th { "choice accuracy" } th { "test size" } } }
                tbody {
                    @for l in lines {
                        tr {
                            td { (l.model.as_deref().unwrap_or("")) }
                            td class="num" { (l.accuracy.correct) "/" (l.accuracy.total) " = " (format!("{:.2}%", 100.0 * l.accuracy.accuracy)) }
                            td class="num" { (l.accuracy.choice_accuracy.map_or("-".into(), |c| format!("{:.2}%", 100.0 * c))) }
                            td class="num" { (l.test_size) }
                        }
                    }
                }
            }
        }
    };
    page(&state, &caller, &format!("Evaluation {}", job.id), body)
}
