//! The service over a real HTTP socket, on SQLite and on the real Postgres of this machine:
//! dataset upload -> pruning job -> poll -> succeeded -> completion with the variant ->
//! evaluation; bad input gets 4xx with stable codes.

mod common;

use common::{cpu_engine, fixture, metric_value, postgres_url, serve, serve_lab, Api};

use std::path::PathBuf;

use eigenprune::cli::serve::StoreArgs;
use eigenprune::lab::{AuthMode, LabArgs};
use serde_json::{json, Value};

struct Server {
    api: Api,
    /// --data-dir (the object folder is under it).
    dir: PathBuf,
}

impl std::ops::Deref for Server {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Server {
    async fn start(database_url: Option<String>, workers: usize, tag: &str) -> Self {
        Self::start_with(vec![fixture("llama")], 4, database_url, workers, tag).await
    }

    async fn start_with(
        models: Vec<String>,
        max_resident_models: usize,
        database_url: Option<String>,
        workers: usize,
        tag: &str,
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("eigenprune-api-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = StoreArgs {
            data_dir: dir.clone(),
            database_url,
            object_store: None,
        };
        let engine = cpu_engine(models, max_resident_models);
        let base = serve(&store, &engine, workers).await;
        let api = Api {
            base,
            client: reqwest::Client::new(),
            key: None,
        };
        Server { api, dir }
    }
}

fn dataset() -> Vec<u8> {
    (0..20)
        .map(|i| {
            format!(
                "{{\"prompt\": \"{i} x 7 =\", \"answer\": \" {}\"}}\n",
                i * 7
            )
        })
        .collect::<String>()
        .into_bytes()
}

async fn end_to_end(server: &Server) {
    // Served by its short name (the fixture directory's), not its path.
    let model = "llama".to_string();
    assert_eq!(server.get("/health").await.0, 200);
    let (status, ready) = server.get("/ready").await;
    assert_eq!(status, 200, "{ready}");

    let (status, ds) = server
        .post_raw("/v1/datasets?name=times7", dataset(), "application/jsonl")
        .await;
    assert_eq!(status, 200, "{ds}");
    assert_eq!(ds["rows"], 20);

    let (status, job) = server
        .post(
            "/v1/pruning/jobs",
            json!({"model": model, "dataset": ds["id"], "suffix": "t7",
                   "hyperparameters": {"portion": 0.3, "batch_size": 4, "components": ["k", "v"]}}),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["object"], "pruning.job");
    assert_eq!(job["status"], "queued");
    let id = job["id"].as_str().unwrap().to_string();
    let done = server.wait(&format!("/v1/pruning/jobs/{id}")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let result = &done["result"];
    assert!(result["candidates"].as_u64().unwrap() > 0);
    assert_eq!(
        result["pruned"].as_u64().unwrap(),
        result["candidates"].as_u64().unwrap() * 3 / 10
    );
    assert_eq!(result["test_size"], 4);
    let variant = done["pruned_model"].as_str().unwrap().to_string();

    let (_, events) = server.get(&format!("/v1/pruning/jobs/{id}/events")).await;
    let phases: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["phase"].as_str())
        .collect();
    assert!(
        phases.contains(&"sweep") && phases.contains(&"eval_after"),
        "{phases:?}"
    );

    let sse = server
        .text(
            &format!("/v1/pruning/jobs/{id}/events"),
            "text/event-stream",
        )
        .await;
    assert!(
        sse.contains("event: progress")
            && sse.contains("\"phase\":\"sweep\"")
            && sse.contains("event: end"),
        "{sse}"
    );

    let (_, list) = server.get("/v1/pruning/jobs?limit=1").await;
    assert_eq!(list["data"][0]["id"], id.as_str());

    let (_, models) = server.get("/v1/models").await;
    let v = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == variant.as_str())
        .unwrap()
        .clone();
    assert_eq!(v["parent"], model.as_str());

