//! OpenAI-exact behaviour of /v1/completions and /v1/chat/completions over a real socket, one
//! test per bug it once had: the end-of-sequence token in echo logprobs, stop strings with
//! non-ASCII characters, the chosen token in top_logprobs, unseeded sampling, unsupported
//! parameters, the model's own context limit, and one error shape everywhere.

mod common;

use common::{api, fixture, Api};

use rand::{rngs::StdRng, Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};

async fn llama(tag: &str) -> Api {
    api(vec![fixture("llama")], &format!("surface-{tag}")).await
}

/// The fixture's end-of-sequence token (config.json: eos_token_id).
const EOS: u32 = 0;

fn logprob_len(c: &Value) -> usize {
    c["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn echo_keeps_the_end_of_sequence_token() {
    let s = llama("echo_keeps_the_end_of_sequence_token").await;
    for prompt in [vec![5u32, 6, 7], vec![9, 10, 11, 12, 13]] {
        // The next token is EOS (forced): it is still an entry, and the choice stops.
        let body = json!({"model": "llama", "prompt": prompt, "max_tokens": 1, "echo": true,
                          "logprobs": 1, "temperature": 0, "logit_bias": {EOS.to_string(): 100}});
        let (status, c) = s.post("/v1/completions", body).await;
        assert_eq!(status, 200, "{c}");
        assert_eq!(logprob_len(&c), prompt.len() + 1, "{c}");
        let lp = &c["choices"][0]["logprobs"];
        assert_eq!(lp["tokens"][prompt.len()], "<|endoftext|>", "{c}");
        assert!(
            lp["token_logprobs"][prompt.len()].as_f64().unwrap() < 0.0,
            "{c}"
        );
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        assert_eq!(c["usage"]["completion_tokens"], 1);
        // Whatever comes next: max_tokens = 1 gives prompt + 1 entries.
        let body = json!({"model": "llama", "prompt": prompt, "max_tokens": 1, "echo": true,
                          "logprobs": 1, "temperature": 0});
        let (_, c) = s.post("/v1/completions", body).await;
        assert_eq!(logprob_len(&c), prompt.len() + 1, "{c}");
    }
}

/// Random strings over characters of 1 to 4 UTF-8 bytes, combining marks included.
fn unicode(rng: &mut StdRng, max: usize) -> String {
    const POOL: &[&str] = &[
        "a", "Z", " ", "\n", "é", "ß", "Ω", "日", "本", "🙂", "\u{301}", "\u{FFFD}", "€", "1", "ñ",
    ];
    let n = rng.random_range(1..=max);
    (0..n)
        .map(|_| POOL[rng.random_range(0..POOL.len())])
        .collect()
}

#[tokio::test]
async fn unicode_stop_strings_and_prompts_never_fail() {
    let s = llama("unicode_stop_strings_and_prompts_never_fail").await;
    let mut rng = StdRng::seed_from_u64(7);
    for i in 0..300 {
        let stop: Vec<String> = (0..rng.random_range(1..=3))
            .map(|_| unicode(&mut rng, 3))
            .collect();
        let stream = i % 2 == 1;
        let body = json!({"model": "llama", "prompt": unicode(&mut rng, 8), "max_tokens": 6,
                          "stop": stop, "stream": stream, "seed": i});
        let (status, _, text) = s
            .raw(
                Method::POST,
                "/v1/completions",
                body.to_string().into_bytes(),
            )
            .await;
        assert!(status < 500, "{status} for {body}: {text}");
        if status != 200 {
            continue;
        }
        if stream {
            assert!(text.trim_end().ends_with("data: [DONE]"), "{body}: {text}");
        } else {
            let c: Value = serde_json::from_str(&text).unwrap();
            let out = c["choices"][0]["text"].as_str().unwrap();
            assert!(
                stop.iter().all(|st| !out.contains(st.as_str())),
                "{body}: {out:?}"
            );
        }
    }
}

#[tokio::test]
async fn top_logprobs_hold_the_chosen_token() {
    let s = llama("top_logprobs_hold_the_chosen_token").await;
    for k in [0u64, 1, 3] {
        let body = json!({"model": "llama", "prompt": [3, 4], "max_tokens": 16, "temperature": 1.5,
                          "logprobs": k, "seed": 5, "echo": true});
        let (status, c) = s.post("/v1/completions", body).await;
        assert_eq!(status, 200, "{c}");
        let lp = &c["choices"][0]["logprobs"];
        let tokens = lp["tokens"].as_array().unwrap();
        for (i, (tok, top)) in tokens
            .iter()
            .zip(lp["top_logprobs"].as_array().unwrap())
            .enumerate()
        {
            if i == 0 {
                assert!(top.is_null(), "the first prompt token has no context");
                continue;
            }
            let top = top.as_object().unwrap();
            let chosen = &top[tok.as_str().unwrap()];
            assert!(top.len() as u64 <= k + 1 && !top.is_empty(), "{top:?}");
            let own = lp["token_logprobs"][i].as_f64().unwrap();
            assert!(
                (chosen.as_f64().unwrap() - own).abs() < 1e-5,
                "{top:?} vs {own}"
            );
        }
    }
}

#[tokio::test]
async fn sampling_without_a_seed_differs_and_a_seed_repeats() {
    let s = llama("sampling_without_a_seed_differs_and_a_seed_repeats").await;
    let text = |c: &Value| c["choices"][0]["text"].as_str().unwrap().to_string();
    let mut unseeded = std::collections::HashSet::new();
    for _ in 0..3 {
        let body = json!({"model": "llama", "prompt": "a", "max_tokens": 12, "temperature": 1});
        unseeded.insert(text(&s.post("/v1/completions", body).await.1));
    }
    assert!(unseeded.len() > 1, "{unseeded:?}");
    let body =
        json!({"model": "llama", "prompt": "a", "max_tokens": 12, "temperature": 1, "seed": 3});
    let a = text(&s.post("/v1/completions", body.clone()).await.1);
    assert_eq!(a, text(&s.post("/v1/completions", body).await.1));
}

#[tokio::test]
async fn every_parameter_is_honoured_or_refused_by_name() {
    let s = llama("every_parameter_is_honoured_or_refused_by_name").await;
    for (param, value) in [
        ("suffix", json!("x")),
        ("user", json!("alice")),
        ("functions", json!([])),
    ] {
        let mut body = json!({"model": "llama", "prompt": "a", "max_tokens": 2});
        body[param] = value;
        let (status, e) = s.post("/v1/completions", body).await;
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["error"]["code"], "unsupported_parameter");
        assert_eq!(e["error"]["param"], param);
    }
    let (_, e) = s
        .post(
            "/v1/chat/completions",
            json!({"model": "llama", "messages": [], "tools": []}),
        )
        .await;
    assert_eq!(e["error"]["param"], "tools", "{e}");

    // logit_bias forces a token; out-of-range penalties and bias are refused.
    let body = json!({"model": "llama", "prompt": "a", "max_tokens": 5, "temperature": 0,
                      "logit_bias": {"17": 100}});
    let (status, c) = s.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["usage"]["completion_tokens"], 5);
    let body = json!({"model": "llama", "prompt": "a", "max_tokens": 5, "temperature": 0,
                      "logit_bias": {"17": 100}, "logprobs": 0});
    let (_, c) = s.post("/v1/completions", body).await;
    let seventeen = c["choices"][0]["logprobs"]["tokens"][0].clone();
    assert!(c["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| *t == seventeen));
    for (body, code, param) in [
        (
            json!({"presence_penalty": 2.5}),
            "invalid_penalty",
            "presence_penalty",
        ),
        (
            json!({"frequency_penalty": -3}),
            "invalid_penalty",
            "frequency_penalty",
        ),
        (
            json!({"logit_bias": {"99999": 1}}),
            "invalid_logit_bias",
            "logit_bias",
        ),
        (
            json!({"logit_bias": {"1": 101}}),
            "invalid_logit_bias",
            "logit_bias",
        ),
        (json!({"best_of": 2, "n": 3}), "invalid_best_of", "best_of"),
        (
            json!({"best_of": 2, "stream": true}),
            "invalid_best_of",
            "best_of",
        ),
        (json!({"stop": [""]}), "invalid_stop", "stop"),
        (json!({"n": 9}), "invalid_n", "n"),
    ] {
        let mut b = json!({"model": "llama", "prompt": "a"});
        b.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        let (status, e) = s.post("/v1/completions", b.clone()).await;
        assert_eq!(
            (status, e["error"]["code"].as_str()),
            (400, Some(code)),
            "{b}: {e}"
        );
        assert_eq!(e["error"]["param"], param, "{b}");
    }

    // A frequency penalty changes what greedy decoding repeats.
    let plain = json!({"model": "llama", "prompt": [1, 2, 3], "max_tokens": 16, "temperature": 0});
    let mut penalised = plain.clone();
    penalised["frequency_penalty"] = json!(2.0);
    let (_, a) = s.post("/v1/completions", plain).await;
    let (_, b) = s.post("/v1/completions", penalised).await;
    assert_ne!(a["choices"][0]["text"], b["choices"][0]["text"]);

    // best_of: the kept choice is the one with the highest mean token logprob of the same
    // seeds' choices.
    let seeds = json!({"model": "llama", "prompt": "a", "max_tokens": 6, "seed": 21, "n": 4, "logprobs": 0});
    let (_, all) = s.post("/v1/completions", seeds).await;
    let mean = |c: &Value| {
        let l: Vec<f64> = c["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        l.iter().sum::<f64>() / l.len() as f64
    };
    let best = all["choices"]
        .as_array()
        .unwrap()
        .iter()
        .max_by(|a, b| mean(a).total_cmp(&mean(b)))
        .unwrap();
    let body = json!({"model": "llama", "prompt": "a", "max_tokens": 6, "seed": 21, "best_of": 4});
    let (status, one) = s.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["choices"].as_array().unwrap().len(), 1);
    assert_eq!(one["choices"][0]["text"], best["text"]);
}

#[tokio::test]
async fn streaming_with_echo_and_logprobs() {
    let s = llama("streaming_with_echo_and_logprobs").await;
    let body = json!({"model": "llama", "prompt": [4, 5, 6], "max_tokens": 5, "temperature": 0,
                      "echo": true, "logprobs": 2});
    let (_, whole) = s.post("/v1/completions", body.clone()).await;
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (status, _, text) = s
        .raw(
            Method::POST,
            "/v1/completions",
            streamed.to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let mut tokens = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(line).unwrap();
        if let Some(t) = chunk["choices"][0]["logprobs"]["tokens"].as_array() {
            tokens.extend(t.iter().cloned());
        }
    }
    assert_eq!(
        Value::from(tokens),
        whole["choices"][0]["logprobs"]["tokens"]
    );
}

#[tokio::test]
async fn context_length_comes_from_the_model() {
    let s = llama("context_length_comes_from_the_model").await;
    let (status, _, text) = s.raw(Method::GET, "/v1/models/llama", vec![]).await;
    assert_eq!(status, 200, "{text}");
    let m: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(m["context_length"], 64, "{m}");
    let prompt: Vec<u32> = (1..=60).collect();
    let ok = json!({"model": "llama", "prompt": prompt, "max_tokens": 4, "temperature": 0});
    assert_eq!(s.post("/v1/completions", ok).await.0, 200);
    let over = json!({"model": "llama", "prompt": prompt, "max_tokens": 5});
    let (status, e) = s.post("/v1/completions", over).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("context_length_exceeded"))
    );
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("64") && msg.contains("65") && msg.contains("60"),
        "{msg}"
    );
    let long: Vec<u32> = (1..=70).map(|i| i % 300).collect();
    let (_, e) = s
        .post(
            "/v1/completions",
            json!({"model": "llama", "prompt": long, "max_tokens": 0}),
        )
        .await;
    assert_eq!(e["error"]["param"], "prompt", "{e}");
    // Chat without a template in the model: a clear 400.
    let chat = json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}]});
    let (status, e) = s.post("/v1/chat/completions", chat).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("chat_template_missing")),
        "{e}"
    );
}

