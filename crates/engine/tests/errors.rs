//! Loading errors name the problem.

mod common;

use common::fixture_dir;

use std::path::{Path, PathBuf};

use eigenprune_engine::{load_model, LoadOptions};

fn copy_fixture(name: &str, tag: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("eigenprune-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture_dir(name).join(f), dst.join(f)).unwrap();
    }
    dst
}

fn load_err(path: &Path) -> String {
    load_model(path.to_str().unwrap(), &LoadOptions::default())
        .err()
        .expect("loading should fail")
        .to_string()
}

#[test]
fn missing_file_is_named() {
    let dir = copy_fixture("llama", "missing");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("file not found") && err.contains("tokenizer.json"),
        "{err}"
    );
    assert!(load_err(Path::new("./no/such/model.gguf")).contains("file not found"));
}

#[test]
fn unsupported_architecture_lists_the_supported_ones() {
    let dir = copy_fixture("llama", "arch");
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let cfg = cfg
        .replace("LlamaForCausalLM", "BertForMaskedLM")
        .replace("\"llama\"", "\"bert\"");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("BertForMaskedLM") && err.contains("PhiForCausalLM"),
        "{err}"
    );
}

#[test]
fn shape_mismatch_names_the_tensor() {
    let dir = copy_fixture("llama", "shape");
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"intermediate_size\": 48", "\"intermediate_size\": 40"),
    )
    .unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("mlp") && err.contains("[48, 32]") && err.contains("[40, 32]"),
        "{err}"
    );
}

#[test]
fn bad_gguf_is_reported() {
    let path = std::env::temp_dir().join(format!("eigenprune-bad-{}.gguf", std::process::id()));
    std::fs::write(&path, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let err = load_err(&path);
    assert!(err.contains("bad GGUF"), "{err}");
}
