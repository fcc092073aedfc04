//! Sanity of the method on tiny fixture models: portion 0 changes nothing, pruning changes
//! the keys exactly as the folded form says, GPT-2's key bias edit is inert, B = 1 is refused.

mod common;

use common::{fixture_dir, load_fixture, max_abs_diff};

use candle_core::{Device, Tensor};
use eigenprune_engine::attribution::{normalise, sweep, Scores, SweepSettings};
use eigenprune_engine::prune::{build_edit, ranking, select, BiasMode, Method, Selection};
use eigenprune_engine::svd::{decompose, SiteSvd};
use eigenprune_engine::tasks::{parse_jsonl, Example};
use eigenprune_engine::{load_model, Component, LoadOptions, LoadedModel, Trace};

fn examples() -> Vec<Example> {
    let rows: String = (0..12)
        .map(|i| {
            format!(
                "{{\"prompt\": \"{i} x 7 =\", \"answer\": \" {}\"}}\n",
                i * 7
            )
        })
        .collect();
    parse_jsonl(&rows).unwrap()
}

fn settings(batch_size: usize) -> SweepSettings {
    SweepSettings {
        batch_size,
        ..Default::default()
    }
}

/// SVDs, attribution scores on `examples()` and the selection at `portion`.
fn score_and_select(
    m: &LoadedModel,
    comps: &[Component],
    batch_size: usize,
    portion: f64,
) -> (Vec<SiteSvd>, Scores, Selection) {
    let svds = decompose(&m.model, comps).unwrap();
    let scores = sweep(
        &m.model,
        &m.tokenizer,
        &examples(),
        &svds,
        &settings(batch_size),
        &mut |_, _| true,
    )
    .unwrap();
    let order = ranking(&svds, &scores, Method::Attribution, 0).unwrap();
    let sel = select(&svds, &order, portion).unwrap();
    (svds, scores, sel)
}

