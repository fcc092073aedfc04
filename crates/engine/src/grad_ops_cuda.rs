//! [`crate::grad_ops`]' backward formulas on the GPU, one kernel each instead of six to ten
//! elementwise ones: softmax (a warp per row), RMSNorm and LayerNorm (a block per row), and the
//! activations and their derivative (a 16-byte word per thread); Phi's partial rotary
//! embedding; a linear map's bias add ([`BiasAdd`]) and the attention heads' split and merge
//! ([`SwapAxes12`]). f32
//! arithmetic whatever the storage (f32 or bf16).
//! Compiled with NVRTC on first use; where that fails, or for other dtypes, the callers keep
//! the composite formula.

// FFI: kernel launches over contiguous inputs and fresh outputs.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::op::BackpropOp;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Storage, Tensor,
};

use crate::config::Activation;

const SOURCE: &str = concat!(
    kernel_prelude!(),
    reduction_prelude!(),
    r#"
// dx = scale * y * (g - sum(g * y)), a warp per row of n.
template <typename T>
__device__ void softmax_bwd(const T* y, const T* g, T* dx, int rows, int n, float scale) {
  const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const size_t at = (size_t)row * n;
  float dot = 0.f;
  for (int k = lane; k < n; k += 32) dot += ld(y + at + k) * ld(g + at + k);
  dot = warp_sum(dot);
  for (int k = lane; k < n; k += 32) {
    const float yk = ld(y + at + k);
    st(dx + at + k, scale * yk * (ld(g + at + k) - dot));
  }
}

// A block per row of d; h = g * w. rms: dx = r (h - x r^2 mean(h x)), r = 1/sqrt(mean(x^2) + eps).
// layer: c = x - mean(x), dx = r (h - mean(h) - c r^2 mean(h c)), r = 1/sqrt(mean(c^2) + eps).
template <typename T>
__device__ void norm_bwd(const T* x, const T* w, const T* g, T* dx, int d, float eps, int layer) {
  __shared__ float shared[32];
  const size_t at = (size_t)blockIdx.x * d;
  float mean = 0.f;
  if (layer) {
    float s = 0.f;
    for (int k = threadIdx.x; k < d; k += blockDim.x) s += ld(x + at + k);
    mean = block_sum(s, shared) / d;
  }
  float scc = 0.f, shc = 0.f, sh = 0.f;
  for (int k = threadIdx.x; k < d; k += blockDim.x) {
    const float c = ld(x + at + k) - mean, h = ld(g + at + k) * ld(w + k);
    scc += c * c; shc += h * c; sh += h;
  }
  scc = block_sum(scc, shared);
  shc = block_sum(shc, shared);
  sh = layer ? block_sum(sh, shared) : 0.f;
  const float r = rsqrtf(scc / d + eps);
  const float proj = r * r * shc / d, hmean = sh / d;
  for (int k = threadIdx.x; k < d; k += blockDim.x) {
    const float c = ld(x + at + k) - mean, h = ld(g + at + k) * ld(w + k);
    st(dx + at + k, r * (h - hmean - c * proj));
  }
}

// act(x) and act'(x). act: 0 GELU (tanh), 1 GELU (erf), 2 SiLU.
__device__ __forceinline__ float act_value(float v, int act) {
  if (act == 0) {
    const float k = 0.7978845608028654f, a = 0.044715f;
    return 0.5f * v * (1.f + tanhf(k * (v + a * v * v * v)));
  }
  if (act == 1) return 0.5f * v * (1.f + erff(v * 0.7071067811865476f));
  return v / (1.f + expf(-v));
}
__device__ __forceinline__ float act_slope(float v, int act) {
  if (act == 0) {
    const float k = 0.7978845608028654f, a = 0.044715f;
    const float t = tanhf(k * (v + a * v * v * v));
    return 0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * k * (1.f + 3.f * a * v * v);
  }
  if (act == 1) {
    return 0.5f * (1.f + erff(v * 0.7071067811865476f)) + v * 0.3989422804014327f * expf(-0.5f * v * v);
  }
  const float s = 1.f / (1.f + expf(-v));
  return s * (1.f + v * (1.f - s));
}

// dx = g * act'(x), a value per thread.
template <typename T>
__device__ void act_bwd(const T* x, const T* g, T* dx, size_t n, int act) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    st(dx + i, ld(g + i) * act_slope(ld(x + i), act));
  }
}

