//! Per-family mapping from a checkpoint (HF config.json + tensor names) to the engine's
//! normalised [`ModelConfig`] and [`Weights`], and back for export.

pub mod gemma3;
pub mod gpt2;
pub mod llama;
pub mod phi;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Tensor};
use serde_json::Value;

use crate::config::{Arch, ModelConfig};
use crate::transformer::Transformer;
use crate::weights::{Linear, Norm};
use crate::{EngineError, Result};

/// Checkpoint tensors by their HF name; loaders take what they need, with shape checks.
pub struct TensorMap {
    tensors: HashMap<String, Tensor>,
    /// Quantised copies of some linear maps' weights (a GGUF's own blocks), for CPU serving.
    quantized: HashMap<String, Arc<QTensor>>,
    /// When set, a missing tensor is drawn at random on this device instead (benchmarks at
    /// real shapes without the real weights).
    random: Option<RandomInit>,
}

/// Seeded draws: the device's own generator on a GPU, a seeded host generator on the CPU
/// (candle's CPU generator cannot be seeded).
struct RandomInit {
    device: candle_core::Device,
    host: rand::rngs::StdRng,
}

impl RandomInit {
    fn normal(&mut self, mean: f32, std: f32, shape: &[usize]) -> Result<Tensor> {
        if !self.device.is_cpu() {
            return Ok(Tensor::randn(mean, std, shape, &self.device)?);
        }
        use rand::Rng;
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                // Box-Muller from two uniforms in (0, 1].
                let (u1, u2) = (1.0 - self.host.random::<f32>(), self.host.random::<f32>());
                mean + std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
            })
            .collect();
        Ok(Tensor::from_vec(values, shape, &self.device)?)
    }
}

/// The token embedding's name, whose quantised copy a tied output projection serves from.
const EMBED: &str = "model.embed_tokens.weight";

impl TensorMap {
    pub fn new(tensors: HashMap<String, Tensor>) -> Self {
        Self {
            tensors,
            quantized: HashMap::new(),
            random: None,
        }
    }

    /// With quantised serving copies of some weights, by tensor name ([`Self::linear`] and a
    /// tied [`Self::lm_head`] attach them).
    pub fn with_quantized(mut self, quantized: HashMap<String, Arc<QTensor>>) -> Self {
        self.quantized = quantized;
        self
    }

    /// Every requested tensor drawn from the device's (seeded) generator: matrices N(0, 0.02),
    /// vectors N(1, 0.02) for norm scales and N(0, 0.02) for biases.
    pub fn random(device: &candle_core::Device, seed: u64) -> Result<Self> {
        if !device.is_cpu() {
            device.set_seed(seed)?;
        }
        Ok(Self {
            tensors: HashMap::new(),
            quantized: HashMap::new(),
            random: Some(RandomInit {
                device: device.clone(),
                host: rand::SeedableRng::seed_from_u64(seed),
            }),
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes `name`, checks its shape, converts it to f32.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if let Some(random) = &mut self.random {
            let mean = if shape.len() == 1 && !name.ends_with("bias") {
                1.0
            } else {
                0.0
            };
            return random.normal(mean, 0.02, shape);
        }
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| EngineError::MissingTensor(name.to_string()))?;
        if t.dims() != shape {
            return Err(EngineError::ShapeMismatch {
                name: name.to_string(),
                found: t.dims().to_vec(),
                expected: shape.to_vec(),
            });
        }
        Ok(t.to_dtype(DType::F32)?)
    }

    pub fn take_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.contains(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A `[out, in]` linear map with an optional bias.
    pub fn linear(
        &mut self,
        prefix: &str,
        d_out: usize,
        d_in: usize,
        bias: bool,
    ) -> Result<Linear> {
        let weight = self.take(&format!("{prefix}.weight"), &[d_out, d_in])?;
        let bias = if bias {
            Some(self.take(&format!("{prefix}.bias"), &[d_out])?)
        } else {
            self.take_opt(&format!("{prefix}.bias"), &[d_out])?
        };
        let quantized = self.quantized.remove(&format!("{prefix}.weight"));
        Linear::new(weight, bias).with_quantized(quantized)
    }

    /// `lm_head` (with its bias, if any), or the embedding when tied and no head is stored.
    pub fn lm_head(
        &mut self,
        tied: bool,
        embed: &Tensor,
        vocab: usize,
        d: usize,
    ) -> Result<Linear> {
        if tied && !self.contains("lm_head.weight") {
            let quantized = self.quantized.remove(EMBED);
            Linear::new(embed.clone(), self.take_opt("lm_head.bias", &[vocab])?)
                .with_quantized(quantized)
        } else {
            self.linear("lm_head", vocab, d, false)
        }
    }

    pub fn norm(&mut self, prefix: &str, d: usize, with_bias: bool) -> Result<Norm> {
        Ok(Norm {
            weight: self.take(&format!("{prefix}.weight"), &[d])?,
            bias: if with_bias {
                Some(self.take(&format!("{prefix}.bias"), &[d])?)
            } else {
                None
            },
        })
    }
}

/// Which family a config.json describes.
pub fn arch_of(config: &Value) -> Result<Arch> {
    let model_type = config.get("model_type").and_then(Value::as_str);
    let first_arch = config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str);
    let arch = match (model_type, first_arch) {
        (Some("gpt2"), _) | (_, Some("GPT2LMHeadModel")) => Arch::Gpt2,
        (Some("phi"), _) | (_, Some("PhiForCausalLM")) => Arch::Phi,
        (Some("llama"), _) | (_, Some("LlamaForCausalLM")) => Arch::Llama,
        (Some("mistral"), _) | (_, Some("MistralForCausalLM")) => Arch::Mistral,
        (Some("qwen2"), _) | (_, Some("Qwen2ForCausalLM")) => Arch::Qwen2,
        (Some("gemma3_text"), _) | (_, Some("Gemma3ForCausalLM")) => Arch::Gemma3,
        _ => {
            return Err(EngineError::UnsupportedArchitecture {
                found: first_arch.or(model_type).unwrap_or("<none>").to_string(),
            })
        }
    };
    Ok(arch)
}

/// Builds the model a config.json and its tensors describe.
pub fn build(config: &Value, mut tensors: TensorMap) -> Result<Transformer> {
    let (cfg, weights) = match arch_of(config)? {
        Arch::Gpt2 => gpt2::load(config, &mut tensors)?,
        Arch::Phi => phi::load(config, &mut tensors)?,
        arch @ (Arch::Llama | Arch::Mistral | Arch::Qwen2) => {
            llama::load(arch, config, &mut tensors)?
        }
        Arch::Gemma3 => gemma3::load(config, &mut tensors)?,
    };
    Transformer::new(cfg, weights)
}

/// Typed reads of config.json fields, with clear errors.
pub(crate) struct Fields<'a>(pub &'a Value);

