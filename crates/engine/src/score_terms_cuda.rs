//! [`crate::score_terms`] on the GPU: each term one kernel reading the forward's tensors in
//! their dtype (f32 or bf16), f32 out; a site's rows get their statistics once ([`row_stats`]),
//! which the difference and the sum both read. Reductions over rows run in chunks of rows (a thread per column), the chunks' partial
//! results then reduced by candle: deterministic, no atomics. NVRTC on first use; where it
//! fails, the callers keep the composite.

// FFI: kernel launches over contiguous inputs and fresh outputs.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Shape, Storage, Tensor};

use crate::attribution::Aggregate;
use crate::config::NormKind;
use crate::score_terms::RowNorm;

const SOURCE: &str = concat!(
    kernel_prelude!(),
    reduction_prelude!(),
    r#"
// (mean, r) per row of d, a block per row. kind 0: (0, 1); 1 (RMS): (0, 1/sqrt(mean(x^2) + eps));
// 2 (LayerNorm): (mean, 1/sqrt(mean((x - mean)^2) + eps)).
template <typename T>
__device__ void row_stats(const T* x, float* stats, unsigned d, float eps, int kind) {
  __shared__ float shared[32];
  const size_t at = (size_t)blockIdx.x * d;
  float mean = 0.f, r = 1.f;
  if (kind == 2) {
    float s = 0.f;
    for (unsigned k = threadIdx.x; k < d; k += blockDim.x) s += ld(x + at + k);
    mean = block_sum(s, shared) / d;
  }
  if (kind != 0) {
    float s = 0.f;
    for (unsigned k = threadIdx.x; k < d; k += blockDim.x) {
      const float c = ld(x + at + k) - mean;
      s += c * c;
    }
    r = rsqrtf(block_sum(s, shared) / d + eps);
  }
  if (threadIdx.x == 0) { stats[2 * blockIdx.x] = mean; stats[2 * blockIdx.x + 1] = r; }
}

__device__ __forceinline__ float normed(float v, const float* stats, unsigned row) {
  return (v - stats[2 * row]) * stats[2 * row + 1];
}

// out[i, k] = normed(x[there_i, k]) - normed(x[here_i, k]), a thread per output value.
template <typename T>
__device__ void row_diff(const T* x, const float* stats, const unsigned* there,
                         const unsigned* here, float* out, unsigned n, unsigned d) {
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n * d; i += gridDim.x * blockDim.x) {
    const unsigned row = i / d, k = i % d, a = there[row], b = here[row];
    out[i] = normed(ld(x + (size_t)a * d + k), stats, a) - normed(ld(x + (size_t)b * d + k), stats, b);
  }
}

// out[c, k] = the sum of normed(x[rows_i, k]) over the rows i of chunk c (blockIdx.y).
template <typename T>
__device__ void row_sum(const T* x, const float* stats, const unsigned* rows, float* out,
                        unsigned n, unsigned d, unsigned per) {
  const unsigned k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= d) return;
  const unsigned lo = blockIdx.y * per, hi = min(n, lo + per);
  float s = 0.f;
  for (unsigned i = lo; i < hi; ++i) {
    const unsigned r = rows[i];
    s += normed(ld(x + (size_t)r * d + k), stats, r);
  }
  out[(size_t)blockIdx.y * d + k] = s;
}

// out[i, k] = x[rows_i, k] as f32.
template <typename T>
__device__ void gather(const T* x, const unsigned* rows, float* out, unsigned n, unsigned d) {
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n * d; i += gridDim.x * blockDim.x) {
    out[i] = ld(x + (size_t)rows[i / d] * d + i % d);
  }
}

#define BOTH(name, args, call) \
  extern "C" __global__ void name##_f32 args(float) { call; } \
  extern "C" __global__ void name##_bf16 args(unsigned short) { call; }
#define STATS_ARGS(T) (const T* x, float* stats, unsigned d, float eps, int kind)
#define DIFF_ARGS(T) (const T* x, const float* stats, const unsigned* there, const unsigned* here, \
                      float* out, unsigned n, unsigned d)
#define SUM_ARGS(T) (const T* x, const float* stats, const unsigned* rows, float* out, unsigned n, \
                     unsigned d, unsigned per)
#define GATHER_ARGS(T) (const T* x, const unsigned* rows, float* out, unsigned n, unsigned d)
BOTH(row_stats, STATS_ARGS, row_stats(x, stats, d, eps, kind))
BOTH(row_diff, DIFF_ARGS, row_diff(x, stats, there, here, out, n, d))
BOTH(row_sum, SUM_ARGS, row_sum(x, stats, rows, out, n, d, per))
BOTH(gather, GATHER_ARGS, gather(x, rows, out, n, d))

