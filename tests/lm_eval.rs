//! lm-evaluation-harness's exact request shapes against the service with the real SmolLM2
//! (lm_eval/models/openai_completions.py, 0.4.13): `local-completions` loglikelihood (token-id
//! prompts in a list of lists, echo, logprobs 1, max_tokens 1, seed 1234; the score is the sum
//! of token_logprobs[ctxlen:-1]) gives every COPA and RTE choice the log-likelihood the
//! engine's own `eigenprune eval --scores` gives it, to 1e-3; `generate_until` (stop strings,
//! a batch of token prompts) and `local-chat-completions` (stop[:4]) answer in their shapes.

mod common;

use common::{api, smollm2};

use eigenprune_engine::eval::choice_scores;
use eigenprune_engine::{load_model, LoadOptions};
use serde_json::{json, Value};

/// lm-eval's parse_logprobs: (sum of the continuation's logprobs, is_greedy) per choice.
fn parse_logprobs(out: &Value, ctxlens: &[usize]) -> Vec<(f64, bool)> {
    let mut choices: Vec<&Value> = out["choices"].as_array().unwrap().iter().collect();
    choices.sort_by_key(|c| c["index"].as_u64());
    choices
        .iter()
        .zip(ctxlens)
        .map(|(c, &ctxlen)| {
            let lps = c["logprobs"]["token_logprobs"].as_array().unwrap();
            let tops = c["logprobs"]["top_logprobs"].as_array().unwrap();
            let cont = &lps[ctxlen..lps.len() - 1];
            let sum = cont.iter().map(|v| v.as_f64().unwrap()).sum();
            let greedy = cont.iter().zip(&tops[ctxlen..]).all(|(lp, top)| {
                let best = top
                    .as_object()
                    .unwrap()
                    .values()
                    .map(|v| v.as_f64().unwrap())
                    .fold(f64::MIN, f64::max);
                lp.as_f64().unwrap() == best
            });
            (sum, greedy)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loglikelihoods_through_the_api_equal_the_engines() {
    let Some(gguf) = smollm2() else { return };
    let spec = gguf.display().to_string();
    let s = api(vec![format!("smol={spec}")], "lm-eval").await;
    let m = load_model(&spec, &LoadOptions::default()).unwrap();
    let mut worst = 0f64;
    let mut compared = 0;
    for task in ["copa", "rte"] {
        let t = eigenprune_engine::tasks::builtin(task).unwrap();
        let examples = &t.test[..10];
        let engine = choice_scores(&m.model, &m.tokenizer, examples, 8).unwrap();
        // lm-eval batches requests: four (context + continuation) token lists per call.
        for batch in engine.chunks(4) {
            let prompts: Vec<Vec<u32>> = batch
                .iter()
                .map(|c| [c.prompt.clone(), c.answer.clone()].concat())
                .collect();
            let ctxlens: Vec<usize> = batch.iter().map(|c| c.prompt.len()).collect();
            let body = json!({"model": "smol", "prompt": prompts, "temperature": 0, "max_tokens": 1,
                              "logprobs": 1, "seed": 1234, "echo": true});
            let (status, out) = s.post("/v1/completions", body).await;
            assert_eq!(status, 200, "{out}");
            for (c, (lp, _greedy)) in batch.iter().zip(parse_logprobs(&out, &ctxlens)) {
                let gap = (lp - c.logprob).abs();
                assert!(
                    gap < 1e-3,
                    "{task} example {} choice {:?}: API {lp} vs engine {}",
                    c.example,
                    c.choice,
                    c.logprob
                );
                worst = worst.max(gap);
                compared += 1;
            }
        }
    }
    eprintln!("{compared} choices: largest |API - engine| = {worst:.2e} nats");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_until_and_chat_shapes() {
    let Some(gguf) = smollm2() else { return };
    let s = api(vec![format!("smol={}", gguf.display())], "lm-eval-gen").await;
    let m = load_model(&gguf.display().to_string(), &LoadOptions::default()).unwrap();
    let enc = |t: &str| m.tokenizer.encode(t, false).unwrap().get_ids().to_vec();
    let until = ["\n\n", "Question:", "<|im_end|>", "<|endoftext|>"];
    let prompts = [
        "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:",
        "Question: What is 12 plus 30?\nAnswer:",
    ];
    let body = json!({"prompt": prompts.iter().map(|p| enc(p)).collect::<Vec<_>>(), "model": "smol",
                      "max_tokens": 48, "temperature": 0, "stop": until, "seed": 1234});
    let (status, out) = s.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{out}");
    let choices = out["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        let text = c["text"].as_str().unwrap();
        assert!(until.iter().all(|u| !text.contains(u)), "{text:?}");
    }
    let chat = json!({"messages": [{"role": "user", "content": prompts[1]}], "model": "smol",
                      "max_tokens": 32, "temperature": 0, "stop": &until[..4], "seed": 1234});
    let (status, out) = s.post("/v1/chat/completions", chat).await;
    assert_eq!(status, 200, "{out}");
    let text = out["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        !text.is_empty() && until.iter().all(|u| !text.contains(u)),
        "{text:?}"
    );
    assert_eq!(out["object"], "chat.completion");
}
