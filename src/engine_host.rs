//! Resident models: base models loaded once and shared by jobs and completions; a pruned
//! variant is its base plus its edit from the [`EditPool`], served in the base's batch. Only a
//! fine-tuned variant (every parameter changed) is a model of its own; the resident bound
//! evicts those before any base. Only called from blocking threads.

use std::sync::{Arc, Mutex};

use eigenprune_engine::batcher::Batcher;
use eigenprune_engine::edit::Edit;
use eigenprune_engine::{load_model, LoadOptions, LoadedModel};

use crate::edit_pool::EditPool;

/// What serves one model name: the model whose batch its requests join, and the edit each of
/// its rows carries.
#[derive(Clone)]
pub struct Served {
    /// The base (or a fine-tuned variant's own model).
    pub model: Arc<LoadedModel>,
    /// The batcher's key: the base's name (or the fine-tuned variant's id).
    pub key: String,
    /// A pruned variant's edit (None: the model itself).
    pub edit: Option<Arc<Edit>>,
}

/// A base model this service serves: the short name users give, and where its weights are.
#[derive(Clone, Debug, PartialEq)]
pub struct BaseModel {
    pub name: String,
    pub spec: String,
}

impl BaseModel {
    /// `NAME=PATH`, or a bare path / hub id whose name is its last part without `.gguf` (a
    /// character outside `[A-Za-z0-9._:@+-]` becomes `-`).
    pub fn parse(arg: &str) -> anyhow::Result<Self> {
        let (name, spec) = match arg.split_once('=') {
            Some((n, s)) => (n.to_string(), s.to_string()),
            None => {
                let last = arg.trim_end_matches('/').rsplit('/').next().unwrap_or(arg);
                let last = last.split('@').next().unwrap_or(last);
                let stem = last.strip_suffix(".gguf").unwrap_or(last);
                let name = stem
                    .chars()
                    .map(|c| {
                        if crate::http::ids::is_id_char(c) {
                            c
                        } else {
                            '-'
                        }
                    })
                    .collect();
                (name, arg.to_string())
            }
        };
        anyhow::ensure!(
            crate::http::ids::check_id("model", &name).is_ok(),
            "model name `{name}` (from --preload {arg}): use 1 to 128 of A-Z a-z 0-9 . _ : @ + -, or NAME=PATH"
        );
        Ok(Self { name, spec })
    }
}

pub struct ModelHost {
    /// How bases load: the serving device, the dtype of resident models (jobs convert to f32
    /// for the pruning math), whether a GGUF keeps its quantised blocks for CPU decoding.
    load: LoadOptions,
    /// The base models served, by name (`--preload`).
    bases: Vec<BaseModel>,
    max_resident: usize,
    /// Most recently used last.
    resident: Mutex<Vec<(String, Arc<LoadedModel>)>>,
    /// A decoding thread per model that completions use, by model key.
    batchers: Mutex<Vec<(String, Arc<LoadedModel>, Batcher)>>,
    max_batch_rows: usize,
    /// Context length of every base model loaded once (kept after eviction).
    contexts: Mutex<std::collections::HashMap<String, usize>>,
    /// One lock per base name, held while it loads: concurrent first requests for a base (or
    /// its variants) wait for one load instead of each loading it.
    loading: Mutex<std::collections::HashMap<String, Arc<Mutex<()>>>>,
    /// GPU memory reserved by running pruning jobs.
    pub reservations: Arc<crate::jobs::admission::Reservations>,
    /// Pruned variants' edits.
    pub pool: EditPool,
}

/// Bytes the edit pool's tiers hold at most.
#[derive(Clone, Copy, Debug)]
pub struct PoolBudget {
    pub device: u64,
    pub host: u64,
}

impl ModelHost {
    /// `max_batch_rows`: sequences one model decodes together at most.
    pub fn new(
        bases: Vec<BaseModel>,
        opts: LoadOptions,
        max_resident: usize,
        max_batch_rows: usize,
        pool: PoolBudget,
    ) -> Self {
        Self {
            pool: EditPool::new(opts.device.clone(), opts.dtype, pool.device, pool.host),
            bases,
            load: opts,
            max_resident: max_resident.max(1),
            resident: Mutex::new(Vec::new()),
            batchers: Mutex::new(Vec::new()),
            max_batch_rows: max_batch_rows.max(1),
            contexts: Mutex::default(),
            loading: Mutex::default(),
            reservations: Arc::default(),
        }
    }

