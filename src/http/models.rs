//! /v1/models: base models (served from start-up, by name) and pruned variants (which name a
//! parent).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::error::{quoted, ApiError, ApiResult, ErrorBody, Json, Path, Query};
use super::ids::check_id;
use crate::app::AppState;
use crate::db::variants::VariantRow;
use crate::identity::{Caller, Visibility};

/// A base model or a pruned variant.
#[derive(Serialize, ToSchema)]
pub struct Model {
    pub id: String,
    /// `model`
    pub object: String,
    pub owned_by: String,
    pub created: i64,
    /// A variant's base model; null for a base.
    pub parent: Option<String>,
    /// Tokens of prompt + completion the model takes.
    pub context_length: Option<usize>,
    /// Variants: the pruning job that made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Variants: `private` (the owner and admins) or `lab`; base models are the lab's.
    pub visibility: Visibility,
    /// Ready to serve without a load: a base in memory, a variant's edit in the device tier
    /// of the edit pool (or a fine-tuned variant's own model resident).
    pub resident: bool,
    /// Variants: what the job pruned and measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub summary: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    /// `list`
    pub object: String,
    pub data: Vec<Model>,
}

#[derive(Serialize, ToSchema)]
pub struct Deleted {
    pub id: String,
    /// `model`
    pub object: String,
    pub deleted: bool,
}

fn base_view(state: &AppState, name: &str) -> Model {
    Model {
        id: name.to_string(),
        object: "model".into(),
        owned_by: "eigenprune".into(),
        created: 0,
        parent: None,
        visibility: Visibility::Lab,
        context_length: state.host.context_length(name),
        resident: state.host.is_resident(name),
        job: None,
        summary: None,
    }
}

fn variant_view(state: &AppState, v: &VariantRow) -> Model {
    let parent = state
        .host
        .base_named(&v.parent)
        .map_or(v.parent.clone(), |b| b.name.clone());
    Model {
        id: v.id.clone(),
        object: "model".into(),
        owned_by: v.owner.clone(),
        visibility: Visibility::parse(&v.visibility),
        created: v.created_at,
        context_length: state.host.context_length(&parent),
        resident: state.host.is_resident(&v.id),
        parent: Some(parent),
        job: Some(v.job_id.clone()),
        summary: Some(serde_json::from_str(&v.summary).unwrap_or(Value::Null)),
    }
}

/// Base models and pruned variants.
#[utoipa::path(get, path = "/v1/models", tag = "models",
    responses((status = 200, description = "Base models and pruned variants", body = ModelList)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<ModelList>> {
    let mut data: Vec<Model> = state
        .host
        .base_names()
        .iter()
        .map(|m| base_view(&state, m))
        .collect();
    let variants = state.db.variants(&caller.viewer()).await?;
    data.extend(variants.iter().map(|v| variant_view(&state, v)));
    Ok(Json(ModelList {
        object: "list".into(),
        data,
    }))
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("model_not_found", format!("no model {}", quoted(id)))
}

/// The variant `id` if `caller` may see it.
async fn visible_variant(state: &AppState, caller: &Caller, id: &str) -> ApiResult<VariantRow> {
    match state.db.variant(id).await? {
        Some(v) if caller.can_read(&v.owner, Visibility::parse(&v.visibility)) => Ok(v),
        _ => Err(not_found(id)),
    }
}

/// A model.
#[utoipa::path(get, path = "/v1/models/{id}", tag = "models",
    params(("id" = String, Path, description = "A base model's name or a variant's id")),
    responses((status = 200, description = "The model", body = Model),
              (status = "4XX", description = "No such model", body = ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Model>> {
    check_id("id", &id)?;
    if let Some(b) = state.host.base_named(&id) {
        return Ok(Json(base_view(&state, &b.name.clone())));
    }
    let v = visible_variant(&state, &caller, &id).await?;
    Ok(Json(variant_view(&state, &v)))
}

/// What `GET /v1/models/{id}/export` writes.
#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// model.safetensors of the model (a variant: base + edit), in its checkpoint's layout.
    #[default]
    Checkpoint,
    /// A variant's edit as stored (safetensors): the removed directions and bias deltas.
    Edit,
    /// A variant as a PEFT LoRA adapter, a tar of adapter_config.json and
    /// adapter_model.safetensors (LoRA has no biases: the bias deltas are left out).
    PeftLora,
}

impl ExportFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::Checkpoint => "checkpoint",
            Self::Edit => "edit",
            Self::PeftLora => "peft_lora",
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// checkpoint (default), edit or peft_lora.
    #[serde(default)]
    pub format: ExportFormat,
}

/// Export a model: a full checkpoint, or a variant's edit or PEFT LoRA adapter.
#[utoipa::path(get, path = "/v1/models/{id}/export", tag = "models",
    params(("id" = String, Path, description = "A base model's name or a variant's id"), ExportQuery),
    responses((status = 200, description = "model.safetensors, the edit (safetensors), or the adapter (tar)", content_type = "application/octet-stream", body = Vec<u8>),
              (status = "4XX", description = "No such model, or no such form of it", body = ErrorBody)))]
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<ExportQuery>,
) -> ApiResult<Response> {
    check_id("id", &id)?;
    if state.host.base_named(&id).is_some() && !caller.admin && !state.lab.allow_base_export {
        return Err(ApiError::forbidden(
            "base_export_forbidden",
            "exporting a base model needs an admin's key (or a server started with --allow-base-export)",
        ));
    }
    crate::catalog::check_served(&state, &caller, &id, true).await?;
    match q.format {
        ExportFormat::Checkpoint => export_checkpoint(&state, &id).await,
        ExportFormat::Edit => {
            let (_, file) = crate::catalog::variant_edit(&state, &id).await?;
            Ok(attachment(
                &format!("{id}.edit.safetensors"),
                "application/octet-stream",
                axum::body::Body::from(file),
            ))
        }
        ExportFormat::PeftLora => {
            let (v, file) = crate::catalog::variant_edit(&state, &id).await?;
            let (host, scratch) = (state.host.clone(), state.exports_dir());
            // Only the adapter needs the base (its factors are taken against the base's maps).
            let tar = tokio::task::spawn_blocking(move || {
                let base = host.base(&v.parent).map_err(ApiError::internal)?;
                lora_tar(&base, &file, &v.parent, scratch)
            })
            .await
            .map_err(ApiError::internal)??;
            Ok(attachment(
                &format!("{id}.peft-lora.tar"),
                "application/x-tar",
                axum::body::Body::from(tar),
            ))
        }
    }
}

