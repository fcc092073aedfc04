//! `--model` resolution: a local HF directory, a GGUF file, or a Hugging Face hub repo id.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::chat::{self, ChatTemplate};
use crate::models::{self, TensorMap};
use crate::transformer::Transformer;
use crate::{gguf, tokenizer, EngineError, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// config.json, *.safetensors (maybe sharded with an index), tokenizer.json.
    Directory(PathBuf),
    GgufFile(PathBuf),
    /// A repo id on the Hugging Face hub (HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE honoured).
    Hub {
        repo: String,
        revision: String,
    },
}

impl ModelSource {
    /// Interprets a `--model` argument. An existing path wins; otherwise `org/name` or `name`
    /// (optionally `@revision`) is a hub repo id.
    pub fn parse(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(Self::Directory(path.to_path_buf()));
        }
        if path.is_file() {
            return Ok(Self::GgufFile(path.to_path_buf()));
        }
        let looks_like_path = spec.starts_with('.')
            || spec.starts_with('/')
            || spec.starts_with('~')
            || spec.ends_with(".gguf")
            || spec.matches('/').count() > 1;
        if looks_like_path || spec.is_empty() {
            return Err(EngineError::MissingFile(path.to_path_buf()));
        }
        let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
        Ok(Self::Hub {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }
}

pub struct LoadOptions {
    pub device: Device,
    /// The dtype weights are kept in (pruning math converts to f32 itself).
    pub dtype: DType,
    /// On the CPU, also keep a GGUF's quantised blocks of the linear maps and serve decoding
    /// steps from them (`Linear::is_quantized`); pruning and evaluations stay dense.
    pub quantized: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            quantized: false,
        }
    }
}

pub struct LoadedModel {
    pub model: Transformer,
    pub tokenizer: Tokenizer,
    pub source: ModelSource,
    /// The HF config.json (synthesised for GGUF), kept for export.
    pub config_json: Value,
    /// The model's chat template, if it ships one.
    pub chat_template: Option<ChatTemplate>,
}

pub fn load_model(spec: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    let source = ModelSource::parse(spec)?;
    let mut quantized = HashMap::new();
    let (config_json, tensors, tokenizer, chat_template) = match &source {
        ModelSource::Directory(dir) => read_directory(dir, &opts.device)?,
        ModelSource::GgufFile(path) => {
            let g = gguf::load(path, &opts.device)?;
            if opts.quantized {
                quantized = g.quantized;
            }
            (g.config, g.tensors, g.tokenizer, g.chat_template)
        }
        ModelSource::Hub { repo, revision } => {
            let dir = crate::loading::hub::fetch(repo, revision)?;
            read_directory(&dir, &opts.device)?
        }
    };
    let tensors = TensorMap::new(tensors).with_quantized(quantized);
    let model = models::build(&config_json, tensors)?.to_dtype(opts.dtype)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        source,
        config_json,
        chat_template,
    })
}

type Checkpoint = (
    Value,
    HashMap<String, Tensor>,
    Tokenizer,
    Option<ChatTemplate>,
);

fn read_directory(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => EngineError::MissingFile(config_path.clone()),
        _ => EngineError::io(&config_path, e),
    })?;
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::BadConfig(format!("{}: {e}", config_path.display())))?;
    models::arch_of(&config)?;
    let tokenizer = tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let mut tensors = HashMap::new();
    for shard in safetensor_files(dir)? {
        let part = candle_core::safetensors::load(&shard, device)
            .map_err(|e| EngineError::BadConfig(format!("{}: {e}", shard.display())))?;
        tensors.extend(part);
    }
    let chat_template = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|c| chat::from_tokenizer_config(&c));
    Ok((config, tensors, tokenizer, chat_template))
}

/// The weight files of a directory: the index's shards, else model.safetensors, else every
/// *.safetensors file.
pub fn safetensor_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| EngineError::io(&index, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| EngineError::BadConfig(format!("{}: {e}", index.display())))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                EngineError::BadConfig(format!("{} has no weight_map", index.display()))
            })?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(Value::as_str)
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        if let Some(missing) = files.iter().find(|f| !f.exists()) {
            return Err(EngineError::MissingFile(missing.clone()));
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| EngineError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(EngineError::MissingFile(single));
    }
    Ok(files)
}

pub mod hub {
    //! Fetching a checkpoint from the Hugging Face hub into the HF cache.

    use std::path::PathBuf;

    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};
    use serde_json::Value;

    use crate::{EngineError, Result};

    type Fetch<'a> = Box<dyn Fn(&str) -> Result<PathBuf> + 'a>;

    /// Downloads (or finds in the cache) config.json, tokenizer.json (tokenizer_config.json
    /// when there is one) and the weights of
    /// `repo` at `revision`; returns the snapshot directory that holds them.
    pub fn fetch(repo: &str, revision: &str) -> Result<PathBuf> {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| !v.is_empty() && v != "0" && v.to_lowercase() != "false");
        let hub_repo = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
        let get: Fetch<'_> = if offline {
            let cache = Cache::from_env().repo(hub_repo);
            Box::new(move |file: &str| {
                cache.get(file).ok_or_else(|| {
                    EngineError::Hub(format!(
                        "{repo}: `{file}` is not in the HF cache and HF_HUB_OFFLINE is set"
                    ))
                })
            })
        } else {
            let api = ApiBuilder::from_env()
                .with_progress(false)
                .build()
                .map_err(|e| EngineError::Hub(e.to_string()))?
                .repo(hub_repo);
            Box::new(move |file: &str| {
                api.get(file)
                    .map_err(|e| EngineError::Hub(format!("{repo}: fetching `{file}`: {e}")))
            })
        };
        let config = get("config.json")?;
        get("tokenizer.json")?;
        // Optional: where the chat template lives.
        let _ = get("tokenizer_config.json");
        match get("model.safetensors.index.json") {
            Ok(index) => {
                let text =
                    std::fs::read_to_string(&index).map_err(|e| EngineError::io(&index, e))?;
                let v: Value = serde_json::from_str(&text)
                    .map_err(|e| EngineError::BadConfig(format!("{}: {e}", index.display())))?;
                let mut shards: Vec<&str> = v
                    .get("weight_map")
                    .and_then(Value::as_object)
                    .map(|m| m.values().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                shards.sort();
                shards.dedup();
                for shard in shards {
                    get(shard)?;
                }
            }
            Err(_) => {
                get("model.safetensors")?;
            }
        }
        Ok(config
            .parent()
            .expect("a cached file has a parent directory")
            .to_path_buf())
    }
}