/// The one error shape: OpenAI's four fields, a bounded message, `server_error` only on 5xx.
fn assert_error_shape(status: u16, content_type: &str, body: &str, want: u16) -> Value {
    assert_eq!(status, want, "{body}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}: {body}"
    );
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    let e = &v["error"];
    for key in ["message", "type", "param", "code"] {
        assert!(e.get(key).is_some(), "no {key} in {v}");
    }
    assert!(
        e["message"].as_str().unwrap().chars().count() <= 1003,
        "{v}"
    );
    assert_eq!(e["type"] == "server_error", want >= 500, "{v}");
    v
}

#[tokio::test]
async fn every_error_has_one_shape() {
    let s = llama("every_error_has_one_shape").await;
    let cases: Vec<(Method, String, Vec<u8>, u16)> = vec![
        (
            Method::GET,
            "/v1/pruning/jobs?limit=abc".into(),
            vec![],
            400,
        ),
        (Method::GET, "/v1/pruning/jobs?limit=0".into(), vec![], 400),
        (Method::DELETE, "/v1/completions".into(), vec![], 405),
        (Method::GET, "/v1/pruning/jobs/%ff".into(), vec![], 400),
        (Method::GET, "/v1/pruning/jobs/pj-%00".into(), vec![], 400),
        (Method::GET, "/no/such/route".into(), vec![], 404),
        (
            Method::POST,
            "/v1/completions".into(),
            b"{not json".to_vec(),
            400,
        ),
        (Method::POST, "/v1/completions".into(), b"[]".to_vec(), 400),
        (Method::GET, "/v1/models/nope".into(), vec![], 404),
    ];
    for (method, path, body, want) in cases {
        let (status, ct, text) = s.raw(method.clone(), &path, body).await;
        assert_error_shape(status, &ct, &text, want);
    }
    // A body past the limit: a 413 in the same shape.
    let big = vec![b' '; eigenprune::app::MAX_BODY_BYTES + 10];
    let (status, ct, text) = s.raw(Method::POST, "/v1/completions", big).await;
    assert_error_shape(status, &ct, &text, 413);
    // A 31 MB model name is not echoed back whole.
    let name = "m".repeat(31 * 1024 * 1024);
    let body = json!({"model": name, "prompt": "x"})
        .to_string()
        .into_bytes();
    let (status, ct, text) = s.raw(Method::POST, "/v1/completions", body).await;
    let v = assert_error_shape(status, &ct, &text, 400);
    assert_eq!(v["error"]["code"], "invalid_id");
}

