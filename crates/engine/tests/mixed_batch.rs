//! One batch, many variants: rows of the base and of several variants (random low-rank edits
//! with bias deltas, overlapping on some maps) run through the base's forward with per-row
//! corrections, and each row matches its own model run alone on the same batch (prefill and a
//! cached decoding step), for the Llama, Gemma-3 and GPT-2 fixtures. Base rows are unchanged
//! to the bit. On the CPU here; on a GPU (the fused kernel) with EIGENPRUNE_TEST_DEVICE=cuda
//! (scripts/gpu_tests.sh).

mod common;

use common::{load_fixture_on_test_device as load_fixture, max_abs_diff};

use candle_core::{DType, IndexOp, Tensor};
use eigenprune_engine::batch::pack;
use eigenprune_engine::edit::{Edit, MatrixEdit};
use eigenprune_engine::row_edits::RowEdits;
use eigenprune_engine::svd::site_map;
use eigenprune_engine::{Component, KvCache, Transformer};

/// A random edit of `sites`: (layer, map, rank, with a bias delta).
fn random_edit(model: &Transformer, sites: &[(usize, Component, usize, bool)]) -> Edit {
    let dev = model.device();
    let matrices = sites
        .iter()
        .map(|&(layer, component, rank, bias)| {
            let (lin, _) = site_map(model, layer, component);
            let (out, d_in) = lin.weight.dims2().unwrap();
            MatrixEdit {
                layer,
                component,
                a: Tensor::randn(0f32, 0.3, (rank, d_in), dev).unwrap(),
                b: Tensor::randn(0f32, 0.3, (out, rank), dev).unwrap(),
                bias_delta: bias.then(|| Tensor::randn(0f32, 0.2, out, dev).unwrap()),
            }
        })
        .collect();
    Edit {
        matrices,
        ..Edit::default()
    }
}

/// Last-position logits [rows, vocab] after a prefill, and after one cached step on `next`.
fn prefill_and_step(
    model: &Transformer,
    prompts: &[Vec<u32>],
    next: &[u32],
    edits: Option<&RowEdits>,
) -> (Tensor, Tensor) {
    let dev = model.device();
    let packed = pack(prompts, true, 0, dev).unwrap();
    let mut cache = KvCache::default();
    let run = |ids: &Tensor, valid: &[Vec<bool>], cache: &mut KvCache| match edits {
        Some(e) => model
            .forward_with_edits(ids, valid, Some(cache), e)
            .unwrap(),
        None => model.forward(ids, valid, Some(cache), None).unwrap(),
    };
    let h = run(&packed.ids, &packed.valid, &mut cache);
    let last = h.i((.., packed.width - 1, ..)).unwrap();
    let first = model.logits(&last).unwrap().to_dtype(DType::F32).unwrap();
    let ids = Tensor::from_vec(next.to_vec(), (next.len(), 1), dev).unwrap();
    let valid = vec![vec![true]; next.len()];
    let h = run(&ids, &valid, &mut cache);
    let second = model
        .logits(&h.i((.., 0, ..)).unwrap())
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    (first, second)
}

