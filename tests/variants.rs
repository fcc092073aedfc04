//! Many variants on one resident base, through the service, on the real SmolLM2 (skipped
//! without models/): three variants from real pruning jobs are edits in the pool, never
//! models (`--max-resident-models 1` holds the base alone); their requests and the base's,
//! sent together, decode in one batch and give each the tokens and logprobs it gives alone,
//! and the tokens of the base with the edit applied to its weights; echo scoring likewise; an
//! evaluation of all of them in one job equals the jobs' own figures; a variant cannot be
//! pruned again; a deleted variant leaves the pool.

mod common;

use common::{cpu_engine, metric_value as metric, serve_lab, Api};
use eigenprune::app::AppState;
use eigenprune::cli::serve::StoreArgs;
use eigenprune::lab::LabArgs;
use eigenprune_engine::edit::Edit;
use eigenprune_engine::generate::{generate, sequence_logprobs, SamplingParams};
use eigenprune_engine::{load_model, LoadOptions};
use futures::future::join_all;
use serde_json::{json, Value};
use std::path::PathBuf;

const PROMPTS: [&str; 2] = ["7 x 8 =", "The capital of France is"];

async fn finished(api: &Api, path: &str) -> Value {
    for _ in 0..3000 {
        let (_, job) = api.get(path).await;
        if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or("")) {
            return job;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{path} did not finish in 5 minutes");
}

/// A greedy completion with logprobs: its text and token logprobs.
async fn complete(api: &Api, model: &str, prompt: &str) -> (String, Vec<f64>) {
    let body =
        json!({"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 2});
    let (status, c) = api.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{c}");
    let choice = &c["choices"][0];
    let lps = choice["logprobs"]["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    (choice["text"].as_str().unwrap().to_string(), lps)
}

/// An echoed prompt's token logprobs (the first is null).
async fn echo_scores(api: &Api, model: &str, prompt: &str) -> Vec<f64> {
    let body =
        json!({"model": model, "prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 1});
    let (status, c) = api.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{c}");
    c["choices"][0]["logprobs"]["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < tol, "{what}: {x} vs {y}");
    }
}

/// The service over the real SmolLM2 GGUF as `smol` (the CPU, one worker; `quantized` as
/// `serve --quantized`): its API, state, data folder and the GGUF. None when not fetched.
async fn smol_service(tag: &str, quantized: bool) -> Option<(Api, AppState, PathBuf, PathBuf)> {
    let gguf = common::smollm2()?;
    let dir = std::env::temp_dir().join(format!("eigenprune-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = StoreArgs {
        data_dir: dir.clone(),
        database_url: None,
        object_store: None,
    };
    let mut engine = cpu_engine(vec![format!("smol={}", gguf.display())], 1);
    engine.quantized = quantized;
    let (base_url, state) = serve_lab(&store, &engine, &LabArgs::default(), 1).await;
    let api = Api {
        base: base_url,
        client: reqwest::Client::new(),
        key: None,
    };
    Some((api, state, dir, gguf))
}

/// A pruning job of `smol` on int-mult with `hyperparameters`, run to success; the job.
async fn pruned(api: &Api, hyperparameters: Value) -> Value {
    let body = json!({"model": "smol", "task": "int-mult", "hyperparameters": hyperparameters});
    let (status, job) = api.post("/v1/pruning/jobs", body).await;
    assert_eq!(status, 200, "{job}");
    let job = finished(
        api,
        &format!("/v1/pruning/jobs/{}", job["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_variants_share_their_base_batch() {
    let Some((api, state, dir, gguf)) = smol_service("variants", false).await else {
        return;
    };

    // Three real pruning jobs, of different maps and portions.
    let mut variants = Vec::new();
    let mut jobs = Vec::new();
    for hp in [
        json!({"portion": 0.05, "scoring_batches": 2, "components": ["k"]}),
        json!({"portion": 0.1, "scoring_batches": 2, "components": ["v"], "seed": 1}),
        json!({"portion": 0.05, "scoring_batches": 2, "components": ["q", "mlp_out"], "seed": 2}),
    ] {
        let job = pruned(&api, hp).await;
        assert!(job["result"]["pruned"].as_u64().unwrap() > 0, "{job}");
        variants.push(job["pruned_model"].as_str().unwrap().to_string());
        jobs.push(job);
    }
    let models: Vec<String> = std::iter::once("smol".to_string())
        .chain(variants.iter().cloned())
        .collect();

    // Each model alone (one request at a time), then all of them sent together.
    let mut alone = Vec::new();
    for m in &models {
        for p in PROMPTS {
            alone.push(complete(&api, m, p).await);
        }
    }
    let together = join_all(
        models
            .iter()
            .flat_map(|m| PROMPTS.iter().map(move |p| (m, *p)))
            .map(|(m, p)| complete(&api, m, p)),
    )
    .await;
    for (i, ((ta, la), (tt, lt))) in alone.iter().zip(&together).enumerate() {
        let what = format!("{} on {:?}", models[i / 2], PROMPTS[i % 2]);
        assert_eq!(ta, tt, "{what}: tokens alone vs in a mixed batch");
        close(la, lt, 1e-4, &what);
    }
    // The variants answer differently from the base somewhere (the edits are live).
    let texts: std::collections::HashSet<String> = alone.iter().map(|(t, _)| t.clone()).collect();
    assert!(
        texts.len() > PROMPTS.len(),
        "every model answered alike: {alone:?}"
    );

    // Echo scoring of every model together equals each alone.
    let mut echo_alone = Vec::new();
    for m in &models {
        echo_alone.push(echo_scores(&api, m, PROMPTS[1]).await);
    }
    let echo_together = join_all(models.iter().map(|m| echo_scores(&api, m, PROMPTS[1]))).await;
    for ((a, t), m) in echo_alone.iter().zip(&echo_together).zip(&models) {
        close(a, t, 1e-4, &format!("echo scores of {m}"));
    }

    // The served low-rank path equals the base with each edit applied to its weights.
    let reference = load_model(gguf.to_str().unwrap(), &LoadOptions::default()).unwrap();
    for (k, v) in variants.iter().enumerate() {
        let row = state.db.variant(v).await.unwrap().unwrap();
        let file = state.storage.get(&row.object_key).await.unwrap();
        let edit = Edit::from_bytes(&file, &candle_core::Device::Cpu).unwrap();
        let mut dense = reference.model.clone();
        edit.apply(&mut dense).unwrap();
        let ids = reference
            .tokenizer
            .encode(PROMPTS[0], true)
            .unwrap()
            .get_ids()
            .to_vec();
        let params = SamplingParams {
            max_tokens: 8,
            ..Default::default()
        };
        let (tokens, _) = generate(&dense, &ids, &params, |_| true).unwrap();
        let text = reference.tokenizer.decode(&tokens, false).unwrap();
        assert_eq!(
            text,
            alone[(k + 1) * 2].0,
            "{v}: served vs applied to the weights"
        );
        let ids = reference
            .tokenizer
            .encode(PROMPTS[1], true)
            .unwrap()
            .get_ids()
            .to_vec();
        let want: Vec<f64> = sequence_logprobs(&dense, &ids, 0)
            .unwrap()
            .iter()
            .map(|t| t.0 as f64)
            .collect();
        close(
            &echo_alone[k + 1],
            &want,
            1e-4,
            &format!("{v}: echo vs applied"),
        );
    }

    // Edits in the pool, not models: the base is the one resident model.
    let text = api.text("/metrics", "text/plain").await;
    assert_eq!(metric(&text, "eigenprune_resident_models"), 1.0, "{text}");
    assert_eq!(
        metric(&text, "eigenprune_edit_pool_edits{tier=\"device\"}"),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "eigenprune_edit_pool_loads_total"),
        3.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "eigenprune_edit_pool_lookups_total{answered_by=\"device\"}"
        ) > 10.0
    );
    let (_, listed) = api.get("/v1/models").await;
    for m in listed["data"].as_array().unwrap() {
        assert_eq!(m["resident"], true, "{m}");
    }

    // One evaluation job of every model equals each job's own before/after figures.
    let (status, ev) = api
        .post(
            "/v1/evaluations",
            json!({"models": models, "task": "int-mult"}),
        )
        .await;
    assert_eq!(status, 200, "{ev}");
    let ev = finished(
        &api,
        &format!("/v1/evaluations/{}", ev["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(ev["status"], "succeeded", "{ev}");
    let results = ev["result"]["models"].as_array().unwrap();
    assert_eq!(results.len(), 4, "{ev}");
    assert_eq!(results[0]["model"], "smol");
    assert_eq!(
        results[0]["accuracy"]["correct"], jobs[0]["result"]["accuracy_before"]["correct"],
        "{ev}"
    );
    for (k, job) in jobs.iter().enumerate() {
        assert_eq!(results[k + 1]["model"], variants[k].as_str());
        assert_eq!(
            results[k + 1]["accuracy"]["correct"],
            job["result"]["accuracy_after"]["correct"],
            "{ev} vs {job}"
        );
    }

    // Refusals: a variant of a variant; models listed twice; both model and models.
    let (status, e) = api
        .post(
            "/v1/pruning/jobs",
            json!({"model": variants[0], "task": "int-mult"}),
        )
        .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("variant_of_variant")),
        "{e}"
    );
    let (status, e) = api
        .post(
            "/v1/evaluations",
            json!({"models": [variants[0], variants[0]], "task": "int-mult"}),
        )
        .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("duplicate_model")),
        "{e}"
    );
    let (status, e) = api
        .post(
            "/v1/evaluations",
            json!({"model": "smol", "models": ["smol"], "task": "int-mult"}),
        )
        .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("model_or_models")),
        "{e}"
    );

    // A deleted variant leaves the pool and is no longer served.
    let (status, _) = api.delete(&format!("/v1/models/{}", variants[2])).await;
    assert_eq!(status, 200);
    let text = api.text("/metrics", "text/plain").await;
    assert_eq!(
        metric(&text, "eigenprune_edit_pool_edits{tier=\"device\"}"),
        2.0,
        "{text}"
    );
    let (status, e) = api
        .post(
            "/v1/completions",
            json!({"model": variants[2], "prompt": "a", "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 404, "{e}");
    state.shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `serve --quantized`: completions of a GGUF base decode from its quantised blocks (the
/// resident base holds them; pruning jobs and scores keep the dense weights), with the CLI's
/// tokens on the same file; a pruned variant decodes over them with its correction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_quantized_serving_decodes_from_the_files_blocks() {
    let Some((api, state, dir, gguf)) = smol_service("quantized", true).await else {
        return;
    };
    let served = state.host.base("smol").unwrap();
    let linears = served.model.weights.linears();
    assert!(
        linears.iter().all(|l| l.is_quantized()),
        "the base holds its blocks"
    );

    let opts = LoadOptions {
        quantized: true,
        ..Default::default()
    };
    let reference = load_model(gguf.to_str().unwrap(), &opts).unwrap();
    let params = SamplingParams {
        max_tokens: 8,
        ..Default::default()
    };
    for prompt in PROMPTS {
        let (text, _) = complete(&api, "smol", prompt).await;
        let ids = reference.tokenizer.encode(prompt, true).unwrap();
        let (tokens, _) = generate(&reference.model, ids.get_ids(), &params, |_| true).unwrap();
        let want = reference.tokenizer.decode(&tokens, false).unwrap();
        assert_eq!(text, want, "served vs generate --quantized on {prompt:?}");
    }

    // A pruning job on the quantised base runs on its dense weights, and its variant serves.
    let hp = json!({"portion": 0.05, "scoring_batches": 2, "components": ["k"]});
    let job = pruned(&api, hp).await;
    let variant = job["pruned_model"].as_str().unwrap().to_string();
    let (text, lps) = complete(&api, &variant, PROMPTS[0]).await;
    assert!(!text.is_empty() && lps.iter().all(|l| l.is_finite() && *l <= 0.0));
    state.shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
