//! `stream = true` for both OpenAI endpoints: Server-Sent Events, one chunk per text delta (with
//! the tokens' logprobs when asked), a final chunk per choice with its finish_reason, the usage
//! when asked, then `data: [DONE]`. Generation stops at the next token when the client
//! disconnects; when the server shuts down, the stream is cut with an error event
//! (`server_shutting_down`) and `[DONE]`. What a chunk looks like is the endpoint's
//! [`ChunkFormat`].

use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use eigenprune_engine::batcher::{Batcher, Sampled};
use eigenprune_engine::generate::SamplingParams;
use eigenprune_engine::LoadedModel;
use futures::StreamExt;
use serde_json::Value;

use super::completion_run::{complete_one, submit_all, Generated, Usage};
use crate::app::{AppState, Metrics};

/// The chunks of one endpoint's stream.
pub trait ChunkFormat: Send + 'static {
    /// Chunks before choice `index` generates (echoed prompt, or the assistant role).
    fn start(
        &mut self,
        model: &LoadedModel,
        batcher: &Batcher,
        index: usize,
        prompt: &[u32],
    ) -> anyhow::Result<Vec<Value>>;
    /// A text delta and the tokens that came with it; None sends nothing.
    fn delta(
        &mut self,
        model: &LoadedModel,
        index: usize,
        text: &str,
        tokens: &[Sampled],
    ) -> Option<Value>;
    /// The choice's last chunk.
    fn finish(&mut self, index: usize, done: &Generated) -> Value;
    /// The usage chunk.
    fn usage(&self, usage: Usage) -> Value;
}

/// What a stream generates.
pub struct StreamJob {
    pub model: Arc<LoadedModel>,
    /// The model's batch, carrying the variant's edit.
    pub batcher: Batcher,
    pub prompts: Vec<Vec<u32>>,
    pub params: SamplingParams,
    pub stops: Vec<String>,
    pub n: usize,
    pub include_usage: bool,
    /// The caller's sequences, held until the stream ends.
    pub held: super::limits::Held,
}

pub fn sse(state: AppState, job: StreamJob, mut format: impl ChunkFormat) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let shutdown = state.shutdown.clone();
    tokio::task::spawn_blocking(move || {
        let send = |v: &Value| {
            tx.blocking_send(Event::default().data(v.to_string()))
                .is_ok()
        };
        let keep_going = || !tx.is_closed() && !shutdown.is_cancelled();
        let cut = || {
            if shutdown.is_cancelled() {
                let err = super::error::ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "server_shutting_down",
                    "the server is shutting down; the stream was cut (retry on another replica)",
                );
                send(&serde_json::to_value(err.body()).unwrap_or_default());
                let _ = tx.blocking_send(Event::default().data("[DONE]"));
            }
        };
        let model = &job.model;
        let (mut prompt_tokens, mut completion_tokens) = (0, 0);
        let mut pending = submit_all(&job.batcher, &job.prompts, job.n, &job.params).into_iter();
        for (p, prompt) in job.prompts.iter().enumerate() {
            prompt_tokens += prompt.len();
            for k in 0..job.n {
                let index = p * job.n + k;
                let events = pending.next().expect("one receiver per choice");
                let result = format
                    .start(model, &job.batcher, index, prompt)
                    .and_then(|chunks| {
                        if !chunks.iter().all(&send) {
                            anyhow::bail!("the client went away");
                        }
                        complete_one(
                            model,
                            events,
                            job.params.max_tokens,
                            &job.stops,
                            &keep_going,
                            |text, toks| {
                                format
                                    .delta(model, index, text, toks)
                                    .is_none_or(|c| send(&c))
                            },
                        )
                    });
                if !keep_going() {
                    return cut();
                }
                match result {
                    Ok(done) => {
                        completion_tokens += done.tokens.len();
                        Metrics::add(&state.metrics.tokens_generated, done.tokens.len() as u64);
                        if !send(&format.finish(index, &done)) {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "streamed completion ended early");
                        let err = super::error::ApiError::internal(e);
                        send(&serde_json::to_value(err.body()).unwrap_or_default());
                        return;
                    }
                }
            }
        }
        drop(job.held);
        if job.include_usage {
            send(&format.usage(Usage::new(prompt_tokens, completion_tokens)));
        }
        let _ = tx.blocking_send(Event::default().data("[DONE]"));
    });
    let events =
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