// out[c, k] = agg over the rows i of chunk c of a[i, k] * b[i, k]: 0 max, 1 sum, 2 sum of |.|.
extern "C" __global__ void product_aggregate(const float* a, const float* b, float* out,
                                             unsigned n, unsigned m, unsigned per, int agg) {
  const unsigned k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= m) return;
  const unsigned lo = blockIdx.y * per, hi = min(n, lo + per);
  float acc = agg == 0 ? __int_as_float(0xff800000u) : 0.f;  // -inf
  for (unsigned i = lo; i < hi; ++i) {
    const float p = a[(size_t)i * m + k] * b[(size_t)i * m + k];
    acc = agg == 0 ? fmaxf(acc, p) : acc + (agg == 2 ? fabsf(p) : p);
  }
  out[(size_t)blockIdx.y * m + k] = acc;
}
"#
);

const MODULE: &str = "eigenprune_score_terms";
/// Rows per chunk of the row reductions.
const CHUNK: usize = 64;

fn ptx() -> Option<&'static str> {
    static PTX: OnceLock<Option<String>> = OnceLock::new();
    PTX.get_or_init(
        || match candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE) {
            Ok(p) => Some(p.to_src()),
            Err(e) => {
                eprintln!(
                    "eigenprune: the score kernels did not compile ({e:?}); using composites"
                );
                None
            }
        },
    )
    .as_deref()
}

/// Whether the kernels compiled.
pub(crate) fn compiled() -> bool {
    ptx().is_some()
}

/// Whether the kernels take `x`: a rank-2 CUDA tensor of f32 or bf16 whose element count
/// fits their 32-bit indices, with the kernels compiled.
pub(crate) fn fits(x: &Tensor) -> bool {
    x.device().is_cuda()
        && matches!(x.dtype(), DType::F32 | DType::BF16)
        && x.rank() == 2
        && x.elem_count() < u32::MAX as usize / 2
        && ptx().is_some()
}

fn suffix(dtype: DType) -> &'static str {
    if dtype == DType::F32 {
        "f32"
    } else {
        "bf16"
    }
}

fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 1 << 16) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn chunked(columns: usize, rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            columns.div_ceil(128) as u32,
            rows.div_ceil(CHUNK).max(1) as u32,
            1,
        ),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn f32_tensor(out: CudaSlice<f32>, dev: &CudaDevice, shape: impl Into<Shape>) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(out, dev.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}

/// Runs `body` with the device and a typed view of each of `tensors` (contiguous; x first in
/// its dtype, the others u32 indices or f32).
macro_rules! with_views {
    ($x:expr, [$($other:ident : $ty:ty),*], |$dev:ident, $xs:ident $(, $view:ident)*| $body:block) => {{
        let x = $x.contiguous()?;
        $(let $other = $other.contiguous()?;)*
        let (xg, xl) = x.storage_and_layout();
        let Storage::Cuda(xc) = &*xg else { candle_core::bail!("a score kernel given a non-CUDA tensor") };
        let (x0, x1) = xl.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("non-contiguous input".into()))?;
        $(
            let guard = $other.storage_and_layout();
            let Storage::Cuda(c) = &*guard.0 else { candle_core::bail!("a score kernel given a non-CUDA tensor") };
            let (o0, o1) = guard.1.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("non-contiguous input".into()))?;
            let $view: CudaView<'_, $ty> = c.as_cuda_slice::<$ty>()?.slice(o0..o1);
        )*
        let $dev = xc.device().clone();
        match x.dtype() {
            DType::F32 => { let $xs = xc.as_cuda_slice::<f32>()?.slice(x0..x1); $body }
            _ => { let $xs = xc.as_cuda_slice::<half::bf16>()?.slice(x0..x1); $body }
        }
    }};
}

