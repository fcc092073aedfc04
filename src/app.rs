//! Shared state and the router; `serve` runs it on a listener (tests use port 0). The routes
//! and the OpenAPI document come from the same list (utoipa-axum): a handler is documented by
//! its own request and response types, or it is not served.

use std::path::PathBuf;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::db::Db;
use crate::engine_host::ModelHost;
use crate::http;
use crate::http::limits::Limiter;
use crate::lab::{AuthMode, LabArgs};
pub use crate::metrics::Metrics;
use crate::storage::Storage;

/// Largest request body accepted (JSONL uploads included).
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub storage: Storage,
    /// Resident models, and the base models served by name.
    pub host: Arc<ModelHost>,
    pub metrics: Arc<Metrics>,
    /// Wakes idle workers when a job is queued.
    pub wake: Arc<Notify>,
    /// Authentication, default quotas and bounds.
    pub lab: Arc<LabArgs>,
    /// Resolved from `lab.auth` and the bound address by `serve`.
    pub auth: AuthMode,
    /// Per-user request rates and completion sequences held, on this replica.
    pub limiter: Arc<Limiter>,
    /// Cancelled on SIGTERM/SIGINT: streams are cut, workers give their jobs back.
    pub shutdown: CancellationToken,
    /// Scratch space for exports (under --data-dir, not the system's /tmp).
    pub scratch: PathBuf,
    /// The dashboard's signed-in sessions (this replica's memory).
    pub sessions: Arc<crate::web::session::Sessions>,
}

impl AppState {
    /// Where exports are written before they stream out.
    pub fn exports_dir(&self) -> PathBuf {
        self.scratch.join("exports")
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "eigenprune",
        description = "Eigenpruning jobs, pruned variants, OpenAI-compatible completions and chat, evaluations. Every error is `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`."
    ),
    tags(
        (name = "completions", description = "OpenAI-compatible generation"),
        (name = "pruning", description = "Pruning jobs"),
        (name = "evaluations", description = "Evaluation jobs"),
        (name = "models", description = "Base models and pruned variants"),
        (name = "datasets", description = "Uploaded task data"),
        (name = "service", description = "Health and metrics"),
        (name = "admin", description = "API keys and quotas (admins)")
    ),
    modifiers(&BearerKeys),
    security(("api_key" = []))
)]
struct ApiDoc;

/// `Authorization: Bearer ep-...` on every operation that does not say otherwise.
struct BearerKeys;

impl utoipa::Modify for BearerKeys {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "api_key",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "An API key, ep-... (not needed when the server runs with --auth none)",
                        ))
                        .build(),
                ),
            );
    }
}

/// Every API route with its OpenAPI document.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use http::{admin, chat, completions, datasets, evaluations, health, jobs, models};
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
        .routes(routes!(jobs::create, jobs::list))
        .routes(routes!(jobs::get_one))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::events))
        .routes(routes!(evaluations::create))
        .routes(routes!(evaluations::get_one))
        .routes(routes!(models::list))
        .routes(routes!(models::get_one, models::delete))
        .routes(routes!(models::export))
        .routes(routes!(completions::create))
        .routes(routes!(chat::create))
        .routes(routes!(datasets::create, datasets::list))
        .routes(routes!(datasets::get_one, datasets::delete))
        .routes(routes!(admin::create_key, admin::list_keys))
        .routes(routes!(admin::revoke_key))
        .routes(routes!(admin::set_quota))
        .split_for_parts()
}

/// The OpenAPI document (also served at /openapi.json, and read at /docs).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

pub fn app(state: AppState) -> Router {
    let (api, doc) = routes();
    let json = serde_json::to_value(&doc).unwrap_or_default();
    api.route(
        "/openapi.json",
        get(move || async move { axum::Json(json) }),
    )
    .route("/docs", get(http::docs::page))
    .route("/docs/rapidoc-min.js", get(http::docs::rapidoc))
    .merge(crate::web::routes())
    .fallback(http::error::not_found)
    .method_not_allowed_fallback(http::error::method_not_allowed)
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        http::auth::authenticate,
    ))
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        http::count_requests,
    ))
    .layer(tower_http::limit::RequestBodyLimitLayer::new(
        MAX_BODY_BYTES,
    ))
    .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
    // Outermost: whatever the layers inside answer leaves in the one error shape.
    .layer(axum::middleware::from_fn(http::error::uniform_errors))
    .with_state(state)
}

/// Serves until `state.shutdown` is cancelled, then stops accepting and waits for the open
/// requests (streams are cut by their own generation loops).
pub async fn serve(listener: TcpListener, state: AppState) -> anyhow::Result<()> {
    let stop = state.shutdown.clone();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await?;
    Ok(())
}
