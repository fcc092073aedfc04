//! The mixed batch's per-row correction in one CUDA kernel per edited map (BGMV: each row
//! gathers its own variant's factors): `z = y + (x A_v^T) B_v^T + db_v` for row i's variant v,
//! shrink and expand in f32 registers and shared memory, one rounding at the end. The unfused
//! form (shrink, mask, expand, bias, add: five kernels) costs more in launches than in work at
//! decoding sizes. Compiled with NVRTC on first use; where that fails, callers keep the
//! unfused form.

// FFI: a kernel launch; every pointer is a live, contiguous device buffer of the stated length.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor};

const SOURCE: &str = r#"
__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const unsigned short* p) {
  return __uint_as_float(((unsigned int)(*p)) << 16);
}
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(unsigned short* p, float v) {
  unsigned int u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) { *p = (unsigned short)((u >> 16) | 0x40u); return; }
  u += 0x7fffu + ((u >> 16) & 1u);
  *p = (unsigned short)(u >> 16);
}

template <typename T>
__device__ void row_lora(const T* x, const T* y, const T* a, const T* bt,
                         const unsigned int* seg, const T* bias, T* z,
                         int d_in, int d_out, int total_rank, int t, int has_bias) {
  extern __shared__ float shrunk[];
  const int n = blockIdx.x;
  const int row = n / t;
  const unsigned int s = seg[2 * row], r = seg[2 * row + 1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const T* xr = x + (size_t)n * d_in;
  for (unsigned int j = warp; j < r; j += warps) {
    const T* ar = a + (size_t)(s + j) * d_in;
    float acc = 0.f;
    for (int i = lane; i < d_in; i += 32) acc += ld(xr + i) * ld(ar + i);
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) shrunk[j] = acc;
  }
  __syncthreads();
  for (int o = threadIdx.x; o < d_out; o += blockDim.x) {
    float c = 0.f;
    for (unsigned int j = 0; j < r; ++j) c += shrunk[j] * ld(bt + (size_t)(s + j) * d_out + o);
    if (has_bias) c += ld(bias + (size_t)row * d_out + o);
    st(z + (size_t)n * d_out + o, ld(y + (size_t)n * d_out + o) + c);
  }
}

extern "C" __global__ void row_lora_f32(const float* x, const float* y, const float* a,
    const float* bt, const unsigned int* seg, const float* bias, float* z,
    int d_in, int d_out, int total_rank, int t, int has_bias) {
  row_lora<float>(x, y, a, bt, seg, bias, z, d_in, d_out, total_rank, t, has_bias);
}

extern "C" __global__ void row_lora_bf16(const unsigned short* x, const unsigned short* y,
    const unsigned short* a, const unsigned short* bt, const unsigned int* seg,
    const unsigned short* bias, unsigned short* z,
    int d_in, int d_out, int total_rank, int t, int has_bias) {
  row_lora<unsigned short>(x, y, a, bt, seg, bias, z, d_in, d_out, total_rank, t, has_bias);
}
"#;

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

/// One map's corrections, applied by [`fused`].
pub(crate) struct RowLora<'a> {
    /// [R, in], every variant's A concatenated.
    pub a: &'a Tensor,
    /// [R, out], every variant's B transposed, concatenated.
    pub b_t: &'a Tensor,
    /// [rows, 2] u32: each row's (first rank, ranks) in the concatenation (0 ranks: base).
    pub seg: &'a Tensor,
    /// [rows, 1, out]: each row's bias delta.
    pub bias: Option<&'a Tensor>,
    /// Tokens per row.
    pub t: usize,
    /// The most ranks a row has.
    pub max_rank: usize,
}

/// `y + correction` for `x` [N, in] and `y` [N, out] (N = rows * t) in one kernel; None when
/// the fused form does not apply (a dtype other than f32/bf16, or no kernel).
pub(crate) fn fused(
    op: RowLora<'_>,
    x: &Tensor,
    y: &Tensor,
) -> candle_core::Result<Option<Tensor>> {
    if !matches!(x.dtype(), DType::F32 | DType::BF16) || ptx().is_none() {
        return Ok(None);
    }
    Ok(Some(x.apply_op2_no_bwd(y, &op)?))
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

impl CustomOp2 for RowLora<'_> {
    fn name(&self) -> &'static str {
        "row-lora"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("the fused row-edit kernel is CUDA only")
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ys: &CudaStorage,
        yl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let (n, d_in) = xl.shape().dims2()?;
        let (_, d_out) = yl.shape().dims2()?;
        let total_rank = self.a.dim(0)?;
        let (a_st, a_l) = self.a.storage_and_layout();
        let (b_st, b_l) = self.b_t.storage_and_layout();
        let (s_st, s_l) = self.seg.storage_and_layout();
        let bias = self.bias.map(|b| b.storage_and_layout());
        fn cuda(s: &Storage) -> candle_core::Result<&CudaStorage> {
            match s {
                Storage::Cuda(c) => Ok(c),
                _ => candle_core::bail!("row edits: a tensor off the GPU"),
            }
        }
        let (a_c, b_c, s_c) = (cuda(&a_st)?, cuda(&b_st)?, cuda(&s_st)?);
        let bias_c = match &bias {
            Some((st, l)) => Some((cuda(st)?, l)),
            None => None,
        };
        let Some(ptx) = ptx() else {
            candle_core::bail!("the fused row-edit kernel did not compile")
        };
        let cfg = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: (self.max_rank.max(1) * 4) as u32,
        };
        let seg = slice::<u32>(s_c, s_l)?;
        let ints = [d_in as i32, d_out as i32, total_rank as i32, self.t as i32];
        let has_bias = i32::from(bias_c.is_some());
        macro_rules! launch {
            ($t:ty, $name:expr) => {{
                let func = dev.get_or_load_custom_func($name, "eigenprune_row_lora", ptx)?;
                let x = slice::<$t>(xs, xl)?;
                let y = slice::<$t>(ys, yl)?;
                let a = slice::<$t>(a_c, a_l)?;
                let b = slice::<$t>(b_c, b_l)?;
                let bias = match &bias_c {
                    Some((c, l)) => slice::<$t>(c, l)?,
                    None => slice::<$t>(ys, yl)?,
                };
                // SAFETY: written by the kernel below before any read.
                let z = unsafe { dev.alloc::<$t>(n * d_out)? };
                let mut builder = func.builder();
                builder.arg(&x);
                builder.arg(&y);
                builder.arg(&a);
                builder.arg(&b);
                builder.arg(&seg);
                builder.arg(&bias);
                builder.arg(&z);
                for v in &ints {
                    builder.arg(v);
                }
                builder.arg(&has_bias);
                // SAFETY: x [n, d_in], y and z [n, d_out], a [R, d_in], b [R, d_out], seg
                // [rows, 2] within R, bias [rows, d_out]: the shapes the kernel indexes.
                unsafe { builder.launch(cfg) }.w()?;
                CudaStorage::wrap_cuda_slice(z, dev.clone())
            }};
        }
        let out = match xs.dtype() {
            DType::F32 => launch!(f32, "row_lora_f32"),
            DType::BF16 => launch!(half::bf16, "row_lora_bf16"),
            _ => candle_core::bail!("row edits: fused for f32 and bf16 only"),
        };
        Ok((out, Shape::from((n, d_out))))
    }
}