/// Each row's (mean, r) under `norm`, f32 [N, 2].
pub(crate) fn row_stats(x: &Tensor, norm: RowNorm) -> candle_core::Result<Tensor> {
    let (rows, d) = x.dims2()?;
    let (eps, kind) = match norm {
        RowNorm::Plain => (0f32, 0i32),
        RowNorm::Normalised(NormKind::RmsNorm, eps) => (eps as f32, 1),
        RowNorm::Normalised(NormKind::LayerNorm, eps) => (eps as f32, 2),
    };
    let ptx = ptx().expect("fits() checked the kernels");
    let d32 = d as u32;
    let name = format!("row_stats_{}", suffix(x.dtype()));
    with_views!(x, [], |dev, xs| {
        let func = dev.get_or_load_custom_func(&name, MODULE, ptx)?;
        // SAFETY: every row's two values are written before they are read.
        let out = unsafe { dev.alloc::<f32>(2 * rows) }?;
        let cfg = LaunchConfig {
            grid_dim: (rows.max(1) as u32, 1, 1),
            block_dim: (if d >= 512 { 256 } else { 128 }, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = func.builder();
        b.arg(&xs).arg(&out).arg(&d32).arg(&eps).arg(&kind);
        // SAFETY: x holds rows x d values, out 2 per row.
        unsafe { b.launch(cfg) }.w()?;
        drop(b);
        Ok(f32_tensor(out, &dev, (rows, 2)))
    })
}

/// rows[there] - rows[here] of x [N, d] normalised with its [`row_stats`], f32 [n, d].
pub(crate) fn row_diff(
    x: &Tensor,
    st: &Tensor,
    there: &Tensor,
    here: &Tensor,
) -> candle_core::Result<Tensor> {
    let d = x.dim(1)?;
    let n = here.dim(0)?;
    let (n32, d32) = (n as u32, d as u32);
    let ptx = ptx().expect("fits() checked the kernels");
    let name = format!("row_diff_{}", suffix(x.dtype()));
    with_views!(x, [st: f32, there: u32, here: u32], |dev, xs, sv, tv, hv| {
        let func = dev.get_or_load_custom_func(&name, MODULE, ptx)?;
        // SAFETY: every value is written by the kernel before it is read.
        let out = unsafe { dev.alloc::<f32>(n * d) }?;
        let mut b = func.builder();
        b.arg(&xs).arg(&sv).arg(&tv).arg(&hv).arg(&out).arg(&n32).arg(&d32);
        // SAFETY: there and here hold n row indices below x's row count (the sweep's scored
        // positions), out n x d values.
        unsafe { b.launch(elementwise(n * d)) }.w()?;
        drop(b);
        Ok(f32_tensor(out, &dev, (n, d)))
    })
}

/// The sum of x's rows at `rows`, normalised with its [`row_stats`], f32 [d].
pub(crate) fn row_sum(x: &Tensor, st: &Tensor, rows: &Tensor) -> candle_core::Result<Tensor> {
    let d = x.dim(1)?;
    let n = rows.dim(0)?;
    let chunks = n.div_ceil(CHUNK).max(1);
    let (n32, d32, per) = (n as u32, d as u32, CHUNK as u32);
    let ptx = ptx().expect("fits() checked the kernels");
    let name = format!("row_sum_{}", suffix(x.dtype()));
    let partial = with_views!(x, [st: f32, rows: u32], |dev, xs, sv, rv| {
        let func = dev.get_or_load_custom_func(&name, MODULE, ptx)?;
        // SAFETY: every chunk's d values are written by the kernel before they are read.
        let out = unsafe { dev.alloc::<f32>(chunks * d) }?;
        let mut b = func.builder();
        b.arg(&xs).arg(&sv).arg(&rv).arg(&out).arg(&n32).arg(&d32).arg(&per);
        // SAFETY: rows holds n indices below x's row count, out chunks x d values.
        unsafe { b.launch(chunked(d, n)) }.w()?;
        drop(b);
        candle_core::Result::Ok(f32_tensor(out, &dev, (chunks, d)))
    })?;
    partial.sum(0)
}

/// x [N, d] at `rows`, f32 [n, d].
pub(crate) fn gather_f32(x: &Tensor, rows: &Tensor) -> candle_core::Result<Tensor> {
    let d = x.dim(1)?;
    let n = rows.dim(0)?;
    let (n32, d32) = (n as u32, d as u32);
    let ptx = ptx().expect("fits() checked the kernels");
    let name = format!("gather_{}", suffix(x.dtype()));
    with_views!(x, [rows: u32], |dev, xs, rv| {
        let func = dev.get_or_load_custom_func(&name, MODULE, ptx)?;
        // SAFETY: every value is written by the kernel before it is read.
        let out = unsafe { dev.alloc::<f32>(n * d) }?;
        let mut b = func.builder();
        b.arg(&xs).arg(&rv).arg(&out).arg(&n32).arg(&d32);
        // SAFETY: rows holds n indices below x's row count, out n x d values.
        unsafe { b.launch(elementwise(n * d)) }.w()?;
        drop(b);
        Ok(f32_tensor(out, &dev, (n, d)))
    })
}

/// `agg` over the rows of a * b (f32 [n, m] each), [m].
pub(crate) fn product_aggregate(
    a: &Tensor,
    b: &Tensor,
    agg: Aggregate,
) -> candle_core::Result<Tensor> {
    let (n, m) = a.dims2()?;
    if b.dims() != a.dims() {
        candle_core::bail!("product_aggregate: {:?} against {:?}", a.dims(), b.dims())
    }
    let chunks = n.div_ceil(CHUNK).max(1);
    let (n32, m32, per) = (n as u32, m as u32, CHUNK as u32);
    let code: i32 = match agg {
        Aggregate::Max => 0,
        Aggregate::Mean => 1,
        Aggregate::MeanAbs => 2,
    };
    let ptx = ptx().expect("fits() checked the kernels");
    let partial = with_views!(a, [b: f32], |dev, av, bv| {
        let func = dev.get_or_load_custom_func("product_aggregate", MODULE, ptx)?;
        // SAFETY: every chunk's m values are written by the kernel before they are read.
        let out = unsafe { dev.alloc::<f32>(chunks * m) }?;
        let mut bld = func.builder();
        bld.arg(&av).arg(&bv).arg(&out).arg(&n32).arg(&m32).arg(&per).arg(&code);
        // SAFETY: a and b hold n x m values (checked above), out chunks x m.
        unsafe { bld.launch(chunked(m, n)) }.w()?;
        drop(bld);
        candle_core::Result::Ok(f32_tensor(out, &dev, (chunks, m)))
    })?;
    match agg {
        Aggregate::Max => partial.max(0),
        _ => partial.sum(0),
    }
}
