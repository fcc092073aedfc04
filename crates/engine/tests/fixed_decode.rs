//! Decoding over the fixed cache (the path CUDA graphs replay) gives the tokens of the growing
//! cache's eager path, for every fixture architecture (GELU and SiLU, Phi's partial rotary,
//! GQA, Mistral's and Gemma-3's 4-token sliding windows), at batch 1 and with rows of other
//! lengths joining, leaving and being reused. On the CPU by default; on a GPU with
//! EIGENPRUNE_TEST_DEVICE=cuda (a CUDA build), where the steps are CUDA graphs and are also
//! checked against the same steps run eagerly.

mod common;

use candle_core::Tensor;
use common::load_fixture_on_test_device;
use eigenprune_engine::fixed_decode::FixedDecoder;
use eigenprune_engine::generate::{generate, SamplingParams};
use eigenprune_engine::{KvCache, Transformer};

const ARCHS: [&str; 6] = ["gpt2", "phi", "llama", "mistral", "qwen2", "gemma3"];

/// Feeds `input` after what `cache` holds (the growing cache) and returns the greedy next token.
fn greedy_next(model: &Transformer, cache: &mut KvCache, input: &[u32]) -> u32 {
    let ids = Tensor::new(input, model.device())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let valid = vec![vec![true; input.len()]];
    let hidden = model.forward(&ids, &valid, Some(cache), None).unwrap();
    let last = hidden.narrow(1, input.len() - 1, 1).unwrap();
    let logits = model.logits(&last).unwrap().flatten_all().unwrap();
    logits.argmax(0).unwrap().to_scalar::<u32>().unwrap()
}

/// Greedy tokens through the growing cache, step by step (no fixed cache whatever the device).
fn eager_greedy(model: &Transformer, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = KvCache::default();
    let mut out = vec![greedy_next(model, &mut cache, prompt)];
    while out.len() < n {
        let last = *out.last().unwrap();
        out.push(greedy_next(model, &mut cache, &[last]));
    }
    out
}

/// A prompt's prefill: its one-row cache and its first greedy token.
fn prefill(model: &Transformer, prompt: &[u32]) -> (KvCache, u32) {
    let mut cache = KvCache::default();
    let first = greedy_next(model, &mut cache, prompt);
    (cache, first)
}

fn prompt(len: usize, seed: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 37 + seed * 101 + 5) % 300)
        .collect()
}

#[test]
fn fixed_cache_decodes_the_eager_tokens_at_batch_one() {
    for arch in ARCHS {
        let loaded = load_fixture_on_test_device(arch);
        let model = &loaded.model;
        let p = prompt(7, 1);
        let want = eager_greedy(model, &p, 40);
        // generate() takes the fixed path: graphs on a GPU, the attention op on the CPU.
        let params = SamplingParams {
            max_tokens: 40,
            ..Default::default()
        };
        let (got, _) = generate(model, &p, &params, |_| true).unwrap();
        assert_eq!(got, want, "{arch}: generate()");
        let (cache, first) = prefill(model, &p);
        let mut decoder = FixedDecoder::new(model, 1, 64).unwrap();
        decoder.load_row(0, &cache).unwrap();
        let mut tokens = vec![first];
        while tokens.len() < 40 {
            decoder.step(model, &[*tokens.last().unwrap()]).unwrap();
            tokens.push(decoder.greedy().unwrap()[0]);
        }
        assert_eq!(tokens, want, "{arch}: the fixed decoder");
        // 7 + 40 positions: attention lengths 16, 32 and 64, one graph each on a GPU; one
        // graph for all when the attention kernel reads the lengths itself.
        let graphs = match (decoder.uses_graphs(), decoder.fused_attention(model)) {
            (false, _) => 0,
            (true, true) => 1,
            (true, false) => 3,
        };
        assert_eq!(decoder.graphs_captured(), graphs, "{arch}");
    }
}

