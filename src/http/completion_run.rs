//! The generation behind /v1/completions and /v1/chat/completions: every choice submitted to
//! the model's batcher at once, each finished from its events with stop strings honoured on
//! text (not tokens), per-token logprobs, text deltas for streaming, and best_of.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use eigenprune_engine::batcher::{Batcher, Event, Sampled};
use eigenprune_engine::generate::{SamplingParams, TokenLogprob};
use eigenprune_engine::LoadedModel;
use serde::Serialize;
use utoipa::ToSchema;

/// Tokens a request read and wrote (a choice's end-of-sequence token counts).
#[derive(Serialize, ToSchema, Clone, Copy, Debug, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// Why a choice ended.
#[derive(Serialize, ToSchema, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop string or the model's end-of-sequence token.
    Stop,
    /// max_tokens were generated.
    Length,
}

/// One finished choice.
pub struct Generated {
    /// Every generated token, an end-of-sequence token included.
    pub tokens: Vec<Sampled>,
    /// Whether the last of `tokens` is the end-of-sequence token (no part of the text).
    pub ended_by_token: bool,
    pub text: String,
    pub finish_reason: FinishReason,
}

impl Generated {
    /// Mean log-probability per token (best_of ranks by it).
    fn mean_logprob(&self) -> f64 {
        let lps: Vec<f64> = self
            .tokens
            .iter()
            .filter_map(|t| t.logprob.as_ref().map(|l| l.0 as f64))
            .collect();
        lps.iter().sum::<f64>() / lps.len().max(1) as f64
    }

