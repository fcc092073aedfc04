//! Shared state and the router; `serve` runs it on a listener (tests use port 0).

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::db::Db;
use crate::engine_host::ModelHost;
use crate::http;
pub use crate::metrics::Metrics;
use crate::storage::Storage;

/// Largest request body accepted (JSONL uploads included).
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub storage: Storage,
    pub host: Arc<ModelHost>,
    /// Base models this service serves (`--preload`), by the name users give.
    pub base_models: Arc<Vec<String>>,
    pub metrics: Arc<Metrics>,
    /// Wakes idle workers when a job is queued.
    pub wake: Arc<Notify>,
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/health", get(http::health::health))
        .route("/ready", get(http::health::ready))
        .route("/metrics", get(http::health::metrics))
        .route(
            "/v1/pruning/jobs",
            post(http::jobs::create).get(http::jobs::list),
        )
        .route("/v1/pruning/jobs/{id}", get(http::jobs::get_one))
        .route("/v1/pruning/jobs/{id}/cancel", post(http::jobs::cancel))
        .route("/v1/pruning/jobs/{id}/events", get(http::jobs::events))
        .route("/v1/evaluations", post(http::evaluations::create))
        .route("/v1/evaluations/{id}", get(http::evaluations::get_one))
        .route("/v1/models", get(http::models::list))
        .route(
            "/v1/models/{*id}",
            get(http::models::get_one).delete(http::models::delete),
        )
        .route("/v1/completions", post(http::completions::create))
        .route(
            "/v1/datasets",
            post(http::datasets::create).get(http::datasets::list),
        )
        .route("/v1/datasets/{id}", get(http::datasets::get_one))
        .fallback(http::error::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http::count_requests,
        ))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

pub async fn serve(listener: TcpListener, state: AppState) -> anyhow::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
