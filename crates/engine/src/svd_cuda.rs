//! Batched thin SVDs on the GPU: cuSOLVER's `gesvdaStridedBatched` in f64, one call for a
//! whole stack of equally shaped matrices (every head of a component in every layer).
//!
//! gesvda works on the Gram matrix of a tall matrix, so a singular value's relative error grows
//! like eps * (s_max / s)^2; in f64 that stays far below the 1e-4 the pruning math needs for
//! any weight matrix with condition number under ~1e5. Every solve reports a residual
//! ||A - U S V^T||_F, and the caller falls back to the CPU when it is not small.

// FFI into cuSOLVER: every pointer comes from a live device buffer of the stated length.
#![allow(unsafe_code)]

use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Device, Storage, Tensor};
use cudarc::cusolver::{sys, DnHandle};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use crate::{EngineError, Result};

fn gpu_err(what: &str, e: impl std::fmt::Debug) -> EngineError {
    EngineError::Gpu(format!("{what}: {e:?}"))
}

/// Thin SVDs of `e` [B, m, n] on its CUDA device: U [B, m, r], S [B, r], Vh [B, r, n] (f64,
/// r = min(m, n), singular values descending), and the largest residual relative to ||A||_F.
pub fn batched_thin_svd(e: &Tensor) -> Result<(Tensor, Tensor, Tensor, f64)> {
    let Device::Cuda(dev) = e.device() else {
        return Err(EngineError::Gpu("cuSOLVER needs a CUDA tensor".into()));
    };
    let (b, m, n) = e.dims3()?;
    // cuSOLVER is column-major and gesvda wants a tall A (rows >= cols): a row-major buffer of
    // A^T is A in column-major, so the buffer is E^T for a tall E and E itself for a wide one.
    let tall = m >= n;
    let (rows, cols) = if tall { (m, n) } else { (n, m) };
    let a = if tall { e.transpose(1, 2)? } else { e.clone() };
    let a = a.to_dtype(DType::F64)?.contiguous()?;
    let norms: Vec<f64> = a.sqr()?.sum((1, 2))?.sqrt()?.to_vec1()?;
    let r = cols;
    let stream = dev.cuda_stream();
    let handle = DnHandle::new(stream.clone()).map_err(|e| gpu_err("cusolverDnCreate", e))?;
    let alloc = |len: usize| -> Result<CudaSlice<f64>> {
        stream
            .alloc_zeros::<f64>(len)
            .map_err(|e| gpu_err("cuda alloc", e))
    };
    let mut s = alloc(b * r)?;
    let mut u = alloc(b * rows * r)?;
    let mut v = alloc(b * cols * r)?;
    let mut info = stream
        .alloc_zeros::<i32>(b)
        .map_err(|e| gpu_err("cuda alloc", e))?;
    let mut residuals = vec![0f64; b];
    {
        let (a_storage, a_layout) = a.storage_and_layout();
        let Storage::Cuda(a_cuda) = &*a_storage else {
            return Err(EngineError::Gpu("the matrices are not on the GPU".into()));
        };
        let a_slice = a_cuda.as_cuda_slice::<f64>()?;
        let a_slice = a_slice.slice(a_layout.start_offset()..);
        let (pa, _ga) = a_slice.device_ptr(&stream);
        let (ps, _gs) = s.device_ptr_mut(&stream);
        let (pu, _gu) = u.device_ptr_mut(&stream);
        let (pv, _gv) = v.device_ptr_mut(&stream);
        let (pinfo, _gi) = info.device_ptr_mut(&stream);
        let (ri, ci, ki, bi) = (rows as i32, cols as i32, r as i32, b as i32);
        let (stride_a, stride_u, stride_v) =
            ((rows * cols) as i64, (rows * r) as i64, (cols * r) as i64);
        let mode = sys::cusolverEigMode_t::CUSOLVER_EIG_MODE_VECTOR;
        let mut lwork = 0i32;
        // SAFETY: a holds b * rows * cols f64, s b * r, u b * rows * r, v b * cols * r, info b;
        // the strides and leading dimensions below describe exactly those buffers.
        unsafe {
            sys::cusolverDnDgesvdaStridedBatched_bufferSize(
                handle.cu(),
                mode,
                ki,
                ri,
                ci,
                pa as *const f64,
                ri,
                stride_a,
                ps as *const f64,
                r as i64,
                pu as *const f64,
                ri,
                stride_u,
                pv as *const f64,
                ci,
                stride_v,
                &mut lwork,
                bi,
            )
            .result()
            .map_err(|e| gpu_err("gesvdaStridedBatched_bufferSize", e))?;
        }
        let mut work = alloc(lwork.max(1) as usize)?;
        let (pw, _gw) = work.device_ptr_mut(&stream);
        // SAFETY: as above; work holds lwork f64 and residuals b f64 on the host.
        unsafe {
            sys::cusolverDnDgesvdaStridedBatched(
                handle.cu(),
                mode,
                ki,
                ri,
                ci,
                pa as *const f64,
                ri,
                stride_a,
                ps as *mut f64,
                r as i64,
                pu as *mut f64,
                ri,
                stride_u,
                pv as *mut f64,
                ci,
                stride_v,
                pw as *mut f64,
                lwork,
                pinfo as *mut i32,
                residuals.as_mut_ptr(),
                bi,
            )
            .result()
            .map_err(|e| gpu_err("gesvdaStridedBatched", e))?;
        }
    }
    let info = stream
        .clone_dtoh(&info)
        .map_err(|e| gpu_err("copy info", e))?;
    if let Some((i, code)) = info.iter().enumerate().find(|(_, &c)| c != 0) {
        return Err(EngineError::Gpu(format!(
            "gesvdaStridedBatched failed on matrix {i} of {b} (info {code})"
        )));
    }
    let worst = residuals
        .iter()
        .zip(&norms)
        .map(|(res, norm)| res / norm.max(f64::MIN_POSITIVE))
        .fold(0.0, f64::max);
    let wrap = |slice: CudaSlice<f64>, shape: (usize, usize, usize)| {
        Tensor::from_storage(
            Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone())),
            shape,
            BackpropOp::none(),
            false,
        )
    };
    let s = wrap(s, (b, r, 1)).squeeze(2)?;
    // Column-major U_A (rows x r) is row-major [r, rows]; likewise V_A is [r, cols] = V_A^T.
    let u_rows = wrap(u, (b, r, rows));
    let v_rows = wrap(v, (b, r, cols));
    let (u, vh) = if tall {
        (u_rows.transpose(1, 2)?.contiguous()?, v_rows)
    } else {
        // A = E^T = U_A S V_A^T, so E = V_A S U_A^T.
        (v_rows.transpose(1, 2)?.contiguous()?, u_rows)
    };
    Ok((u, s, vh, worst))
}