    /// The tokens that make the text (without the end-of-sequence token).
    pub fn text_tokens(&self) -> &[Sampled] {
        let n = self.tokens.len() - usize::from(self.ended_by_token);
        &self.tokens[..n]
    }
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
            .flat_map(|s| {
                s.char_indices()
                    .skip(1)
                    .map(|(k, _)| k)
                    .filter(move |&k| text.ends_with(&s[..k]))
            })
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
/// becomes final (the whole text, in pieces) with the tokens that arrived since the last call;
/// returning false stops generation (the client went away), as does `keep_going` turning
/// false (checked at every token): dropping `events` cancels the request in the batcher.
pub fn complete_one(
    model: &LoadedModel,
    events: Receiver<Event>,
    max_tokens: usize,
    stops: &[String],
    keep_going: &dyn Fn() -> bool,
    mut on_delta: impl FnMut(&str, &[Sampled]) -> bool,
) -> anyhow::Result<Generated> {
    let tok = &model.tokenizer;
    let mut stream = TextStream { stops, sent: 0 };
    let mut tokens: Vec<Sampled> = Vec::new();
    let mut ids = Vec::new();
    let mut unsent = 0; // tokens[unsent..] have not been handed to on_delta
    let mut stopped_text = None;
    let mut ended_by_token = false;
    let mut open = true;
    for event in events.iter() {
        if !keep_going() {
            open = false;
            break;
        }
        let t = match event {
            Event::Token(t) => t,
            Event::Stop(t) => {
                tokens.push(t);
                ended_by_token = true;
                break;
            }
            Event::Done => break,
            Event::Failed(e) => anyhow::bail!("generation failed: {e}"),
        };
        ids.push(t.id);
        tokens.push(t);
        let text = tok.decode(&ids, true).unwrap_or_default();
        if let Some(cut) = stops.iter().filter_map(|s| text.find(s.as_str())).min() {
            open = on_delta(stream.advance(&text, cut), &tokens[unsent..]);
            unsent = tokens.len();
            stopped_text = Some(text[..cut].to_string());
            break;
        }
        let delta = stream.release(&text);
        if !delta.is_empty() {
            open = on_delta(delta, &tokens[unsent..]);
            unsent = tokens.len();
            if !open {
                break;
            }
        }
    }
    drop(events);
    let (text, finish_reason) = match stopped_text {
        Some(t) => (t, FinishReason::Stop),
        None => {
            let t = tok.decode(&ids, true).map_err(|e| anyhow::anyhow!("{e}"))?;
            let reason = if ended_by_token || ids.len() < max_tokens {
                FinishReason::Stop
            } else {
                FinishReason::Length
            };
            (t, reason)
        }
    };
    if open {
        let end = text.len();
        let rest = stream.advance(&text, end);
        if !rest.is_empty() || unsent < tokens.len() {
            on_delta(rest, &tokens[unsent..]);
        }
    }
    Ok(Generated {
        tokens,
        ended_by_token,
        text,
        finish_reason,
    })
}

/// Submits `per_prompt` choices of every prompt to the batcher at once, so they decode
/// together; the receivers come back in (prompt, choice) order. Choice k samples with seed +
/// k.
pub fn submit_all(
    batcher: &Batcher,
    prompts: &[Vec<u32>],
    per_prompt: usize,
    params: &SamplingParams,
) -> Vec<Receiver<Event>> {
    prompts
        .iter()
        .flat_map(|p| {
            (0..per_prompt).map(move |k| {
                let params = SamplingParams {
                    seed: params.seed.wrapping_add(k as u64),
                    ..params.clone()
                };
                batcher.submit(p.clone(), params)
            })
        })
        .collect()
}

/// Choices kept per prompt (`n`) of those generated (`best_of` >= n).
#[derive(Clone, Copy)]
pub struct Choices {
    pub n: usize,
    pub best_of: usize,
}

/// Every prompt's `n` choices, in order. With `best_of > n`, best_of are generated per prompt
/// and the n with the highest mean token log-probability are kept (in that order).
pub fn generate_all(
    model: &LoadedModel,
    batcher: &Batcher,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    stops: &[String],
    Choices { n, best_of }: Choices,
    keep_going: &dyn Fn() -> bool,
) -> anyhow::Result<Vec<Vec<Generated>>> {
    let per_prompt = best_of.max(n);
    let mut params = params.clone();
    if per_prompt > n && params.logprobs.is_none() {
        params.logprobs = Some(0);
    }
    let mut pending = submit_all(batcher, prompts, per_prompt, &params).into_iter();
    let mut out = Vec::with_capacity(prompts.len());
    for _ in prompts {
        let mut choices = Vec::with_capacity(per_prompt);
        for _ in 0..per_prompt {
            let events = pending.next().expect("one receiver per choice");
            choices.push(complete_one(
                model,
                events,
                params.max_tokens,
                stops,
                keep_going,
                |_, _| true,
            )?);
            if !keep_going() {
                anyhow::bail!("the client went away");
            }
        }
        if per_prompt > n {
            choices.sort_by(|a, b| b.mean_logprob().total_cmp(&a.mean_logprob()));
            choices.truncate(n);
        }
        out.push(choices);
    }
    Ok(out)
}

/// Set when the request that owns it is dropped (its client went away): the generation it
/// runs on a blocking thread stops at its next token.
#[derive(Default)]
pub struct ClientGone(Arc<AtomicBool>);

impl ClientGone {
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

impl Drop for ClientGone {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A token's text as logprobs show it: its text (special tokens spelled out), or, for a token
/// that is part of a UTF-8 character only, `bytes:` and its bytes as `\xNN` (OpenAI's way).
pub fn piece(model: &LoadedModel, id: u32) -> String {
    match String::from_utf8(token_bytes(model, id)) {
        Ok(s) => s,
        Err(e) => {
            let hex: String = e.as_bytes().iter().map(|b| format!("\\x{b:02x}")).collect();
            format!("bytes:{hex}")
        }
    }
}

/// The bytes a token stands for: its decoded text, or, where that is not whole characters,
/// the bytes behind its vocabulary entry (SentencePiece `<0xNN>`, or byte-level BPE's one
/// character per byte).
pub fn token_bytes(model: &LoadedModel, id: u32) -> Vec<u8> {
    let text = model.tokenizer.decode(&[id], false).unwrap_or_default();
    if !text.contains('\u{FFFD}') {
        return text.into_bytes();
    }
    let Some(raw) = model.tokenizer.id_to_token(id) else {
        return text.into_bytes();
    };
    if let Some(hex) = raw.strip_prefix("<0x").and_then(|r| r.strip_suffix('>')) {
        if let Ok(b) = u8::from_str_radix(hex, 16) {
            return vec![b];
        }
    }
    raw.chars()
        .map(byte_level_byte)
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| text.into_bytes())
}

/// The byte a byte-level BPE character stands for (the inverse of GPT-2's bytes_to_unicode:
/// printable bytes are themselves, the others are 256 + their rank among the others).
fn byte_level_byte(c: char) -> Option<u8> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let c = c as u32;
    if c < 256 {
        return printable(c).then_some(c as u8);
    }
    (0u32..256)
        .filter(|&b| !printable(b))
        .nth((c - 256) as usize)
        .map(|b| b as u8)
}

/// A token of a logprobs listing: its id, its logprob (None for a prompt's first token) and the
/// top alternatives.
#[derive(Clone)]
pub struct Scored {
    pub id: u32,
    pub logprob: Option<TokenLogprob>,
}

impl From<&Sampled> for Scored {
    fn from(s: &Sampled) -> Self {
        Scored {
            id: s.id,
            logprob: s.logprob.clone(),
        }
    }
}

/// An echoed prompt's tokens with their log-probabilities (teacher-forced, in the model's
/// batch: scoring requests that arrive together share a forward pass, any variants mixed).
pub fn prompt_scores(batcher: &Batcher, prompt: &[u32], top: usize) -> anyhow::Result<Vec<Scored>> {
    let scored = batcher
        .score(prompt.to_vec(), top)
        .recv()
        .map_err(|_| anyhow::anyhow!("the model's decoding thread ended"))?
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(prompt
        .iter()
        .enumerate()
        .map(|(i, &id)| Scored {
            id,
            logprob: i.checked_sub(1).map(|p| scored[p].clone()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::{byte_level_byte, TextStream};

    #[test]
    fn byte_level_characters_map_back_to_bytes() {
        assert_eq!(byte_level_byte('a'), Some(b'a'));
        assert_eq!(byte_level_byte('\u{120}'), Some(b' ')); // "Ġ"
        assert_eq!(byte_level_byte('\u{100}'), Some(0));
        assert_eq!(byte_level_byte('\u{143}'), Some(0xad));
    }

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

    #[test]
    fn stop_strings_with_multibyte_characters() {
        let stops = vec!["é!".to_string(), "日本".to_string()];
        let mut s = TextStream {
            stops: &stops,
            sent: 0,
        };
        assert_eq!(s.release("ab é"), "ab ");
        assert_eq!(s.release("ab éx 日"), "éx ");
    }
}
