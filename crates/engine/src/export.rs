//! Writing a (possibly edited) model back out: a full HF checkpoint (config.json,
//! model.safetensors, tokenizer.json), or an edit as a PEFT LoRA adapter.

use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::config::Arch;
use crate::edit::Edit;
use crate::models::{gemma3, gpt2, llama, phi};
use crate::trace::Component;
use crate::transformer::Transformer;
use crate::{EngineError, Result};

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("JSON values serialise");
    std::fs::write(path, text).map_err(|e| EngineError::io(path, e))
}

fn write_tensors(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?.contiguous()?)))
        .collect::<Result<_>>()?;
    safetensors::tensor::serialize_to_file(tensors, None, path)
        .map_err(|e| EngineError::InvalidInput(format!("writing {}: {e}", path.display())))
}

/// A full checkpoint of `model` that HF transformers loads. `config_json` is the base's.
pub fn export_checkpoint(
    model: &Transformer,
    config_json: &Value,
    tokenizer: &Tokenizer,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let cfg = &model.config;
    let mut config = config_json.clone();
    let mut weights = model.weights.clone();
    let attn_bias = weights
        .blocks
        .iter()
        .any(|b| [&b.q, &b.k, &b.v, &b.o].iter().any(|l| l.bias.is_some()));
    let mlp_bias = weights.blocks.iter().any(|b| {
        b.up.bias.is_some()
            || b.down.bias.is_some()
            || b.gate.as_ref().is_some_and(|g| g.bias.is_some())
    });
    let refuse = |what: &str| {
        Err(EngineError::InvalidInput(format!(
            "{} checkpoints have no {what} biases: export an edit made with bias = none",
            cfg.arch.name()
        )))
    };
    match cfg.arch {
        Arch::Mistral if attn_bias => return refuse("attention"),
        Arch::Mistral | Arch::Qwen2 | Arch::Gemma3 if mlp_bias => return refuse("MLP"),
        Arch::Qwen2 if weights.blocks.iter().any(|b| b.o.bias.is_some()) => {
            return refuse("attention output")
        }
        Arch::Llama | Arch::Gemma3 => {
            // HF Llama's (Gemma's) attention_bias puts a bias on every attention map; Llama's
            // mlp_bias on every MLP map.
            for b in &mut weights.blocks {
                let gate = b.gate.as_mut();
                let mut maps: Vec<&mut crate::weights::Linear> = Vec::new();
                if attn_bias {
                    maps.extend([&mut b.q, &mut b.k, &mut b.v, &mut b.o]);
                }
                if mlp_bias {
                    maps.extend([&mut b.up, &mut b.down]);
                    maps.extend(gate);
                }
                for lin in maps {
                    if lin.bias.is_none() {
                        let zeros =
                            Tensor::zeros(lin.weight.dim(0)?, DType::F32, lin.weight.device())?;
                        lin.bias = Some(zeros);
                    }
                }
            }
            config["attention_bias"] = json!(attn_bias);
            if cfg.arch == Arch::Llama {
                config["mlp_bias"] = json!(mlp_bias);
            }
        }
        _ => {}
    }
    if let Some(obj) = config.as_object_mut() {
        obj.insert("torch_dtype".into(), json!("float32"));
        obj.remove("dtype");
    }
    let tensors = match cfg.arch {
        Arch::Gpt2 => gpt2::export(cfg, &weights)?,
        Arch::Phi => phi::export(cfg, &weights)?,
        Arch::Llama | Arch::Mistral | Arch::Qwen2 => llama::export(cfg, &weights)?,
        Arch::Gemma3 => gemma3::export(cfg, &weights)?,
    };
    write_json(&dir.join("config.json"), &config)?;
    write_tensors(&dir.join("model.safetensors"), tensors)?;
    tokenizer
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| EngineError::Tokenizer(e.to_string()))
}

