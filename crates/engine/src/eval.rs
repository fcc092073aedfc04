//! Evaluation: the paper's metric (argmax over the whole vocabulary equals every answer token,
//! teacher-forced) and, for fixed-choice tasks, choice accuracy (highest log-likelihood among
//! the label words, as lm-evaluation-harness does).

use candle_core::Tensor;
use tokenizers::Tokenizer;

use std::collections::HashMap;
use std::sync::Arc;

use crate::batch::{answer_targets, encode, pack, Sequence};
use crate::edit::Edit;
use crate::row_edits::RowEdits;
use crate::row_stats::{row_stats, RowStats};
use crate::tasks::Example;
use crate::transformer::{KvCache, Transformer};
use crate::Result;

/// The forward pass of batches whose row i runs `variants[i % V]` (None: the model itself),
/// every variant's rows in the same pass; the rows' corrections are built once per batch
/// size.
struct Runner<'a> {
    /// The model's dense weights: scores never read quantised serving blocks.
    model: Transformer,
    variants: &'a [Option<Arc<Edit>>],
    edits: HashMap<usize, Option<RowEdits>>,
}

impl<'a> Runner<'a> {
    fn new(model: &'a Transformer, variants: &'a [Option<Arc<Edit>>]) -> Result<Self> {
        for e in variants.iter().flatten() {
            crate::batcher::check_variant(model, e)?;
        }
        Ok(Self {
            model: model.dense(),
            variants,
            edits: HashMap::new(),
        })
    }

    /// Rows per variant group (the batches' row counts are multiples of it).
    fn width(&self) -> usize {
        self.variants.len().max(1)
    }

    fn forward(
        &mut self,
        ids: &Tensor,
        valid: &[Vec<bool>],
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let rows = ids.dim(0)?;
        if !self.edits.contains_key(&rows) {
            let per_row: Vec<Option<&Arc<Edit>>> = (0..rows)
                .map(|i| self.variants[i % self.width()].as_ref())
                .collect();
            let previous = self.edits.values().flatten().next();
            let built = crate::batcher::row_edits(&self.model, &per_row, previous)?;
            self.edits.insert(rows, built);
        }
        match &self.edits[&rows] {
            Some(e) => self.model.forward_with_edits(ids, valid, cache, e),
            None => self.model.forward(ids, valid, cache, None),
        }
    }
}

/// How many rows one evaluation pass takes: `rows` examples (times the variants), and more
/// while the pass's padded tokens stay within `tokens` (0: exactly `rows`). A GPU takes
/// passes of thousands of tokens; the CPU gains nothing from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvalBatch {
    pub rows: usize,
    pub tokens: usize,
}

impl From<usize> for EvalBatch {
    fn from(rows: usize) -> Self {
        Self { rows, tokens: 0 }
    }
}

