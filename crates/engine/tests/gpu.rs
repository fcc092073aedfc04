//! The GPU paths agree with the CPU's. Needs a CUDA build and a GPU:
//! `cargo test --release --features cuda -p eigenprune-engine --test gpu` (build the test binary
//! with `--no-run` where there is no GPU and run it on one; scripts/gpu_tests.sh does both).
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device};
use common::fixture_dir;
use eigenprune_engine::attribution::{Precision, SweepSettings};
use eigenprune_engine::svd::{agreement, decompose, decompose_on, SvdBackend};
use eigenprune_engine::{load_model, Component, LoadOptions, LoadedModel};

const ARCHS: [&str; 6] = ["gpt2", "phi", "llama", "mistral", "qwen2", "gemma3"];

fn load(name: &str, device: &Device) -> LoadedModel {
    let opts = LoadOptions {
        device: device.clone(),
        dtype: DType::F32,
        quantized: false,
    };
    load_model(fixture_dir(name).to_str().unwrap(), &opts).unwrap()
}

/// The kernels compile (NVRTC): where they do not, the composites run and every other test
/// here would pass without them.
#[test]
fn own_kernels_compile() {
    assert!(eigenprune_engine::device::own_kernels_compile());
}

#[test]
fn cusolver_svd_matches_cpu_svd() {
    let gpu = Device::new_cuda(0).unwrap();
    // Every component: tall (q, k, v, mlp_out) and wide (o, mlp_in) head matrices, LayerNorm
    // (centred) and RMSNorm folds.
    let all = [
        Component::Q,
        Component::K,
        Component::V,
        Component::O,
        Component::MlpIn,
        Component::MlpOut,
    ];
    for arch in ARCHS {
        let m = load(arch, &gpu);
        // Per-head maps always on cuSOLVER; `decompose` may fall back per component (the
        // rank-deficient LayerNorm-folded MLP input maps), and must agree all the same.
        let heads = &all[..4];
        let strict = decompose_on(&m.model, heads, SvdBackend::Cusolver).unwrap();
        let on_cpu = decompose_on(&m.model, heads, SvdBackend::Cpu).unwrap();
        let auto = decompose(&m.model, &all).unwrap();
        let auto_cpu = decompose_on(&m.model, &all, SvdBackend::Cpu).unwrap();
        for (what, a) in [
            (
                "per-head maps on cuSOLVER",
                agreement(&strict, &on_cpu).unwrap(),
            ),
            (
                "every map, decompose()",
                agreement(&auto, &auto_cpu).unwrap(),
            ),
        ] {
            eprintln!("{arch} {what}: {a:?}");
            assert!(a.heads > 0);
            assert!(
                a.max_sigma_rel < 1e-4,
                "{arch} {what}: singular values differ: {a:?}"
            );
            assert!(
                a.max_angle_deg < 1e-2,
                "{arch} {what}: subspaces differ: {a:?}"
            );
        }
    }
}