#[test]
fn every_row_matches_its_variant_alone() {
    for arch in ["llama", "gemma3", "gpt2"] {
        let m = load_fixture(arch);
        let base = &m.model;
        let edits = [
            random_edit(
                base,
                &[(0, Component::Q, 3, true), (1, Component::MlpOut, 2, false)],
            ),
            random_edit(
                base,
                &[
                    (0, Component::Q, 2, false),
                    (0, Component::O, 4, true),
                    (1, Component::MlpIn, 3, true),
                ],
            ),
            random_edit(
                base,
                &[(1, Component::V, 1, true), (0, Component::K, 2, false)],
            ),
        ];
        let variants: Vec<Transformer> = edits
            .iter()
            .map(|e| {
                let mut v = base.clone();
                e.apply(&mut v).unwrap();
                v
            })
            .collect();
        let rows = [None, Some(0), Some(1), Some(2), Some(1), None];
        let prompts: Vec<Vec<u32>> = [
            "The capital of France is",
            "12 x 7 =",
            "Premise: the cat sat.",
            "Once upon a time there was",
            "a",
            "Hypothesis: it rained",
        ]
        .iter()
        .map(|p| m.tokenizer.encode(*p, false).unwrap().get_ids().to_vec())
        .collect();
        let next: Vec<u32> = (0..rows.len() as u32).map(|i| 5 + 3 * i).collect();
        let refs: Vec<&Edit> = edits.iter().collect();
        let row_edits = RowEdits::new(&refs, &rows, base.device(), base.dtype()).unwrap();
        let (mixed_first, mixed_step) = prefill_and_step(base, &prompts, &next, Some(&row_edits));
        let (base_first, base_step) = prefill_and_step(base, &prompts, &next, None);
        let alone: Vec<(Tensor, Tensor)> = variants
            .iter()
            .map(|v| prefill_and_step(v, &prompts, &next, None))
            .collect();
        for (i, row) in rows.iter().enumerate() {
            let (want_first, want_step) = match row {
                None => (&base_first, &base_step),
                Some(k) => (&alone[*k].0, &alone[*k].1),
            };
            for (got, want, what) in [
                (&mixed_first, want_first, "prefill"),
                (&mixed_step, want_step, "decoding step"),
            ] {
                let (g, w) = (got.get(i).unwrap(), want.get(i).unwrap());
                let diff = max_abs_diff(&g, &w);
                if row.is_none() {
                    let (g, w): (Vec<f32>, Vec<f32>) = (g.to_vec1().unwrap(), w.to_vec1().unwrap());
                    assert!(
                        g == w,
                        "{arch} row {i} ({what}): a base row changed by {diff}"
                    );
                } else {
                    assert!(diff < 1e-4, "{arch} row {i} ({what}): {diff}");
                }
            }
            // The edits matter: a variant row differs from the base's.
            if row.is_some() {
                let d = max_abs_diff(&mixed_first.get(i).unwrap(), &base_first.get(i).unwrap());
                assert!(d > 1e-3, "{arch} row {i}: the edit changed nothing ({d})");
            }
        }
    }
}

#[test]
fn a_fine_tuned_variant_cannot_share_a_batch() {
    let m = load_fixture("llama");
    let base = &m.model;
    let finetuned = Edit {
        finetuned: base.weights.parameters(),
        ..Edit::default()
    };
    let err = RowEdits::new(&[&finetuned], &[Some(0)], base.device(), base.dtype())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("fine-tuned"), "{err}");
    let plain = random_edit(base, &[(0, Component::Q, 1, false)]);
    assert!(RowEdits::new(&[&plain], &[Some(1)], base.device(), base.dtype()).is_err());
    let edits = RowEdits::new(&[&plain], &[Some(0), None], base.device(), base.dtype()).unwrap();
    let packed = pack(&[vec![1, 2, 3]], true, 0, base.device()).unwrap();
    assert!(base
        .forward_with_edits(&packed.ids, &packed.valid, None, &edits)
        .is_err());
}

/// log_softmax of each row of `logits` [rows, vocab].
fn logprobs(logits: &Tensor) -> Tensor {
    candle_nn::ops::log_softmax(logits, candle_core::D::Minus1).unwrap()
}

#[test]
fn bf16_rows_match_their_variant_alone_within_bf16_rounding() {
    for arch in ["llama", "gemma3", "gpt2"] {
        let m = load_fixture(arch);
        let base = m.model.to_dtype(DType::BF16).unwrap();
        let edits = [
            random_edit(
                &base,
                &[(0, Component::Q, 3, true), (1, Component::MlpOut, 2, false)],
            ),
            random_edit(&base, &[(1, Component::V, 2, true)]),
        ];
        let rows = [Some(0), None, Some(1), Some(0)];
        let prompts: Vec<Vec<u32>> = ["The capital of France is", "12 x 7 =", "a", "Premise"]
            .iter()
            .map(|p| m.tokenizer.encode(*p, false).unwrap().get_ids().to_vec())
            .collect();
        let next = [5, 9, 11, 14];
        let refs: Vec<&Edit> = edits.iter().collect();
        let row_edits = RowEdits::new(&refs, &rows, base.device(), DType::BF16).unwrap();
        let (mixed_first, mixed_step) = prefill_and_step(&base, &prompts, &next, Some(&row_edits));
        for (i, row) in rows.iter().enumerate() {
            let mut alone = base.clone();
            if let Some(k) = row {
                edits[*k].apply(&mut alone).unwrap();
            }
            let (first, step) = prefill_and_step(&alone, &prompts, &next, None);
            for (got, want, what) in [
                (&mixed_first, &first, "prefill"),
                (&mixed_step, &step, "decoding step"),
            ] {
                let (g, w) = (got.get(i).unwrap(), want.get(i).unwrap());
                let diff = max_abs_diff(
                    &logprobs(&g.unsqueeze(0).unwrap()),
                    &logprobs(&w.unsqueeze(0).unwrap()),
                );
                assert!(
                    diff < 2e-2,
                    "{arch} bf16 row {i} ({what}): logprobs differ by {diff}"
                );
            }
        }
    }
}

