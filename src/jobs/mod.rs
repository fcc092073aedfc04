//! The worker pool: claim a job with a lease, heartbeat it, run it on a blocking thread,
//! write its objects, then mark it done. An expired lease (a dead worker) puts the job back.

pub mod admission;
pub mod worker;
