//! A decoding step's attention over a [`FixedKv`](crate::fixed_kv::FixedKv), as one op: the
//! query of each row against that row's cached positions 0..=position (the last `window` of
//! them, with a sliding window), scores, softmax and weighted values in f32, each row's length
//! read from the step's positions buffer. No mask and no work past a row's length, so one op
//! (and on a GPU one captured graph) serves every length. Its CPU form is here, the (row,
//! head) pairs split over candle's thread pool; its CUDA kernel is in `fixed_kv_cuda`.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};

/// Whether [`attention`] serves a cache of `capacity` positions of `head_dim` in `dtype` on
/// `device`: f32 on the CPU; f32 or bf16 on a GPU within the kernel's shared memory.
pub(crate) fn available(device: &Device, dtype: DType, capacity: usize, head_dim: usize) -> bool {
    match device {
        Device::Cpu => dtype == DType::F32,
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => {
            crate::fixed_kv_cuda::attention_available(device, dtype, capacity, head_dim)
        }
        #[allow(unreachable_patterns)]
        _ => {
            let _ = (capacity, head_dim);
            false
        }
    }
}

/// `q` [B, H, 1, D] (rotated) against `k` and `v` [B, Hkv, capacity, D] at each row's
/// positions 0..=positions[row] ([B] u32; the last `window` of them, if any); returns
/// [B, H, 1, D].
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    positions: &Tensor,
    scale: f64,
    window: Option<usize>,
) -> candle_core::Result<Tensor> {
    let op = DecodeAttention {
        positions: positions.clone(),
        scale: scale as f32,
        window: window.unwrap_or(0),
    };
    q.contiguous()?.apply_op3_no_bwd(k, v, &op)
}

pub(crate) struct DecodeAttention {
    /// [B] u32: each row's position (its last key).
    pub(crate) positions: Tensor,
    pub(crate) scale: f32,
    /// 0: no window.
    pub(crate) window: usize,
}

/// The shapes of one call: rows, query heads, key/value heads, capacity, head dim.
pub(crate) struct Dims {
    pub(crate) b: usize,
    pub(crate) h: usize,
    pub(crate) hkv: usize,
    pub(crate) cap: usize,
    pub(crate) d: usize,
}

impl Dims {
    pub(crate) fn of(ql: &Layout, kl: &Layout, vl: &Layout) -> candle_core::Result<Self> {
        let (b, h, one, d) = ql.shape().dims4()?;
        let (kb, hkv, cap, kd) = kl.shape().dims4()?;
        if one != 1 || kb != b || kd != d || vl.shape() != kl.shape() || hkv == 0 || h % hkv != 0 {
            candle_core::bail!(
                "decode attention: q {:?}, cache {:?}",
                ql.shape(),
                kl.shape()
            );
        }
        Ok(Self { b, h, hkv, cap, d })
    }
}

/// The contiguous range of a layout's elements.
pub(crate) fn offsets(l: &Layout) -> candle_core::Result<(usize, usize)> {
    l.contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("decode attention: non-contiguous".into()))
}

impl DecodeAttention {
    /// One (row, query head): `out` [D] from `q` [D] and the kv head's `keys`, `values`
    /// [cap, D].
    fn cpu_head(&self, q: &[f32], keys: &[f32], values: &[f32], pos: usize, out: &mut [f32]) {
        let d = q.len();
        let lo = match self.window {
            0 => 0,
            w => (pos + 1).saturating_sub(w),
        };
        let q: Vec<f32> = q.iter().map(|x| x * self.scale).collect();
        let mut scores: Vec<f32> = (lo..=pos)
            .map(|j| dot(&q, &keys[j * d..(j + 1) * d]))
            .collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in &mut scores {
            *s = (*s - max).exp();
            sum += *s;
        }
        out.fill(0.0);
        for (j, s) in (lo..=pos).zip(&scores) {
            for (o, v) in out.iter_mut().zip(&values[j * d..(j + 1) * d]) {
                *o += s * v;
            }
        }
        let inv = 1.0 / sum;
        out.iter_mut().for_each(|o| *o *= inv);
    }
}

