//! HTTP handlers, one file per resource; `error.rs` maps every failure to a status and code.

pub mod admin;
pub mod auth;
pub mod chat;
pub mod completion_run;
pub mod completions;
pub mod datasets;
pub mod docs;
pub mod error;
pub mod evaluations;
pub mod health;
pub mod ids;
pub mod jobs;
pub mod limits;
pub mod models;
pub mod offload;
pub mod sampling;
pub mod streaming;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::AppState;

/// Counts every response by status class and records its latency (to the first byte).
pub async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = std::time::Instant::now();
    let response = next.run(req).await;
    state
        .metrics
        .observe(response.status().as_u16(), start.elapsed());
    response
}
