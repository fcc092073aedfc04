//! `eigenprune prune`: SVD, scoring sweep, selection, edit, and test accuracy before/after.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use eigenprune_engine::attribution::{Aggregate, InputMode};
use eigenprune_engine::pipeline::{self, Portion, PruneReport, PruneSettings};
use eigenprune_engine::prune::{BiasMode, Method};
use eigenprune_engine::{export, load_model, Component, LoadOptions};
use serde_json::json;

use super::{eval_json, load_task, Progress};

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// A local HF directory, a .gguf file, or a Hugging Face hub repo id.
    #[arg(long, env = "EIGENPRUNE_MODEL")]
    pub model: String,
    /// int-sum, int-mult, cb, copa, rte, or a JSONL file of {prompt, answer} or
    /// {prompt, choices, label} rows.
    #[arg(long)]
    pub task: String,
    /// Fraction of all candidate singular values to prune; a comma list runs every portion
    /// from one sweep; `auto` chooses on a dev split carved from train.
    #[arg(long, default_value = "0.2", value_delimiter = ',')]
    pub portion: Vec<String>,
    /// Scoring batch size (>= 2: the corrupted input is the previous example of the batch).
    #[arg(long, default_value_t = 5)]
    pub batch_size: usize,
    /// Matrices to prune: any of k, q, v, o, mlp_in, mlp_out.
    #[arg(long, default_value = "k", value_delimiter = ',')]
    pub components: Vec<String>,
    /// attribution | random | smallest.
    #[arg(long, default_value = "attribution")]
    pub method: String,
    /// normed | resid_pre: the input the scores use.
    #[arg(long, default_value = "normed")]
    pub input: String,
    /// max | mean | mean_abs.
    #[arg(long, default_value = "max")]
    pub aggregate: String,
    /// mean | none: fold the removed part's mean effect into the bias.
    #[arg(long, default_value = "mean")]
    pub bias: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Score only the first N batches.
    #[arg(long)]
    pub scoring_batches: Option<usize>,
    #[arg(long, default_value_t = 16)]
    pub eval_batch_size: usize,
    /// Cache SVDs in this directory (they depend only on the weights).
    #[arg(long, env = "EIGENPRUNE_SVD_CACHE")]
    pub svd_cache: Option<PathBuf>,
    /// Where to write the edit (safetensors) of the first portion.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Write base + edit (first portion) as a full HF checkpoint into this directory.
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Write the edit (first portion) as a PEFT LoRA adapter into this directory.
    #[arg(long)]
    pub export_lora: Option<PathBuf>,
    /// One JSON object on stdout instead of a summary.
    #[arg(long)]
    pub json: bool,
    #[arg(long, env = "EIGENPRUNE_DEVICE", default_value = "cpu")]
    pub device: String,
}