    fn lookup(&self, key: &str) -> Option<Arc<LoadedModel>> {
        let mut r = self.resident.lock().expect("model host lock");
        let i = r.iter().position(|(k, _)| k == key)?;
        let entry = r.remove(i);
        let m = entry.1.clone();
        r.push(entry);
        Some(m)
    }

    fn insert(&self, key: &str, m: Arc<LoadedModel>) {
        let mut r = self.resident.lock().expect("model host lock");
        r.retain(|(k, _)| k != key);
        r.push((key.to_string(), m));
        while r.len() > self.max_resident {
            // The coldest fine-tuned variant goes first; a base only when no variant is left.
            let i = r
                .iter()
                .position(|(k, _)| self.base_named(k).is_none())
                .unwrap_or(0);
            let (evicted, _) = r.remove(i);
            // Its decoding thread ends once the requests it holds are done.
            let mut b = self.batchers.lock().expect("batchers lock");
            b.retain(|(k, _, _)| *k != evicted);
            tracing::info!(model = %evicted, "evicted from the resident set");
        }
    }

    /// Drops a deleted variant: its edit, or its resident model and decoding thread (which
    /// ends once the requests it holds are done).
    pub fn unload(&self, key: &str) {
        self.pool.remove(key);
        self.resident
            .lock()
            .expect("model host lock")
            .retain(|(k, _)| k != key);
        self.batchers
            .lock()
            .expect("batchers lock")
            .retain(|(k, _, _)| k != key);
    }

    /// Sequences waiting to join `key`'s batch (0 before it has one).
    pub fn waiting(&self, key: &str) -> usize {
        let b = self.batchers.lock().expect("batchers lock");
        b.iter()
            .find(|(k, _, _)| k == key)
            .map_or(0, |(_, _, batcher)| batcher.load().1)
    }

    /// The names of the base models served, in `--preload` order.
    pub fn base_names(&self) -> Vec<String> {
        self.bases.iter().map(|b| b.name.clone()).collect()
    }

    /// The served base model `id` names: its name, or (for rows written before names) its
    /// spec.
    pub fn base_named(&self, id: &str) -> Option<&BaseModel> {
        self.bases
            .iter()
            .find(|b| b.name == id)
            .or_else(|| self.bases.iter().find(|b| b.spec == id))
    }

    /// Tokens (prompt + completion) the base model `name` takes, once it has been loaded.
    pub fn context_length(&self, name: &str) -> Option<usize> {
        let b = self.base_named(name)?;
        self.contexts
            .lock()
            .expect("contexts lock")
            .get(&b.name)
            .copied()
    }

    /// A served base model by name, loading it on first use.
    pub fn base(&self, name: &str) -> anyhow::Result<Arc<LoadedModel>> {
        let Some(b) = self.base_named(name) else {
            anyhow::bail!("model `{name}` is not served here");
        };
        let (name, spec) = (b.name.as_str(), b.spec.as_str());
        if let Some(m) = self.lookup(name) {
            return Ok(m);
        }
        let gate = self
            .loading
            .lock()
            .expect("loading lock")
            .entry(name.to_string())
            .or_default()
            .clone();
        let _loading = gate.lock().expect("load gate");
        if let Some(m) = self.lookup(name) {
            return Ok(m);
        }
        let t = std::time::Instant::now();
        let m = Arc::new(load_model(spec, &self.load)?);
        tracing::info!(model = %name, %spec, seconds = t.elapsed().as_secs_f64(), "loaded");
        self.contexts
            .lock()
            .expect("contexts lock")
            .insert(name.to_string(), m.model.config.max_positions);
        self.insert(name, m.clone());
        Ok(m)
    }

    /// A base model, served.
    pub fn serve_base(&self, name: &str) -> anyhow::Result<Served> {
        let model = self.base(name)?;
        let key = self.base_named(name).map_or(name, |b| &b.name).to_string();
        Ok(Served {
            model,
            key,
            edit: None,
        })
    }

    /// A variant of `base` if the pool or the resident set holds it (None: its file must be
    /// read first).
    pub fn cached_variant(&self, id: &str, base: &str) -> anyhow::Result<Option<Served>> {
        if let Some(edit) = self.pool.get(id)? {
            return Ok(Some(Served {
                edit: Some(edit),
                ..self.serve_base(base)?
            }));
        }
        Ok(self.lookup(id).map(|model| Served {
            model,
            key: id.to_string(),
            edit: None,
        }))
    }

