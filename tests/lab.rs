//! A lab's service over real sockets, on SQLite and on the real Postgres: API keys (missing,
//! malformed and revoked keys get 401 on every documented operation), ownership and
//! visibility for every resource kind and verb (another user's private objects are 404, lab
//! objects readable and not deletable), quotas (429 with Retry-After at the configured
//! numbers), fair claiming across users, and deleting a variant.

mod common;

use common::{cpu_engine, fixture, postgres_url, serve_lab, Api};

use eigenprune::app::AppState;
use eigenprune::cli::serve::StoreArgs;
use eigenprune::identity::issue_key;
use eigenprune::lab::{AuthMode, LabArgs};
use serde_json::{json, Value};

struct Lab {
    root: Api,
    state: AppState,
}

async fn start(database_url: Option<String>, tag: &str, workers: usize, lab: LabArgs) -> Lab {
    let dir = std::env::temp_dir().join(format!("eigenprune-lab-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = StoreArgs {
        data_dir: dir,
        database_url,
        object_store: None,
    };
    let lab = LabArgs {
        auth: Some(AuthMode::Keys),
        ..lab
    };
    let (base, state) = serve_lab(
        &store,
        &cpu_engine(vec![fixture("llama")], 4),
        &lab,
        workers,
    )
    .await;
    // The first admin's key, as `eigenprune keys create --admin` makes it.
    let (_, key) = issue_key(&state.db, "root", true).await.unwrap();
    let root = Api {
        base,
        client: reqwest::Client::new(),
        key: Some(key),
    };
    Lab { root, state }
}

/// A new user's client, its key made by an admin over HTTP.
async fn user(root: &Api, name: &str) -> Api {
    let (status, k) = root.post("/v1/admin/keys", json!({"user": name})).await;
    assert_eq!(status, 200, "{k}");
    let key = k["key"].as_str().unwrap();
    assert!(key.starts_with("ep-"), "{k}");
    root.as_user(key)
}

fn dataset() -> Vec<u8> {
    (0..12)
        .map(|i| {
            format!(
                "{{\"prompt\": \"{i} x 3 =\", \"answer\": \" {}\"}}\n",
                i * 3
            )
        })
        .collect::<String>()
        .into_bytes()
}

async fn upload(api: &Api, visibility: &str) -> String {
    let (status, ds) = api
        .post_raw(
            &format!("/v1/datasets?visibility={visibility}"),
            dataset(),
            "application/jsonl",
        )
        .await;
    assert_eq!(status, 200, "{ds}");
    assert_eq!(ds["visibility"], visibility);
    ds["id"].as_str().unwrap().to_string()
}

async fn prune(api: &Api, dataset: &str, visibility: &str) -> Value {
    let (status, job) = api
        .post(
            "/v1/pruning/jobs",
            json!({"model": "llama", "dataset": dataset, "visibility": visibility,
                   "hyperparameters": {"portion": 0.2, "batch_size": 4, "components": ["k"]}}),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    job
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every documented operation but the public ones refuses a missing, malformed or revoked key.
async fn every_operation_needs_a_key(lab: &Lab) {
    let spec = eigenprune::openapi::spec();
    let anonymous = Api {
        key: None,
        ..lab.root.as_user("")
    };
    let mallory = user(&lab.root, "mallory").await;
    assert_eq!(mallory.get("/v1/models").await.0, 200);
    let (_, keys) = lab.root.get("/v1/admin/keys?user=mallory").await;
    let key_id = keys["data"][0]["id"].as_str().unwrap().to_string();
    assert!(keys["data"][0]["last_used_at"].is_i64(), "{keys}");
    assert!(
        keys["data"][0].get("key").is_none(),
        "a listed key is never shown"
    );
    let (status, revoked) = lab.root.delete(&format!("/v1/admin/keys/{key_id}")).await;
    assert_eq!(
        (status, revoked["revoked_at"].is_i64()),
        (200, true),
        "{revoked}"
    );
    let bad_keys = [
        None,
        Some("ep-0000".to_string()),
        Some("not a bearer".to_string()),
        mallory.key.clone(),
    ];
    let mut checked = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let public = op["security"] == json!([{}]);
            let url = path.replace("{id}", "x").replace("{name}", "x");
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for key in &bad_keys {
                let api = match key {
                    Some(k) => anonymous.as_user(k),
                    None => Api {
                        key: None,
                        ..anonymous.as_user("")
                    },
                };
                let r = api
                    .call(method.clone(), &url)
                    .header("content-type", "application/json")
                    .body("{}")
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let www = r.headers().contains_key("www-authenticate");
                let body: Value = r.json().await.unwrap_or(Value::Null);
                if public {
                    assert_ne!(status, 401, "{method} {path} is public");
                    continue;
                }
                assert_eq!(status, 401, "{method} {path} with {key:?}: {body}");
                assert!(www, "{method} {path}: 401 without WWW-Authenticate");
                let code = body["error"]["code"].as_str().unwrap();
                let want = if key.is_none() {
                    "missing_api_key"
                } else {
                    "invalid_api_key"
                };
                assert_eq!(code, want, "{body}");
                assert_eq!(body["error"]["type"], "authentication_error");
                if let Some(k) = key {
                    assert!(
                        !body.to_string().contains(k.as_str()),
                        "the key is echoed: {body}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 4 * 20, "only {checked} refusals checked");
    // Admin-only operations refuse a user's key (403), keys or no.
    let bob = user(&lab.root, "bob").await;
    for (method, path) in [
        ("POST", "/v1/admin/keys"),
        ("GET", "/v1/admin/keys"),
        ("DELETE", "/v1/admin/keys/x"),
    ] {
        let r = bob
            .call(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                path,
            )
            .json(&json!({"user": "bob", "admin": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{method} {path}");
    }
}

/// alice's private objects are invisible to bob (404 for every verb); her lab objects are
/// readable and usable, but bob may not cancel or delete them (403).
async fn ownership(lab: &Lab) {
    let alice = user(&lab.root, "alice").await;
    let bob = user(&lab.root, "bob2").await;
    let ds_private = upload(&alice, "private").await;
    let ds_lab = upload(&alice, "lab").await;
    let job_private = prune(&alice, &ds_private, "private").await;
    let job_lab = prune(&alice, &ds_lab, "lab").await;
    assert_eq!(
        (
            job_private["owner"].as_str(),
            job_private["visibility"].as_str()
        ),
        (Some("alice"), Some("private"))
    );
    let jp = job_private["id"].as_str().unwrap().to_string();
    let jl = job_lab["id"].as_str().unwrap().to_string();
    let (_, ev) = alice
        .post(
            "/v1/evaluations",
            json!({"model": "llama", "dataset": ds_private}),
        )
        .await;
    let ev = ev["id"].as_str().unwrap().to_string();
    let done_p = alice.wait(&format!("/v1/pruning/jobs/{jp}")).await;
    let done_l = alice.wait(&format!("/v1/pruning/jobs/{jl}")).await;
    assert_eq!(
        (done_p["status"].as_str(), done_l["status"].as_str()),
        (Some("succeeded"), Some("succeeded")),
        "{done_p} {done_l}"
    );
    let vp = done_p["pruned_model"].as_str().unwrap().to_string();
    let vl = done_l["pruned_model"].as_str().unwrap().to_string();
    alice.wait(&format!("/v1/evaluations/{ev}")).await;

    // Private: every verb is a 404, and lists leave them out.
    for path in [
        format!("/v1/datasets/{ds_private}"),
        format!("/v1/pruning/jobs/{jp}"),
        format!("/v1/pruning/jobs/{jp}/events"),
        format!("/v1/evaluations/{ev}"),
        format!("/v1/models/{vp}"),
        format!("/v1/models/{vp}/export"),
    ] {
        let (status, body) = bob.get(&path).await;
        assert_eq!(status, 404, "bob GET {path}: {body}");
        assert_eq!(alice.get(&path).await.0, 200, "alice GET {path}");
    }
    assert_eq!(
        bob.post(&format!("/v1/pruning/jobs/{jp}/cancel"), json!({}))
            .await
            .0,
        404
    );
    assert_eq!(bob.delete(&format!("/v1/models/{vp}")).await.0, 404);
    let c = json!({"model": vp, "prompt": "1 x 3 =", "max_tokens": 2});
    let (status, body) = bob.post("/v1/completions", c.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("model_not_found")),
        "{body}"
    );
    assert_eq!(alice.post("/v1/completions", c).await.0, 200);
    let (status, body) = bob
        .post(
            "/v1/pruning/jobs",
            json!({"model": "llama", "dataset": ds_private}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("dataset_not_found")),
        "{body}"
    );
    let (status, _) = bob
        .post("/v1/evaluations", json!({"model": vp, "task": "int-sum"}))
        .await;
    assert_eq!(status, 404);
    let (_, list) = bob.get("/v1/pruning/jobs").await;
    assert_eq!(ids(&list), vec![jl.clone()]);
    let (_, list) = bob.get("/v1/datasets").await;
    assert_eq!(ids(&list), vec![ds_lab.clone()]);
    let (_, list) = bob.get("/v1/models").await;
    assert!(
        ids(&list).contains(&vl) && !ids(&list).contains(&vp),
        "{list}"
    );

    // Lab: readable and usable, not cancellable or deletable by bob.
    for path in [
        format!("/v1/datasets/{ds_lab}"),
        format!("/v1/pruning/jobs/{jl}"),
        format!("/v1/pruning/jobs/{jl}/events"),
        format!("/v1/models/{vl}"),
    ] {
        assert_eq!(bob.get(&path).await.0, 200, "bob GET {path}");
    }
    let (status, body) = bob
        .post(&format!("/v1/pruning/jobs/{jl}/cancel"), json!({}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("not_owner")),
        "{body}"
    );
    let (status, body) = bob.delete(&format!("/v1/models/{vl}")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("not_owner")),
        "{body}"
    );
    let (status, _) = bob
        .post(
            "/v1/completions",
            json!({"model": vl, "prompt": "2 x 3 =", "max_tokens": 2}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, own) = bob
        .post(
            "/v1/pruning/jobs",
            json!({"model": "llama", "dataset": ds_lab}),
        )
        .await;
    assert_eq!(
        (status, own["owner"].as_str()),
        (200, Some("bob2")),
        "{own}"
    );
    let own_id = own["id"].as_str().unwrap();
    assert_eq!(
        bob.post(&format!("/v1/pruning/jobs/{own_id}/cancel"), json!({}))
            .await
            .0,
        200
    );

    // Base models: everyone's to use; exporting one is for admins.
    let (status, body) = bob.get("/v1/models/llama/export").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("base_export_forbidden")),
        "{body}"
    );
    let r = lab
        .root
        .call(reqwest::Method::GET, "/v1/models/llama/export")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.bytes().await.unwrap().len() > 1000);
    // Admins see everything.
    assert_eq!(lab.root.get(&format!("/v1/pruning/jobs/{jp}")).await.0, 200);

    // Deleting a variant unloads it and says so on its job.
    assert!(lab.state.host.is_resident(&vp));
    let (status, _) = alice.delete(&format!("/v1/models/{vp}")).await;
    assert_eq!(status, 200);
    assert!(!lab.state.host.is_resident(&vp));
    assert!(lab.state.host.pool.get(&vp).unwrap().is_none());
    let (_, job) = alice.get(&format!("/v1/pruning/jobs/{jp}")).await;
    assert_eq!(job["pruned_model_deleted"], true, "{job}");
    let (status, _) = alice
        .post(
            "/v1/completions",
            json!({"model": vp, "prompt": "1 x 3 =", "max_tokens": 2}),
        )
        .await;
    assert_eq!(status, 404);
}

async fn retry_after(
    api: &Api,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Option<u64>, Value) {
    let r = api.call(method, path).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, after, r.json().await.unwrap_or(Value::Null))
}

async fn set_quota(root: &Api, name: &str, quota: Value) {
    let r = root
        .call(
            reqwest::Method::PUT,
            &format!("/v1/admin/users/{name}/quota"),
        )
        .json(&quota)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// Quotas (no workers: jobs stay queued) give 429 with Retry-After at the configured numbers.
async fn quotas(lab: &Lab) {
    let root = &lab.root;
    let job = json!({"model": "llama", "task": "int-sum"});
    let post = reqwest::Method::POST;
    // Job seconds: a job that ran 2 s (claimed and finished as a worker does) uses a 1 s day.
    let dave = user(root, "dave").await;
    let (_, queued) = dave.post("/v1/pruning/jobs", job.clone()).await;
    let rules = lab.state.lab.claim_rules(30);
    let claimed = lab
        .state
        .db
        .claim_job("test-worker", rules)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        claimed.id,
        queued["id"].as_str().unwrap(),
        "dave's job is the only one his"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    lab.state
        .db
        .finish_job(&claimed.id, "test-worker", "succeeded", None, None, None)
        .await
        .unwrap();
    set_quota(root, "dave", json!({"gpu_seconds_per_day": 1})).await;
    let (status, after, body) =
        retry_after(&dave, post.clone(), "/v1/pruning/jobs", job.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("gpu_seconds_exhausted")),
        "{body}"
    );
    assert!(
        after.is_some_and(|s| s > 80_000 && s <= 86_400),
        "{after:?}"
    );

    let carol = user(root, "carol").await;
    set_quota(root, "carol", json!({"queued_jobs": 2})).await;
    for _ in 0..2 {
        assert_eq!(carol.post("/v1/pruning/jobs", job.clone()).await.0, 200);
    }
    let (status, after, body) =
        retry_after(&carol, post.clone(), "/v1/pruning/jobs", job.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_queued_jobs")),
        "{body}"
    );
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(after.is_some_and(|s| s > 0));
    let (status, _, _) = retry_after(&carol, post.clone(), "/v1/evaluations", job.clone()).await;
    assert_eq!(status, 429, "evaluations count as jobs");

    // Requests per minute: the 6th of 5 is refused, saying when to retry.
    let erin = user(root, "erin").await;
    set_quota(root, "erin", json!({"requests_per_minute": 5})).await;
    for _ in 0..5 {
        assert_eq!(erin.get("/v1/models").await.0, 200);
    }
    let (status, after, body) =
        retry_after(&erin, reqwest::Method::GET, "/v1/models", json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limit_exceeded")),
        "{body}"
    );
    assert_eq!(after, Some(12));

    // Completion sequences at once, and per request.
    let frank = user(root, "frank").await;
    set_quota(root, "frank", json!({"sequences": 4})).await;
    let c = |n: usize, prompts: usize| json!({"model": "llama", "prompt": vec!["1 x 3 ="; prompts], "n": n, "max_tokens": 2});
    let (status, after, body) = retry_after(&frank, post.clone(), "/v1/completions", c(5, 1)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str(), after),
        (429, Some("too_many_sequences"), Some(1)),
        "{body}"
    );
    assert_eq!(
        retry_after(&frank, post.clone(), "/v1/completions", c(4, 1))
            .await
            .0,
        200
    );
    let per_request = lab.state.lab.max_sequences_per_request;
    let (status, _, body) = retry_after(
        root,
        post.clone(),
        "/v1/completions",
        c(4, per_request / 4 + 1),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("too_many_sequences_per_request")),
        "{body}"
    );
    assert_eq!(
        lab.state.limiter.held("frank"),
        0,
        "sequences are given back"
    );
}

/// Workers take the owner with the fewest running jobs first (then the oldest job), and skip
/// owners at their running-jobs limit (2 by default).
async fn fair_claims(lab: &Lab) {
    let greedy = user(&lab.root, "greedy").await;
    let polite = user(&lab.root, "polite").await;
    let job = json!({"model": "llama", "task": "int-sum"});
    let mut greedy_jobs = Vec::new();
    for _ in 0..5 {
        greedy_jobs.push(
            greedy.post("/v1/pruning/jobs", job.clone()).await.1["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let polite_job = polite.post("/v1/pruning/jobs", job.clone()).await.1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let rules = lab.state.lab.claim_rules(30);
    let mut order = Vec::new();
    while let Some(j) = lab.state.db.claim_job("fair-worker", rules).await.unwrap() {
        if j.owner == "greedy" || j.owner == "polite" {
            order.push(j.id);
        }
        assert!(
            order.len() <= 3,
            "greedy's third job ran past the running limit: {order:?}"
        );
    }
    assert_eq!(
        order,
        vec![greedy_jobs[0].clone(), polite_job, greedy_jobs[1].clone()]
    );
}

/// Two servers, each on its own database (`urls`): one with a worker, one without.
async fn lab_rules(urls: [Option<String>; 2], tag: &str) {
    let [first, second] = urls;
    let lab = start(first, &format!("{tag}-own"), 1, LabArgs::default()).await;
    every_operation_needs_a_key(&lab).await;
    ownership(&lab).await;
    let lab = start(second, &format!("{tag}-quota"), 0, LabArgs::default()).await;
    quotas(&lab).await;
    fair_claims(&lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_lab_rules() {
    lab_rules([None, None], "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lab_rules() {
    let urls = [Some(postgres_url().await), Some(postgres_url().await)];
    lab_rules(urls, "postgres").await;
}
