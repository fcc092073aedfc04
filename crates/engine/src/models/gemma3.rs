//! Gemma-3 text models (`gemma3_text`): RMSNorm scaling by (1 + weight), per-head q/k norms,
//! norms before and after both the attention and the MLP, embeddings scaled by sqrt(d_model),
//! sliding-window layers interleaved with global ones (each with its own rotary base), query
//! scaling by query_pre_attn_scalar, a gelu-tanh gated MLP, tied embeddings.
//!
//! The engine keeps gamma = 1 + weight in [`Norm::weight`] (so the SVD folds the real scale);
//! loading adds 1 and exporting takes it off again.

use candle_core::Tensor;
use serde_json::Value;

use super::gpt2::push_norm;
use super::llama::{assemble, push_maps};
use super::phi::push_linear;
use super::{special_tokens, Fields, TensorMap};
use crate::config::{Activation, Arch, ModelConfig, NormKind};
use crate::weights::{Block, Norm, Weights};
use crate::{EngineError, Result};

/// Gemma-3's default: five sliding-window layers, then one global.
const DEFAULT_PATTERN: usize = 6;

pub fn config(config: &Value) -> Result<ModelConfig> {
    let f = Fields(config);
    for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
        if config.get(key).is_some_and(|v| !v.is_null()) {
            return Err(EngineError::BadConfig(format!(
                "Gemma `{key}` is not supported (Gemma-3 does not use it)"
            )));
        }
    }
    if f.bool_or("use_bidirectional_attention", false) {
        return Err(EngineError::BadConfig(
            "Gemma use_bidirectional_attention is not supported (a causal LM is needed)".into(),
        ));
    }
    let d_model = f.usize(&["hidden_size"])?;
    let n_heads = f.usize(&["num_attention_heads"])?;
    let head_dim = f.usize_opt(&["head_dim"])?.unwrap_or(256);
    let n_layers = f.usize(&["num_hidden_layers"])?;
    let local_layers = layer_types(config, n_layers)?;
    let (global_theta, local_theta) = rope_thetas(config)?;
    let query_scalar = f.f64_or(&["query_pre_attn_scalar"], head_dim as f64);
    let mut cfg = ModelConfig {
        arch: Arch::Gemma3,
        vocab_size: f.usize(&["vocab_size"])?,
        d_model,
        n_layers,
        n_heads,
        n_kv_heads: f.usize_opt(&["num_key_value_heads"])?.unwrap_or(n_heads),
        head_dim,
        d_mlp: f.usize(&["intermediate_size"])?,
        norm: NormKind::RmsNorm,
        norm_eps: f.f64_or(&["rms_norm_eps"], 1e-6),
        rotary_dims: head_dim,
        rope_theta: global_theta,
        max_positions: f.usize(&["max_position_embeddings"])?,
        parallel_block: false,
        gated_mlp: true,
        activation: Activation::from_hf(
            config
                .get("hidden_activation")
                .or_else(|| config.get("hidden_act"))
                .and_then(Value::as_str)
                .unwrap_or("gelu_pytorch_tanh"),
        )?,
        sliding_window: Some(f.usize_opt(&["sliding_window"])?.unwrap_or(4096)),
        local_layers,
        rope_local_theta: Some(local_theta),
        embed_scale: Some((d_model as f64).sqrt()),
        query_scale: Some(1.0 / query_scalar.sqrt()),
        tie_embeddings: f.bool_or("tie_word_embeddings", true),
        bos_token_id: None,
        eos_token_ids: Vec::new(),
    };
    special_tokens(&f, &mut cfg);
    Ok(cfg)
}

/// Which layers slide: `layer_types` when given, else every `sliding_window_pattern`-th layer
/// is global.
fn layer_types(config: &Value, n_layers: usize) -> Result<Vec<bool>> {
    if let Some(types) = config.get("layer_types").and_then(Value::as_array) {
        if types.len() != n_layers {
            return Err(EngineError::BadConfig(format!(
                "layer_types has {} entries for {n_layers} layers",
                types.len()
            )));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                other => Err(EngineError::BadConfig(format!(
                    "unknown layer type {other:?}"
                ))),
            })
            .collect();
    }
    let pattern = Fields(config)
        .usize_opt(&["sliding_window_pattern"])?
        .unwrap_or(DEFAULT_PATTERN)
        .max(1);
    Ok((0..n_layers).map(|l| (l + 1) % pattern != 0).collect())
}

