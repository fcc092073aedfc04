//! `eigenprune serve`, `worker` and `migrate`: the service on embedded defaults (SQLite file and
//! object folder under --data-dir) or the lab's Postgres and S3-compatible store.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::app::{self, AppState, Metrics};
use crate::db::Db;
use crate::engine_host::{BaseModel, ModelHost};
use crate::lab::{AuthMode, LabArgs};
use crate::storage::Storage;

#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Where the embedded defaults keep their files.
    #[arg(long, env = "EIGENPRUNE_DATA_DIR", default_value = "./eigenprune-data")]
    pub data_dir: PathBuf,
    /// sqlite://FILE or postgres://... (default: a SQLite file under --data-dir).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// file://DIR or s3://bucket/prefix (default: a folder under --data-dir). S3 reads the usual
    /// AWS_* variables; AWS_ENDPOINT_URL points at an S3-compatible server.
    #[arg(long, env = "EIGENPRUNE_OBJECT_STORE")]
    pub object_store: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Base models to serve, as NAME=PATH or PATH (a local directory, a .gguf file or a hub
    /// repo id; its name is then the file or repo name without `.gguf`); repeatable. They are
    /// loaded at start-up and are the models jobs and completions name.
    #[arg(long = "preload", env = "EIGENPRUNE_PRELOAD", value_delimiter = ',')]
    pub preload: Vec<String>,
    /// cpu or cuda:N.
    #[arg(long, env = "EIGENPRUNE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Weights' dtype: auto (bf16 on a GPU, f32 on the CPU), f32, bf16 or f16.
    #[arg(long, env = "EIGENPRUNE_DTYPE", default_value = "auto")]
    pub dtype: String,
    /// Models kept resident: base models and fine-tuned variants (pruned variants are edits
    /// in the edit pool and do not count); beyond it the coldest fine-tuned variant is evicted
    /// first, a base only when none is left.
    #[arg(long, env = "EIGENPRUNE_MAX_RESIDENT_MODELS", default_value_t = 4)]
    pub max_resident_models: usize,
    /// MiB of pruned variants' edits held on the serving device (LRU; bases never leave for
    /// them).
    #[arg(long, env = "EIGENPRUNE_EDIT_POOL_MB", default_value_t = 1024)]
    pub edit_pool_mb: u64,
    /// MiB of edits kept in host memory below the device's (evicted from the device, they
    /// come back without a read of the object store).
    #[arg(long, env = "EIGENPRUNE_EDIT_HOST_MB", default_value_t = 4096)]
    pub edit_host_mb: u64,
    /// Completion sequences one model decodes together (continuous batching); more wait.
    #[arg(long, env = "EIGENPRUNE_MAX_BATCH_ROWS", default_value_t = 32)]
    pub max_batch_rows: usize,
    /// On the CPU, completions of a `.gguf` base decode from the file's quantised blocks (its
    /// own, or Q8_0 where candle has no vectorised kernel for them); prompts, pruning jobs,
    /// scores and evaluations stay on the dense f32 weights, and a pruned variant decodes as
    /// those blocks plus its edit's low-rank correction.
    #[arg(long, env = "EIGENPRUNE_QUANTIZED")]
    pub quantized: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "EIGENPRUNE_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Worker loops in this process (0: the API alone).
    #[arg(long, env = "EIGENPRUNE_WORKERS", default_value_t = 1)]
    pub workers: usize,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub lab: LabArgs,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[arg(long, env = "EIGENPRUNE_WORKERS", default_value_t = 1)]
    pub workers: usize,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub lab: LabArgs,
}

impl StoreArgs {
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!("sqlite://{}", self.data_dir.join("eigenprune.db").display())
        })
    }
    fn object_store(&self) -> anyhow::Result<String> {
        match &self.object_store {
            Some(s) => Ok(s.clone()),
            None => {
                let dir = self.data_dir.join("objects");
                std::fs::create_dir_all(&dir)?;
                Ok(format!("file://{}", std::fs::canonicalize(&dir)?.display()))
            }
        }
    }
}

