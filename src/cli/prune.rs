//! `eigenprune prune`: SVD, scoring sweep, selection, edit, and test accuracy before/after.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use eigenprune_engine::finetune::FinetuneSettings;
use eigenprune_engine::pipeline::{self, PruneReport, PruneSettings};
use eigenprune_engine::{device, export, load_model, memory, LoadOptions};

use crate::jobs::admission::{decide, Decision};

use super::{load_task, Progress};
use crate::hyper::{parse_portion, Finetune, Hyperparameters, PortionSpec};

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
    #[arg(long, default_values_t = [Hyperparameters::default().portion.to_arg()], value_delimiter = ',')]
    pub portion: Vec<String>,
    /// Scoring batch size (>= 2: the corrupted input is the previous example of the batch).
    #[arg(long, default_value_t = Hyperparameters::default().batch_size)]
    pub batch_size: usize,
    /// Padded tokens per forward/backward pass of the sweep: batches share a pass up to this
    /// many, each scored as if alone (the same scores); 0 runs one batch per pass. Default:
    /// on a GPU the largest of 16384, 8192, 4096, 2048 whose estimate takes at most half the
    /// free memory; one batch per pass on the CPU.
    #[arg(long)]
    pub pass_tokens: Option<usize>,
    /// f32 | tf32 | bf16: what the sweep computes in (scores stay f32); unless f32, the
    /// job's evaluations take TF32 products on a GPU. Default: tf32 on a GPU, f32 on the CPU.
    #[arg(long)]
    pub precision: Option<String>,
    /// Matrices to prune: any of k, q, v, o, mlp_in, mlp_out.
    #[arg(long, default_values_t = Hyperparameters::default().components, value_delimiter = ',')]
    pub components: Vec<String>,
    /// attribution | random | smallest.
    #[arg(long, default_value_t = Hyperparameters::default().method)]
    pub method: String,
    /// normed | resid_pre: the input the scores use.
    #[arg(long, default_value_t = Hyperparameters::default().input)]
    pub input: String,
    /// max | mean | mean_abs.
    #[arg(long, default_value_t = Hyperparameters::default().aggregate)]
    pub aggregate: String,
    /// mean | none: fold the removed part's mean effect into the bias.
    #[arg(long, default_value_t = Hyperparameters::default().bias)]
    pub bias: String,
    #[arg(long, default_value_t = Hyperparameters::default().seed)]
    pub seed: u64,
    /// Score only the first N batches.
    #[arg(long)]
    pub scoring_batches: Option<usize>,
    /// Examples per evaluation pass, at least; on a GPU a pass takes more while its padded
    /// tokens stay within the sweep's pass.
    #[arg(long, default_value_t = Hyperparameters::default().eval_batch_size)]
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
    /// Fine-tune every parameter (AdamW) for this many epochs on the training split before
    /// pruning, as in the paper's "finetuned GPT-2" row.
    #[arg(long, requires = "finetune_lr")]
    pub finetune_epochs: Option<usize>,
    /// Fine-tuning learning rate.
    #[arg(long, requires = "finetune_epochs")]
    pub finetune_lr: Option<f64>,
    /// Fine-tuning batch size.
    #[arg(long, default_value_t = FinetuneSettings::new(1, 0.0).batch_size)]
    pub finetune_batch_size: usize,
    /// Also evaluate the controls (the other two of attribution, random, smallest) at every
    /// portion.
    #[arg(long)]
    pub controls: bool,
    /// Write the job's page (accuracies, heatmaps, score histogram, spectra, a paired test)
    /// as one self-contained HTML file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

pub fn settings(args: &PruneArgs) -> anyhow::Result<PruneSettings> {
    let hyper = Hyperparameters {
        portion: PortionSpec::Fixed(0.0),
        batch_size: args.batch_size,
        pass_tokens: args.pass_tokens,
        precision: args.precision.clone(),
        components: args.components.clone(),
        method: args.method.clone(),
        input: args.input.clone(),
        aggregate: args.aggregate.clone(),
        bias: args.bias.clone(),
        seed: args.seed,
        scoring_batches: args.scoring_batches,
        eval_batch_size: args.eval_batch_size,
        finetune: args
            .finetune_epochs
            .zip(args.finetune_lr)
            .map(|(epochs, lr)| Finetune {
                epochs,
                lr,
                batch_size: Some(args.finetune_batch_size),
                weight_decay: None,
            }),
        controls: args.controls,
    };
    let mut settings = hyper
        .to_settings()
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    settings.portions = args
        .portion
        .iter()
        .map(|p| parse_portion(&PortionSpec::Named(p.trim().to_string())))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    settings.svd_cache = args.svd_cache.clone();
    Ok(settings)
}

