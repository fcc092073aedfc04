//! GGUF files (llama.cpp; Llama and Gemma-3): dequantised to dense f32 weights under HF tensor
//! names, with an HF-style config and the tokenizer rebuilt from the metadata. On the CPU the
//! linear maps' quantised blocks are kept too, for decoding: the file's own where candle's
//! dot product for them is vectorised (with the vendored candle's AVX2 Q4_1 and Q5_0 kernels),
//! else the dense values re-quantised to Q8_0.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value as GValue};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::chat::ChatTemplate;
use crate::tokenizer::{from_gguf_bpe, from_gguf_spm, GgufBpe, GgufSpm};
use crate::{EngineError, Result};

pub struct GgufModel {
    /// An HF config.json equivalent.
    pub config: Value,
    /// Dense tensors under HF names, in the HF layout (q/k rows un-permuted).
    pub tensors: HashMap<String, Tensor>,
    /// On the CPU, quantised blocks of the linear maps and the token embedding (a tied output
    /// projection's), under the same names and layout: the file's own, or Q8_0 where candle
    /// has no vectorised dot product for the file's format (Q5_1; Q4_1 and Q5_0 without AVX2).
    pub quantized: HashMap<String, Arc<QTensor>>,
    pub tokenizer: Tokenizer,
    /// `tokenizer.chat_template`, when the file has one.
    pub chat_template: Option<ChatTemplate>,
}