// out = act(x), or with `backward` out = g * act'(x): P values of T in each 16-byte word, a
// word per thread (candle's GELU kernel reads and writes a value per thread).
template <typename T, int P>
__device__ void act_words(const uint4* x, const uint4* g, uint4* out, unsigned words, int act,
                          int backward) {
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < words; i += gridDim.x * blockDim.x) {
    const uint4 a = x[i];
    const uint4 b = backward ? g[i] : a;
    uint4 o;
    const T* pa = reinterpret_cast<const T*>(&a);
    const T* pb = reinterpret_cast<const T*>(&b);
    T* po = reinterpret_cast<T*>(&o);
#pragma unroll
    for (int k = 0; k < P; ++k) {
      const float v = ld(pa + k);
      st(po + k, backward ? ld(pb + k) * act_slope(v, act) : act_value(v, act));
    }
    out[i] = o;
  }
}
#define ACTW_ARGS (const uint4* x, const uint4* g, uint4* out, unsigned words, int act, int backward)
extern "C" __global__ void act_w16_f32 ACTW_ARGS { act_words<float, 4>(x, g, out, words, act, backward); }
extern "C" __global__ void act_w16_bf16 ACTW_ARGS {
  act_words<unsigned short, 8>(x, g, out, words, act, backward);
}

// Rotary embedding ("rotate half") of the first `rot` values of each row of d in x [B, H, T, d]
// with cos, sin [B, T, rot/2]; the other values copied (Phi's partial rotary in one kernel,
// not a narrow, a copy, candle's rope and a cat). A thread per value.
template <typename T>
__device__ void rope_first(const T* x, const T* cos, const T* sin, T* y, unsigned h, unsigned t,
                           unsigned d, unsigned rot, unsigned n) {
  const unsigned half = rot / 2;
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const unsigned j = i % d;
    if (j >= rot) {
      y[i] = x[i];
      continue;
    }
    const unsigned r = i / d, ti = r % t, bi = r / (t * h);
    const unsigned at = (bi * t + ti) * half + (j < half ? j : j - half);
    const float c = ld(cos + at), s = ld(sin + at), v = ld(x + i);
    st(y + i, j < half ? v * c - ld(x + i + half) * s : v * c + ld(x + i - half) * s);
  }
}
#define ROPE_ARGS(T) (const T* x, const T* cos, const T* sin, T* y, unsigned h, unsigned t, \
                      unsigned d, unsigned rot, unsigned n)

// out = y + b per row of n: a thread per column, the rows strided over blockIdx.y.
template <typename T>
__device__ void bias_add(const T* y, const T* b, T* out, int rows, int n) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= n) return;
  const float bc = ld(b + c);
  for (int r = blockIdx.y; r < rows; r += gridDim.y) {
    const size_t at = (size_t)r * n + c;
    st(out + at, ld(y + at) + bc);
  }
}

#define BOTH(name, args, call) \
  extern "C" __global__ void name##_f32 args(float) { call; } \
  extern "C" __global__ void name##_bf16 args(unsigned short) { call; }
#define SOFTMAX_ARGS(T) (const T* y, const T* g, T* dx, int rows, int n, float scale)
#define NORM_ARGS(T) (const T* x, const T* w, const T* g, T* dx, int d, float eps, int layer)
#define ACT_ARGS(T) (const T* x, const T* g, T* dx, size_t n, int act)
BOTH(softmax_bwd, SOFTMAX_ARGS, softmax_bwd(y, g, dx, rows, n, scale))
BOTH(norm_bwd, NORM_ARGS, norm_bwd(x, w, g, dx, d, eps, layer))
BOTH(act_bwd, ACT_ARGS, act_bwd(x, g, dx, n, act))
BOTH(rope_first, ROPE_ARGS, rope_first(x, cos, sin, y, h, t, d, rot, n))
#define BIAS_ARGS(T) (const T* y, const T* b, T* out, int rows, int n)
BOTH(bias_add, BIAS_ARGS, bias_add(y, b, out, rows, n))