#[test]
fn an_evaluation_of_several_variants_scores_each_as_alone() {
    use eigenprune_engine::eval::{
        choice_scores, evaluate, evaluate_variants, variant_choice_scores,
    };
    use std::sync::Arc;
    let ex = |prompt: &str, choices: &[&str], label: usize| eigenprune_engine::tasks::Example {
        prompt: prompt.into(),
        answer: choices[label].into(),
        choices: Some(choices.iter().map(|c| c.to_string()).collect()),
        label: Some(label),
    };
    let choice_examples = vec![
        ex(
            "The capital of France is",
            &[" Paris", " Rome", " a cat sat"],
            0,
        ),
        ex("12 x 7 =", &[" 84", " 19 x 19"], 1),
        ex(
            "Premise: the cat sat on the mat. Hypothesis: a cat sat.",
            &[" True", " False", " Neither"],
            2,
        ),
        ex("3 + 4", &[" = 7", " is 361."], 0),
        ex(
            "Does the premise entail the hypothesis?",
            &[" yes", " no"],
            1,
        ),
    ];
    let free_examples = common::times_seven();
    for arch in ["llama", "gemma3", "gpt2"] {
        let m = load_fixture(arch);
        let base = &m.model;
        let edits: Vec<Arc<Edit>> = (0..3)
            .map(|k| {
                Arc::new(random_edit(
                    base,
                    &[
                        (k % 2, Component::Q, 2 + k, true),
                        (1, Component::MlpIn, 3, k == 1),
                    ],
                ))
            })
            .collect();
        let variants: Vec<Option<Arc<Edit>>> = vec![
            Some(edits[0].clone()),
            None,
            Some(edits[1].clone()),
            Some(edits[2].clone()),
        ];
        let alone: Vec<Transformer> = variants
            .iter()
            .map(|v| {
                let mut t = base.clone();
                if let Some(e) = v {
                    e.apply(&mut t).unwrap();
                }
                t
            })
            .collect();
        // Every (example, choice) score of every variant, batched together, as alone.
        let together =
            variant_choice_scores(base, &m.tokenizer, &choice_examples, 2, &variants).unwrap();
        for (k, model) in alone.iter().enumerate() {
            let want = choice_scores(model, &m.tokenizer, &choice_examples, 2).unwrap();
            assert_eq!(together[k].len(), want.len());
            for (g, w) in together[k].iter().zip(&want) {
                assert_eq!((g.example, g.choice), (w.example, w.choice));
                assert!(
                    (g.logprob - w.logprob).abs() < 1e-4,
                    "{arch} variant {k}: {} vs {}",
                    g.logprob,
                    w.logprob
                );
            }
        }
        // The variants score differently (the check above is not of one model four times):
        // each edited variant moves some score off the base's (row 1). The edits are random
        // and unseeded, so no single score is sure to move.
        for k in [0, 2, 3] {
            let gap = together[k]
                .iter()
                .zip(&together[1])
                .map(|(v, b)| (v.logprob - b.logprob).abs())
                .fold(0f64, f64::max);
            assert!(
                gap > 1e-3,
                "{arch}: variant {k} scores as the base (gap {gap})"
            );
        }
        // Accuracies, on both kinds of task, as each evaluated alone.
        for examples in [&choice_examples, &free_examples] {
            let results =
                evaluate_variants(base, &m.tokenizer, examples, 3, &variants, &mut |_, _| true)
                    .unwrap();
            for (k, model) in alone.iter().enumerate() {
                let want = evaluate(model, &m.tokenizer, examples, 3, &mut |_, _| true).unwrap();
                assert_eq!(results[k], want, "{arch} variant {k}");
            }
        }
    }
}
