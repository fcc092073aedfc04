//! A whole pruning job: SVD, scoring sweep, selection, edit, evaluation before and after.
//! One sweep serves every portion asked for (scores do not depend on the portion).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::DType;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use tokenizers::Tokenizer;

use crate::analysis::Analysis;
use crate::attribution::{sweep, Aggregate, InputMode, Precision, Scores, SweepSettings};
use crate::edit::Edit;
use crate::eval::{evaluate, EvalBatch, EvalResult};
use crate::finetune::{finetune, FinetuneReport, FinetuneSettings};
use crate::prune::{build_edit, ranking, select, BiasMode, Method};
use crate::svd::{decompose, decompose_cached, SiteSvd};
use crate::tasks::{Example, Task};
use crate::trace::Component;
use crate::transformer::Transformer;
use crate::{EngineError, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Portion {
    /// Prune floor(N * p) of the N candidates.
    Fixed(f64),
    /// Choose among [`AUTO_GRID`] on a dev split carved (seeded) from train.
    Auto,
}

pub const AUTO_GRID: &[f64] = &[0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3];

#[derive(Clone, Debug)]
pub struct PruneSettings {
    pub components: Vec<Component>,
    pub portions: Vec<Portion>,
    pub batch_size: usize,
    /// Padded tokens per sweep pass ([`SweepSettings::pass_tokens`]: the same scores; None:
    /// the device's default).
    pub pass_tokens: Option<usize>,
    /// What the sweep computes in (the evaluations' products take TF32 unless it is f32);
    /// None: the device's default ([`Precision::on`]).
    pub precision: Option<Precision>,
    pub method: Method,
    pub input: InputMode,
    pub aggregate: Aggregate,
    pub bias: BiasMode,
    pub seed: u64,
    pub scoring_batches: Option<usize>,
    pub eval_batch_size: usize,
    /// Where SVDs are cached (they depend only on the weights); None = no cache.
    pub svd_cache: Option<std::path::PathBuf>,
    /// Full fine-tuning on the scored split before pruning; None = prune the base as is.
    pub finetune: Option<FinetuneSettings>,
    /// Also evaluate the other rankings (of attribution, random, smallest) at every portion,
    /// as controls; the variant is still the job's own method's.
    pub controls: bool,
}

impl Default for PruneSettings {
    /// The method's defaults (the sweep's from [`SweepSettings::default`]); the CLI, the API
    /// and its OpenAPI document take theirs from here.
    fn default() -> Self {
        let sweep = crate::attribution::SweepSettings::default();
        Self {
            components: vec![Component::K],
            portions: vec![Portion::Fixed(0.2)],
            batch_size: sweep.batch_size,
            pass_tokens: sweep.pass_tokens,
            precision: sweep.precision,
            method: Method::Attribution,
            input: sweep.input,
            aggregate: sweep.aggregate,
            bias: BiasMode::Mean,
            seed: sweep.seed,
            scoring_batches: None,
            eval_batch_size: 16,
            svd_cache: None,
            finetune: None,
            controls: false,
        }
    }
}

/// The outcome for one portion.
#[derive(Clone, Debug)]
pub struct PortionResult {
    pub portion: f64,
    pub pruned: usize,
    pub accuracy_after: EvalResult,
    /// Pruned count per layer.
    pub pruned_per_layer: Vec<usize>,
    /// For `portion = auto`: dev accuracy of every grid point, and the dev size.
    pub auto_dev: Option<(Vec<(f64, EvalResult)>, usize)>,
    /// With [`PruneSettings::controls`]: the test accuracy of the same count pruned by each
    /// other method.
    pub controls: Vec<(Method, EvalResult)>,
    pub edit: Edit,
}

#[derive(Clone, Debug)]
pub struct PruneReport {
    pub task: String,
    pub candidates: usize,
    pub accuracy_before: EvalResult,
    pub test_size: usize,
    pub scored_examples: usize,
    /// What the sweep computed in, and its padded tokens per pass (0: one group per pass).
    pub precision: Precision,
    pub pass_tokens: usize,
    pub results: Vec<PortionResult>,
    /// Seconds per phase: svd, sweep, edit, eval_before, eval_after (and finetune, auto_dev).
    pub seconds: BTreeMap<String, f64>,
    /// When the job fine-tuned first: its losses, and the test accuracy of the model before
    /// fine-tuning (`accuracy_before` is the fine-tuned model's).
    pub finetune: Option<(FinetuneReport, EvalResult)>,
    /// Every head's singular values, scores and ranks (the pictures of what was pruned).
    pub analysis: Analysis,
    /// The test split's (prompt, gold answer), in the order of [`EvalResult::right`].
    pub test_items: Vec<(String, String)>,
}

/// Progress callback: (phase, done, total); returning false cancels the job.
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize) -> bool;

