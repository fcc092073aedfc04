//! The Llama family (Llama, Mistral, Qwen2, SmolLM2): RMSNorm, rotary, grouped-query
//! attention, gated SiLU MLP; Qwen2 has qkv biases, Mistral a sliding window.

use candle_core::Tensor;
use serde_json::Value;

use super::gpt2::push_norm;
use super::phi::push_linear;
use super::{special_tokens, Fields, TensorMap};
use crate::config::{Activation, Arch, ModelConfig, NormKind};
use crate::weights::{Block, Norm, Weights};
use crate::Result;

pub fn config(arch: Arch, config: &Value) -> Result<ModelConfig> {
    let f = Fields(config);
    let d_model = f.usize(&["hidden_size"])?;
    let n_heads = f.usize(&["num_attention_heads"])?;
    let head_dim = f
        .usize_opt(&["head_dim"])?
        .unwrap_or(d_model / n_heads.max(1));
    let sliding_window = match arch {
        Arch::Mistral => f.usize_opt(&["sliding_window"])?,
        Arch::Qwen2 if f.bool_or("use_sliding_window", false) => {
            return Err(crate::EngineError::BadConfig(
                "Qwen2 with use_sliding_window is not supported".into(),
            ))
        }
        _ => None,
    };
    let mut cfg = ModelConfig {
        arch,
        vocab_size: f.usize(&["vocab_size"])?,
        d_model,
        n_layers: f.usize(&["num_hidden_layers"])?,
        n_heads,
        n_kv_heads: f.usize_opt(&["num_key_value_heads"])?.unwrap_or(n_heads),
        head_dim,
        d_mlp: f.usize(&["intermediate_size"])?,
        norm: NormKind::RmsNorm,
        norm_eps: f.f64_or(&["rms_norm_eps"], 1e-6),
        rotary_dims: head_dim,
        rope_theta: f.rope_theta(10_000.0)?,
        max_positions: f.usize(&["max_position_embeddings"])?,
        parallel_block: false,
        gated_mlp: true,
        activation: Activation::from_hf(f.str_or("hidden_act", "silu"))?,
        sliding_window,
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

pub fn load(arch: Arch, config_json: &Value, t: &mut TensorMap) -> Result<(ModelConfig, Weights)> {
    let cfg = config(arch, config_json)?;
    let (d, q, kv, m) = (cfg.d_model, cfg.q_dim(), cfg.kv_dim(), cfg.d_mlp);
    let qkv_bias = arch == Arch::Qwen2 || Fields(config_json).bool_or("attention_bias", false);
    let mlp_bias = Fields(config_json).bool_or("mlp_bias", false);
    let embed = t.take("model.embed_tokens.weight", &[cfg.vocab_size, d])?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let b = format!("model.layers.{l}");
        blocks.push(Block {
            ln1: t.norm(&format!("{b}.input_layernorm"), d, false)?,
            ln2: Some(t.norm(&format!("{b}.post_attention_layernorm"), d, false)?),
            q: t.linear(&format!("{b}.self_attn.q_proj"), q, d, qkv_bias)?,
            k: t.linear(&format!("{b}.self_attn.k_proj"), kv, d, qkv_bias)?,
            v: t.linear(&format!("{b}.self_attn.v_proj"), kv, d, qkv_bias)?,
            o: t.linear(&format!("{b}.self_attn.o_proj"), d, q, false)?,
            gate: Some(t.linear(&format!("{b}.mlp.gate_proj"), m, d, mlp_bias)?),
            up: t.linear(&format!("{b}.mlp.up_proj"), m, d, mlp_bias)?,
            down: t.linear(&format!("{b}.mlp.down_proj"), d, m, mlp_bias)?,
            q_norm: None,
            k_norm: None,
            post_attn_norm: None,
            post_mlp_norm: None,
        });
    }
    let final_norm = t.norm("model.norm", d, false)?;
    let weights = assemble(t, &cfg, embed, blocks, final_norm)?;
    Ok((cfg, weights))
}

/// Weights of a rotary model (no learned positions) with its output head, tied or not.
pub(crate) fn assemble(
    t: &mut TensorMap,
    cfg: &ModelConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    final_norm: Norm,
) -> Result<Weights> {
    let lm_head = t.lm_head(cfg.tie_embeddings, &embed, cfg.vocab_size, cfg.d_model)?;
    Ok(Weights {
        embed,
        pos_embed: None,
        blocks,
        final_norm,
        lm_head,
    })
}

/// A block's attention and gated-MLP maps under their HF names (`q_proj` ... `down_proj`).
pub(crate) fn push_maps(out: &mut Vec<(String, Tensor)>, prefix: &str, b: &Block) -> Result<()> {
    let gate = b.gate.as_ref().ok_or_else(|| {
        crate::EngineError::InvalidInput(format!("{prefix}: a gated MLP without its gate"))
    })?;
    for (name, lin) in [
        ("self_attn.q_proj", &b.q),
        ("self_attn.k_proj", &b.k),
        ("self_attn.v_proj", &b.v),
        ("self_attn.o_proj", &b.o),
        ("mlp.gate_proj", gate),
        ("mlp.up_proj", &b.up),
        ("mlp.down_proj", &b.down),
    ] {
        push_linear(out, &format!("{prefix}.{name}"), lin);
    }
    Ok(())
}

pub fn export(cfg: &ModelConfig, w: &Weights) -> Result<Vec<(String, Tensor)>> {
    let mut out = vec![("model.embed_tokens.weight".to_string(), w.embed.clone())];
    for (l, b) in w.blocks.iter().enumerate() {
        let p = format!("model.layers.{l}");
        push_norm(&mut out, &format!("{p}.input_layernorm"), &b.ln1);
        if let Some(ln2) = &b.ln2 {
            push_norm(&mut out, &format!("{p}.post_attention_layernorm"), ln2);
        }
        push_maps(&mut out, &p, b)?;
    }
    push_norm(&mut out, "model.norm", &w.final_norm);
    if !cfg.tie_embeddings {
        push_linear(&mut out, "lm_head", &w.lm_head);
    }
    Ok(out)
}
