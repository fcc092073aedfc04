//! The command line: one subcommand per file.

pub mod bench;
pub mod bench_precision;
pub mod bench_serve;
pub mod eval;
pub mod generate;
pub mod keys;
pub mod prune;
pub mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "eigenprune",
    version,
    about = "Eigenpruning of large language models"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate a continuation of a prompt (streamed to stdout; speed on stderr).
    Generate(generate::GenerateArgs),
    /// Eigenprune a model for a task: SVD, scoring sweep, selection, edit, evaluation.
    Prune(Box<prune::PruneArgs>),
    /// Evaluate a model (optionally with an edit) on a task's test split.
    Eval(eval::EvalArgs),
    /// Run the HTTP service (and, unless --workers 0, its worker pool).
    Serve(Box<serve::ServeArgs>),
    /// Run only the worker pool against the same database and object store.
    Worker(Box<serve::WorkerArgs>),
    /// Apply database migrations (also done at start-up).
    Migrate(serve::StoreArgs),
    /// API keys: create (printed once), list, revoke.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Users' quota overrides.
    #[command(subcommand)]
    Users(keys::UsersCommand),
    /// Benchmark SVD, the attribution sweep and decoding at a real model's shape (random weights).
    Bench(bench::BenchArgs),
    /// Benchmark many pruned variants served on one base through the HTTP API (an in-process
    /// server): mixed-variant throughput, cold-variant first token, the edit pool, evaluations.
    BenchServe(Box<bench_serve::BenchServeArgs>),
    /// Compare a task's sweep in f32 and in bf16 or tf32 on a real model: time, rank
    /// correlation of the scores, overlap of the pruned sets, test accuracy of each edit.
    BenchPrecision(bench_precision::BenchPrecisionArgs),
    /// Print the HTTP API's OpenAPI document.
    Openapi,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Prune(args) => prune::run(*args),
        Command::Eval(args) => eval::run(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchServe(args) => bench_serve::run(*args),
        Command::BenchPrecision(args) => bench_precision::run(args),
        Command::Serve(args) => runtime()?.block_on(serve::serve(*args)),
        Command::Worker(args) => runtime()?.block_on(serve::worker(*args)),
        Command::Migrate(args) => runtime()?.block_on(serve::migrate(args)),
        Command::Keys(cmd) => runtime()?.block_on(keys::keys(cmd)),
        Command::Users(cmd) => runtime()?.block_on(keys::users(cmd)),
        Command::Openapi => {
            println!("{}", serde_json::to_string_pretty(&crate::openapi::spec())?);
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `--device`: `cpu`, or `cuda:N` in a build with the `cuda` feature.
/// `--device` and `--dtype` as the engine's load options.
pub fn load_options(device: &str, dtype: &str) -> anyhow::Result<eigenprune_engine::LoadOptions> {
    use candle_core::DType;
    let device = parse_device(device)?;
    let dtype = match dtype {
        "auto" if device.is_cuda() => DType::BF16,
        "auto" | "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => anyhow::bail!("unknown dtype `{other}` (auto, f32, bf16, f16)"),
    };
    Ok(eigenprune_engine::LoadOptions {
        device,
        dtype,
        quantized: false,
    })
}

pub fn parse_device(spec: &str) -> anyhow::Result<candle_core::Device> {
    match spec {
        "cpu" => Ok(candle_core::Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let n = s.strip_prefix("cuda:").unwrap_or("0").parse::<usize>()?;
            // EIGENPRUNE_TF32=1: f32 matmuls on tensor cores (10-bit mantissa products).
            let tf32 = std::env::var("EIGENPRUNE_TF32").is_ok_and(|v| v == "1");
            candle_core::cuda::set_gemm_reduced_precision_f32(tf32);
            Ok(eigenprune_engine::device::open_cuda(n)?)
        }
        other => anyhow::bail!("unknown device `{other}` (use cpu or cuda:N)"),
    }
}

/// A built-in task name, or a JSONL file (split 80/20 with `seed`).
pub fn load_task(spec: &str, seed: u64) -> anyhow::Result<eigenprune_engine::tasks::Task> {
    use eigenprune_engine::tasks;
    if tasks::BUILTIN_TASKS.contains(&spec) {
        return Ok(tasks::builtin(spec)?);
    }
    let path = std::path::Path::new(spec);
    anyhow::ensure!(
        path.exists(),
        "unknown task `{spec}`: neither a built-in ({}) nor a JSONL file",
        tasks::BUILTIN_TASKS.join(", ")
    );
    let text = std::fs::read_to_string(path)?;
    let name = path
        .file_stem()
        .map_or(spec.into(), |s| s.to_string_lossy().into_owned());
    tasks::custom(&name, &text, seed).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Progress on stderr: phase, done/total, rate; one line per phase.
#[derive(Default)]
pub struct Progress {
    phase: String,
    done: usize,
    started: Option<std::time::Instant>,
    last_print: Option<std::time::Instant>,
}

impl Progress {
    /// Prints and returns true (a CLI run is never cancelled from here).
    pub fn update(&mut self, phase: &str, done: usize, total: usize) -> bool {
        let now = std::time::Instant::now();
        // A new phase, or the same phase starting over (one evaluation per portion).
        if phase != self.phase || done < self.done {
            if !self.phase.is_empty() {
                eprintln!();
            }
            self.phase = phase.to_string();
            self.started = Some(now);
        }
        self.done = done;
        let due = self
            .last_print
            .is_none_or(|t| now.duration_since(t).as_millis() >= 500);
        if due || done == total {
            let secs = self
                .started
                .map_or(0.0, |s| now.duration_since(s).as_secs_f64());
            eprint!(
                "\r{phase}: {done}/{total} ({:.1}/s, {secs:.1}s)",
                done as f64 / secs.max(1e-9)
            );
            self.last_print = Some(now);
        }
        true
    }
    pub fn finish(&self) {
        if !self.phase.is_empty() {
            eprintln!();
        }
    }
}
