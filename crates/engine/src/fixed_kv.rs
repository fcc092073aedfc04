//! A key/value cache of fixed size, written in place: `rows` sequences of up to `capacity`
//! positions, each row holding one sequence from position 0 (no padding inside a row). A
//! decoding step over it reads every per-step input from two small device buffers (the token
//! ids and each row's position), so it is the same kernels on the same addresses every step:
//! what a CUDA graph replays ([`crate::fixed_decode`]).

use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor};

use crate::transformer::{KvCache, Transformer};
use crate::{EngineError, Result};

pub struct FixedKv {
    /// Per layer (keys, values), [rows, kv heads, capacity, head dim] each.
    pub(crate) layers: Vec<(Tensor, Tensor)>,
    /// [capacity] u32: 0, 1, 2, ... (the key positions the masks compare against).
    pub(crate) key_positions: Tensor,
    /// With a sliding window w: [capacity] u32 w, w + 1, ... (the keys still inside it).
    windowed: Option<(usize, Tensor)>,
    /// Per row: the positions it holds (None: a free row).
    lengths: Vec<Option<usize>>,
    capacity: usize,
}

impl FixedKv {
    /// An empty cache of `rows` rows of `capacity` positions for `model`, on its device in its
    /// dtype.
    pub fn new(model: &Transformer, rows: usize, capacity: usize) -> Result<Self> {
        let c = &model.config;
        if rows == 0 || capacity == 0 {
            return Err(EngineError::InvalidInput(
                "a fixed cache needs at least one row and one position".into(),
            ));
        }
        if capacity > c.max_positions {
            return Err(EngineError::InvalidInput(format!(
                "a cache of {capacity} positions exceeds the model's {}",
                c.max_positions
            )));
        }
        let shape = (rows, c.n_kv_heads, capacity, c.head_dim);
        let (device, dtype) = (model.device(), model.dtype());
        let layers = (0..c.n_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, dtype, device)?,
                    Tensor::zeros(shape, dtype, device)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let windowed = match c.sliding_window {
            Some(w) => Some((w, Tensor::arange(w as u32, (w + capacity) as u32, device)?)),
            None => None,
        };
        Ok(Self {
            layers,
            windowed,
            key_positions: Tensor::arange(0u32, capacity as u32, device)?,
            lengths: vec![None; rows],
            capacity,
        })
    }

    /// [capacity] u32 from `window` on (the model's sliding window).
    pub(crate) fn key_positions_plus(&self, window: usize) -> candle_core::Result<&Tensor> {
        match &self.windowed {
            Some((w, t)) if *w == window => Ok(t),
            _ => candle_core::bail!("a fixed cache made for another window"),
        }
    }

    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions held by `row` (None: free).
    pub fn length(&self, row: usize) -> Option<usize> {
        self.lengths[row]
    }

    /// Copies a one-row cache with no padding (a prompt's prefill) into `row`.
    pub fn load_row(&mut self, row: usize, cache: &KvCache) -> Result<()> {
        if row >= self.rows() {
            return Err(EngineError::InvalidInput(format!(
                "row {row} of a cache of {}",
                self.rows()
            )));
        }
        let (len, layers) = cache.single_row()?;
        if len >= self.capacity {
            return Err(EngineError::InvalidInput(format!(
                "a sequence of {len} positions leaves no room in a cache of {}",
                self.capacity
            )));
        }
        if layers.len() != self.layers.len() {
            return Err(EngineError::InvalidInput(
                "the cache has other layers".into(),
            ));
        }
        for ((k, v), (fk, fv)) in layers.iter().zip(&self.layers) {
            fk.narrow(0, row, 1)?.slice_set(&k.contiguous()?, 2, 0)?;
            fv.narrow(0, row, 1)?.slice_set(&v.contiguous()?, 2, 0)?;
        }
        self.lengths[row] = Some(len);
        Ok(())
    }

    /// Copies row `from_row` of `from` (same model) into `row`.
    pub fn copy_row(&mut self, row: usize, from: &FixedKv, from_row: usize) -> Result<()> {
        let Some(len) = from.lengths[from_row] else {
            return Err(EngineError::InvalidInput("copying a free row".into()));
        };
        if len >= self.capacity || row >= self.rows() {
            return Err(EngineError::InvalidInput(format!(
                "row {row} of {} positions cannot hold {len}",
                self.capacity
            )));
        }
        for ((k, v), (fk, fv)) in self.layers.iter().zip(&from.layers) {
            let part = |t: &Tensor| t.narrow(0, from_row, 1)?.narrow(2, 0, len)?.contiguous();
            k.narrow(0, row, 1)?.slice_set(&part(fk)?, 2, 0)?;
            v.narrow(0, row, 1)?.slice_set(&part(fv)?, 2, 0)?;
        }
        self.lengths[row] = Some(len);
        Ok(())
    }

    /// The first free row.
    pub fn free_slot(&self) -> Option<usize> {
        self.lengths.iter().position(Option::is_none)
    }

    /// Frees `row` (its contents are left; a step's mask never shows them).
    pub fn free_row(&mut self, row: usize) {
        self.lengths[row] = None;
    }

    /// Each row's position for the next token (0 for free rows, whose output is dropped), and
    /// the keys a step must attend over: the longest row's length + 1. Errors when a row is
    /// full.
    pub fn next_positions(&self) -> Result<(Vec<u32>, usize)> {
        let mut keys = 1;
        let mut positions = Vec::with_capacity(self.rows());
        for len in &self.lengths {
            let len = len.unwrap_or(0);
            if len >= self.capacity {
                return Err(EngineError::InvalidInput(format!(
                    "a row of the fixed cache is full ({} positions)",
                    self.capacity
                )));
            }
            keys = keys.max(len + 1);
            positions.push(len as u32);
        }
        Ok((positions, keys))
    }