impl EvalBatch {
    /// Consecutive ranges over items of lengths `lens` (ascending), whole units of `unit`
    /// items each (an example's variant rows stay in one pass).
    fn passes(self, lens: &[usize], unit: usize) -> Vec<std::ops::Range<usize>> {
        let unit = unit.max(1);
        let mut out = Vec::new();
        let mut start = 0;
        while start < lens.len() {
            let mut end = (start + unit).min(lens.len());
            while end < lens.len() {
                let units = (end - start) / unit;
                let next = (end + unit).min(lens.len());
                let padded = (next - start) * lens[next - 1];
                if units >= self.rows.max(1) && (self.tokens == 0 || padded > self.tokens) {
                    break;
                }
                end = next;
            }
            out.push(start..end);
            start = end;
        }
        out
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalResult {
    /// Examples right by the paper's metric.
    pub correct: usize,
    /// Examples right by choice accuracy (fixed-choice tasks only).
    pub choice_correct: Option<usize>,
    pub total: usize,
    /// Per example, in order: right by the paper's metric (paired tests compare two runs).
    pub right: Vec<bool>,
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
#[derive(Clone, Copy, Debug, Default)]
struct Scored {
    logprob: f64,
    all_argmax: bool,
}

impl Scored {
    /// A continuation's score from its tokens': log-probabilities add, argmax must hold for all.
    fn sum(tokens: impl Iterator<Item = Scored>) -> Scored {
        tokens.fold(
            Scored {
                logprob: 0.0,
                all_argmax: true,
            },
            |acc, t| Scored {
                logprob: acc.logprob + t.logprob,
                all_argmax: acc.all_argmax && t.all_argmax,
            },
        )
    }
}

/// One scored (example, choice) sequence: the tokens and the log-likelihood of the answer
/// given the prompt (what choice accuracy compares; `eigenprune eval --scores` writes them).
#[derive(Clone, Debug)]
pub struct ChoiceScore {
    pub example: usize,
    /// None for a free-answer example (its gold answer is scored).
    pub choice: Option<usize>,
    pub prompt: Vec<u32>,
    pub answer: Vec<u32>,
    pub logprob: f64,
}

/// Every (example, choice) sequence of `examples` scored, in order.
pub fn choice_scores(
    model: &Transformer,
    tok: &Tokenizer,
    examples: &[Example],
    batch: impl Into<EvalBatch>,
) -> Result<Vec<ChoiceScore>> {
    let mut all = variant_choice_scores(model, tok, examples, batch, &[None])?;
    Ok(all.remove(0))
}

/// [`choice_scores`] under each of `variants` (None: the model itself), in one batched pass.
pub fn variant_choice_scores(
    model: &Transformer,
    tok: &Tokenizer,
    examples: &[Example],
    batch: impl Into<EvalBatch>,
    variants: &[Option<Arc<Edit>>],
) -> Result<Vec<Vec<ChoiceScore>>> {
    let mut runner = Runner::new(model, variants)?;
    let v = runner.width();
    let (seqs, scores) = score_all(&mut runner, tok, examples, batch.into(), &mut |_, _| true)?;
    let mut out = vec![Vec::new(); v];
    for ((key, choice, s), sc) in seqs.into_iter().zip(scores) {
        out[key % v].push(ChoiceScore {
            example: key / v,
            choice,
            prompt: s.prompt,
            answer: s.answer,
            logprob: sc.logprob,
        });
    }
    Ok(out)
}

type ScoredSeqs = (Vec<(usize, Option<usize>, Sequence)>, Vec<Scored>);

/// Every (example, choice) sequence scored under every variant of `runner`: entry
/// (e * V + v, choice, sequence) is example e under variant v, a variant's copies adjacent
/// so that a pass holds all the variants' rows of its examples.
fn score_all(
    runner: &mut Runner,
    tok: &Tokenizer,
    examples: &[Example],
    batch: EvalBatch,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<ScoredSeqs> {
    // One sequence per (example, choice); the gold continuation for free-answer tasks.
    let v = runner.width();
    let mut seqs: Vec<(usize, Option<usize>, Sequence)> = Vec::new();
    for (i, ex) in examples.iter().enumerate() {
        let own: Vec<(Option<usize>, Sequence)> = match &ex.choices {
            Some(choices) => choices
                .iter()
                .enumerate()
                .map(|(c, choice)| Ok((Some(c), encode(tok, &ex.prompt, choice)?)))
                .collect::<Result<_>>()?,
            None => vec![(None, encode(tok, &ex.prompt, &ex.answer)?)],
        };
        for k in 0..v {
            seqs.extend(own.iter().map(|(c, s)| (i * v + k, *c, s.clone())));
        }
    }
    let has_choices = examples.iter().all(|e| e.choices.is_some());
    let scores = if has_choices {
        score_choices(runner, &seqs, batch, progress)?
    } else {
        score_sequences(
            runner,
            &seqs.iter().map(|s| &s.2).collect::<Vec<_>>(),
            batch,
            progress,
        )?
    };
    Ok((seqs, scores))
}

pub fn evaluate(
    model: &Transformer,
    tok: &Tokenizer,
    examples: &[Example],
    batch: impl Into<EvalBatch>,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<EvalResult> {
    let mut all = evaluate_variants(model, tok, examples, batch, &[None], progress)?;
    Ok(all.remove(0))
}

/// [`evaluate`] of several variants of `model` (None: the model itself) in one batched pass
/// over `examples`: each pass holds its examples under every variant, their rows sharing the
/// base's kernels. One result per variant, in order.
pub fn evaluate_variants(
    model: &Transformer,
    tok: &Tokenizer,
    examples: &[Example],
    batch: impl Into<EvalBatch>,
    variants: &[Option<Arc<Edit>>],
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Vec<EvalResult>> {
    if variants.is_empty() {
        return Ok(Vec::new());
    }
    let mut runner = Runner::new(model, variants)?;
    let v = runner.width();
    let (seqs, scores) = score_all(&mut runner, tok, examples, batch.into(), progress)?;
    let has_choices = examples.iter().all(|e| e.choices.is_some());
    let mut results = vec![
        EvalResult {
            total: examples.len(),
            right: vec![false; examples.len()],
            ..Default::default()
        };
        v
    ];
    let mut best: Vec<Option<(f64, usize)>> = vec![None; examples.len() * v];
    for ((key, choice, _), sc) in seqs.iter().zip(&scores) {
        let ex = &examples[key / v];
        let gold = match (choice, ex.label) {
            (Some(c), Some(l)) => *c == l,
            _ => true,
        };
        if gold && sc.all_argmax {
            results[key % v].correct += 1;
            results[key % v].right[key / v] = true;
        }
        if let Some(c) = choice {
            if best[*key].is_none_or(|(lp, _)| sc.logprob > lp) {
                best[*key] = Some((sc.logprob, *c));
            }
        }
    }
    if has_choices {
        for (k, result) in results.iter_mut().enumerate() {
            let right = examples
                .iter()
                .enumerate()
                .filter(|(e, ex)| best[e * v + k].map(|(_, c)| c) == ex.label)
                .count();
            result.choice_correct = Some(right);
        }
    }
    Ok(results)
}

/// Fixed-choice examples: each prompt runs once, then every choice continues it from the
/// prompt's KV cache (cb's three label words cost one prompt, not three); a choice's last
/// token is only predicted, never fed, so one-token choices (rte's, copa's) need no
/// continuation and no cache at all. The scores equal [`score_sequences`]'s up to float
/// rounding. `seqs` lists (example, choice, sequence) with an example's choices together, as
/// [`evaluate`] builds it.
fn score_choices(
    runner: &mut Runner,
    seqs: &[(usize, Option<usize>, Sequence)],
    batch: EvalBatch,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Vec<Scored>> {
    // Per example: the indices of its sequences in `seqs`.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, (ex, _, _)) in seqs.iter().enumerate() {
        match groups.last_mut() {
            Some(g) if seqs[g[0]].0 == *ex => g.push(i),
            _ => groups.push(vec![i]),
        }
    }
    groups.sort_by_key(|g| seqs[g[0]].2.prompt.len());
    let lens: Vec<usize> = groups.iter().map(|g| seqs[g[0]].2.prompt.len()).collect();
    let mut out = vec![Scored::default(); seqs.len()];
    let model = &runner.model.clone();
    let device = model.device();
    let mut done = 0;
    for range in batch.passes(&lens, runner.width()) {
        let chunk = &groups[range];
        // The prompts, left-padded so that every row's last prompt token is the last column.
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|g| seqs[g[0]].2.prompt.clone()).collect();
        let packed = pack(&prompts, true, 0, device)?;
        let continues = chunk.iter().flatten().any(|&i| seqs[i].2.answer.len() > 1);
        let mut cache = KvCache::default();
        let hidden = runner.forward(&packed.ids, &packed.valid, continues.then_some(&mut cache))?;
        let last = hidden.narrow(1, packed.width - 1, 1)?.squeeze(1)?;
        let first = log_probs(model, &last)?;
        let most = chunk.iter().map(Vec::len).max().unwrap_or(0);
        for c in 0..most {
            // Choice c of every example that has one.
            let answers: Vec<Option<&Sequence>> = chunk
                .iter()
                .map(|g| g.get(c).map(|&i| &seqs[i].2))
                .collect();
            let rest = continuation(runner, &cache, &answers)?;
            let present: Vec<(usize, &Sequence)> = answers
                .iter()
                .enumerate()
                .filter_map(|(r, a)| a.map(|s| (r, s)))
                .collect();
            let heads = first.score(
                &present.iter().map(|(r, _)| *r as u32).collect::<Vec<_>>(),
                &present.iter().map(|(_, s)| s.answer[0]).collect::<Vec<_>>(),
            )?;
            let tails = match &rest {
                Some(lp) => {
                    let toks: Vec<u32> = present
                        .iter()
                        .flat_map(|(_, s)| s.answer[1..].iter().copied())
                        .collect();
                    let rows: Vec<u32> = (0..toks.len() as u32).collect();
                    lp.score(&rows, &toks)?
                }
                None => Vec::new(),
            };
            let mut tails = tails.into_iter();
            for ((r, s), head) in present.into_iter().zip(heads) {
                let later = tails.by_ref().take(s.answer.len() - 1);
                out[chunk[r][c]] = Scored::sum(std::iter::once(head).chain(later));
            }
        }
        done += chunk.iter().map(Vec::len).sum::<usize>();
        if !progress(done, seqs.len()) {
            return Err(crate::EngineError::Cancelled);
        }
    }
    Ok(out)
}

/// The log-probabilities that predict answer tokens 1.. of each present row, from a
/// continuation of the prompts' `cache` fed every answer token but the last (right-padded; a
/// one-token stand-in for absent rows, ignored); None when no answer has a second token.
fn continuation(
    runner: &mut Runner,
    cache: &KvCache,
    answers: &[Option<&Sequence>],
) -> Result<Option<LogProbs>> {
    let fed = |a: &Option<&Sequence>| a.map_or(0, |s| s.answer.len() - 1);
    if answers.iter().all(|a| fed(a) == 0) {
        return Ok(None);
    }
    let rows: Vec<Vec<u32>> = answers
        .iter()
        .map(|a| match (a, fed(a)) {
            (Some(s), n) if n > 0 => s.answer[..n].to_vec(),
            _ => vec![0],
        })
        .collect();
    let model = &runner.model.clone();
    let cont = pack(&rows, false, 0, model.device())?;
    let mut cc = cache.clone();
    let h = runner.forward(&cont.ids, &cont.valid, Some(&mut cc))?;
    let (b, t, d) = h.dims3()?;
    // Answer token j > 0 is predicted at continuation position j - 1.
    let positions: Vec<u32> = answers
        .iter()
        .enumerate()
        .flat_map(|(r, a)| (0..fed(a)).map(move |j| (r * t + j) as u32))
        .collect();
    let idx = Tensor::new(positions.as_slice(), model.device())?;
    Ok(Some(log_probs(
        model,
        &h.reshape((b * t, d))?.index_select(&idx, 0)?,
    )?))
}

/// The logits [N, vocab] of N hidden states (on the device) with each row's log-sum-exp and
/// argmax ([`crate::row_stats`]: no [N, vocab] log-probabilities are written).
struct LogProbs {
    logits: Tensor,
    stats: RowStats,
}

impl LogProbs {
    /// The score of `tokens[i]` at row `rows[i]`, gathered on the device in one call.
    fn score(&self, rows: &[u32], tokens: &[u32]) -> Result<Vec<Scored>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let picked = crate::row_stats::pick(&self.logits, rows, tokens)?;
        Ok(picked
            .iter()
            .zip(rows.iter().zip(tokens))
            .map(|(&logit, (&r, &tok))| Scored {
                logprob: (logit - self.stats.lse[r as usize]) as f64,
                all_argmax: self.stats.argmax[r as usize] == tok,
            })
            .collect())
    }
}

fn log_probs(model: &Transformer, hidden: &Tensor) -> Result<LogProbs> {
    let logits = model.logits(hidden)?;
    Ok(LogProbs {
        stats: row_stats(&logits)?,
        logits,
    })
}

/// Log-likelihood of each continuation and whether greedy decoding reproduces it (each row
/// fed its prompt and all but the last answer token).
fn score_sequences(
    runner: &mut Runner,
    seqs: &[&Sequence],
    batch: EvalBatch,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Vec<Scored>> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].len());
    let lens: Vec<usize> = order.iter().map(|&i| seqs[i].len() - 1).collect();
    let mut out = vec![Scored::default(); seqs.len()];
    let model = &runner.model.clone();
    let device = model.device();
    for range in batch.passes(&lens, runner.width()) {
        let done = range.end;
        let chunk = &order[range];
        let batch: Vec<&Sequence> = chunk.iter().map(|&i| seqs[i]).collect();
        let rows: Vec<Vec<u32>> = batch.iter().map(|s| s.inputs()).collect();
        let packed = pack(&rows, false, 0, device)?;
        let hidden = runner.forward(&packed.ids, &packed.valid, None)?;
        let (b, t, d) = hidden.dims3()?;
        let (positions, targets) = answer_targets(&batch, &packed);
        let picked = hidden
            .reshape((b * t, d))?
            .index_select(&Tensor::new(positions.as_slice(), device)?, 0)?;
        let at: Vec<u32> = (0..targets.len() as u32).collect();
        let mut tokens = log_probs(model, &picked)?.score(&at, &targets)?.into_iter();
        for (&i, s) in chunk.iter().zip(&batch) {
            out[i] = Scored::sum(tokens.by_ref().take(s.answer.len()));
        }
        if !progress(done, seqs.len()) {
            return Err(crate::EngineError::Cancelled);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{load_model, LoadOptions};

    /// Choice examples with prompts of different lengths (longer than the Mistral and Gemma
    /// test windows), multi-token choices, and two or three choices.
    fn examples() -> Vec<Example> {
        let ex = |prompt: &str, choices: &[&str], label: usize| Example {
            prompt: prompt.into(),
            answer: choices[label].into(),
            choices: Some(choices.iter().map(|c| c.to_string()).collect()),
            label: Some(label),
        };
        vec![
            ex(
                "The capital of France is",
                &[" Paris", " Rome", " a cat sat"],
                0,
            ),
            ex("12 x 7 =", &[" 84", " 19 x 19"], 1),
            ex(
                "Premise: the cat sat on the mat. Hypothesis: a cat sat.",
                &[" True", " False", " Neither"],
                2,
            ),
            ex("3 + 4", &[" = 7", " is 361."], 0),
            ex(
                "Does the premise entail the hypothesis?",
                &[" yes", " no"],
                1,
            ),
        ]
    }

    #[test]
    fn shared_prompt_scores_equal_separate_sequences() {
        for arch in ["llama", "gemma3", "mistral", "gpt2", "phi"] {
            let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures")
                .join(arch);
            let m = load_model(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
            let exs = examples();
            let mut seqs = Vec::new();
            for (i, ex) in exs.iter().enumerate() {
                for (c, choice) in ex.choices.as_ref().unwrap().iter().enumerate() {
                    seqs.push((
                        i,
                        Some(c),
                        encode(&m.tokenizer, &ex.prompt, choice).unwrap(),
                    ));
                }
            }
            let refs: Vec<&Sequence> = seqs.iter().map(|s| &s.2).collect();
            let mut runner = Runner::new(&m.model, &[None]).unwrap();
            let batches = [
                EvalBatch::from(1),
                2.into(),
                16.into(),
                EvalBatch {
                    rows: 1,
                    tokens: 64,
                },
            ];
            for bs in batches {
                let shared = score_choices(&mut runner, &seqs, bs, &mut |_, _| true).unwrap();
                let separate = score_sequences(&mut runner, &refs, bs, &mut |_, _| true).unwrap();
                for (a, b) in shared.iter().zip(&separate) {
                    assert!(
                        (a.logprob - b.logprob).abs() < 1e-4,
                        "{arch} {bs:?}: {a:?} {b:?}"
                    );
                    assert_eq!(a.all_argmax, b.all_argmax, "{arch} {bs:?}");
                }
            }
        }
    }

    #[test]
    fn passes_take_rows_then_fill_the_token_budget() {
        let passes =
            |rows, tokens, lens: &[usize], unit| EvalBatch { rows, tokens }.passes(lens, unit);
        let lens = [2, 2, 3, 5, 9];
        assert_eq!(passes(2, 0, &lens, 1), vec![0..2, 2..4, 4..5]);
        assert_eq!(passes(1, 12, &lens, 1), vec![0..3, 3..4, 4..5]);
        // The row floor holds even past the budget.
        assert_eq!(passes(3, 4, &lens, 1), vec![0..3, 3..5]);
        // Whole units (an example's variant rows) only.
        assert_eq!(passes(1, 8, &[1, 1, 2, 2, 3, 3], 2), vec![0..4, 4..6]);
        assert!(passes(4, 0, &[], 1).is_empty());
    }
}
