//! Benchmarks at real model shapes with seeded random weights (the real checkpoints need not be
//! present): the SVD of every key map, the attribution sweep, and greedy decoding at batch 1
//! and through the continuous batcher. `eigenprune bench` prints them as a table;
//! `scripts/bench_torch.py` measures the same things with PyTorch + transformers.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;

use crate::attribution::{sweep_sequences, Precision, Scores, SweepSettings};
use crate::batch::Sequence;
use crate::batcher::{Batcher, Event};
use crate::edit::{Edit, MatrixEdit};
use crate::generate::{generate_with, SamplingParams};
use crate::loading::{LoadedModel, ModelSource};
use crate::models::{self, TensorMap};
use crate::row_edits::RowEdits;
use crate::svd::{agreement, decompose_on, SvdBackend};
use crate::trace::Component;
use crate::transformer::Transformer;
use crate::Result;

#[derive(Clone, Debug)]
pub struct BenchSettings {
    pub seed: u64,
    /// The sweep: this many sequences of `sweep_tokens` tokens (the last 4 are the answer), in
    /// batches of `sweep_batch`.
    pub sweep_sequences: usize,
    pub sweep_tokens: usize,
    pub sweep_batch: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// Concurrent requests for the batched decoding row.
    pub concurrent: usize,
    /// Also run the CPU SVD (timed) and report how far the GPU's agrees with it.
    pub svd_cpu: bool,
    /// The dtype decoding runs in (pruning math is always f32).
    pub serve_dtype: DType,
    /// Mixed-batch rows: the concurrent requests spread over this many variants.
    pub variants: Vec<usize>,
    /// Rank of a variant's edit of one map (k and v of every layer are edited).
    pub variant_rank: usize,
    /// Only the decoding rows (no SVD, no sweep).
    pub decode_only: bool,
}

impl Default for BenchSettings {
    fn default() -> Self {
        Self {
            seed: 0,
            sweep_sequences: 1024,
            sweep_tokens: 32,
            sweep_batch: 64,
            prompt_tokens: 16,
            new_tokens: 128,
            concurrent: 32,
            svd_cpu: true,
            serve_dtype: DType::BF16,
            variants: vec![4, 16],
            variant_rank: 8,
            decode_only: false,
        }
    }
}

/// One line of the table: what ran, its wall time, and a rate where one applies.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    /// Stable key shared with scripts/bench_torch.py: random, svd, svd_cpu, sweep, decode_1,
    /// decode_n.
    pub id: String,
    pub what: String,
    pub seconds: f64,
    pub rate: Option<f64>,
    pub unit: Option<String>,
    pub note: String,
}

/// A model of the shape `config_json` describes, with seeded random weights, in `dtype`.
pub fn random_model(
    config_json: &Value,
    device: &Device,
    dtype: DType,
    seed: u64,
) -> Result<Transformer> {
    models::build(config_json, TensorMap::random(device, seed)?)?.to_dtype(dtype)
}

/// A checkpoint directory (HF layout, safetensors in `dtype`) of a random-weight model of
/// `config_json`'s shape, with an empty tokenizer: what a server can load to be benchmarked
/// at a real shape (its prompts given as token ids).
pub fn write_random_checkpoint(
    config_json: &Value,
    device: &Device,
    dtype: DType,
    out: &std::path::Path,
) -> Result<()> {
    let model = random_model(config_json, device, dtype, 0)?;
    let tokenizer = tokenizers::Tokenizer::new(tokenizers::models::bpe::BPE::default());
    crate::export::export_checkpoint(&model, config_json, &tokenizer, out)
}

