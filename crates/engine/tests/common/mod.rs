//! Helpers shared by the engine's integration tests; each test binary uses some of them.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::Tensor;
use eigenprune_engine::{load_model, LoadOptions, LoadedModel};

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

#[path = "../../../../tests/common/skip.rs"]
mod skip;
#[allow(unused_imports)]
pub use skip::skip;
