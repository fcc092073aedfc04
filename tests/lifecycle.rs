//! A job's life across real processes (SQLite, keys on, leases of 2 s): SIGTERM with a job
//! running and a stream open drains (the stream ends with an error event and [DONE], the job
//! is given back as `queued`, the process exits 0) and the job then finishes once, as attempt
//! 2; cancel then SIGKILL ends `cancelled`; a job whose worker dies past --max-attempts fails
//! `worker_lost`. No key appears in any log line.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::{create_key, free_port, leaks, wait_up, Proc};
use common::{fixture, smollm2, Api};
use serde_json::{json, Value};

struct Service {
    dir: PathBuf,
    port: u16,
    logs: Vec<PathBuf>,
    models: Vec<String>,
}

impl Service {
    fn store(&self) -> Vec<String> {
        vec!["--data-dir".into(), self.dir.display().to_string()]
    }

    /// `serve` with `workers` worker loops and `extra` flags; its log is kept.
    async fn start(&mut self, workers: usize, extra: &[&str]) -> Proc {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--bind".into(),
            format!("127.0.0.1:{}", self.port),
            "--auth".into(),
            "keys".into(),
            "--workers".into(),
            workers.to_string(),
            "--drain-secs".into(),
            "10".into(),
        ];
        args.extend(self.store());
        for m in &self.models {
            args.extend(["--preload".into(), m.clone()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = self.dir.join(format!("serve-{}.log", self.logs.len()));
        self.logs.push(log.clone());
        let p = Proc::start(
            &args,
            &[
                ("EIGENPRUNE_LEASE_SECS", "2".into()),
                ("EIGENPRUNE_LOG", "debug".into()),
            ],
            &log,
        );
        wait_up(&format!("http://127.0.0.1:{}", self.port)).await;
        p
    }
}

async fn job_running(api: &Api, id: &str) {
    for _ in 0..600 {
        let (_, j) = api.get(&format!("/v1/pruning/jobs/{id}")).await;
        let (_, ev) = api.get(&format!("/v1/pruning/jobs/{id}/events")).await;
        let sweeping = ev["data"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["phase"] == "sweep"));
        if j["status"] == "running" && sweeping {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} never started its sweep");
}

/// int-sum scores 8,000 examples on the fixture: seconds, long enough to be interrupted.
async fn long_job(api: &Api) -> String {
    let (status, job) = api
        .post(
            "/v1/pruning/jobs",
            json!({"model": "llama", "task": "int-sum", "hyperparameters": {"batch_size": 8}}),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    job["id"].as_str().unwrap().to_string()
}

fn attempts_of(events: &Value) -> Vec<i64> {
    let mut a: Vec<i64> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["attempt"].as_i64().unwrap())
        .collect();
    a.dedup();
    a
}

/// Reads an SSE body to its end; the `data:` payloads.
async fn read_stream(r: reqwest::Response) -> Vec<String> {
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_give_back_cancel_and_attempts() {
    let Some(smol) = smollm2() else { return };
    let dir = std::env::temp_dir().join(format!("eigenprune-life-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut svc = Service {
        dir: dir.clone(),
        port: free_port(),
        logs: Vec::new(),
        models: vec![
            format!("llama={}", fixture("llama")),
            format!("smol={}", smol.display()),
        ],
    };
    let key = create_key(&svc.store(), "alice", false);
    let admin_key = create_key(&svc.store(), "root", true);
    let api = Api {
        base: format!("http://127.0.0.1:{}", svc.port),
        client: reqwest::Client::new(),
        key: Some(key.clone()),
    };

    // SIGTERM with a job sweeping and a stream decoding.
    let mut server = svc.start(1, &[]).await;
    let id = long_job(&api).await;
    job_running(&api, &id).await;
    let stream = api
        .call(reqwest::Method::POST, "/v1/completions")
        .json(&json!({"model": "smol", "prompt": "Once upon a time", "max_tokens": 1500, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let reader = tokio::spawn(read_stream(stream));
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.signal("TERM");
    let data = reader.await.unwrap();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let cut: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(cut["error"]["code"], "server_shutting_down", "{data:?}");
    assert!(data.len() > 3, "it streamed before the cut: {data:?}");
    let code = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "a drained server exits 0");

    // Given back: queued at once (no lease to wait out), one attempt so far.
    let mut api_only = svc.start(0, &[]).await;
    let (_, job) = api.get(&format!("/v1/pruning/jobs/{id}")).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("queued"), Some(1)),
        "{job}"
    );
    api_only.signal("INT");
    let code = tokio::task::spawn_blocking(move || api_only.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "SIGINT drains too");

    // The next start resumes it at once and it finishes once, as attempt 2.
    let mut server = svc.start(1, &[]).await;
    let done = api.wait(&format!("/v1/pruning/jobs/{id}")).await;
    assert_eq!(
        (done["status"].as_str(), done["attempts"].as_i64()),
        (Some("succeeded"), Some(2)),
        "{done}"
    );
    let (_, events) = api.get(&format!("/v1/pruning/jobs/{id}/events")).await;
    assert_eq!(attempts_of(&events), vec![1, 2], "events say their attempt");
    let (_, models) = api.get("/v1/models").await;
    let variants = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["job"] == id.as_str())
        .count();
    assert_eq!(variants, 1, "{models}");

    // Cancel, then SIGKILL before the worker hears of it: the job ends cancelled.
    let id = long_job(&api).await;
    job_running(&api, &id).await;
    let (status, _) = api
        .post(&format!("/v1/pruning/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);
    server.kill();
    let mut server = svc.start(1, &[]).await;
    let done = api.wait(&format!("/v1/pruning/jobs/{id}")).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    server.kill();

    // A worker that dies on a job's last allowed attempt: the job fails, saying why.
    let mut server = svc.start(1, &["--max-attempts", "1"]).await;
    let id = long_job(&api).await;
    job_running(&api, &id).await;
    server.kill();
    let server = svc.start(1, &["--max-attempts", "1"]).await;
    let done = api.wait(&format!("/v1/pruning/jobs/{id}")).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "worker_lost", "{done}");
    drop(server);

    let found = leaks(&svc.logs, &[key, admin_key]);
    assert!(found.is_empty(), "keys in the logs: {found:?}");
    let logged: usize = svc.logs.iter().map(|l| lines(l)).sum();
    assert!(logged > 50, "the logs were captured ({logged} lines)");
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p).map_or(0, |t| t.lines().count())
}
