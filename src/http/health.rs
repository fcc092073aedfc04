//! /health (the process answers), /ready (database and object store reachable), /metrics.

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{json, Value};

use super::error::Json;
use crate::app::AppState;
use crate::metrics::Gauges;

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let db = state.db.ping().await;
    let store = state.storage.ping().await;
    let status = if db && store {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"database": db, "object_store": store})))
}

/// Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> String {
    let host = state.host.clone();
    let (resident_models, resident_model_bytes, device_memory, decoding) =
        tokio::task::spawn_blocking(move || {
            (
                host.resident().len(),
                host.resident_bytes(),
                host.device_memory(),
                host.decoding_load(),
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
    };
    state.metrics.render(&gauges)
}
