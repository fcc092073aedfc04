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
    let vocab = vocab_json(spec.tokens);
    let added = added_tokens(spec.tokens, spec.token_types, &[CONTROL]);
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

/// What a GGUF file says about its SentencePiece BPE tokenizer (`tokenizer.ggml.model = llama`,
/// as Gemma's): pieces with scores, no merges.
pub struct GgufSpm<'a> {
    pub tokens: &'a [String],
    pub scores: &'a [f32],
    pub token_types: &'a [i32],
    pub add_bos: bool,
    pub bos_id: Option<u32>,
    pub unk_id: Option<u32>,
}

/// GGUF token types (llama.cpp's LLAMA_TOKEN_TYPE_*).
const NORMAL: i32 = 1;
const USER_DEFINED: i32 = 4;

/// Builds the `tokenizer.json` HF's converter writes for a SentencePiece BPE model (spaces as
/// "▁", byte fallback, no pre-tokenizer), with merges recovered from the piece scores as HF's
/// SentencePieceExtractor does: every split of a piece into two pieces, the best-scored piece
/// merging first. User-defined pieces match whole; control pieces are special.
pub fn from_gguf_spm(spec: &GgufSpm) -> Result<Tokenizer> {
    let n = spec.tokens.len();
    if spec.scores.len() != n || spec.token_types.len() != n {
        return Err(EngineError::Tokenizer(
            "GGUF tokens, scores and token types differ in length".into(),
        ));
    }
    let id_of: std::collections::HashMap<&str, usize> = spec
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // (score of the merged piece, left id, right id) for every NORMAL piece's splits.
    let mut merges: Vec<(f32, usize, usize)> = Vec::new();
    for (id, piece) in spec.tokens.iter().enumerate() {
        if spec.token_types[id] != NORMAL {
            continue;
        }
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if let (Some(&li), Some(&ri)) = (id_of.get(l), id_of.get(r)) {
                merges.push((spec.scores[id], li, ri));
            }
        }
    }
    // Best score first; among equals, the order of the halves' ids (HF's tie-break).
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    let merges: Vec<[&str; 2]> = merges
        .iter()
        .map(|&(_, l, r)| [spec.tokens[l].as_str(), spec.tokens[r].as_str()])
        .collect();
    let vocab = vocab_json(spec.tokens);
    let added = added_tokens(spec.tokens, spec.token_types, &[CONTROL, USER_DEFINED]);
    let post_processor = match spec.bos_id.filter(|_| spec.add_bos) {
        Some(bos) => {
            let name = &spec.tokens[bos as usize];
            json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": name, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {name: {"id": name, "ids": [bos], "tokens": [name]}}
            })
        }
        None => Value::Null,
    };
    let unk = spec.unk_id.map(|u| spec.tokens[u as usize].clone());
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": null,
        "post_processor": post_processor,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"}
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        }
    });
    doc.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| EngineError::Tokenizer(format!("building the GGUF tokenizer: {e}")))
}

/// `{piece: id}` for a tokenizer.json model.
fn vocab_json(tokens: &[String]) -> serde_json::Map<String, Value> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect()
}

/// The pieces of the given GGUF types as tokenizer.json added tokens, matched whole before the
/// model runs; control pieces are special (dropped when decoding with skip_special_tokens).
fn added_tokens(tokens: &[String], types: &[i32], kinds: &[i32]) -> Vec<Value> {
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (_, ty))| kinds.contains(ty))
        .map(|(id, (content, &ty))| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": ty == CONTROL})
        })
        .collect()
}
