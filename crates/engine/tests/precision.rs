//! The sweep's precision setting: a bf16 sweep (f32 statistics, loss and scores) ranks the
//! singular values as the f32 sweep does, on every fixture architecture; tf32 is f32 on the
//! CPU.

mod common;

use eigenprune_engine::attribution::{sweep, Precision, SweepSettings};
use eigenprune_engine::bench_precision::{jaccard, spearman};
use eigenprune_engine::prune::{ranking, select, Method};
use eigenprune_engine::svd::decompose;
use eigenprune_engine::Component;

#[test]
fn bf16_sweeps_rank_as_f32_on_every_fixture() {
    let task = eigenprune_engine::tasks::builtin("int-mult").unwrap();
    for arch in ["gpt2", "phi", "llama", "mistral", "qwen2", "gemma3"] {
        let m = common::load_fixture(arch);
        let svds = decompose(&m.model, &[Component::K, Component::MlpIn]).unwrap();
        let run = |precision| {
            let s = SweepSettings {
                precision: Some(precision),
                scoring_batches: Some(24),
                ..Default::default()
            };
            sweep(
                &m.model,
                &m.tokenizer,
                &task.train,
                &svds,
                &s,
                &mut |_, _| true,
            )
            .unwrap()
        };
        let (f32s, bf16s, tf32s) = (
            run(Precision::F32),
            run(Precision::Bf16),
            run(Precision::Tf32),
        );
        assert_eq!(bf16s.precision, Precision::Bf16);
        assert_eq!(f32s.flat(), tf32s.flat(), "{arch}: tf32 on the CPU is f32");
        let rho = spearman(&f32s.flat(), &bf16s.flat());
        let (o32, o16) = (
            ranking(&svds, &f32s, Method::Attribution, 0).unwrap(),
            ranking(&svds, &bf16s, Method::Attribution, 0).unwrap(),
        );
        let overlaps: Vec<f64> = [0.1, 0.2]
            .iter()
            .map(|&p| {
                jaccard(
                    &select(&svds, &o32, p).unwrap(),
                    &select(&svds, &o16, p).unwrap(),
                )
            })
            .collect();
        eprintln!("{arch}: Spearman {rho:.5}, Jaccard at 0.1 / 0.2: {overlaps:.3?}");
        assert!(rho >= 0.999, "{arch}: Spearman {rho}");
        assert_eq!(f32s.tokens, bf16s.tokens);
    }
}
