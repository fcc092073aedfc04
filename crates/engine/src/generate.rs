//! The sampling loop: prefill, then one token at a time with a KV cache.

use std::collections::HashMap;

use candle_core::{DType, Tensor, D};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::fixed_decode::FixedDecoder;
use crate::transformer::{KvCache, Transformer};
use crate::Result;

#[derive(Clone, Debug)]
pub struct SamplingParams {
    pub max_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    /// Token ids that end generation (not part of the text).
    pub stop_tokens: Vec<u32>,
    /// Added to a token's logit before choosing (OpenAI's `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
    /// Subtracted once from the logit of every token generated so far (OpenAI's definition).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated so far.
    pub frequency_penalty: f32,
    /// Report each chosen token's log-probability and this many alternatives (batcher only).
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: 16,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_tokens: Vec::new(),
            logit_bias: Vec::new(),
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Whether the next token is the argmax of the raw logits (greedy, no bias, no penalty).
    pub fn plain_greedy(&self) -> bool {
        self.temperature <= 0.0
            && self.logit_bias.is_empty()
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
    }
}

#[derive(Clone, Debug, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

/// Generates a continuation of `prompt`, calling `on_token` for each new token as it is chosen
/// (return false to stop early). Returns the new tokens and timings.
pub fn generate(
    model: &Transformer,
    prompt: &[u32],
    params: &SamplingParams,
    on_token: impl FnMut(u32) -> bool,
) -> Result<(Vec<u32>, GenerationStats)> {
    let graphs = crate::fixed_decode::graphs_enabled(model.device());
    generate_with(model, prompt, params, graphs, on_token)
}

