//! `eigenprune bench-serve`: many pruned variants served on one base, measured through the
//! HTTP API of an in-process server (a temporary SQLite file and object folder): concurrent
//! greedy completions spread over 1, 4, 16, ... variants against the same load all on the base
//! (each variant burst paired with a base burst just before it); the first token of a cold
//! variant (its edit read from the store) against a warm one's; the edit pool's memory with
//! many registered; and optionally an evaluation of N variants in one job against N single
//! evaluation jobs.
//! Variants are random low-rank edits (k and v of every layer, rank --variant-rank), registered
//! as a pruning job would register them.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::future::join_all;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::cli::serve::{build_state, spawn_workers, EngineArgs, StoreArgs};
use crate::db::variants::VariantRow;
use crate::lab::{AuthMode, LabArgs};

#[derive(Args, Debug)]
pub struct BenchServeArgs {
    /// The base model: a local directory or .gguf (or give --shape).
    #[arg(long)]
    pub model: Option<String>,
    /// Or a shape with seeded random weights: gpt2, phi2, smollm2, or a config.json path.
    #[arg(long)]
    pub shape: Option<String>,
    #[arg(long, env = "EIGENPRUNE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Serving dtype: auto (bf16 on a GPU, f32 on the CPU), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Distinct variants the concurrent requests spread over, one row per count.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub variants: Vec<usize>,
    /// Rank of each variant's edit of each map (k and v of every layer).
    #[arg(long, default_value_t = 8)]
    pub variant_rank: usize,
    /// Concurrent requests of each row.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 16)]
    pub prompt_tokens: usize,
    /// Rounds of every row (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Variants registered in all (the cold-start and pool-memory rows); at least the largest
    /// --variants count. Beyond 64 distinct random edits the files repeat (each is still its
    /// own variant, read and held on its own).
    #[arg(long, default_value_t = 0)]
    pub registered: usize,
    /// Cold variants whose first token is timed.
    #[arg(long, default_value_t = 8)]
    pub cold: usize,
    /// MiB of edits the pool's device tier holds (the resident set).
    #[arg(long, default_value_t = 1024)]
    pub edit_pool_mb: u64,
    /// On the CPU, decode from a `.gguf` model's quantised blocks (`serve --quantized`).
    #[arg(long)]
    pub quantized: bool,
    /// An evaluation of this many variants in one job against as many single jobs (needs a
    /// real tokenizer: --model); 0 skips it.
    #[arg(long, default_value_t = 0)]
    pub eval_variants: usize,
    #[arg(long, default_value = "int-mult")]
    pub eval_task: String,
}

const SHAPES: [(&str, &str); 3] = [
    ("gpt2", include_str!("../../bench/shapes/gpt2.json")),
    ("phi2", include_str!("../../bench/shapes/phi2.json")),
    ("smollm2", include_str!("../../bench/shapes/smollm2.json")),
];

pub fn run(args: BenchServeArgs) -> anyhow::Result<()> {
    super::runtime()?.block_on(bench(args))
}