/// HF module path of a component's linear map, and whether it is GPT-2's fused Conv1D qkv
/// (with the row offset of the component inside it).
fn module_of(arch: Arch, layer: usize, c: Component, d_model: usize) -> (String, Option<usize>) {
    let gpt2 = |m: &str| format!("transformer.h.{layer}.{m}");
    let hf = |m: &str| format!("model.layers.{layer}.{m}");
    match (arch, c) {
        (Arch::Gpt2, Component::Q) => (gpt2("attn.c_attn"), Some(0)),
        (Arch::Gpt2, Component::K) => (gpt2("attn.c_attn"), Some(d_model)),
        (Arch::Gpt2, Component::V) => (gpt2("attn.c_attn"), Some(2 * d_model)),
        (Arch::Gpt2, Component::O) => (gpt2("attn.c_proj"), None),
        (Arch::Gpt2, Component::MlpIn) => (gpt2("mlp.c_fc"), None),
        (Arch::Gpt2, Component::MlpOut) => (gpt2("mlp.c_proj"), None),
        (Arch::Phi, Component::O) => (hf("self_attn.dense"), None),
        (Arch::Phi, Component::MlpIn) => (hf("mlp.fc1"), None),
        (Arch::Phi, Component::MlpOut) => (hf("mlp.fc2"), None),
        (_, Component::Q) => (hf("self_attn.q_proj"), None),
        (_, Component::K) => (hf("self_attn.k_proj"), None),
        (_, Component::V) => (hf("self_attn.v_proj"), None),
        (_, Component::O) => (hf("self_attn.o_proj"), None),
        (_, Component::MlpIn) => (hf("mlp.up_proj"), None),
        (_, Component::MlpOut) => (hf("mlp.down_proj"), None),
    }
}

/// The edit as a PEFT LoRA adapter (per-module ranks, alpha = rank so the scale is 1).
/// Exact when the edit has no bias deltas; returns how many bias deltas it had to leave out.
pub fn export_lora(
    model: &Transformer,
    edit: &Edit,
    base_model: &str,
    dir: &Path,
) -> Result<usize> {
    if !edit.finetuned.is_empty() {
        return Err(EngineError::InvalidInput(
            "this variant was fine-tuned before pruning: its change is not low-rank, so it has \
             no LoRA form; export a full checkpoint instead"
                .into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let cfg = &model.config;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut ranks = serde_json::Map::new();
    let mut targets = std::collections::BTreeSet::new();
    let mut dropped_bias = 0;
    // GPT-2's q, k, v share one fused module: gather their factors per module first.
    let mut fused: std::collections::BTreeMap<String, Vec<(usize, Tensor, Tensor)>> =
        Default::default();
    for m in &edit.matrices {
        dropped_bias += m.bias_delta.is_some() as usize;
        let (module, offset) = module_of(cfg.arch, m.layer, m.component, cfg.d_model);
        targets.insert(module.rsplit('.').next().expect("module path").to_string());
        match offset {
            Some(off) => fused
                .entry(module)
                .or_default()
                .push((off, m.a.clone(), m.b.clone())),
            None => {
                push_lora(&mut tensors, &mut ranks, &module, m.a.clone(), m.b.clone());
            }
        }
    }
    for (module, parts) in fused {
        let width = 3 * cfg.d_model;
        let a = Tensor::cat(&parts.iter().map(|p| p.1.clone()).collect::<Vec<_>>(), 0)?;
        let bs: Vec<Tensor> = parts
            .iter()
            .map(|(off, _, b)| b.pad_with_zeros(0, *off, width - off - b.dim(0).unwrap_or(0)))
            .collect::<candle_core::Result<_>>()?;
        push_lora(&mut tensors, &mut ranks, &module, a, Tensor::cat(&bs, 1)?);
    }
    let max_rank = ranks.values().filter_map(Value::as_u64).max().unwrap_or(1);
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": max_rank,
        "lora_alpha": max_rank,
        "rank_pattern": ranks.clone(),
        "alpha_pattern": ranks,
        "target_modules": targets.into_iter().collect::<Vec<_>>(),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": cfg.arch == Arch::Gpt2,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
    });
    write_json(&dir.join("adapter_config.json"), &config)?;
    write_tensors(&dir.join("adapter_model.safetensors"), tensors)?;
    Ok(dropped_bias)
}

fn push_lora(
    tensors: &mut Vec<(String, Tensor)>,
    ranks: &mut serde_json::Map<String, Value>,
    module: &str,
    a: Tensor,
    b: Tensor,
) {
    let rank = a.dim(0).unwrap_or(0);
    ranks.insert(module.to_string(), json!(rank));
    tensors.push((format!("base_model.model.{module}.lora_A.weight"), a));
    tensors.push((format!("base_model.model.{module}.lora_B.weight"), b));
}