    /// Counts the step's token in every held row.
    pub fn advance(&mut self) {
        for len in self.lengths.iter_mut().flatten() {
            *len += 1;
        }
    }
}

/// Whether a fixed step of `model` over `capacity` positions runs its attention as one op
/// reading each row's length itself ([`crate::decode_attention`]: f32 on the CPU, f32 or bf16
/// on a GPU) rather than as masked products over the first `keys` positions.
pub(crate) fn fused_attention(model: &Transformer, capacity: usize) -> bool {
    crate::decode_attention::available(
        model.device(),
        model.dtype(),
        capacity,
        model.config.head_dim,
    )
}

/// Writes `new` [rows, heads, 1, head dim] into `cache` [rows, heads, capacity, head dim] at
/// each row's position (`positions` [rows] u32, read on the device).
pub(crate) fn write(cache: &Tensor, new: &Tensor, positions: &Tensor) -> candle_core::Result<()> {
    let (rows, heads, capacity, dim) = cache.dims4()?;
    if new.dims() != [rows, heads, 1, dim] || positions.dims() != [rows] {
        candle_core::bail!(
            "fixed kv write: cache {:?}, new {:?}, positions {:?}",
            cache.dims(),
            new.dims(),
            positions.dims()
        );
    }
    let op = KvWrite {
        positions: positions.clone(),
        heads,
        capacity,
        dim,
    };
    cache.inplace_op2(&new.contiguous()?, &op)
}

struct KvWrite {
    positions: Tensor,
    heads: usize,
    capacity: usize,
    dim: usize,
}

impl KvWrite {
    fn cpu<T: Copy>(&self, cache: &mut [T], new: &[T], positions: &[u32]) {
        let (h, cap, d) = (self.heads, self.capacity, self.dim);
        for (row_head, src) in new.chunks_exact(d).enumerate() {
            let pos = positions[row_head / h] as usize;
            let at = (row_head * cap + pos) * d;
            cache[at..at + d].copy_from_slice(src);
        }
    }
}

impl InplaceOp2 for KvWrite {
    fn name(&self) -> &'static str {
        "fixed-kv-write"
    }

    fn cpu_fwd(
        &self,
        cache: &mut CpuStorage,
        cl: &Layout,
        new: &CpuStorage,
        nl: &Layout,
    ) -> candle_core::Result<()> {
        let (Some((c0, c1)), Some((n0, n1))) = (cl.contiguous_offsets(), nl.contiguous_offsets())
        else {
            candle_core::bail!("fixed kv write: a non-contiguous operand")
        };
        let positions = self.positions.to_vec1::<u32>()?;
        if positions.iter().any(|&p| p as usize >= self.capacity) {
            candle_core::bail!("fixed kv write: a position past the capacity");
        }
        match (cache, new) {
            (CpuStorage::F32(c), CpuStorage::F32(n)) => {
                self.cpu(&mut c[c0..c1], &n[n0..n1], &positions)
            }
            (CpuStorage::BF16(c), CpuStorage::BF16(n)) => {
                self.cpu(&mut c[c0..c1], &n[n0..n1], &positions)
            }
            (CpuStorage::F16(c), CpuStorage::F16(n)) => {
                self.cpu(&mut c[c0..c1], &n[n0..n1], &positions)
            }
            _ => candle_core::bail!("fixed kv write: f32, bf16 or f16 of one dtype"),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        cache: &mut candle_core::CudaStorage,
        cl: &Layout,
        new: &candle_core::CudaStorage,
        nl: &Layout,
    ) -> candle_core::Result<()> {
        crate::fixed_kv_cuda::write(
            cache,
            cl,
            new,
            nl,
            &self.positions,
            [self.heads, self.capacity, self.dim],
        )
    }
}

/// The device's fixed buffer of a step's inputs, [2 * rows] u32: the token ids, then each
/// row's position.
pub(crate) fn step_inputs(rows: usize, device: &Device) -> Result<Tensor> {
    Ok(Tensor::zeros(2 * rows, DType::U32, device)?)
}

/// Copies `data` into the u32 tensor `buffer`'s own storage (no new allocation: its address
/// stays the one a captured graph reads).
pub(crate) fn upload(buffer: &Tensor, data: &[u32]) -> Result<()> {
    if buffer.dtype() != DType::U32 || buffer.elem_count() != data.len() {
        return Err(EngineError::InvalidInput(format!(
            "{} values for a buffer of {} {:?}",
            data.len(),
            buffer.elem_count(),
            buffer.dtype()
        )));
    }
    Ok(buffer.inplace_op1(&Upload(data))?)
}

struct Upload<'a>(&'a [u32]);

impl candle_core::InplaceOp1 for Upload<'_> {
    fn name(&self) -> &'static str {
        "fixed-upload"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let (Some((o0, o1)), CpuStorage::U32(v)) = (l.contiguous_offsets(), s) else {
            candle_core::bail!("upload: a contiguous u32 buffer")
        };
        v[o0..o1].copy_from_slice(self.0);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &mut candle_core::CudaStorage, l: &Layout) -> candle_core::Result<()> {
        crate::fixed_kv_cuda::upload(s, l, self.0)
    }
}
