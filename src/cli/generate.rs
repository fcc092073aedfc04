//! `eigenprune generate`: greedy or sampled continuation of one prompt.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use eigenprune_engine::generate::{generate, SamplingParams};
use eigenprune_engine::load_model;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A local HF directory, a .gguf file, or a Hugging Face hub repo id.
    #[arg(long, env = "EIGENPRUNE_MODEL")]
    pub model: String,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep generating past end-of-sequence tokens (for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// cpu or cuda:N.
    #[arg(long, env = "EIGENPRUNE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Weights' dtype: auto (bf16 on a GPU, f32 on the CPU), f32, bf16 or f16.
    #[arg(long, env = "EIGENPRUNE_DTYPE", default_value = "auto")]
    pub dtype: String,
    /// On the CPU, decode from a GGUF's own quantised blocks (its linear maps and tied output
    /// projection) instead of the dense f32 weights dequantised from them; the prompt's
    /// forward stays dense.
    #[arg(long)]
    pub quantized: bool,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let opts = eigenprune_engine::LoadOptions {
        quantized: args.quantized,
        ..super::load_options(&args.device, &args.dtype)?
    };
    let t0 = std::time::Instant::now();
    let loaded = load_model(&args.model, &opts)
        .with_context(|| format!("loading model `{}`", args.model))?;
    let linears = loaded.model.weights.linears();
    let quantized = linears.iter().filter(|l| l.is_quantized()).count();
    eprintln!(
        "loaded {} in {:.2}s ({quantized} of {} linear maps served from quantised blocks)",
        args.model,
        t0.elapsed().as_secs_f64(),
        linears.len()
    );
    let tok = &loaded.tokenizer;
    let enc = tok
        .encode(args.prompt.as_str(), true)
        .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?;
    let prompt_ids: Vec<u32> = enc.get_ids().to_vec();
    let params = SamplingParams {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop_tokens: if args.ignore_eos {
            Vec::new()
        } else {
            loaded.model.config.eos_token_ids.clone()
        },
        ..Default::default()
    };
    let mut stdout = std::io::stdout().lock();
    let mut emitted = String::new();
    let mut all = Vec::new();
    let (_, stats) = generate(&loaded.model, &prompt_ids, &params, |id| {
        // Decode the whole continuation each time so multi-byte characters come out whole.
        all.push(id);
        if let Ok(text) = tok.decode(&all, true) {
            if text.len() > emitted.len() && text.starts_with(&emitted) {
                let _ = write!(stdout, "{}", &text[emitted.len()..]);
                let _ = stdout.flush();
                emitted = text;
            }
        }
        true
    })?;
    writeln!(stdout)?;
    eprintln!(
        "prompt: {} tokens in {:.3}s ({:.1} tok/s); generation: {} tokens in {:.3}s ({:.1} tok/s)",
        stats.prompt_tokens,
        stats.prefill_seconds,
        stats.prompt_tokens as f64 / stats.prefill_seconds.max(1e-9),
        stats.generated_tokens,
        stats.decode_seconds,
        stats.generated_tokens as f64 / stats.decode_seconds.max(1e-9),
    );
    Ok(())
}