pub fn run(args: PruneArgs) -> anyhow::Result<()> {
    let mut settings = settings(&args)?;
    let device = super::parse_device(&args.device)?;
    let task = load_task(&args.task, args.seed)?;
    // Pruning math is f32; the weights are loaded in f32 so nothing is rounded first.
    let opts = LoadOptions {
        device,
        dtype: candle_core::DType::F32,
        quantized: false,
    };
    let loaded = load_model(&args.model, &opts)
        .with_context(|| format!("loading model `{}`", args.model))?;
    let gpu = gpu_admission(&loaded, &task, &mut settings)?;
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
    if let (Some((need, before)), Some(after)) = (gpu, device::memory(loaded.model.device())) {
        eprintln!(
            "GPU memory: job estimate {:.2} GiB; in use {:.2} GiB before the job, {:.2} GiB after \
             (freed blocks stay in the allocator's pool, so this is about the peak)",
            gib(need.total),
            gib(before.0),
            gib(after.0)
        );
    }
    if let Some(path) = &args.report {
        write_report(&args, &settings, &report, path)?;
        eprintln!("report written to {}", path.display());
    }
    if args.json {
        println!("{}", crate::report::report_json(&report));
    } else {
        print_summary(&report);
    }
    Ok(())
}

/// The job page of this run as one HTML file.
fn write_report(
    args: &PruneArgs,
    settings: &PruneSettings,
    report: &PruneReport,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let job = crate::http::jobs::Job {
        id: "local run".into(),
        object: "pruning.job".into(),
        model: args.model.clone(),
        task: Some(report.task.clone()),
        dataset: None,
        status: "succeeded".into(),
        owner: crate::identity::LOCAL_USER.into(),
        visibility: crate::identity::Visibility::Private,
        attempts: 1,
        created_at: now,
        started_at: None,
        finished_at: None,
        result: None,
        error: None,
        hyperparameters: Some(serde_json::json!({
            "portion": args.portion,
            "components": args.components,
            "method": settings.method.name(),
            "batch_size": settings.batch_size,
            "seed": settings.seed,
            "scoring_batches": settings.scoring_batches,
            "controls": settings.controls,
        })),
        suffix: None,
        pruned_model: None,
        pruned_model_deleted: None,
        split: None,
    };
    let html = crate::web::job_page::standalone_report(
        &job,
        &crate::report::report_json(report),
        &crate::report::analysis_json(report, settings.method.name()),
    );
    std::fs::write(path, html).with_context(|| format!("writing {}", path.display()))
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// On a GPU: the job's pass size (as asked, or the largest that fits: [`memory::fit_pass`]) and
/// its memory estimate against what is free, refusing a job that cannot fit before it starts.
/// Returns the estimate and the device's (used, total) now.
fn gpu_admission(
    loaded: &eigenprune_engine::LoadedModel,
    task: &eigenprune_engine::tasks::Task,
    settings: &mut pipeline::PruneSettings,
) -> anyhow::Result<Option<(memory::JobMemory, (u64, u64))>> {
    let Some((used, total)) = device::memory(loaded.model.device()) else {
        return Ok(None);
    };
    let (fitted, need) = memory::fit_pass_for_task(
        &loaded.model,
        &loaded.tokenizer,
        task,
        settings,
        total - used,
    )?;
    if let Decision::Refuse(why) = decide(need.total, total - used, total, used, 0) {
        anyhow::bail!("{why}");
    }
    *settings = fitted;
    Ok(Some((need, (used, total))))
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
    if let Some((ft, pretrained)) = &r.finetune {
        println!("before fine-tuning: {}", fmt(pretrained));
        let losses: Vec<String> = ft.epoch_losses.iter().map(|l| format!("{l:.4}")).collect();
        println!("fine-tuning loss per epoch: {}", losses.join(", "));
    }
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
