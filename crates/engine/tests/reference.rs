//! Scores match an independent reference (scripts/reference_scores.py, torch + transformers,
//! written from the spec) to 1e-4 relative, and the same set is selected.

mod common;

use std::path::PathBuf;

use candle_core::Device;
use eigenprune_engine::attribution::SweepSettings;
use eigenprune_engine::prune::{ranking, select, Method};
use eigenprune_engine::svd::decompose;
use eigenprune_engine::{load_model, Component, LoadOptions};

fn check(arch: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(arch);
    let m = load_model(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let want =
        candle_core::safetensors::load(dir.join("reference_scores.safetensors"), &Device::Cpu)
            .unwrap();
    let examples = common::times_seven();
    let svds = decompose(&m.model, &[Component::K]).unwrap();
    let settings = SweepSettings {
        batch_size: 4,
        seed: 0,
        shuffle: false,
        ..Default::default()
    };
    let scores = common::sweep_all(&m, &examples, &svds, &settings);
    for (layer, site) in scores.scores.iter().enumerate() {
        let exp: Vec<Vec<f32>> = want[&format!("scores.{layer}")].to_vec2().unwrap();
        let scale = exp.iter().flatten().fold(0f32, |a, &b| a.max(b.abs()));
        for (h, (got_h, exp_h)) in site.iter().zip(&exp).enumerate() {
            for (i, (g, e)) in got_h.iter().zip(exp_h).enumerate() {
                assert!(
                    (g - e).abs() <= 1e-4 * scale,
                    "{arch} layer {layer} head {h} value {i}: {g} vs reference {e} (scale {scale})"
                );
            }
        }
        let mean: Vec<f32> = want[&format!("input_mean.{layer}")].to_vec1().unwrap();
        for (g, e) in scores.input_means[layer].iter().zip(&mean) {
            assert!(
                (g - e).abs() < 1e-4,
                "{arch} layer {layer}: input mean {g} vs {e}"
            );
        }
    }
    let order = ranking(&svds, &scores, Method::Attribution, 0).unwrap();
    let sel = select(&svds, &order, 0.25).unwrap();
    let mut flat = Vec::new();
    let mut k = 0i64;
    for site in &sel.pruned {
        for head in site {
            for &p in head {
                if p {
                    flat.push(k);
                }
                k += 1;
            }
        }
    }
    let exp_sel: Vec<i64> = want["selected"].to_vec1().unwrap();
    assert_eq!(
        flat, exp_sel,
        "{arch}: the selected set differs from the reference's"
    );
}

#[test]
fn llama_scores_match_the_reference() {
    check("llama");
}

#[test]
fn gpt2_scores_match_the_reference() {
    check("gpt2");
}
