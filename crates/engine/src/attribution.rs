//! The scoring sweep: one forward/backward per batch of training examples; per singular value,
//! score = s_i * (U[:, i] . dx) * (Vh[i, :] . g), dx = (previous example's input at the same
//! position) - (this input), g = d(loss)/d(map output). Aggregated as it goes: memory is
//! bounded by the batch, never by the data set.
//!
//! Super-batching: the method's batch (its corruption pairing and loss scale) need not be the
//! device's. Groups of `batch_size` examples, formed by the seeded shuffle, share one
//! forward/backward pass up to [`SweepSettings::pass_tokens`]; each group pairs within itself
//! and its loss is scaled as if it ran alone, so every score equals the one-group-per-pass
//! sweep's (rows never interact). Groups of similar length share a pass, to keep padding small.

use std::time::Instant;

use candle_core::{DType, Tensor, D};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use tokenizers::Tokenizer;

use crate::batch::{answer_targets, encode_example, pack, Packed, Sequence};
use crate::config::NormKind;
use crate::score_terms::{gather_f32, product_aggregate, RowNorm, Rows};
use crate::svd::SiteSvd;
use crate::tasks::Example;
use crate::trace::{Component, Trace};
use crate::transformer::Transformer;
use crate::{EngineError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregate {
    /// Signed maximum over all examples and tokens (the paper's).
    Max,
    Mean,
    MeanAbs,
}

impl Aggregate {
    pub const ALL: [Self; 3] = [Self::Max, Self::Mean, Self::MeanAbs];
    pub fn name(self) -> &'static str {
        match self {
            Self::Max => "max",
            Self::Mean => "mean",
            Self::MeanAbs => "mean_abs",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputMode {
    /// The map's true input: the normalised residual (xhat) for maps behind a norm.
    Normed,
    /// The residual stream before the norm (the reference code's choice).
    ResidPre,
}

impl InputMode {
    pub const ALL: [Self; 2] = [Self::Normed, Self::ResidPre];
    pub fn name(self) -> &'static str {
        match self {
            Self::Normed => "normed",
            Self::ResidPre => "resid_pre",
        }
    }
}

/// Padded tokens per sweep pass on a GPU when nothing else decides: int-mult's groups of 5
/// (about 50 tokens) share a pass by the dozens, an rte group (up to about 1,500) runs alone or
/// with one more. A job takes a larger pass when its memory allows ([`crate::memory::fit_pass`]);
/// the pass's activations grow with it ([`crate::memory`] counts them). On the CPU a pass is
/// compute-bound already: one group per pass (int-mult on 2 cores: a pass of 2,048 tokens was
/// no faster than one group a pass, with 10x the memory; BENCHMARKS.md).
pub const GPU_PASS_TOKENS: usize = 2048;

/// The pass size a sweep on `device` uses: `asked`, or the device's default.
pub fn pass_tokens_on(device: &candle_core::Device, asked: Option<usize>) -> usize {
    asked.unwrap_or(if device.is_cpu() { 0 } else { GPU_PASS_TOKENS })
}

/// What the sweep's forward and backward compute in. Scores, their aggregates and the input
/// means are f32 in every case, and so are the norms' statistics, the softmax's and the
/// loss ([`crate::grad_ops`]); the SVD and the edit are f32 too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// IEEE f32 throughout (the CPU's default: exact, and all a CPU has).
    F32,
    /// f32 tensors, matrix products on tensor cores with TF32 inputs (a GPU only; elsewhere
    /// the same as f32). cuBLAS's switch is process-wide: while a TF32 (or bf16) sweep runs,
    /// other f32 products in the process take TF32 too (serving runs bf16 on a GPU).
    Tf32,
    /// bf16 weights and activations on tensor cores, f32 accumulation. The scores' f32
    /// projections of the (bf16-exact) inputs and gradients take TF32 inputs.
    Bf16,
}

impl Precision {
    pub const ALL: [Self; 3] = [Self::F32, Self::Tf32, Self::Bf16];

    /// The precision called `name` (as [`Self::name`] writes it).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Tf32 => "tf32",
            Self::Bf16 => "bf16",
        }
    }

    /// The precision a sweep on `device` uses: `asked`, or the device's default.
    pub fn on(device: &candle_core::Device, asked: Option<Self>) -> Self {
        asked.unwrap_or(if device.is_cpu() {
            Self::F32
        } else {
            GPU_PRECISION
        })
    }

    /// The dtype the model runs in.
    pub fn dtype(self) -> DType {
        match self {
            Self::Bf16 => DType::BF16,
            Self::F32 | Self::Tf32 => DType::F32,
        }
    }
}

