//! The generation behind /v1/completions: one choice at a time, with stop strings honoured on
//! text (not tokens), optional logprobs and echo, and text deltas for streaming.

use std::sync::mpsc::Receiver;

use eigenprune_engine::batcher::{Batcher, Event};
use eigenprune_engine::generate::{sequence_logprobs, SamplingParams};
use eigenprune_engine::LoadedModel;
use serde_json::{json, Value};

pub struct Options {
    pub n: usize,
    pub echo: bool,
    pub logprobs: Option<u32>,
}

/// One finished choice.
pub struct Choice {
    pub ids: Vec<u32>,
    pub text: String,
    pub finish_reason: &'static str,
}

/// Text released to a stream so far: never past a stop string, never a prefix of one that may
/// still complete, never half a UTF-8 character.
struct TextStream<'a> {
    stops: &'a [String],
    sent: usize,
}

impl TextStream<'_> {
    /// The part of `text` that is safe to send now.
    fn release<'t>(&mut self, text: &'t str) -> &'t str {
        let held = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).filter(move |&k| text.ends_with(&s[..k])))
            .max()
            .unwrap_or(0);
        let mut end = text.len() - held;
        if text[..end].ends_with('\u{FFFD}') {
            end -= '\u{FFFD}'.len_utf8();
        }
        self.advance(text, end)
    }

    fn advance<'t>(&mut self, text: &'t str, end: usize) -> &'t str {
        if end <= self.sent || !text.is_char_boundary(end) || !text.is_char_boundary(self.sent) {
            return "";
        }
        let delta = &text[self.sent..end];
        self.sent = end;
        delta
    }
}

/// Finishes one choice from the batcher's events for it. `on_delta` receives the text as it
/// becomes final (the whole text, in pieces); returning false stops generation (the client went
/// away): dropping `events` cancels the request in the batcher.
pub fn complete_one(
    model: &LoadedModel,
    events: Receiver<Event>,
    max_tokens: usize,
    stops: &[String],
    mut on_delta: impl FnMut(&str) -> bool,
) -> anyhow::Result<Choice> {
    let tok = &model.tokenizer;
    let mut stream = TextStream { stops, sent: 0 };
    let mut ids = Vec::new();
    let mut stopped_text = None;
    let mut open = true;
    for event in events.iter() {
        let id = match event {
            Event::Token(id) => id,
            Event::Done => break,
            Event::Failed(e) => anyhow::bail!("generation failed: {e}"),
        };
        ids.push(id);
        let text = tok.decode(&ids, true).unwrap_or_default();
        if let Some(cut) = stops.iter().filter_map(|s| text.find(s.as_str())).min() {
            open = on_delta(stream.advance(&text, cut));
            stopped_text = Some(text[..cut].to_string());
            break;
        }
        let delta = stream.release(&text);
        open = delta.is_empty() || on_delta(delta);
        if !open {
            break;
        }
    }
    drop(events);
    let (text, finish_reason) = match stopped_text {
        Some(t) => (t, "stop"),
        None => {
            let t = tok.decode(&ids, true).map_err(|e| anyhow::anyhow!("{e}"))?;
            let reason = if ids.len() < max_tokens {
                "stop"
            } else {
                "length"
            };
            (t, reason)
        }
    };
    if open {
        let end = text.len();
        let rest = stream.advance(&text, end);
        if !rest.is_empty() {
            on_delta(rest);
        }
    }
    Ok(Choice {
        ids,
        text,
        finish_reason,
    })
}

/// Submits every choice (prompts x n, in that order) to the batcher at once, so they decode
/// together; the receivers come back in the same order.
pub fn submit_all(
    batcher: &Batcher,
    prompts: &[Vec<u32>],
    n: usize,
    params: &SamplingParams,
) -> Vec<Receiver<Event>> {
    prompts
        .iter()
        .flat_map(|p| (0..n).map(move |k| batcher.submit(p.clone(), choice_params(params, k))))
        .collect()
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

/// Every choice (prompts x n, in that order) and the usage (prompt, completion tokens).
pub fn run(
    model: &LoadedModel,
    batcher: &Batcher,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    stops: &[String],
    opts: &Options,
) -> anyhow::Result<(Vec<Value>, (usize, usize))> {
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    let mut pending = submit_all(batcher, prompts, opts.n, params).into_iter();
    for prompt in prompts {
        prompt_tokens += prompt.len();
        for _ in 0..opts.n {
            let events = pending.next().expect("one receiver per choice");
            let c = complete_one(model, events, params.max_tokens, stops, |_| true)?;
            completion_tokens += c.ids.len();
            let all: Vec<u32> = prompt.iter().chain(&c.ids).copied().collect();
            let from = if opts.echo { 0 } else { prompt.len() };
            let logprobs = match opts.logprobs {
                Some(top) => logprobs_json(model, &all, from, top)?,
                None => Value::Null,
            };
            let text = if opts.echo {
                let head = model
                    .tokenizer
                    .decode(prompt, false)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                format!("{head}{}", c.text)
            } else {
                c.text
            };
            choices.push(
                json!({"text": text, "index": choices.len(), "logprobs": logprobs,
                                "finish_reason": c.finish_reason}),
            );
        }
    }
    Ok((choices, (prompt_tokens, completion_tokens)))
}

/// The k-th of n choices samples with its own seed.
pub fn choice_params(params: &SamplingParams, k: usize) -> SamplingParams {
    SamplingParams {
        seed: params.seed.wrapping_add(k as u64),
        ..params.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::TextStream;

    #[test]
    fn holds_back_what_may_become_a_stop_string() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        let mut s = TextStream {
            stops: &stops,
            sent: 0,
        };
        assert_eq!(s.release("Hello"), "Hello");
        assert_eq!(s.release("Hello E"), " ");
        assert_eq!(s.release("Hello EN"), "");
        assert_eq!(s.release("Hello ENx\n"), "ENx");
        assert_eq!(s.release("Hello ENx\nz"), "\nz");
    }

    #[test]
    fn never_splits_a_character() {
        let mut s = TextStream {
            stops: &[],
            sent: 0,
        };
        assert_eq!(s.release("caf\u{FFFD}"), "caf");
        assert_eq!(s.release("café"), "é");
    }
}
