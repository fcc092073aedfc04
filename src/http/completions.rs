//! POST /v1/completions, OpenAI-shaped: a base model or a variant continues a prompt.

use std::sync::Arc;

use axum::extract::State;
use eigenprune_engine::generate::{generate, sequence_logprobs, SamplingParams};
use eigenprune_engine::LoadedModel;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult, Json};
use crate::app::{AppState, Metrics};

const MAX_PROMPT_TOKENS: usize = 4096;
const MAX_NEW_TOKENS: usize = 2048;

#[derive(Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default = "one")]
    pub temperature: f64,
    #[serde(default = "one")]
    pub top_p: f64,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    #[serde(default = "one_usize")]
    pub n: usize,
    #[serde(default)]
    pub stream: bool,
    pub logprobs: Option<u32>,
    #[serde(default)]
    pub echo: bool,
    pub user: Option<String>,
}

fn default_max_tokens() -> usize {
    16
}
fn one() -> f64 {
    1.0
}
fn one_usize() -> usize {
    1
}

/// A base model or variant, resident (loaded on first use).
pub async fn resolve_model(state: &AppState, id: &str) -> ApiResult<Arc<LoadedModel>> {
    let host = state.host.clone();
    if state.base_models.iter().any(|m| m == id) {
        let id = id.to_string();
        return tokio::task::spawn_blocking(move || host.base(&id))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal);
    }
    let Some(v) = state.db.variant(id).await? else {
        return Err(ApiError::not_found(
            "model_not_found",
            format!("no model `{id}`"),
        ));
    };
    let bytes = state
        .storage
        .get(&v.object_key)
        .await
        .map_err(ApiError::internal)?;
    tokio::task::spawn_blocking(move || host.variant(&v.id, &v.parent, &bytes))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

pub async fn create(
    State(state): State<AppState>,
    Json(req): Json<CompletionRequest>,
) -> ApiResult<Json<Value>> {
    if req.stream {
        return Err(ApiError::invalid(
            "stream_unsupported",
            "stream = true is not supported yet",
        ));
    }
    if req.logprobs.is_some_and(|k| k > 20) {
        return Err(ApiError::invalid(
            "invalid_logprobs",
            "logprobs is at most 20",
        ));
    }
    if req.max_tokens > MAX_NEW_TOKENS {
        return Err(ApiError::invalid(
            "max_tokens_too_large",
            format!("max_tokens is at most {MAX_NEW_TOKENS}"),
        ));
    }
    if !(1..=8).contains(&req.n) {
        return Err(ApiError::invalid("invalid_n", "n must be in 1..=8"));
    }
    if !(0.0..=2.0).contains(&req.temperature)
        || !(0.0..=1.0).contains(&req.top_p)
        || req.top_p == 0.0
    {
        return Err(ApiError::invalid(
            "invalid_sampling",
            "temperature in [0, 2], top_p in (0, 1]",
        ));
    }
    let model = resolve_model(&state, &req.model).await?;
    let tok = &model.tokenizer;
    let prompts: Vec<Vec<u32>> = match &req.prompt {
        Prompt::Text(t) => vec![encode(tok, t)?],
        Prompt::Texts(ts) => ts
            .iter()
            .map(|t| encode(tok, t))
            .collect::<ApiResult<_>>()?,
        Prompt::Tokens(ids) => vec![ids.clone()],
        Prompt::TokenLists(l) => l.clone(),
    };
    let vocab = model.model.config.vocab_size as u32;
    for p in &prompts {
        if p.is_empty() {
            return Err(ApiError::invalid("empty_prompt", "the prompt is empty"));
        }
        if p.len() + req.max_tokens > MAX_PROMPT_TOKENS.min(model.model.config.max_positions) {
            return Err(ApiError::invalid(
                "prompt_too_long",
                format!(
                    "prompt ({} tokens) + max_tokens exceeds the context",
                    p.len()
                ),
            ));
        }
        if p.iter().any(|&t| t >= vocab) {
            return Err(ApiError::invalid(
                "invalid_token",
                format!("token ids must be below {vocab}"),
            ));
        }
    }
    let stops: Vec<String> = match req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    let params = SamplingParams {
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed.unwrap_or(0),
        stop_tokens: model.model.config.eos_token_ids.clone(),
    };
    let opts = Options {
        n: req.n,
        echo: req.echo,
        logprobs: req.logprobs,
    };
    let (choices, usage) =
        tokio::task::spawn_blocking(move || run(&model, &prompts, &params, &stops, &opts))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
    Metrics::add(&state.metrics.tokens_generated, usage.1 as u64);
    Ok(Json(json!({
        "id": format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
        "object": "text_completion",
        "created": crate::db::now(),
        "model": req.model,
        "choices": choices,
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1},
    })))
}

