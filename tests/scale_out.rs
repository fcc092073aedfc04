//! Scale-out, shown with real processes on the real Postgres and a real S3-compatible server
//! (s3s-fs): two `serve --workers 0` API replicas (clients alternate, no proxy) and two
//! `eigenprune worker` processes. A job created on one replica is visible and cancellable on
//! the other; a variant answers completions on both; 20 jobs from three users each run
//! exactly once; SIGKILL of a worker moves its job to the other; SIGTERM of a replica loses no
//! request it accepted.

mod common;

use std::time::Duration;

use common::process::{create_key, free_port, leaks, start_s3, wait_up, Proc};
use common::{fixture, postgres_url, Api};
use serde_json::json;

fn dataset(k: usize) -> Vec<u8> {
    (0..12)
        .map(|i| {
            format!(
                "{{\"prompt\": \"{i} x {k} =\", \"answer\": \" {}\"}}\n",
                i * k
            )
        })
        .collect::<String>()
        .into_bytes()
}

/// A client that opens a new connection per request (no pooled connection can be closed
/// under a request by a draining server: what fails is refused, not lost).
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

async fn job_worker(db: &sqlx::AnyPool, id: &str) -> Option<String> {
    sqlx::query_as::<_, (Option<String>,)>(
        "SELECT worker FROM jobs WHERE id = $1 AND status = 'running'",
    )
    .bind(id)
    .fetch_optional(db)
    .await
    .unwrap()
    .and_then(|r| r.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_two_workers_postgres_and_s3() {
    let dir = std::env::temp_dir().join(format!("eigenprune-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let Some(s3) = start_s3(&dir.join("s3")) else {
        return;
    };
    let db_url = postgres_url().await;
    let store = vec![
        "--database-url".to_string(),
        db_url.clone(),
        "--object-store".into(),
        "s3://eigenprune/lab".into(),
        "--data-dir".into(),
        dir.join("data").display().to_string(),
    ];
    let env = vec![
        ("AWS_ENDPOINT_URL", s3.endpoint.clone()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "AKTEST".into()),
        ("AWS_SECRET_ACCESS_KEY", "SKTEST".into()),
        ("EIGENPRUNE_LEASE_SECS", "2".into()),
        ("EIGENPRUNE_LOG", "debug".into()),
    ];
    let model = format!("llama={}", fixture("llama"));
    let users = ["ana", "ben", "cho"];
    let keys: Vec<String> = users.iter().map(|u| create_key(&store, u, false)).collect();
    let admin = create_key(&store, "root", true);

    let mut logs = Vec::new();
    let mut start = |what: &str, extra: Vec<String>| {
        let log = dir.join(format!("{what}.log"));
        logs.push(log.clone());
        let mut args: Vec<String> = extra;
        args.extend(store.iter().cloned());
        args.extend(["--preload".into(), model.clone()]);
        Proc::start(&args, &env, &log)
    };
    let ports = [free_port(), free_port()];
    let mut replicas: Vec<Proc> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let args = ["serve", "--workers", "0", "--auth", "keys", "--bind"]
                .iter()
                .map(|s| s.to_string())
                .chain([format!("127.0.0.1:{p}")])
                .collect();
            start(&format!("replica-{i}"), args)
        })
        .collect();
    let mut workers: Vec<Proc> = (0..2)
        .map(|i| {
            start(
                &format!("worker-{i}"),
                vec!["worker".into(), "--workers".into(), "1".into()],
            )
        })
        .collect();
    let bases: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    for b in &bases {
        wait_up(b).await;
    }
    let on = |replica: usize, key: &str| Api {
        base: bases[replica].clone(),
        client: fresh_client(),
        key: Some(key.to_string()),
    };
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&db_url).await.unwrap();

    // Created on replica 0, seen and cancelled on replica 1 (no worker takes it: cancelled
    // at once while queued, or between batches while running).
    let (status, job) = on(0, &keys[0])
        .post(
            "/v1/pruning/jobs",
            json!({"model": "llama", "task": "int-sum"}),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    let id = job["id"].as_str().unwrap();
    assert_eq!(
        on(1, &keys[0])
            .get(&format!("/v1/pruning/jobs/{id}"))
            .await
            .0,
        200
    );
    assert_eq!(
        on(1, &keys[1])
            .get(&format!("/v1/pruning/jobs/{id}"))
            .await
            .0,
        404,
        "private to ana"
    );
    let (status, _) = on(1, &keys[0])
        .post(&format!("/v1/pruning/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);
    let cancelled = on(0, &keys[0])
        .wait(&format!("/v1/pruning/jobs/{id}"))
        .await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");

    // A long job; SIGKILL the worker running it: the other worker takes it over.
    let (_, long) = on(1, &keys[2])
        .post(
            "/v1/pruning/jobs",
            json!({"model": "llama", "task": "int-sum", "hyperparameters": {"batch_size": 8}}),
        )
        .await;
    let long_id = long["id"].as_str().unwrap().to_string();
    let mut holder = None;
    for _ in 0..600 {
        holder = job_worker(&db, &long_id).await;
        if holder.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let holder = holder.expect("a worker took the long job");
    let victim = workers
        .iter()
        .position(|w| holder.contains(&format!("-{}-", w.child.id())))
        .expect("the holder is one of the two workers");
    tokio::time::sleep(Duration::from_millis(500)).await;
    workers[victim].kill();

    // 20 jobs from three users, on alternating replicas, each on the user's own data set.
    let mut datasets = Vec::new();
    for (u, key) in keys.iter().enumerate() {
        let (status, ds) = on(u % 2, key)
            .post_raw("/v1/datasets", dataset(u + 2), "application/jsonl")
            .await;
        assert_eq!(status, 200, "{ds}");
        datasets.push(ds["id"].as_str().unwrap().to_string());
    }
    let mut jobs = Vec::new();
    for i in 0..20 {
        let u = i % 3;
        let (status, job) = on(i % 2, &keys[u])
            .post(
                "/v1/pruning/jobs",
                json!({"model": "llama", "dataset": datasets[u], "visibility": "lab",
                       "hyperparameters": {"portion": 0.2, "batch_size": 4, "components": ["k"]}}),
            )
            .await;
        assert_eq!(status, 200, "{job}");
        jobs.push((u, job["id"].as_str().unwrap().to_string()));
    }

    // SIGTERM replica 0 while requests keep arriving at both: every request replica 0
    // accepted is answered; the rest are refused at connect and go to replica 1.
    let mut load = Vec::new();
    for i in 0..40 {
        let (a0, a1) = (on(0, &keys[i % 3]), on(1, &keys[i % 3]));
        load.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(25 * i as u64)).await;
            let body = json!({"model": "llama", "prompt": "3 x 4 =", "max_tokens": 24, "n": 4});
            match a0
                .call(reqwest::Method::POST, "/v1/completions")
                .json(&body)
                .send()
                .await
            {
                Ok(r) => (0, r.status().as_u16()),
                Err(e) if e.is_connect() => {
                    let r = a1
                        .call(reqwest::Method::POST, "/v1/completions")
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    (1, r.status().as_u16())
                }
                Err(e) => panic!("replica 0 lost an accepted request: {e}"),
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    replicas[0].signal("TERM");
    let mut answered = [0, 0];
    for l in load {
        let (replica, status) = l.await.unwrap();
        assert_eq!(status, 200, "replica {replica}");
        answered[replica] += 1;
    }
    assert!(
        answered[0] > 0 && answered[1] > 0,
        "both replicas answered: {answered:?}"
    );
    let code = tokio::task::spawn_blocking(move || {
        let mut r = replicas.remove(0);
        let code = r.wait_exit(Duration::from_secs(30));
        (code, replicas)
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(0));
    let replicas = code.1;

    // Every job ran exactly once (the long one twice: its first worker was killed).
    let api = on(0, &admin);
    let api = Api {
        base: bases[1].clone(),
        ..api
    };
    let done = api.wait(&format!("/v1/pruning/jobs/{long_id}")).await;
    assert_eq!(
        (done["status"].as_str(), done["attempts"].as_i64()),
        (Some("succeeded"), Some(2)),
        "{done}"
    );
    let mut variants = Vec::new();
    for (u, id) in &jobs {
        let done = api.wait(&format!("/v1/pruning/jobs/{id}")).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["attempts"], 1, "ran once: {done}");
        assert_eq!(done["owner"], users[*u]);
        variants.push(done["pruned_model"].as_str().unwrap().to_string());
    }
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM variants")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(count, 21, "one variant per succeeded job");
    // A variant answers on both replicas (replica 0 again after a restart).
    let again = {
        let args = ["serve", "--workers", "0", "--auth", "keys", "--bind"]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("127.0.0.1:{}", ports[0])])
            .collect::<Vec<_>>();
        let log = dir.join("replica-0b.log");
        logs.push(log.clone());
        let mut a = args;
        a.extend(store.iter().cloned());
        a.extend(["--preload".into(), model.clone()]);
        Proc::start(&a, &env, &log)
    };
    wait_up(&bases[0]).await;
    for replica in 0..2 {
        let (status, c) = on(replica, &keys[1])
            .post(
                "/v1/completions",
                json!({"model": variants[0], "prompt": "2 x 2 =", "max_tokens": 2}),
            )
            .await;
        assert_eq!(status, 200, "replica {replica}: {c}");
    }
    again.signal("TERM");
    drop(replicas);
    drop(workers);

    let mut secrets = keys.clone();
    secrets.push(admin);
    let found = leaks(&logs, &secrets);
    assert!(found.is_empty(), "keys in the logs: {found:?}");
}
