//! HTTP handlers, one file per resource; `error.rs` maps every failure to a status and code.

pub mod completions;
pub mod datasets;
pub mod error;
pub mod evaluations;
pub mod health;
pub mod jobs;
pub mod models;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::{AppState, Metrics};

pub async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    Metrics::add(&state.metrics.requests, 1);
    next.run(req).await
}
