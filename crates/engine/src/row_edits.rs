//! Per-row edits for a batch that mixes a base model and its pruned variants: every row runs
//! the base's maps, and an edited map adds each row's own correction, `x A_v^T B_v^T + db_v`
//! for the row's variant v (nothing for base rows).
//!
//! The variants' factors of one map are concatenated (`A_cat` [R, in], `B_cat` [out, R], R the
//! sum of their ranks) and a row mask keeps each row to its own variant's segment, so a map
//! costs the same kernels whatever the number of variants: shrink (x A_cat^T), mask, expand
//! (. B_cat^T), bias (the S-LoRA / Punica shrink-expand, with a mask in place of a gather).
//! On a GPU one fused kernel per map gathers each row's own factors instead
//! (`row_edits_cuda`), through a table of pointers: building it concatenates nothing.
//! Built once per batch composition; a decoding step only multiplies.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::edit::{Edit, MatrixEdit};
use crate::trace::Component;
use crate::{EngineError, Result};

/// One edited map's corrections for the batch, in the unfused form.
struct Unfused {
    /// [R, in] and [R, out]: every variant's A and B^T of this map, concatenated.
    a: Tensor,
    b_t: Tensor,
    /// [rows, R]: 1 where a row's variant owns the rank, else 0.
    mask: Tensor,
    /// [rows, 1, out]: each row's bias delta (zero for rows without one).
    bias: Option<Tensor>,
}

/// How one edited map applies its rows' corrections.
enum Site {
    Unfused(Unfused),
    /// The fused kernel: the map's rows are slots `index * rows ..` of the batch's table.
    #[cfg(feature = "cuda")]
    Fused {
        index: usize,
        max_rank: usize,
    },
}

/// The corrections of a batch's rows, by (layer, map).
pub struct RowEdits {
    rows: usize,
    sites: BTreeMap<(usize, Component), Site>,
    /// The fused form's table and its variants' prepared factors (reused by the next
    /// composition, [`RowEdits::reusing`]).
    #[cfg(feature = "cuda")]
    table: Option<crate::row_edits_cuda::Table>,
    #[cfg(feature = "cuda")]
    prepared: Vec<std::sync::Arc<crate::row_edits_cuda::Prepared>>,
}

type Parts<'a> = Vec<(usize, &'a MatrixEdit)>;

/// What one batch composition runs: `variants[k]` (with its `Arc` in `ids[k]` where it has
/// one), `rows[i]` row i's variant (None: the base), on `device` in `dtype`.
struct Composition<'a> {
    variants: &'a [&'a Edit],
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    ids: &'a [&'a Arc<Edit>],
    rows: &'a [Option<usize>],
    device: &'a Device,
    dtype: DType,
}

impl RowEdits {
    /// `variants[k]` is variant k's edit; `rows[i]` is row i's variant (`None`: the base).
    /// Fine-tuned edits change every parameter and cannot share a base's batch.
    pub fn new(
        variants: &[&Edit],
        rows: &[Option<usize>],
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let c = Composition {
            variants,
            ids: &[],
            rows,
            device,
            dtype,
        };
        Self::build(&c, None)
    }

    /// [`RowEdits::new`] for a batch's next composition: variants that `previous` also ran
    /// (the same `Arc`) keep their prepared factors, so a row joining or leaving costs one
    /// small upload, not a preparation of every variant.
    pub(crate) fn reusing(
        variants: &[&Arc<Edit>],
        rows: &[Option<usize>],
        device: &Device,
        dtype: DType,
        previous: Option<&RowEdits>,
    ) -> Result<Self> {
        let plain: Vec<&Edit> = variants.iter().map(|e| e.as_ref()).collect();
        let c = Composition {
            variants: &plain,
            ids: variants,
            rows,
            device,
            dtype,
        };
        Self::build(&c, previous)
    }

    fn build(c: &Composition, previous: Option<&RowEdits>) -> Result<Self> {
        let Composition {
            variants,
            rows,
            device,
            dtype,
            ..
        } = *c;
        if variants.iter().any(|e| !e.finetuned.is_empty()) {
            return Err(EngineError::InvalidInput(
                "a fine-tuned variant is a full model; it cannot share its base's batch".into(),
            ));
        }
        if let Some(bad) = rows.iter().flatten().find(|&&k| k >= variants.len()) {
            return Err(EngineError::InvalidInput(format!(
                "row variant {bad} of {}",
                variants.len()
            )));
        }
        #[cfg(feature = "cuda")]
        if crate::row_edits_cuda::available(device, dtype) {
            return Self::fused(c, previous);
        }
        let _ = previous;
        let mut by_site: BTreeMap<(usize, Component), Parts> = BTreeMap::new();
        for (k, e) in variants.iter().enumerate() {
            for m in &e.matrices {
                by_site
                    .entry((m.layer, m.component))
                    .or_default()
                    .push((k, m));
            }
        }
        let mut sites = BTreeMap::new();
        for (site, parts) in by_site {
            sites.insert(site, Site::Unfused(unfused(&parts, rows, device, dtype)?));
        }
        Ok(Self {
            rows: rows.len(),
            sites,
            #[cfg(feature = "cuda")]
            table: None,
            #[cfg(feature = "cuda")]
            prepared: Vec::new(),
        })
    }

