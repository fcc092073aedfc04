//! One CUDA graph of a closure of candle ops: run once eagerly (which also fills candle's cache
//! of the small host-to-device copies its kernels make for shapes and strides), then captured
//! on the calling thread's stream and instantiated. A graph replays the same kernels on the
//! same addresses, so the closure must read its inputs from buffers that outlive the graph
//! and are refreshed in place, and write its results into such buffers; everything it
//! allocates it must also drop (the graph frees it again on each launch).

// FFI: cudarc's event-tracking switch is unsafe (the caller vouches for its streams).
#![allow(unsafe_code)]

use candle_core::cuda_backend::cudarc::driver::{sys, CudaGraph};
use candle_core::cuda_backend::WrapErr;
use candle_core::Device;

use crate::{EngineError, Result};

pub(crate) struct Graph {
    graph: CudaGraph,
}

impl Graph {
    /// Runs `step` once eagerly, then captures it. The eager run's effects are the step's own
    /// (the caller launches the graph for the next step, or again for this one: a step must
    /// be idempotent over its inputs).
    pub(crate) fn capture(device: &Device, mut step: impl FnMut() -> Result<()>) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            return Err(EngineError::Gpu("a CUDA graph needs a CUDA device".into()));
        };
        let stream = cuda.cuda_stream();
        let _htod_cache = cuda.enable_cuda_graph_htod_cache();
        step()?;
        stream.synchronize().w()?;
        let context = stream.context().clone();
        let tracking = context.is_event_tracking();
        // SAFETY: one stream (this thread's) runs the captured work; no event is waited on.
        unsafe { context.disable_event_tracking() };
        let begun = stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .w();
        let ran = match begun {
            Ok(()) => step(),
            Err(e) => Err(e.into()),
        };
        // End the capture even when the step failed, so the stream is usable again.
        let ended = stream.end_capture(sys::CUgraphInstantiate_flags(0)).w();
        if tracking {
            // SAFETY: restores what was set before the capture.
            unsafe { context.enable_event_tracking() };
        }
        ran?;
        let graph = ended?
            .ok_or_else(|| EngineError::Gpu("the CUDA graph capture recorded nothing".into()))?;
        graph.upload().w()?;
        Ok(Self { graph })
    }

    /// Replays the captured step on this thread's stream (asynchronously).
    pub(crate) fn launch(&self) -> Result<()> {
        Ok(self.graph.launch().w()?)
    }
}