/// [`generate`], choosing whether on a GPU the steps after the prefill replay CUDA graphs over
/// a fixed cache (`graphs`, a CUDA build only) or run eagerly over a growing cache. On the CPU
/// they run over a fixed cache whenever its attention op serves (f32).
pub fn generate_with(
    model: &Transformer,
    prompt: &[u32],
    params: &SamplingParams,
    graphs: bool,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<(Vec<u32>, GenerationStats)> {
    if prompt.is_empty() {
        return Err(crate::EngineError::InvalidInput(
            "the prompt is empty".into(),
        ));
    }
    let mut rng = StdRng::seed_from_u64(params.seed);
    let mut cache = KvCache::default();
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    // The steps after the prefill run over a fixed cache: on a GPU as replayed CUDA graphs
    // (unless `graphs` is off), on the CPU eagerly (its attention one op, no cache growing by
    // concatenation). Made after the first token (not part of its latency), from the prefill's
    // cache.
    let mut fixed: Option<FixedDecoder> = None;
    let capacity = fixed_capacity(model, prompt.len() + params.max_tokens);
    let fixed_steps = crate::fixed_decode::fixed_steps(model, graphs);
    let mut out = Vec::new();
    let start = std::time::Instant::now();
    let mut input = prompt.to_vec();
    let mut counts = HashMap::new();
    for step in 0..params.max_tokens {
        if step == 1 && fixed_steps {
            let mut decoder = FixedDecoder::with_graphs(model, 1, capacity, graphs)?;
            decoder.load_row(0, &std::mem::take(&mut cache))?;
            fixed = Some(decoder);
        }
        let next = match fixed.as_mut() {
            Some(decoder) => {
                decoder.step(model, &input)?;
                match params.plain_greedy() {
                    true => decoder.greedy()?[0],
                    false => sample(&decoder.logits().flatten_all()?, params, &counts, &mut rng)?,
                }
            }
            _ => {
                let ids = Tensor::new(input.as_slice(), model.device())?.unsqueeze(0)?;
                let valid = vec![vec![true; input.len()]];
                let hidden = model.forward(&ids, &valid, Some(&mut cache), None)?;
                let last = hidden.narrow(1, input.len() - 1, 1)?;
                let logits = match step {
                    0 => model.logits(&last)?,
                    _ => model.decoding_logits(&last)?,
                };
                let logits = logits.flatten_all()?.to_dtype(DType::F32)?;
                sample(&logits, params, &counts, &mut rng)?
            }
        };
        *counts.entry(next).or_insert(0) += 1;
        if step == 0 {
            stats.prefill_seconds = start.elapsed().as_secs_f64();
        }
        if params.stop_tokens.contains(&next) {
            break;
        }
        out.push(next);
        if !on_token(next) {
            break;
        }
        input = vec![next];
    }
    stats.generated_tokens = out.len();
    stats.decode_seconds = start.elapsed().as_secs_f64() - stats.prefill_seconds;
    Ok((out, stats))
}

/// A fixed cache's capacity for sequences of up to `positions` positions: a multiple of 64,
/// within the model's positions.
fn fixed_capacity(model: &Transformer, positions: usize) -> usize {
    positions
        .div_ceil(64)
        .saturating_mul(64)
        .min(model.config.max_positions)
}

/// Times each token was generated so far (for the presence and frequency penalties).
pub type TokenCounts = HashMap<u32, u32>;

/// `logits` (one row, f32) with `logit_bias` and the penalties applied; the same tensor when
/// none is set.
fn adjusted(logits: &Tensor, params: &SamplingParams, counts: &TokenCounts) -> Result<Tensor> {
    let penalised =
        (params.presence_penalty != 0.0 || params.frequency_penalty != 0.0) && !counts.is_empty();
    if params.logit_bias.is_empty() && !penalised {
        return Ok(logits.clone());
    }
    let mut v: Vec<f32> = logits.to_vec1()?;
    for &(t, b) in &params.logit_bias {
        if let Some(x) = v.get_mut(t as usize) {
            *x += b;
        }
    }
    if penalised {
        for (&t, &c) in counts {
            if let Some(x) = v.get_mut(t as usize) {
                *x -= params.frequency_penalty * c as f32 + params.presence_penalty;
            }
        }
    }
    Ok(Tensor::new(v, logits.device())?)
}

/// Greedy when temperature is 0; else temperature + nucleus (top-p) sampling; after
/// `logit_bias` and the penalties over `counts`.
pub fn sample(
    logits: &Tensor,
    params: &SamplingParams,
    counts: &TokenCounts,
    rng: &mut StdRng,
) -> Result<u32> {
    let logits = &adjusted(logits, params, counts)?;
    if params.temperature <= 0.0 {
        return Ok(logits.argmax(D::Minus1)?.to_scalar::<u32>()?);
    }
    let probs = candle_nn::ops::softmax_last_dim(&(logits / params.temperature)?)?;
    let probs: Vec<f32> = probs.to_vec1()?;
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let mut kept = Vec::new();
    let mut mass = 0.0f64;
    for &i in &order {
        kept.push(i);
        mass += probs[i] as f64;
        if mass >= params.top_p {
            break;
        }
    }
    let mut r = rng.random::<f64>() * mass;
    for &i in &kept {
        r -= probs[i] as f64;
        if r <= 0.0 {
            return Ok(i as u32);
        }
    }
    Ok(*kept.last().expect("at least one token kept") as u32)
}

/// For every token after the first: its log-probability given the tokens before it, and the
/// `top` most likely tokens there with theirs (teacher-forced, one forward pass).
pub type TokenLogprob = (f32, Vec<(u32, f32)>);

pub fn sequence_logprobs(
    model: &Transformer,
    ids: &[u32],
    top: usize,
) -> Result<Vec<TokenLogprob>> {
    if ids.len() < 2 {
        return Ok(Vec::new());
    }
    let input = Tensor::new(ids, model.device())?.unsqueeze(0)?;
    let hidden = model.forward(&input, &[vec![true; ids.len()]], None, None)?;
    let hidden = hidden.squeeze(0)?.narrow(0, 0, ids.len() - 1)?;
    next_token_logprobs(model, &hidden, &ids[1..], top)
}

/// For hidden states `hidden` [n, d] and the tokens that followed them, each token's
/// log-probability and the `top` alternatives.
pub(crate) fn next_token_logprobs(
    model: &Transformer,
    hidden: &Tensor,
    next: &[u32],
    top: usize,
) -> Result<Vec<TokenLogprob>> {
    let logits = model.logits(hidden)?;
    if top == 0 {
        // No alternatives asked for: the logits stay on the device, one pass over them.
        let stats = crate::row_stats::row_stats(&logits)?;
        let rows: Vec<u32> = (0..next.len() as u32).collect();
        let picked = crate::row_stats::pick(&logits, &rows, next)?;
        return Ok(picked
            .iter()
            .zip(&stats.lse)
            .map(|(&l, &lse)| (l - lse, Vec::new()))
            .collect());
    }
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let rows: Vec<Vec<f32>> = logp.to_vec2()?;
    Ok(rows
        .iter()
        .zip(next)
        .map(|(row, &next)| (row[next as usize], top_k(row, top)))
        .collect())
}

/// The log-probability of `token` under `logits` (one row, raw: before temperature, bias and
/// penalties) and the `top` most likely tokens with theirs.
pub fn token_logprob(logits: &Tensor, token: u32, top: usize) -> Result<TokenLogprob> {
    let logp: Vec<f32> = candle_nn::ops::log_softmax(logits, D::Minus1)?.to_vec1()?;
    Ok((logp[token as usize], top_k(&logp, top)))
}

/// The `top` largest entries of `row`, largest first, as (index, value).
fn top_k(row: &[f32], top: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top == 0 {
        return best;
    }
    for (i, &lp) in row.iter().enumerate() {
        if best.len() < top || best.last().is_some_and(|b| lp > b.1) {
            let at = best.partition_point(|b| b.1 >= lp);
            best.insert(at, (i as u32, lp));
            best.truncate(top);
        }
    }
    best
}
