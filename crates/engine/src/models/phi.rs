//! Phi-2 (`PhiForCausalLM`): LayerNorm, parallel attention + MLP, partial rotary, qkv biases.

use candle_core::Tensor;
use serde_json::Value;

use super::gpt2::push_norm;
use super::{special_tokens, Fields, TensorMap};
use crate::config::{Activation, Arch, ModelConfig, NormKind};
use crate::weights::{Block, Linear, Weights};
use crate::{EngineError, Result};

pub fn config(config: &Value) -> Result<ModelConfig> {
    let f = Fields(config);
    let d_model = f.usize(&["hidden_size"])?;
    let n_heads = f.usize(&["num_attention_heads"])?;
    let head_dim = d_model / n_heads.max(1);
    let partial = config
        .get("rope_parameters")
        .and_then(|p| p.get("partial_rotary_factor"))
        .and_then(Value::as_f64)
        .unwrap_or_else(|| f.f64_or(&["partial_rotary_factor"], 0.5));
    if f.bool_or("qk_layernorm", false) {
        return Err(EngineError::BadConfig(
            "Phi with qk_layernorm is not supported".into(),
        ));
    }
    let mut cfg = ModelConfig {
        arch: Arch::Phi,
        vocab_size: f.usize(&["vocab_size"])?,
        d_model,
        n_layers: f.usize(&["num_hidden_layers"])?,
        n_heads,
        n_kv_heads: f.usize_opt(&["num_key_value_heads"])?.unwrap_or(n_heads),
        head_dim,
        d_mlp: f.usize(&["intermediate_size"])?,
        norm: NormKind::LayerNorm,
        norm_eps: f.f64_or(&["layer_norm_eps"], 1e-5),
        rotary_dims: (partial * head_dim as f64) as usize,
        rope_theta: f.rope_theta(10_000.0)?,
        max_positions: f.usize(&["max_position_embeddings"])?,
        parallel_block: true,
        gated_mlp: false,
        activation: Activation::from_hf(f.str_or("hidden_act", "gelu_new"))?,
        sliding_window: None,
        local_layers: Vec::new(),
        rope_local_theta: None,
        embed_scale: None,
        query_scale: None,
        tie_embeddings: f.bool_or("tie_word_embeddings", false),
        bos_token_id: None,
        eos_token_ids: Vec::new(),
    };
    special_tokens(&f, &mut cfg);
    Ok(cfg)
}

pub fn load(config_json: &Value, t: &mut TensorMap) -> Result<(ModelConfig, Weights)> {
    let cfg = config(config_json)?;
    let (d, q, kv) = (cfg.d_model, cfg.q_dim(), cfg.kv_dim());
    let embed = t.take("model.embed_tokens.weight", &[cfg.vocab_size, d])?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let b = format!("model.layers.{l}");
        blocks.push(Block {
            ln1: t.norm(&format!("{b}.input_layernorm"), d, true)?,
            ln2: None,
            q: t.linear(&format!("{b}.self_attn.q_proj"), q, d, true)?,
            k: t.linear(&format!("{b}.self_attn.k_proj"), kv, d, true)?,
            v: t.linear(&format!("{b}.self_attn.v_proj"), kv, d, true)?,
            o: t.linear(&format!("{b}.self_attn.dense"), d, q, true)?,
            gate: None,
            up: t.linear(&format!("{b}.mlp.fc1"), cfg.d_mlp, d, true)?,
            down: t.linear(&format!("{b}.mlp.fc2"), d, cfg.d_mlp, true)?,
            q_norm: None,
            k_norm: None,
            post_attn_norm: None,
            post_mlp_norm: None,
        });
    }
    let final_norm = t.norm("model.final_layernorm", d, true)?;
    let lm_head = t.lm_head(cfg.tie_embeddings, &embed, cfg.vocab_size, d)?;
    let weights = Weights {
        embed,
        pos_embed: None,
        blocks,
        final_norm,
        lm_head,
    };
    Ok((cfg, weights))
}

pub fn export(cfg: &ModelConfig, w: &Weights) -> Result<Vec<(String, Tensor)>> {
    let mut out = vec![("model.embed_tokens.weight".to_string(), w.embed.clone())];
    for (l, b) in w.blocks.iter().enumerate() {
        let p = format!("model.layers.{l}");
        push_norm(&mut out, &format!("{p}.input_layernorm"), &b.ln1);
        for (name, lin) in [
            ("self_attn.q_proj", &b.q),
            ("self_attn.k_proj", &b.k),
            ("self_attn.v_proj", &b.v),
            ("self_attn.dense", &b.o),
            ("mlp.fc1", &b.up),
            ("mlp.fc2", &b.down),
        ] {
            push_linear(&mut out, &format!("{p}.{name}"), lin);
        }
    }
    push_norm(&mut out, "model.final_layernorm", &w.final_norm);
    if !cfg.tie_embeddings {
        push_linear(&mut out, "lm_head", &w.lm_head);
    }
    Ok(out)
}

pub(crate) fn push_linear(out: &mut Vec<(String, Tensor)>, name: &str, lin: &Linear) {
    out.push((format!("{name}.weight"), lin.weight.clone()));
    if let Some(b) = &lin.bias {
        out.push((format!("{name}.bias"), b.clone()));
    }
}
