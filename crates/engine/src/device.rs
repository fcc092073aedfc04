//! Accelerator facts the service reports: memory in use and in total.

use candle_core::Device;

/// (used, total) bytes of the accelerator's memory, all processes included; None on the CPU.
pub fn memory(device: &Device) -> Option<(u64, u64)> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
            Some(((total - free) as u64, total as u64))
        }
        _ => None,
    }
}

/// CUDA device `ordinal` without cudarc's event pair per allocation. cudarc creates a read and
/// a write event with every buffer and records them only once a context has a second stream;
/// candle runs on the per-thread default stream, which is no second stream, so the events are
/// never used, and creating and destroying them took some 5,800 driver calls per sweep batch at
/// Phi-2's shape (BENCHMARKS.md). A process that makes its own streams must not use this.
// FFI: cudarc's switch is unsafe (the caller vouches for its streams).
#[allow(unsafe_code)]
pub fn open_cuda(ordinal: usize) -> crate::Result<Device> {
    let device = Device::new_cuda(ordinal)?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = &device {
        // SAFETY: cudarc only synchronises through these events in multi-stream mode, which
        // nothing in this process enters (it creates no stream): no use of them is lost.
        unsafe { d.cuda_stream().context().disable_event_tracking() };
    }
    Ok(device)
}

/// TF32 matrix products for f32 on a GPU while held. cuBLAS's switch is process-wide: holders
/// are counted, and the last to finish restores what was set before the first (e.g. the
/// CLI's `EIGENPRUNE_TF32`).
pub struct Tf32 {
    held: bool,
}

/// (holders, the switch before the first holder).
static TF32_HOLDERS: std::sync::Mutex<(usize, bool)> = std::sync::Mutex::new((0, false));

impl Tf32 {
    /// Turns TF32 on when `wanted` on a CUDA `device`; a no-op elsewhere.
    pub fn enable(device: &Device, wanted: bool) -> Self {
        let held = wanted && device.is_cuda();
        if held {
            let mut h = TF32_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
            if h.0 == 0 {
                h.1 = tf32();
                set_tf32(true);
            }
            h.0 += 1;
        }
        Self { held }
    }
}

impl Drop for Tf32 {
    fn drop(&mut self) {
        if self.held {
            let mut h = TF32_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
            h.0 -= 1;
            if h.0 == 0 {
                set_tf32(h.1);
            }
        }
    }
}

fn tf32() -> bool {
    #[cfg(feature = "cuda")]
    return candle_core::cuda_backend::gemm_reduced_precision_f32();
    #[cfg(not(feature = "cuda"))]
    false
}

fn set_tf32(on: bool) {
    #[cfg(feature = "cuda")]
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(on);
    #[cfg(not(feature = "cuda"))]
    let _ = on;
}

/// Whether eigenprune's own CUDA kernels (the traced forward's backward ops, the score terms)
/// compiled with NVRTC on this machine; where they did not, the composites run, slower.
#[cfg(feature = "cuda")]
pub fn own_kernels_compile() -> bool {
    crate::grad_ops_cuda::compiled() && crate::score_terms_cuda::compiled()
}