/// Rows of lengths 3, 11 and 20 share a 4-row decoder; a fourth prompt joins after 5 steps,
/// the first row leaves after 8 and a fifth prompt takes its row. Every row's tokens are its
/// own prompt's eager tokens, and so are the free row's neighbours'.
#[test]
fn rows_of_other_lengths_join_and_leave_with_their_own_tokens() {
    for arch in ARCHS {
        let loaded = load_fixture_on_test_device(arch);
        let model = &loaded.model;
        let prompts: Vec<Vec<u32>> = [3, 11, 20, 6, 9]
            .iter()
            .enumerate()
            .map(|(i, &n)| prompt(n, i as u32 + 2))
            .collect();
        let want: Vec<Vec<u32>> = prompts.iter().map(|p| eager_greedy(model, p, 24)).collect();
        let mut decoder = FixedDecoder::new(model, 4, 64).unwrap();
        // rows[r] = (prompt index, tokens so far)
        let mut rows: Vec<Option<(usize, Vec<u32>)>> = vec![None; 4];
        let join = |decoder: &mut FixedDecoder, rows: &mut Vec<_>, row: usize, i: usize| {
            let (cache, first) = prefill(model, &prompts[i]);
            decoder.load_row(row, &cache).unwrap();
            rows[row] = Some((i, vec![first]));
        };
        for (row, i) in [(0, 0), (1, 1), (2, 2)] {
            join(&mut decoder, &mut rows, row, i);
        }
        let mut finished: Vec<(usize, Vec<u32>)> = Vec::new();
        for step in 0..40 {
            if step == 5 {
                join(&mut decoder, &mut rows, 3, 3);
            }
            if step == 8 {
                let (i, tokens) = rows[0].take().unwrap();
                decoder.free_row(0);
                finished.push((i, tokens));
                join(&mut decoder, &mut rows, 0, 4);
            }
            let inputs: Vec<u32> = rows
                .iter()
                .map(|r| r.as_ref().map_or(0, |(_, t)| *t.last().unwrap()))
                .collect();
            if rows.iter().flatten().all(|(_, t)| t.len() >= 24) {
                break;
            }
            decoder.step(model, &inputs).unwrap();
            let next = decoder.greedy().unwrap();
            for (row, slot) in rows.iter_mut().enumerate() {
                if let Some((_, tokens)) = slot {
                    if tokens.len() < 24 {
                        tokens.push(next[row]);
                    }
                }
            }
        }
        finished.extend(rows.into_iter().flatten());
        assert_eq!(finished.len(), 5, "{arch}");
        for (i, tokens) in finished {
            let n = tokens.len();
            assert_eq!(tokens, want[i][..n], "{arch}: prompt {i}");
            assert!(n >= 9, "{arch}: prompt {i} decoded {n} tokens");
        }
    }
}

/// The graphs replay exactly the steps they captured: logits equal bit for bit to the same
/// steps run eagerly (a CUDA build on a GPU only).
#[cfg(feature = "cuda")]
#[test]
fn graph_steps_equal_eager_steps() {
    for arch in ARCHS {
        let loaded = load_fixture_on_test_device(arch);
        let model = &loaded.model;
        if !eigenprune_engine::fixed_decode::graphs_enabled(model.device()) {
            eprintln!("SKIPPED graph_steps_equal_eager_steps: no GPU (graphs run on a GPU only)");
            return;
        }
        let p = prompt(5, 9);
        let (cache, first) = prefill(model, &p);
        let mut graphs = FixedDecoder::with_graphs(model, 2, 64, true).unwrap();
        let mut eager = FixedDecoder::with_graphs(model, 2, 64, false).unwrap();
        for d in [&mut graphs, &mut eager] {
            d.load_row(1, &cache).unwrap();
        }
        let mut token = first;
        for _ in 0..30 {
            graphs.step(model, &[0, token]).unwrap();
            eager.step(model, &[0, token]).unwrap();
            let (a, b) = (graphs.logits(), eager.logits());
            assert_eq!(
                common::max_abs_diff(&a.narrow(0, 1, 1).unwrap(), &b.narrow(0, 1, 1).unwrap()),
                0.0,
                "{arch}"
            );
            token = graphs.greedy().unwrap()[1];
            assert_eq!(token, eager.greedy().unwrap()[1], "{arch}");
        }
        assert!(graphs.uses_graphs() && !eager.uses_graphs());
    }
}

/// The batcher over the fixed cache (CUDA graphs on a GPU): requests of other lengths, greedy,
/// sampled and with logprobs, decoded together, each give their tokens alone (eager steps
/// over a growing cache); the batch grows from 1 to 8 rows while rows run.
#[test]
fn the_batcher_over_a_fixed_cache_gives_each_request_its_tokens_alone() {
    use eigenprune_engine::batcher::{Batcher, Event};
    use eigenprune_engine::generate::generate_with;
    use std::sync::Arc;
    for arch in ["llama", "gemma3", "phi"] {
        let m = Arc::new(load_fixture_on_test_device(arch));
        let batcher = Batcher::start_with(m.clone(), 8, true);
        let cases: Vec<(Vec<u32>, SamplingParams)> = (0..7)
            .map(|i| {
                let params = SamplingParams {
                    max_tokens: 5 + 4 * i,
                    temperature: if i % 3 == 1 { 0.8 } else { 0.0 },
                    logprobs: (i % 3 == 2).then_some(2),
                    seed: 3 + i as u64,
                    ..Default::default()
                };
                (prompt(2 + 3 * i, i as u32), params)
            })
            .collect();
        // One request first (a 1-row decoder), then the rest join it.
        let first = batcher.submit(cases[0].0.clone(), cases[0].1.clone());
        let mut receivers = vec![first];
        receivers.extend(
            cases[1..]
                .iter()
                .map(|(ids, p)| batcher.submit(ids.clone(), p.clone())),
        );
        for ((ids, params), rx) in cases.iter().zip(&receivers) {
            let (alone, _) = generate_with(&m.model, ids, params, false, |_| true).unwrap();
            let mut got = Vec::new();
            for ev in rx.iter() {
                match ev {
                    Event::Token(t) => {
                        assert_eq!(t.logprob.is_some(), params.logprobs.is_some());
                        got.push(t.id)
                    }
                    Event::Stop(_) | Event::Done => break,
                    Event::Failed(e) => panic!("{arch}: {e}"),
                }
            }
            assert_eq!(got, alone, "{arch}: {params:?}");
        }
    }
}
