//! The dashboard in a real browser: Debian's chromium driven through chromedriver (WebDriver)
//! against a live server on the real SmolLM2. Screenshots go to target/dashboard-screenshots/.
//! Without chromium or chromedriver the test skips visibly, unless EIGENPRUNE_REQUIRE_BROWSER
//! is set (CI installs both), where it fails.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{cpu_engine, serve_lab, Api};
use eigenprune::cli::serve::StoreArgs;
use eigenprune::lab::LabArgs;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

/// chromedriver on a free port, stopped on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn found(path: &str) -> bool {
    std::path::Path::new(path).exists()
}

/// chromedriver and chromium, or a visible skip (a failure where they are required).
fn driver() -> Option<Driver> {
    let (driver, browser) = ("/usr/bin/chromedriver", "/usr/bin/chromium");
    if !found(driver) || !found(browser) {
        let why =
            format!("{driver} or {browser} is missing (apt-get install chromium chromium-driver)");
        assert!(
            std::env::var_os("EIGENPRUNE_REQUIRE_BROWSER").is_none(),
            "EIGENPRUNE_REQUIRE_BROWSER is set, but: {why}"
        );
        common::skip::skip_without_requirement(&why);
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    Some(Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    })
}

async fn browser(driver: &Driver) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1280,800"]
        }
    });
    let caps = caps.as_object().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&driver.url)
            .await;
        match attempt {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("no WebDriver session: {e}"),
        }
    }
}

fn shots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
    std::fs::write(shots_dir().join(format!("{name}.png")), png).unwrap();
}