    /// The fused form: one table of every (map, row)'s factor pointers, uploaded at once.
    #[cfg(feature = "cuda")]
    fn fused(c: &Composition, previous: Option<&RowEdits>) -> Result<Self> {
        use crate::row_edits_cuda::{Prepared, Slot, Table};
        let Composition {
            variants,
            ids,
            rows,
            device,
            dtype,
        } = *c;
        let prepared: Vec<Arc<Prepared>> = variants
            .iter()
            .enumerate()
            .map(|(k, e)| {
                let id = ids.get(k).copied();
                let known = previous
                    .zip(id)
                    .and_then(|(p, id)| p.prepared.iter().find(|pr| pr.is(id)).cloned());
                match known {
                    Some(p) => Ok(p),
                    None => Ok(Arc::new(Prepared::new(e, id.cloned(), device, dtype)?)),
                }
            })
            .collect::<Result<_>>()?;
        let maps: std::collections::BTreeSet<(usize, Component)> = variants
            .iter()
            .flat_map(|e| e.matrices.iter().map(|m| (m.layer, m.component)))
            .collect();
        let mut slots: Vec<Slot> = Vec::with_capacity(maps.len() * rows.len());
        let mut sites = BTreeMap::new();
        for (index, site) in maps.into_iter().enumerate() {
            let mut max_rank = 0;
            for row in rows {
                let slot = row.and_then(|k| prepared[k].slot(site)).unwrap_or([0; 4]);
                max_rank = max_rank.max(slot[3] as usize);
                slots.push(slot);
            }
            sites.insert(site, Site::Fused { index, max_rank });
        }
        Ok(Self {
            rows: rows.len(),
            sites,
            table: Some(Table::new(&slots, device)?),
            prepared,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `output` [rows, T, out] of map `component` in `layer` with each row's correction for
    /// `input` [rows, T, in] added.
    pub(crate) fn apply(
        &self,
        layer: usize,
        component: Component,
        input: &Tensor,
        output: Tensor,
    ) -> candle_core::Result<Tensor> {
        let Some(site) = self.sites.get(&(layer, component)) else {
            return Ok(output);
        };
        let (rows, t, d_in) = input.dims3()?;
        // One arm without the cuda feature.
        #[allow(clippy::infallible_destructuring_match)]
        let s = match site {
            Site::Unfused(s) => s,
            #[cfg(feature = "cuda")]
            Site::Fused { index, max_rank } => {
                let Some(table) = &self.table else {
                    candle_core::bail!("row edits: a fused map without its table")
                };
                let out = output.dim(2)?;
                let x = input.reshape((rows * t, d_in))?.contiguous()?;
                let y = output.reshape((rows * t, out))?.contiguous()?;
                table.apply(index * self.rows, rows, t, *max_rank, &x, &y)?;
                return y.reshape((rows, t, out));
            }
        };
        let shrunk = input.reshape((rows * t, d_in))?.matmul(&s.a.t()?)?;
        let r = shrunk.dim(1)?;
        let masked = shrunk
            .reshape((rows, t, r))?
            .broadcast_mul(&s.mask.unsqueeze(1)?)?;
        let out = s.b_t.dim(1)?;
        let mut delta = masked
            .reshape((rows * t, r))?
            .matmul(&s.b_t)?
            .reshape((rows, t, out))?;
        if let Some(b) = &s.bias {
            delta = delta.broadcast_add(b)?;
        }
        output + delta
    }
}

/// One map's unfused form: the variants' factors concatenated, a row mask, the rows' biases
/// (each variant's bias read once).
fn unfused(
    parts: &Parts,
    rows: &[Option<usize>],
    device: &Device,
    dtype: DType,
) -> Result<Unfused> {
    let cast = |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(device)?.to_dtype(dtype)?) };
    let a: Vec<Tensor> = parts
        .iter()
        .map(|(_, m)| cast(&m.a))
        .collect::<Result<_>>()?;
    let b: Vec<Tensor> = parts
        .iter()
        .map(|(_, m)| cast(&m.b))
        .collect::<Result<_>>()?;
    let a = Tensor::cat(&a, 0)?.contiguous()?;
    let b_t = Tensor::cat(&b, 1)?.t()?.contiguous()?;
    let total: usize = parts.iter().map(|(_, m)| m.rank()).sum();
    let out = b_t.dim(1)?;
    let biases: Vec<Option<Vec<f32>>> = parts
        .iter()
        .map(|(_, m)| {
            m.bias_delta
                .as_ref()
                .map(|d| d.to_dtype(DType::F32)?.to_vec1())
                .transpose()
        })
        .collect::<candle_core::Result<_>>()?;
    let mut mask = vec![0f32; rows.len() * total];
    let mut bias = vec![0f32; rows.len() * out];
    let mut any_bias = false;
    for (i, row) in rows.iter().enumerate() {
        let mut offset = 0;
        for ((k, m), d) in parts.iter().zip(&biases) {
            if *row == Some(*k) {
                mask[i * total + offset..i * total + offset + m.rank()].fill(1.0);
                if let Some(d) = d {
                    bias[i * out..(i + 1) * out].copy_from_slice(d);
                    any_bias = true;
                }
            }
            offset += m.rank();
        }
    }
    let mask = Tensor::from_vec(mask, (rows.len(), total), device)?.to_dtype(dtype)?;
    let bias = if any_bias {
        Some(Tensor::from_vec(bias, (rows.len(), 1, out), device)?.to_dtype(dtype)?)
    } else {
        None
    };
    Ok(Unfused { a, b_t, mask, bias })
}