async fn bench(args: BenchServeArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("eigenprune-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = bench_in(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn bench_in(args: &BenchServeArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let spec = match (&args.model, &args.shape) {
        (Some(m), None) => m.clone(),
        (None, Some(shape)) => random_checkpoint(args, shape, &dir.join("model"))?,
        _ => anyhow::bail!("give one of --model and --shape"),
    };
    let store = StoreArgs {
        data_dir: dir.join("data"),
        database_url: None,
        object_store: None,
    };
    let engine = EngineArgs {
        preload: vec![format!("bench={spec}")],
        device: args.device.clone(),
        dtype: args.dtype.clone(),
        max_resident_models: 4,
        max_batch_rows: args.concurrency.max(1),
        edit_pool_mb: args.edit_pool_mb,
        edit_host_mb: 16 * 1024,
        quantized: args.quantized,
    };
    let lab = LabArgs {
        auth: Some(AuthMode::None),
        quota_requests_per_minute: 1 << 40,
        quota_sequences: 1 << 20,
        quota_queued_jobs: 1 << 10,
        quota_running_jobs: 1 << 10,
        ..LabArgs::default()
    };
    let t = Instant::now();
    let state = build_state(&store, &engine, &lab).await?;
    eprintln!(
        "loaded {spec} on {} in {:.1}s",
        args.device,
        t.elapsed().as_secs_f64()
    );
    let most = args.variants.iter().copied().max().unwrap_or(0);
    let registered = args.registered.max(most).max(args.eval_variants);
    let t = Instant::now();
    let edit_bytes = register(&state, registered, args.variant_rank).await?;
    eprintln!(
        "registered {registered} variants ({:.1} MB each on file) in {:.1}s",
        edit_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    if args.eval_variants > 0 {
        spawn_workers(&state, 1);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(crate::app::serve(listener, state.clone()));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .timeout(Duration::from_secs(1800))
        .build()?;
    let c = Client { base, http: client };

    println!(
        "# bench-serve: {spec}, {} {}, {} concurrent greedy requests of {} tokens (prompts of {}), variants rank {} on k and v of every layer",
        args.device, args.dtype, args.concurrency, args.max_tokens, args.prompt_tokens, args.variant_rank
    );
    throughput(&c, args).await?;
    cold_start(&c, &state, args, registered).await?;
    if args.eval_variants > 0 {
        evaluations(&c, args).await?;
    }
    state.shutdown.cancel();
    Ok(())
}

/// A random-weight checkpoint of `shape` written to `out` (what --preload loads).
fn random_checkpoint(
    args: &BenchServeArgs,
    shape: &str,
    out: &std::path::Path,
) -> anyhow::Result<String> {
    let text = match SHAPES.iter().find(|(n, _)| *n == shape) {
        Some((_, t)) => t.to_string(),
        None => std::fs::read_to_string(shape).with_context(|| format!("reading {shape}"))?,
    };
    let config: Value = serde_json::from_str(&text)?;
    let opts = super::load_options(&args.device, &args.dtype)?;
    eigenprune_engine::bench::write_random_checkpoint(&config, &opts.device, opts.dtype, out)?;
    Ok(out.display().to_string())
}

/// Variant `i`'s id.
fn variant(i: usize) -> String {
    format!("bench-v{i}")
}

/// Registers `n` random variants of the base, as a pruning job does (object + row); the
/// size of one edit file.
async fn register(state: &AppState, n: usize, rank: usize) -> anyhow::Result<usize> {
    let host = state.host.clone();
    let files: Vec<Vec<u8>> = tokio::task::spawn_blocking(move || {
        let base = host.base("bench")?;
        (0..n.min(64))
            .map(|_| Ok(eigenprune_engine::bench::random_edit(&base.model, rank)?.to_bytes()?))
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .await??;
    for i in 0..n {
        let key = format!("variants/{}.safetensors", variant(i));
        state
            .storage
            .put(&key, bytes::Bytes::from(files[i % files.len()].clone()))
            .await?;
        state
            .db
            .insert_variant(&VariantRow {
                id: variant(i),
                parent: "bench".into(),
                job_id: format!("bench-job-{i}"),
                object_key: key,
                created_at: 0,
                owner: "bench".into(),
                visibility: "lab".into(),
                summary: "{}".into(),
            })
            .await?;
    }
    Ok(files.first().map_or(0, Vec::len))
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await?;
        anyhow::ensure!(status.is_success(), "{path}: {status} {v}");
        Ok(v)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await?
            .json()
            .await?)
    }

    /// A greedy completion of `prompt` on `model`; the tokens it generated.
    async fn complete(
        &self,
        model: &str,
        prompt: &[u32],
        max_tokens: usize,
    ) -> anyhow::Result<usize> {
        let body =
            json!({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0});
        let v = self.post("/v1/completions", &body).await?;
        Ok(v["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize)
    }

    /// Seconds to the first streamed chunk of a one-token completion.
    async fn first_token(&self, model: &str, prompt: &[u32]) -> anyhow::Result<f64> {
        let body = json!({"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "stream": true});
        let t = Instant::now();
        let mut r = self
            .http
            .post(format!("{}/v1/completions", self.base))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "first token: {}", r.status());
        r.chunk().await?;
        let s = t.elapsed().as_secs_f64();
        while r.chunk().await?.is_some() {}
        Ok(s)
    }
}

fn prompt(i: usize, len: usize) -> Vec<u32> {
    // Token ids spread over the low vocabulary (every tokenizer's), different per request.
    (0..len)
        .map(|j| (100 + (i * 7919 + j * 104_729) % 20_000) as u32)
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// tok/s of every row; each variant row's burst right after a burst on the base, its share
/// the median over rounds of the pair's ratio (drift between bursts falls on both).
async fn throughput(c: &Client, args: &BenchServeArgs) -> anyhow::Result<()> {
    let most = args.variants.iter().copied().max().unwrap_or(0);
    // Warm: every variant's edit in the pool, the base's batch started.
    c.complete("bench", &prompt(0, args.prompt_tokens), 2)
        .await?;
    for i in 0..most {
        c.complete(&variant(i), &prompt(i, args.prompt_tokens), 1)
            .await?;
    }
    let burst = |spread: usize| async move {
        let t = Instant::now();
        let calls = (0..args.concurrency).map(|i| {
            let model = if spread == 0 {
                "bench".to_string()
            } else {
                variant(i % spread)
            };
            let p = prompt(i, args.prompt_tokens);
            async move { c.complete(&model, &p, args.max_tokens).await }
        });
        let tokens: usize = join_all(calls)
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .sum();
        anyhow::Ok(tokens as f64 / t.elapsed().as_secs_f64())
    };
    let mut base_rates = Vec::new();
    let mut rates = vec![Vec::new(); args.variants.len()];
    let mut ratios = vec![Vec::new(); args.variants.len()];
    for _ in 0..args.rounds.max(1) {
        for (r, &spread) in args.variants.iter().enumerate() {
            let base = burst(0).await?;
            let rate = burst(spread).await?;
            base_rates.push(base);
            rates[r].push(rate);
            ratios[r].push(rate / base.max(f64::MIN_POSITIVE));
        }
    }
    println!(
        "| row | tok/s (median of {}) | of base (median of paired bursts) |",
        args.rounds.max(1)
    );
    println!("| --- | --- | --- |");
    println!("| all on the base | {:.0} | 100% |", median(base_rates));
    for (r, &spread) in args.variants.iter().enumerate() {
        println!(
            "| over {spread} variants | {:.0} | {:.0}% |",
            median(rates[r].clone()),
            100.0 * median(ratios[r].clone())
        );
    }
    Ok(())
}

/// First-token latency of cold variants (edit from the object store) against warm ones, and
/// the pool's memory.
async fn cold_start(
    c: &Client,
    state: &AppState,
    args: &BenchServeArgs,
    registered: usize,
) -> anyhow::Result<()> {
    let most = args.variants.iter().copied().max().unwrap_or(0);
    let cold: Vec<usize> = (most..registered).take(args.cold).collect();
    if cold.is_empty() {
        println!(
            "cold start: no cold variant registered (give --registered > the largest --variants)"
        );
        return Ok(());
    }
    let p = prompt(1, args.prompt_tokens);
    let mut warm = Vec::new();
    let mut first = Vec::new();
    for (k, &i) in cold.iter().enumerate() {
        warm.push(c.first_token(&variant(k % most.max(1)), &p).await?);
        first.push(c.first_token(&variant(i), &p).await?);
    }
    let (w, f) = (median(warm), median(first));
    let u = state.host.pool.usage();
    let metrics = c
        .http
        .get(format!("{}/metrics", c.base))
        .send()
        .await?
        .text()
        .await?;
    let loads = metrics
        .lines()
        .find(|l| l.starts_with("eigenprune_edit_pool_loads_total"))
        .unwrap_or_default()
        .to_string();
    let listed = c.get("/v1/models").await?;
    let resident = listed["data"]
        .as_array()
        .map_or(0, |d| d.iter().filter(|m| m["resident"] == true).count());
    println!(
        "cold start ({registered} registered, {} cold timed): first token {:.1} ms cold vs {:.1} ms warm (+{:.1} ms to load the edit)",
        cold.len(),
        f * 1e3,
        w * 1e3,
        (f - w) * 1e3
    );
    println!(
        "edit pool: device tier {} edits, {:.1} MB; host tier {} edits, {:.1} MB; /v1/models lists {resident} resident; {loads}",
        u.device_edits,
        u.device_bytes as f64 / 1e6,
        u.host_edits,
        u.host_bytes as f64 / 1e6
    );
    Ok(())
}

/// One evaluation job of N variants against N single jobs, submitted together, over
/// `--rounds` rounds: the first round's edits are cold (its ratio is printed alone), the
/// median ratio is over the later rounds.
async fn evaluations(c: &Client, args: &BenchServeArgs) -> anyhow::Result<()> {
    let n = args.eval_variants;
    let ids: Vec<String> = (0..n).map(variant).collect();
    let mut ratios = Vec::new();
    for round in 0..args.rounds.max(2) {
        let (together_s, alone_s, same) = evaluation_round(c, args, &ids).await?;
        let ratio = alone_s / together_s.max(f64::MIN_POSITIVE);
        println!(
            "evaluation of {n} variants on {} (round {}{}): one job {together_s:.3}s, {n} single jobs {alone_s:.3}s ({ratio:.1}x); accuracies equal: {same}",
            args.eval_task,
            round + 1,
            if round == 0 { ", edits cold" } else { "" },
        );
        if round > 0 {
            ratios.push(ratio);
        }
    }
    println!(
        "evaluation of {n} variants on {}: median {:.1}x over {} warm rounds",
        args.eval_task,
        median(ratios.clone()),
        ratios.len()
    );
    Ok(())
}

/// One round: (one job's seconds, the single jobs' seconds, whether their accuracies agree).
async fn evaluation_round(
    c: &Client,
    args: &BenchServeArgs,
    ids: &[String],
) -> anyhow::Result<(f64, f64, bool)> {
    let t = Instant::now();
    let one = c
        .post(
            "/v1/evaluations",
            &json!({"models": ids, "task": args.eval_task}),
        )
        .await?;
    let together = wait_job(c, one["id"].as_str().unwrap_or_default()).await?;
    let together_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut singles = Vec::new();
    for id in ids {
        let j = c
            .post(
                "/v1/evaluations",
                &json!({"model": id, "task": args.eval_task}),
            )
            .await?;
        singles.push(j["id"].as_str().unwrap_or_default().to_string());
    }
    let mut alone = Vec::new();
    for j in &singles {
        alone.push(wait_job(c, j).await?);
    }
    let alone_s = t.elapsed().as_secs_f64();
    let same = together["models"].as_array().is_some_and(|m| {
        m.iter()
            .zip(&alone)
            .all(|(a, b)| a["accuracy"] == b["accuracy"])
    });
    Ok((together_s, alone_s, same))
}

/// The finished job's result.
async fn wait_job(c: &Client, id: &str) -> anyhow::Result<Value> {
    loop {
        let j = c.get(&format!("/v1/evaluations/{id}")).await?;
        match j["status"].as_str() {
            Some("succeeded") => return Ok(j["result"].clone()),
            Some("failed") | Some("cancelled") => anyhow::bail!("job {id}: {j}"),
            // Polled often: a 100 ms job is timed to within a few ms.
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}
