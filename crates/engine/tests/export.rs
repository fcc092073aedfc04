//! An edited model exported as a full HF checkpoint reloads with the same logits; the files are
//! left in target/export-check/<arch>/ with the logits, for scripts/check_export.py (HF side).

mod common;

use common::max_abs_diff;

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use eigenprune_engine::attribution::SweepSettings;
use eigenprune_engine::export::{export_checkpoint, export_lora};
use eigenprune_engine::prune::{build_edit, ranking, select, BiasMode, Method};
use eigenprune_engine::svd::decompose;
use eigenprune_engine::tasks::parse_jsonl;
use eigenprune_engine::{load_model, Component, LoadOptions, Transformer};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn logits(model: &Transformer, ids: &Tensor) -> Tensor {
    let (b, t) = ids.dims2().unwrap();
    model
        .logits(
            &model
                .forward(ids, &vec![vec![true; t]; b], None, None)
                .unwrap(),
        )
        .unwrap()
}

/// What scripts/check_export.py compares HF's logits against.
fn save_expected(ids: &Tensor, logits: Tensor, dir: &std::path::Path) {
    let ids = ids.to_dtype(candle_core::DType::I64).unwrap();
    let tensors = [
        ("input_ids".to_string(), ids),
        ("logits".to_string(), logits),
    ];
    candle_core::safetensors::save(
        &tensors.into_iter().collect(),
        dir.join("edited_logits.safetensors"),
    )
    .unwrap();
}

fn roundtrip(arch: &str, components: &[Component]) {
    let fixture = root().join("tests/fixtures").join(arch);
    let m = load_model(fixture.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let rows: String = (0..10)
        .map(|i| {
            format!(
                "{{\"prompt\": \"{i} + 4 =\", \"answer\": \" {}\"}}\n",
                i + 4
            )
        })
        .collect();
    let examples = parse_jsonl(&rows).unwrap();
    let svds = decompose(&m.model, components).unwrap();
    let settings = SweepSettings {
        seed: 1,
        ..Default::default()
    };
    let scores = common::sweep_all(&m, &examples, &svds, &settings);
    let order = ranking(&svds, &scores, Method::Attribution, 1).unwrap();
    let sel = select(&svds, &order, 0.3).unwrap();
    let edit = build_edit(&m.model, &svds, &sel, &scores.input_means, BiasMode::Mean).unwrap();
    let mut edited = m.model.clone();
    edit.apply(&mut edited).unwrap();

    let out = root().join("target/export-check").join(arch);
    let _ = std::fs::remove_dir_all(&out);
    export_checkpoint(&edited, &m.config_json, &m.tokenizer, &out).unwrap();
    let ids = Tensor::new(&[[3u32, 17, 42, 99, 5, 250, 8]], &Device::Cpu).unwrap();
    let want = logits(&edited, &ids);
    let reloaded = load_model(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let got = logits(&reloaded.model, &ids);
    let d = max_abs_diff(&got, &want);
    assert!(
        d < 1e-5,
        "{arch}: exported checkpoint's logits differ by {d}"
    );
    let base = logits(&m.model, &ids);
    let moved = max_abs_diff(&base, &want);
    assert!(moved > 0.0, "{arch}: the edit changed nothing");
    save_expected(&ids, want, &out);
    // The LoRA adapter of an edit without bias deltas.
    let no_bias = build_edit(&m.model, &svds, &sel, &scores.input_means, BiasMode::None).unwrap();
    let lora = root()
        .join("target/export-check")
        .join(format!("{arch}-lora"));
    let _ = std::fs::remove_dir_all(&lora);
    export_lora(&m.model, &no_bias, &format!("tests/fixtures/{arch}"), &lora).unwrap();
    assert!(
        lora.join("adapter_config.json").exists()
            && lora.join("adapter_model.safetensors").exists()
    );
    let mut lora_model = m.model.clone();
    no_bias.apply(&mut lora_model).unwrap();
    save_expected(&ids, logits(&lora_model, &ids), &lora);
}

#[test]
fn gpt2_export_roundtrips() {
    roundtrip("gpt2", &[Component::K, Component::V, Component::MlpIn]);
}

#[test]
fn phi_export_roundtrips() {
    roundtrip("phi", &[Component::K, Component::O]);
}

#[test]
fn llama_export_roundtrips() {
    roundtrip("llama", &[Component::K, Component::MlpOut]);
}

#[test]
fn qwen2_export_roundtrips() {
    roundtrip("qwen2", &[Component::K, Component::Q]);
}

#[test]
fn gemma3_export_roundtrips() {
    // Norms leave as w (the engine holds 1 + w); the key bias edit turns on attention_bias.
    roundtrip("gemma3", &[Component::K, Component::V]);
}
