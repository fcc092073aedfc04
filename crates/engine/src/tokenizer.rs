//! Tokenizers: HF `tokenizer.json` files, and ones rebuilt from GGUF metadata.

use std::path::Path;

use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::{EngineError, Result};

pub fn from_file(path: &Path) -> Result<Tokenizer> {
    if !path.exists() {
        return Err(EngineError::MissingFile(path.to_path_buf()));
    }
    Tokenizer::from_file(path)
        .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))
}

/// What a GGUF file says about its byte-level BPE tokenizer (`tokenizer.ggml.model = gpt2`).
pub struct GgufBpe<'a> {
    pub tokens: &'a [String],
    pub token_types: &'a [i32],
    pub merges: &'a [String],
    /// `tokenizer.ggml.pre`: which pre-tokenizer llama.cpp applies.
    pub pre: &'a str,
}

/// GGUF token type of control tokens (llama.cpp's LLAMA_TOKEN_TYPE_CONTROL).
const CONTROL: i32 = 3;

/// Builds the `tokenizer.json` that HF ships for the same model, then loads it.
pub fn from_gguf_bpe(spec: &GgufBpe) -> Result<Tokenizer> {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = match spec.pre {
        "default" | "gpt2" => byte_level.clone(),
        "smollm" | "starcoder" | "refact" => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level.clone()]
        }),
        other => {
            return Err(EngineError::Tokenizer(format!(
                "GGUF pre-tokenizer `{other}` is not supported (supported: default, gpt2, smollm, starcoder, refact)"
            )))
        }
    };
    let vocab: serde_json::Map<String, Value> = spec
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<Value> = spec
        .tokens
        .iter()
        .zip(spec.token_types)
        .enumerate()
        .filter(|(_, (_, &ty))| ty == CONTROL)
        .map(|(id, (content, _))| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": byte_level.clone(),
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "vocab": vocab, "merges": spec.merges,
        }
    });
    doc.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| EngineError::Tokenizer(format!("building the GGUF tokenizer: {e}")))
}
