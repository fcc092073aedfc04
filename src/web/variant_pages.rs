//! Pruned variants: the list, and a variant's page (lineage, downloads, a playground that
//! streams the same prompt through the base and the variant side by side).

use axum::extract::State;
use axum::response::Response;
use maud::html;

use super::{error_page, page};
use crate::app::AppState;
use crate::http::error::{ApiError, Path};
use crate::http::ids::check_id;
use crate::http::models::ExportFormat;
use crate::identity::{Caller, Visibility};

pub async fn list(State(state): State<AppState>, caller: Caller) -> Response {
    let variants = match state.db.variants(&caller.viewer()).await {
        Ok(v) => v,
        Err(e) => return error_page(&state, &caller, e.into()),
    };
    let body = html! {
        h1 { "Pruned variants" }
        @if variants.is_empty() {
            p { "None yet: a succeeded pruning job makes one." }
        } @else {
            table id="variants" {
                thead { tr { th { "variant" } th { "base" } th { "job" } th { "what it pruned" } th { "owner" } } }
                tbody {
                    @for v in variants.iter().rev() {
                        tr {
                            td { a href={"/variants/" (v.id)} { code { (v.id) } } }
                            td { (v.parent) }
                            td { a href={"/jobs/" (v.job_id)} { code { (v.job_id) } } }
                            td { code { (v.summary) } }
                            td { (v.owner) " (" (v.visibility) ")" }
                        }
                    }
                }
            }
        }
    };
    page(&state, &caller, "Variants", body)
}

pub async fn variant(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    match render(&state, &caller, &id).await {
        Ok(r) => r,
        Err(e) => error_page(&state, &caller, e),
    }
}

async fn render(state: &AppState, caller: &Caller, id: &str) -> Result<Response, ApiError> {
    check_id("id", id)?;
    let not_found = || ApiError::not_found("model_not_found", format!("no variant {id}"));
    let v = state.db.variant(id).await?.ok_or_else(not_found)?;
    if !caller.can_read(&v.owner, Visibility::parse(&v.visibility)) {
        return Err(not_found());
    }
    let job = state.db.job(&v.job_id).await?;
    let hyper: Option<serde_json::Value> = job
        .as_ref()
        .and_then(|j| serde_json::from_str(&j.params).ok());
    let task = job
        .as_ref()
        .and_then(|j| j.task.clone().or(j.dataset.clone()))
        .unwrap_or_default();
    let finetuned = hyper.as_ref().is_some_and(|h| !h["finetune"].is_null());
    let download = |f: ExportFormat| format!("/v1/models/{id}/export?format={}", f.name());
    let body = html! {
        h1 { "Variant " code { (v.id) } }
        h2 { "Lineage" }
        dl class="facts" {
            dt { "Base model" } dd { (v.parent) }
            dt { "Pruning job" } dd { a href={"/jobs/" (v.job_id)} { code { (v.job_id) } } }
            dt { "Task" } dd { (task) }
            dt { "Owner" } dd { (v.owner) " (" (v.visibility) ")" }
            dt { "Summary" } dd { code { (v.summary) } }
        }
        @if let Some(h) = hyper.as_ref().and_then(|h| h.as_object()) {
            details {
                summary { "Hyperparameters" }
                table { @for (k, val) in h { tr { th scope="row" { (k) } td { code { (val) } } } } }
            }
        }
        h2 { "Download" }
        ul id="downloads" {
            li { a href=(download(ExportFormat::Edit)) download { "The edit" } " (safetensors: the removed singular directions and bias deltas; apply with " code { "eigenprune eval --edit" } ")" }
            @if finetuned {
                li { "No PEFT LoRA adapter: this variant was fine-tuned first, so its change is not low-rank." }
            } @else {
                li { a href=(download(ExportFormat::PeftLora)) download { "PEFT LoRA adapter" } " (tar: adapter_config.json, adapter_model.safetensors; without the bias deltas)" }
            }
            li { a href=(download(ExportFormat::Checkpoint)) download { "Full checkpoint" } " (model.safetensors of base + edit)" }
        }
        h2 { "Playground" }
        form id="playground" class="stack" {
            div class="field" {
                label for="prompt" { "Prompt" }
                textarea id="prompt" name="prompt" rows="3" required { "7 x 8 = " }
            }
            div class="field" {
                label for="max_tokens" { "Tokens" }
                input id="max_tokens" name="max_tokens" type="number" min="1" max="256" value="16";
            }
            button type="submit" id="run-playground" { "Run on both" }
            p class="hint" { "Greedy decoding, streamed from /v1/completions (needs JavaScript)." }
        }
        div class="side-by-side" {
            section { h3 { "Base: " (v.parent) } pre id="out-base" data-model=(v.parent) aria-live="polite" {} }
            section { h3 { "Variant: " (v.id) } pre id="out-variant" data-model=(v.id) aria-live="polite" {} }
        }
    };
    Ok(page(state, caller, &format!("Variant {}", v.id), body))
}
