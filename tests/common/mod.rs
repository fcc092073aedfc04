//! Helpers shared by the service's integration tests; each test binary uses some of them.
#![allow(dead_code)]

use std::path::PathBuf;

use eigenprune::cli::serve::{build_state, spawn_workers, EngineArgs, StoreArgs};

/// tests/fixtures/<name>, as the model spec the service is given.
pub fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// Engine settings for tests: the CPU, f32, small batches.
pub fn cpu_engine(preload: Vec<String>, max_resident_models: usize) -> EngineArgs {
    EngineArgs {
        preload,
        device: "cpu".into(),
        dtype: "f32".into(),
        max_batch_rows: 8,
        max_resident_models,
    }
}

/// The service with `workers` worker loops on a real socket (port 0); its base URL.
pub async fn serve(store: &StoreArgs, engine: &EngineArgs, workers: usize) -> String {
    let state = build_state(store, engine).await.unwrap();
    spawn_workers(&state, workers);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(eigenprune::app::serve(listener, state));
    base
}
