//! Resident models: base models loaded once and shared by jobs and completions, variants as
//! base + edit; an LRU bound evicts the coldest. Only called from blocking threads.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device};
use eigenprune_engine::batcher::Batcher;
use eigenprune_engine::edit::Edit;
use eigenprune_engine::{load_model, LoadOptions, LoadedModel};

pub struct ModelHost {
    pub device: Device,
    /// Serving dtype of resident models (jobs convert to f32 for the pruning math).
    dtype: DType,
    max_resident: usize,
    /// Most recently used last.
    resident: Mutex<Vec<(String, Arc<LoadedModel>)>>,
    /// A decoding thread per model that completions use, by model key.
    batchers: Mutex<Vec<(String, Arc<LoadedModel>, Batcher)>>,
    max_batch_rows: usize,
    /// GPU memory reserved by running pruning jobs.
    pub reservations: Arc<crate::jobs::admission::Reservations>,
}

impl ModelHost {
    /// `max_batch_rows`: sequences one model decodes together at most.
    pub fn new(opts: LoadOptions, max_resident: usize, max_batch_rows: usize) -> Self {
        Self {
            device: opts.device,
            dtype: opts.dtype,
            max_resident: max_resident.max(1),
            resident: Mutex::new(Vec::new()),
            batchers: Mutex::new(Vec::new()),
            max_batch_rows: max_batch_rows.max(1),
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
            let (evicted, _) = r.remove(0);
            // Its decoding thread ends once the requests it holds are done.
            let mut b = self.batchers.lock().expect("batchers lock");
            b.retain(|(k, _, _)| *k != evicted);
            tracing::info!(model = %evicted, "evicted from the resident set");
        }
    }

    /// A base model, loading it on first use.
    pub fn base(&self, spec: &str) -> anyhow::Result<Arc<LoadedModel>> {
        if let Some(m) = self.lookup(spec) {
            return Ok(m);
        }
        let t = std::time::Instant::now();
        let m = Arc::new(load_model(
            spec,
            &LoadOptions {
                device: self.device.clone(),
                dtype: self.dtype,
            },
        )?);
        tracing::info!(model = %spec, seconds = t.elapsed().as_secs_f64(), "loaded");
        self.insert(spec, m.clone());
        Ok(m)
    }

    /// A variant: its base with the edit applied (weights shared except the edited maps).
    pub fn variant(
        &self,
        id: &str,
        base: &str,
        edit_bytes: &[u8],
    ) -> anyhow::Result<Arc<LoadedModel>> {
        if let Some(m) = self.lookup(id) {
            return Ok(m);
        }
        let b = self.base(base)?;
        let edit = Edit::from_bytes(edit_bytes, &self.device)?;
        let mut model = b.model.clone();
        edit.apply(&mut model)?;
        let m = Arc::new(LoadedModel {
            model,
            tokenizer: b.tokenizer.clone(),
            source: b.source.clone(),
            config_json: b.config_json.clone(),
        });
        self.insert(id, m.clone());
        Ok(m)
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

    /// (sequences decoding, sequences waiting to join) over every model's batcher.
    pub fn decoding_load(&self) -> (usize, usize) {
        let b = self.batchers.lock().expect("batchers lock");
        b.iter()
            .map(|(_, _, batcher)| batcher.load())
            .fold((0, 0), |acc, l| (acc.0 + l.0, acc.1 + l.1))
    }

    /// Parameter bytes of every resident model (a variant counts in full).
    pub fn resident_bytes(&self) -> u64 {
        let r = self.resident.lock().expect("model host lock");
        r.iter().map(|(_, m)| m.model.weights.bytes()).sum()
    }

    pub fn device_memory(&self) -> Option<(u64, u64)> {
        eigenprune_engine::device::memory(&self.device)
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
