//! The real Gemma-3-270M GGUF (fetched by scripts/fetch-gemma3.sh): logits match HF transformers (its own GGUF loader, float32) on the
//! same token ids, the SentencePiece tokenizer rebuilt from the GGUF tokenizes as Gemma's does,
//! and greedy decoding knows where the Eiffel Tower is. Skips, saying so, without the file.
//! Reference: tests/fixtures/gemma3_real.safetensors, by scripts/gemma3_reference.py.

mod common;

use common::max_abs_diff;

use std::path::PathBuf;

use candle_core::{DType, Device};
use eigenprune_engine::generate::{generate, SamplingParams};
use eigenprune_engine::{load_model, LoadOptions, LoadedModel};

fn load() -> Option<LoadedModel> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/gemma-3-270m-q4_k_m.gguf");
    if !path.exists() {
        common::skip(&format!(
            "{} not found; run scripts/fetch-gemma3.sh",
            path.display()
        ));
        return None;
    }
    Some(load_model(path.to_str().unwrap(), &LoadOptions::default()).unwrap())
}

/// One test: loading the model takes seconds, so every check shares it.
#[test]
fn gemma3_real_model() {
    let Some(m) = load() else { return };
    let c = &m.model.config;
    assert_eq!(
        (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim),
        (18, 640, 4, 1, 256)
    );
    let global: Vec<usize> = (0..c.n_layers).filter(|&l| !c.is_local(l)).collect();
    assert_eq!(global, vec![5, 11, 17]);

    // Logits: HF's ids through our forward, against HF's top-16 logits at every position.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let reference =
        candle_core::safetensors::load(dir.join("gemma3_real.safetensors"), &Device::Cpu).unwrap();
    let mut worst = 0f32;
    for i in 0.. {
        let Some(ids) = reference.get(&format!("ids.{i}")) else {
            assert!(i >= 4, "the reference has {i} prompts");
            break;
        };
        let ids = ids.to_dtype(DType::U32).unwrap().unsqueeze(0).unwrap();
        let t = ids.dim(1).unwrap();
        let hidden = m.model.forward(&ids, &[vec![true; t]], None, None).unwrap();
        let logits = m.model.logits(&hidden).unwrap().squeeze(0).unwrap();
        let top_ids = reference[&format!("top_ids.{i}")]
            .to_dtype(DType::U32)
            .unwrap();
        let ours = logits.gather(&top_ids, 1).unwrap();
        let want = &reference[&format!("top_logits.{i}")];
        worst = worst.max(max_abs_diff(&ours, want));
        let argmax: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
        let hf_argmax: Vec<u32> = top_ids
            .narrow(1, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(argmax, hf_argmax, "prompt {i}: greedy tokens differ");
    }
    assert!(
        worst < 2e-3,
        "logits differ from transformers by up to {worst}"
    );
    eprintln!("largest logit difference from transformers: {worst:.2e}");

    // The tokenizer: BOS first, whole words as SentencePiece merges them, digits one by one,
    // user-defined whitespace pieces whole, and an exact round trip.
    let tok = &m.tokenizer;
    let pieces = |text: &str| tok.encode(text, true).unwrap().get_tokens().to_vec();
    assert_eq!(
        pieces("The capital of France is"),
        ["<bos>", "The", "▁capital", "▁of", "▁France", "▁is"]
    );
    assert_eq!(
        pieces("12 x 7 ="),
        ["<bos>", "1", "2", "▁x", "▁", "7", "▁="]
    );
    for text in [
        "  two spaces,\ttabs, café, 東京, and emoji 🙂!",
        "Premise: The cat sat on the mat.\nHypothesis: A cat sat.\nAnswer:",
    ] {
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids.get_ids()[0], 2, "{text:?} starts with <bos>");
        assert_eq!(tok.decode(ids.get_ids(), true).unwrap(), text);
    }

    let prompt = tok
        .encode("The Eiffel Tower is located in the city of", true)
        .unwrap();
    let params = SamplingParams {
        max_tokens: 3,
        ..Default::default()
    };
    let (ids, _) = generate(&m.model, prompt.get_ids(), &params, |_| true).unwrap();
    let text = tok.decode(&ids, true).unwrap();
    assert!(text.contains("Paris"), "continuation was {text:?}");
}