/// Reads a GGUF file fully onto `device`.
pub fn load(path: &Path, device: &Device) -> Result<GgufModel> {
    let bad = |reason: String| EngineError::BadGguf {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| bad(e.to_string()))?;
    let meta = Meta {
        content: &content,
        bad: &bad,
    };
    let arch = meta.str("general.architecture")?;
    if arch != "llama" && arch != "gemma3" {
        return Err(EngineError::UnsupportedArchitecture {
            found: format!("GGUF `{arch}` (supported: llama, gemma3)"),
        });
    }
    let key = |k: &str| format!("{arch}.{k}");
    let n_heads = meta.u32(&key("attention.head_count"))? as usize;
    let n_kv = meta
        .u32(&key("attention.head_count_kv"))
        .map_or(n_heads, |n| n as usize);
    let d_model = meta.u32(&key("embedding_length"))? as usize;
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let tied = !content.tensor_infos.contains_key("output.weight");
    let mut config = json!({
        "vocab_size": tokens.len(),
        "hidden_size": d_model,
        "intermediate_size": meta.u32(&key("feed_forward_length"))?,
        "num_hidden_layers": meta.u32(&key("block_count"))?,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": meta.u32(&key("attention.key_length")).map_or(d_model / n_heads, |n| n as usize),
        "rms_norm_eps": meta.f32(&key("attention.layer_norm_rms_epsilon"))?,
        "max_position_embeddings": meta.u32(&key("context_length"))?,
        "tie_word_embeddings": tied,
        "bos_token_id": meta.u32("tokenizer.ggml.bos_token_id").ok(),
        "eos_token_id": meta.u32("tokenizer.ggml.eos_token_id").ok(),
    });
    let extra = if arch == "llama" {
        json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "rope_theta": meta.f32("llama.rope.freq_base").unwrap_or(10_000.0),
        })
    } else {
        // llama.cpp fixes what the GGUF leaves out: local layers use base 10000, every sixth
        // layer is global, and the query scale is head_dim (query_pre_attn_scalar).
        let head_dim = config["head_dim"].clone();
        json!({
            "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
            "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": head_dim,
            "sliding_window": meta.u32("gemma3.attention.sliding_window")?,
            "sliding_window_pattern": 6,
            "rope_theta": meta.f32("gemma3.rope.freq_base").unwrap_or(1_000_000.0),
            "rope_local_base_freq": 10_000.0,
            "pad_token_id": meta.u32("tokenizer.ggml.padding_token_id").ok(),
        })
    };
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    let token_types: Vec<i32> = meta
        .vec("tokenizer.ggml.token_type")?
        .iter()
        .map(GValue::to_i32)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(format!("tokenizer.ggml.token_type: {e}")))?;
    let tokenizer = match meta.str("tokenizer.ggml.model")? {
        "gpt2" => from_gguf_bpe(&GgufBpe {
            tokens: &tokens,
            token_types: &token_types,
            merges: &meta.strings("tokenizer.ggml.merges")?,
            pre: meta.str("tokenizer.ggml.pre").unwrap_or("default"),
        })?,
        "llama" => from_gguf_spm(&GgufSpm {
            tokens: &tokens,
            scores: &meta.f32s("tokenizer.ggml.scores")?,
            token_types: &token_types,
            add_bos: meta
                .get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.to_bool().map_err(|e| bad(e.to_string())))
                .unwrap_or(true),
            bos_id: meta.u32("tokenizer.ggml.bos_token_id").ok(),
            unk_id: meta.u32("tokenizer.ggml.unknown_token_id").ok(),
        })?,
        other => {
            return Err(bad(format!(
                "tokenizer model `{other}` is not supported (byte-level BPE `gpt2`, SentencePiece `llama`)"
            )))
        }
    };

    let mut tensors = HashMap::new();
    let mut quantized = HashMap::new();
    for name in content.tensor_infos.keys() {
        let qt = content
            .tensor(&mut reader, name, device)
            .map_err(|e| bad(format!("tensor {name}: {e}")))?;
        let mut t = qt.dequantize(device)?;
        let Some(hf) = hf_name(arch, name) else {
            continue;
        };
        let heads = match name {
            _ if arch != "llama" => None,
            n if n.ends_with("attn_q.weight") => Some(n_heads),
            n if n.ends_with("attn_k.weight") => Some(n_kv),
            _ => None,
        };
        let qt_dtype = qt.dtype();
        let block_quantized =
            !matches!(qt_dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        let served = hf.ends_with("_proj.weight")
            || hf == "lm_head.weight"
            || hf == "model.embed_tokens.weight";
        let keep = device.is_cpu() && block_quantized && served;
        if keep && has_simd_dot(qt_dtype) {
            let qt = match heads {
                Some(h) => unpermute_rows(&qt, h)?,
                None => qt,
            };
            quantized.insert(hf.clone(), Arc::new(qt));
        }
        if let Some(h) = heads {
            t = unpermute(&t, h)?;
        }
        let whole_blocks = t.dims().last().is_some_and(|d| d % 32 == 0);
        if keep && !has_simd_dot(qt_dtype) && whole_blocks {
            // candle's dot product for this block format is scalar (slower than the f32
            // GEMV): the dense values re-quantised to Q8_0, whose kernel is vectorised.
            quantized.insert(
                hf.clone(),
                Arc::new(QTensor::quantize(&t, GgmlDType::Q8_0)?),
            );
        }
        if arch == "gemma3" && name.ends_with("norm.weight") {
            // llama.cpp stores Gemma's norm scale as 1 + w; HF checkpoints store w.
            t = (t - 1.0)?;
        }
        tensors.insert(hf, t);
    }
    let token = |key: &str| {
        meta.u32(key)
            .ok()
            .and_then(|id| tokens.get(id as usize).cloned())
            .unwrap_or_default()
    };
    let chat_template = meta
        .str("tokenizer.chat_template")
        .ok()
        .map(|source| ChatTemplate {
            source: source.to_string(),
            bos_token: token("tokenizer.ggml.bos_token_id"),
            eos_token: token("tokenizer.ggml.eos_token_id"),
        });
    Ok(GgufModel {
        config,
        tensors,
        quantized,
        tokenizer,
        chat_template,
    })
}

/// llama.cpp's converter permutes q/k rows per head for interleaved rotary:
/// w.reshape(h, 2, d/2, in).swapaxes(1, 2). This undoes it.
fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, d_in) = w.dims2()?;
    let half = out / heads / 2;
    Ok(w.reshape((heads, half, 2, d_in))?
        .transpose(1, 2)?
        .reshape((out, d_in))?
        .contiguous()?)
}

