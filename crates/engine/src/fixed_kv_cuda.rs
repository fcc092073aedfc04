//! The fixed cache's GPU side: the write of a step's keys or values at each row's position
//! (read from device memory, so a captured graph writes where the current step says), and
//! the in-place upload of a step's inputs into their fixed buffer. NVRTC; unsafe (a launch).

// FFI: a kernel launch over live, contiguous device buffers.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, DType, Layout, Storage, Tensor};

use crate::decode_attention::{offsets, DecodeAttention, Dims};

const MODULE: &str = "eigenprune_fixed_kv";

const SOURCE: &str = concat!(
    kernel_prelude!(),
    reduction_prelude!(),
    r#"
// cache [rows * heads, cap, d], src [rows * heads, d]; element i of src goes to row (i / d) / h
// at that row's position.
template <typename T>
__device__ void kv_write(T* cache, const T* src, const unsigned int* pos, int h, int cap, int d,
    int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int row_head = i / d, k = i - row_head * d;
  unsigned int p = pos[row_head / h];
  if (p >= (unsigned int)cap) return;
  cache[((size_t)row_head * cap + p) * d + k] = src[i];
}
extern "C" __global__ void kv_write_b32(unsigned int* cache, const unsigned int* src,
    const unsigned int* pos, int h, int cap, int d, int n) {
  kv_write<unsigned int>(cache, src, pos, h, cap, d, n);
}
extern "C" __global__ void kv_write_b16(unsigned short* cache, const unsigned short* src,
    const unsigned int* pos, int h, int cap, int d, int n) {
  kv_write<unsigned short>(cache, src, pos, h, cap, d, n);
}

__device__ float block_max(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float m = shared[0];
  for (int w = 1; w < warps; ++w) m = fmaxf(m, shared[w]);
  return m;
}

// One decoding step's attention, a block per (row b, query head h): the query q [B, H, D]
// against keys 0..pos[b] (the last `window` of them when window > 0) of the cache [B, Hkv, cap,
// D] of kv head h / (H / Hkv); scores, softmax and the weighted values in f32, from lengths
// in device memory (no mask, no work past a row's length).
template <typename T>
__device__ void decode_attention(const T* q, const T* kc, const T* vc, const unsigned int* pos,
    T* out, int H, int Hkv, int cap, int D, float scale, int window) {
  extern __shared__ float smem[];
  float* qs = smem;
  float* sc = smem + D;
  float* red = sc + cap;
  const int bh = blockIdx.x, b = bh / H, h = bh - b * H, kvh = h / (H / Hkv);
  const int p = (int)pos[b];
  const int lo = window > 0 ? max(0, p - window + 1) : 0;
  const T* qr = q + (size_t)bh * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) qs[d] = ld(qr + d) * scale;
  __syncthreads();
  const size_t base = (size_t)(b * Hkv + kvh) * cap * D;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  float mx = __int_as_float(0xff800000);
  for (int j = lo + warp; j <= p; j += warps) {
    const T* kr = kc + base + (size_t)j * D;
    float acc = 0.f;
    for (int d = lane; d < D; d += 32) acc += qs[d] * ld(kr + d);
    acc = warp_sum(acc);
    if (lane == 0) sc[j] = acc;
    mx = fmaxf(mx, acc);
  }
  mx = block_max(mx, red);
  float sum = 0.f;
  for (int j = lo + threadIdx.x; j <= p; j += blockDim.x) {
    const float e = expf(sc[j] - mx);
    sc[j] = e;
    sum += e;
  }
  sum = block_sum(sum, red);
  const float inv = 1.f / sum;
  T* o = out + (size_t)bh * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.f;
    for (int j = lo; j <= p; ++j) acc += sc[j] * ld(vc + base + (size_t)j * D + d);
    st(o + d, acc * inv);
  }
}
extern "C" __global__ void decode_attention_f32(const float* q, const float* kc, const float* vc,
    const unsigned int* pos, float* out, int H, int Hkv, int cap, int D, float scale, int window) {
  decode_attention<float>(q, kc, vc, pos, out, H, Hkv, cap, D, scale, window);
}
extern "C" __global__ void decode_attention_bf16(const unsigned short* q,
    const unsigned short* kc, const unsigned short* vc, const unsigned int* pos,
    unsigned short* out, int H, int Hkv, int cap, int D, float scale, int window) {
  decode_attention<unsigned short>(q, kc, vc, pos, out, H, Hkv, cap, D, scale, window);
}
"#
);

/// Threads of a decode-attention block (4 warps).
const ATTENTION_THREADS: u32 = 128;

/// Shared memory of a decode-attention block: the query, a score per cached position, the
/// reduction's slots.
fn attention_shared_bytes(capacity: usize, head_dim: usize) -> usize {
    4 * (head_dim + capacity + 32)
}

/// Whether [`attention`] serves a cache of `capacity` positions of `head_dim` in `dtype` on
/// `device` (f32 or bf16, its scores within a block's 48 KiB of shared memory).
pub(crate) fn attention_available(
    device: &candle_core::Device,
    dtype: DType,
    capacity: usize,
    head_dim: usize,
) -> bool {
    device.is_cuda()
        && matches!(dtype, DType::F32 | DType::BF16)
        && attention_shared_bytes(capacity, head_dim) <= 48 * 1024
        && ptx().is_ok()
}

