//! `eigenprune bench`: SVD, attribution sweep and decoding speed at a real model's shape with
//! seeded random weights, printed as a table (or JSON).

use anyhow::Context;
use clap::Args;
use eigenprune_engine::bench::{self, BenchSettings, Measurement};

/// The shapes that ship with eigenprune (HF config.json files).
const SHAPES: [(&str, &str); 3] = [
    ("gpt2", include_str!("../../bench/shapes/gpt2.json")),
    ("phi2", include_str!("../../bench/shapes/phi2.json")),
    ("smollm2", include_str!("../../bench/shapes/smollm2.json")),
];

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// gpt2, phi2, smollm2, or the path of an HF config.json.
    #[arg(long)]
    pub shape: String,
    #[arg(long, env = "EIGENPRUNE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Decoding dtype: auto (bf16 on a GPU, f32 on the CPU), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 1024)]
    pub sweep_sequences: usize,
    #[arg(long, default_value_t = 32)]
    pub sweep_tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub sweep_batch: usize,
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    #[arg(long, default_value_t = 32)]
    pub concurrent: usize,
    /// Mixed batches: the concurrent requests spread over this many variants (random low-rank
    /// edits of k and v in every layer), one row per count; 0 skips them.
    #[arg(long, value_delimiter = ',', default_value = "4,16")]
    pub variants: Vec<usize>,
    /// Rank of each variant's edit of one map.
    #[arg(long, default_value_t = 8)]
    pub variant_rank: usize,
    /// Skip the CPU SVD (and the GPU-vs-CPU agreement it gives).
    #[arg(long)]
    pub no_svd_cpu: bool,
    /// Only the decoding rows (no SVD, no sweep).
    #[arg(long)]
    pub decode_only: bool,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn shape_config(spec: &str) -> anyhow::Result<serde_json::Value> {
    let text = match SHAPES.iter().find(|(name, _)| *name == spec) {
        Some((_, text)) => text.to_string(),
        None => std::fs::read_to_string(spec).with_context(|| {
            format!("`{spec}` is neither a built-in shape (gpt2, phi2, smollm2) nor a readable config.json")
        })?,
    };
    Ok(serde_json::from_str(&text)?)
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let opts = super::load_options(&args.device, &args.dtype)?;
    let config = shape_config(&args.shape)?;
    let settings = BenchSettings {
        seed: args.seed,
        sweep_sequences: args.sweep_sequences,
        sweep_tokens: args.sweep_tokens,
        sweep_batch: args.sweep_batch,
        new_tokens: args.new_tokens,
        concurrent: args.concurrent,
        svd_cpu: !args.no_svd_cpu,
        serve_dtype: opts.dtype,
        variants: args.variants.iter().copied().filter(|&v| v > 0).collect(),
        variant_rank: args.variant_rank,
        decode_only: args.decode_only,
        ..Default::default()
    };
    if !args.json {
        println!(
            "eigenprune bench: shape {}, device {}",
            args.shape, args.device
        );
        println!("| what | seconds | rate | notes |\n| --- | ---: | ---: | --- |");
    }
    let json = args.json;
    let mut print = |m: &Measurement| {
        if json {
            println!(
                "{}",
                serde_json::to_string(m).expect("a measurement serialises")
            );
        } else {
            let rate = match (m.rate, &m.unit) {
                (Some(r), Some(u)) => format!("{r:.1} {u}"),
                _ => String::new(),
            };
            println!("| {} | {:.3} | {rate} | {} |", m.what, m.seconds, m.note);
        }
    };
    bench::run(&config, &opts.device, &settings, &mut print)?;
    Ok(())
}