    let (status, c) = server
        .post(
            "/v1/completions",
            json!({"model": variant, "prompt": "3 x 7 =", "max_tokens": 4, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["object"], "text_completion");
    assert!(c["usage"]["completion_tokens"].as_u64().unwrap() <= 4);

    // The export is the edited checkpoint: base + edit, in the HF layout.
    let export = |m: String| {
        let url = format!("{}/v1/models/{m}/export", server.base);
        let client = server.client.clone();
        async move {
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            candle_core::safetensors::load_buffer(
                &r.bytes().await.unwrap(),
                &candle_core::Device::Cpu,
            )
            .unwrap()
        }
    };
    let edited = export(variant.clone()).await;
    let base = export(model.clone()).await;
    let k = "model.layers.0.self_attn.k_proj.weight";
    let moved: f32 = (&edited[k] - &base[k])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(moved > 0.0, "the variant's keys differ from the base's");
    // The key bias delta needs attention_bias: q, k, v and o biases in both layers.
    assert_eq!(edited.len(), base.len() + 8);

    // lm-evaluation-harness's loglikelihood request: echo the prompt with its log-probabilities.
    let (status, ll) = server
        .post(
            "/v1/completions",
            json!({"model": variant, "prompt": "3 x 7 = 21", "max_tokens": 0, "echo": true, "logprobs": 1}),
        )
        .await;
    assert_eq!(status, 200, "{ll}");
    let lp = &ll["choices"][0]["logprobs"];
    let token_lps = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(token_lps.len(), lp["tokens"].as_array().unwrap().len());
    assert!(token_lps[0].is_null() && token_lps[1..].iter().all(|v| v.as_f64().unwrap() <= 0.0));
    // Greedy tokens are the top-1 of their own log-probabilities.
    let (_, g) = server
        .post(
            "/v1/completions",
            json!({"model": variant, "prompt": "3 x 7 =", "max_tokens": 3, "temperature": 0, "logprobs": 1}),
        )
        .await;
    let lp = &g["choices"][0]["logprobs"];
    for (tok, top) in lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .zip(lp["top_logprobs"].as_array().unwrap())
    {
        assert!(
            top.as_object().unwrap().contains_key(tok.as_str().unwrap()),
            "{g}"
        );
    }

    let request = json!({"model": variant, "dataset": ds["id"]});
    evaluation_matches_the_job(server, request, result).await;
    metrics_after_the_run(server).await;
}

/// An evaluation of a job's variant succeeds and equals the job's own "after" figure.
async fn evaluation_matches_the_job(server: &Server, request: Value, job_result: &Value) {
    let (status, ev) = server.post("/v1/evaluations", request).await;
    assert_eq!(status, 200, "{ev}");
    let ev = server
        .wait(&format!("/v1/evaluations/{}", ev["id"].as_str().unwrap()))
        .await;
    assert_eq!(ev["status"], "succeeded", "{ev}");
    assert_eq!(
        ev["result"]["accuracy"]["correct"],
        job_result["accuracy_after"]["correct"]
    );
}

/// The /metrics page (Prometheus text).
async fn metrics_text(server: &Server) -> String {
    server.text("/metrics", "text/plain").await
}

/// One figure of /metrics, and the whole text for messages.
async fn metric(server: &Server, name: &str) -> (f64, String) {
    let text = metrics_text(server).await;
    (metric_value(&text, name), text)
}

/// /metrics after a job and completions: Prometheus text with live figures.
async fn metrics_after_the_run(server: &Server) {
    let text = metrics_text(server).await;
    let value = |name: &str| metric_value(&text, name);
    assert!(
        value("eigenprune_requests_total{code=\"2xx\"}") >= 5.0,
        "{text}"
    );
    assert_eq!(
        value("eigenprune_request_duration_seconds_count"),
        value("eigenprune_request_duration_seconds_bucket{le=\"+Inf\"}")
    );
    assert!(value("eigenprune_tokens_generated_total") >= 1.0, "{text}");
    assert_eq!(value("eigenprune_queue_depth"), 0.0, "{text}");
    assert!(value("eigenprune_jobs{kind=\"pruning\",status=\"succeeded\"}") >= 1.0);
    assert!(value("eigenprune_resident_model_bytes") > 0.0, "{text}");
    // Every completion has finished: nothing decoding, nothing waiting.
    assert_eq!(
        value("eigenprune_decoding_sequences{state=\"active\"}"),
        0.0
    );
    assert_eq!(
        value("eigenprune_decoding_sequences{state=\"waiting\"}"),
        0.0
    );
}

async fn bad_input(server: &Server) {
    let model = "llama";
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v1/pruning/jobs",
            json!({"model": model, "task": "int-mult", "hyperparameters": {"batch_size": 1}}),
            400,
            "invalid_batch_size",
        ),
        (
            "/v1/pruning/jobs",
            json!({"model": model, "task": "int-mult", "hyperparameters": {"portion": 1.5}}),
            400,
            "invalid_portion",
        ),
        (
            "/v1/pruning/jobs",
            json!({"model": model, "task": "int-mult", "hyperparameters": {"components": ["k", "z"]}}),
            400,
            "unknown_component",
        ),
        (
            "/v1/pruning/jobs",
            json!({"model": "nope", "task": "int-mult"}),
            404,
            "model_not_found",
        ),
        (
            "/v1/pruning/jobs",
            json!({"model": model, "task": "chess"}),
            404,
            "task_not_found",
        ),
        (
            "/v1/pruning/jobs",
            json!({"model": model, "task": "int-mult", "hyperparameters": {"batch_size": "five"}}),
            400,
            "invalid_body",
        ),
        (
            "/v1/completions",
            json!({"model": "nope", "prompt": "x"}),
            404,
            "model_not_found",
        ),
        (
            "/v1/completions",
            json!({"model": model, "prompt": "x", "max_tokens": 100000}),
            400,
            "context_length_exceeded",
        ),
        (
            "/v1/completions",
            json!({"model": model, "prompt": "x", "suffix": "y"}),
            400,
            "unsupported_parameter",
        ),
        (
            "/v1/pruning/jobs",
            json!({"model": model, "task": "int-mult", "hyperparameters": {"finetune": {"epochs": 0, "lr": 0.1}}}),
            400,
            "invalid_finetune",
        ),
    ];
    for (path, body, want_status, want_code) in cases {
        let (status, err) = server.post(path, body.clone()).await;
        assert_eq!(
            (status, err["error"]["code"].as_str().unwrap_or("")),
            (want_status, want_code),
            "{body}"
        );
    }
    let (status, err) = server
        .post_raw(
            "/v1/pruning/jobs",
            b"{not json".to_vec(),
            "application/json",
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str().unwrap()),
        (400, "invalid_json")
    );
    let (status, err) = server.get("/v1/pruning/jobs/pj-missing").await;
    assert_eq!(
        (status, err["error"]["code"].as_str().unwrap()),
        (404, "job_not_found")
    );
    let (status, err) = server
        .post_raw(
            "/v1/datasets",
            b"{\"prompt\": \"a\", \"answer\": \" b\"}\n{\"oops\": 1}\n".to_vec(),
            "application/jsonl",
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"].as_str().unwrap().contains("line 2"),
        "{err}"
    );
    let (_, list) = server.get("/v1/datasets").await;
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["rows"] != 1),
        "nothing stored on error"
    );
    // Oversized: a 413, or (when the server answers before the upload ends) the connection is
    // cut; either way the server stays up and stores nothing.
    let big = vec![b'a'; eigenprune::app::MAX_BODY_BYTES + 1];
    let sent = server
        .client
        .post(format!("{}/v1/datasets", server.base))
        .header("content-type", "application/jsonl")
        .body(big)
        .send()
        .await;
    match sent {
        Ok(r) => assert_eq!(r.status().as_u16(), 413),
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    assert_eq!(server.get("/health").await.0, 200);
    let (_, after) = server.get("/v1/datasets").await;
    assert_eq!(after["data"], list["data"], "nothing stored");
}

