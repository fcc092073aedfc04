//! What /v1/completions and /v1/chat/completions share: the sampling parameters with their
//! bounds (one struct, flattened into both requests, feeding validation and the OpenAPI
//! document), stop strings, and the rule that every parameter we do not support is refused by
//! name.

use std::collections::BTreeMap;

use eigenprune_engine::generate::SamplingParams;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult};

pub const MAX_N: usize = 8;
pub const MAX_BEST_OF: usize = 16;
pub const MAX_LOGPROBS: u32 = 20;
pub const MAX_STOPS: usize = 16;
pub const MAX_STOP_BYTES: usize = 256;
pub const MAX_LOGIT_BIAS: usize = 300;

/// One stop string or several.
#[derive(Deserialize, ToSchema, Clone)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with the usage of the whole request.
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling parameters, as OpenAI defines them.
#[derive(Deserialize, ToSchema)]
pub struct Sampling {
    /// 0 = greedy.
    #[schema(minimum = 0.0, maximum = 2.0, default = 1.0)]
    pub temperature: Option<f64>,
    /// Nucleus sampling: the smallest set of tokens with this much probability.
    #[schema(exclusive_minimum = 0.0, maximum = 1.0, default = 1.0)]
    pub top_p: Option<f64>,
    /// Choices per prompt.
    #[schema(minimum = 1, maximum = 8, default = 1)]
    pub n: Option<usize>,
    /// Same seed, same request, same output. Without one, a random seed is drawn.
    pub seed: Option<u64>,
    /// Up to 16 strings (1 to 256 bytes each); the text ends before the first that appears.
    pub stop: Option<Stop>,
    /// Subtracted from the logit of every token already generated.
    #[schema(minimum = -2.0, maximum = 2.0, default = 0.0)]
    pub presence_penalty: Option<f32>,
    /// Subtracted from a token's logit once per time it was generated.
    #[schema(minimum = -2.0, maximum = 2.0, default = 0.0)]
    pub frequency_penalty: Option<f32>,
    /// Token id (as a string) -> bias in [-100, 100] added to its logit.
    pub logit_bias: Option<BTreeMap<String, f64>>,
    /// Server-Sent Events, then `data: [DONE]`.
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

impl Sampling {
    pub fn n(&self) -> usize {
        self.n.unwrap_or(1)
    }

    /// Checks the bounds; `vocab` bounds logit_bias's token ids.
    pub fn validate(&self, vocab: usize) -> ApiResult<()> {
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(
                ApiError::invalid("invalid_temperature", "temperature must be in [0, 2]")
                    .param("temperature"),
            );
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(
                ApiError::invalid("invalid_top_p", "top_p must be in (0, 1]").param("top_p"),
            );
        }
        if !(1..=MAX_N).contains(&self.n()) {
            return Err(
                ApiError::invalid("invalid_n", format!("n must be in 1..={MAX_N}")).param("n"),
            );
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !v.is_none_or(|v| (-2.0..=2.0).contains(&v)) {
                return Err(ApiError::invalid(
                    "invalid_penalty",
                    format!("{name} must be in [-2, 2]"),
                )
                .param(name));
            }
        }
        self.logit_bias(vocab)?;
        self.stops()?;
        Ok(())
    }

    /// logit_bias as (token, bias) pairs.
    fn logit_bias(&self, vocab: usize) -> ApiResult<Vec<(u32, f32)>> {
        let Some(map) = &self.logit_bias else {
            return Ok(Vec::new());
        };
        let bad = |m: String| ApiError::invalid("invalid_logit_bias", m).param("logit_bias");
        if map.len() > MAX_LOGIT_BIAS {
            return Err(bad(format!("at most {MAX_LOGIT_BIAS} tokens")));
        }
        map.iter()
            .map(|(k, &b)| {
                let id: u32 = k
                    .parse()
                    .ok()
                    .filter(|&id| (id as usize) < vocab)
                    .ok_or_else(|| bad(format!("keys are token ids below {vocab}")))?;
                if !(-100.0..=100.0).contains(&b) {
                    return Err(bad("biases are in [-100, 100]".into()));
                }
                Ok((id, b as f32))
            })
            .collect()
    }

    /// The stop strings, checked.
    pub fn stops(&self) -> ApiResult<Vec<String>> {
        let stops = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        let bad = |m: String| ApiError::invalid("invalid_stop", m).param("stop");
        if stops.len() > MAX_STOPS {
            return Err(bad(format!("at most {MAX_STOPS} stop strings")));
        }
        if stops
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
        {
            return Err(bad(format!(
                "stop strings are 1 to {MAX_STOP_BYTES} bytes long"
            )));
        }
        Ok(stops)
    }

    /// The engine's parameters for `max_tokens` new tokens; `logprobs` alternatives per token.
    pub fn params(
        &self,
        max_tokens: usize,
        stop_tokens: Vec<u32>,
        vocab: usize,
        logprobs: Option<usize>,
    ) -> ApiResult<SamplingParams> {
        Ok(SamplingParams {
            max_tokens,
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed.unwrap_or_else(rand::random),
            stop_tokens,
            logit_bias: self.logit_bias(vocab)?,
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            logprobs,
        })
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// Refuses the first parameter a request carries that the endpoint does not support.
pub fn refuse_unsupported(extra: &BTreeMap<String, Value>) -> ApiResult<()> {
    match extra.keys().next() {
        None => Ok(()),
        Some(k) => {
            let k = super::error::bounded(k, 64);
            Err(ApiError::invalid(
                "unsupported_parameter",
                format!("`{k}` is not a parameter this endpoint supports"),
            )
            .param(k))
        }
    }
}

/// The model's context bounds prompt + completion: a 400 with the numbers when it does not
/// fit. Returns the completion budget: `requested`, or all that fits when None.
pub fn fit_context(prompt: usize, requested: Option<usize>, context: usize) -> ApiResult<usize> {
    let room = context.saturating_sub(prompt);
    let want = requested.unwrap_or(room);
    if prompt > context || want > room {
        return Err(ApiError::invalid(
            "context_length_exceeded",
            format!(
                "this model's maximum context length is {context} tokens; the request asks for {} ({prompt} in the prompt, {want} for the completion)",
                prompt + want
            ),
        )
        .param(if prompt > context { "prompt" } else { "max_tokens" }));
    }
    Ok(want)
}
