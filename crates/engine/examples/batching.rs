//! Benchmark: N greedy requests of T new tokens, one after another (`generate`, batch 1) and
//! all at once through the continuous batcher. Prints tokens/s for both.
//!
//!     cargo run --release -p eigenprune-engine --example batching -- MODEL [N] [T]

use std::sync::Arc;
use std::time::Instant;

use eigenprune_engine::batcher::{Batcher, Event};
use eigenprune_engine::generate::{generate, SamplingParams};
use eigenprune_engine::{load_model, LoadOptions};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model = args.get(1).expect("usage: batching MODEL [N] [T]");
    let n: usize = args.get(2).map_or(Ok(8), |s| s.parse())?;
    let t: usize = args.get(3).map_or(Ok(32), |s| s.parse())?;
    let m = Arc::new(load_model(model, &LoadOptions::default())?);
    let prompts: Vec<Vec<u32>> = (0..n)
        .map(|i| {
            let text = format!(
                "Question {i}: what is {} times {}? Answer:",
                3 + i,
                7 + 2 * i
            );
            m.tokenizer.encode(text, true).map(|e| e.get_ids().to_vec())
        })
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let params = SamplingParams {
        max_tokens: t,
        ..Default::default()
    };
    let ignore_eos = SamplingParams {
        stop_tokens: Vec::new(),
        ..params
    };

    let start = Instant::now();
    let mut sequential = 0;
    for p in &prompts {
        sequential += generate(&m.model, p, &ignore_eos, |_| true)?.0.len();
    }
    let seq_s = start.elapsed().as_secs_f64();

    let batcher = Batcher::start(m.clone(), n);
    let start = Instant::now();
    let receivers: Vec<_> = prompts
        .iter()
        .map(|p| batcher.submit(p.clone(), ignore_eos.clone()))
        .collect();
    let mut batched = 0;
    for rx in receivers {
        batched += rx.iter().filter(|e| matches!(e, Event::Token(_))).count();
    }
    let bat_s = start.elapsed().as_secs_f64();
    println!("{n} requests x {t} new tokens, greedy, {model}");
    println!(
        "one at a time: {sequential} tokens in {seq_s:.2} s = {:.1} tok/s",
        sequential as f64 / seq_s
    );
    println!(
        "batched:       {batched} tokens in {bat_s:.2} s = {:.1} tok/s",
        batched as f64 / bat_s
    );
    Ok(())
}