pub fn settings(args: &PruneArgs) -> anyhow::Result<PruneSettings> {
    let components = args
        .components
        .iter()
        .map(|c| {
            Component::parse(c.trim())
                .with_context(|| format!("unknown component `{c}` (k, q, v, o, mlp_in, mlp_out)"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let portions = args
        .portion
        .iter()
        .map(|p| match p.trim() {
            "auto" => Ok(Portion::Auto),
            s => {
                let v: f64 = s
                    .parse()
                    .with_context(|| format!("portion `{s}` is not a number"))?;
                anyhow::ensure!((0.0..=1.0).contains(&v), "portion {v} is outside [0, 1]");
                Ok(Portion::Fixed(v))
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(
        args.batch_size >= 2,
        "--batch-size must be at least 2: with 1 the corrupted input equals the input and every score is 0"
    );
    Ok(PruneSettings {
        components,
        portions,
        batch_size: args.batch_size,
        method: match args.method.as_str() {
            "attribution" => Method::Attribution,
            "random" => Method::Random,
            "smallest" => Method::Smallest,
            m => anyhow::bail!("unknown method `{m}` (attribution, random, smallest)"),
        },
        input: match args.input.as_str() {
            "normed" => InputMode::Normed,
            "resid_pre" => InputMode::ResidPre,
            m => anyhow::bail!("unknown input `{m}` (normed, resid_pre)"),
        },
        aggregate: match args.aggregate.as_str() {
            "max" => Aggregate::Max,
            "mean" => Aggregate::Mean,
            "mean_abs" => Aggregate::MeanAbs,
            m => anyhow::bail!("unknown aggregate `{m}` (max, mean, mean_abs)"),
        },
        bias: match args.bias.as_str() {
            "mean" => BiasMode::Mean,
            "none" => BiasMode::None,
            m => anyhow::bail!("unknown bias `{m}` (mean, none)"),
        },
        seed: args.seed,
        scoring_batches: args.scoring_batches,
        eval_batch_size: args.eval_batch_size.max(1),
        svd_cache: args.svd_cache.clone(),
    })
}

pub fn run(args: PruneArgs) -> anyhow::Result<()> {
    let settings = settings(&args)?;
    let device = super::parse_device(&args.device)?;
    let task = load_task(&args.task, args.seed)?;
    let loaded = load_model(&args.model, &LoadOptions { device })
        .with_context(|| format!("loading model `{}`", args.model))?;
    let mut progress = Progress::default();
    let report = pipeline::run(
        &loaded.model,
        &loaded.tokenizer,
        &task,
        &settings,
        &mut |p, d, t| progress.update(p, d, t),
    )?;
    progress.finish();
    if let Some(path) = &args.output {
        let mut edit = report.results[0].edit.clone();
        edit.metadata
            .insert("base_model".into(), args.model.clone());
        edit.metadata.insert("task".into(), task.name.clone());
        edit.metadata
            .insert("portion".into(), report.results[0].portion.to_string());
        edit.metadata
            .insert("settings".into(), format!("{settings:?}"));
        edit.save(path)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("edit written to {}", path.display());
    }
    let edit = &report.results[0].edit;
    if let Some(dir) = &args.export {
        let mut edited = loaded.model.clone();
        edit.apply(&mut edited)?;
        export::export_checkpoint(&edited, &loaded.config_json, &loaded.tokenizer, dir)
            .with_context(|| format!("exporting to {}", dir.display()))?;
        eprintln!("checkpoint written to {}", dir.display());
    }
    if let Some(dir) = &args.export_lora {
        let dropped = export::export_lora(&loaded.model, edit, &args.model, dir)
            .with_context(|| format!("exporting the LoRA adapter to {}", dir.display()))?;
        eprintln!("LoRA adapter written to {}", dir.display());
        if dropped > 0 {
            eprintln!(
                "note: LoRA adapters carry no biases; {dropped} bias deltas are not in the adapter (exact with --bias none)"
            );
        }
    }
    if args.json {
        println!("{}", report_json(&report));
    } else {
        print_summary(&report);
    }
    Ok(())
}

fn report_json(r: &PruneReport) -> serde_json::Value {
    let first = &r.results[0];
    let per_portion: Vec<_> = r
        .results
        .iter()
        .map(|p| {
            json!({
                "portion": p.portion,
                "pruned": p.pruned,
                "accuracy_after": eval_json(&p.accuracy_after),
                "pruned_per_layer": p.pruned_per_layer,
                "auto_dev": p.auto_dev.as_ref().map(|(grid, n)| json!({
                    "dev_size": n,
                    "grid": grid.iter().map(|(p, e)| json!({"portion": p, "accuracy": eval_json(e)})).collect::<Vec<_>>(),
                })),
            })
        })
        .collect();
    json!({
        "task": r.task,
        "candidates": r.candidates,
        "pruned": first.pruned,
        "portion": first.portion,
        "accuracy_before": eval_json(&r.accuracy_before),
        "accuracy_after": eval_json(&first.accuracy_after),
        "test_size": r.test_size,
        "scored_examples": r.scored_examples,
        "seconds": r.seconds,
        "portions": per_portion,
    })
}

fn print_summary(r: &PruneReport) {
    let fmt = |e: &eigenprune_engine::eval::EvalResult| {
        let choice = e
            .choice_correct
            .map(|c| {
                format!(
                    ", choice {c}/{} = {:.2}%",
                    e.total,
                    100.0 * c as f64 / e.total as f64
                )
            })
            .unwrap_or_default();
        format!(
            "{}/{} = {:.2}%{choice}",
            e.correct,
            e.total,
            100.0 * e.accuracy()
        )
    };
    println!(
        "task {}: {} candidates, test size {}",
        r.task, r.candidates, r.test_size
    );
    println!("before: {}", fmt(&r.accuracy_before));
    for p in &r.results {
        println!(
            "portion {} ({} pruned): {}",
            p.portion,
            p.pruned,
            fmt(&p.accuracy_after)
        );
    }
    let secs: Vec<String> = r
        .seconds
        .iter()
        .map(|(k, v)| format!("{k} {v:.1}s"))
        .collect();
    println!("seconds: {}", secs.join(", "));
}
