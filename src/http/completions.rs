//! POST /v1/completions, OpenAI's: a base model or a variant continues a prompt (text, texts,
//! token ids or lists of them), with n, best_of, stop strings, logprobs, echo, penalties,
//! logit_bias and streaming. lm-evaluation-harness scores log-likelihoods through it (echo +
//! logprobs + max_tokens 0 or 1).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use eigenprune_engine::batcher::{Batcher, Sampled};
use eigenprune_engine::LoadedModel;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::completion_run::{
    generate_all, piece, prompt_scores, Choices, ClientGone, FinishReason, Generated, Scored, Usage,
};
use super::error::{ApiError, ApiResult, Json};
use super::limits::admit_sequences;
use super::offload::offload;
use super::sampling::{fit_context, refuse_unsupported, Sampling, MAX_BEST_OF, MAX_LOGPROBS};
use super::streaming::{sse, ChunkFormat, StreamJob};
use crate::app::{AppState, Metrics};
use crate::identity::Caller;

/// Prompts one request may carry.
pub const MAX_PROMPTS: usize = 256;

/// A prompt: text, several texts, token ids, or several lists of token ids.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

impl Prompt {
    /// How many prompts (each is generated for on its own).
    fn count(&self) -> usize {
        match self {
            Prompt::Text(_) | Prompt::Tokens(_) => 1,
            Prompt::Texts(t) => t.len(),
            Prompt::TokenLists(l) => l.len(),
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// A base model's name or a pruned variant's id (GET /v1/models).
    pub model: String,
    pub prompt: Prompt,
    /// New tokens at most (default 16); prompt + max_tokens must fit the model's context.
    #[schema(minimum = 0)]
    pub max_tokens: Option<usize>,
    /// Return the prompt before the completion (and its logprobs, with `logprobs`).
    #[serde(default)]
    pub echo: bool,
    /// Per token: its log-probability and up to this many alternatives (the token itself is
    /// always among them).
    #[schema(minimum = 0, maximum = 20)]
    pub logprobs: Option<u32>,
    /// Generate this many per prompt and return the n with the highest mean token
    /// log-probability; not with stream.
    #[schema(minimum = 1, maximum = 16)]
    pub best_of: Option<usize>,
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Anything else is refused by name (`suffix`, `user`, ...).
    #[serde(flatten)]
    #[schema(ignore)]
    pub unsupported: BTreeMap<String, Value>,
}

/// The legacy logprobs object: one entry per token.
#[derive(Serialize, ToSchema, Default)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    /// Null for a prompt's first token.
    pub token_logprobs: Vec<Option<f32>>,
    /// The most likely tokens at each position, the chosen one among them.
    pub top_logprobs: Vec<Option<BTreeMap<String, f32>>>,
    pub text_offset: Vec<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct CompletionChoice {
    pub text: String,
    pub index: usize,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<FinishReason>,
}

/// A completion, or (streamed) one chunk of it.
#[derive(Serialize, ToSchema)]
pub struct Completion {
    pub id: String,
    /// `text_completion`
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Option<Usage>,
}

/// Create a completion (OpenAI).
#[utoipa::path(post, path = "/v1/completions", tag = "completions",
    request_body = CompletionRequest,
    responses((status = 200, description = "The completion; with stream = true, Server-Sent Events of Completion chunks, then `data: [DONE]`", body = Completion),
              (status = "4XX", description = "Invalid request", body = super::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<CompletionRequest>,
) -> ApiResult<Response> {
    refuse_unsupported(&req.unsupported)?;
    let served = crate::catalog::resolve(&state, &caller, &req.model).await?;
    let model = served.model.clone();
    let vocab = model.model.config.vocab_size;
    let s = &req.sampling;
    s.validate(vocab)?;
    let n = s.n();
    if req.logprobs.is_some_and(|k| k > MAX_LOGPROBS) {
        return Err(ApiError::invalid(
            "invalid_logprobs",
            format!("logprobs is at most {MAX_LOGPROBS}"),
        )
        .param("logprobs"));
    }
    let best_of = req.best_of.unwrap_or(n);
    if !(n..=MAX_BEST_OF).contains(&best_of) {
        return Err(ApiError::invalid(
            "invalid_best_of",
            format!("best_of must be in n..={MAX_BEST_OF}"),
        )
        .param("best_of"));
    }
    if s.stream && best_of > n {
        return Err(
            ApiError::invalid("invalid_best_of", "best_of cannot be streamed").param("best_of"),
        );
    }
    let sequences = req.prompt.count() * best_of;
    let held = admit_sequences(&state, &caller, &served.key, sequences)?;
    let (req, m) = (Arc::new(req), model.clone());
    let r = req.clone();
    let (prompts, params) = offload(move || {
        let prompts = tokenize(&m, &r.prompt)?;
        let max_tokens = r.max_tokens.unwrap_or(16);
        for p in &prompts {
            fit_context(p.len(), Some(max_tokens), m.model.config.max_positions)?;
        }
        let eos = m.model.config.eos_token_ids.clone();
        let top = r.logprobs.map(|k| k as usize);
        Ok::<_, ApiError>((prompts, r.sampling.params(max_tokens, eos, vocab, top)?))
    })
    .await?;
    let stops = req.sampling.stops()?;
    let batcher = state.host.batcher_for(&served);
    let id = format!("cmpl-{}", uuid::Uuid::new_v4().simple());
    let created = crate::db::now();
    let logprobs = params.logprobs;
    if req.sampling.stream {
        let format = CompletionChunks {
            head: Head {
                id,
                created,
                model: req.model.clone(),
            },
            echo: req.echo,
            logprobs,
            echoed: None,
            offset: 0,
        };
        let job = StreamJob {
            model,
            batcher,
            prompts,
            params,
            stops,
            n,
            include_usage: req.sampling.include_usage(),
            held,
        };
        return Ok(sse(state, job, format));
    }
    let (echo, model_name) = (req.echo, req.model.clone());
    let gone = ClientGone::default();
    let flag = gone.flag();
    let (choices, usage) = tokio::task::spawn_blocking(move || {
        let _held = held;
        let keep_going = || !flag.load(Ordering::Relaxed);
        let all = generate_all(
            &model,
            &batcher,
            &prompts,
            &params,
            &stops,
            Choices { n, best_of },
            &keep_going,
        )?;
        let mut choices = Vec::new();
        let mut completion_tokens = 0;
        for (prompt, generated) in prompts.iter().zip(&all) {
            // The echoed prompt is decoded and scored once for all its choices.
            let head = if echo {
                Some(Echoed::of(&model, &batcher, prompt, logprobs)?)
            } else {
                None
            };
            for g in generated {
                completion_tokens += g.tokens.len();
                choices.push(choice(&model, head.as_ref(), g, logprobs, choices.len()));
            }
        }
        let prompt_tokens = prompts.iter().map(Vec::len).sum();
        Ok::<_, anyhow::Error>((choices, Usage::new(prompt_tokens, completion_tokens)))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Metrics::add(
        &state.metrics.tokens_generated,
        usage.completion_tokens as u64,
    );
    let body = Completion {
        id,
        object: "text_completion".into(),
        created,
        model: model_name,
        choices,
        usage: Some(usage),
    };
    Ok(Json(body).into_response())
}

/// Token ids of every prompt, each non-empty and inside the vocabulary.
fn tokenize(model: &LoadedModel, prompt: &Prompt) -> ApiResult<Vec<Vec<u32>>> {
    let encode = |t: &str| {
        model
            .tokenizer
            .encode(t, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ApiError::invalid("invalid_prompt", e.to_string()).param("prompt"))
    };
    let prompts = match prompt {
        Prompt::Text(t) => vec![encode(t)?],
        Prompt::Texts(ts) => ts.iter().map(|t| encode(t)).collect::<ApiResult<_>>()?,
        Prompt::Tokens(ids) => vec![ids.clone()],
        Prompt::TokenLists(l) => l.clone(),
    };
    let bad = |code, m: String| ApiError::invalid(code, m).param("prompt");
    if prompts.is_empty() || prompts.len() > MAX_PROMPTS {
        return Err(bad("invalid_prompt", format!("1 to {MAX_PROMPTS} prompts")));
    }
    let vocab = model.model.config.vocab_size as u32;
    for p in &prompts {
        if p.is_empty() {
            return Err(bad("empty_prompt", "the prompt is empty".into()));
        }
        if p.iter().any(|&t| t >= vocab) {
            return Err(bad(
                "invalid_token",
                format!("token ids must be below {vocab}"),
            ));
        }
    }
    Ok(prompts)
}

/// The logprobs of `tokens`, text offsets counted from `offset`.
fn logprobs_of(model: &LoadedModel, tokens: &[Scored], offset: &mut usize) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for t in tokens {
        let text = piece(model, t.id);
        out.text_offset.push(*offset);
        *offset += text.len();
        out.token_logprobs.push(t.logprob.as_ref().map(|l| l.0));
        out.top_logprobs.push(t.logprob.as_ref().map(|(lp, top)| {
            let mut m: BTreeMap<String, f32> =
                top.iter().map(|&(id, l)| (piece(model, id), l)).collect();
            m.insert(text.clone(), *lp);
            m
        }));
        out.tokens.push(text);
    }
    out
}

/// An echoed prompt: its text, and its tokens scored when logprobs were asked for.
struct Echoed {
    prompt: Vec<u32>,
    text: String,
    scored: Vec<Scored>,
}

impl Echoed {
    fn of(
        model: &LoadedModel,
        batcher: &Batcher,
        prompt: &[u32],
        logprobs: Option<usize>,
    ) -> anyhow::Result<Self> {
        let text = model
            .tokenizer
            .decode(prompt, false)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let scored = match logprobs {
            Some(top) => prompt_scores(batcher, prompt, top)?,
            None => Vec::new(),
        };
        Ok(Self {
            prompt: prompt.to_vec(),
            text,
            scored,
        })
    }
}

fn choice(
    model: &LoadedModel,
    echoed: Option<&Echoed>,
    g: &Generated,
    logprobs: Option<usize>,
    index: usize,
) -> CompletionChoice {
    let logprobs = logprobs.map(|_| {
        let mut scored: Vec<Scored> = echoed.map_or_else(Vec::new, |e| e.scored.clone());
        scored.extend(g.tokens.iter().map(Scored::from));
        logprobs_of(model, &scored, &mut 0)
    });
    CompletionChoice {
        text: format!("{}{}", echoed.map_or("", |e| e.text.as_str()), g.text),
        index,
        logprobs,
        finish_reason: Some(g.finish_reason),
    }
}

/// What every chunk of a stream repeats.
pub struct Head {
    pub id: String,
    pub created: i64,
    pub model: String,
}

struct CompletionChunks {
    head: Head,
    echo: bool,
    logprobs: Option<usize>,
    /// The last prompt echoed: a prompt's choices stream one after another and share it.
    echoed: Option<Echoed>,
    /// Text offset reached by the choice streaming now.
    offset: usize,
}

impl CompletionChunks {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Value {
        serde_json::to_value(Completion {
            id: self.head.id.clone(),
            object: "text_completion".into(),
            created: self.head.created,
            model: self.head.model.clone(),
            choices,
            usage,
        })
        .unwrap_or_default()
    }
}

impl ChunkFormat for CompletionChunks {
    fn start(
        &mut self,
        model: &LoadedModel,
        batcher: &Batcher,
        index: usize,
        prompt: &[u32],
    ) -> anyhow::Result<Vec<Value>> {
        self.offset = 0;
        if !self.echo {
            return Ok(Vec::new());
        }
        if self.echoed.as_ref().is_none_or(|e| e.prompt != prompt) {
            self.echoed = Some(Echoed::of(model, batcher, prompt, self.logprobs)?);
        }
        let echoed = self.echoed.as_ref().expect("set above");
        let logprobs = self
            .logprobs
            .map(|_| logprobs_of(model, &echoed.scored, &mut self.offset));
        let c = CompletionChoice {
            text: echoed.text.clone(),
            index,
            logprobs,
            finish_reason: None,
        };
        Ok(vec![self.chunk(vec![c], None)])
    }

    fn delta(
        &mut self,
        model: &LoadedModel,
        index: usize,
        text: &str,
        tokens: &[Sampled],
    ) -> Option<Value> {
        let logprobs = self.logprobs.map(|_| {
            let scored: Vec<Scored> = tokens.iter().map(Scored::from).collect();
            logprobs_of(model, &scored, &mut self.offset)
        });
        if text.is_empty() && logprobs.as_ref().is_none_or(|l| l.tokens.is_empty()) {
            return None;
        }
        let c = CompletionChoice {
            text: text.to_string(),
            index,
            logprobs,
            finish_reason: None,
        };
        Some(self.chunk(vec![c], None))
    }

    fn finish(&mut self, index: usize, done: &Generated) -> Value {
        let c = CompletionChoice {
            text: String::new(),
            index,
            logprobs: None,
            finish_reason: Some(done.finish_reason),
        };
        self.chunk(vec![c], None)
    }

    fn usage(&self, usage: Usage) -> Value {
        self.chunk(Vec::new(), Some(usage))
    }
}