pub fn run(
    base: &Transformer,
    tok: &Tokenizer,
    task: &Task,
    settings: &PruneSettings,
    progress: Progress,
) -> Result<PruneReport> {
    if settings.portions.is_empty() {
        return Err(EngineError::InvalidInput("no portion given".into()));
    }
    // Pruning math, the evaluations included, is on the dense f32 weights whatever the serving
    // form (dtype, a GGUF's quantised blocks); the edit is applied in the base's dtype.
    let base32 = if base.dtype() == DType::F32 {
        base.dense()
    } else {
        base.to_dtype(DType::F32)?
    };
    let base = &base32;
    let mut seconds = BTreeMap::new();
    let mut clock = Instant::now();
    let mut lap = |name: &str, seconds: &mut BTreeMap<String, f64>| {
        *seconds.entry(name.to_string()).or_insert(0.0) += clock.elapsed().as_secs_f64();
        clock = Instant::now();
    };
    let wants_auto = settings.portions.contains(&Portion::Auto);
    let (score_split, dev): (Cow<[Example]>, Vec<Example>) = if wants_auto {
        let (scored, dev) = split_dev(&task.train, settings.seed);
        (Cow::Owned(scored), dev)
    } else {
        (Cow::Borrowed(&task.train), Vec::new())
    };

    let evals = Evals::of(base, settings);
    let tuned;
    let (base, finetune_outcome) = match &settings.finetune {
        None => (base, None),
        Some(ft) => {
            let pretrained = evals.run(base, tok, &task.test, &mut |d, t| {
                progress("eval_pretrained", d, t)
            })?;
            lap("eval_pretrained", &mut seconds);
            let (model, report) =
                finetune(base, tok, &score_split, ft, settings.seed, &mut |d, t| {
                    progress("finetune", d, t)
                })?;
            lap("finetune", &mut seconds);
            tuned = model;
            (&tuned, Some((report, pretrained)))
        }
    };
    if !progress("svd", 0, 1) {
        return Err(EngineError::Cancelled);
    }
    let svds = match &settings.svd_cache {
        Some(dir) => decompose_cached(base, &settings.components, dir)?.0,
        None => decompose(base, &settings.components)?,
    };
    lap("svd", &mut seconds);

    // The controls (random, smallest) rank without scores, but the bias edit still needs the
    // mean inputs over the scoring data, which the same sweep gathers.
    let sweep_settings = SweepSettings {
        batch_size: settings.batch_size,
        pass_tokens: settings.pass_tokens,
        seed: settings.seed,
        aggregate: settings.aggregate,
        input: settings.input,
        scoring_batches: settings.scoring_batches,
        shuffle: true,
        profile: false,
        precision: settings.precision,
    };
    let scores = sweep(
        base,
        tok,
        &score_split,
        &svds,
        &sweep_settings,
        &mut |d, t| progress("sweep", d, t),
    )?;
    lap("sweep", &mut seconds);
    let order = ranking(&svds, &scores, settings.method, settings.seed)?;

    let before = evals.run(base, tok, &task.test, &mut |d, t| {
        progress("eval_before", d, t)
    })?;
    lap("eval_before", &mut seconds);

    let mut results = Vec::new();
    for portion in &settings.portions {
        let (p, auto_dev) = match portion {
            Portion::Fixed(p) => (*p, None),
            Portion::Auto => {
                let mut grid = Vec::new();
                for &p in AUTO_GRID {
                    let (model, _) = edited(base, &svds, &order, &scores, p, settings.bias)?;
                    let r = evals.run(&model, tok, &dev, &mut |d, t| progress("auto_dev", d, t))?;
                    grid.push((p, r));
                }
                lap("auto_dev", &mut seconds);
                // Best dev accuracy; ties go to the smaller portion.
                let best = grid
                    .iter()
                    .fold(None::<&(f64, EvalResult)>, |best, cur| match best {
                        Some(b) if b.1.correct >= cur.1.correct => Some(b),
                        _ => Some(cur),
                    })
                    .map(|b| b.0)
                    .unwrap_or(0.0);
                (best, Some((grid, dev.len())))
            }
        };
        let (model, mut edit) = edited(base, &svds, &order, &scores, p, settings.bias)?;
        if settings.finetune.is_some() {
            edit.finetuned = base.weights.parameters();
        }
        lap("edit", &mut seconds);
        let after = evals.run(&model, tok, &task.test, &mut |d, t| {
            progress("eval_after", d, t)
        })?;
        lap("eval_after", &mut seconds);
        let mut controls = Vec::new();
        if settings.controls {
            for method in Method::ALL.into_iter().filter(|&m| m != settings.method) {
                let order = ranking(&svds, &scores, method, settings.seed)?;
                let (model, _) = edited(base, &svds, &order, &scores, p, settings.bias)?;
                let r = evals.run(&model, tok, &task.test, &mut |d, t| {
                    progress("eval_controls", d, t)
                })?;
                controls.push((method, r));
            }
            lap("eval_controls", &mut seconds);
        }
        let mut per_layer = vec![0; base.config.n_layers];
        for m in &edit.matrices {
            per_layer[m.layer] += m.rank();
        }
        results.push(PortionResult {
            portion: p,
            pruned: edit.rank(),
            accuracy_after: after,
            pruned_per_layer: per_layer,
            auto_dev,
            controls,
            edit,
        });
    }
    Ok(PruneReport {
        task: task.name.clone(),
        candidates: order.len(),
        accuracy_before: before,
        test_size: task.test.len(),
        scored_examples: scores.examples,
        precision: scores.precision,
        pass_tokens: scores.pass_tokens,
        results,
        seconds,
        finetune: finetune_outcome,
        analysis: Analysis::of(&svds, &scores, &order)?,
        test_items: task
            .test
            .iter()
            .map(|e| (e.prompt.clone(), gold_answer(e)))
            .collect(),
    })
}

