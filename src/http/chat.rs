//! POST /v1/chat/completions, OpenAI's: the conversation is rendered with the model's own chat
//! template, then generated like a completion (n, stop, seed, logprobs/top_logprobs,
//! max_tokens/max_completion_tokens, penalties, logit_bias, streaming).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use eigenprune_engine::batcher::{Batcher, Sampled};
use eigenprune_engine::chat::Message;
use eigenprune_engine::LoadedModel;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::completion_run::{
    generate_all, piece, token_bytes, Choices, ClientGone, FinishReason, Generated, Usage,
};
use super::completions::Head;
use super::error::{ApiError, ApiResult, Json};
use super::limits::admit_sequences;
use super::offload::offload;
use super::sampling::{fit_context, refuse_unsupported, Sampling, MAX_LOGPROBS};
use super::streaming::{sse, ChunkFormat, StreamJob};
use crate::app::{AppState, Metrics};
use crate::identity::Caller;

pub const MAX_MESSAGES: usize = 1024;

/// A message's content: text, or a list of text parts.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    /// `text` (the only kind served).
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system` (or `developer`), `user` or `assistant`.
    pub role: String,
    pub content: Content,
}

#[derive(Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// A base model's name or a pruned variant's id (GET /v1/models).
    pub model: String,
    #[schema(min_items = 1, max_items = 1024)]
    pub messages: Vec<ChatMessage>,
    /// New tokens at most (default: all that fit the model's context).
    #[schema(minimum = 0)]
    pub max_completion_tokens: Option<usize>,
    /// The older name of max_completion_tokens.
    #[schema(minimum = 0)]
    pub max_tokens: Option<usize>,
    /// Return each generated token's log-probability.
    #[serde(default)]
    pub logprobs: bool,
    /// With logprobs: this many most likely alternatives per token.
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<u32>,
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Anything else is refused by name.
    #[serde(flatten)]
    #[schema(ignore)]
    pub unsupported: BTreeMap<String, Value>,
}

#[derive(Serialize, ToSchema)]
pub struct AssistantMessage {
    /// `assistant`
    pub role: String,
    pub content: String,
}

#[derive(Serialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprob>,
}

#[derive(Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: FinishReason,
}

#[derive(Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    /// `chat.completion`
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

/// A streamed chunk's change to the message.
#[derive(Serialize, ToSchema, Default)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<FinishReason>,
}

/// One Server-Sent Event of a streamed chat completion.
#[derive(Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// `chat.completion.chunk`
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    pub usage: Option<Usage>,
}

impl ChatCompletionRequest {
    fn validate(&self) -> ApiResult<()> {
        refuse_unsupported(&self.unsupported)?;
        if self.messages.is_empty() || self.messages.len() > MAX_MESSAGES {
            return Err(ApiError::invalid(
                "invalid_messages",
                format!("1 to {MAX_MESSAGES} messages"),
            )
            .param("messages"));
        }
        if let Some(k) = self.top_logprobs {
            if k > MAX_LOGPROBS || !self.logprobs {
                return Err(ApiError::invalid(
                    "invalid_logprobs",
                    format!("top_logprobs is at most {MAX_LOGPROBS}, and needs logprobs = true"),
                )
                .param("top_logprobs"));
            }
        }
        Ok(())
    }

    /// The conversation as the template sees it.
    fn messages(&self) -> ApiResult<Vec<Message>> {
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let bad = |code, msg: String| {
                    ApiError::invalid(code, msg).param(format!("messages[{i}]"))
                };
                let role = match m.role.as_str() {
                    "system" | "developer" => "system",
                    "user" => "user",
                    "assistant" => "assistant",
                    _ => {
                        return Err(bad(
                            "invalid_role",
                            "role is system, developer, user or assistant".into(),
                        ))
                    }
                };
                let content = match &m.content {
                    Content::Text(t) => t.clone(),
                    Content::Parts(parts) => {
                        if parts.iter().any(|p| p.kind != "text") {
                            return Err(bad(
                                "unsupported_content",
                                "only text content parts are served".into(),
                            ));
                        }
                        parts.iter().map(|p| p.text.as_str()).collect()
                    }
                };
                Ok(Message {
                    role: role.into(),
                    content,
                })
            })
            .collect()
    }
}

/// Create a chat completion (OpenAI).
#[utoipa::path(post, path = "/v1/chat/completions", tag = "completions",
    request_body = ChatCompletionRequest,
    responses((status = 200, description = "The chat completion; with stream = true, Server-Sent Events of ChatCompletionChunk, then `data: [DONE]`", body = ChatCompletion),
              (status = "4XX", description = "Invalid request, or a model without a chat template", body = super::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<ChatCompletionRequest>,
) -> ApiResult<Response> {
    req.validate()?;
    let messages = req.messages()?;
    let served = crate::catalog::resolve(&state, &caller, &req.model).await?;
    let model = served.model.clone();
    let vocab = model.model.config.vocab_size;
    req.sampling.validate(vocab)?;
    let held = admit_sequences(&state, &caller, &served.key, req.sampling.n())?;
    let (req, m) = (Arc::new(req), model.clone());
    let r = req.clone();
    let (prompt, params) = offload(move || {
        let Some(template) = &m.chat_template else {
            return Err(ApiError::invalid(
                "chat_template_missing",
                format!(
                    "model `{}` has no chat template; use /v1/completions",
                    r.model
                ),
            )
            .param("model"));
        };
        let text = template
            .render(&messages)
            .map_err(|e| ApiError::invalid("invalid_messages", e.to_string()).param("messages"))?;
        let prompt = m
            .tokenizer
            .encode(text, false)
            .map_err(|e| ApiError::invalid("invalid_messages", e.to_string()))?
            .get_ids()
            .to_vec();
        let wanted = r.max_completion_tokens.or(r.max_tokens);
        let budget = fit_context(prompt.len(), wanted, m.model.config.max_positions)?;
        let eos = m.model.config.eos_token_ids.clone();
        let top = r.logprobs.then(|| r.top_logprobs.unwrap_or(0) as usize);
        Ok((prompt, r.sampling.params(budget, eos, vocab, top)?))
    })
    .await?;
    let stops = req.sampling.stops()?;
    let n = req.sampling.n();
    let batcher = state.host.batcher_for(&served);
    let head = Head {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: crate::db::now(),
        model: req.model.clone(),
    };
    let top = params.logprobs;
    if req.sampling.stream {
        let job = StreamJob {
            model,
            batcher,
            prompts: vec![prompt],
            params,
            stops,
            n,
            include_usage: req.sampling.include_usage(),
            held,
        };
        return Ok(sse(state, job, ChatChunks { head, top }));
    }
    let prompt_tokens = prompt.len();
    let gone = ClientGone::default();
    let flag = gone.flag();
    let (choices, completion_tokens) = tokio::task::spawn_blocking(move || {
        let _held = held;
        let keep_going = || !flag.load(Ordering::Relaxed);
        let all = generate_all(
            &model,
            &batcher,
            &[prompt],
            &params,
            &stops,
            Choices { n, best_of: n },
            &keep_going,
        )?;
        let mut tokens = 0;
        let choices = all
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(index, g)| {
                tokens += g.tokens.len();
                ChatChoice {
                    index,
                    logprobs: top.map(|k| content_logprobs(&model, g.text_tokens(), k)),
                    message: AssistantMessage {
                        role: "assistant".into(),
                        content: g.text,
                    },
                    finish_reason: g.finish_reason,
                }
            })
            .collect::<Vec<_>>();
        Ok::<_, anyhow::Error>((choices, tokens))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Metrics::add(&state.metrics.tokens_generated, completion_tokens as u64);
    Ok(Json(ChatCompletion {
        id: head.id,
        object: "chat.completion".into(),
        created: head.created,
        model: head.model,
        choices,
        usage: Usage::new(prompt_tokens, completion_tokens),
    })
    .into_response())
}

fn content_logprobs(model: &LoadedModel, tokens: &[Sampled], top: usize) -> ChatLogprobs {
    let entry = |id: u32, logprob: f32| (token_bytes(model, id), piece(model, id), logprob);
    let content = tokens
        .iter()
        .filter_map(|t| {
            let (lp, alts) = t.logprob.as_ref()?;
            let (bytes, token, logprob) = entry(t.id, *lp);
            let top_logprobs = alts
                .iter()
                .take(top)
                .map(|&(id, l)| {
                    let (bytes, token, logprob) = entry(id, l);
                    TopLogprob {
                        token,
                        logprob,
                        bytes,
                    }
                })
                .collect();
            Some(TokenLogprob {
                token,
                logprob,
                bytes,
                top_logprobs,
            })
        })
        .collect();
    ChatLogprobs { content }
}

struct ChatChunks {
    head: Head,
    /// Alternatives per token when logprobs were asked for.
    top: Option<usize>,
}

impl ChatChunks {
    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> Value {
        serde_json::to_value(ChatCompletionChunk {
            id: self.head.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.head.created,
            model: self.head.model.clone(),
            choices,
            usage,
        })
        .unwrap_or_default()
    }
}

impl ChunkFormat for ChatChunks {
    fn start(
        &mut self,
        _: &LoadedModel,
        _: &Batcher,
        index: usize,
        _: &[u32],
    ) -> anyhow::Result<Vec<Value>> {
        let c = ChunkChoice {
            index,
            delta: Delta {
                role: Some("assistant".into()),
                content: Some(String::new()),
            },
            logprobs: None,
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
        let eos = &model.model.config.eos_token_ids;
        let kept: Vec<Sampled> = tokens
            .iter()
            .filter(|t| !eos.contains(&t.id))
            .cloned()
            .collect();
        let logprobs = self.top.map(|k| content_logprobs(model, &kept, k));
        if text.is_empty() && logprobs.as_ref().is_none_or(|l| l.content.is_empty()) {
            return None;
        }
        let c = ChunkChoice {
            index,
            delta: Delta {
                role: None,
                content: Some(text.to_string()),
            },
            logprobs,
            finish_reason: None,
        };
        Some(self.chunk(vec![c], None))
    }

    fn finish(&mut self, index: usize, done: &Generated) -> Value {
        let c = ChunkChoice {
            index,
            delta: Delta::default(),
            logprobs: None,
            finish_reason: Some(done.finish_reason),
        };
        self.chunk(vec![c], None)
    }

    fn usage(&self, usage: Usage) -> Value {
        self.chunk(Vec::new(), Some(usage))
    }
}
