//! Which models the service serves and how a name becomes a resident model: a base model by
//! its `--preload` name (resident in the host), or a pruned variant by its id (its edit read
//! from the object store and applied on the host). Handlers and workers alike resolve here.

use std::sync::Arc;

use eigenprune_engine::LoadedModel;

use crate::app::AppState;
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

/// A model `caller` may use, resident.
pub async fn resolve(state: &AppState, caller: &Caller, id: &str) -> ApiResult<Arc<LoadedModel>> {
    check_served(state, caller, id, true).await?;
    load(state, id).await
}

/// A base model or variant, resident (loaded on first use, on a blocking thread); no access
/// check (workers run what a checked request queued).
pub async fn load(state: &AppState, id: &str) -> ApiResult<Arc<LoadedModel>> {
    check_id("model", id)?;
    let host = state.host.clone();
    if host.base_named(id).is_some() {
        let id = id.to_string();
        return tokio::task::spawn_blocking(move || host.base(&id))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal);
    }
    let Some(v) = state.db.variant(id).await? else {
        return Err(not_served(state, id));
    };
    let bytes = state
        .storage
        .get(&v.object_key)
        .await
        .map_err(ApiError::internal)?;
    tokio::task::spawn_blocking(move || host.variant(&v.id, &v.parent, &bytes))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}
