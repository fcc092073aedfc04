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

const MODULE: &str = "eigenprune_fixed_kv";

const SOURCE: &str = r#"
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
"#;

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