/// The GPU's default precision. bf16 moves too much (BENCHMARKS.md: on the real SmolLM2 and
/// Gemma-3, int-mult, the pruned sets agree with f32's by 91-95%, short of 98%); TF32 keeps
/// f32 storage and statistics and rounds only the products' inputs.
pub const GPU_PRECISION: Precision = Precision::Tf32;

#[derive(Clone, Debug)]
pub struct SweepSettings {
    pub batch_size: usize,
    /// Padded tokens (rows x longest row) one forward/backward pass holds: whole groups of
    /// `batch_size`, at least one; 0 runs one group per pass (the plain sweep); None: the
    /// device's default ([`pass_tokens_on`]).
    pub pass_tokens: Option<usize>,
    pub seed: u64,
    pub aggregate: Aggregate,
    pub input: InputMode,
    /// Score only the first N batches (None = all).
    pub scoring_batches: Option<usize>,
    /// Shuffle the examples with `seed` first (the method's default; off for reference tests).
    pub shuffle: bool,
    /// Time the forward, backward and scoring phases (synchronising the device after each).
    pub profile: bool,
    /// What the forward and backward compute in; None: the device's default
    /// ([`Precision::on`]).
    pub precision: Option<Precision>,
}

impl Default for SweepSettings {
    /// The method's defaults: batches of 5, seed 42, signed max, normed input, every batch;
    /// passes as the device likes them.
    fn default() -> Self {
        Self {
            batch_size: 5,
            pass_tokens: None,
            seed: 42,
            aggregate: Aggregate::Max,
            input: InputMode::Normed,
            scoring_batches: None,
            shuffle: true,
            profile: false,
            precision: None,
        }
    }
}

/// Aggregated scores `[site][head][i]` and the mean input of each head's map.
#[derive(Clone, Debug)]
pub struct Scores {
    pub scores: Vec<Vec<Vec<f32>>>,
    /// Mean over real scoring tokens of the input the SVD acts on, `[site][d_in]`.
    pub input_means: Vec<Vec<f32>>,
    pub examples: usize,
    pub tokens: usize,
    /// What the forward and backward computed in, and the padded tokens per pass (0: one
    /// group per pass).
    pub precision: Precision,
    pub pass_tokens: usize,
    /// Seconds in the forward pass, the backward pass and the scoring, when
    /// [`SweepSettings::profile`] asked for them (each phase then ends with a device sync).
    pub phase_seconds: Option<[f64; 3]>,
}

impl Scores {
    /// Every score, site by site, head by head.
    pub fn flat(&self) -> Vec<f32> {
        self.scores.iter().flatten().flatten().copied().collect()
    }
}

struct Accumulator {
    agg: Aggregate,
    values: Vec<Vec<Vec<f64>>>,
    count: f64,
    input_sums: Vec<Vec<f64>>,
    /// The passes' aggregates (every singular value, flat; f32 for the max, f64 for sums) and
    /// input sums (f64), folded on the device: read back once, after the last pass, so the
    /// host prepares the next pass while the device still runs this one (no sync per pass).
    device_values: Option<Tensor>,
    device_sums: Option<Tensor>,
    tokens: usize,
    profile: bool,
    phase_seconds: [f64; 3],
}

impl Accumulator {
    /// With profiling on: waits for the device, then books the time since `*mark` to `phase`.
    fn lap(
        &mut self,
        device: &candle_core::Device,
        phase: usize,
        mark: &mut Instant,
    ) -> Result<()> {
        if self.profile {
            device.synchronize()?;
            self.phase_seconds[phase] += mark.elapsed().as_secs_f64();
            *mark = Instant::now();
        }
        Ok(())
    }

    /// Folds one pass's aggregates [n_values] (f32) and input sums [n_inputs] (f64) into the
    /// device totals.
    fn fold(&mut self, aggs: Tensor, sums: Tensor) -> Result<()> {
        self.device_values = Some(match (self.device_values.take(), self.agg) {
            (None, Aggregate::Max) => aggs,
            (None, _) => aggs.to_dtype(DType::F64)?,
            (Some(v), Aggregate::Max) => v.maximum(&aggs)?,
            (Some(v), _) => (v + aggs.to_dtype(DType::F64)?)?,
        });
        self.device_sums = Some(match self.device_sums.take() {
            None => sums,
            Some(s) => (s + sums)?,
        });
        Ok(())
    }