impl Fields<'_> {
    pub fn usize(&self, keys: &[&str]) -> Result<usize> {
        self.usize_opt(keys)?.ok_or_else(|| {
            EngineError::BadConfig(format!("config.json lacks `{}`", keys.join("` or `")))
        })
    }
    pub fn usize_opt(&self, keys: &[&str]) -> Result<Option<usize>> {
        for k in keys {
            match self.0.get(*k) {
                Some(Value::Null) | None => continue,
                Some(v) => {
                    return v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                        EngineError::BadConfig(format!("`{k}` must be a non-negative integer"))
                    })
                }
            }
        }
        Ok(None)
    }
    pub fn f64_or(&self, keys: &[&str], default: f64) -> f64 {
        keys.iter()
            .find_map(|k| self.0.get(*k).and_then(Value::as_f64))
            .unwrap_or(default)
    }
    pub fn bool_or(&self, key: &str, default: bool) -> bool {
        self.0.get(key).and_then(Value::as_bool).unwrap_or(default)
    }
    pub fn str_or<'s>(&'s self, key: &str, default: &'s str) -> &'s str {
        self.0.get(key).and_then(Value::as_str).unwrap_or(default)
    }
    /// rope_theta at the top level (transformers 4) or under rope_parameters (transformers 5).
    pub fn rope_theta(&self, default: f64) -> Result<f64> {
        if let Some(params) = self
            .0
            .get("rope_parameters")
            .or_else(|| self.0.get("rope_scaling"))
        {
            let kind = params
                .get("rope_type")
                .or_else(|| params.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            if kind != "default" && !params.is_null() {
                return Err(EngineError::BadConfig(format!(
                    "rope scaling `{kind}` is not supported (only the default rotary embedding)"
                )));
            }
            if let Some(t) = params.get("rope_theta").and_then(Value::as_f64) {
                return Ok(t);
            }
        }
        Ok(self.f64_or(&["rope_theta"], default))
    }
    pub fn token_ids(&self, key: &str) -> Vec<u32> {
        match self.0.get(key) {
            Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64().map(|n| n as u32))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The common tail of every config: token ids.
pub(crate) fn special_tokens(f: &Fields, cfg: &mut ModelConfig) {
    cfg.bos_token_id = f.token_ids("bos_token_id").first().copied();
    cfg.eos_token_ids = f.token_ids("eos_token_id");
}