/// The GPU's f32 sweep (its fused backward ops and score kernels) against the CPU's: every
/// score and input mean, for each aggregate and input mode, at a folded site (k: the
/// normalised residual) and a plain one (o).
#[test]
fn sweep_on_gpu_matches_cpu() {
    use eigenprune_engine::attribution::{Aggregate, InputMode};
    let gpu = Device::new_cuda(0).unwrap();
    let examples = common::times_seven();
    let variants = [
        (Aggregate::Max, InputMode::Normed),
        (Aggregate::Mean, InputMode::ResidPre),
        (Aggregate::MeanAbs, InputMode::Normed),
    ];
    for arch in ARCHS {
        let models = [load(arch, &Device::Cpu), load(arch, &gpu)];
        let comps = [Component::K, Component::O];
        let svds: Vec<_> = models
            .iter()
            .map(|m| decompose_on(&m.model, &comps, SvdBackend::Cpu).unwrap())
            .collect();
        for (aggregate, input) in variants {
            let settings = SweepSettings {
                batch_size: 4,
                precision: Some(Precision::F32),
                aggregate,
                input,
                ..Default::default()
            };
            let [cpu, gpu_s] =
                [0, 1].map(|i| common::sweep_all(&models[i], &examples, &svds[i], &settings));
            let worst_of = |a: &[f32], b: &[f32]| {
                let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
                let worst = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                (worst, scale)
            };
            let (worst, scale) = worst_of(&cpu.flat(), &gpu_s.flat());
            eprintln!(
                "{arch} {aggregate:?} {input:?}: max |cpu - gpu| = {worst:e} of scale {scale:e}"
            );
            assert!(
                worst <= 1e-4 * scale,
                "{arch} {aggregate:?} {input:?}: {worst} vs scale {scale}"
            );
            let means = |s: &eigenprune_engine::attribution::Scores| s.input_means.concat();
            let (worst, scale) = worst_of(&means(&cpu), &means(&gpu_s));
            assert!(
                worst <= 1e-4 * scale,
                "{arch}: input means differ by {worst} of {scale}"
            );
            assert_eq!(cpu.tokens, gpu_s.tokens);
        }
    }
}

/// The GPU's default precision (TF32) and bf16 (f32 statistics and scores; the backward
/// kernels in bf16) rank every singular value as the CPU's f32 sweep does (Spearman >= 0.999
/// on the fixtures), with the fused ops' backward on the device.
#[test]
fn gpu_sweeps_rank_as_cpu_f32() {
    use eigenprune_engine::bench_precision::spearman;
    let gpu = Device::new_cuda(0).unwrap();
    let task = eigenprune_engine::tasks::builtin("int-mult").unwrap();
    for arch in ARCHS {
        let cpu = load(arch, &Device::Cpu);
        let on_gpu = load(arch, &gpu);
        let comps = [Component::K, Component::MlpIn];
        let svds = decompose_on(&cpu.model, &comps, SvdBackend::Cpu).unwrap();
        let gpu_svds = decompose_on(&on_gpu.model, &comps, SvdBackend::Cpu).unwrap();
        let settings = |precision| SweepSettings {
            scoring_batches: Some(24),
            precision,
            ..Default::default()
        };
        let reference = common::sweep_all(&cpu, &task.train, &svds, &settings(None));
        assert_eq!(reference.precision, Precision::F32);
        for precision in [None, Some(Precision::Bf16)] {
            let s = common::sweep_all(&on_gpu, &task.train, &gpu_svds, &settings(precision));
            let want = precision.unwrap_or(eigenprune_engine::attribution::GPU_PRECISION);
            assert_eq!(s.precision, want);
            let rho = spearman(&reference.flat(), &s.flat());
            eprintln!("{arch}: Spearman of GPU {want:?} and CPU f32 scores: {rho:.5}");
            assert!(rho >= 0.999, "{arch} {want:?}: Spearman {rho}");
        }
    }
}

/// The row statistics kernel (log-sum-exp, first argmax) against the CPU's, in f32 and bf16,
/// at a vocabulary of GPT-2's size and one of Gemma-3's, with ties for the maximum.
#[test]
fn row_stats_on_gpu_match_cpu() {
    use candle_core::Tensor;
    use eigenprune_engine::row_stats::{pick, row_stats};
    let gpu = Device::new_cuda(0).unwrap();
    for v in [50_257usize, 262_144] {
        let rows = 37;
        let mut data: Vec<f32> = (0..rows * v)
            .map(|i| ((i as u64 * 2_654_435_761 % 100_003) as f32 / 9_000.0).sin() * 12.0)
            .collect();
        // Row 1: the maximum twice, far apart (the first index must win on both devices).
        data[v + 7] = 30.0;
        data[v + v - 3] = 30.0;
        let cpu = Tensor::from_vec(data, (rows, v), &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let c = cpu.to_dtype(dtype).unwrap();
            let g = c.to_device(&gpu).unwrap();
            let (sc, sg) = (row_stats(&c).unwrap(), row_stats(&g).unwrap());
            assert_eq!(sc.argmax, sg.argmax, "v {v} {dtype:?}");
            assert_eq!(sg.argmax[1], 7, "v {v} {dtype:?}: the first maximum");
            let worst = sc
                .lse
                .iter()
                .zip(&sg.lse)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "v {v} {dtype:?}: lse differs by {worst}");
            let rows_at: Vec<u32> = (0..rows as u32).collect();
            let tokens: Vec<u32> = (0..rows as u32).map(|r| r * 101 % v as u32).collect();
            assert_eq!(
                pick(&c, &rows_at, &tokens).unwrap(),
                pick(&g, &rows_at, &tokens).unwrap()
            );
        }
    }
}

