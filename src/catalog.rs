//! Which models the service serves and how a name becomes what serves it: a base model by its
//! `--preload` name (resident in the host), or a pruned variant by its id (its base plus its
//! edit, from the host's edit pool or read from the object store on a miss). Handlers and
//! workers alike resolve here.

use std::sync::Arc;

use eigenprune_engine::LoadedModel;

use crate::app::AppState;
use crate::db::variants::VariantRow;
use crate::engine_host::Served;
use crate::http::error::{quoted, ApiError, ApiResult};
use crate::http::ids::check_id;
use crate::identity::{Caller, Visibility};

/// A 404 for a model that is not served.
pub fn not_served(state: &AppState, id: &str) -> ApiError {
    ApiError::not_found(
        "model_not_found",
        format!(
            "model {} is not served here (base models: {}; pruned variants: GET /v1/models)",
            quoted(id),
            state.host.base_names().join(", ")
        ),
    )
    .param("model")
}

/// Whether `caller` may read the variant `id` (one they may not is as good as absent).
async fn visible_variant(state: &AppState, caller: &Caller, id: &str) -> ApiResult<bool> {
    Ok(state
        .db
        .variant(id)
        .await?
        .is_some_and(|v| caller.can_read(&v.owner, Visibility::parse(&v.visibility))))
}

/// Whether `id` names a served model `caller` may use (a variant only when `allow_variants`).
pub async fn check_served(
    state: &AppState,
    caller: &Caller,
    id: &str,
    allow_variants: bool,
) -> ApiResult<()> {
    check_id("model", id)?;
    let found = state.host.base_named(id).is_some()
        || (allow_variants && visible_variant(state, caller, id).await?);
    if found {
        Ok(())
    } else {
        Err(not_served(state, id))
    }
}

/// Pruning a pruned variant is refused: its edit is defined against its base's singular
/// directions, and a second edit would be against the edited matrices' (a different SVD), so
/// the two do not compose into one edit of the base. Prune the base with the other task.
pub async fn refuse_variant_of_variant(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> ApiResult<()> {
    check_id("model", id)?;
    if state.host.base_named(id).is_some() {
        return Ok(());
    }
    match state.db.variant(id).await? {
        Some(v) if caller.can_read(&v.owner, Visibility::parse(&v.visibility)) => {
            Err(ApiError::invalid(
                "variant_of_variant",
                format!(
                    "{} is a pruned variant of {}; pruning jobs take a base model (a variant's edit \
                     is relative to its base's singular directions, so edits do not stack): prune {} instead",
                    quoted(id),
                    quoted(&v.parent),
                    quoted(&v.parent)
                ),
            )
            .param("model"))
        }
        _ => Ok(()),
    }
}

/// A model `caller` may use, served.
pub async fn resolve(state: &AppState, caller: &Caller, id: &str) -> ApiResult<Served> {
    check_served(state, caller, id, true).await?;
    load(state, id).await
}

/// What a model id names: a served base, or a registered variant.
enum Named {
    Base(String),
    Variant(VariantRow),
}

async fn named(state: &AppState, id: &str) -> ApiResult<Named> {
    check_id("model", id)?;
    if state.host.base_named(id).is_some() {
        return Ok(Named::Base(id.to_string()));
    }
    match state.db.variant(id).await? {
        Some(v) => Ok(Named::Variant(v)),
        None => Err(not_served(state, id)),
    }
}

/// A base model or variant, served (the base loaded on first use, a cold variant's edit read
/// from the store), on blocking threads; no access check (workers run what a checked request
/// queued).
pub async fn load(state: &AppState, id: &str) -> ApiResult<Served> {
    let host = state.host.clone();
    let v = match named(state, id).await? {
        Named::Base(name) => return blocking(move || host.serve_base(&name)).await,
        Named::Variant(v) => v,
    };
    let (h, vid, parent) = (host.clone(), v.id.clone(), v.parent.clone());
    if let Some(served) = blocking(move || h.cached_variant(&vid, &parent)).await? {
        return Ok(served);
    }
    let file = edit_file(state, &v).await?;
    blocking(move || host.variant(&v.id, &v.parent, &file)).await
}

/// A variant's row and its stored edit file (a base has none: `no_edit`); no access check.
pub async fn variant_edit(state: &AppState, id: &str) -> ApiResult<(VariantRow, bytes::Bytes)> {
    match named(state, id).await? {
        Named::Base(_) => Err(ApiError::invalid(
            "no_edit",
            format!(
                "{} is a base model: it has no edit (export format=checkpoint)",
                quoted(id)
            ),
        )
        .param("format")),
        Named::Variant(v) => {
            let file = edit_file(state, &v).await?;
            Ok((v, file))
        }
    }
}

/// A base model, or a variant's base with its edit applied to the weights (for an export).
pub async fn applied(state: &AppState, id: &str) -> ApiResult<Arc<LoadedModel>> {
    let host = state.host.clone();
    let v = match named(state, id).await? {
        Named::Base(name) => return blocking(move || host.base(&name)).await,
        Named::Variant(v) => v,
    };
    let file = edit_file(state, &v).await?;
    blocking(move || host.applied(&v.parent, &file)).await
}

/// A variant's edit file, from the object store.
async fn edit_file(state: &AppState, v: &VariantRow) -> ApiResult<bytes::Bytes> {
    state
        .storage
        .get(&v.object_key)
        .await
        .map_err(ApiError::internal)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}
