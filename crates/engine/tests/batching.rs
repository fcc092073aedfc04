//! Continuous batching: requests decoded together give the tokens each gives alone, a short
//! request finishes while a long one is still going, and a dropped receiver cancels.

mod common;

use common::load_fixture;

use std::sync::Arc;

use eigenprune_engine::batcher::{Batcher, Event};
use eigenprune_engine::generate::{generate, SamplingParams};

fn tokens(rx: &std::sync::mpsc::Receiver<Event>) -> Vec<u32> {
    let mut out = Vec::new();
    for ev in rx.iter() {
        match ev {
            Event::Token(t) => out.push(t.id),
            Event::Stop(_) | Event::Done => return out,
            Event::Failed(e) => panic!("generation failed: {e}"),
        }
    }
    panic!("the batcher hung up without Done");
}

fn batched_requests_match_single_generation(fixed_kv: bool) {
    for arch in ["llama", "gemma3", "gpt2"] {
        let m = Arc::new(load_fixture(arch));
        let batcher = Batcher::start_with(m.clone(), 8, fixed_kv);
        let prompts = [
            "The capital of France is",
            "12 x 7 =",
            "Premise: the cat sat on the mat.",
        ];
        let cases: Vec<(Vec<u32>, SamplingParams)> = prompts
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                let ids = m.tokenizer.encode(*p, false).unwrap().get_ids().to_vec();
                [0.0, 0.8].map(|temperature| {
                    let params = SamplingParams {
                        max_tokens: 6 + 5 * i,
                        temperature,
                        seed: 11 + i as u64,
                        ..Default::default()
                    };
                    (ids.clone(), params)
                })
            })
            .collect();
        // Everything submitted before anything is read: they decode together.
        let receivers: Vec<_> = cases
            .iter()
            .map(|(ids, p)| batcher.submit(ids.clone(), p.clone()))
            .collect();
        for ((ids, params), rx) in cases.iter().zip(&receivers) {
            let (alone, _) = generate(&m.model, ids, params, |_| true).unwrap();
            assert_eq!(tokens(rx), alone, "{arch}: {params:?}");
        }
    }
}

fn a_short_request_does_not_wait_for_a_long_one(fixed_kv: bool) {
    let m = Arc::new(load_fixture("llama"));
    let batcher = Batcher::start_with(m.clone(), 8, fixed_kv);
    let ids = m
        .tokenizer
        .encode("12 x 7 =", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let long = batcher.submit(
        ids.clone(),
        SamplingParams {
            max_tokens: 48,
            ..Default::default()
        },
    );
    let short = batcher.submit(
        ids,
        SamplingParams {
            max_tokens: 2,
            ..Default::default()
        },
    );
    assert_eq!(tokens(&short).len(), 2);
    // Had the short one waited, the batcher would have run the long one's 47 decoding steps
    // (its first token comes from the prefill) and then the short one's: 48 by the time it is
    // done. It joined the running batch instead, so fewer steps have run, however fast they
    // are. (Counting the long one's tokens that had arrived raced the decoding thread: on the
    // fixed cache a step of this model decodes the rest before the test thread reads.)
    let steps = batcher.steps();
    assert!(steps < 48, "the short request waited: {steps} steps");
    // Dropping a receiver cancels; the batcher goes on serving others.
    drop(long);
    let again = batcher.submit(
        m.tokenizer.encode("The", false).unwrap().get_ids().to_vec(),
        SamplingParams {
            max_tokens: 3,
            ..Default::default()
        },
    );
    assert_eq!(tokens(&again).len(), 3);
}

fn a_full_batch_makes_requests_wait_not_fail(fixed_kv: bool) {
    let m = Arc::new(load_fixture("llama"));
    let batcher = Batcher::start_with(m.clone(), 1, fixed_kv);
    let ids = m
        .tokenizer
        .encode("3 x 7 =", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let params = SamplingParams {
        max_tokens: 5,
        ..Default::default()
    };
    let receivers: Vec<_> = (0..3)
        .map(|_| batcher.submit(ids.clone(), params.clone()))
        .collect();
    let (alone, _) = generate(&m.model, &ids, &params, |_| true).unwrap();
    for rx in &receivers {
        assert_eq!(tokens(rx), alone);
    }
}

/// The batcher's per-token logprobs equal the teacher-forced ones of the same sequence, and a
/// stop token arrives as `Stop` with its own logprob.
fn batcher_logprobs_match_teacher_forcing(fixed_kv: bool) {
    let m = Arc::new(load_fixture("llama"));
    let batcher = Batcher::start_with(m.clone(), 8, fixed_kv);
    let prompt: Vec<u32> = vec![1, 5, 9, 2, 7];
    let params = SamplingParams {
        max_tokens: 6,
        logprobs: Some(3),
        ..Default::default()
    };
    let mut ids = prompt.clone();
    let mut got = Vec::new();
    for ev in batcher.submit(prompt.clone(), params).iter() {
        match ev {
            Event::Token(t) | Event::Stop(t) => {
                ids.push(t.id);
                got.push(t.logprob.expect("asked for logprobs"));
            }
            Event::Done => break,
            Event::Failed(e) => panic!("{e}"),
        }
    }
    let want = eigenprune_engine::generate::sequence_logprobs(&m.model, &ids, 3).unwrap();
    let want = &want[prompt.len() - 1..];
    assert_eq!(got.len(), want.len());
    for ((lp, top), (wlp, wtop)) in got.iter().zip(want) {
        assert!((lp - wlp).abs() < 1e-4, "{lp} vs {wlp}");
        assert_eq!(top.len(), 3);
        assert_eq!(top[0].0, wtop[0].0);
        // Greedy: the chosen token is the most likely one.
        assert!((top[0].1 - lp).abs() < 1e-6);
    }
}

/// `logit_bias` forces a token; a large frequency penalty forbids repeating one.
fn logit_bias_and_penalties_steer_greedy_decoding(fixed_kv: bool) {
    let m = Arc::new(load_fixture("llama"));
    let batcher = Batcher::start_with(m.clone(), 8, fixed_kv);
    let forced = SamplingParams {
        max_tokens: 4,
        logit_bias: vec![(17, 100.0)],
        ..Default::default()
    };
    assert_eq!(tokens(&batcher.submit(vec![1, 2, 3], forced)), vec![17; 4]);
    let no_repeats = SamplingParams {
        max_tokens: 12,
        frequency_penalty: 1000.0,
        ..Default::default()
    };
    let out = tokens(&batcher.submit(vec![1, 2, 3], no_repeats));
    let mut unique = out.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), out.len(), "{out:?}");
    let plain = tokens(&batcher.submit(
        vec![1, 2, 3],
        SamplingParams {
            max_tokens: 12,
            ..Default::default()
        },
    ));
    assert_ne!(
        plain, out,
        "the penalty changed nothing; pick a prompt that repeats"
    );
}