    /// A variant of `base` from its edit file: a low-rank edit joins the pool and the base's
    /// batch; a fine-tuned one becomes a resident model of its own.
    pub fn variant(&self, id: &str, base: &str, file: &[u8]) -> anyhow::Result<Served> {
        let t = std::time::Instant::now();
        let edit = Edit::from_bytes(file, &candle_core::Device::Cpu)?;
        if edit.finetuned.is_empty() {
            let edit = self.pool.insert(id, edit)?;
            tracing::debug!(variant = %id, ms = t.elapsed().as_secs_f64() * 1e3, "edit loaded");
            return Ok(Served {
                edit: Some(edit),
                ..self.serve_base(base)?
            });
        }
        let m = self.applied(base, file)?;
        self.insert(id, m.clone());
        Ok(Served {
            model: m,
            key: id.to_string(),
            edit: None,
        })
    }

    /// `base` with the edit file applied to its weights (an export, or a fine-tuned variant's
    /// own model), not kept here.
    pub fn applied(&self, base: &str, file: &[u8]) -> anyhow::Result<Arc<LoadedModel>> {
        let b = self.base(base)?;
        let edit = Edit::from_bytes(file, &self.load.device)?;
        let mut model = b.model.clone();
        edit.apply(&mut model)?;
        Ok(Arc::new(LoadedModel {
            model,
            tokenizer: b.tokenizer.clone(),
            source: b.source.clone(),
            config_json: b.config_json.clone(),
            chat_template: b.chat_template.clone(),
        }))
    }

    /// The decoding thread of `model` (named `key`), started on first use; continuous batching
    /// across every completion request for that model.
    pub fn batcher(&self, key: &str, model: &Arc<LoadedModel>) -> Batcher {
        let mut b = self.batchers.lock().expect("batchers lock");
        if let Some((_, _, batcher)) = b.iter().find(|(k, m, _)| k == key && Arc::ptr_eq(m, model))
        {
            return batcher.clone();
        }
        b.retain(|(k, _, _)| k != key);
        let batcher = Batcher::start(model.clone(), self.max_batch_rows);
        b.push((key.to_string(), model.clone(), batcher.clone()));
        batcher
    }

    /// A handle on the batch `served` joins, its requests carrying its edit.
    pub fn batcher_for(&self, served: &Served) -> Batcher {
        self.batcher(&served.key, &served.model)
            .with_variant(served.edit.clone())
    }

    /// (sequences decoding, sequences waiting to join) over every model's batcher.
    pub fn decoding_load(&self) -> (usize, usize) {
        let b = self.batchers.lock().expect("batchers lock");
        b.iter()
            .map(|(_, _, batcher)| batcher.load())
            .fold((0, 0), |acc, l| (acc.0 + l.0, acc.1 + l.1))
    }

    /// Decoding steps run by every current batcher.
    pub fn decode_steps(&self) -> usize {
        let b = self.batchers.lock().expect("batchers lock");
        b.iter().map(|(_, _, batcher)| batcher.steps()).sum()
    }

    /// Parameter bytes of every resident model (bases and fine-tuned variants; edits are in
    /// the pool's figures).
    pub fn resident_bytes(&self) -> u64 {
        let r = self.resident.lock().expect("model host lock");
        r.iter().map(|(_, m)| m.model.weights.bytes()).sum()
    }

    pub fn device_memory(&self) -> Option<(u64, u64)> {
        eigenprune_engine::device::memory(&self.load.device)
    }

    /// Whether `id` serves without a load: a resident model, or an edit in the device tier.
    pub fn is_resident(&self, id: &str) -> bool {
        self.pool.is_resident(id)
            || self
                .resident
                .lock()
                .expect("model host lock")
                .iter()
                .any(|(k, _)| k == id)
    }

    pub fn resident(&self) -> Vec<String> {
        self.resident
            .lock()
            .expect("model host lock")
            .iter()
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Concurrent first requests for a base wait for one load: every caller gets the same
    /// model (without the load gate each loads its own copy).
    #[test]
    fn a_base_asked_for_at_once_loads_once() {
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama");
        let host = Arc::new(ModelHost::new(
            vec![BaseModel {
                name: "tiny".into(),
                spec: fixture.into(),
            }],
            LoadOptions::default(),
            4,
            4,
            PoolBudget {
                device: 1 << 20,
                host: 1 << 20,
            },
        ));
        let loads: Vec<Arc<LoadedModel>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| s.spawn(|| host.base("tiny").unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(loads.iter().all(|m| Arc::ptr_eq(m, &loads[0])));
    }
}