/// Polls `script` (returning a boolean) until true, or fails saying `what`.
async fn until(c: &Client, script: &str, secs: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        // An error while a page is loading counts as not yet.
        if matches!(c.execute(script, vec![]).await, Ok(Value::Bool(true))) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

async fn click(c: &Client, at: Locator<'_>) {
    c.find(at).await.unwrap().click().await.unwrap();
}

async fn set_field(c: &Client, id: &str, value: &str) {
    let e = c.find(Locator::Id(id)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

/// No horizontal scrolling of the page itself (wide tables scroll inside their box).
async fn fits_width(c: &Client, what: &str) {
    let fits = js(
        c,
        "return document.documentElement.scrollWidth <= window.innerWidth + 1",
    )
    .await;
    assert_eq!(fits, Value::Bool(true), "{what} scrolls sideways");
}

/// The page at a phone's width (390x844): no sideways scrolling, a screenshot; then back.
async fn phone_width(c: &Client, name: &str) {
    c.set_window_size(390, 844).await.unwrap();
    fits_width(c, name).await;
    shot(c, name).await;
    c.set_window_size(1280, 800).await.unwrap();
}

fn sum_attr(values: &Value) -> f64 {
    values
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let Some(gguf) = common::smollm2() else {
        return;
    };
    let Some(driver) = driver() else { return };
    let dir = std::env::temp_dir().join(format!("eigenprune-dashboard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = StoreArgs {
        data_dir: dir.clone(),
        database_url: None,
        object_store: None,
    };
    let engine = cpu_engine(vec![format!("smol={}", gguf.display())], 2);
    let (base, _state) = serve_lab(&store, &engine, &LabArgs::default(), 1).await;
    let api = Api {
        base: base.clone(),
        client: reqwest::Client::new(),
        key: None,
    };
    let c = browser(&driver).await;
    c.set_window_size(1280, 800).await.unwrap();

    // A bad entry: the field's error, and nothing submitted.
    c.goto(&format!("{base}/jobs/new")).await.unwrap();
    set_field(&c, "portion", "2").await;
    set_field(&c, "scoring_batches", "2").await;
    click(&c, Locator::Id("submit-job")).await;
    let error = c
        .wait()
        .for_element(Locator::Id("portion-error"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(error.contains("outside [0, 1]"), "{error}");
    let invalid = c
        .find(Locator::Id("portion"))
        .await
        .unwrap()
        .attr("aria-invalid")
        .await
        .unwrap();
    assert_eq!(invalid.as_deref(), Some("true"));
    shot(&c, "01-form-error").await;
    let (_, listed) = api.get("/v1/pruning/jobs").await;
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        0,
        "a bad form submits nothing"
    );

    // A good one: two portions and the controls, followed live on the list.
    set_field(&c, "portion", "0.05, 0.1").await;
    click(&c, Locator::Css("input[name=controls]")).await;
    click(&c, Locator::Id("submit-job")).await;
    let link = c
        .wait()
        .for_element(Locator::Css("#submitted a"))
        .await
        .unwrap();
    let job_id = link.text().await.unwrap();
    assert!(job_id.starts_with("pj-"), "{job_id}");
    js(&c, "window.__notReloaded = true; return true").await;
    until(
        &c,
        &format!("const s = document.querySelector('tr[data-job=\"{job_id}\"] .status'); return !!s && s.dataset.status === 'succeeded'"),
        900,
        "the job to show succeeded",
    )
    .await;
    assert_eq!(
        js(&c, "return window.__notReloaded === true").await,
        Value::Bool(true),
        "the list updated without a reload"
    );
    let (_, done) = api.get(&format!("/v1/pruning/jobs/{job_id}")).await;
    for (cell, key) in [("before", "accuracy_before"), ("after", "accuracy_after")] {
        let shown = js(
            &c,
            &format!(
                "return document.querySelector('tr[data-job=\"{job_id}\"] .{cell}').textContent"
            ),
        )
        .await;
        let want = format!(
            "{:.2}%",
            100.0 * done["result"][key]["accuracy"].as_f64().unwrap()
        );
        assert_eq!(shown, json!(want), "the live row's {cell} accuracy");
    }
    shot(&c, "02-jobs-list").await;
    phone_width(&c, "02b-jobs-list-phone").await;

    // The job page: every chart's data against the job's JSON.
    let (_, job) = api.get(&format!("/v1/pruning/jobs/{job_id}")).await;
    let result = &job["result"];
    c.goto(&format!("{base}/jobs/{job_id}")).await.unwrap();
    let heat = js(
        &c,
        "return [...document.querySelectorAll('#heatmap-k rect.cell')].map(r => r.dataset.count)",
    )
    .await;
    assert_eq!(
        sum_attr(&heat) as u64,
        result["portions"][0]["pruned"].as_u64().unwrap(),
        "heatmap cells sum to the pruned count"
    );
    let per_layer = js(&c, "return [...document.querySelectorAll('#per-layer-chart rect.bar')].map(r => r.dataset.value)").await;
    let want: Vec<f64> = result["portions"][0]["pruned_per_layer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let got: Vec<f64> = per_layer
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, want, "pruned per layer");
    let kept = js(
        &c,
        "return [...document.querySelectorAll('#histogram-k g.bin')].map(b => b.dataset.kept)",
    )
    .await;
    let cut = js(
        &c,
        "return [...document.querySelectorAll('#histogram-k g.bin')].map(b => b.dataset.pruned)",
    )
    .await;
    assert_eq!(
        (sum_attr(&kept) + sum_attr(&cut)) as u64,
        result["candidates"].as_u64().unwrap(),
        "the histogram holds every candidate"
    );
    assert_eq!(
        sum_attr(&cut) as u64,
        result["portions"][0]["pruned"].as_u64().unwrap()
    );
    let bars = js(&c, "return [...document.querySelectorAll('#accuracy-chart rect.bar')].map(r => [r.dataset.group, r.dataset.series, r.dataset.value])").await;
    let bars = bars.as_array().unwrap();
    // Per portion: before, after and the two controls.
    assert_eq!(bars.len(), 2 * 4, "{bars:?}");
    for (i, p) in result["portions"].as_array().unwrap().iter().enumerate() {
        let value = |series: &str| -> f64 {
            bars.iter()
                .filter(|b| b[0] == format!("portion {}", p["portion"]) && b[1] == series)
                .map(|b| b[2].as_str().unwrap().parse::<f64>().unwrap())
                .next()
                .unwrap_or_else(|| panic!("portion {i} has no {series} bar: {bars:?}"))
        };
        assert_eq!(
            value("before"),
            result["accuracy_before"]["accuracy"].as_f64().unwrap()
        );
        assert_eq!(
            value("attribution"),
            p["accuracy_after"]["accuracy"].as_f64().unwrap()
        );
        for control in p["controls"].as_array().unwrap() {
            let m = control["method"].as_str().unwrap();
            assert_eq!(value(m), control["accuracy"]["accuracy"].as_f64().unwrap());
        }
    }
    let paired = js(
        &c,
        "const p = document.querySelector('.paired'); return [p.dataset.gained, p.dataset.lost]",
    )
    .await;
    let (before, after) = (
        result["accuracy_before"]["right"].as_str().unwrap(),
        result["portions"][0]["accuracy_after"]["right"]
            .as_str()
            .unwrap(),
    );
    let gained = before
        .bytes()
        .zip(after.bytes())
        .filter(|p| *p == (b'0', b'1'))
        .count();
    let lost = before
        .bytes()
        .zip(after.bytes())
        .filter(|p| *p == (b'1', b'0'))
        .count();
    assert_eq!(paired, json!([gained.to_string(), lost.to_string()]));
    let spectrum = js(
        &c,
        "return document.querySelectorAll('#spectrum-chart circle.sv').length",
    )
    .await;
    assert!(spectrum.as_u64().unwrap() > 0, "the spectrum is drawn");
    shot(&c, "03-job-page").await;
    for (id, name) in [
        ("accuracy-section", "03a-accuracy"),
        ("pictures", "03b-pictures"),
    ] {
        let part = c.find(Locator::Id(id)).await.unwrap();
        let png = part.screenshot().await.unwrap();
        std::fs::write(shots_dir().join(format!("{name}.png")), png).unwrap();
    }
    fits_width(&c, "the job page at 1280").await;
    phone_width(&c, "04-job-page-phone").await;

    // The variant's playground: both streams, the variant's equal to the API's own answer.
    let variant = job["pruned_model"].as_str().unwrap().to_string();
    c.goto(&format!("{base}/variants/{variant}")).await.unwrap();
    set_field(&c, "prompt", "12 x 3 = ").await;
    set_field(&c, "max_tokens", "6").await;
    click(&c, Locator::Id("run-playground")).await;
    until(&c, "return ['out-base', 'out-variant'].every(id => document.getElementById(id).dataset.done === 'true')", 120, "both streams").await;
    let streamed = c
        .find(Locator::Id("out-variant"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (_, completion) = api
        .post(
            "/v1/completions",
            json!({"model": variant, "prompt": "12 x 3 = ", "max_tokens": 6, "temperature": 0}),
        )
        .await;
    assert_eq!(
        streamed.trim(),
        completion["choices"][0]["text"].as_str().unwrap().trim(),
        "the playground streams the variant"
    );
    shot(&c, "05-playground").await;
    phone_width(&c, "05b-playground-phone").await;

    // Evaluations: the base and the variant compared in one job, one table, one chart.
    c.goto(&format!("{base}/evaluations")).await.unwrap();
    c.find(Locator::Id("eval-task"))
        .await
        .unwrap()
        .select_by_value("int-mult")
        .await
        .unwrap();
    for m in ["smol", variant.as_str()] {
        click(
            &c,
            Locator::Css(&format!("input[name=models][value=\"{m}\"]")),
        )
        .await;
    }
    click(&c, Locator::Id("submit-evaluation")).await;
    until(
        &c,
        "return !!document.getElementById('evaluation')",
        600,
        "the evaluation's table",
    )
    .await;
    let url = c.current_url().await.unwrap();
    let ev_id = url.path().rsplit('/').next().unwrap().to_string();
    let (_, ev) = api.get(&format!("/v1/evaluations/{ev_id}")).await;
    let values = js(&c, "return [...document.querySelectorAll('#evaluation-chart rect.bar')].filter(r => r.dataset.series === 'paper metric').map(r => [r.dataset.group, r.dataset.value])").await;
    let want: Vec<Value> = ev["result"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| json!([m["model"], m["accuracy"]["accuracy"].to_string()]))
        .collect();
    assert_eq!(values, Value::Array(want));
    shot(&c, "06-evaluations").await;

    c.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
