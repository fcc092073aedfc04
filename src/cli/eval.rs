//! `eigenprune eval`: test accuracy of a base model, or base + edit.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use eigenprune_engine::edit::Edit;
use eigenprune_engine::eval::{choice_scores, evaluate};
use eigenprune_engine::load_model;
use serde_json::json;

use super::{load_task, Progress};
use crate::report::eval_json;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long, env = "EIGENPRUNE_MODEL")]
    pub model: String,
    /// An edit written by `prune --output`.
    #[arg(long)]
    pub edit: Option<PathBuf>,
    #[arg(long)]
    pub task: String,
    /// Seed of a custom task's train/test split.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long)]
    pub json: bool,
    /// Also write every (example, choice) log-likelihood as JSONL: example, choice, prompt and
    /// answer token ids, logprob (what lm-evaluation-harness computes through the API).
    #[arg(long)]
    pub scores: Option<PathBuf>,
    #[arg(long, env = "EIGENPRUNE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Weights' dtype: auto (bf16 on a GPU, f32 on the CPU), f32, bf16 or f16.
    #[arg(long, env = "EIGENPRUNE_DTYPE", default_value = "auto")]
    pub dtype: String,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let opts = super::load_options(&args.device, &args.dtype)?;
    let task = load_task(&args.task, args.seed)?;
    let mut loaded = load_model(&args.model, &opts)
        .with_context(|| format!("loading model `{}`", args.model))?;
    // Evaluations score the dense weights, as a pruning job's do.
    loaded.model = loaded.model.dense();
    if let Some(path) = &args.edit {
        let edit = Edit::load(path, &opts.device)?;
        edit.apply(&mut loaded.model)
            .with_context(|| format!("applying {}", path.display()))?;
    }
    let mut progress = Progress::default();
    let r = evaluate(
        &loaded.model,
        &loaded.tokenizer,
        &task.test,
        args.batch_size,
        &mut |d, t| progress.update("eval", d, t),
    )?;
    progress.finish();
    if let Some(path) = &args.scores {
        let rows = choice_scores(
            &loaded.model,
            &loaded.tokenizer,
            &task.test,
            args.batch_size,
        )?;
        let text: String = rows
            .iter()
            .map(|c| {
                let row = json!({"example": c.example, "choice": c.choice, "prompt": c.prompt,
                                 "answer": c.answer, "logprob": c.logprob});
                format!("{row}\n")
            })
            .collect();
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!(
            "{}",
            json!({"task": task.name, "accuracy": eval_json(&r), "test_size": r.total})
        );
    } else {
        println!(
            "task {}: {}/{} = {:.2}%",
            task.name,
            r.correct,
            r.total,
            100.0 * r.accuracy()
        );
        if let Some(c) = r.choice_correct {
            println!(
                "choice accuracy: {c}/{} = {:.2}%",
                r.total,
                100.0 * c as f64 / r.total as f64
            );
        }
    }
    Ok(())
}
