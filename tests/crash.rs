//! Crash safety: SIGKILL the server while a job runs, start it again: the job completes once,
//! nothing accepted is lost, nothing is duplicated.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

fn start(data_dir: &PathBuf, port: u16) -> Child {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama");
    Command::new(env!("CARGO_BIN_EXE_eigenprune"))
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--workers",
            "1",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--preload")
        .arg(&model)
        .env("EIGENPRUNE_LEASE_SECS", "2")
        .env("EIGENPRUNE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(client: &reqwest::Client, url: &str) -> Option<Value> {
    client.get(url).send().await.ok()?.json().await.ok()
}

async fn wait_up(client: &reqwest::Client, base: &str) {
    for _ in 0..300 {
        if get(client, &format!("{base}/health")).await.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server did not start");
}

#[tokio::test]
async fn a_killed_server_finishes_its_job_once_after_restart() {
    let dir = std::env::temp_dir().join(format!("eigenprune-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    // Served by its name (the fixture directory's).
    let model = "llama";

    let mut server = start(&dir, port);
    wait_up(&client, &base).await;
    // int-sum scores 8,000 examples: long enough to be killed mid-sweep.
    let job: Value = client
        .post(format!("{base}/v1/pruning/jobs"))
        .json(&json!({"model": model, "task": "int-sum", "hyperparameters": {"batch_size": 8}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let job_url = format!("{base}/v1/pruning/jobs/{id}");
    let mut saw_running = false;
    for _ in 0..300 {
        let j = get(&client, &job_url).await.unwrap();
        let events = get(&client, &format!("{job_url}/events")).await.unwrap();
        if j["status"] == "running"
            && events["data"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["phase"] == "sweep"))
        {
            saw_running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_running, "the job never started its sweep");
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();

    let mut server = start(&dir, port);
    wait_up(&client, &base).await;
    let mut done = Value::Null;
    for _ in 0..1200 {
        done = get(&client, &job_url).await.unwrap();
        if done["status"] == "succeeded" || done["status"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(done["status"], "succeeded", "{done}");
    let jobs = get(&client, &format!("{base}/v1/pruning/jobs"))
        .await
        .unwrap();
    assert_eq!(
        jobs["data"].as_array().unwrap().len(),
        1,
        "one job, not duplicated"
    );
    let models = get(&client, &format!("{base}/v1/models")).await.unwrap();
    let variants: Vec<&Value> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| !m["parent"].is_null())
        .collect();
    assert_eq!(variants.len(), 1, "one variant: {models}");
    assert_eq!(variants[0]["id"], done["pruned_model"]);
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