    /// Reads the device totals into `values` and `input_sums`.
    fn finish(&mut self) -> Result<()> {
        if let Some(v) = self.device_values.take() {
            let mut all = v.to_dtype(DType::F64)?.to_vec1::<f64>()?.into_iter();
            for v in self.values.iter_mut().flatten().flatten() {
                *v = all.next().expect("one aggregate per singular value");
            }
        }
        if let Some(s) = self.device_sums.take() {
            let mut all = s.to_vec1::<f64>()?.into_iter();
            for s in self.input_sums.iter_mut().flatten() {
                *s = all.next().expect("one input sum per input dimension");
            }
        }
        Ok(())
    }
}

pub fn sweep(
    model: &Transformer,
    tok: &Tokenizer,
    examples: &[Example],
    svds: &[SiteSvd],
    settings: &SweepSettings,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Scores> {
    let seqs = examples
        .iter()
        .map(|e| encode_example(tok, e))
        .collect::<Result<Vec<_>>>()?;
    sweep_sequences(model, &seqs, svds, settings, progress)
}

/// [`sweep`] over already tokenized examples.
pub fn sweep_sequences(
    model: &Transformer,
    examples: &[Sequence],
    svds: &[SiteSvd],
    settings: &SweepSettings,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Scores> {
    let precision = Precision::on(model.device(), settings.precision);
    let cast;
    let model = if precision.dtype() == model.dtype() {
        model
    } else {
        cast = model.to_dtype(precision.dtype())?;
        &cast
    };
    let _tf32 = crate::device::Tf32::enable(model.device(), precision != Precision::F32);
    crate::grad_ops::install_gradient_sum();
    if settings.batch_size < 2 {
        return Err(EngineError::InvalidInput(
            "batch_size must be at least 2: the corrupted input is the previous example of the same batch, so with 1 every score is 0".into(),
        ));
    }
    let mut order: Vec<usize> = (0..examples.len()).collect();
    if settings.shuffle {
        order.shuffle(&mut StdRng::seed_from_u64(settings.seed));
    }
    let mut groups: Vec<&[usize]> = order
        .chunks(settings.batch_size)
        .filter(|c| c.len() >= 2)
        .collect();
    if let Some(n) = settings.scoring_batches {
        groups.truncate(n);
    }
    if groups.is_empty() {
        return Err(EngineError::InvalidInput(
            "the training split has fewer than 2 examples to score".into(),
        ));
    }
    let mut components: Vec<Component> = svds.iter().map(|s| s.component).collect();
    components.sort();
    components.dedup();
    let init = match settings.aggregate {
        Aggregate::Max => f64::NEG_INFINITY,
        _ => 0.0,
    };
    let mut acc = Accumulator {
        agg: settings.aggregate,
        values: svds
            .iter()
            .map(|s| s.heads.iter().map(|h| vec![init; h.rank()]).collect())
            .collect(),
        count: 0.0,
        input_sums: svds
            .iter()
            .map(|s| {
                vec![
                    0.0;
                    s.heads
                        .iter()
                        .map(|h| h.block.in_off + h.block.in_len)
                        .max()
                        .unwrap_or(0)
                ]
            })
            .collect(),
        device_values: None,
        device_sums: None,
        tokens: 0,
        profile: settings.profile,
        phase_seconds: [0.0; 3],
    };
    let plans = svds
        .iter()
        .map(|site| {
            let (lin, _) = crate::svd::site_map(model, site.layer, site.component);
            let (d_out, d_in) = lin.weight.dims2()?;
            SitePlan::new(site, d_in, d_out)
        })
        .collect::<Result<Vec<_>>>()?;
    let total = groups.len();
    let mut seen = 0;
    let mut done = 0;
    let budget = pass_tokens_on(model.device(), settings.pass_tokens);
    for pass in passes(&groups, examples, budget) {
        let seqs: Vec<Sequence> = pass
            .iter()
            .flat_map(|g| g.iter().map(|&i| examples[i].clone()))
            .collect();
        let sizes: Vec<usize> = pass.iter().map(|g| g.len()).collect();
        score_batch(
            model,
            &seqs,
            &sizes,
            svds,
            &plans,
            &components,
            settings.input,
            &mut acc,
        )?;
        seen += seqs.len();
        done += pass.len();
        if !progress(done, total) {
            return Err(EngineError::Cancelled);
        }
    }
    acc.finish()?;
    let scores = acc
        .values
        .iter()
        .map(|site| {
            site.iter()
                .map(|head| {
                    head.iter()
                        .map(|&v| match acc.agg {
                            Aggregate::Max => v as f32,
                            _ => (v / acc.count.max(1.0)) as f32,
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let input_means = acc
        .input_sums
        .iter()
        .map(|s| {
            s.iter()
                .map(|&v| (v / acc.tokens.max(1) as f64) as f32)
                .collect()
        })
        .collect();
    Ok(Scores {
        scores,
        input_means,
        examples: seen,
        tokens: acc.tokens,
        precision,
        pass_tokens: budget,
        phase_seconds: settings.profile.then_some(acc.phase_seconds),
    })
}

/// The sweep's passes: `groups` ordered by their longest sequence (stable, so equal lengths
/// keep the shuffle's order), consecutive ones sharing a pass while rows x longest row stays
/// within `budget` tokens; a group never splits.
fn passes<'g>(
    groups: &[&'g [usize]],
    examples: &[Sequence],
    budget: usize,
) -> Vec<Vec<&'g [usize]>> {
    // A row is the example but its last token (see `answer_loss`).
    let longest = |g: &[usize]| g.iter().map(|&i| examples[i].len() - 1).max().unwrap_or(0);
    let mut by_length = groups.to_vec();
    by_length.sort_by_key(|g| longest(g));
    let mut out: Vec<Vec<&[usize]>> = Vec::new();
    let mut rows = 0;
    for g in by_length {
        // Ascending lengths: the group joining a pass is its longest.
        let fits = (rows + g.len()) * longest(g) <= budget;
        match out.last_mut() {
            Some(pass) if fits => pass.push(g),
            _ => {
                out.push(vec![g]);
                rows = 0;
            }
        }
        rows += g.len();
    }
    out
}

/// The task loss of one batch, differentiable: the mean over examples of each one's mean
/// cross-entropy over its answer tokens (teacher-forced). The input is the prompt and the
/// answer but its last token, which predicts nothing (its gradient would be exactly zero, its
/// score 0 in every max, its input in every mean). Rows are left-padded, so "the same
/// position" means the same role across the batch.
pub fn answer_loss(
    model: &Transformer,
    seqs: &[Sequence],
    trace: &mut Trace,
) -> Result<(Tensor, Packed)> {
    answer_loss_grouped(model, seqs, &[seqs.len()], trace)
}

/// [`answer_loss`] of consecutive groups of `sizes` rows in one pass: the sum of each group's
/// loss as if it ran alone (a row's gradient is the one it has in its group's own pass).
fn answer_loss_grouped(
    model: &Transformer,
    seqs: &[Sequence],
    sizes: &[usize],
    trace: &mut Trace,
) -> Result<(Tensor, Packed)> {
    let device = model.device();
    let rows: Vec<Vec<u32>> = seqs.iter().map(Sequence::inputs).collect();
    let packed = pack(&rows, true, 0, device)?;
    let (b, t) = (rows.len(), packed.width);
    let hidden = model.forward(&packed.ids, &packed.valid, None, Some(trace))?;
    let refs: Vec<&Sequence> = seqs.iter().collect();
    let (positions, targets) = answer_targets(&refs, &packed);
    let group_size = sizes.iter().flat_map(|&n| std::iter::repeat_n(n, n));
    let weights: Vec<f32> = seqs
        .iter()
        .zip(group_size)
        .flat_map(|(s, n)| std::iter::repeat_n(1.0 / (n * s.answer.len()) as f32, s.answer.len()))
        .collect();
    let d = model.config.d_model;
    let picked = hidden
        .reshape((b * t, d))?
        .index_select(&Tensor::new(positions.as_slice(), device)?, 0)?;
    let logp =
        candle_nn::ops::log_softmax(&model.logits(&picked)?.to_dtype(DType::F32)?, D::Minus1)?;
    let lp = logp
        .gather(&Tensor::new(targets.as_slice(), device)?.unsqueeze(1)?, 1)?
        .squeeze(1)?;
    let loss = (lp * Tensor::new(weights.as_slice(), device)?)?
        .sum_all()?
        .neg()?;
    Ok((loss, packed))
}

/// One side of a site's heads stacked for batched products: either every head reads the
/// whole vector (one matmul with the factors side by side) or head h reads its own
/// consecutive slice (a batched matmul over heads).
struct Side {
    /// [heads, len, r]
    stacked: Tensor,
    /// [len, heads * r] when shared.
    side_by_side: Option<Tensor>,
}

impl Side {
    fn new(factors: Vec<Tensor>, blocks: &[(usize, usize)], width: usize) -> Result<Self> {
        let heads = factors.len();
        let len = blocks[0].1;
        let shared = blocks.iter().all(|&(off, l)| off == 0 && l == width);
        let tiled = width == heads * len
            && blocks
                .iter()
                .enumerate()
                .all(|(h, &(off, l))| off == h * len && l == len);
        if !shared && !tiled {
            return Err(EngineError::InvalidInput(
                "heads neither share nor tile their map's input and output".into(),
            ));
        }
        let stacked = Tensor::stack(&factors, 0)?;
        let r = stacked.dim(2)?;
        let side_by_side = shared
            .then(|| stacked.transpose(0, 1)?.reshape((len, heads * r)))
            .transpose()?;
        Ok(Self {
            stacked,
            side_by_side,
        })
    }

    /// x [n, width] -> [n, heads * r]: each head's slice (or all of x) times its factor.
    fn project(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(m) = &self.side_by_side {
            return Ok(x.matmul(m)?);
        }
        let (heads, len, r) = self.stacked.dims3()?;
        let n = x.dim(0)?;
        // [n, heads, len] -> [heads, n, len], times each head's factor, and back.
        let swap = crate::grad_ops::swap_axes12;
        let per_head = swap(&x.reshape((1, n, heads, len))?)?.reshape((heads, n, len))?;
        let y = per_head.matmul(&self.stacked)?.unsqueeze(0)?;
        Ok(swap(&y)?.reshape((n, heads * r))?)
    }
}

/// A site's SVD factors arranged for scoring every head in a few kernels.
struct SitePlan {
    inputs: Side,
    outputs: Side,
    /// [heads * r]
    s: Tensor,
}

impl SitePlan {
    fn new(site: &SiteSvd, d_in: usize, d_out: usize) -> Result<Self> {
        let ins: Vec<_> = site
            .heads
            .iter()
            .map(|h| (h.block.in_off, h.block.in_len))
            .collect();
        let outs: Vec<_> = site
            .heads
            .iter()
            .map(|h| (h.block.out_off, h.block.out_len))
            .collect();
        let us = site.heads.iter().map(|h| h.u.clone()).collect();
        let vs = site
            .heads
            .iter()
            .map(|h| h.vh.t())
            .collect::<candle_core::Result<_>>()?;
        let s = Tensor::cat(
            &site.heads.iter().map(|h| h.s.clone()).collect::<Vec<_>>(),
            0,
        )?;
        Ok(Self {
            inputs: Side::new(us, &ins, d_in)?,
            outputs: Side::new(vs, &outs, d_out)?,
            s,
        })
    }

    fn project_in(&self, dx: &Tensor) -> Result<Tensor> {
        self.inputs.project(dx)
    }

    fn project_out(&self, g: &Tensor) -> Result<Tensor> {
        self.outputs.project(g)
    }
}

/// One pass: `seqs` are consecutive groups of `sizes` rows, each row corrupted by the
/// previous row of its own group (cyclically).
#[allow(clippy::too_many_arguments)]
fn score_batch(
    model: &Transformer,
    seqs: &[Sequence],
    sizes: &[usize],
    svds: &[SiteSvd],
    plans: &[SitePlan],
    components: &[Component],
    input: InputMode,
    acc: &mut Accumulator,
) -> Result<()> {
    let device = model.device();
    let mut mark = Instant::now();
    let mut trace = Trace::new(components);
    let (loss, packed) = answer_loss_grouped(model, seqs, sizes, &mut trace)?;
    let (b, t) = (seqs.len(), packed.width);
    acc.lap(device, 0, &mut mark)?;
    let grads = trace.backward(&loss)?;
    acc.lap(device, 1, &mut mark)?;

    // Each row's corrupting row: the previous one of its group, the first taking the last.
    let mut previous = Vec::with_capacity(b);
    let mut first = 0;
    for &n in sizes {
        previous.extend((0..n).map(|k| first + (k + n - 1) % n));
        first += n;
    }
    // The scored positions (flat b*t indices): this row and its corrupting row both have a
    // real token there; `there` is the corrupting row's same position.
    let (mut here, mut there, mut real) = (Vec::new(), Vec::new(), Vec::new());
    for (row, valid) in packed.valid.iter().enumerate() {
        for (pos, &ok) in valid.iter().enumerate() {
            if !ok {
                continue;
            }
            real.push((row * t + pos) as u32);
            if packed.valid[previous[row]][pos] {
                here.push((row * t + pos) as u32);
                there.push((previous[row] * t + pos) as u32);
            }
        }
    }
    if here.is_empty() {
        return Err(EngineError::InvalidInput(
            "a sweep pass has no position where an example and its corruption both have a token"
                .into(),
        ));
    }
    acc.count += here.len() as f64;
    acc.tokens += real.len();
    let here = Tensor::new(here.as_slice(), device)?;
    let there = Tensor::new(there.as_slice(), device)?;
    let real = Tensor::new(real.as_slice(), device)?;

    // Per-head aggregates and per-site input sums stay on the device, folded into the sweep's
    // totals ([`Accumulator::fold`]): no copy to the host (a sync on a GPU) per head or pass.
    let mut head_aggs: Vec<Tensor> = Vec::new();
    let mut input_sums: Vec<Tensor> = Vec::new();
    for (site, plan) in svds.iter().zip(plans) {
        let rec = trace
            .get(site.layer, site.component)
            .ok_or_else(|| EngineError::InvalidInput("trace lacks a site".into()))?;
        let g = trace
            .output_grad(&grads, site.layer, site.component)
            .ok_or_else(|| EngineError::InvalidInput("no gradient at a traced site".into()))?;
        // Scores are f32 whatever dtype the forward ran in.
        let g = gather_f32(&g.reshape((b * t, g.dim(D::Minus1)?))?, &here)?;
        // `means`: the rows the bias mean sums (a folded site's normalised residual, else the
        // map's input); `inputs`: the rows whose corrupted differences are projected.
        let (means, inputs) = match (&rec.resid_pre, site.folded) {
            (Some(r), true) => {
                let norm = RowNorm::Normalised(model.config.norm, model.config.norm_eps);
                let raw = matches!(input, InputMode::ResidPre)
                    .then(|| Rows::new(r, RowNorm::Plain))
                    .transpose()?;
                (Rows::new(r, norm)?, raw)
            }
            _ => (Rows::new(&rec.input, RowNorm::Plain)?, None),
        };
        let dx = inputs.as_ref().unwrap_or(&means).diff(&there, &here)?;
        // Every head of the site at once: [n, heads * r] products; the singular values (>= 0)
        // scale each column after the max or the sum, which leaves the max exact.
        let a = plan.project_in(&dx)?;
        let gv = plan.project_out(&g)?;
        head_aggs.push((product_aggregate(&a, &gv, acc.agg)? * &plan.s)?);
        input_sums.push(means.sum(&real)?);
    }
    acc.fold(
        Tensor::cat(&head_aggs, 0)?.to_dtype(DType::F32)?,
        Tensor::cat(&input_sums, 0)?.to_dtype(DType::F64)?,
    )?;
    acc.lap(device, 2, &mut mark)?;
    Ok(())
}

/// The norm without its affine part: LayerNorm's (x - mean)/std, RMSNorm's x/rms (the fused
/// kernels with a unit scale: one kernel, not a composite of six).
pub fn normalise(x: &Tensor, kind: NormKind, eps: f64) -> candle_core::Result<Tensor> {
    let ones = Tensor::ones(x.dim(D::Minus1)?, x.dtype(), x.device())?;
    let x = x.contiguous()?;
    match kind {
        NormKind::LayerNorm => {
            candle_nn::ops::layer_norm(&x, &ones, &ones.zeros_like()?, eps as f32)
        }
        NormKind::RmsNorm => candle_nn::ops::rms_norm(&x, &ones, eps as f32),
    }
}
