//! Completions under pressure, on the real SmolLM2 (its decoding steps take milliseconds, so
//! steps can be counted): a model's waiting line is bounded (429), and a client that goes
//! away, streamed or not, stops its sequences within one decoding step.

mod common;

use std::time::{Duration, Instant};

use common::{serve_lab, smollm2};
use eigenprune::app::AppState;
use eigenprune::cli::serve::{EngineArgs, StoreArgs};
use eigenprune::lab::LabArgs;
use futures::StreamExt;
use serde_json::{json, Value};

/// Waits until `done` holds (polling every 2 ms), at most 60 s.
async fn until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn idle(state: &AppState) -> bool {
    state.host.decoding_load() == (0, 0)
}

fn long(n: usize, stream: bool) -> Value {
    json!({"model": "smol", "prompt": "Once upon a time", "n": n, "max_tokens": 1500,
           "temperature": 1.0, "stream": stream})
}

/// Steps run between the client going away (`gone`) and the batcher being idle again.
async fn steps_after(state: &AppState, gone: usize) -> usize {
    until("the abandoned sequences stop", || idle(state)).await;
    state.host.decode_steps() - gone
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_is_bounded_and_abandoned_sequences_stop() {
    let Some(model) = smollm2() else { return };
    let dir = std::env::temp_dir().join(format!("eigenprune-pressure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = StoreArgs {
        data_dir: dir,
        database_url: None,
        object_store: None,
    };
    let engine = EngineArgs {
        preload: vec![format!("smol={}", model.display())],
        device: "cpu".into(),
        dtype: "f32".into(),
        max_resident_models: 2,
        max_batch_rows: 2,
        edit_pool_mb: 256,
        edit_host_mb: 1024,
        quantized: false,
    };
    let lab = LabArgs {
        max_waiting_sequences: 3,
        ..LabArgs::default()
    };
    let (base, state) = serve_lab(&store, &engine, &lab, 0).await;
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/completions");

    // Two rows decode; three more wait; a fourth waiting one is refused.
    let a = client.post(&url).json(&long(2, true)).send().await.unwrap();
    let mut a = a.bytes_stream();
    a.next().await.unwrap().unwrap();
    let b = client.post(&url).json(&long(3, true)).send().await.unwrap();
    until("three sequences wait", || {
        state.host.decoding_load() == (2, 3)
    })
    .await;
    let r = client
        .post(&url)
        .json(&long(1, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_overloaded", "{body}");

    // Both streams' clients go away: every sequence stops, the waiting ones without decoding.
    let gone = state.host.decode_steps();
    drop(a);
    drop(b);
    let steps = steps_after(&state, gone).await;
    eprintln!("decoding steps after the client left: {steps}");
    assert!(
        steps <= 2,
        "{steps} steps ran after the streams' clients left"
    );

    // A non-streamed request whose client gives up after 2.5 s (time for a few steps on a
    // loaded 2-core machine).
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(2500))
        .build()
        .unwrap();
    let before = state.host.decode_steps();
    let r = quick.post(&url).json(&long(2, false)).send().await;
    assert!(
        r.is_err_and(|e| e.is_timeout()),
        "the request should outlast 2.5 s"
    );
    let gone = state.host.decode_steps();
    assert!(
        gone - before > 3,
        "it was decoding when its client left ({} steps)",
        gone - before
    );
    let steps = steps_after(&state, gone).await;
    eprintln!("decoding steps after the client left: {steps}");
    assert!(steps <= 2, "{steps} steps ran after the client left");
    assert_eq!(
        state.limiter.held("local"),
        0,
        "its sequences are given back"
    );

    // Two 10 MB prompts are parsed and tokenised off the runtime's threads: /health answers
    // while they are.
    let huge = "lorem ipsum dolor sit amet ".repeat(10 * 1024 * 1024 / 27);
    let big: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            let body = json!({"model": "smol", "prompt": huge, "max_tokens": 1});
            tokio::spawn(async move {
                client
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let h = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(h.status().as_u16(), 200);
    }
    assert!(
        big.iter().any(|b| !b.is_finished()),
        "/health answered only after the big prompts were done"
    );
    for b in big {
        assert_eq!(b.await.unwrap(), 400, "too long for the context");
    }

    // The server still answers.
    let r = client
        .post(&url)
        .json(&json!({"model": "smol", "prompt": "Hi", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