/// Files in the object folder.
fn objects(server: &Server) -> usize {
    fn count(p: &std::path::Path) -> usize {
        std::fs::read_dir(p).map_or(0, |d| {
            d.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        count(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
    }
    count(&server.dir.join("objects"))
}

/// A NUL (or any character outside an id's) in an id, name or query never reaches the
/// database (Postgres refuses NUL with a 500) or the object store: a 400 naming the parameter.
async fn ids_are_checked_at_the_edge(server: &Server) {
    let gets = [
        "/v1/pruning/jobs/pj-%00",
        "/v1/pruning/jobs/pj-%00/events",
        "/v1/pruning/jobs?after=pj-%00",
        "/v1/evaluations/ev-%00",
        "/v1/models/m%00",
        "/v1/models/m%00/export",
        "/v1/datasets/ds-%00",
    ];
    for path in gets {
        let (status, e) = server.get(path).await;
        assert_eq!(status, 400, "{path}: {e}");
        assert_eq!(e["error"]["code"], "invalid_id", "{path}: {e}");
    }
    let (status, e) = server
        .post("/v1/pruning/jobs/pj-%00/cancel", json!({}))
        .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("invalid_id"))
    );
    let r = server
        .client
        .delete(format!("{}/v1/models/m%00", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let bodies = [
        (
            "/v1/completions",
            json!({"model": "a\u{0}b", "prompt": "x"}),
            "model",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "a\u{0}b", "messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (
            "/v1/pruning/jobs",
            json!({"model": "a\u{0}", "task": "int-mult"}),
            "model",
        ),
        (
            "/v1/pruning/jobs",
            json!({"model": "llama", "dataset": "ds-\u{0}"}),
            "dataset",
        ),
        (
            "/v1/evaluations",
            json!({"model": "llama", "dataset": "\u{0}"}),
            "dataset",
        ),
    ];
    for (path, body, param) in bodies {
        let (status, e) = server.post(path, body.clone()).await;
        assert_eq!(status, 400, "{body}: {e}");
        assert_eq!(e["error"]["param"], param, "{body}: {e}");
    }
    // A bad name is refused before anything is written.
    let before = objects(server);
    let (status, e) = server
        .post_raw("/v1/datasets?name=a%00b", dataset(), "application/jsonl")
        .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("invalid_name")),
        "{e}"
    );
    assert_eq!(
        objects(server),
        before,
        "an object was written for a refused upload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_end_to_end() {
    let server = Server::start(None, 1, "sqlite").await;
    end_to_end(&server).await;
    bad_input(&server).await;
    ids_are_checked_at_the_edge(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_cancel_at_once() {
    let server = Server::start(None, 0, "cancel").await;
    let (_, job) = server
        .post(
            "/v1/pruning/jobs",
            json!({"model": "llama", "task": "int-mult"}),
        )
        .await;
    let id = job["id"].as_str().unwrap();
    let (status, c) = server
        .post(&format!("/v1/pruning/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!((status, c["status"].as_str().unwrap()), (200, "cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_end_to_end() {
    let url = postgres_url().await;
    let server = Server::start(Some(url), 2, "postgres").await;
    end_to_end(&server).await;
    bad_input(&server).await;
    ids_are_checked_at_the_edge(&server).await;
}

/// The official `openai` Python client against the service, unchanged (scripts/
/// openai_client_check.py): completions on the fixture, chat on the real SmolLM2-Instruct.
/// Skipped when the package or the model is missing, unless EIGENPRUNE_REQUIRE_OPENAI is set
/// (CI sets it after installing both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client() {
    let has_client = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    let gguf = smollm2_gguf();
    if !has_client || !gguf.exists() {
        assert!(
            std::env::var_os("EIGENPRUNE_REQUIRE_OPENAI").is_none(),
            "EIGENPRUNE_REQUIRE_OPENAI is set but `import openai` fails or {} is missing",
            gguf.display()
        );
        common::skip("python3 cannot import openai (pip install openai) or SmolLM2 is missing");
        return;
    }
    // With keys on: the client's api_key is the Bearer key; a wrong one is AuthenticationError.
    let models = vec![fixture("llama"), format!("smol={}", gguf.display())];
    let dir = std::env::temp_dir().join(format!("eigenprune-api-openai-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = StoreArgs {
        data_dir: dir,
        database_url: None,
        object_store: None,
    };
    let lab = LabArgs {
        auth: Some(AuthMode::Keys),
        ..LabArgs::default()
    };
    let (base, state) = serve_lab(&store, &cpu_engine(models, 4), &lab, 0).await;
    let (_, key) = eigenprune::identity::issue_key(&state.db, "py", false)
        .await
        .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/openai_client_check.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args([base.as_str(), "llama", "smol"])
        .env("OPENAI_API_KEY", &key)
        .output()
        .await
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    assert!(log.contains("every check passed"), "{log}");
}

fn smollm2_gguf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// An int-mult pruning job on `model` with `hyperparameters`, run to success; the finished job.
async fn int_mult_job_succeeds(server: &Server, model: &str, hyperparameters: Value) -> Value {
    let body = json!({"model": model, "task": "int-mult", "hyperparameters": hyperparameters});
    let (status, job) = server.post("/v1/pruning/jobs", body).await;
    assert_eq!(status, 200, "{job}");
    let job = server
        .wait(&format!("/v1/pruning/jobs/{}", job["id"].as_str().unwrap()))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    job
}

/// A greedy completion of the model names Paris as France's capital.
async fn names_paris(server: &Server, model: &str) {
    let body = json!({"model": model, "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0});
    let (status, c) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{c}");
    let text = c["choices"][0]["text"].as_str().unwrap();
    assert!(text.contains("Paris"), "{c}");
}

/// The real SmolLM2 through the service (skipped without models/, which `.ci/run` fetches):
/// greedy completion, a pruning job, the variant answering, an evaluation of the variant equal
/// to the job's own figure, and `--max-resident-models 1` keeping the base resident (the
/// variant is an edit in the pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_end_to_end() {
    let gguf = smollm2_gguf();
    if !gguf.exists() {
        common::skip(&format!(
            "{} is missing (scripts/fetch-smollm2.sh)",
            gguf.display()
        ));
        return;
    }
    let server = Server::start_with(vec![gguf.display().to_string()], 1, None, 1, "smollm2").await;
    let model = "SmolLM2-135M-Instruct.Q4_1".to_string();
    names_paris(&server, &model).await;

    let hp = json!({"portion": 0.05, "scoring_batches": 2, "components": ["k"]});
    let job = int_mult_job_succeeds(&server, &model, hp).await;
    let result = &job["result"];
    assert_eq!(result["test_size"], 80, "{job}");
    assert!(result["pruned"].as_u64().unwrap() > 0, "{job}");
    let variant = job["pruned_model"].as_str().unwrap();

    let body = json!({"model": variant, "prompt": "7 x 8 =", "max_tokens": 3, "temperature": 0});
    let (status, c) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{c}");
    let request = json!({"model": variant, "task": "int-mult"});
    evaluation_matches_the_job(&server, request, result).await;
    // `--max-resident-models 1`: the variant is an edit in the pool, not a model; the base
    // stays the one resident model.
    let (resident, text) = metric(&server, "eigenprune_resident_models").await;
    assert_eq!(resident, 1.0, "{text}");
    let (edits, text) = metric(&server, "eigenprune_edit_pool_edits{tier=\"device\"}").await;
    assert_eq!(edits, 1.0, "{text}");
    names_paris(&server, &model).await;
    let (resident, text) = metric(&server, "eigenprune_resident_models").await;
    assert_eq!(resident, 1.0, "{text}");
}

/// A job that fine-tunes first: its result reports the fine-tuning, and its variant (base + an
/// edit carrying every fine-tuned parameter) is served and evaluates as the job said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finetuned_job_serves_its_variant() {
    let server = Server::start(None, 1, "finetune").await;
    let hp = json!({"portion": 0.2, "scoring_batches": 2,
                    "finetune": {"epochs": 2, "lr": 0.01, "batch_size": 16}});
    let job = int_mult_job_succeeds(&server, "llama", hp).await;
    let result = &job["result"];
    let losses = result["finetune"]["epoch_losses"].as_array().unwrap();
    assert_eq!(losses.len(), 2, "{result}");
    assert!(result["finetune"]["accuracy_pretrained"]["total"] == 80);
    let variant = job["pruned_model"].as_str().unwrap();
    let request = json!({"model": variant, "task": "int-mult"});
    evaluation_matches_the_job(&server, request, result).await;
}