fn attachment(name: &str, content_type: &'static str, body: axum::body::Body) -> Response {
    let disposition = format!("attachment; filename=\"{name}\"");
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response()
}

/// The adapter's two files as one tar, built in memory (an adapter is the size of its factors).
fn lora_tar(
    base: &eigenprune_engine::LoadedModel,
    edit_file: &[u8],
    base_name: &str,
    scratch: std::path::PathBuf,
) -> ApiResult<Vec<u8>> {
    let edit = eigenprune_engine::edit::Edit::from_bytes(edit_file, base.model.device())
        .map_err(ApiError::internal)?;
    let dir = tempdir_in(scratch)?;
    eigenprune_engine::export::export_lora(&base.model, &edit, base_name, &dir).map_err(|e| {
        let _ = std::fs::remove_dir_all(&dir);
        ApiError::invalid("no_lora_form", e.to_string()).param("format")
    })?;
    let mut tar = tar::Builder::new(Vec::new());
    let done = ["adapter_config.json", "adapter_model.safetensors"]
        .iter()
        .try_for_each(|f| tar.append_path_with_name(dir.join(f), f));
    let _ = std::fs::remove_dir_all(&dir);
    done.map_err(ApiError::internal)?;
    tar.into_inner().map_err(ApiError::internal)
}

fn tempdir_in(root: std::path::PathBuf) -> ApiResult<std::path::PathBuf> {
    let dir = root.join(format!("eigenprune-lora-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(ApiError::internal)?;
    Ok(dir)
}

/// The model (base, or base + edit) in its checkpoint's own layout, streamed from a temporary
/// export.
async fn export_checkpoint(state: &AppState, id: &str) -> ApiResult<Response> {
    let model = crate::catalog::applied(state, id).await?;
    let dir = state.exports_dir().join(format!(
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
    Ok(attachment(
        "model.safetensors",
        "application/octet-stream",
        body,
    ))
}

/// Delete a pruned variant (its owner or an admin): it is unloaded, its object removed, and
/// its job says `pruned_model_deleted`.
#[utoipa::path(delete, path = "/v1/models/{id}", tag = "models",
    params(("id" = String, Path, description = "A pruned variant's id")),
    responses((status = 200, description = "Deleted", body = Deleted),
              (status = "4XX", description = "No such variant, or a base model", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Deleted>> {
    check_id("id", &id)?;
    if state.host.base_named(&id).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "base_model",
            "base models cannot be deleted; only pruned variants",
        ));
    }
    let v = visible_variant(&state, &caller, &id).await?;
    if !caller.can_modify(&v.owner) {
        return Err(super::jobs::not_owner("variant"));
    }
    state.db.delete_variant(&id).await?;
    state.db.mark_variant_deleted(&v.job_id).await?;
    state.host.unload(&id);
    if let Err(e) = state.storage.delete(&v.object_key).await {
        tracing::warn!(error = %e, key = %v.object_key, "variant row deleted, object left behind");
    }
    Ok(Json(Deleted {
        id,
        object: "model".into(),
        deleted: true,
    }))
}
