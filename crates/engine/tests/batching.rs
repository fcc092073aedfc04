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
            Event::Token(t) => out.push(t),
            Event::Done => return out,
            Event::Failed(e) => panic!("generation failed: {e}"),
        }
    }
    panic!("the batcher hung up without Done");
}

#[test]
fn batched_requests_match_single_generation() {
    for arch in ["llama", "gemma3", "gpt2"] {
        let m = Arc::new(load_fixture(arch));
        let batcher = Batcher::start(m.clone(), 8);
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

#[test]
fn a_short_request_does_not_wait_for_a_long_one() {
    let m = Arc::new(load_fixture("llama"));
    let batcher = Batcher::start(m.clone(), 8);
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
    // When the short one is done the long one is still decoding: fewer than all its tokens
    // can have arrived.
    let arrived = long
        .try_iter()
        .filter(|e| matches!(e, Event::Token(_)))
        .count();
    assert!(
        arrived < 48,
        "the long request already finished ({arrived} tokens)"
    );
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

#[test]
fn a_full_batch_makes_requests_wait_not_fail() {
    let m = Arc::new(load_fixture("llama"));
    let batcher = Batcher::start(m.clone(), 1);
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
