//! POST /v1/completions, OpenAI-shaped: a base model or a variant continues a prompt.

use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use eigenprune_engine::batcher::Batcher;
use eigenprune_engine::generate::SamplingParams;
use eigenprune_engine::LoadedModel;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::completion_run::{complete_one, run, submit_all, Options};
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
    pub stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
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
) -> ApiResult<Response> {
    if req.stream && (req.logprobs.is_some() || req.echo) {
        return Err(ApiError::invalid(
            "stream_logprobs_unsupported",
            "logprobs and echo are not available with stream = true",
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
    let id = format!("cmpl-{}", uuid::Uuid::new_v4().simple());
    let batcher = state.host.batcher(&req.model, &model);
    if req.stream {
        let usage = req.stream_options.is_some_and(|o| o.include_usage);
        let head = StreamHead {
            id,
            model: req.model,
            created: crate::db::now(),
            usage,
        };
        return Ok(stream(
            state, model, batcher, prompts, params, stops, opts.n, head,
        ));
    }
    let (choices, usage) = tokio::task::spawn_blocking(move || {
        run(&model, &batcher, &prompts, &params, &stops, &opts)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Metrics::add(&state.metrics.tokens_generated, usage.1 as u64);
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": crate::db::now(),
        "model": req.model,
        "choices": choices,
        "usage": usage_json(usage),
    }))
    .into_response())
}

fn encode(tok: &eigenprune_engine::tokenizers::Tokenizer, text: &str) -> ApiResult<Vec<u32>> {
    tok.encode(text, true)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| ApiError::invalid("invalid_prompt", e.to_string()))
}

fn usage_json((prompt, completion): (usize, usize)) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion})
}

/// What every chunk of a stream repeats.
struct StreamHead {
    id: String,
    model: String,
    created: i64,
    usage: bool,
}

impl StreamHead {
    fn chunk(&self, choices: Value, usage: Value) -> Event {
        let body = json!({"id": self.id, "object": "text_completion", "created": self.created,
                          "model": self.model, "choices": choices, "usage": usage});
        Event::default().data(body.to_string())
    }
}

/// `stream = true`: Server-Sent Events as OpenAI sends them, one chunk per text delta, a final
/// chunk per choice with its finish_reason, optional usage, then `[DONE]`. Generation stops
/// when the client disconnects.
#[allow(clippy::too_many_arguments)]
fn stream(
    state: AppState,
    model: Arc<LoadedModel>,
    batcher: Batcher,
    prompts: Vec<Vec<u32>>,
    params: SamplingParams,
    stops: Vec<String>,
    n: usize,
    head: StreamHead,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::task::spawn_blocking(move || {
        let send = |e: Event| tx.blocking_send(e).is_ok();
        let (mut prompt_tokens, mut completion_tokens) = (0, 0);
        let mut pending = submit_all(&batcher, &prompts, n, &params).into_iter();
        for (p, prompt) in prompts.iter().enumerate() {
            prompt_tokens += prompt.len();
            for k in 0..n {
                let index = p * n + k;
                let events = pending.next().expect("one receiver per choice");
                let delta = |text: &str| {
                    let c = json!([{"text": text, "index": index, "logprobs": null, "finish_reason": null}]);
                    send(head.chunk(c, Value::Null))
                };
                match complete_one(&model, events, params.max_tokens, &stops, delta) {
                    Ok(c) => {
                        completion_tokens += c.ids.len();
                        Metrics::add(&state.metrics.tokens_generated, c.ids.len() as u64);
                        let c = json!([{"text": "", "index": index, "logprobs": null,
                                        "finish_reason": c.finish_reason}]);
                        if !send(head.chunk(c, Value::Null)) {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "streamed completion failed");
                        let err = json!({"error": {"code": "internal_error", "message": "internal error"}});
                        send(Event::default().data(err.to_string()));
                        return;
                    }
                }
            }
        }
        if head.usage {
            let usage = usage_json((prompt_tokens, completion_tokens));
            send(head.chunk(json!([]), usage));
        }
        send(Event::default().data("[DONE]"));
    });
    let events =
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
