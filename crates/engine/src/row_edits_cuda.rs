//! The mixed batch's per-row correction in one CUDA kernel per edited map (BGMV: each row
//! gathers its own variant's factors): `y += (x A_v^T) B_v^T + db_v` for row i's variant v,
//! shrink and expand in f32 registers and shared memory, one rounding at the end, in place on
//! the map's fresh output. A batch's rows find their factors through one table of device
//! pointers per batch composition ([`Table`]), uploaded in one copy: changing the batch's
//! variants costs no concatenation and no device-to-host reads. The unfused form (shrink, mask,
//! expand, bias, add: five kernels) costs more in launches than in work at decoding sizes.
//! Compiled with NVRTC on first use; where that fails, callers keep the unfused form.

// FFI: a kernel launch and raw device pointers; every pointer is into a live, contiguous
// device buffer that the table holds.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, DType, Device, InplaceOp2, Layout, Storage, Tensor};

use crate::edit::Edit;
use crate::trace::Component;

const SOURCE: &str = concat!(
    kernel_prelude!(),
    r#"

// One block per token row n (row = n / t). entry[4 * row ..]: A [r, d_in], B [d_out, r],
// bias [d_out] (0: none), r (0: the base row).
template <typename T>
__device__ void row_lora(const T* x, T* y, const long long* table, int d_in, int d_out, int t) {
  extern __shared__ float shrunk[];
  const int n = blockIdx.x;
  const long long* e = table + 4 * (n / t);
  const T* a = (const T*)e[0];
  const T* b = (const T*)e[1];
  const T* bias = (const T*)e[2];
  const int r = (int)e[3];
  if (r == 0 && bias == 0) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const T* xr = x + (size_t)n * d_in;
  for (int j = warp; j < r; j += warps) {
    const T* ar = a + (size_t)j * d_in;
    float acc = 0.f;
    for (int i = lane; i < d_in; i += 32) acc += ld(xr + i) * ld(ar + i);
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) shrunk[j] = acc;
  }
  __syncthreads();
  T* yr = y + (size_t)n * d_out;
  for (int o = threadIdx.x; o < d_out; o += blockDim.x) {
    float c = 0.f;
    const T* bo = b + (size_t)o * r;
    for (int j = 0; j < r; ++j) c += shrunk[j] * ld(bo + j);
    if (bias) c += ld(bias + o);
    st(yr + o, ld(yr + o) + c);
  }
}

extern "C" __global__ void row_lora_f32(const float* x, float* y, const long long* table,
    int d_in, int d_out, int t) {
  row_lora<float>(x, y, table, d_in, d_out, t);
}

extern "C" __global__ void row_lora_bf16(const unsigned short* x, unsigned short* y,
    const long long* table, int d_in, int d_out, int t) {
  row_lora<unsigned short>(x, y, table, d_in, d_out, t);
}
"#
);

/// The kernels' PTX, compiled once (None: NVRTC failed; the unfused form is used).
fn ptx() -> Option<&'static str> {
    static PTX: OnceLock<Option<String>> = OnceLock::new();
    PTX.get_or_init(|| match candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE) {
        Ok(p) => Some(p.to_src()),
        Err(e) => {
            eprintln!("eigenprune: the fused row-edit kernel did not compile ({e:?}); using the unfused form");
            None
        }
    })
    .as_deref()
}

/// Whether the fused form serves a batch on `device` in `dtype`.
pub(crate) fn available(device: &Device, dtype: DType) -> bool {
    device.is_cuda() && matches!(dtype, DType::F32 | DType::BF16) && ptx().is_some()
}

/// A table slot: one (map, row)'s A [r, in], B [out, r] and bias delta [out] addresses (0:
/// none) and r; zeros for a base row.
pub(crate) type Slot = [i64; 4];

/// One variant's factors on the batch's device in its dtype, contiguous, with each map's slot:
/// prepared once, kept while the variant stays in the batch.
pub(crate) struct Prepared {
    /// The variant it was prepared from (None: an edit without shared identity).
    edit: Option<Arc<Edit>>,
    maps: HashMap<(usize, Component), Slot>,
    /// The tensors the slots point into.
    _held: Vec<Tensor>,
}

impl Prepared {
    pub(crate) fn new(
        edit: &Edit,
        id: Option<Arc<Edit>>,
        device: &Device,
        dtype: DType,
    ) -> crate::Result<Self> {
        let cast = |t: &Tensor| -> crate::Result<Tensor> {
            Ok(t.to_device(device)?.to_dtype(dtype)?.contiguous()?)
        };
        let mut maps = HashMap::new();
        let mut held = Vec::new();
        for m in &edit.matrices {
            let (a, b) = (cast(&m.a)?, cast(&m.b)?);
            let mut slot = [address(&a)?, address(&b)?, 0, m.rank() as i64];
            if let Some(bias) = &m.bias_delta {
                let bias = cast(bias)?;
                slot[2] = address(&bias)?;
                held.push(bias);
            }
            held.push(a);
            held.push(b);
            maps.insert((m.layer, m.component), slot);
        }
        Ok(Self {
            edit: id,
            maps,
            _held: held,
        })
    }

    /// Whether it was prepared from `edit` (the same `Arc`).
    pub(crate) fn is(&self, edit: &Arc<Edit>) -> bool {
        self.edit.as_ref().is_some_and(|e| Arc::ptr_eq(e, edit))
    }