pub async fn build_state(
    store: &StoreArgs,
    engine: &EngineArgs,
    lab: &LabArgs,
) -> anyhow::Result<AppState> {
    std::fs::create_dir_all(&store.data_dir)
        .with_context(|| format!("creating {}", store.data_dir.display()))?;
    let db = Db::connect(&store.database_url()).await?;
    let storage = Storage::from_url(&store.object_store()?)?;
    let opts = eigenprune_engine::LoadOptions {
        quantized: engine.quantized,
        ..super::load_options(&engine.device, &engine.dtype)?
    };
    let bases = engine
        .preload
        .iter()
        .map(|p| BaseModel::parse(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut names: Vec<&str> = bases.iter().map(|b| b.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        anyhow::bail!(
            "two --preload models are named `{}`: give one a NAME=PATH",
            w[0]
        );
    }
    let host = Arc::new(ModelHost::new(
        bases.clone(),
        opts,
        engine.max_resident_models,
        engine.max_batch_rows,
        crate::engine_host::PoolBudget {
            device: engine.edit_pool_mb << 20,
            host: engine.edit_host_mb << 20,
        },
    ));
    for b in bases {
        let (h, name) = (host.clone(), b.name.clone());
        tokio::task::spawn_blocking(move || h.base(&name))
            .await?
            .with_context(|| format!("preloading `{}` ({})", b.name, b.spec))?;
    }
    Ok(AppState {
        db,
        storage,
        host,
        metrics: Arc::new(Metrics::default()),
        wake: Arc::new(tokio::sync::Notify::new()),
        lab: Arc::new(lab.clone()),
        auth: lab.auth.unwrap_or(AuthMode::None),
        limiter: Arc::default(),
        shutdown: tokio_util::sync::CancellationToken::new(),
        scratch: store.data_dir.join("tmp"),
        sessions: Arc::default(),
    })
}

/// `n` worker loops; each ends once `state.shutdown` is cancelled and its job is given back.
pub fn spawn_workers(state: &AppState, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let host = hostname();
    (0..n)
        .map(|i| {
            let name = format!("{host}-{}-{i}", std::process::id());
            tokio::spawn(crate::jobs::worker::run(state.clone(), name))
        })
        .collect()
}

/// SIGTERM or SIGINT.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// On a stop signal: cancel `state.shutdown`, then wait up to --drain-secs for `work`
/// (the server's open requests, the workers giving their jobs back).
async fn drain_on_signal(state: &AppState, work: impl std::future::Future<Output = ()>) {
    stop_signal().await;
    tracing::info!(
        drain_secs = state.lab.drain_secs,
        "stopping: draining requests and jobs"
    );
    state.shutdown.cancel();
    let drain = std::time::Duration::from_secs(state.lab.drain_secs);
    match tokio::time::timeout(drain, work).await {
        Ok(()) => tracing::info!("drained"),
        Err(_) => tracing::warn!("drain time over; exiting with work still open"),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map_or_else(|_| "worker".into(), |h| h.trim().to_string())
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    let addr = listener.local_addr()?;
    let mut state = build_state(&args.store, &args.engine, &args.lab).await?;
    state.auth = args.lab.auth_for(&addr);
    if state.auth == AuthMode::Keys && !state.db.any_key().await? {
        tracing::warn!(
            "authentication is on and no API key exists yet: create the first admin's with              `eigenprune keys create --user NAME --admin` (same --data-dir/--database-url)"
        );
    }
    let workers = spawn_workers(&state, args.workers);
    tracing::info!(%addr, workers = args.workers, auth = ?state.auth, "serving");
    let server = tokio::spawn(app::serve(listener, state.clone()));
    drain_on_signal(&state, async move {
        let _ = server.await;
        futures::future::join_all(workers).await;
    })
    .await;
    Ok(())
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.workers > 0, "--workers must be at least 1");
    let state = build_state(&args.store, &args.engine, &args.lab).await?;
    let workers = spawn_workers(&state, args.workers);
    drain_on_signal(&state, async move {
        futures::future::join_all(workers).await;
    })
    .await;
    Ok(())
}

pub async fn migrate(store: StoreArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&store.data_dir)?;
    Db::connect(&store.database_url()).await?;
    eprintln!("migrations applied to {}", store.database_url());
    Ok(())
}