/// How a job evaluates: passes up to the sweep's padded tokens (at least `eval_batch_size`
/// examples), and the matrix products in TF32 on a GPU unless the job's precision is f32 (a
/// bf16 job's evaluations run the f32 model with TF32 products too).
struct Evals {
    batch: EvalBatch,
    tf32: bool,
}

impl Evals {
    fn of(base: &Transformer, settings: &PruneSettings) -> Self {
        let device = base.device();
        Self {
            batch: EvalBatch {
                rows: settings.eval_batch_size,
                tokens: crate::attribution::pass_tokens_on(device, settings.pass_tokens),
            },
            tf32: Precision::on(device, settings.precision) != Precision::F32,
        }
    }

    fn run(
        &self,
        model: &Transformer,
        tok: &Tokenizer,
        examples: &[Example],
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<EvalResult> {
        let _tf32 = crate::device::Tf32::enable(model.device(), self.tf32);
        evaluate(model, tok, examples, self.batch, progress)
    }
}

/// The base model with the first floor(N * portion) of `order` removed, and that edit.
fn edited(
    base: &Transformer,
    svds: &[SiteSvd],
    order: &[(usize, usize, usize)],
    scores: &Scores,
    portion: f64,
    bias: BiasMode,
) -> Result<(Transformer, Edit)> {
    let selection = select(svds, order, portion)?;
    let edit = build_edit(base, svds, &selection, &scores.input_means, bias)?;
    let mut model = base.clone();
    edit.apply(&mut model)?;
    Ok((model, edit))
}

/// The answer an example is scored against: its gold choice, or its answer.
fn gold_answer(e: &Example) -> String {
    match (&e.choices, e.label) {
        (Some(choices), Some(l)) => choices.get(l).cloned().unwrap_or_default(),
        _ => e.answer.clone(),
    }
}

/// A seeded 20% dev split carved from train (for `portion = auto`); the rest is scored.
fn split_dev(train: &[Example], seed: u64) -> (Vec<Example>, Vec<Example>) {
    let mut rows = train.to_vec();
    rows.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x05ee_dde5));
    let dev = rows.split_off(rows.len() - rows.len() / 5);
    (rows, dev)
}
