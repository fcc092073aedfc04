//! /health (the process answers), /ready (database and object store reachable), /metrics.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{json, Value};

use super::error::Json;
use crate::app::AppState;

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
    let mut out = String::new();
    let m = &state.metrics;
    let _ = writeln!(out, "# TYPE eigenprune_requests_total counter");
    let _ = writeln!(
        out,
        "eigenprune_requests_total {}",
        m.requests.load(Ordering::Relaxed)
    );
    let _ = writeln!(out, "# TYPE eigenprune_tokens_generated_total counter");
    let _ = writeln!(
        out,
        "eigenprune_tokens_generated_total {}",
        m.tokens_generated.load(Ordering::Relaxed)
    );
    let _ = writeln!(out, "# TYPE eigenprune_jobs gauge");
    if let Ok(rows) = state.db.count_by_status().await {
        for (kind, status, n) in rows {
            let _ = writeln!(
                out,
                "eigenprune_jobs{{kind=\"{kind}\",status=\"{status}\"}} {n}"
            );
        }
    }
    let _ = writeln!(out, "# TYPE eigenprune_resident_models gauge");
    let _ = writeln!(
        out,
        "eigenprune_resident_models {}",
        state.host.resident().len()
    );
    out
}