/// With n > 1, every choice echoes the same prompt with the same logprobs (the prompt is
/// scored once and shared), streamed or not.
#[tokio::test]
async fn echoed_prompt_is_shared_by_its_choices() {
    let s = llama("echo_n").await;
    let prompt = [4u32, 5, 6, 7];
    let body = json!({"model": "llama", "prompt": [prompt, [8, 9]], "max_tokens": 3, "n": 2,
                      "seed": 4, "echo": true, "logprobs": 1});
    let (status, c) = s.post("/v1/completions", body.clone()).await;
    assert_eq!(status, 200, "{c}");
    let choices = c["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for (pair, len) in choices.chunks(2).zip([prompt.len(), 2]) {
        for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
            let head = |c: &Value| c["logprobs"][key].as_array().unwrap()[..len].to_vec();
            assert_eq!(head(&pair[0]), head(&pair[1]), "{key}: {c}");
        }
    }
    let first = &choices[0]["logprobs"]["tokens"].as_array().unwrap()[..prompt.len()];
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (_, _, text) = s
        .raw(
            Method::POST,
            "/v1/completions",
            streamed.to_string().into_bytes(),
        )
        .await;
    let mut echoed: Vec<Vec<Value>> = vec![Vec::new(); 4];
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(line).unwrap();
        let c = &chunk["choices"][0];
        if let Some(t) = c["logprobs"]["tokens"].as_array() {
            echoed[c["index"].as_u64().unwrap() as usize].extend(t.iter().cloned());
        }
    }
    assert_eq!(&echoed[0][..prompt.len()], first);
    assert_eq!(&echoed[1][..prompt.len()], first);
}