/// The CUDA form of [`DecodeAttention`]: a block per (row, query head), the lengths read on
/// the device.
pub(crate) fn attention(
    op: &DecodeAttention,
    qs: &CudaStorage,
    ql: &Layout,
    ks: &CudaStorage,
    kl: &Layout,
    vs: &CudaStorage,
    vl: &Layout,
) -> candle_core::Result<(CudaStorage, candle_core::Shape)> {
    let Dims { b, h, hkv, cap, d } = Dims::of(ql, kl, vl)?;
    let ((q0, q1), (k0, k1), (v0, v1)) = (offsets(ql)?, offsets(kl)?, offsets(vl)?);
    let (p_st, p_l) = op.positions.storage_and_layout();
    let (p0, p1) = offsets(p_l)?;
    let pos = cuda(&p_st)?.as_cuda_slice::<u32>()?.slice(p0..p1);
    let dev = qs.device().clone();
    let cfg = LaunchConfig {
        grid_dim: ((b * h) as u32, 1, 1),
        block_dim: (ATTENTION_THREADS, 1, 1),
        shared_mem_bytes: attention_shared_bytes(cap, d) as u32,
    };
    let ints = [h as i32, hkv as i32, cap as i32, d as i32];
    let window = op.window as i32;
    macro_rules! launch {
        ($t:ty, $name:expr) => {{
            let func = dev.get_or_load_custom_func($name, MODULE, ptx()?)?;
            let q = qs.as_cuda_slice::<$t>()?.slice(q0..q1);
            let k = ks.as_cuda_slice::<$t>()?.slice(k0..k1);
            let v = vs.as_cuda_slice::<$t>()?.slice(v0..v1);
            // SAFETY: every element is written by the kernel before it is read.
            let out = unsafe { dev.alloc::<$t>(b * h * d) }?;
            let mut bld = func.builder();
            bld.arg(&q).arg(&k).arg(&v).arg(&pos).arg(&out);
            for x in &ints {
                bld.arg(x);
            }
            bld.arg(&op.scale).arg(&window);
            // SAFETY: q [b, h, d], k and v [b, hkv, cap, d] contiguous, pos [b] u32 below
            // cap (the host checks), out [b, h, d]; shared memory as the launch sets it.
            unsafe { bld.launch(cfg) }.w()?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    let out = match qs.dtype() {
        DType::F32 => launch!(f32, "decode_attention_f32"),
        DType::BF16 => launch!(half::bf16, "decode_attention_bf16"),
        other => candle_core::bail!("decode attention: {other:?}"),
    };
    Ok((out, ql.shape().clone()))
}

fn ptx() -> candle_core::Result<&'static str> {
    static PTX: OnceLock<Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE)
            .map(|p| p.to_src())
            .map_err(|e| format!("{e:?}"))
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(format!("the fixed-cache kernel did not compile: {e}")))
}

fn cuda(s: &Storage) -> candle_core::Result<&CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => candle_core::bail!("fixed kv: a tensor off the GPU"),
    }
}

/// `cache[row, head, positions[row], :] = new[row, head, 0, :]`; `dims` = [heads, capacity,
/// head dim]. Positions past the capacity write nothing (the host checks them first).
pub(crate) fn write(
    cache: &mut CudaStorage,
    cl: &Layout,
    new: &CudaStorage,
    nl: &Layout,
    positions: &Tensor,
    dims: [usize; 3],
) -> candle_core::Result<()> {
    let (Some((c0, c1)), Some((n0, n1))) = (cl.contiguous_offsets(), nl.contiguous_offsets())
    else {
        candle_core::bail!("fixed kv write: a non-contiguous operand")
    };
    let (p_st, p_l) = positions.storage_and_layout();
    let Some((p0, p1)) = p_l.contiguous_offsets() else {
        candle_core::bail!("fixed kv write: non-contiguous positions")
    };
    let pos = cuda(&p_st)?.as_cuda_slice::<u32>()?.slice(p0..p1);
    let dev = new.device().clone();
    let n = n1 - n0;
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let ints = [dims[0] as i32, dims[1] as i32, dims[2] as i32, n as i32];
    macro_rules! launch {
        ($t:ty, $name:expr) => {{
            let func = dev.get_or_load_custom_func($name, MODULE, ptx()?)?;
            let src = new.as_cuda_slice::<$t>()?.slice(n0..n1);
            let mut dst = cache.as_cuda_slice_mut::<$t>()?.slice_mut(c0..c1);
            let mut b = func.builder();
            b.arg(&mut dst).arg(&src).arg(&pos);
            for v in &ints {
                b.arg(v);
            }
            // SAFETY: dst holds rows x heads x capacity x d values, src rows x heads x d, pos
            // rows u32; every index the kernel forms is inside them.
            unsafe { b.launch(cfg) }.w()?;
        }};
    }
    match new.dtype() {
        DType::F32 => launch!(f32, "kv_write_b32"),
        DType::BF16 => launch!(half::bf16, "kv_write_b16"),
        DType::F16 => launch!(half::f16, "kv_write_b16"),
        other => candle_core::bail!("fixed kv write: {other:?}"),
    }
    Ok(())
}

/// Copies `data` into the u32 buffer `s` in place (its address stays the one a captured graph
/// reads).
pub(crate) fn upload(s: &mut CudaStorage, l: &Layout, data: &[u32]) -> candle_core::Result<()> {
    let Some((o0, o1)) = l.contiguous_offsets() else {
        candle_core::bail!("upload: a non-contiguous buffer")
    };
    if o1 - o0 != data.len() {
        candle_core::bail!("upload: {} values for a buffer of {}", data.len(), o1 - o0);
    }
    let dev = s.device().clone();
    let mut dst = s.as_cuda_slice_mut::<u32>()?.slice_mut(o0..o1);
    dev.memcpy_htod(data, &mut dst)
}
