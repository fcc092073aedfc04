//! The S3 path against a real S3-compatible server (s3s-fs, which `.ci/run` installs): objects
//! round-trip, a wrong key is refused, and a pruning job stores its variant there.
//! One test per binary: it sets process-wide AWS_* variables.

mod common;

use common::process::start_s3;
use common::{cpu_engine, fixture, serve};

use std::time::Duration;

use bytes::Bytes;
use eigenprune::cli::serve::StoreArgs;
use eigenprune::storage::Storage;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_holds_objects_and_variants() {
    let dir = std::env::temp_dir().join(format!("eigenprune-s3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let Some(s3) = start_s3(&dir.join("s3")) else {
        return;
    };
    std::env::set_var("AWS_ENDPOINT_URL", &s3.endpoint);
    std::env::set_var("AWS_ALLOW_HTTP", "true");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ACCESS_KEY_ID", "AKTEST");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "SKTEST");
    let url = "s3://eigenprune/lab";
    let store = Storage::from_url(url).unwrap();
    let mut up = false;
    for _ in 0..100 {
        if store.ping().await {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "s3s-fs did not come up");
    store
        .put("a/b.txt", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(
        store.get("a/b.txt").await.unwrap(),
        Bytes::from_static(b"hello")
    );
    assert!(
        dir.join("s3/eigenprune/lab/a/b.txt").exists(),
        "the object is in the bucket under the prefix"
    );

    std::env::set_var("AWS_SECRET_ACCESS_KEY", "wrong");
    let bad = Storage::from_url(url).unwrap();
    assert!(bad.get("a/b.txt").await.is_err(), "a wrong key is refused");
    assert!(!bad.ping().await);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "SKTEST");

    // A pruning job through the service stores its edit in the bucket.
    let model = fixture("llama");
    let store_args = StoreArgs {
        data_dir: dir.join("data"),
        database_url: None,
        object_store: Some(url.into()),
    };
    let engine = cpu_engine(vec![model], 2);
    let base = serve(&store_args, &engine, 1).await;
    let client = reqwest::Client::new();
    let job: Value = client
        .post(format!("{base}/v1/pruning/jobs"))
        .json(&json!({"model": "llama", "task": "int-mult", "hyperparameters": {"portion": 0.1}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!("{base}/v1/pruning/jobs/{}", job["id"].as_str().unwrap());
    let mut done = Value::Null;
    for _ in 0..600 {
        done = client.get(&url).send().await.unwrap().json().await.unwrap();
        if done["status"] != "queued" && done["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(done["status"], "succeeded", "{done}");
    let variant = done["pruned_model"].as_str().unwrap();
    assert!(dir
        .join(format!("s3/eigenprune/lab/variants/{variant}.safetensors"))
        .exists());
    let c: Value = client
        .post(format!("{base}/v1/completions"))
        .json(&json!({"model": variant, "prompt": "2 x 7 =", "max_tokens": 2, "temperature": 0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(c["object"], "text_completion", "{c}");
    drop(s3);
    let _ = std::fs::remove_dir_all(&dir);
}