/// Whether candle's CPU matmul has a vectorised (AVX / NEON) dot product for `dtype`'s blocks.
/// Q4_1's and Q5_0's are the vendored candle's AVX2 kernels (vendor/README.md), scalar
/// elsewhere.
fn has_simd_dot(dtype: GgmlDType) -> bool {
    use GgmlDType::*;
    match dtype {
        Q4_0 | Q8_0 | Q2K | Q3K | Q4K | Q5K | Q6K | Q8K => true,
        Q4_1 | Q5_0 => avx2_fma(),
        _ => false,
    }
}

fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`unpermute`] of a quantised [out, in] matrix on the CPU: each row's blocks moved whole.
fn unpermute_rows(q: &QTensor, heads: usize) -> Result<QTensor> {
    let (out, _) = q.shape().dims2()?;
    let data = q.data()?;
    let row = data.len() / out;
    let half = out / heads / 2;
    let mut moved = Vec::with_capacity(data.len());
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let from = h * 2 * half + i * 2 + j;
                moved.extend_from_slice(&data[from * row..(from + 1) * row]);
            }
        }
    }
    let storage = QStorage::from_data(Cow::Owned(moved), &Device::Cpu, q.dtype())?;
    Ok(QTensor::new(storage, q.shape().clone())?)
}

/// llama.cpp tensor names -> HF names (Llama's, or Gemma-3's for `gemma3`).
fn hf_name(arch: &str, gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let (part, kind) = tail.rsplit_once('.')?;
    let hf = match (arch, part) {
        ("gemma3", "ffn_norm") => "pre_feedforward_layernorm",
        ("gemma3", "post_attention_norm") => "post_attention_layernorm",
        ("gemma3", "post_ffw_norm") => "post_feedforward_layernorm",
        ("gemma3", "attn_q_norm") => "self_attn.q_norm",
        ("gemma3", "attn_k_norm") => "self_attn.k_norm",
        (_, part) => match part {
            "attn_norm" => "input_layernorm",
            "ffn_norm" => "post_attention_layernorm",
            "attn_q" => "self_attn.q_proj",
            "attn_k" => "self_attn.k_proj",
            "attn_v" => "self_attn.v_proj",
            "attn_output" => "self_attn.o_proj",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_down" => "mlp.down_proj",
            _ => return None,
        },
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

struct Meta<'a, F: Fn(String) -> EngineError> {
    content: &'a Content,
    bad: &'a F,
}

impl<F: Fn(String) -> EngineError> Meta<'_, F> {
    fn get(&self, key: &str) -> Result<&GValue> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| (self.bad)(format!("metadata lacks `{key}`")))
    }
    fn u32(&self, key: &str) -> Result<u32> {
        let v = self.get(key)?;
        v.to_u32()
            .or_else(|_| v.to_u64().map(|n| n as u32))
            .or_else(|_| v.to_i32().map(|n| n as u32))
            .map_err(|e| (self.bad)(format!("`{key}`: {e}")))
    }
    fn f32(&self, key: &str) -> Result<f32> {
        self.get(key)?
            .to_f32()
            .map_err(|e| (self.bad)(format!("`{key}`: {e}")))
    }
    fn str(&self, key: &str) -> Result<&str> {
        self.get(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|e| (self.bad)(format!("`{key}`: {e}")))
    }
    fn vec(&self, key: &str) -> Result<&Vec<GValue>> {
        self.get(key)?
            .to_vec()
            .map_err(|e| (self.bad)(format!("`{key}`: {e}")))
    }
    fn strings(&self, key: &str) -> Result<Vec<String>> {
        self.vec(key)?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| (self.bad)(format!("`{key}`: {e}")))
    }
    fn f32s(&self, key: &str) -> Result<Vec<f32>> {
        self.vec(key)?
            .iter()
            .map(GValue::to_f32)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| (self.bad)(format!("`{key}`: {e}")))
    }
}
