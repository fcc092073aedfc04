//! Per-row log-softmax statistics of logits [N, V] in one pass: each row's log-sum-exp and
//! argmax, in f32 whatever the logits' dtype. Token k's log-probability is then
//! `logits[row, k] - lse[row]`, so scoring never materialises [N, V] log-probabilities (the
//! composite `log_softmax` writes four full-vocabulary f32 tensors: on the GPU, a quarter of an
//! evaluation batch's time at 256 rows). The argmax is the first index of the row's maximum
//! on every device.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use crate::{EngineError, Result};

/// Each row's log-sum-exp and argmax.
#[derive(Clone, Debug)]
pub struct RowStats {
    pub lse: Vec<f32>,
    pub argmax: Vec<u32>,
}

/// [`RowStats`] of `logits` [N, V] (f32, bf16 or f16), read once; one copy to the host.
pub fn row_stats(logits: &Tensor) -> Result<RowStats> {
    let (n, v) = logits.dims2()?;
    if v == 0 || v > 1 << 24 {
        return Err(EngineError::InvalidInput(format!(
            "row statistics of a vocabulary of {v}"
        )));
    }
    // The GPU kernel reads f32 and bf16; the CPU loop f16 as well.
    let logits = if logits.device().is_cuda() && !matches!(logits.dtype(), DType::F32 | DType::BF16)
    {
        logits.to_dtype(DType::F32)?
    } else {
        logits.contiguous()?
    };
    let packed = logits.apply_op1_no_bwd(&Stats)?;
    let flat = packed.to_vec2::<f32>()?;
    debug_assert_eq!(flat.len(), n);
    Ok(RowStats {
        lse: flat.iter().map(|r| r[0]).collect(),
        // The index travels as an f32: exact below 2^24, which the check above ensures.
        argmax: flat.iter().map(|r| r[1] as u32).collect(),
    })
}

/// `logits[rows[i], tokens[i]]` as f32, gathered on the device in one call.
pub fn pick(logits: &Tensor, rows: &[u32], tokens: &[u32]) -> Result<Vec<f32>> {
    let (_, v) = logits.dims2()?;
    let flat: Vec<u32> = rows
        .iter()
        .zip(tokens)
        .map(|(&r, &t)| {
            u32::try_from(r as u64 * v as u64 + t as u64)
                .map_err(|_| EngineError::InvalidInput("a logits batch beyond 2^32 entries".into()))
        })
        .collect::<Result<_>>()?;
    let device = logits.device();
    Ok(logits
        .flatten_all()?
        .index_select(&Tensor::new(flat.as_slice(), device)?, 0)?
        .to_dtype(DType::F32)?
        .to_vec1()?)
}

/// The op: [N, V] -> [N, 2] f32 of (lse, argmax).
struct Stats;

/// One row's (lse, argmax): the first maximum, the sum of exponentials in f64.
fn row(values: impl Iterator<Item = f32> + Clone) -> [f32; 2] {
    let (mut best, mut at) = (f32::NEG_INFINITY, 0usize);
    for (i, x) in values.clone().enumerate() {
        if x > best {
            (best, at) = (x, i);
        }
    }
    if best == f32::NEG_INFINITY {
        return [f32::NEG_INFINITY, 0.0];
    }
    let sum: f64 = values.map(|x| ((x - best) as f64).exp()).sum();
    [best + sum.ln() as f32, at as f32]
}

impl CustomOp1 for Stats {
    fn name(&self) -> &'static str {
        "row-stats"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, v) = layout.shape().dims2()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("row statistics: non-contiguous logits")
        };
        let mut out = Vec::with_capacity(2 * n);
        macro_rules! rows {
            ($data:expr, $conv:expr) => {
                for r in $data[start..end].chunks(v) {
                    out.extend(row(r.iter().map($conv)));
                }
            };
        }
        match storage {
            CpuStorage::F32(d) => rows!(d, |&x| x),
            CpuStorage::BF16(d) => rows!(d, |x| x.to_f32()),
            CpuStorage::F16(d) => rows!(d, |x| x.to_f32()),
            _ => candle_core::bail!("row statistics of {:?} logits", storage.dtype()),
        }
        Ok((CpuStorage::F32(out), Shape::from((n, 2))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::row_stats_cuda::forward(storage, layout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Against the composite log_softmax and argmax, in f32 and bf16, with a tie for the
    /// maximum (the first index wins) and a row of -inf but one entry.
    #[test]
    fn equals_log_softmax_and_first_argmax() {
        let dev = Device::Cpu;
        let mut data: Vec<f32> = (0..4 * 1000)
            .map(|i| ((i * 7919 % 1000) as f32 / 37.0).sin() * 9.0)
            .collect();
        data[1000 + 10] = 20.0;
        data[1000 + 500] = 20.0;
        for x in &mut data[3000..4000] {
            *x = f32::NEG_INFINITY;
        }
        data[3000 + 999] = 1.0;
        let logits = Tensor::from_vec(data, (4, 1000), &dev).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let l = logits.to_dtype(dtype).unwrap();
            let stats = row_stats(&l).unwrap();
            let f = l.to_dtype(DType::F32).unwrap();
            let logp = candle_nn::ops::log_softmax(&f, 1).unwrap();
            let want: Vec<u32> = f.argmax(1).unwrap().to_vec1().unwrap();
            assert_eq!(stats.argmax, want, "{dtype:?}");
            assert_eq!(stats.argmax[1], 10, "{dtype:?}: the first maximum");
            let rows: Vec<u32> = (0..4).collect();
            let tokens = [3u32, 500, 77, 999];
            let picked = pick(&l, &rows, &tokens).unwrap();
            let logp = logp.to_vec2::<f32>().unwrap();
            for r in 0..4 {
                let got = picked[r] - stats.lse[r];
                let want = logp[r][tokens[r] as usize];
                assert!(
                    (got - want).abs() < 1e-5,
                    "{dtype:?} row {r}: {got} vs {want}"
                );
            }
        }
    }
}
