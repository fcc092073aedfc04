//! eigenprune's tensor engine: model loading, a traceable forward pass, generation,
//! and (in later modules) SVD, attribution and edits. No HTTP, SQL or async here.

/// The CUDA kernels' shared prelude: loads and stores of f32 and of bf16 (its 16 bits, rounded
/// to nearest even, NaN kept), arithmetic in f32.
#[cfg(feature = "cuda")]
macro_rules! kernel_prelude {
    () => {
        r#"
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
"#
    };
}

/// The block reductions of the kernels that reduce a row per block: a warp's sum, and the
/// block's sum on every thread (blockDim.x a multiple of 32, at most 1024).
#[cfg(feature = "cuda")]
macro_rules! reduction_prelude {
    () => {
        r#"
__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
__device__ float block_sum(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < warps; ++w) total += shared[w];
  return total;
}
"#
    };
}

pub mod analysis;
pub mod attribution;
pub mod batch;
mod batch_scoring;
pub mod batcher;
pub mod bench;
pub mod bench_precision;
pub mod chat;
pub mod config;
#[cfg(feature = "cuda")]
mod cuda_graph;
mod decode_attention;
pub mod device;
pub mod edit;
pub mod error;
pub mod eval;
pub mod export;
pub mod finetune;
pub mod fixed_decode;
pub mod fixed_kv;
#[cfg(feature = "cuda")]
mod fixed_kv_cuda;
pub mod generate;
pub mod gguf;
pub mod grad_ops;
#[cfg(feature = "cuda")]
mod grad_ops_cuda;
pub mod loading;
pub mod memory;
pub mod models;
pub mod pipeline;
pub mod prune;
pub mod row_edits;
#[cfg(feature = "cuda")]
mod row_edits_cuda;
pub mod row_stats;
#[cfg(feature = "cuda")]
mod row_stats_cuda;
mod score_terms;
#[cfg(feature = "cuda")]
mod score_terms_cuda;
pub mod svd;
#[cfg(feature = "cuda")]
mod svd_cuda;
pub mod tasks;
pub mod tokenizer;
pub mod trace;
pub mod transformer;
pub mod weights;

pub use config::{Activation, Arch, ModelConfig, NormKind};
pub use error::{EngineError, Result};
pub use loading::{load_model, LoadOptions, LoadedModel, ModelSource};
pub use tokenizers;
pub use trace::{Component, Trace};
pub use transformer::{KvCache, Transformer};
