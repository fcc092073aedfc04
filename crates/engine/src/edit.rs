//! A pruned variant as data: for each changed matrix, the removed part as low-rank factors
//! (delta W = B A, LoRA's layout) and a bias delta, plus the job's settings and base model
//! identity, in one safetensors file. Base + edit = the edited model.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::svd::site_map_mut;
use crate::trace::Component;
use crate::transformer::Transformer;
use crate::{EngineError, Result};

#[derive(Clone, Debug)]
pub struct MatrixEdit {
    pub layer: usize,
    pub component: Component,
    /// [rank, d_in]
    pub a: Tensor,
    /// [d_out, rank]; delta W = B A in the checkpoint's `[out, in]` layout.
    pub b: Tensor,
    /// [d_out]
    pub bias_delta: Option<Tensor>,
}

impl MatrixEdit {
    pub fn rank(&self) -> usize {
        self.a.dim(0).unwrap_or(0)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Edit {
    pub matrices: Vec<MatrixEdit>,
    /// Free-form string metadata: settings (JSON), base model identity, counts.
    pub metadata: BTreeMap<String, String>,
}

fn key(layer: usize, component: Component, part: &str) -> String {
    format!("layers.{layer}.{}.{part}", component.name())
}

impl Edit {
    /// The edit file's bytes (safetensors).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let (tensors, meta) = self.parts();
        safetensors::tensor::serialize(tensors, Some(meta))
            .map_err(|e| EngineError::InvalidInput(format!("serialising the edit: {e}")))
    }

    fn parts(&self) -> (Vec<(String, Tensor)>, HashMap<String, String>) {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for m in &self.matrices {
            tensors.push((key(m.layer, m.component, "lora_A"), m.a.clone()));
            tensors.push((key(m.layer, m.component, "lora_B"), m.b.clone()));
            if let Some(d) = &m.bias_delta {
                tensors.push((key(m.layer, m.component, "bias_delta"), d.clone()));
            }
        }
        (tensors, self.metadata.clone().into_iter().collect())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let (tensors, meta) = self.parts();
        safetensors::tensor::serialize_to_file(tensors, Some(meta), path)
            .map_err(|e| EngineError::InvalidInput(format!("writing {}: {e}", path.display())))
    }

    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
        Self::from_bytes(&bytes, device)
    }

    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let bad = |why: String| EngineError::InvalidInput(format!("not an eigenprune edit: {why}"));
        let (_, header) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let metadata: BTreeMap<String, String> = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let tensors = candle_core::safetensors::load_buffer(bytes, device)?;
        let mut matrices = Vec::new();
        for name in tensors.keys().filter(|k| k.ends_with(".lora_A")) {
            let parts: Vec<&str> = name.split('.').collect();
            let (Some(layer), Some(component)) = (
                parts.get(1).and_then(|l| l.parse::<usize>().ok()),
                parts.get(2).and_then(|c| Component::parse(c)),
            ) else {
                return Err(bad(format!("unexpected tensor `{name}`")));
            };
            let b = tensors
                .get(&key(layer, component, "lora_B"))
                .ok_or_else(|| bad(format!("`{name}` has no lora_B")))?;
            matrices.push(MatrixEdit {
                layer,
                component,
                a: tensors[name].clone(),
                b: b.clone(),
                bias_delta: tensors.get(&key(layer, component, "bias_delta")).cloned(),
            });
        }
        matrices.sort_by_key(|m| (m.layer, m.component));
        Ok(Self { matrices, metadata })
    }

    /// Total count of removed singular directions.
    pub fn rank(&self) -> usize {
        self.matrices.iter().map(MatrixEdit::rank).sum()
    }

    /// Applies the edit in place: W += B A, b += delta (a missing bias is created).
    pub fn apply(&self, model: &mut Transformer) -> Result<()> {
        let n_layers = model.config.n_layers;
        for m in &self.matrices {
            if m.layer >= n_layers {
                return Err(EngineError::InvalidInput(format!(
                    "edit touches layer {} of a {n_layers}-layer model",
                    m.layer
                )));
            }
            let lin = site_map_mut(model, m.layer, m.component);
            let delta = m.b.matmul(&m.a)?.to_dtype(lin.weight.dtype())?;
            if delta.dims() != lin.weight.dims() {
                return Err(EngineError::ShapeMismatch {
                    name: key(m.layer, m.component, "lora_B @ lora_A"),
                    found: delta.dims().to_vec(),
                    expected: lin.weight.dims().to_vec(),
                });
            }
            lin.weight = (&lin.weight + delta)?;
            if let Some(d) = &m.bias_delta {
                let d = d.to_dtype(lin.weight.dtype())?;
                lin.bias = Some(match &lin.bias {
                    Some(b) => (b + d)?,
                    None => d,
                });
            }
        }
        Ok(())
    }
}