/// A job's evaluation on the GPU (f32, passes of up to 512 padded tokens, not 16 examples)
/// scores every sequence as the CPU does in batches of 16: free answers (int-mult) and
/// choices of one and several tokens.
#[test]
fn evaluation_passes_on_gpu_match_cpu() {
    use eigenprune_engine::eval::{choice_scores, EvalBatch};
    use eigenprune_engine::tasks::Example;
    let gpu = Device::new_cuda(0).unwrap();
    let free = eigenprune_engine::tasks::builtin("int-mult").unwrap().test;
    let choices: Vec<Example> = free
        .iter()
        .map(|e| Example {
            choices: Some(vec![e.answer.clone(), " 1".into(), " 12 x 12".into()]),
            label: Some(0),
            ..e.clone()
        })
        .collect();
    let passes = EvalBatch {
        rows: 1,
        tokens: 512,
    };
    for arch in ARCHS {
        let (cpu, on_gpu) = (load(arch, &Device::Cpu), load(arch, &gpu));
        for (name, examples) in [("free", &free), ("choices", &choices)] {
            let want = choice_scores(&cpu.model, &cpu.tokenizer, examples, 16).unwrap();
            let got = choice_scores(&on_gpu.model, &on_gpu.tokenizer, examples, passes).unwrap();
            assert_eq!(want.len(), got.len(), "{arch} {name}");
            let worst = want
                .iter()
                .zip(&got)
                .map(|(a, b)| {
                    assert_eq!((a.example, a.choice), (b.example, b.choice));
                    (a.logprob - b.logprob).abs()
                })
                .fold(0f64, f64::max);
            eprintln!(
                "{arch} {name}: {} sequences, worst |dlogprob| {worst:.2e}",
                got.len()
            );
            assert!(worst < 1e-3, "{arch} {name}: {worst}");
        }
    }
}

/// The word-per-thread add equals candle's add bit for bit (f32 and bf16; shapes that fill whole
/// 16-byte words, and ones that fall back), and a traced sum passes its gradient to both sides.
#[test]
fn word_add_matches_candle_add() {
    use candle_core::{Tensor, Var};
    use eigenprune_engine::grad_ops::add;
    let gpu = Device::new_cuda(0).unwrap();
    for shape in [(64usize, 2560usize), (3, 7), (1, 8)] {
        let a = Tensor::randn(0f32, 3., shape, &gpu).unwrap();
        let b = Tensor::randn(0f32, 1e-2, shape, &gpu).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let (a, b) = (a.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap());
            let want = (&a + &b).unwrap().to_dtype(DType::F32).unwrap();
            let got = add(&a, &b).unwrap().to_dtype(DType::F32).unwrap();
            let differ = want
                .ne(&got)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(differ, 0.0, "{shape:?} {dtype:?}");
        }
    }
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (4, 256), &gpu).unwrap()).unwrap();
    let y = (x.as_tensor() * 3.).unwrap();
    let loss = add(x.as_tensor(), &y).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let gx = g
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(gx.iter().all(|v| (v - 4.0).abs() < 1e-6), "{:?}", &gx[..4]);
}

