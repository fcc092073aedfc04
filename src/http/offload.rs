//! CPU work of a request (parsing a big JSON body, tokenising, rendering a chat template) runs
//! on blocking threads, never the runtime's, and at most [`MAX_HEAVY`] at once: a burst of
//! 10 MB prompts waits its turn instead of stalling /health or a worker's heartbeats.

use tokio::sync::Semaphore;

use super::error::{ApiError, ApiResult};

/// Pieces of request CPU work running at once.
pub const MAX_HEAVY: usize = 4;

static HEAVY: Semaphore = Semaphore::const_new(MAX_HEAVY);

/// Runs `f` on a blocking thread once one of the [`MAX_HEAVY`] slots is free.
pub async fn offload<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let _slot = HEAVY.acquire().await.map_err(ApiError::internal)?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}
