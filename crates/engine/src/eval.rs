//! Evaluation: the paper's metric (argmax over the whole vocabulary equals every answer token,
//! teacher-forced) and, for fixed-choice tasks, choice accuracy (highest log-likelihood among
//! the label words, as lm-evaluation-harness does).

use candle_core::{DType, Tensor, D};
use tokenizers::Tokenizer;

use crate::batch::{answer_targets, encode, pack, Sequence};
use crate::tasks::Example;
use crate::transformer::Transformer;
use crate::Result;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalResult {
    /// Examples right by the paper's metric.
    pub correct: usize,
    /// Examples right by choice accuracy (fixed-choice tasks only).
    pub choice_correct: Option<usize>,
    pub total: usize,
}

impl EvalResult {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
    pub fn choice_accuracy(&self) -> Option<f64> {
        self.choice_correct
            .map(|c| c as f64 / self.total.max(1) as f64)
    }
}

/// How one (prompt, continuation) scored.
#[derive(Clone, Copy, Debug)]
struct Scored {
    logprob: f64,
    all_argmax: bool,
}

pub fn evaluate(
    model: &Transformer,
    tok: &Tokenizer,
    examples: &[Example],
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<EvalResult> {
    // One sequence per (example, choice); the gold continuation for free-answer tasks.
    let mut seqs: Vec<(usize, Option<usize>, Sequence)> = Vec::new();
    for (i, ex) in examples.iter().enumerate() {
        match &ex.choices {
            Some(choices) => {
                for (c, choice) in choices.iter().enumerate() {
                    seqs.push((i, Some(c), encode(tok, &ex.prompt, choice)?));
                }
            }
            None => seqs.push((i, None, encode(tok, &ex.prompt, &ex.answer)?)),
        }
    }
    let scores = score_sequences(
        model,
        &seqs.iter().map(|s| &s.2).collect::<Vec<_>>(),
        batch_size,
        progress,
    )?;
    let mut result = EvalResult {
        total: examples.len(),
        ..Default::default()
    };
    let has_choices = examples.iter().all(|e| e.choices.is_some());
    let mut best: Vec<Option<(f64, usize)>> = vec![None; examples.len()];
    for ((ex_idx, choice, _), sc) in seqs.iter().zip(&scores) {
        let ex = &examples[*ex_idx];
        let gold = match (choice, ex.label) {
            (Some(c), Some(l)) => *c == l,
            _ => true,
        };
        if gold && sc.all_argmax {
            result.correct += 1;
        }
        if let Some(c) = choice {
            if best[*ex_idx].is_none_or(|(lp, _)| sc.logprob > lp) {
                best[*ex_idx] = Some((sc.logprob, *c));
            }
        }
    }
    if has_choices {
        let right = best
            .iter()
            .zip(examples)
            .filter(|(b, ex)| b.map(|(_, c)| c) == ex.label)
            .count();
        result.choice_correct = Some(right);
    }
    Ok(result)
}

/// Log-likelihood of each continuation and whether greedy decoding reproduces it.
fn score_sequences(
    model: &Transformer,
    seqs: &[&Sequence],
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Vec<Scored>> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].len());
    let mut out = vec![
        Scored {
            logprob: 0.0,
            all_argmax: false
        };
        seqs.len()
    ];
    let device = model.device();
    for (done, chunk) in order.chunks(batch_size.max(1)).enumerate() {
        let batch: Vec<&Sequence> = chunk.iter().map(|&i| seqs[i]).collect();
        let rows: Vec<Vec<u32>> = batch.iter().map(|s| s.tokens()).collect();
        let packed = pack(&rows, false, 0, device)?;
        let hidden = model.forward(&packed.ids, &packed.valid, None, None)?;
        let (b, t, d) = hidden.dims3()?;
        let (positions, targets) = answer_targets(&batch, &packed);
        let picked = hidden
            .reshape((b * t, d))?
            .index_select(&Tensor::new(positions.as_slice(), device)?, 0)?;
        let logits = model.logits(&picked)?.to_dtype(DType::F32)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let argmax: Vec<u32> = logp.argmax(D::Minus1)?.to_vec1()?;
        let target_t = Tensor::new(targets.as_slice(), device)?;
        let lp: Vec<f32> = logp
            .gather(&target_t.unsqueeze(1)?, 1)?
            .squeeze(1)?
            .to_vec1()?;
        let mut k = 0;
        for (&i, s) in chunk.iter().zip(&batch) {
            let n = s.answer.len();
            out[i] = Scored {
                logprob: lp[k..k + n].iter().map(|&x| x as f64).sum(),
                all_argmax: argmax[k..k + n] == targets[k..k + n],
            };
            k += n;
        }
        if !progress(((done + 1) * batch_size).min(seqs.len()), seqs.len()) {
            return Err(crate::EngineError::Cancelled);
        }
    }
    Ok(out)
}
