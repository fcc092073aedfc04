//! Optional full fine-tuning before pruning (the paper's "finetuned GPT-2" row): AdamW on the
//! task loss the sweep scores (mean cross-entropy over answer tokens, teacher-forced), every
//! parameter trained in the model's own dtype, seeded shuffle each epoch.

use candle_core::Var;
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use tokenizers::Tokenizer;

use crate::attribution::answer_loss;
use crate::batch::{encode_example, Sequence};
use crate::tasks::Example;
use crate::trace::Trace;
use crate::transformer::Transformer;
use crate::{EngineError, Result};

/// Most fine-tuning epochs a job may ask for.
pub const MAX_EPOCHS: usize = 100;

#[derive(Clone, Debug, PartialEq)]
pub struct FinetuneSettings {
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    /// AdamW's decoupled weight decay (PyTorch's default 0.01).
    pub weight_decay: f64,
}

impl FinetuneSettings {
    pub fn new(epochs: usize, lr: f64) -> Self {
        Self {
            epochs,
            lr,
            batch_size: 8,
            weight_decay: 0.01,
        }
    }

    /// Checks every setting (epochs are bounded: one job must not hold a worker for days).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(EngineError::InvalidInput(m.into()));
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return bad(&format!("finetune.epochs must be in 1..={MAX_EPOCHS}"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr < 1.0) {
            return bad("finetune.lr must be in (0, 1)");
        }
        if self.batch_size == 0 {
            return bad("finetune.batch_size must be at least 1");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("finetune.weight_decay must be >= 0");
        }
        Ok(())
    }
}

/// What fine-tuning did: mean training loss per epoch.
#[derive(Clone, Debug)]
pub struct FinetuneReport {
    pub epoch_losses: Vec<f64>,
}

/// A fine-tuned copy of `base` (which is left untouched). `progress(done, total)` counts
/// optimiser steps; returning false cancels.
pub fn finetune(
    base: &Transformer,
    tok: &Tokenizer,
    train: &[Example],
    settings: &FinetuneSettings,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<(Transformer, FinetuneReport)> {
    settings.validate()?;
    if train.is_empty() {
        return Err(EngineError::InvalidInput(
            "nothing to fine-tune on: the training split is empty".into(),
        ));
    }
    let seqs: Vec<Sequence> = train
        .iter()
        .map(|e| encode_example(tok, e))
        .collect::<Result<_>>()?;
    let mut model = base.clone();
    let mut vars = Vec::new();
    model.weights.map_parameters(|_, t| {
        // Var::from_tensor copies: training never writes into the base model's storage.
        let v = Var::from_tensor(t)?;
        let trained = v.as_tensor().clone();
        vars.push(v);
        Ok(trained)
    })?;
    let params = ParamsAdamW {
        lr: settings.lr,
        weight_decay: settings.weight_decay,
        ..Default::default()
    };
    let mut opt = AdamW::new(vars, params)?;
    let mut rng = StdRng::seed_from_u64(seed ^ 0xf1e7_0000);
    let per_epoch = seqs.len().div_ceil(settings.batch_size);
    let total = settings.epochs * per_epoch;
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    let mut epoch_losses = Vec::new();
    for epoch in 0..settings.epochs {
        order.shuffle(&mut rng);
        let mut sum = 0.0;
        for (i, chunk) in order.chunks(settings.batch_size).enumerate() {
            let batch: Vec<Sequence> = chunk.iter().map(|&k| seqs[k].clone()).collect();
            let (loss, _) = answer_loss(&model, &batch, &mut Trace::new(&[]))?;
            opt.backward_step(&loss)?;
            let loss = loss.to_scalar::<f32>()? as f64;
            if !loss.is_finite() {
                return Err(EngineError::InvalidInput(format!(
                    "fine-tuning diverged (loss {loss} in epoch {}); lower finetune.lr",
                    epoch + 1
                )));
            }
            sum += loss;
            if !progress(epoch * per_epoch + i + 1, total) {
                return Err(EngineError::Cancelled);
            }
        }
        epoch_losses.push(sum / per_epoch as f64);
    }
    drop(opt);
    model.weights.map_parameters(|_, t| Ok(t.detach()))?;
    Ok((model, FinetuneReport { epoch_losses }))
}
