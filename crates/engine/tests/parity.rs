//! Logit and gradient parity with HF transformers on tiny random checkpoints.
//! Fixtures: tests/fixtures/<arch>/, written by scripts/make_fixtures.py.

mod common;

use common::{fixture_dir, max_abs_diff};

use candle_core::{DType, Device, Tensor};
use eigenprune_engine::{load_model, Component, LoadOptions, Trace};

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let norm = b
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (diff / norm.max(1e-30)).sqrt()
}

fn check(name: &str) {
    let dir = fixture_dir(name);
    let loaded = load_model(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let model = &loaded.model;
    let exp =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let mask: Vec<Vec<i64>> = exp["attention_mask"].to_vec2().unwrap();
    let valid: Vec<Vec<bool>> = mask
        .iter()
        .map(|r| r.iter().map(|&m| m == 1).collect())
        .collect();
    let (b, t) = ids.dims2().unwrap();

    let mut trace = Trace::new(&[Component::K]);
    let hidden = model.forward(&ids, &valid, None, Some(&mut trace)).unwrap();
    let logits = model.logits(&hidden).unwrap();

    // Logits at real positions match to 1e-4.
    let want = &exp["logits"];
    let mut worst = 0f32;
    for (row, flags) in valid.iter().enumerate() {
        for (pos, _) in flags.iter().enumerate().filter(|(_, &ok)| ok) {
            let got = logits.get(row).unwrap().get(pos).unwrap();
            let exp_row = want.get(row).unwrap().get(pos).unwrap();
            worst = worst.max(max_abs_diff(&got, &exp_row));
        }
    }
    assert!(worst < 1e-4, "{name}: logits differ by up to {worst}");

    // The same loss as the fixture script: mean next-token CE over real targets.
    let ids_v: Vec<Vec<u32>> = ids.to_vec2().unwrap();
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (row, flags) in valid.iter().enumerate() {
        for pos in 0..t - 1 {
            if flags[pos + 1] {
                rows.push((row * t + pos) as u32);
                targets.push(ids_v[row][pos + 1]);
            }
        }
    }
    let vocab = model.config.vocab_size;
    let flat = logits.reshape((b * t, vocab)).unwrap();
    let picked = flat
        .index_select(&Tensor::new(rows.as_slice(), &Device::Cpu).unwrap(), 0)
        .unwrap();
    let targets = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
    let loss = candle_nn::loss::cross_entropy(&picked, &targets).unwrap();
    let want_loss = exp["loss"].to_vec1::<f32>().unwrap()[0];
    let got_loss = loss.to_scalar::<f32>().unwrap();
    assert!(
        (got_loss - want_loss).abs() < 1e-4,
        "{name}: loss {got_loss} vs {want_loss}"
    );

    let grads = trace.backward(&loss).unwrap();
    for layer in 0..model.config.n_layers {
        let g = trace
            .output_grad(&grads, layer, Component::K)
            .expect("key gradient");
        let e = &exp[&format!("k_grad.{layer}")];
        assert_eq!(
            g.dims(),
            e.dims(),
            "{name}: key gradient shape, layer {layer}"
        );
        let err = rel_err(g, e);
        assert!(
            err < 1e-3,
            "{name}: key gradient of layer {layer} off by {err} (relative)"
        );
    }
}

#[test]
fn gpt2_matches_transformers() {
    check("gpt2");
}

#[test]
fn phi_matches_transformers() {
    check("phi");
}

#[test]
fn llama_matches_transformers() {
    check("llama");
}

#[test]
fn qwen2_matches_transformers() {
    check("qwen2");
}

#[test]
fn mistral_sliding_window_matches_transformers() {
    check("mistral");
}

#[test]
fn gemma3_local_and_global_layers_match_transformers() {
    check("gemma3");
}