fn random_tokens(rng: &mut StdRng, vocab: usize, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

fn row(id: &str, what: &str, seconds: f64, rate: Option<(f64, &str)>, note: String) -> Measurement {
    Measurement {
        id: id.to_string(),
        what: what.to_string(),
        seconds,
        rate: rate.map(|r| r.0),
        unit: rate.map(|r| r.1.to_string()),
        note,
    }
}

/// FLOP of a sweep's matrix products over `rows` sequences of `t` tokens, `answer` of them
/// scored each: 2 per weight and token forward and as many backward (activation gradients
/// only: the weights are constants), attention's QK^T and PV dense (forward, and twice that
/// backward), the LM head at the scored positions.
fn sweep_matmul_flops(model: &crate::Transformer, rows: usize, t: usize, answer: usize) -> f64 {
    let linear: usize = model
        .weights
        .blocks
        .iter()
        .map(|b| {
            [&b.q, &b.k, &b.v, &b.o, &b.up, &b.down]
                .into_iter()
                .chain(&b.gate)
                .map(|l| l.weight.elem_count())
                .sum::<usize>()
        })
        .sum();
    let c = &model.config;
    let tokens = (rows * t) as f64;
    let attention = 3.0 * 4.0 * (t * c.q_dim() * c.n_layers) as f64 * tokens;
    let head = 4.0 * model.weights.lm_head.weight.elem_count() as f64 * (rows * answer) as f64;
    4.0 * linear as f64 * tokens + attention + head
}

/// max |a - b| over every score, relative to the largest |a|.
fn relative_gap(a: &crate::attribution::Scores, b: &crate::attribution::Scores) -> f32 {
    let (a, b) = (a.flat(), b.flat());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    worst / scale.max(f32::MIN_POSITIVE)
}

/// Timed repetitions of the decoding rows (the median is reported).
const REPEATS: usize = 3;
/// Paired (base, mixed) runs behind a variants row's share.
const PAIRS: usize = 5;

/// The median wall time of `n` runs of `f`, and the last run's result.
fn median_of<T>(n: usize, mut f: impl FnMut() -> Result<T>) -> Result<(f64, T)> {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..n {
        let start = Instant::now();
        last = Some(f()?);
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok((times[n / 2], last.expect("n > 0")))
}

/// Runs every measurement; `report` sees each row as soon as it is measured.
pub fn run(
    config_json: &Value,
    device: &Device,
    settings: &BenchSettings,
    report: &mut dyn FnMut(&Measurement),
) -> Result<Vec<Measurement>> {
    let mut rows = Vec::new();
    let mut push = |m: Measurement, rows: &mut Vec<Measurement>| {
        report(&m);
        rows.push(m);
    };
    let start = Instant::now();
    let model = random_model(config_json, device, DType::F32, settings.seed)?;
    device.synchronize()?;
    let c = &model.config;
    push(
        row(
            "random",
            "random weights (f32)",
            start.elapsed().as_secs_f64(),
            None,
            format!(
                "{} layers, d_model {}, {} heads ({} kv), vocab {}, {:.0}M parameters",
                c.n_layers,
                c.d_model,
                c.n_heads,
                c.n_kv_heads,
                c.vocab_size,
                model.weights.bytes() as f64 / 4e6
            ),
        ),
        &mut rows,
    );

    let mut rng = StdRng::seed_from_u64(settings.seed);
    if !settings.decode_only {
        pruning_rows(&model, device, settings, &mut rng, &mut |m| {
            push(m, &mut rows)
        })?;
    }
    decoding_rows(model, config_json, settings, &mut rng, &mut |m| {
        push(m, &mut rows)
    })?;
    Ok(rows)
}

/// The SVD of every key map and the attribution sweep.
fn pruning_rows(
    model: &Transformer,
    device: &Device,
    settings: &BenchSettings,
    rng: &mut StdRng,
    push: &mut dyn FnMut(Measurement),
) -> Result<()> {
    let c = &model.config;
    // SVD of every key map, per head.
    let keys = [Component::K];
    let backend = if device.is_cuda() {
        SvdBackend::Cusolver
    } else {
        SvdBackend::Cpu
    };
    decompose_on(model, &keys, backend)?; // warm-up: library load, workspace
    device.synchronize()?;
    let start = Instant::now();
    let svds = decompose_on(model, &keys, backend)?;
    device.synchronize()?;
    let svd_s = start.elapsed().as_secs_f64();
    let heads: usize = svds.iter().map(|s| s.heads.len()).sum();
    let first = &svds[0].heads[0];
    let shape = format!("{heads} heads of {}x{}", first.u.dim(0)?, first.vh.dim(1)?);
    push(row(
        "svd",
        &format!("svd keys ({})", backend.name()),
        svd_s,
        None,
        shape.clone(),
    ));
    if settings.svd_cpu && backend != SvdBackend::Cpu {
        let start = Instant::now();
        let cpu = decompose_on(model, &keys, SvdBackend::Cpu)?;
        let cpu_s = start.elapsed().as_secs_f64();
        let agree = agreement(&svds, &cpu)?;
        push(
            row(
                "svd_cpu",
                "svd keys (cpu, faer)",
                cpu_s,
                None,
                format!(
                    "{shape}; GPU vs CPU: singular values max rel diff {:.1e}, largest principal angle {:.2e} deg",
                    agree.max_sigma_rel, agree.max_angle_deg
                ),
            )
        );
    }

    // The attribution sweep: forward, backward and every key singular value's score.
    let answer = 4.min(settings.sweep_tokens - 1);
    let seqs: Vec<Sequence> = (0..settings.sweep_sequences)
        .map(|_| Sequence {
            prompt: random_tokens(rng, c.vocab_size, settings.sweep_tokens - answer),
            answer: random_tokens(rng, c.vocab_size, answer),
        })
        .collect();
    let sweep = SweepSettings {
        batch_size: settings.sweep_batch,
        shuffle: false,
        precision: Some(Precision::F32),
        ..Default::default()
    };
    // One batch first (kernel loading, workspaces), then the timed sweep.
    let timed_sweep = |s: &SweepSettings, warm_up: bool| -> Result<(f64, Scores)> {
        if warm_up {
            let one = SweepSettings {
                scoring_batches: Some(1),
                ..s.clone()
            };
            sweep_sequences(model, &seqs, &svds, &one, &mut |_, _| true)?;
        }
        let start = Instant::now();
        let scores = sweep_sequences(model, &seqs, &svds, s, &mut |_, _| true)?;
        Ok((start.elapsed().as_secs_f64(), scores))
    };
    let (sweep_s, scores) = timed_sweep(&sweep, true)?;
    let flops = sweep_matmul_flops(model, seqs.len(), settings.sweep_tokens - 1, answer);
    let tflops = |seconds: f64| format!("; matmuls {:.0} TFLOP/s", flops / seconds / 1e12);
    push(row(
        "sweep",
        "attribution sweep (f32)",
        sweep_s,
        Some((scores.tokens as f64 / sweep_s, "tok/s")),
        format!(
            "{} x {} tokens, batch {}, forward + backward + scores of {} singular values{}",
            settings.sweep_sequences,
            settings.sweep_tokens,
            settings.sweep_batch,
            scores.flat().len(),
            tflops(sweep_s)
        ),
    ));
    // Where the sweep's time goes: the same sweep with a device sync after each phase.
    let profiled = SweepSettings {
        profile: true,
        ..sweep.clone()
    };
    let (profiled_s, profiled) = timed_sweep(&profiled, false)?;
    let phases = profiled.phase_seconds.unwrap_or_default();
    push(row(
        "sweep_phases",
        "attribution sweep, phases timed",
        profiled_s,
        None,
        format!(
            "forward {:.3} s, backward {:.3} s, scores {:.3} s",
            phases[0], phases[1], phases[2]
        ),
    ));
    if device.is_cuda() {
        // The same sweep with the forward and backward in bf16 (scores in f32), as PyTorch's,
        // and with f32 matmuls on tensor cores (TF32); how far each moves the scores.
        let with = |precision| SweepSettings {
            precision: Some(precision),
            ..sweep.clone()
        };
        let (bf16_s, bf16_scores) = timed_sweep(&with(Precision::Bf16), true)?;
        let (tf32_s, tf32_scores) = timed_sweep(&with(Precision::Tf32), false)?;
        for (id, what, seconds, fast, how) in [
            (
                "sweep_bf16",
                "attribution sweep (bf16 forward + backward, f32 scores)",
                bf16_s,
                &bf16_scores,
                "precision bf16; ",
            ),
            (
                "sweep_tf32",
                "attribution sweep (TF32 matmuls)",
                tf32_s,
                &tf32_scores,
                "precision tf32; ",
            ),
        ] {
            let gap = relative_gap(&scores, fast);
            push(row(
                id,
                what,
                seconds,
                Some((scores.tokens as f64 / seconds, "tok/s")),
                format!(
                    "{how}scores differ from f32 by at most {gap:.1e} of the largest{}",
                    tflops(seconds)
                ),
            ));
        }
    }
    drop(svds);
    Ok(())
}

/// Greedy decoding at batch 1 (CUDA graphs over a fixed cache on a GPU, and the eager steps
/// for comparison), through the continuous batcher, and with mixed variants.
fn decoding_rows(
    model: Transformer,
    config_json: &Value,
    settings: &BenchSettings,
    rng: &mut StdRng,
    push: &mut dyn FnMut(Measurement),
) -> Result<()> {
    let c = model.config.clone();
    // Greedy decoding in the serving dtype.
    let model = Arc::new(LoadedModel {
        model: model.to_dtype(settings.serve_dtype)?,
        tokenizer: tokenizers::Tokenizer::new(tokenizers::models::bpe::BPE::default()),
        source: ModelSource::Directory("random-weights".into()),
        config_json: config_json.clone(),
        chat_template: None,
    });
    let params = SamplingParams {
        max_tokens: settings.new_tokens,
        ..Default::default()
    };
    let prompt = random_tokens(rng, c.vocab_size, settings.prompt_tokens);
    let graphs = crate::fixed_decode::graphs_enabled(model.model.device());
    let mut graph_tokens = None;
    // On a GPU: the steps as CUDA graphs (the default), then eagerly for comparison.
    for use_graphs in [graphs, false].into_iter().take(1 + graphs as usize) {
        let run = || generate_with(&model.model, &prompt, &params, use_graphs, |_| true);
        run()?;
        let (one_s, (out, stats)) = median_of(REPEATS, run)?;
        let (id, how) = match (use_graphs, graphs) {
            (true, _) => ("decode_1", "CUDA graphs over a fixed cache"),
            (false, true) => ("decode_1_eager", "eager steps over a growing cache"),
            (false, false) => ("decode_1", "eager steps"),
        };
        let same = match &graph_tokens {
            Some(t) if *t == out => "; tokens identical to the CUDA graphs'",
            Some(_) => "; tokens DIFFER from the CUDA graphs'",
            None => "",
        };
        push(row(
            id,
            &format!(
                "greedy decoding, batch 1 ({:?}), {how}",
                settings.serve_dtype
            ),
            one_s,
            Some((out.len() as f64 / one_s, "tok/s")),
            format!(
                "{} prompt + {} new tokens; prefill {:.1} ms; median of 3 runs{same}",
                settings.prompt_tokens,
                out.len(),
                stats.prefill_seconds * 1e3
            ),
        ));
        graph_tokens.get_or_insert(out);
    }

    // Time to first token: a 512-token prompt's prefill and its first token, batch 1.
    let long = random_tokens(rng, c.vocab_size, 512.min(c.max_positions - 1));
    let first = SamplingParams {
        max_tokens: 1,
        ..Default::default()
    };
    let run = || generate_with(&model.model, &long, &first, graphs, |_| true);
    run()?;
    let (ttft_s, _) = median_of(REPEATS, run)?;
    push(row(
        "ttft_512",
        &format!("time to first token, batch 1 ({:?})", settings.serve_dtype),
        ttft_s,
        Some((long.len() as f64 / ttft_s, "prompt tok/s")),
        format!(
            "{}-token prompt, one new token; median of 3 runs",
            long.len()
        ),
    ));

    let batcher = Batcher::start(model.clone(), settings.concurrent);
    let prompts: Vec<Vec<u32>> = (0..settings.concurrent)
        .map(|_| random_tokens(rng, c.vocab_size, settings.prompt_tokens))
        .collect();
    let decode_all = || -> usize {
        let receivers: Vec<_> = prompts
            .iter()
            .map(|p| batcher.submit(p.clone(), params.clone()))
            .collect();
        receivers
            .into_iter()
            .map(|rx| rx.iter().filter(|e| matches!(e, Event::Token(_))).count())
            .sum()
    };
    decode_all();
    let (all_s, tokens) = median_of(REPEATS, || Ok(decode_all()))?;
    push(row(
        "decode_n",
        &format!(
            "greedy decoding, {} concurrent ({:?})",
            settings.concurrent, settings.serve_dtype
        ),
        all_s,
        Some((tokens as f64 / all_s, "tok/s")),
        format!(
            "{} requests x {} new tokens through the continuous batcher; median of 3 runs",
            settings.concurrent, settings.new_tokens
        ),
    ));

    // The same requests spread over variants, decoding in the base's batch.
    for &count in &settings.variants {
        // In the serving dtype, as the service's edit pool holds them.
        let edits: Vec<Arc<Edit>> = (0..count)
            .map(|_| {
                let e = random_edit(&model.model, settings.variant_rank)?;
                Ok(Arc::new(e.to(model.model.device(), model.model.dtype())?))
            })
            .collect::<Result<_>>()?;
        let decode_mixed = || -> usize {
            let receivers: Vec<_> = prompts
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    batcher.submit_to(p.clone(), params.clone(), Some(edits[i % count].clone()))
                })
                .collect();
            receivers
                .into_iter()
                .map(|rx| rx.iter().filter(|e| matches!(e, Event::Token(_))).count())
                .sum()
        };
        decode_mixed();
        // Each mixed run right after a run on the base: the share is the median of the
        // pairs' ratios, so drift between runs falls on both.
        let timed = |f: &dyn Fn() -> usize| {
            let t = Instant::now();
            let n = f();
            (t.elapsed().as_secs_f64(), n)
        };
        let (mut times, mut shares) = (Vec::new(), Vec::new());
        for _ in 0..PAIRS {
            let (base_s, base_tokens) = timed(&decode_all);
            let (s, n) = timed(&decode_mixed);
            times.push((s, n));
            shares.push((n as f64 / s) / (base_tokens as f64 / base_s));
        }
        times.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mixed_s, tokens) = times[times.len() / 2];
        shares.sort_by(f64::total_cmp);
        let share = shares[shares.len() / 2];
        let rate = tokens as f64 / mixed_s;
        push(
            row(
                &format!("decode_n_variants_{count}"),
                &format!(
                    "greedy decoding, {} concurrent over {count} variants ({:?})",
                    settings.concurrent, settings.serve_dtype
                ),
                mixed_s,
                Some((rate, "tok/s")),
                format!(
                    "{:.0}% of decode_n (median of {PAIRS} runs, each paired with one on the base); rank {} edits of k and v in every layer",
                    100.0 * share,
                    settings.variant_rank
                ),
            )
        );
    }
    for &count in &settings.variants {
        push(edit_forms(&model.model, count, settings)?);
    }
    Ok(())
}

