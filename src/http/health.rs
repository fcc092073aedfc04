//! /health (the process answers), /ready (database and object store reachable), /metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::Json;
use crate::app::AppState;
use crate::metrics::Gauges;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub database: bool,
    pub object_store: bool,
}

/// The process answers.
#[utoipa::path(get, path = "/health", tag = "service", security(()),
    responses((status = 200, description = "The process answers", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// The database and the object store are reachable.
#[utoipa::path(get, path = "/ready", tag = "service", security(()),
    responses((status = 200, description = "Database and object store reachable", body = Readiness),
              (status = 503, description = "One of them is not", body = Readiness)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let database = state.db.ping().await;
    let object_store = state.storage.ping().await;
    let status = if database && object_store {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            database,
            object_store,
        }),
    )
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let host = state.host.clone();
    let (resident_models, resident_model_bytes, device_memory, decoding, edit_pool) =
        tokio::task::spawn_blocking(move || {
            (
                host.resident().len(),
                host.resident_bytes(),
                host.device_memory(),
                host.decoding_load(),
                host.pool.usage(),
            )
        })
        .await
        .unwrap_or_default();
    let gauges = Gauges {
        jobs: state.db.count_by_status().await.unwrap_or_default(),
        resident_models,
        resident_model_bytes,
        device_memory,
        decoding,
        edit_pool,
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&gauges),
    )
}
