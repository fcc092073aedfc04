//! Per-row edits for a batch that mixes a base model and its pruned variants: every row runs
//! the base's maps, and an edited map adds each row's own correction, `x A_v^T B_v^T + db_v`
//! for the row's variant v (nothing for base rows).
//!
//! The variants' factors of one map are concatenated (`A_cat` [R, in], `B_cat` [out, R], R the
//! sum of their ranks) and a row mask keeps each row to its own variant's segment, so a map
//! costs the same kernels whatever the number of variants: shrink (x A_cat^T), mask, expand
//! (. B_cat^T), bias (the S-LoRA / Punica shrink-expand, with a mask in place of a gather).
//! Built once per batch composition; a decoding step only multiplies.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::edit::Edit;
use crate::trace::Component;
use crate::{EngineError, Result};

/// One edited map's corrections for the batch.
struct Site {
    /// [R, in] and [R, out]: every variant's A and B^T of this map, concatenated.
    a: Tensor,
    b_t: Tensor,
    /// [rows, 2] u32 on a GPU: each row's (first rank, ranks), for the fused kernel.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    seg: Option<Tensor>,
    /// The most ranks one row has.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    max_rank: usize,
    /// [rows, R]: 1 where a row's variant owns the rank, else 0.
    mask: Tensor,
    /// [rows, 1, out]: each row's bias delta (zero for rows without one).
    bias: Option<Tensor>,
}

/// The corrections of a batch's rows, by (layer, map).
pub struct RowEdits {
    rows: usize,
    sites: BTreeMap<(usize, Component), Site>,
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
        let mut by_site: BTreeMap<(usize, Component), Vec<(usize, &crate::edit::MatrixEdit)>> =
            BTreeMap::new();
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
            let mut mask = vec![0f32; rows.len() * total];
            let mut seg = vec![0u32; rows.len() * 2];
            let mut bias = vec![0f32; rows.len() * out];
            let mut any_bias = false;
            for (i, row) in rows.iter().enumerate() {
                let mut offset = 0;
                for (k, m) in &parts {
                    if *row == Some(*k) {
                        mask[i * total + offset..i * total + offset + m.rank()].fill(1.0);
                        seg[2 * i..2 * i + 2].copy_from_slice(&[offset as u32, m.rank() as u32]);
                        if let Some(d) = &m.bias_delta {
                            let d: Vec<f32> = d.to_dtype(DType::F32)?.to_vec1()?;
                            bias[i * out..(i + 1) * out].copy_from_slice(&d);
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
            let max_rank = seg.chunks(2).map(|s| s[1] as usize).max().unwrap_or(0);
            let seg = if device.is_cuda() {
                Some(Tensor::from_vec(seg, (rows.len(), 2), device)?)
            } else {
                None
            };
            sites.insert(
                site,
                Site {
                    a,
                    b_t,
                    seg,
                    max_rank,
                    mask,
                    bias,
                },
            );
        }
        Ok(Self {
            rows: rows.len(),
            sites,
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
        let Some(s) = self.sites.get(&(layer, component)) else {
            return Ok(output);
        };
        let (rows, t, d_in) = input.dims3()?;
        #[cfg(feature = "cuda")]
        if let Some(seg) = &s.seg {
            let out = output.dim(2)?;
            let op = crate::row_edits_cuda::RowLora {
                a: &s.a,
                b_t: &s.b_t,
                seg,
                bias: s.bias.as_ref(),
                t,
                max_rank: s.max_rank,
            };
            let x = input.reshape((rows * t, d_in))?.contiguous()?;
            let y = output.reshape((rows * t, out))?.contiguous()?;
            if let Some(z) = crate::row_edits_cuda::fused(op, &x, &y)? {
                return z.reshape((rows, t, out));
            }
        }
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