/// A dot product in eight independent lanes (vectorised; a plain fold is not, being ordered).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Below this many multiply-adds a call stays on the calling thread.
const PARALLEL_WORK: usize = 1 << 14;

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "fixed-decode-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Dims { b, h, hkv, cap, d } = Dims::of(ql, kl, vl)?;
        let ((q0, q1), (k0, k1), (v0, v1)) = (offsets(ql)?, offsets(kl)?, offsets(vl)?);
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (qs, ks, vs) else {
            candle_core::bail!("decode attention on the CPU: f32 only")
        };
        let (q, k, v) = (&q[q0..q1], &k[k0..k1], &v[v0..v1]);
        let positions = self.positions.to_vec1::<u32>()?;
        if positions.len() != b || positions.iter().any(|&p| p as usize >= cap) {
            candle_core::bail!("decode attention: positions {positions:?} for {b} rows of {cap}");
        }
        let mut out = vec![0f32; b * h * d];
        {
            // One (row, head) per output slice; each locked once, by the item that writes it.
            let slices: Vec<Mutex<&mut [f32]>> = out.chunks_mut(d).map(Mutex::new).collect();
            let item = |bh: usize| {
                let (row, head) = (bh / h, bh % h);
                let kv = (row * hkv + head / (h / hkv)) * cap * d;
                let pos = positions[row] as usize;
                let mut o = slices[bh].lock().unwrap_or_else(|e| e.into_inner());
                let cache = kv..kv + cap * d;
                let qr = &q[bh * d..(bh + 1) * d];
                self.cpu_head(qr, &k[cache.clone()], &v[cache], pos, &mut o);
            };
            let work: usize = positions.iter().map(|&p| (p as usize + 1) * h * d).sum();
            if work < PARALLEL_WORK {
                (0..b * h).for_each(item);
            } else {
                candle_core::utils::barrier_pool()
                    .execute_chunked(b * h, |range| range.for_each(item));
            }
        }
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        qs: &candle_core::CudaStorage,
        ql: &Layout,
        ks: &candle_core::CudaStorage,
        kl: &Layout,
        vs: &candle_core::CudaStorage,
        vl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::fixed_kv_cuda::attention(self, qs, ql, ks, kl, vs, vl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The op equals softmax(q k^T * scale) v over each row's visible keys, computed plainly.
    #[test]
    fn matches_plain_attention_with_lengths_and_windows() {
        let dev = Device::Cpu;
        let (b, h, hkv, cap, d) = (3, 4, 2, 300, 20);
        let q = Tensor::randn(0f32, 1.0, (b, h, 1, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, hkv, cap, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, hkv, cap, d), &dev).unwrap();
        // Enough keys that the (row, head) pairs are split over the thread pool.
        let pos = [0u32, 150, 299];
        let positions = Tensor::new(&pos, &dev).unwrap();
        for window in [None, Some(5)] {
            let got = attention(&q, &k, &v, &positions, 0.3, window).unwrap();
            for (row, &p) in pos.iter().enumerate() {
                let lo = window.map_or(0, |w| (p as usize + 1).saturating_sub(w));
                let n = p as usize + 1 - lo;
                for head in 0..h {
                    // The row's visible positions of its query head's kv head.
                    let visible = |cache: &Tensor| {
                        let kv = cache.get(row).unwrap().get(head / (h / hkv)).unwrap();
                        kv.narrow(0, lo, n).unwrap()
                    };
                    let (keys, vals) = (visible(&k), visible(&v));
                    let qr = q.get(row).unwrap().get(head).unwrap();
                    let scores = (qr.matmul(&keys.t().unwrap()).unwrap() * 0.3).unwrap();
                    let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
                    let want = probs.matmul(&vals).unwrap().flatten_all().unwrap();
                    let got_row = got
                        .get(row)
                        .unwrap()
                        .get(head)
                        .unwrap()
                        .flatten_all()
                        .unwrap();
                    let diff = (want - got_row)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max(0)
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert!(
                        diff < 1e-5,
                        "row {row} head {head} window {window:?}: {diff}"
                    );
                }
            }
        }
    }

    #[test]
    fn refuses_positions_past_the_cache() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 2, 1, 4), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 1, 8, 4), DType::F32, &dev).unwrap();
        let positions = Tensor::new(&[8u32], &dev).unwrap();
        let err = attention(&q, &k, &k, &positions, 1.0, None).unwrap_err();
        assert!(err.to_string().contains("positions"), "{err}");
    }
}
