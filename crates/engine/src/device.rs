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