/// One edited map (layer 0's v) for a decoding step of `settings.concurrent` rows spread over
/// `count` variants, in the two forms a variant's correction can take: low-rank factors (the
/// base product for every row, then the concatenated factors' shrink, mask, expand: what the
/// batcher runs) against dense edited matrices (each variant's W + B A, its rows gathered and
/// multiplied by it: one product per variant present). Microseconds per map and step.
fn edit_forms(model: &Transformer, count: usize, settings: &BenchSettings) -> Result<Measurement> {
    let dev = model.device();
    let dtype = model.dtype();
    let rows = settings.concurrent.max(1);
    let lin = &crate::svd::site_map(model, 0, Component::V).0.weight;
    let (out, d_in) = lin.dims2()?;
    // The variants present in the batch (a batch of `rows` holds at most that many).
    let count = count.clamp(1, rows);
    let edits: Vec<Arc<Edit>> = (0..count)
        .map(|_| random_edit(model, settings.variant_rank))
        .collect::<Result<_>>()?;
    let of_row: Vec<Option<usize>> = (0..rows).map(|i| Some(i % count)).collect();
    let refs: Vec<&Edit> = edits.iter().map(|e| e.as_ref()).collect();
    let factors = RowEdits::new(&refs, &of_row, dev, dtype)?;
    // Each variant's edited matrix (transposed) and bias delta.
    let dense: Vec<(Tensor, Tensor)> = edits
        .iter()
        .map(|e| {
            let m = e
                .matrices
                .iter()
                .find(|m| m.layer == 0 && m.component == Component::V);
            let m = m.expect("random_edit edits v in every layer");
            let delta = m.b.matmul(&m.a)?.to_dtype(dtype)?;
            let bias = m.bias_delta.as_ref().expect("random_edit has bias deltas");
            Ok(((lin + delta)?.t()?.contiguous()?, bias.to_dtype(dtype)?))
        })
        .collect::<Result<_>>()?;
    let groups: Vec<Tensor> = (0..count)
        .map(|v| {
            let idx: Vec<u32> = (0..rows as u32)
                .filter(|i| *i as usize % count == v)
                .collect();
            Ok(Tensor::new(idx.as_slice(), dev)?)
        })
        .collect::<Result<_>>()?;
    let x = Tensor::randn(0f32, 1.0, (rows, 1, d_in), dev)?.to_dtype(dtype)?;
    let w_t = lin.t()?;
    let run_factors = || -> Result<Tensor> {
        let base = x
            .reshape((rows, d_in))?
            .matmul(&w_t)?
            .reshape((rows, 1, out))?;
        Ok(factors.apply(0, Component::V, &x, base)?)
    };
    let run_dense = || -> Result<Tensor> {
        let x2 = x.reshape((rows, d_in))?;
        let mut y = Tensor::zeros((rows, out), dtype, dev)?;
        for (g, (w, bias)) in groups.iter().zip(&dense) {
            let part = x2.index_select(g, 0)?.matmul(w)?.broadcast_add(bias)?;
            y = y.index_add(g, &part, 0)?;
        }
        Ok(y)
    };
    let time = |f: &dyn Fn() -> Result<Tensor>| -> Result<f64> {
        for _ in 0..5 {
            f()?;
        }
        dev.synchronize()?;
        let n = 200;
        let t = Instant::now();
        for _ in 0..n {
            f()?;
        }
        dev.synchronize()?;
        Ok(t.elapsed().as_secs_f64() / n as f64)
    };
    let (f_s, d_s) = (time(&run_factors)?, time(&run_dense)?);
    // The two forms compute the same map (on a GPU: the fused kernel against plain products).
    let want = run_dense()?.to_dtype(DType::F32)?;
    let got = run_factors()?.reshape((rows, out))?.to_dtype(DType::F32)?;
    let gap = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?
        / want
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?
            .max(f32::MIN_POSITIVE);
    Ok(row(
        &format!("edit_forms_{count}"),
        &format!("one edited map ({out}x{d_in}), {rows} rows over {count} variants ({dtype:?})"),
        f_s,
        None,
        format!(
            "factors {:.1} us vs dense {:.1} us per map and step ({:.1}x); rank {}; outputs agree to {gap:.1e} of the largest",
            f_s * 1e6,
            d_s * 1e6,
            d_s / f_s,
            settings.variant_rank
        ),
    ))
}

/// A random edit of `model` (a variant's shape: rank-`rank` factors of k and v in every layer,
/// with bias deltas), for benchmarks.
pub fn random_edit(model: &Transformer, rank: usize) -> Result<Arc<Edit>> {
    let dev = model.device();
    let mut matrices = Vec::new();
    for layer in 0..model.config.n_layers {
        for component in [Component::K, Component::V] {
            let (out, d_in) = crate::svd::site_map(model, layer, component)
                .0
                .weight
                .dims2()?;
            matrices.push(MatrixEdit {
                layer,
                component,
                a: candle_core::Tensor::randn(0f32, 0.02, (rank, d_in), dev)?,
                b: candle_core::Tensor::randn(0f32, 0.02, (out, rank), dev)?,
                bias_delta: Some(candle_core::Tensor::randn(0f32, 0.01, out, dev)?),
            });
        }
    }
    Ok(Arc::new(Edit {
        matrices,
        ..Edit::default()
    }))
}
