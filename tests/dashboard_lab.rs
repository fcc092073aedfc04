//! The dashboard on a lab's server (API keys), over real sockets without a browser: sign-in
//! keeps the key on the server, pages show only what the key may see, the job form validates
//! as the API does and submits nothing while a field is wrong, an upload goes with a job, a
//! job's page draws its charts, downloads come in every form, and sign-out or a revoked key
//! ends the session.

mod common;

use common::{cpu_engine, fixture, serve_lab, Api};
use eigenprune::cli::serve::StoreArgs;
use eigenprune::identity::issue_key;
use eigenprune::lab::{AuthMode, LabArgs};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::multipart::{Form, Part};
use reqwest::redirect::Policy;
use serde_json::json;

/// A client that does not follow redirects, so each answer is seen as sent.
fn browserless() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// Signs in with `key`; the session cookie ("ep_session=...").
async fn sign_in(base: &str, key: &str) -> String {
    let r = browserless()
        .post(format!("{base}/signin"))
        .form(&[("key", key)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let location = r.headers()[LOCATION].to_str().unwrap().to_string();
    assert!(!location.contains(key), "the key is never in a URL");
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(
        !set.contains(key),
        "the cookie holds a session id, not the key"
    );
    set.split(';').next().unwrap().to_string()
}

async fn page(base: &str, path: &str, cookie: &str) -> (u16, String) {
    let r = browserless()
        .get(format!("{base}{path}"))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The job form posted as a browser posts it.
async fn submit(base: &str, cookie: &str, form: Form) -> reqwest::Response {
    browserless()
        .post(format!("{base}/jobs/new"))
        .header(COOKIE, cookie)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// Alice's pruning jobs, as the API lists them to her.
async fn jobs_of_alice(alice: &Api) -> usize {
    let (_, jobs) = alice.get("/v1/pruning/jobs").await;
    jobs["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["owner"] == "alice")
        .count()
}

fn dataset() -> String {
    (0..12)
        .map(|i| {
            format!(
                "{{\"prompt\": \"{i} x 3 =\", \"answer\": \" {}\"}}\n",
                i * 3
            )
        })
        .collect()
}

fn job_form(batch_size: &str, upload: bool) -> Form {
    let mut form = Form::new()
        .text("model", "llama")
        .text("task", "int-sum")
        .text("portion", "0.2")
        .text("components", "k")
        .text("method", "attribution")
        .text("batch_size", batch_size.to_string())
        .text("seed", "0")
        .text("scoring_batches", "")
        .text("suffix", "form")
        .text("visibility", "private");
    if upload {
        form = form.part(
            "jsonl",
            Part::bytes(dataset().into_bytes()).file_name("mine.jsonl"),
        );
    }
    form
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_pages_follow_keys_and_visibility() {
    let dir = std::env::temp_dir().join(format!("eigenprune-dashboard-lab-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = StoreArgs {
        data_dir: dir.clone(),
        database_url: None,
        object_store: None,
    };
    let lab = LabArgs {
        auth: Some(AuthMode::Keys),
        ..LabArgs::default()
    };
    let (base, state) = serve_lab(&store, &cpu_engine(vec![fixture("llama")], 4), &lab, 1).await;
    let (_, root_key) = issue_key(&state.db, "root", true).await.unwrap();
    let (_, alice_key) = issue_key(&state.db, "alice", false).await.unwrap();
    let (bob_row, bob_key) = issue_key(&state.db, "bob", false).await.unwrap();
    let root = Api {
        base: base.clone(),
        client: reqwest::Client::new(),
        key: Some(root_key),
    };
    let bob = root.as_user(&bob_key);

    // No session: pages send you to sign in; the API still answers 401.
    let (status, _) = page(&base, "/", "").await;
    assert_eq!(status, 303);
    let (status, signin) = page(&base, "/signin", "").await;
    assert_eq!(status, 200);
    assert!(signin.contains("id=\"signin-form\""));
    let bad = browserless()
        .post(format!("{base}/signin"))
        .form(&[("key", "ep-nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    assert!(bad.text().await.unwrap().contains("key-error"));

    // Bob's private job is not Alice's to see; his lab job is.
    let hp = json!({"portion": 0.2, "batch_size": 4, "components": ["k"]});
    let (_, private) = bob
        .post(
            "/v1/pruning/jobs",
            json!({"model": "llama", "task": "int-sum", "hyperparameters": hp}),
        )
        .await;
    let (_, shared) = bob.post("/v1/pruning/jobs", json!({"model": "llama", "task": "int-sum", "hyperparameters": hp, "visibility": "lab"})).await;
    let (private, shared) = (
        private["id"].as_str().unwrap(),
        shared["id"].as_str().unwrap(),
    );
    let alice = sign_in(&base, &alice_key).await;
    let (status, list) = page(&base, "/", &alice).await;
    assert_eq!(status, 200);
    assert!(list.contains("alice"), "the header names the user");
    assert!(
        list.contains(shared) && !list.contains(private),
        "the list shows what alice may see"
    );
    assert_eq!(
        page(&base, &format!("/jobs/{private}"), &alice).await.0,
        404
    );
    assert_eq!(page(&base, &format!("/jobs/{shared}"), &alice).await.0, 200);
    // The session stands for the key on the API too (the page's live updates use it).
    let r = browserless()
        .get(format!("{base}/v1/pruning/jobs"))
        .header(COOKIE, &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The form: a wrong field is shown and nothing is submitted, upload included.
    let r = submit(&base, &alice, job_form("1", true)).await;
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("id=\"batch_size-error\""), "{body}");
    let alice_api = root.as_user(&alice_key);
    assert_eq!(jobs_of_alice(&alice_api).await, 0);
    let (_, sets) = alice_api.get("/v1/datasets").await;
    assert_eq!(
        sets["data"].as_array().unwrap().len(),
        0,
        "a refused form uploads nothing"
    );
    // A good one with an upload: the data set and the job, then the job's page.
    let r = submit(&base, &alice, job_form("4", true)).await;
    assert_eq!(r.status(), 303);
    let to = r.headers()[LOCATION].to_str().unwrap().to_string();
    let id = to.strip_prefix("/?submitted=").unwrap().to_string();
    let job = alice_api.wait(&format!("/v1/pruning/jobs/{id}")).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(
        job["dataset"].as_str().unwrap().starts_with("ds-"),
        "the upload went with the job"
    );
    let (status, html) = page(&base, &format!("/jobs/{id}"), &alice).await;
    assert_eq!(status, 200);
    for part in [
        "id=\"heatmap-k\"",
        "id=\"histogram-k\"",
        "id=\"accuracy-chart\"",
        "id=\"spectrum-chart\"",
        "class=\"paired\"",
    ] {
        assert!(html.contains(part), "the job page draws {part}");
    }

    // Cancel: another user's private job is not there; a form from another site is refused.
    let post = |path: String| {
        browserless()
            .post(format!("{base}{path}"))
            .header(COOKIE, alice.clone())
    };
    assert_eq!(
        post(format!("/jobs/{private}/cancel"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let forged = post("/jobs/new".into())
        .header("sec-fetch-site", "cross-site")
        .multipart(job_form("4", false))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(
        jobs_of_alice(&alice_api).await,
        1,
        "the forged form made no job"
    );
    let mine = post(format!("/jobs/{id}/cancel")).send().await.unwrap();
    assert_eq!(
        mine.status(),
        303,
        "the owner's cancel goes through the API's handler"
    );

    // Downloads in every form, through the session.
    let variant = job["pruned_model"].as_str().unwrap();
    let get = |format: &str| {
        browserless()
            .get(format!("{base}/v1/models/{variant}/export?format={format}"))
            .header(COOKIE, alice.clone())
            .send()
    };
    let edit = get("edit").await.unwrap();
    assert_eq!(edit.status(), 200);
    let bytes = edit.bytes().await.unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert!(
        std::str::from_utf8(&bytes[8..8 + header_len])
            .unwrap()
            .contains("layers."),
        "a safetensors edit"
    );
    let lora = get("peft_lora").await.unwrap();
    assert_eq!(lora.status(), 200);
    let tar = lora.bytes().await.unwrap();
    assert!(
        tar.windows(19).any(|w| w == b"adapter_config.json"),
        "the adapter's config is in the tar"
    );
    assert_eq!(get("zip").await.unwrap().status(), 400);
    let (status, vpage) = page(&base, &format!("/variants/{variant}"), &alice).await;
    assert_eq!(status, 200);
    assert!(vpage.contains("id=\"playground\"") && vpage.contains("format=peft_lora"));

    // Sign-out ends the session; so does revoking the key behind one.
    let out = browserless()
        .post(format!("{base}/signout"))
        .header(COOKIE, &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(out.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(page(&base, "/", &alice).await.0, 303);
    let bobs = sign_in(&base, &bob_key).await;
    assert_eq!(page(&base, "/", &bobs).await.0, 200);
    let (status, _) = root.delete(&format!("/v1/admin/keys/{}", bob_row.id)).await;
    assert_eq!(status, 200);
    assert_eq!(
        page(&base, "/", &bobs).await.0,
        303,
        "a revoked key's session ends"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn prune_writes_the_job_page_as_one_offline_file() {
    let dir = std::env::temp_dir().join(format!("eigenprune-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("job.html");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eigenprune"))
        .args(["prune", "--model", &fixture("llama"), "--task", "int-sum"])
        .args(["--portion", "0.1,0.2", "--components", "k,v", "--controls"])
        .args([
            "--batch-size",
            "4",
            "--scoring-batches",
            "2",
            "--json",
            "--report",
        ])
        .arg(&page)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    for part in [
        "id=\"heatmap-k\"",
        "id=\"heatmap-v\"",
        "id=\"histogram-k\"",
        "id=\"accuracy-chart\"",
        "class=\"paired\"",
    ] {
        assert!(html.contains(part), "the report draws {part}");
    }
    // Self-contained: no script, nothing fetched, no links into a service.
    for absent in ["<script", "src=", "href=\"/", "http://", "https://"] {
        assert!(!html.contains(absent), "the report holds {absent}");
    }
    // The heatmaps of the first portion add up to what the run pruned.
    let counted: u64 = html
        .split("data-count=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, report["portions"][0]["pruned"].as_u64().unwrap());
    assert_eq!(
        report["portions"][1]["controls"].as_array().unwrap().len(),
        2
    );
    let _ = std::fs::remove_dir_all(&dir);
}