// out = a + b (b's word i % b_words: a bias row when b_words is a row's words, the same shape
// when it is all of them), P values of T in each 16-byte word, a word per thread.
template <typename T, int P>
__device__ void add_words(const uint4* a, const uint4* b, uint4* out, unsigned words,
                          unsigned b_words) {
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < words; i += gridDim.x * blockDim.x) {
    const uint4 x = a[i], y = b[i % b_words];
    uint4 o;
    const T* px = reinterpret_cast<const T*>(&x);
    const T* py = reinterpret_cast<const T*>(&y);
    T* po = reinterpret_cast<T*>(&o);
#pragma unroll
    for (int k = 0; k < P; ++k) st(po + k, ld(px + k) + ld(py + k));
    out[i] = o;
  }
}
#define ADD_ARGS (const uint4* a, const uint4* b, uint4* out, unsigned words, unsigned b_words)
extern "C" __global__ void add_w16_f32 ADD_ARGS { add_words<float, 4>(a, b, out, words, b_words); }
extern "C" __global__ void add_w16_bf16 ADD_ARGS {
  add_words<unsigned short, 8>(a, b, out, words, b_words);
}

// y [B, C, A, Dw] = x [B, A, C, Dw] in words W (a row of D values cut into Dw words): a thread
// per word of y, 32-bit index arithmetic (candle's strided copy divides in 64 bits).
template <typename W>
__device__ void swap12(const W* x, W* y, unsigned a, unsigned c, unsigned dw, unsigned n) {
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const unsigned d = i % dw, r = i / dw, ai = r % a, r2 = r / a, ci = r2 % c, bi = r2 / c;
    y[i] = x[((bi * a + ai) * c + ci) * dw + d];
  }
}
#define SWAP_ARGS(W) (const W* x, W* y, unsigned a, unsigned c, unsigned dw, unsigned n)
extern "C" __global__ void swap12_w16 SWAP_ARGS(uint4) { swap12(x, y, a, c, dw, n); }
extern "C" __global__ void swap12_w4 SWAP_ARGS(unsigned int) { swap12(x, y, a, c, dw, n); }
extern "C" __global__ void swap12_w2 SWAP_ARGS(unsigned short) { swap12(x, y, a, c, dw, n); }
"#
);

const MODULE: &str = "eigenprune_grad_ops";

fn ptx() -> Option<&'static str> {
    static PTX: OnceLock<Option<String>> = OnceLock::new();
    PTX.get_or_init(|| {
        match candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE) {
            Ok(p) => Some(p.to_src()),
            Err(e) => {
                eprintln!("eigenprune: the backward kernels did not compile ({e:?}); using composite formulas");
                None
            }
        }
    })
    .as_deref()
}

/// Whether the kernels compiled.
pub(crate) fn compiled() -> bool {
    ptx().is_some()
}

/// Whether the kernels run for `dtype`.
pub(crate) fn available(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::BF16) && ptx().is_some()
}

