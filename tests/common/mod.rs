//! Helpers shared by the service's integration tests; each test binary uses some of them.
#![allow(dead_code)]

use std::path::PathBuf;

use eigenprune::app::AppState;
use eigenprune::cli::serve::{build_state, spawn_workers, EngineArgs, StoreArgs};
use eigenprune::lab::LabArgs;

pub mod process;
pub mod skip;
#[allow(unused_imports)]
pub use skip::skip;

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
        edit_pool_mb: 256,
        edit_host_mb: 1024,
        quantized: false,
    }
}

/// The service with `workers` worker loops on a real socket (port 0); its base URL.
pub async fn serve(store: &StoreArgs, engine: &EngineArgs, workers: usize) -> String {
    serve_lab(store, engine, &LabArgs::default(), workers)
        .await
        .0
}

/// The same with the lab's settings (`lab.auth` as given, else open); its URL and state.
pub async fn serve_lab(
    store: &StoreArgs,
    engine: &EngineArgs,
    lab: &LabArgs,
    workers: usize,
) -> (String, AppState) {
    let state = build_state(store, engine, lab).await.unwrap();
    spawn_workers(&state, workers);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(eigenprune::app::serve(listener, state.clone()));
    (base, state)
}

/// The real SmolLM2-135M-Instruct GGUF (`scripts/fetch-smollm2.sh`), if fetched.
pub fn smollm2() -> Option<PathBuf> {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else {
        skip(&format!(
            "{} is missing (scripts/fetch-smollm2.sh)",
            p.display()
        ));
        None
    }
}

/// A JSON client for one server.
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    /// Sent as `Authorization: Bearer` when set.
    pub key: Option<String>,
}

impl Api {
    /// The same server as another user.
    pub fn as_user(&self, key: &str) -> Api {
        Api {
            base: self.base.clone(),
            client: self.client.clone(),
            key: Some(key.to_string()),
        }
    }

    /// A request to `path`, with the key when there is one.
    pub fn call(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .call(reqwest::Method::DELETE, path)
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .call(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> (u16, serde_json::Value) {
        let r = self
            .call(reqwest::Method::POST, path)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    /// A GET's body as text, asking for `accept`.
    pub async fn text(&self, path: &str, accept: &str) -> String {
        self.call(reqwest::Method::GET, path)
            .header("accept", accept)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.call(reqwest::Method::GET, path).send().await.unwrap();
        (
            r.status().as_u16(),
            r.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    pub async fn wait(&self, path: &str) -> serde_json::Value {
        for _ in 0..600 {
            let (_, job) = self.get(path).await;
            if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or(""))
            {
                return job;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("{path} did not finish");
    }

    /// Any request; the status, the content type and the body as text.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
    ) -> (u16, String, String) {
        let r = self
            .call(method, path)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (status, ct, r.text().await.unwrap_or_default())
    }
}

/// A server (SQLite, no workers) preloading `models`, on a fresh data dir named by `tag`.
pub async fn api(models: Vec<String>, tag: &str) -> Api {
    let dir = std::env::temp_dir().join(format!("eigenprune-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = StoreArgs {
        data_dir: dir,
        database_url: None,
        object_store: None,
    };
    Api {
        base: serve(&store, &cpu_engine(models, 4), 0).await,
        client: reqwest::Client::new(),
        key: None,
    }
}

/// A fresh database on the real Postgres at 127.0.0.1:5432 (`.ci/run` starts it).
pub async fn postgres_url() -> String {
    let admin = std::env::var("EIGENPRUNE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    sqlx::any::install_default_drivers();
    let name = format!(
        "eigenprune_test_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let pool = sqlx::AnyPool::connect(&admin)
        .await
        .expect("Postgres at 127.0.0.1:5432 (see .ci/run)");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .unwrap();
    admin
        .rsplit_once('/')
        .map(|(host, _)| format!("{host}/{name}"))
        .unwrap()
}

static NEXT_DB: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One figure of a Prometheus text (the line `name value`).
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}