fn encode(tok: &eigenprune_engine::tokenizers::Tokenizer, text: &str) -> ApiResult<Vec<u32>> {
    tok.encode(text, true)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| ApiError::invalid("invalid_prompt", e.to_string()))
}

struct Options {
    n: usize,
    echo: bool,
    logprobs: Option<u32>,
}

/// OpenAI's logprobs object for `ids[from..]`, scored in context of `ids[..from]`.
fn logprobs_json(model: &LoadedModel, ids: &[u32], from: usize, top: u32) -> anyhow::Result<Value> {
    let scored = sequence_logprobs(&model.model, ids, top as usize)?;
    let piece = |id: u32| model.tokenizer.decode(&[id], false).unwrap_or_default();
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    let mut offset = 0usize;
    for (i, &id) in ids.iter().enumerate().skip(from) {
        let text = piece(id);
        tokens.push(json!(text));
        offsets.push(json!(offset));
        offset += text.len();
        match i.checked_sub(1).map(|p| &scored[p]) {
            None => {
                lps.push(Value::Null);
                tops.push(Value::Null);
            }
            Some((lp, best)) => {
                lps.push(json!(lp));
                let m: serde_json::Map<String, Value> =
                    best.iter().map(|(t, l)| (piece(*t), json!(l))).collect();
                tops.push(Value::Object(m));
            }
        }
    }
    Ok(
        json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}),
    )
}

fn run(
    model: &LoadedModel,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    stops: &[String],
    opts: &Options,
) -> anyhow::Result<(Vec<Value>, (usize, usize))> {
    let n = opts.n;
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for prompt in prompts {
        prompt_tokens += prompt.len();
        for k in 0..n {
            let p = SamplingParams {
                seed: params.seed.wrapping_add(k as u64),
                ..params.clone()
            };
            let mut all = Vec::new();
            let mut stopped_text = None;
            let (ids, _) = if params.max_tokens == 0 {
                (Vec::new(), Default::default())
            } else {
                generate(&model.model, prompt, &p, |id| {
                    all.push(id);
                    let text = model.tokenizer.decode(&all, true).unwrap_or_default();
                    match stops.iter().filter_map(|s| text.find(s.as_str())).min() {
                        Some(cut) => {
                            stopped_text = Some(text[..cut].to_string());
                            false
                        }
                        None => true,
                    }
                })?
            };
            completion_tokens += ids.len();
            let (text, reason) = match stopped_text {
                Some(t) => (t, "stop"),
                None => {
                    let t = model
                        .tokenizer
                        .decode(&ids, true)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    (
                        t,
                        if ids.len() < params.max_tokens {
                            "stop"
                        } else {
                            "length"
                        },
                    )
                }
            };
            let all: Vec<u32> = prompt.iter().chain(&ids).copied().collect();
            let from = if opts.echo { 0 } else { prompt.len() };
            let logprobs = match opts.logprobs {
                Some(top) => logprobs_json(model, &all, from, top)?,
                None => Value::Null,
            };
            let text = if opts.echo {
                format!(
                    "{}{text}",
                    model
                        .tokenizer
                        .decode(prompt, false)
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                )
            } else {
                text
            };
            choices.push(json!({"text": text, "index": choices.len(), "logprobs": logprobs, "finish_reason": reason}));
        }
    }
    Ok((choices, (prompt_tokens, completion_tokens)))
}
