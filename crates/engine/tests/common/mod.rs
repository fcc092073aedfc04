//! Helpers shared by the engine's integration tests; each test binary uses some of them.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::Tensor;
use eigenprune_engine::attribution::{sweep, Scores, SweepSettings};
use eigenprune_engine::prune::{ranking, select, Method};
use eigenprune_engine::svd::decompose;
use eigenprune_engine::{load_model, Component, LoadOptions, LoadedModel};

/// tests/fixtures/<name>: a tiny random HF checkpoint (scripts/make_fixtures.py). A test
/// binary run away from its build tree finds them through EIGENPRUNE_FIXTURES.
pub fn fixture_dir(name: &str) -> PathBuf {
    std::env::var_os("EIGENPRUNE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures"))
        .join(name)
}

/// The fixture loaded in f32 on the CPU.
pub fn load_fixture(name: &str) -> LoadedModel {
    load_model(fixture_dir(name).to_str().unwrap(), &LoadOptions::default()).unwrap()
}

/// The device a device-neutral test runs on: the CPU, or the first GPU where
/// EIGENPRUNE_TEST_DEVICE=cuda (a CUDA build; scripts/gpu_tests.sh runs them so).
pub fn test_device() -> candle_core::Device {
    match std::env::var("EIGENPRUNE_TEST_DEVICE").as_deref() {
        Ok("cuda") => {
            candle_core::Device::new_cuda(0).expect("EIGENPRUNE_TEST_DEVICE=cuda: no GPU")
        }
        Ok("cpu") | Err(_) => candle_core::Device::Cpu,
        Ok(other) => panic!("EIGENPRUNE_TEST_DEVICE={other}: cpu or cuda"),
    }
}

/// The fixture loaded in f32 on [`test_device`].
pub fn load_fixture_on_test_device(name: &str) -> LoadedModel {
    let opts = LoadOptions {
        device: test_device(),
        ..LoadOptions::default()
    };
    load_model(fixture_dir(name).to_str().unwrap(), &opts).unwrap()
}

/// max |a - b| over all elements (f32 tensors of the same shape).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Twelve "i x 7 =" examples (the reference scores' data).
pub fn times_seven() -> Vec<eigenprune_engine::tasks::Example> {
    (0..12)
        .map(|i| eigenprune_engine::tasks::Example {
            prompt: format!("{i} x 7 ="),
            answer: format!(" {}", i * 7),
            choices: None,
            label: None,
        })
        .collect()
}

/// The scoring sweep over `examples` with no progress reporting.
pub fn sweep_all(
    m: &LoadedModel,
    examples: &[eigenprune_engine::tasks::Example],
    svds: &[eigenprune_engine::svd::SiteSvd],
    settings: &eigenprune_engine::attribution::SweepSettings,
) -> eigenprune_engine::attribution::Scores {
    eigenprune_engine::attribution::sweep(
        &m.model,
        &m.tokenizer,
        examples,
        svds,
        settings,
        &mut |_, _| true,
    )
    .unwrap()
}

/// Scores with one group per pass and with `groups` groups per pass, and the groups each
/// pass of the second sweep held.
pub fn sweep_both_ways(
    m: &LoadedModel,
    examples: &[eigenprune_engine::tasks::Example],
    comps: &[Component],
    groups: usize,
    scoring_batches: Option<usize>,
) -> (Scores, Scores, Vec<usize>) {
    let svds = decompose(&m.model, comps).unwrap();
    let longest = eigenprune_engine::memory::longest_example(&m.tokenizer, examples).unwrap();
    let plain = SweepSettings {
        pass_tokens: Some(0),
        scoring_batches,
        ..Default::default()
    };
    let batched = SweepSettings {
        pass_tokens: Some(groups * plain.batch_size * longest),
        ..plain.clone()
    };
    let run = |s: &SweepSettings, passes: &mut Vec<usize>| {
        let mut last = 0;
        sweep(
            &m.model,
            &m.tokenizer,
            examples,
            &svds,
            s,
            &mut |done, _| {
                passes.push(done - last);
                last = done;
                true
            },
        )
        .unwrap()
    };
    let mut one_each = Vec::new();
    let a = run(&plain, &mut one_each);
    assert!(one_each.iter().all(|&g| g == 1), "{one_each:?}");
    let mut passes = Vec::new();
    let b = run(&batched, &mut passes);
    let order_a = ranking(&svds, &a, Method::Attribution, 0).unwrap();
    let order_b = ranking(&svds, &b, Method::Attribution, 0).unwrap();
    for portion in [0.1, 0.2] {
        let (sa, sb) = (
            select(&svds, &order_a, portion).unwrap(),
            select(&svds, &order_b, portion).unwrap(),
        );
        assert_eq!(
            sa.pruned, sb.pruned,
            "portion {portion}: the pruned sets differ"
        );
    }
    (a, b, passes)
}

/// The largest difference of two flat score lists relative to the largest score.
pub fn relative_gap(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

#[path = "../../../../tests/common/skip.rs"]
mod skip;
#[allow(unused_imports)]
pub use skip::skip;
