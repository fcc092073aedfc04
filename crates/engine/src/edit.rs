//! A pruned variant as data: for each changed matrix, the removed part as low-rank factors
//! (delta W = B A, LoRA's layout) and a bias delta, plus the job's settings and base model
//! identity, in one safetensors file. Base + edit = the edited model. A job that fine-tuned
//! first also carries every fine-tuned parameter (a full copy: fine-tuning is not low-rank).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::svd::site_map_mut;
use crate::trace::Component;
use crate::transformer::Transformer;
use crate::weights::Weights;
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
    /// Fine-tuned parameters in [`Weights::tensors_mut`] order, set before the low-rank part;
    /// empty when the job did not fine-tune.
    pub finetuned: Vec<Tensor>,
    /// Free-form string metadata: settings (JSON), base model identity, counts.
    pub metadata: BTreeMap<String, String>,
}

const FINETUNED: &str = "finetuned.";

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
        for (i, t) in self.finetuned.iter().enumerate() {
            tensors.push((format!("{FINETUNED}{i:05}"), t.clone()));
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
        let mut finetuned: Vec<(usize, Tensor)> = Vec::new();
        for (name, t) in &tensors {
            if let Some(i) = name.strip_prefix(FINETUNED) {
                let i = i
                    .parse()
                    .map_err(|_| bad(format!("unexpected tensor `{name}`")))?;
                finetuned.push((i, t.clone()));
            }
        }
        finetuned.sort_by_key(|(i, _)| *i);
        if finetuned.iter().enumerate().any(|(k, (i, _))| k != *i) {
            return Err(bad("the fine-tuned parameters are not numbered 0..n".into()));
        }
        let finetuned = finetuned.into_iter().map(|(_, t)| t).collect();
        Ok(Self {
            matrices,
            finetuned,
            metadata,
        })
    }

    /// The edit on `device` in `dtype` (what a batch mixing it with its base multiplies by).
    pub fn to(&self, device: &Device, dtype: DType) -> Result<Self> {
        let cast = |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(device)?.to_dtype(dtype)?) };
        let matrices = self
            .matrices
            .iter()
            .map(|m| {
                Ok(MatrixEdit {
                    layer: m.layer,
                    component: m.component,
                    a: cast(&m.a)?,
                    b: cast(&m.b)?,
                    bias_delta: m.bias_delta.as_ref().map(cast).transpose()?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            matrices,
            finetuned: self.finetuned.iter().map(cast).collect::<Result<_>>()?,
            metadata: self.metadata.clone(),
        })
    }

    /// Bytes its tensors take.
    pub fn bytes(&self) -> u64 {
        let size = |t: &Tensor| (t.elem_count() * t.dtype().size_in_bytes()) as u64;
        let low_rank: u64 = self
            .matrices
            .iter()
            .map(|m| size(&m.a) + size(&m.b) + m.bias_delta.as_ref().map_or(0, size))
            .sum();
        low_rank + self.finetuned.iter().map(size).sum::<u64>()
    }

    /// Total count of removed singular directions.
    pub fn rank(&self) -> usize {
        self.matrices.iter().map(MatrixEdit::rank).sum()
    }

    /// Applies the edit in place: fine-tuned parameters (if any) replace the base's, then
    /// W += B A, b += delta (a missing bias is created).
    pub fn apply(&self, model: &mut Transformer) -> Result<()> {
        if !self.finetuned.is_empty() {
            set_parameters(&mut model.weights, &self.finetuned)?;
        }
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
            lin.drop_quantized();
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

/// Replaces every parameter of `weights` (in [`Weights::tensors_mut`] order), shapes checked;
/// a tied output projection follows the embedding.
pub fn set_parameters(weights: &mut Weights, values: &[Tensor]) -> Result<()> {
    let count = weights.tensors_mut().len();
    if count != values.len() {
        return Err(EngineError::InvalidInput(format!(
            "the edit carries {} fine-tuned parameters; the model has {count}",
            values.len(),
        )));
    }
    weights.map_parameters(|i, p| {
        let v = &values[i];
        if p.dims() != v.dims() {
            return Err(EngineError::ShapeMismatch {
                name: format!("{FINETUNED}{i:05}"),
                found: v.dims().to_vec(),
                expected: p.dims().to_vec(),
            });
        }
        Ok(v.to_device(p.device())?.to_dtype(p.dtype())?)
    })
}