/// The CUDA storages of `tensors`, each made contiguous, when all are CUDA tensors of one
/// dtype the kernels read (f32 or bf16) and the kernels compiled.
fn inputs<const N: usize>(tensors: [&Tensor; N]) -> candle_core::Result<Option<[Tensor; N]>> {
    let dtype = tensors[0].dtype();
    if !available(dtype)
        || tensors
            .iter()
            .any(|t| !t.device().is_cuda() || t.dtype() != dtype)
    {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(N);
    for t in tensors {
        out.push(t.contiguous()?);
    }
    Ok(out.try_into().ok())
}

/// Runs `launch` with the kernel `$kernel` for `$dtype`, each input's device slice (offset
/// applied) and a fresh output shaped like the first input, and wraps the output as a tensor.
macro_rules! with_slices {
    ($kernel:expr, $dtype:expr, $ins:expr, |$func:ident, $out:ident, $s:ident| $launch:block) => {{
        let ins = $ins;
        let shape = ins[0].shape().clone();
        let n = shape.elem_count();
        macro_rules! go {
            ($t:ty) => {{
                let guards: Vec<_> = ins.iter().map(|t| t.storage_and_layout()).collect();
                let mut $s = Vec::new();
                let mut dev = None;
                for (storage, layout) in &guards {
                    let Storage::Cuda(c) = &**storage else {
                        candle_core::bail!("a CUDA kernel given a non-CUDA tensor")
                    };
                    let (o1, o2) = layout
                        .contiguous_offsets()
                        .ok_or_else(|| candle_core::Error::Msg("non-contiguous input".into()))?;
                    dev = Some(c.device().clone());
                    $s.push(c.as_cuda_slice::<$t>()?.slice(o1..o2));
                }
                let dev = dev.expect("at least one input");
                let Some(ptx) = ptx() else {
                    candle_core::bail!("the backward kernels did not compile")
                };
                let $func = dev.get_or_load_custom_func(&name($kernel, $dtype), MODULE, ptx)?;
                // SAFETY: every element is written by the kernel before it is read.
                let $out = unsafe { dev.alloc::<$t>(n) }?;
                $launch;
                drop($s);
                Storage::Cuda(CudaStorage::wrap_cuda_slice($out, dev))
            }};
        }
        let storage = match $dtype {
            DType::F32 => go!(f32),
            _ => go!(half::bf16),
        };
        Ok(Some(Tensor::from_storage(
            storage,
            shape,
            BackpropOp::none(),
            false,
        )))
    }};
}

fn name(kernel: &str, dtype: DType) -> String {
    format!(
        "{kernel}_{}",
        if dtype == DType::F32 { "f32" } else { "bf16" }
    )
}

/// `scale * y * (g - sum(g * y))` over the last dimension; None when the kernels cannot run.
pub(crate) fn softmax_bwd(
    y: &Tensor,
    g: &Tensor,
    scale: f64,
) -> candle_core::Result<Option<Tensor>> {
    let Some(ins) = inputs([y, g])? else {
        return Ok(None);
    };
    let dtype = y.dtype();
    let n = y.dim(candle_core::D::Minus1)?;
    let rows = y.elem_count() / n.max(1);
    let (rows32, n32, scale32) = (rows as i32, n as i32, scale as f32);
    with_slices!("softmax_bwd", dtype, ins, |func, out, s| {
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(8) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = func.builder();
        b.arg(&s[0])
            .arg(&s[1])
            .arg(&out)
            .arg(&rows32)
            .arg(&n32)
            .arg(&scale32);
        // SAFETY: y, g and out hold rows x n contiguous values.
        unsafe { b.launch(cfg) }.w()?;
    })
}

/// The norms' input gradient (see [`crate::grad_ops::rms_norm`] and `layer_norm`).
pub(crate) fn norm_bwd(
    x: &Tensor,
    weight: &Tensor,
    g: &Tensor,
    eps: f64,
    layer: bool,
) -> candle_core::Result<Option<Tensor>> {
    let Some(ins) = inputs([x, weight, g])? else {
        return Ok(None);
    };
    let dtype = x.dtype();
    let d = x.dim(candle_core::D::Minus1)?;
    let rows = x.elem_count() / d.max(1);
    let (d32, eps32, layer32) = (d as i32, eps as f32, layer as i32);
    with_slices!("norm_bwd", dtype, ins, |func, out, s| {
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (if d >= 512 { 256 } else { 128 }, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = func.builder();
        b.arg(&s[0])
            .arg(&s[1])
            .arg(&s[2])
            .arg(&out)
            .arg(&d32)
            .arg(&eps32)
            .arg(&layer32);
        // SAFETY: x, g and out hold rows x d contiguous values, the weight d.
        unsafe { b.launch(cfg) }.w()?;
    })
}

fn act_code(act: Activation) -> i32 {
    match act {
        Activation::GeluTanh => 0,
        Activation::GeluErf => 1,
        Activation::Silu => 2,
    }
}

/// Whether contiguous `ins` (one dtype) start on 16-byte words and hold whole words.
fn in_words(ins: &[Tensor]) -> bool {
    let dtype = ins[0].dtype();
    ins.iter()
        .all(|t| whole_words(dtype, &[t.elem_count(), t.layout().start_offset()]))
        && ins[0].elem_count() * dtype.size_in_bytes() / 16 < u32::MAX as usize
}

/// `act(x)`, a 16-byte word per thread; None where it cannot run
/// (another dtype or device, or not whole words).
pub(crate) fn activation(x: &Tensor, act: Activation) -> candle_core::Result<Option<Tensor>> {
    let Some(ins) = inputs([x])? else {
        return Ok(None);
    };
    if !in_words(&ins) {
        return Ok(None);
    }
    let [x] = ins;
    act_words(x.clone(), x, act, false)
}

/// The `act_w16` kernel over contiguous, word-aligned x and g of whole words: act(x), or with
/// `backward` g * act'(x) (the forward passes x as g, unread).
fn act_words(
    x: Tensor,
    g: Tensor,
    act: Activation,
    backward: bool,
) -> candle_core::Result<Option<Tensor>> {
    let dtype = x.dtype();
    let words = (x.elem_count() * dtype.size_in_bytes() / 16) as u32;
    let (act32, backward32) = (act_code(act), backward as i32);
    with_slices!("act_w16", dtype, [x, g], |func, out, s| {
        let mut b = func.builder();
        b.arg(&s[0])
            .arg(&s[1])
            .arg(&out)
            .arg(&words)
            .arg(&act32)
            .arg(&backward32);
        // SAFETY: x, g and out hold `words` contiguous 16-byte words at aligned starts.
        unsafe { b.launch(words_launch(words as usize)) }.w()?;
    })
}

/// `g * act'(x)`, elementwise (a 16-byte word per thread where the values fill words).
pub(crate) fn activation_bwd(
    x: &Tensor,
    g: &Tensor,
    act: Activation,
) -> candle_core::Result<Option<Tensor>> {
    let Some(ins) = inputs([x, g])? else {
        return Ok(None);
    };
    let dtype = x.dtype();
    let n = x.elem_count();
    let act32 = act_code(act);
    if in_words(&ins) {
        let [x, g] = ins;
        return act_words(x, g, act, true);
    }
    with_slices!("act_bwd", dtype, ins, |func, out, s| {
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(256).min(65_535) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let n64 = n as u64;
        let mut b = func.builder();
        b.arg(&s[0]).arg(&s[1]).arg(&out).arg(&n64).arg(&act32);
        // SAFETY: x, g and out hold n contiguous values.
        unsafe { b.launch(cfg) }.w()?;
    })
}

/// Rotary embedding of the first `rot` values of each head of x [B, H, T, D] with (cos, sin)
/// [B, T, rot/2], the rest copied, in one kernel; None where it cannot run.
pub(crate) fn rotate_first(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    rot: usize,
) -> candle_core::Result<Option<Tensor>> {
    let Some(ins) = inputs([x, cos, sin])? else {
        return Ok(None);
    };
    let (b, h, t, d) = ins[0].dims4()?;
    let fits = rot.is_multiple_of(2)
        && rot <= d
        && ins[1].dims() == [b, t, rot / 2]
        && ins[2].dims() == [b, t, rot / 2]
        && x.elem_count() < u32::MAX as usize;
    if !fits {
        return Ok(None);
    }
    let dtype = x.dtype();
    let n = x.elem_count() as u32;
    let (h32, t32, d32, rot32) = (h as u32, t as u32, d as u32, rot as u32);
    with_slices!("rope_first", dtype, ins, |func, out, s| {
        let cfg = LaunchConfig {
            grid_dim: ((n as usize).div_ceil(256).min(1 << 20) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut bld = func.builder();
        bld.arg(&s[0])
            .arg(&s[1])
            .arg(&s[2])
            .arg(&out)
            .arg(&h32)
            .arg(&t32)
            .arg(&d32)
            .arg(&rot32)
            .arg(&n);
        // SAFETY: x and out hold B x H x T x D contiguous values, cos and sin B x T x rot/2.
        unsafe { bld.launch(cfg) }.w()?;
    })
}

/// y [rows, n] + bias [n] in one kernel (candle's broadcast add indexes every element through
/// its strides, at a third of the bandwidth); as a node, y's gradient is the output's and a
/// tracked bias gets the column sums.
struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "bias-add"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("bias-add runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        y: &CudaStorage,
        ly: &Layout,
        b: &CudaStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (Some((y0, y1)), Some((b0, b1))) = (ly.contiguous_offsets(), lb.contiguous_offsets())
        else {
            candle_core::bail!("bias-add needs contiguous operands")
        };
        let Some(ptx) = ptx() else {
            candle_core::bail!("the kernels did not compile")
        };
        let (n, total) = (b1 - b0, y1 - y0);
        let rows = total / n.max(1);
        let dev = y.device().clone();
        // Whole 16-byte words per row (and word-aligned starts): a word per thread.
        let per_word = 16 / y.dtype().size_in_bytes();
        let words = whole_words(y.dtype(), &[n, y0, b0]);
        let kernel = if words { "add_w16" } else { "bias_add" };
        let func = dev.get_or_load_custom_func(&name(kernel, y.dtype()), MODULE, ptx)?;
        let cfg = if words {
            words_launch(total / per_word)
        } else {
            LaunchConfig {
                grid_dim: (n.div_ceil(256) as u32, rows.clamp(1, 1024) as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            }
        };
        let (rows32, n32) = (rows as i32, n as i32);
        let (total_words, row_words) = ((total / per_word) as u32, (n / per_word) as u32);
        macro_rules! go {
            ($t:ty) => {{
                let ys = y.as_cuda_slice::<$t>()?.slice(y0..y1);
                let bs = b.as_cuda_slice::<$t>()?.slice(b0..b1);
                // SAFETY: every element is written by the kernel before it is read.
                let out = unsafe { dev.alloc::<$t>(total) }?;
                let mut bld = func.builder();
                bld.arg(&ys).arg(&bs).arg(&out);
                if words {
                    bld.arg(&total_words).arg(&row_words);
                } else {
                    bld.arg(&rows32).arg(&n32);
                }
                // SAFETY: y and out hold rows x n contiguous values, the bias n; in words,
                // their starts are word-aligned (allocations are 256-byte aligned).
                unsafe { bld.launch(cfg) }.w()?;
                drop(bld);
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let storage = match y.dtype() {
            DType::F32 => go!(f32),
            DType::BF16 => go!(half::bf16),
            other => candle_core::bail!("bias-add does not read {other:?}"),
        };
        Ok((storage, ly.shape().clone()))
    }

    fn bwd(
        &self,
        _: &Tensor,
        bias: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let bias_grad = bias.track_op().then(|| grad.sum(0)).transpose()?;
        Ok((Some(grad.clone()), bias_grad))
    }
}

/// Whether element counts and offsets of `dtype` all fall on 16-byte words.
fn whole_words(dtype: DType, counts: &[usize]) -> bool {
    let per_word = 16 / dtype.size_in_bytes();
    counts.iter().all(|v| v % per_word == 0)
}

/// A grid of 256-thread blocks over `words` 16-byte words (grid-stride beyond 65,535 blocks).
fn words_launch(words: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (words.div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// a + b of one shape, a 16-byte word (8 bf16 or 4 f32) per thread: candle's add moves 2 or 4
/// bytes a thread through both operands' strides, at about a third of the bandwidth (28.7 us
/// for a [2048, 2560] bf16 add on an H200). None unless both are contiguous CUDA tensors of
/// one dtype the kernels read, with word-aligned starts and a whole number of words.
pub(crate) fn add(a: &Tensor, b: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let dtype = a.dtype();
    if !a.device().is_cuda()
        || !available(dtype)
        || b.dtype() != dtype
        || a.shape() != b.shape()
        || !a.is_contiguous()
        || !b.is_contiguous()
    {
        return Ok(None);
    }
    let (n, a0, b0) = (
        a.elem_count(),
        a.layout().start_offset(),
        b.layout().start_offset(),
    );
    if !whole_words(dtype, &[n, a0, b0]) {
        return Ok(None);
    }
    let words = (n * dtype.size_in_bytes() / 16) as u32;
    with_slices!("add_w16", dtype, [a.clone(), b.clone()], |func, out, s| {
        let mut bld = func.builder();
        bld.arg(&s[0]).arg(&s[1]).arg(&out).arg(&words).arg(&words);
        // SAFETY: a, b and out hold `words` contiguous 16-byte words at aligned starts.
        unsafe { bld.launch(words_launch(words as usize)) }.w()?;
    })
}

/// y [rows, n] + bias [n] through [`BiasAdd`]; None unless both are contiguous CUDA tensors of
/// one dtype the kernels read.
pub(crate) fn bias_add(y: &Tensor, bias: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let fits = y.device().is_cuda()
        && available(y.dtype())
        && bias.dtype() == y.dtype()
        && y.rank() == 2
        && bias.dims() == [y.dim(1)?]
        && y.is_contiguous()
        && bias.is_contiguous();
    if !fits {
        return Ok(None);
    }
    y.apply_op2(bias, BiasAdd).map(Some)
}

/// x [B, A, C, D] -> [B, C, A, D], contiguous, in one kernel that moves 16-, 4- or 2-byte words
/// (the widest that divides a row of D and the start); as a node, its backward is the same
/// swap of the gradient.
struct SwapAxes12;

impl CustomOp1 for SwapAxes12 {
    fn name(&self) -> &'static str {
        "swap-axes-1-2"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("swap-axes-1-2 runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((o0, o1)) = l.contiguous_offsets() else {
            candle_core::bail!("swap-axes-1-2 needs a contiguous input")
        };
        let Some(ptx) = ptx() else {
            candle_core::bail!("the kernels did not compile")
        };
        let (b, a, c, d) = l.shape().dims4()?;
        let size = x.dtype().size_in_bytes();
        let word = [16, 4, 2]
            .into_iter()
            .find(|&w| (d * size).is_multiple_of(w) && (o0 * size).is_multiple_of(w))
            .ok_or_else(|| candle_core::Error::Msg("swap-axes-1-2: odd row size".into()))?;
        let dw = d * size / word;
        let words = (o1 - o0) * size / word;
        let dev = x.device().clone();
        let func = dev.get_or_load_custom_func(&format!("swap12_w{word}"), MODULE, ptx)?;
        let cfg = LaunchConfig {
            grid_dim: (words.div_ceil(256).min(1 << 20) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (a32, c32, dw32, n32) = (a as u32, c as u32, dw as u32, words as u32);
        macro_rules! go {
            ($t:ty) => {{
                let xs = x.as_cuda_slice::<$t>()?.slice(o0..o1);
                // SAFETY: every element is written by the kernel before it is read.
                let out = unsafe { dev.alloc::<$t>(o1 - o0) }?;
                let mut bld = func.builder();
                bld.arg(&xs)
                    .arg(&out)
                    .arg(&a32)
                    .arg(&c32)
                    .arg(&dw32)
                    .arg(&n32);
                // SAFETY: x and out hold B x A x C x D contiguous values, `words` words each,
                // aligned to the word (checked above; allocations are 256-byte aligned).
                unsafe { bld.launch(cfg) }.w()?;
                drop(bld);
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let storage = match x.dtype() {
            DType::F32 => go!(f32),
            DType::BF16 => go!(half::bf16),
            DType::F16 => go!(half::f16),
            other => candle_core::bail!("swap-axes-1-2 does not move {other:?}"),
        };
        Ok((storage, Shape::from((b, c, a, d))))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        crate::grad_ops::swap_axes12(grad).map(Some)
    }
}

/// [`SwapAxes12`] of a rank-4 CUDA tensor (made contiguous first); None where it cannot run.
pub(crate) fn swap_axes12(x: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let fits = x.device().is_cuda()
        && ptx().is_some()
        && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && x.rank() == 4
        && x.elem_count() * x.dtype().size_in_bytes() / 2 < u32::MAX as usize;
    if !fits {
        return Ok(None);
    }
    x.contiguous()?.apply_op1(SwapAxes12).map(Some)
}
