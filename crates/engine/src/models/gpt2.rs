//! GPT-2: learned positions, LayerNorm, fused Conv1D qkv (`[in, out]` layout), tied head.

use candle_core::Tensor;
use serde_json::Value;

use super::{special_tokens, Fields, TensorMap};
use crate::config::{Activation, Arch, ModelConfig, NormKind};
use crate::weights::{Block, Linear, Weights};
use crate::Result;

pub fn config(config: &Value) -> Result<ModelConfig> {
    let f = Fields(config);
    let d_model = f.usize(&["n_embd", "hidden_size"])?;
    let n_heads = f.usize(&["n_head", "num_attention_heads"])?;
    let mut cfg = ModelConfig {
        arch: Arch::Gpt2,
        vocab_size: f.usize(&["vocab_size"])?,
        d_model,
        n_layers: f.usize(&["n_layer", "num_hidden_layers"])?,
        n_heads,
        n_kv_heads: n_heads,
        head_dim: d_model / n_heads.max(1),
        d_mlp: f.usize_opt(&["n_inner"])?.unwrap_or(4 * d_model),
        norm: NormKind::LayerNorm,
        norm_eps: f.f64_or(&["layer_norm_epsilon"], 1e-5),
        rotary_dims: 0,
        rope_theta: 0.0,
        max_positions: f.usize(&["n_positions", "max_position_embeddings"])?,
        parallel_block: false,
        gated_mlp: false,
        activation: Activation::from_hf(f.str_or("activation_function", "gelu_new"))?,
        sliding_window: None,
        local_layers: Vec::new(),
        rope_local_theta: None,
        embed_scale: None,
        query_scale: None,
        tie_embeddings: true,
        bos_token_id: None,
        eos_token_ids: Vec::new(),
    };
    if f.bool_or("scale_attn_by_inverse_layer_idx", false)
        || f.bool_or("reorder_and_upcast_attn", false)
    {
        return Err(crate::EngineError::BadConfig(
            "GPT-2 variants with scale_attn_by_inverse_layer_idx or reorder_and_upcast_attn are not supported".into(),
        ));
    }
    special_tokens(&f, &mut cfg);
    Ok(cfg)
}

/// Conv1D stores `[in, out]`; the engine wants `[out, in]`.
fn conv1d(t: &mut TensorMap, prefix: &str, d_in: usize, d_out: usize) -> Result<Linear> {
    let w = t.take(&format!("{prefix}.weight"), &[d_in, d_out])?;
    let b = t.take(&format!("{prefix}.bias"), &[d_out])?;
    Ok(Linear::new(w.t()?.contiguous()?, Some(b)))
}

pub fn load(config_json: &Value, t: &mut TensorMap) -> Result<(ModelConfig, Weights)> {
    let cfg = config(config_json)?;
    let d = cfg.d_model;
    let p = if t.contains("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    let embed = t.take(&format!("{p}wte.weight"), &[cfg.vocab_size, d])?;
    let pos_embed = t.take(&format!("{p}wpe.weight"), &[cfg.max_positions, d])?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let b = format!("{p}h.{l}");
        let qkv = conv1d(t, &format!("{b}.attn.c_attn"), d, 3 * d)?;
        let part = |i: usize| -> Result<Linear> {
            let w = qkv.weight.narrow(0, i * d, d)?.contiguous()?;
            let bias = qkv
                .bias
                .as_ref()
                .map(|b| b.narrow(0, i * d, d))
                .transpose()?;
            Ok(Linear::new(w, bias))
        };
        blocks.push(Block {
            ln1: t.norm(&format!("{b}.ln_1"), d, true)?,
            ln2: Some(t.norm(&format!("{b}.ln_2"), d, true)?),
            q: part(0)?,
            k: part(1)?,
            v: part(2)?,
            o: conv1d(t, &format!("{b}.attn.c_proj"), d, d)?,
            gate: None,
            up: conv1d(t, &format!("{b}.mlp.c_fc"), d, cfg.d_mlp)?,
            down: conv1d(t, &format!("{b}.mlp.c_proj"), cfg.d_mlp, d)?,
            q_norm: None,
            k_norm: None,
            post_attn_norm: None,
            post_mlp_norm: None,
        });
    }
    let final_norm = t.norm(&format!("{p}ln_f"), d, true)?;
    let lm_head = Linear::new(embed.clone(), None);
    let weights = Weights {
        embed,
        pos_embed: Some(pos_embed),
        blocks,
        final_norm,
        lm_head,
    };
    Ok((cfg, weights))
}

/// The checkpoint's own tensors (HF names, Conv1D layout) of the engine's weights.
pub fn export(_cfg: &ModelConfig, w: &Weights) -> Result<Vec<(String, Tensor)>> {
    let mut out = vec![
        ("transformer.wte.weight".to_string(), w.embed.clone()),
        (
            "transformer.wpe.weight".to_string(),
            w.pos_embed.clone().expect("GPT-2 has learned positions"),
        ),
    ];
    let conv = |name: String, lin: &Linear, out: &mut Vec<(String, Tensor)>| -> Result<()> {
        out.push((format!("{name}.weight"), lin.weight.t()?.contiguous()?));
        if let Some(b) = &lin.bias {
            out.push((format!("{name}.bias"), b.clone()));
        }
        Ok(())
    };
    for (l, b) in w.blocks.iter().enumerate() {
        let p = format!("transformer.h.{l}");
        let qkv_w = Tensor::cat(&[&b.q.weight, &b.k.weight, &b.v.weight], 0)?;
        let bias = |lin: &Linear| lin.bias.clone().expect("GPT-2 qkv has biases");
        let qkv_b = Tensor::cat(&[bias(&b.q), bias(&b.k), bias(&b.v)], 0)?;
        conv(
            format!("{p}.attn.c_attn"),
            &Linear::new(qkv_w, Some(qkv_b)),
            &mut out,
        )?;
        conv(format!("{p}.attn.c_proj"), &b.o, &mut out)?;
        conv(format!("{p}.mlp.c_fc"), &b.up, &mut out)?;
        conv(format!("{p}.mlp.c_proj"), &b.down, &mut out)?;
        push_norm(&mut out, &format!("{p}.ln_1"), &b.ln1);
        push_norm(
            &mut out,
            &format!("{p}.ln_2"),
            b.ln2.as_ref().expect("GPT-2 has ln_2"),
        );
    }
    push_norm(&mut out, "transformer.ln_f", &w.final_norm);
    Ok(out)
}

pub(crate) fn push_norm(out: &mut Vec<(String, Tensor)>, name: &str, n: &crate::weights::Norm) {
    out.push((format!("{name}.weight"), n.weight.clone()));
    if let Some(b) = &n.bias {
        out.push((format!("{name}.bias"), b.clone()));
    }
}
