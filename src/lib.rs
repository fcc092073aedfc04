//! The eigenprune service: HTTP API, worker pool, storage. `main.rs` is a thin bootstrap; tests
//! call [`app::app`] and [`app::serve`] on port 0.

pub mod app;
pub mod catalog;
pub mod cli;
pub mod db;
pub mod edit_pool;
pub mod engine_host;
pub mod http;
pub mod hyper;
pub mod identity;
pub mod jobs;
pub mod lab;
pub mod metrics;
pub mod openapi;
pub mod report;
pub mod storage;
pub mod web;
