//! openapi/openapi.json is what the code generates, and every documented route is served.

mod common;

use common::{cpu_engine, serve};

use std::path::PathBuf;

use eigenprune::cli::serve::StoreArgs;

#[test]
fn committed_openapi_is_fresh() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        committed == eigenprune::openapi::spec(),
        "openapi/openapi.json is stale: run `cargo run --release -- openapi > openapi/openapi.json`"
    );
}

/// `method path` with every path parameter `x` and an empty JSON object for a body.
fn request(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    method: &str,
) -> reqwest::RequestBuilder {
    let url = format!("{base}{}", path.replace("{id}", "x").replace("{name}", "x"));
    let with_body =
        |r: reqwest::RequestBuilder| r.header("content-type", "application/json").body("{}");
    match method {
        "get" => client.get(&url),
        "post" => with_body(client.post(&url)),
        "put" => with_body(client.put(&url)),
        "delete" => client.delete(&url),
        m => panic!("method {m}"),
    }
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let dir = std::env::temp_dir().join(format!("eigenprune-openapi-{}", std::process::id()));
    let store = StoreArgs {
        data_dir: dir.clone(),
        database_url: None,
        object_store: None,
    };
    let base = serve(&store, &cpu_engine(vec![], 1), 0).await;
    let client = reqwest::Client::new();
    let spec = eigenprune::openapi::spec();
    let mut operations = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.push((path.clone(), method.clone()));
        }
    }
    assert!(operations.len() >= 18, "{operations:?}");
    for (path, method) in &operations {
        let r = request(&client, &base, path, method).send().await.unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
        assert_ne!(
            body["error"]["code"], "route_not_found",
            "{method} {path} is documented but not served"
        );
        assert!(
            status < 500 || path == "/ready",
            "{method} {path}: {status} {body}"
        );
    }
    // The served document is the generated one, and /docs reads it.
    let served: serde_json::Value = client
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        served == spec,
        "/openapi.json differs from the generated document"
    );
    let docs = client.get(format!("{base}/docs")).send().await.unwrap();
    assert_eq!(docs.status().as_u16(), 200);
    let html = docs.text().await.unwrap();
    assert!(
        html.contains("spec-url=\"/openapi.json\"") && !html.contains("https://"),
        "{html}"
    );
    // The renderer comes from the binary, not a CDN.
    let js = client
        .get(format!("{base}/docs/rapidoc-min.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.headers()["content-encoding"], "gzip");
    assert!(js.bytes().await.unwrap().len() > 100_000);
    let _ = std::fs::remove_dir_all(&dir);
}