/// Values and input gradients (where it has them) of an op on the GPU (its kernels), in f32 and
/// bf16, against the CPU (candle's composites) in f32 on the same (rounded) input: the
/// kernels compute in f32 and round once, where a bf16 composite rounds at every step.
fn gpu_op_matches_cpu(
    what: &str,
    shape: &[usize],
    f: &dyn Fn(&candle_core::Tensor) -> candle_core::Result<candle_core::Tensor>,
) {
    use candle_core::{Tensor, Var};
    let gpu = Device::new_cuda(0).unwrap();
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 7919 % 997) as f32 / 61.0).sin() * 3.0)
        .collect();
    let probe: Vec<f32> = (0..n)
        .map(|i| ((i * 104729 % 991) as f32 / 37.0).cos())
        .collect();
    for (dtype, tol) in [(DType::F32, 2e-5f32), (DType::BF16, 1e-2)] {
        let run = |dev: &Device, compute: DType| {
            let x = Tensor::from_vec(data.clone(), shape, dev).unwrap();
            let x = x.to_dtype(dtype).unwrap().to_dtype(compute).unwrap();
            let x = Var::from_tensor(&x).unwrap();
            let y = f(x.as_tensor()).unwrap();
            let probe = Tensor::from_vec(probe.clone(), y.shape(), dev).unwrap();
            let loss = (y.to_dtype(DType::F32).unwrap() * probe)
                .unwrap()
                .sum_all()
                .unwrap();
            let dx = loss.backward().unwrap().get(x.as_tensor()).cloned();
            let flat = |t: Tensor| {
                t.to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            (flat(y), dx.map(flat))
        };
        let ((y1, g1), (y2, g2)) = (run(&gpu, dtype), run(&Device::Cpu, DType::F32));
        assert_eq!(
            g1.is_some(),
            g2.is_some(),
            "{what}: a gradient on one device only"
        );
        let (g1, g2) = (g1.unwrap_or_default(), g2.unwrap_or_default());
        let scale = g2.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in y1.iter().zip(&y2).enumerate() {
            assert!(
                (a - b).abs() <= tol * (1.0 + b.abs()),
                "{what} {dtype:?} value {i}: {a} vs {b}"
            );
        }
        for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
            assert!(
                (a - b).abs() <= tol * scale,
                "{what} {dtype:?} gradient {i}: {a} vs {b}"
            );
        }
    }
}

/// The activations' word kernels (forward and backward) and Phi's partial rotary kernel
/// against candle's ops on the CPU; shapes with and without whole 16-byte words.
#[test]
fn activation_and_partial_rotary_kernels_match_cpu() {
    use candle_core::Tensor;
    use eigenprune_engine::config::Activation;
    use eigenprune_engine::grad_ops::{activation, plain_activation, rope};
    for act in [Activation::GeluTanh, Activation::GeluErf, Activation::Silu] {
        for shape in [[4usize, 64, 256], [3, 5, 7]] {
            let what = format!("{act:?} {shape:?}");
            gpu_op_matches_cpu(&what, &shape, &|x| activation(x, act));
            gpu_op_matches_cpu(&what, &shape, &|x| plain_activation(&x.detach(), act));
        }
    }
    let (b, h, t, half) = (2, 3, 5, 16);
    for pass_through in [48, 3] {
        let rot = 2 * half;
        let f = |x: &Tensor| {
            let dev = x.device();
            let angles: Vec<f32> = (0..b * t * half).map(|i| i as f32 * 0.37).collect();
            let angles = Tensor::from_vec(angles, (b, t, half), dev)?;
            let (cos, sin) = (
                angles.cos()?.to_dtype(DType::BF16)?.to_dtype(x.dtype())?,
                angles.sin()?.to_dtype(DType::BF16)?.to_dtype(x.dtype())?,
            );
            rope(x, &cos, &sin, rot)
        };
        gpu_op_matches_cpu(
            &format!("rope +{pass_through}"),
            &[b, h, t, rot + pass_through],
            &f,
        );
    }
}
