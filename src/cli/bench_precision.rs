//! `eigenprune bench-precision`: a task's sweep in f32 and in another precision on a real
//! model, timed, with the overlap of what each prunes and the test accuracy of each edit (one
//! JSON line per task).

use anyhow::Context;
use clap::Args;
use eigenprune_engine::attribution::{Precision, SweepSettings};
use eigenprune_engine::{bench_precision, load_model, Component, LoadOptions};

#[derive(Args, Debug)]
pub struct BenchPrecisionArgs {
    /// A local HF directory or a .gguf file.
    #[arg(long)]
    pub model: String,
    /// Tasks, each compared on its own (built-in names or JSONL files).
    #[arg(long, value_delimiter = ',', default_value = "int-mult,cb,rte")]
    pub tasks: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.2")]
    pub portions: Vec<f64>,
    /// The precision compared with f32: tf32 or bf16.
    #[arg(long, default_value = "bf16")]
    pub precision: String,
    #[arg(long, value_delimiter = ',', default_value = "k")]
    pub components: Vec<String>,
    /// Padded tokens per sweep pass (default: the device's).
    #[arg(long)]
    pub pass_tokens: Option<usize>,
    #[arg(long, default_value_t = SweepSettings::default().seed)]
    pub seed: u64,
    #[arg(long, env = "EIGENPRUNE_DEVICE", default_value = "cpu")]
    pub device: String,
}

pub fn run(args: BenchPrecisionArgs) -> anyhow::Result<()> {
    let other = Precision::parse(&args.precision).with_context(|| {
        let names: Vec<_> = Precision::ALL.iter().map(|p| p.name()).collect();
        format!(
            "unknown precision `{}` ({})",
            args.precision,
            names.join(", ")
        )
    })?;
    let components = args
        .components
        .iter()
        .map(|c| Component::parse(c).with_context(|| format!("unknown component `{c}`")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let opts = LoadOptions {
        device: super::parse_device(&args.device)?,
        dtype: candle_core::DType::F32,
        quantized: false,
    };
    let loaded = load_model(&args.model, &opts)
        .with_context(|| format!("loading model `{}`", args.model))?;
    let settings = SweepSettings {
        pass_tokens: args.pass_tokens,
        seed: args.seed,
        ..Default::default()
    };
    for task in &args.tasks {
        let task = super::load_task(task, args.seed)?;
        let row = bench_precision::compare(
            &loaded.model,
            &loaded.tokenizer,
            &task,
            &components,
            &args.portions,
            other,
            &settings,
        )?;
        println!("{}", serde_json::to_string(&row)?);
    }
    Ok(())
}