/// A random low-rank edit of two maps (with a bias delta), as a pruning job's edit looks.
fn random_edit(
    model: &eigenprune_engine::Transformer,
    layer: usize,
) -> eigenprune_engine::edit::Edit {
    use candle_core::Tensor;
    use eigenprune_engine::edit::{Edit, MatrixEdit};
    use eigenprune_engine::Component;
    let dev = model.device();
    let matrices = [(Component::Q, 2), (Component::MlpOut, 3)]
        .into_iter()
        .map(|(component, rank)| {
            let (lin, _) = eigenprune_engine::svd::site_map(model, layer, component);
            let (out, d_in) = lin.weight.dims2().unwrap();
            MatrixEdit {
                layer,
                component,
                a: Tensor::randn(0f32, 0.5, (rank, d_in), dev).unwrap(),
                b: Tensor::randn(0f32, 0.5, (out, rank), dev).unwrap(),
                bias_delta: Some(Tensor::randn(0f32, 0.3, out, dev).unwrap()),
            }
        })
        .collect();
    Edit {
        matrices,
        ..Edit::default()
    }
}

fn variants_decode_in_their_base_batch_as_they_do_alone(fixed_kv: bool) {
    for arch in ["llama", "gemma3", "gpt2"] {
        let m = Arc::new(load_fixture(arch));
        let edits: Vec<Arc<eigenprune_engine::edit::Edit>> =
            (0..2).map(|l| Arc::new(random_edit(&m.model, l))).collect();
        let alone_models: Vec<_> = edits
            .iter()
            .map(|e| {
                let mut v = m.model.clone();
                e.apply(&mut v).unwrap();
                v
            })
            .collect();
        let batcher = Batcher::start_with(m.clone(), 8, fixed_kv);
        let prompts = [
            "The capital of France is",
            "12 x 7 =",
            "Premise: the cat sat.",
        ];
        // (prompt, variant, max_tokens, temperature): base and both variants, interleaved.
        let cases: Vec<(Vec<u32>, Option<usize>, SamplingParams)> = (0..6)
            .map(|i| {
                let ids = m
                    .tokenizer
                    .encode(prompts[i % 3], false)
                    .unwrap()
                    .get_ids()
                    .to_vec();
                let params = SamplingParams {
                    max_tokens: 4 + 3 * i,
                    temperature: if i % 2 == 0 { 0.0 } else { 0.8 },
                    seed: 7 + i as u64,
                    ..Default::default()
                };
                (ids, [None, Some(0), Some(1)][i % 3], params)
            })
            .collect();
        let receivers: Vec<_> = cases
            .iter()
            .map(|(ids, v, p)| {
                batcher.submit_to(ids.clone(), p.clone(), v.map(|k| edits[k].clone()))
            })
            .collect();
        for ((ids, variant, params), rx) in cases.iter().zip(&receivers) {
            let model = variant.map_or(&m.model, |k| &alone_models[k]);
            let (alone, _) = generate(model, ids, params, |_| true).unwrap();
            assert_eq!(tokens(rx), alone, "{arch}: variant {variant:?}, {params:?}");
        }
        // An edit of another shape fails its own request only.
        let mut wrong = random_edit(&m.model, 0);
        wrong.matrices[0].a =
            candle_core::Tensor::zeros((2, 3), candle_core::DType::F32, m.model.device()).unwrap();
        let bad = batcher.submit_to(
            cases[0].0.clone(),
            cases[0].2.clone(),
            Some(Arc::new(wrong)),
        );
        let good = batcher.submit(cases[0].0.clone(), cases[0].2.clone());
        assert!(matches!(bad.recv().unwrap(), Event::Failed(_)));
        assert!(!tokens(&good).is_empty());
    }
}