    /// The slot of its edit of `site` (None: it leaves that map alone).
    pub(crate) fn slot(&self, site: (usize, Component)) -> Option<Slot> {
        self.maps.get(&site).copied()
    }
}

/// Every (map, row)'s slot for one batch composition, on the device; the [`Prepared`]
/// variants the slots point into must outlive it (their [`crate::row_edits::RowEdits`] holds
/// both).
pub(crate) struct Table {
    /// [slots * 4] i64.
    pointers: Tensor,
}

fn cuda(s: &Storage) -> candle_core::Result<&CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => candle_core::bail!("row edits: a tensor off the GPU"),
    }
}

/// The device address of a contiguous tensor's first element.
fn address(t: &Tensor) -> candle_core::Result<i64> {
    let (st, layout) = t.storage_and_layout();
    let c = cuda(&st)?;
    let stream = c.device().cuda_stream();
    let base = match t.dtype() {
        DType::F32 => c.as_cuda_slice::<f32>()?.device_ptr(&stream).0,
        DType::BF16 => c.as_cuda_slice::<half::bf16>()?.device_ptr(&stream).0,
        other => candle_core::bail!("row edits: fused for f32 and bf16 only, not {other:?}"),
    };
    Ok((base + (layout.start_offset() * t.dtype().size_in_bytes()) as u64) as i64)
}

impl Table {
    /// Uploads `slots` (by the caller's convention, slot `map * rows + row`) in one copy.
    pub(crate) fn new(slots: &[Slot], device: &Device) -> candle_core::Result<Self> {
        Ok(Self {
            pointers: Tensor::from_vec(slots.concat(), slots.len() * 4, device)?,
        })
    }

    /// Adds slots `first..first + rows`' corrections for `x` [rows * t, in] to `y`
    /// [rows * t, out] in place. `y` must be the map's own fresh output (no other reader).
    pub(crate) fn apply(
        &self,
        first: usize,
        rows: usize,
        t: usize,
        max_rank: usize,
        x: &Tensor,
        y: &Tensor,
    ) -> candle_core::Result<()> {
        let op = Launch {
            pointers: self.pointers.narrow(0, 4 * first, 4 * rows)?,
            t,
            max_rank,
        };
        y.inplace_op2(x, &op)
    }
}

struct Launch {
    pointers: Tensor,
    t: usize,
    max_rank: usize,
}

fn slice<'s, T: candle_core::cuda_backend::CudaDType>(
    storage: &'s CudaStorage,
    layout: &Layout,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaView<'s, T>> {
    match layout.contiguous_offsets() {
        Some((o1, o2)) => Ok(storage.as_cuda_slice::<T>()?.slice(o1..o2)),
        None => candle_core::bail!("row edits: a non-contiguous input"),
    }
}

impl InplaceOp2 for Launch {
    fn name(&self) -> &'static str {
        "row-lora"
    }

    fn cpu_fwd(
        &self,
        _: &mut candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<()> {
        candle_core::bail!("the fused row-edit kernel is CUDA only")
    }

    fn cuda_fwd(
        &self,
        ys: &mut CudaStorage,
        yl: &Layout,
        xs: &CudaStorage,
        xl: &Layout,
    ) -> candle_core::Result<()> {
        let dev = xs.device().clone();
        let (n, d_in) = xl.shape().dims2()?;
        let (ny, d_out) = yl.shape().dims2()?;
        if ny != n || n % self.t != 0 || self.pointers.dim(0)? * self.t != 4 * n {
            candle_core::bail!("row edits: {n} input rows, {ny} output rows, t {}", self.t);
        }
        let (p_st, p_l) = self.pointers.storage_and_layout();
        let table = slice::<i64>(cuda(&p_st)?, p_l)?;
        let Some(ptx) = ptx() else {
            candle_core::bail!("the fused row-edit kernel did not compile")
        };
        let cfg = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: (self.max_rank.max(1) * 4) as u32,
        };
        let ints = [d_in as i32, d_out as i32, self.t as i32];
        let Some((y0, y1)) = yl.contiguous_offsets() else {
            candle_core::bail!("row edits: a non-contiguous output")
        };
        macro_rules! launch {
            ($t:ty, $name:expr) => {{
                let func = dev.get_or_load_custom_func($name, "eigenprune_row_lora", ptx)?;
                let x = slice::<$t>(xs, xl)?;
                let mut y = ys.as_cuda_slice_mut::<$t>()?.slice_mut(y0..y1);
                let mut builder = func.builder();
                builder.arg(&x);
                builder.arg(&mut y);
                builder.arg(&table);
                for v in &ints {
                    builder.arg(v);
                }
                // SAFETY: x [n, d_in] and y [n, d_out] contiguous; the table holds n / t rows
                // of (A [r, d_in], B [d_out, r], bias [d_out] or 0, r) into live buffers.
                unsafe { builder.launch(cfg) }.w()?;
            }};
        }
        match xs.dtype() {
            DType::F32 => launch!(f32, "row_lora_f32"),
            DType::BF16 => launch!(half::bf16, "row_lora_bf16"),
            _ => candle_core::bail!("row edits: fused for f32 and bf16 only"),
        }
        Ok(())
    }
}