/// (global, local) rotary bases: transformers 5 keeps them in `rope_parameters` by layer type;
/// transformers 4 as `rope_theta` and `rope_local_base_freq`. Only unscaled rotary is supported.
fn rope_thetas(config: &Value) -> Result<(f64, f64)> {
    let f = Fields(config);
    let params = config.get("rope_parameters").filter(|p| !p.is_null());
    let theta_of = |kind: &str, default: f64| -> Result<f64> {
        let p = params.and_then(|p| p.get(kind));
        let Some(p) = p else {
            return Ok(default);
        };
        let rope_type = p
            .get("rope_type")
            .and_then(Value::as_str)
            .unwrap_or("default");
        if rope_type != "default" {
            return Err(EngineError::BadConfig(format!(
                "rope scaling `{rope_type}` ({kind}) is not supported (only the default rotary embedding)"
            )));
        }
        Ok(p.get("rope_theta")
            .and_then(Value::as_f64)
            .unwrap_or(default))
    };
    if params.is_none() {
        if let Some(s) = config.get("rope_scaling").filter(|s| !s.is_null()) {
            return Err(EngineError::BadConfig(format!(
                "rope scaling {s} is not supported (only the default rotary embedding)"
            )));
        }
    }
    let global = theta_of("full_attention", f.f64_or(&["rope_theta"], 1_000_000.0))?;
    let local = theta_of(
        "sliding_attention",
        f.f64_or(&["rope_local_base_freq"], 10_000.0),
    )?;
    Ok((global, local))
}

/// A Gemma norm: the checkpoint stores w, the engine keeps gamma = 1 + w.
fn gemma_norm(t: &mut TensorMap, prefix: &str, d: usize) -> Result<Norm> {
    let n = t.norm(prefix, d, false)?;
    Ok(Norm {
        weight: (n.weight + 1.0)?,
        bias: None,
    })
}

pub fn load(config_json: &Value, t: &mut TensorMap) -> Result<(ModelConfig, Weights)> {
    let cfg = config(config_json)?;
    let (d, q, kv, m, hd) = (
        cfg.d_model,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.d_mlp,
        cfg.head_dim,
    );
    let bias = Fields(config_json).bool_or("attention_bias", false);
    let embed = t.take("model.embed_tokens.weight", &[cfg.vocab_size, d])?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let b = format!("model.layers.{l}");
        blocks.push(Block {
            ln1: gemma_norm(t, &format!("{b}.input_layernorm"), d)?,
            ln2: Some(gemma_norm(t, &format!("{b}.pre_feedforward_layernorm"), d)?),
            q: t.linear(&format!("{b}.self_attn.q_proj"), q, d, bias)?,
            k: t.linear(&format!("{b}.self_attn.k_proj"), kv, d, bias)?,
            v: t.linear(&format!("{b}.self_attn.v_proj"), kv, d, bias)?,
            o: t.linear(&format!("{b}.self_attn.o_proj"), d, q, bias)?,
            gate: Some(t.linear(&format!("{b}.mlp.gate_proj"), m, d, false)?),
            up: t.linear(&format!("{b}.mlp.up_proj"), m, d, false)?,
            down: t.linear(&format!("{b}.mlp.down_proj"), d, m, false)?,
            q_norm: Some(gemma_norm(t, &format!("{b}.self_attn.q_norm"), hd)?),
            k_norm: Some(gemma_norm(t, &format!("{b}.self_attn.k_norm"), hd)?),
            post_attn_norm: Some(gemma_norm(t, &format!("{b}.post_attention_layernorm"), d)?),
            post_mlp_norm: Some(gemma_norm(
                t,
                &format!("{b}.post_feedforward_layernorm"),
                d,
            )?),
        });
    }
    let final_norm = gemma_norm(t, "model.norm", d)?;
    let weights = assemble(t, &cfg, embed, blocks, final_norm)?;
    Ok((cfg, weights))
}

pub fn export(cfg: &ModelConfig, w: &Weights) -> Result<Vec<(String, Tensor)>> {
    let mut out = vec![("model.embed_tokens.weight".to_string(), w.embed.clone())];
    let norm = |out: &mut Vec<(String, Tensor)>, name: &str, n: &Norm| -> Result<()> {
        let stored = Norm {
            weight: (&n.weight - 1.0)?,
            bias: None,
        };
        push_norm(out, name, &stored);
        Ok(())
    };
    let missing = |what: &str| EngineError::InvalidInput(format!("a Gemma block lacks its {what}"));
    for (l, b) in w.blocks.iter().enumerate() {
        let p = format!("model.layers.{l}");
        norm(&mut out, &format!("{p}.input_layernorm"), &b.ln1)?;
        let norms = [
            ("pre_feedforward_layernorm", &b.ln2),
            ("self_attn.q_norm", &b.q_norm),
            ("self_attn.k_norm", &b.k_norm),
            ("post_attention_layernorm", &b.post_attn_norm),
            ("post_feedforward_layernorm", &b.post_mlp_norm),
        ];
        for (name, n) in norms {
            norm(
                &mut out,
                &format!("{p}.{name}"),
                n.as_ref().ok_or_else(|| missing(name))?,
            )?;
        }
        push_maps(&mut out, &p, b)?;
    }
    norm(&mut out, "model.norm", &w.final_norm)?;
    if !cfg.tie_embeddings {
        push_linear(&mut out, "lm_head", &w.lm_head);
    }
    Ok(out)
}
