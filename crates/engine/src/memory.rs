//! What a pruning job will hold in accelerator memory, estimated before it starts, so a job
//! that cannot fit is refused or made to wait instead of failing half-way.

use candle_core::DType;
use serde::Serialize;

use crate::config::ModelConfig;
use crate::pipeline::PruneSettings;
use crate::svd::head_blocks_of;
use crate::transformer::Transformer;

/// Bytes by purpose; `total` is their sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JobMemory {
    /// The f32 copy the pruning math runs on (0 when the resident model is already f32).
    pub weights_f32: u64,
    /// The bf16 copy a bf16 sweep runs on (0 otherwise).
    pub weights_sweep: u64,
    /// U, S and Vh of every decomposed head, f32.
    pub svd: u64,
    /// The sweep's retained activations and their gradients for a pass of the longest
    /// example (`pass_tokens` of them, or one group of `batch_size`), and the evaluation's
    /// logits at `eval_batch_size` (its passes of up to `pass_tokens` hold a forward's
    /// activations only, and logits at the answer positions: less than a sweep pass).
    pub activations: u64,
    /// An edited copy of the decomposed maps for evaluation.
    pub edited_maps: u64,
    /// Fine-tuning first: the trained copy, its gradients and AdamW's two moments (f32), and
    /// the training step's activations at its batch size.
    pub finetune: u64,
    pub total: u64,
}

/// The job's own memory beyond the resident model, for sequences of up to `max_tokens`.
pub fn estimate(model: &Transformer, settings: &PruneSettings, max_tokens: usize) -> JobMemory {
    let c = &model.config;
    let f32b = DType::F32.size_in_bytes() as u64;
    let params = model.weights.bytes() / model.dtype().size_in_bytes() as u64;
    let weights_f32 = if model.dtype() == DType::F32 {
        0
    } else {
        params * f32b
    };
    let precision = crate::attribution::Precision::on(model.device(), settings.precision);
    let weights_sweep = if precision == crate::attribution::Precision::Bf16 {
        params * DType::BF16.size_in_bytes() as u64
    } else {
        0
    };
    let mut svd = 0u64;
    let mut edited_maps = 0u64;
    for &component in &settings.components {
        for b in head_blocks_of(c, component) {
            let r = b.in_len.min(b.out_len) as u64;
            svd += (b.in_len as u64 * r + r + r * b.out_len as u64) * f32b;
            edited_maps += (b.in_len * b.out_len) as u64 * f32b;
        }
    }
    let layers = c.n_layers as u64;
    let (svd, edited_maps) = (svd * layers, edited_maps * layers);
    let t = max_tokens.max(1) as u64;
    // A sweep pass holds whole groups up to pass_tokens: at most that many rows of t tokens.
    let budget = crate::attribution::pass_tokens_on(model.device(), settings.pass_tokens);
    let pass_rows = (budget as u64 / t).max(settings.batch_size as u64);
    let activations =
        sweep_activations(c, pass_rows, t).max(eval_logits(c, settings.eval_batch_size as u64, t));
    let params_f32 = params * f32b;
    let finetune = settings.finetune.as_ref().map_or(0, |ft| {
        4 * params_f32 + sweep_activations(c, ft.batch_size as u64, t)
    });
    let total = LIBRARY_WORKSPACE
        + weights_f32
        + weights_sweep
        + svd
        + activations
        + edited_maps
        + finetune;
    JobMemory {
        weights_f32,
        weights_sweep,
        svd,
        activations,
        edited_maps,
        finetune,
        total,
    }
}

/// cuBLAS and cuSOLVER handles and workspaces, and allocator slack.
const LIBRARY_WORKSPACE: u64 = 512 << 20;

/// Per token and layer, a traced forward keeps about 10 residual-width tensors, 4 MLP-width
/// ones and 3 attention-score rows (f32); the backward holds a gradient of each and candle's
/// gradient accumulation a temporary of each: 3 copies. Checked on an H200 against the
/// allocator's peak for SmolLM2 int-mult and rte jobs (BENCHMARKS.md): the estimate is above
/// the measured peak for both.
fn sweep_activations(c: &ModelConfig, batch: u64, t: u64) -> u64 {
    let per_token_layer = 10 * c.d_model as u64 + 4 * c.d_mlp as u64 + 3 * c.n_heads as u64 * t;
    let graph = 3 * 4 * per_token_layer * c.n_layers as u64 * batch * t;
    graph + eval_logits(c, batch, t)
}

/// Logits and their log-softmax over the vocabulary at every position (f32).
fn eval_logits(c: &ModelConfig, batch: u64, t: u64) -> u64 {
    2 * 4 * batch * t * c.vocab_size as u64
}