fn logits(m: &LoadedModel, model: &eigenprune_engine::Transformer) -> Tensor {
    let ids = m.tokenizer.encode("3 x 7 = 21, 5 + 4 = 9", false).unwrap();
    let ids = Tensor::new(ids.get_ids(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let n = ids.dim(1).unwrap();
    model
        .logits(&model.forward(&ids, &[vec![true; n]], None, None).unwrap())
        .unwrap()
}

#[test]
fn batch_size_one_is_refused() {
    let m = load_fixture("llama");
    let svds = decompose(&m.model, &[Component::K]).unwrap();
    let err = sweep(
        &m.model,
        &m.tokenizer,
        &examples(),
        &svds,
        &settings(1),
        &mut |_, _| true,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("batch_size must be at least 2"), "{err}");
}

#[test]
fn portion_zero_changes_nothing_and_pruning_changes_the_model() {
    for arch in ["llama", "phi", "gpt2", "qwen2"] {
        let m = load_fixture(arch);
        let comps = [
            Component::K,
            Component::Q,
            Component::V,
            Component::O,
            Component::MlpIn,
            Component::MlpOut,
        ];
        let svds = decompose(&m.model, &comps).unwrap();
        let scores = sweep(
            &m.model,
            &m.tokenizer,
            &examples(),
            &svds,
            &settings(4),
            &mut |_, _| true,
        )
        .unwrap();
        assert!(
            scores
                .scores
                .iter()
                .flatten()
                .flatten()
                .all(|s| s.is_finite()),
            "{arch}: scores finite"
        );
        let order = ranking(&svds, &scores, Method::Attribution, 0).unwrap();
        let base = logits(&m, &m.model);

        let none = select(&svds, &order, 0.0).unwrap();
        let edit = build_edit(&m.model, &svds, &none, &scores.input_means, BiasMode::Mean).unwrap();
        assert!(edit.matrices.is_empty(), "{arch}: portion 0 edits nothing");

        let some = select(&svds, &order, 0.3).unwrap();
        assert_eq!(some.count, (some.candidates as f64 * 0.3) as usize);
        let edit = build_edit(&m.model, &svds, &some, &scores.input_means, BiasMode::Mean).unwrap();
        assert_eq!(
            edit.rank(),
            some.count,
            "{arch}: one direction per pruned value"
        );
        let mut edited = m.model.clone();
        edit.apply(&mut edited).unwrap();
        let d = max_abs_diff(&base, &logits(&m, &edited));
        assert!(d > 1e-5, "{arch}: pruning changes the logits (by {d})");
    }
}

/// The edited key map, in the checkpoint's layout, equals xhat E' + b_eff + mean(xhat) R.
#[test]
fn edited_keys_match_the_folded_form() {
    for arch in ["gpt2", "llama", "phi"] {
        let m = load_fixture(arch);
        let (svds, scores, sel) = score_and_select(&m, &[Component::K], 3, 0.4);
        let edit = build_edit(&m.model, &svds, &sel, &scores.input_means, BiasMode::Mean).unwrap();
        let mut edited = m.model.clone();
        edit.apply(&mut edited).unwrap();

        let ids = m.tokenizer.encode("2 x 7 = 14", false).unwrap();
        let ids = Tensor::new(ids.get_ids(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let n = ids.dim(1).unwrap();
        let mut trace = Trace::new(&[Component::K]);
        edited
            .forward(&ids, &[vec![true; n]], None, Some(&mut trace))
            .unwrap();
        let mut base_trace = Trace::new(&[Component::K]);
        m.model
            .forward(&ids, &[vec![true; n]], None, Some(&mut base_trace))
            .unwrap();
        // Layer 0 reads the same residual in both models.
        let rec = base_trace.get(0, Component::K).unwrap();
        let cfg = &m.model.config;
        let xhat = normalise(rec.resid_pre.as_ref().unwrap(), cfg.norm, cfg.norm_eps)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let blk = &edited.weights.blocks[0];
        let got = blk
            .k
            .forward(&blk_norm(
                &edited,
                &rec.resid_pre.as_ref().unwrap().squeeze(0).unwrap(),
            ))
            .unwrap();
        // Folded form: per head, xhat (E - R) + b_eff + mean R.
        let base_blk = &m.model.weights.blocks[0];
        let ln = &base_blk.ln1;
        let mut b_eff =
            base_blk.k.bias.clone().unwrap_or(
                Tensor::zeros(cfg.kv_dim(), candle_core::DType::F32, &Device::Cpu).unwrap(),
            );
        if let Some(beta) = &ln.bias {
            b_eff = (b_eff
                + beta
                    .unsqueeze(0)
                    .unwrap()
                    .matmul(&base_blk.k.weight.t().unwrap())
                    .unwrap()
                    .squeeze(0)
                    .unwrap())
            .unwrap();
        }
        let mean = Tensor::new(scores.input_means[0].as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut parts = Vec::new();
        for (hi, head) in svds[0].heads.iter().enumerate() {
            let keep: Vec<f32> = sel.pruned[0][hi]
                .iter()
                .map(|&p| if p { 0.0 } else { 1.0 })
                .collect();
            let drop: Vec<f32> = keep.iter().map(|k| 1.0 - k).collect();
            let s = &head.s;
            let us = |mask: &[f32]| {
                let w = (s * Tensor::new(mask, &Device::Cpu).unwrap()).unwrap();
                head.u
                    .broadcast_mul(&w.unsqueeze(0).unwrap())
                    .unwrap()
                    .matmul(&head.vh)
                    .unwrap()
            };
            let e_kept = us(&keep);
            let r = us(&drop);
            parts.push(
                (xhat
                    .matmul(&e_kept)
                    .unwrap()
                    .broadcast_add(&mean.matmul(&r).unwrap()))
                .unwrap(),
            );
        }
        let want = Tensor::cat(&parts, 1)
            .unwrap()
            .broadcast_add(&b_eff)
            .unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(
            d < 1e-4,
            "{arch}: edited keys differ from the folded form by {d}"
        );
    }
}

fn blk_norm(model: &eigenprune_engine::Transformer, resid: &Tensor) -> Tensor {
    let cfg = &model.config;
    let ln = &model.weights.blocks[0].ln1;
    let x = normalise(resid, cfg.norm, cfg.norm_eps)
        .unwrap()
        .broadcast_mul(&ln.weight)
        .unwrap();
    match &ln.bias {
        Some(b) => x.broadcast_add(b).unwrap(),
        None => x,
    }
}

/// Max logit difference between the edits with `bias = none` and `bias = mean` (keys, 30%).
fn bias_effect(arch: &str) -> f32 {
    let m = load_fixture(arch);
    let (svds, scores, sel) = score_and_select(&m, &[Component::K], 4, 0.3);
    let outs: Vec<Tensor> = [BiasMode::None, BiasMode::Mean]
        .into_iter()
        .map(|bias| {
            let edit = build_edit(&m.model, &svds, &sel, &scores.input_means, bias).unwrap();
            let mut edited = m.model.clone();
            edit.apply(&mut edited).unwrap();
            logits(&m, &edited)
        })
        .collect();
    max_abs_diff(&outs[0], &outs[1])
}

#[test]
fn gpt2_key_bias_edit_does_not_change_logits() {
    let d = bias_effect("gpt2");
    assert!(d < 1e-5, "GPT-2 logits moved by {d} with the bias edit");
    // On a rotary model the same bias edit does matter.
    assert!(
        bias_effect("llama") > 1e-6,
        "Llama: the key bias edit matters"
    );
}

#[test]
fn svd_cache_returns_the_same_decomposition() {
    let m = load_fixture("llama");
    let dir = std::env::temp_dir().join(format!("eigenprune-svd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let comps = [Component::K, Component::O];
    let (first, hit) = eigenprune_engine::svd::decompose_cached(&m.model, &comps, &dir).unwrap();
    assert!(!hit);
    let (second, hit) = eigenprune_engine::svd::decompose_cached(&m.model, &comps, &dir).unwrap();
    assert!(hit, "the second call reads the cache");
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(
            (a.layer, a.component, a.folded),
            (b.layer, b.component, b.folded)
        );
        for (ha, hb) in a.heads.iter().zip(&b.heads) {
            assert_eq!(ha.block, hb.block);
            assert_eq!(max_abs_diff(&ha.u, &hb.u), 0.0);
            assert_eq!(max_abs_diff(&ha.s, &hb.s), 0.0);
        }
    }
    // Other weights, other key: an edited model misses the cache.
    let mut edited = m.model.clone();
    let k = &mut edited.weights.blocks[0].k;
    k.weight = (&k.weight * 1.5).unwrap();
    let (_, hit) = eigenprune_engine::svd::decompose_cached(&edited, &comps, &dir).unwrap();
    assert!(!hit, "changed weights do not hit the cache");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Fine-tuning first: the training loss falls, the base model is untouched, and base + the
/// saved edit (fine-tuned parameters + low-rank part) reproduces the job's model exactly.
#[test]
fn finetune_then_prune_round_trips_through_the_edit() {
    use eigenprune_engine::edit::Edit;
    use eigenprune_engine::eval::evaluate;
    use eigenprune_engine::finetune::FinetuneSettings;
    use eigenprune_engine::pipeline::{run, Portion, PruneSettings};
    use eigenprune_engine::tasks::Task;
    for arch in ["llama", "gpt2"] {
        let m = load_fixture(arch);
        let rows = examples();
        let task = Task {
            name: "times7".into(),
            train: rows[..10].to_vec(),
            test: rows[10..].to_vec(),
        };
        let settings = PruneSettings {
            portions: vec![Portion::Fixed(0.2)],
            finetune: Some(FinetuneSettings {
                batch_size: 4,
                ..FinetuneSettings::new(4, 1e-2)
            }),
            ..Default::default()
        };
        let before = logits(&m, &m.model);
        let report = run(&m.model, &m.tokenizer, &task, &settings, &mut |_, _, _| {
            true
        })
        .unwrap();
        assert_eq!(
            max_abs_diff(&before, &logits(&m, &m.model)),
            0.0,
            "{arch}: base changed"
        );
        let (ft, _) = report.finetune.as_ref().unwrap();
        let losses = &ft.epoch_losses;
        assert!(losses.last() < losses.first(), "{arch}: loss {losses:?}");

        let edit = &report.results[0].edit;
        assert!(!edit.finetuned.is_empty() && edit.rank() > 0);
        let restored = Edit::from_bytes(&edit.to_bytes().unwrap(), &Device::Cpu).unwrap();
        let mut variant = m.model.clone();
        restored.apply(&mut variant).unwrap();
        // The model the job evaluated is the one base + edit gives.
        let again = evaluate(&variant, &m.tokenizer, &task.test, 16, &mut |_, _| true).unwrap();
        let after = &report.results[0].accuracy_after;
        assert_eq!(again.correct, after.correct, "{arch}");
        assert_eq!(again.choice_correct, after.choice_correct, "{arch}");
        let mut tuned = m.model.clone();
        Edit {
            finetuned: edit.finetuned.clone(),
            ..Default::default()
        }
        .apply(&mut tuned)
        .unwrap();
        let pruned = logits(&m, &variant);
        assert!(
            max_abs_diff(&logits(&m, &tuned), &before) > 1e-3,
            "{arch}: no fine-tuning"
        );
        assert!(
            max_abs_diff(&pruned, &logits(&m, &tuned)) > 0.0,
            "{arch}: no pruning"
        );
    }
}

/// Serving weights in bf16: logits stay close to f32's, generation runs, and a pruning job on
/// the bf16 model (its math in f32) yields an edit that applies to it in bf16.
#[test]
fn bf16_serving_weights_work_end_to_end() {
    use candle_core::DType;
    use eigenprune_engine::generate::{generate, SamplingParams};
    use eigenprune_engine::pipeline::{run, PruneSettings};
    use eigenprune_engine::tasks::Task;
    for arch in ["llama", "gemma3", "gpt2"] {
        let m32 = load_fixture(arch);
        let dir = fixture_dir(arch);
        let opts = LoadOptions {
            dtype: DType::BF16,
            ..Default::default()
        };
        let m16 = load_model(dir.to_str().unwrap(), &opts).unwrap();
        assert_eq!(m16.model.dtype(), DType::BF16);
        let want = logits(&m32, &m32.model);
        let got = logits(&m16, &m16.model).to_dtype(DType::F32).unwrap();
        let rel = max_abs_diff(&got, &want) / max_abs_diff(&want, &want.zeros_like().unwrap());
        assert!(
            rel < 0.05,
            "{arch}: bf16 logits off by {rel} of their range"
        );

        let ids = m16.tokenizer.encode("3 x 7 =", false).unwrap();
        let params = SamplingParams {
            max_tokens: 4,
            ..Default::default()
        };
        generate(&m16.model, ids.get_ids(), &params, |_| true).unwrap();

        let rows = examples();
        let task = Task {
            name: "times7".into(),
            train: rows[..10].to_vec(),
            test: rows[10..].to_vec(),
        };
        let report = run(
            &m16.model,
            &m16.tokenizer,
            &task,
            &PruneSettings::default(),
            &mut |_, _, _| true,
        )
        .unwrap();
        let mut variant = m16.model.clone();
        report.results[0].edit.apply(&mut variant).unwrap();
        assert_eq!(variant.dtype(), DType::BF16, "{arch}");
        assert!(report.results[0].pruned > 0, "{arch}");
        let pruned = logits(&m16, &variant).to_dtype(DType::F32).unwrap();
        assert!(
            max_abs_diff(&pruned, &got) > 0.0,
            "{arch}: the edit changed nothing"
        );
    }
}

/// The sweep feeds each example's prompt and answer but the answer's last token, which
/// predicts nothing: the real tokens it counts (and averages inputs over) are one fewer per
/// example than the example's length.
#[test]
fn the_last_answer_token_is_not_a_sweep_input() {
    let m = load_fixture("llama");
    let svds = decompose(&m.model, &[Component::K]).unwrap();
    let exs = examples();
    let scores = sweep(
        &m.model,
        &m.tokenizer,
        &exs,
        &svds,
        &settings(4),
        &mut |_, _| true,
    )
    .unwrap();
    let inputs: usize = exs
        .iter()
        .map(|e| {
            eigenprune_engine::batch::encode_example(&m.tokenizer, e)
                .unwrap()
                .len()
                - 1
        })
        .sum();
    assert_eq!((scores.examples, scores.tokens), (exs.len(), inputs));
}
