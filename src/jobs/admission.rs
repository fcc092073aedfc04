//! GPU memory admission: before a pruning job starts, its estimated memory
//! (`eigenprune_engine::memory::estimate`) is reserved against what the GPU has free. A job
//! that could never fit is refused; one that fits once running jobs finish waits, saying why.

use std::sync::{Arc, Mutex};

/// Bytes reserved by running jobs on this process's GPU.
#[derive(Default)]
pub struct Reservations {
    reserved: Mutex<u64>,
}

/// Held while a job runs; gives its bytes back when dropped.
pub struct Reservation {
    ledger: Arc<Reservations>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut r = self.ledger.reserved.lock().expect("reservations lock");
        *r = r.saturating_sub(self.bytes);
    }
}

/// Why a reservation was not made.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    Wait(String),
    Refuse(String),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Go,
    Wait(String),
    Refuse(String),
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// `need`: the job's estimate; `free`, `total`: the device now; `resident`: bytes of resident
/// models (they stay); `reserved`: what running jobs have reserved (they will give it back).
pub fn decide(need: u64, free: u64, total: u64, resident: u64, reserved: u64) -> Decision {
    let ceiling = total.saturating_sub(resident);
    if need > ceiling {
        return Decision::Refuse(format!(
            "the job needs about {} of GPU memory; the GPU has {} with {} held by resident \
             models, so it cannot fit: lower batch_size or eval_batch_size, prune fewer \
             components, or keep fewer models resident (--max-resident-models)",
            gib(need),
            gib(total),
            gib(resident)
        ));
    }
    let available = free.saturating_sub(reserved);
    if need <= available {
        Decision::Go
    } else {
        Decision::Wait(format!(
            "waiting for GPU memory: the job needs about {}, {} is free and {} is reserved by \
             running jobs",
            gib(need),
            gib(free),
            gib(reserved)
        ))
    }
}

impl Reservations {
    /// Decides for `need` bytes and, on `Go`, reserves them.
    pub fn try_reserve(
        self: &Arc<Self>,
        need: u64,
        (used, total): (u64, u64),
        resident: u64,
    ) -> Result<Reservation, Denied> {
        let mut r = self.reserved.lock().expect("reservations lock");
        match decide(need, total.saturating_sub(used), total, resident, *r) {
            Decision::Go => {
                *r += need;
                Ok(Reservation {
                    ledger: self.clone(),
                    bytes: need,
                })
            }
            Decision::Wait(why) => Err(Denied::Wait(why)),
            Decision::Refuse(why) => Err(Denied::Refuse(why)),
        }
    }

    pub fn reserved(&self) -> u64 {
        *self.reserved.lock().expect("reservations lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    #[test]
    fn refuses_what_cannot_fit_waits_for_what_will_and_releases() {
        // Too big even with the GPU otherwise idle: refused, saying what to lower.
        match decide(150 * G, 140 * G, 140 * G, 6 * G, 0) {
            Decision::Refuse(m) => assert!(m.contains("batch_size"), "{m}"),
            d => panic!("{d:?}"),
        }
        assert_eq!(decide(20 * G, 100 * G, 140 * G, 6 * G, 0), Decision::Go);
        // Fits the GPU, but not next to a running job's reservation: waits.
        assert!(matches!(
            decide(60 * G, 100 * G, 140 * G, 6 * G, 50 * G),
            Decision::Wait(_)
        ));

        let ledger = Arc::new(Reservations::default());
        let device = (40 * G, 140 * G);
        let first = ledger.try_reserve(60 * G, device, 6 * G).unwrap();
        assert_eq!(ledger.reserved(), 60 * G);
        let second = ledger.try_reserve(60 * G, device, 6 * G);
        assert!(matches!(second, Err(Denied::Wait(_))));
        drop(first);
        assert_eq!(ledger.reserved(), 0);
        assert!(ledger.try_reserve(60 * G, device, 6 * G).is_ok());
    }
}