/// Pass sizes a GPU sweep may take when the job asks for none, largest first (larger passes
/// are faster: BENCHMARKS.md).
pub const GPU_PASS_CHOICES: [usize; 4] =
    [16_384, 8_192, 4_096, crate::attribution::GPU_PASS_TOKENS];

/// `settings` with the pass size the job will use, and its estimate. A pass asked for, or any
/// on the CPU, stays; otherwise the largest of [`GPU_PASS_CHOICES`] whose estimate takes at
/// most half of `room` (the memory free for jobs now: the other half stays for the lab's
/// other jobs), else the smallest (admission then says whether it can wait or must be
/// refused).
pub fn fit_pass(
    model: &Transformer,
    settings: &PruneSettings,
    max_tokens: usize,
    room: u64,
) -> (PruneSettings, JobMemory) {
    if settings.pass_tokens.is_some() || model.device().is_cpu() {
        return (settings.clone(), estimate(model, settings, max_tokens));
    }
    let with = |p| PruneSettings {
        pass_tokens: Some(p),
        ..settings.clone()
    };
    let mut last = None;
    for p in GPU_PASS_CHOICES {
        let s = with(p);
        let need = estimate(model, &s, max_tokens);
        if need.total <= room / 2 {
            return (s, need);
        }
        last = Some((s, need));
    }
    last.expect("at least one pass size")
}

/// [`fit_pass`] for a job on `task`.
pub fn fit_pass_for_task(
    model: &Transformer,
    tok: &tokenizers::Tokenizer,
    task: &crate::tasks::Task,
    settings: &PruneSettings,
    room: u64,
) -> crate::Result<(PruneSettings, JobMemory)> {
    let longest = longest_example(tok, task.train.iter().chain(&task.test))?;
    Ok(fit_pass(model, settings, longest, room))
}

/// Tokens of the longest example: its prompt with its answer or its longest choice.
pub fn longest_example<'a>(
    tok: &tokenizers::Tokenizer,
    examples: impl IntoIterator<Item = &'a crate::tasks::Example>,
) -> crate::Result<usize> {
    let mut longest = 0;
    for ex in examples {
        let mut ends = vec![ex.answer.clone()];
        ends.extend(ex.choices.iter().flatten().cloned());
        for end in ends {
            longest = longest.max(crate::batch::encode(tok, &ex.prompt, &end)?.len());
        }
    }
    Ok(longest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama() -> crate::LoadedModel {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/llama");
        crate::load_model(dir.to_str().unwrap(), &crate::LoadOptions::default()).unwrap()
    }

    #[test]
    fn grows_with_batch_and_length_and_counts_the_f32_copy() {
        let m = llama();
        let s = PruneSettings::default();
        let small = estimate(&m.model, &s, 16);
        assert_eq!(small.weights_f32, 0, "an f32 model needs no copy");
        assert!(small.svd > 0 && small.activations > 0 && small.edited_maps > 0);
        assert_eq!(
            small.total,
            LIBRARY_WORKSPACE
                + small.weights_f32
                + small.svd
                + small.activations
                + small.edited_maps
        );
        assert_eq!(small.finetune, 0, "no fine-tuning asked");
        let tuned = PruneSettings {
            finetune: Some(crate::finetune::FinetuneSettings::new(1, 1e-5)),
            ..s.clone()
        };
        let with_ft = estimate(&m.model, &tuned, 16);
        assert!(
            with_ft.finetune >= 4 * m.model.weights.bytes(),
            "copy, grads, two moments"
        );
        assert_eq!(with_ft.total, small.total + with_ft.finetune);
        let long = estimate(&m.model, &s, 64);
        assert!(long.activations > 3 * small.activations);
        let wide = PruneSettings {
            batch_size: 50,
            eval_batch_size: 50,
            ..s.clone()
        };
        assert!(estimate(&m.model, &wide, 16).activations > 5 * small.activations);
        let bf16 = m.model.to_dtype(DType::BF16).unwrap();
        assert_eq!(estimate(&bf16, &s, 16).weights_f32, m.model.weights.bytes());
    }

    #[test]
    fn a_cpu_job_keeps_its_pass_and_a_larger_pass_needs_more() {
        let m = llama();
        let s = PruneSettings::default();
        let (kept, need) = fit_pass(&m.model, &s, 64, 1 << 40);
        assert_eq!(kept.pass_tokens, None, "the CPU keeps one group per pass");
        assert_eq!(need, estimate(&m.model, &s, 64));
        let sized = |p| PruneSettings {
            pass_tokens: Some(p),
            ..s.clone()
        };
        let (small, big) = (
            estimate(&m.model, &sized(GPU_PASS_CHOICES[3]), 64),
            estimate(&m.model, &sized(GPU_PASS_CHOICES[0]), 64),
        );
        assert!(big.activations > 4 * small.activations);
    }
}
