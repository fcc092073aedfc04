//! [`crate::row_stats`] on the GPU: one block per row, an online (max, sum of exponentials,
//! first argmax) per thread merged across the block, f32 throughout. Compiled with NVRTC on
//! first use.

// FFI: a kernel launch over a contiguous input and a fresh output.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, DType, Layout, Shape};

const SOURCE: &str = concat!(
    kernel_prelude!(),
    r#"
// NVRTC has no math headers: -inf spelled out.
#define NEG_INF __int_as_float(0xff800000)

// (m, s, i) absorbs (m2, s2, i2): the larger maximum wins, the first index on a tie.
__device__ __forceinline__ void merge(float& m, float& s, int& i, float m2, float s2, int i2) {
  if (m2 == NEG_INF) return;
  if (m == NEG_INF) { m = m2; s = s2; i = i2; return; }
  if (m2 > m || (m2 == m && i2 < i)) {
    s = s * expf(m - m2) + s2;
    m = m2; i = i2;
  } else {
    s += s2 * expf(m2 - m);
  }
}

template <typename T>
__device__ void stats(const T* x, float* out, int v) {
  const T* xr = x + (size_t)blockIdx.x * v;
  float m = NEG_INF, s = 0.f;
  int at = 0x7fffffff;
  for (int k = threadIdx.x; k < v; k += blockDim.x) merge(m, s, at, ld(xr + k), 1.f, k);
  for (int off = 16; off > 0; off >>= 1) {
    float m2 = __shfl_down_sync(0xffffffffu, m, off);
    float s2 = __shfl_down_sync(0xffffffffu, s, off);
    int i2 = __shfl_down_sync(0xffffffffu, at, off);
    merge(m, s, at, m2, s2, i2);
  }
  __shared__ float ms[32], ss[32];
  __shared__ int is[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) { ms[warp] = m; ss[warp] = s; is[warp] = at; }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w) merge(m, s, at, ms[w], ss[w], is[w]);
    out[2 * blockIdx.x] = m == NEG_INF ? NEG_INF : m + logf(s);
    out[2 * blockIdx.x + 1] = m == NEG_INF ? 0.f : (float)at;
  }
}

extern "C" __global__ void row_stats_f32(const float* x, float* out, int v) { stats<float>(x, out, v); }
extern "C" __global__ void row_stats_bf16(const unsigned short* x, float* out, int v) {
  stats<unsigned short>(x, out, v);
}
"#
);

fn ptx() -> candle_core::Result<&'static str> {
    static PTX: OnceLock<Result<String, String>> = OnceLock::new();
    match PTX.get_or_init(|| {
        candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE)
            .map(|p| p.to_src())
            .map_err(|e| format!("{e:?}"))
    }) {
        Ok(p) => Ok(p),
        Err(e) => candle_core::bail!("the row statistics kernel did not compile: {e}"),
    }
}

/// [N, V] logits (f32 or bf16, contiguous) -> [N, 2] f32 of (lse, argmax).
pub(crate) fn forward(
    storage: &CudaStorage,
    layout: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (n, v) = layout.shape().dims2()?;
    let Some((o1, o2)) = layout.contiguous_offsets() else {
        candle_core::bail!("row statistics: non-contiguous logits")
    };
    let dev = storage.device().clone();
    let ptx = ptx()?;
    let out = dev.alloc_zeros::<f32>(2 * n)?;
    let cfg = LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (512, 1, 1),
        shared_mem_bytes: 0,
    };
    let v32 = v as i32;
    macro_rules! launch {
        ($t:ty, $name:expr) => {{
            let func = dev.get_or_load_custom_func($name, "eigenprune_row_stats", ptx)?;
            let x = storage.as_cuda_slice::<$t>()?.slice(o1..o2);
            let mut builder = func.builder();
            builder.arg(&x);
            builder.arg(&out);
            builder.arg(&v32);
            // SAFETY: x holds n rows of v contiguous values, out 2 n floats.
            unsafe { builder.launch(cfg) }.w()?;
        }};
    }
    match storage.dtype() {
        DType::F32 => launch!(f32, "row_stats_f32"),
        DType::BF16 => launch!(half::bf16, "row_stats_bf16"),
        d => candle_core::bail!("row statistics on the GPU of {d:?} logits"),
    }
    Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((n, 2))))
}