/// Echo scoring through the batcher: requests of the base and of two variants that arrive
/// together score in one batched pass, each as its own model scores the prompt alone.
fn scoring_requests_of_mixed_variants_match_each_alone(fixed_kv: bool) {
    for arch in ["llama", "gemma3", "gpt2"] {
        let m = Arc::new(load_fixture(arch));
        let edits: Vec<Arc<eigenprune_engine::edit::Edit>> =
            (0..2).map(|l| Arc::new(random_edit(&m.model, l))).collect();
        let batcher = Batcher::start_with(m.clone(), 8, fixed_kv);
        let prompts = [
            "The capital of France is",
            "12 x 7 = 84",
            "Premise: the cat sat.",
        ];
        let cases: Vec<(Vec<u32>, Option<usize>)> = (0..6)
            .map(|i| {
                let ids = m
                    .tokenizer
                    .encode(prompts[i % 3], false)
                    .unwrap()
                    .get_ids()
                    .to_vec();
                (ids, [None, Some(0), Some(1)][(i + i / 3) % 3])
            })
            .collect();
        let receivers: Vec<_> = cases
            .iter()
            .map(|(ids, v)| {
                batcher
                    .with_variant(v.map(|k| edits[k].clone()))
                    .score(ids.clone(), 3)
            })
            .collect();
        for ((ids, variant), rx) in cases.iter().zip(&receivers) {
            let mut alone = m.model.clone();
            if let Some(k) = variant {
                edits[*k].apply(&mut alone).unwrap();
            }
            let want = eigenprune_engine::generate::sequence_logprobs(&alone, ids, 3).unwrap();
            let got = rx.recv().unwrap().unwrap();
            assert_eq!(got.len(), ids.len() - 1);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g.0 - w.0).abs() < 1e-4,
                    "{arch} {variant:?}: {} vs {}",
                    g.0,
                    w.0
                );
                let ids = |t: &Vec<(u32, f32)>| t.iter().map(|x| x.0).collect::<Vec<_>>();
                assert_eq!(ids(&g.1), ids(&w.1), "{arch} {variant:?}");
            }
        }
    }
}

/// Every test above, with the running batch over a growing cache (eager steps) and over a
/// fixed one (the form CUDA graphs replay on a GPU; eager steps here).
mod caches {
    #[test]
    fn batched_requests_match_single_generation_growing() {
        super::batched_requests_match_single_generation(false);
    }
    #[test]
    fn batched_requests_match_single_generation_fixed() {
        super::batched_requests_match_single_generation(true);
    }
    #[test]
    fn a_short_request_does_not_wait_for_a_long_one_growing() {
        super::a_short_request_does_not_wait_for_a_long_one(false);
    }
    #[test]
    fn a_short_request_does_not_wait_for_a_long_one_fixed() {
        super::a_short_request_does_not_wait_for_a_long_one(true);
    }
    #[test]
    fn a_full_batch_makes_requests_wait_not_fail_growing() {
        super::a_full_batch_makes_requests_wait_not_fail(false);
    }
    #[test]
    fn a_full_batch_makes_requests_wait_not_fail_fixed() {
        super::a_full_batch_makes_requests_wait_not_fail(true);
    }
    #[test]
    fn batcher_logprobs_match_teacher_forcing_growing() {
        super::batcher_logprobs_match_teacher_forcing(false);
    }
    #[test]
    fn batcher_logprobs_match_teacher_forcing_fixed() {
        super::batcher_logprobs_match_teacher_forcing(true);
    }
    #[test]
    fn logit_bias_and_penalties_steer_greedy_decoding_growing() {
        super::logit_bias_and_penalties_steer_greedy_decoding(false);
    }
    #[test]
    fn logit_bias_and_penalties_steer_greedy_decoding_fixed() {
        super::logit_bias_and_penalties_steer_greedy_decoding(true);
    }
    #[test]
    fn variants_decode_in_their_base_batch_as_they_do_alone_growing() {
        super::variants_decode_in_their_base_batch_as_they_do_alone(false);
    }
    #[test]
    fn variants_decode_in_their_base_batch_as_they_do_alone_fixed() {
        super::variants_decode_in_their_base_batch_as_they_do_alone(true);
    }
    #[test]
    fn scoring_requests_of_mixed_variants_match_each_alone_growing() {
        super::scoring_requests_of_mixed_variants_match_each_alone(false);
    }
    #[test]
    fn scoring_requests_of_mixed_variants_match_each_alone_fixed() {
        super::scoring_requests_of_mixed_variants_match_each_alone(true);
    }
}
