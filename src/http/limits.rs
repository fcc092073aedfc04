//! Per-user limits a replica enforces in memory: a request rate (token bucket, refilled per
//! minute) and completion sequences held at once (released when the request ends, however it
//! ends). Job quotas are counted in the database ([`check_job_quota`]), which every replica
//! shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::error::ApiError;
use crate::app::AppState;
use crate::identity::Caller;

/// Whether `caller` may queue one more job: under their queued-jobs limit and their job
/// seconds of the last 24 hours.
pub async fn check_job_quota(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    if let Some(limit) = caller.quota.queued_jobs {
        let queued = state.db.queued_jobs_of(&caller.user).await?;
        if queued as u64 >= limit {
            return Err(ApiError::too_many(
                "too_many_queued_jobs",
                format!("{queued} of your jobs are queued, the most allowed ({limit}); retry when one starts"),
                30,
            ));
        }
    }
    if let Some(limit) = caller.quota.gpu_seconds_per_day {
        let (used, oldest) = state.db.job_seconds_of(&caller.user).await?;
        if used as u64 >= limit {
            let wait = oldest.map_or(60, |t| (t + 86_400 - crate::db::now()).max(1) as u64);
            return Err(ApiError::too_many(
                "gpu_seconds_exhausted",
                format!("your jobs ran {used} s in the last 24 hours; the limit is {limit} s"),
                wait,
            ));
        }
    }
    Ok(())
}

/// Admits a completion request of `sequences` (prompts x choices) for `model`: within the
/// per-request bound (else 400), the model's waiting line (else 429) and the caller's
/// sequences at once (else 429). The sequences are held until the returned guard drops.
/// `batch`: the key of the batch the sequences join (a variant's is its base's).
pub fn admit_sequences(
    state: &AppState,
    caller: &Caller,
    batch: &str,
    sequences: usize,
) -> Result<Held, ApiError> {
    let max = state.lab.max_sequences_per_request;
    if sequences > max {
        return Err(ApiError::invalid(
            "too_many_sequences_per_request",
            format!("this request asks for {sequences} sequences (prompts x n or best_of); at most {max} per request"),
        )
        .param("n"));
    }
    let waiting = state.host.waiting(batch);
    if waiting + sequences > state.lab.max_waiting_sequences {
        return Err(ApiError::too_many(
            "model_overloaded",
            format!(
                "{waiting} sequences are waiting for this model's batch (its base's, for a variant; at most {}); retry shortly",
                state.lab.max_waiting_sequences
            ),
            2,
        ));
    }
    state
        .limiter
        .hold_sequences(&caller.user, sequences as u64, caller.quota.sequences)
}

#[derive(Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<String, Bucket>>,
    sequences: Mutex<HashMap<String, u64>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Sequences a request holds; given back on drop.
pub struct Held {
    limiter: Arc<Limiter>,
    user: String,
    n: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut s = self.limiter.sequences.lock().expect("limiter lock");
        if let Some(v) = s.get_mut(&self.user) {
            *v = v.saturating_sub(self.n);
            if *v == 0 {
                s.remove(&self.user);
            }
        }
    }
}

impl Limiter {
    /// Takes one request from `user`'s bucket of `per_minute` (a burst of up to a minute's).
    pub fn request(&self, user: &str, per_minute: Option<u64>) -> Result<(), ApiError> {
        let Some(per_minute) = per_minute else {
            return Ok(());
        };
        let (rate, now) = (per_minute as f64 / 60.0, Instant::now());
        let mut buckets = self.buckets.lock().expect("limiter lock");
        let b = buckets.entry(user.to_string()).or_insert(Bucket {
            tokens: per_minute as f64,
            at: now,
        });
        b.tokens =
            (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(per_minute as f64);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - b.tokens) / rate).ceil() as u64;
        Err(ApiError::too_many(
            "rate_limit_exceeded",
            format!("over {per_minute} requests per minute; retry in {wait} s"),
            wait,
        ))
    }

    /// Holds `n` completion sequences for `user`, within `limit` at once.
    pub fn hold_sequences(
        self: &Arc<Self>,
        user: &str,
        n: u64,
        limit: Option<u64>,
    ) -> Result<Held, ApiError> {
        let mut s = self.sequences.lock().expect("limiter lock");
        let held = s.get(user).copied().unwrap_or(0);
        if let Some(limit) = limit {
            if held + n > limit {
                return Err(ApiError::too_many(
                    "too_many_sequences",
                    format!(
                        "this request asks for {n} sequences and {held} of yours are decoding \
                         or waiting; the limit is {limit} at once"
                    ),
                    1,
                ));
            }
        }
        *s.entry(user.to_string()).or_insert(0) += n;
        Ok(Held {
            limiter: self.clone(),
            user: user.to_string(),
            n,
        })
    }

    /// Sequences `user` holds now.
    pub fn held(&self, user: &str) -> u64 {
        let s = self.sequences.lock().expect("limiter lock");
        s.get(user).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_minute_then_says_when() {
        let l = Limiter::default();
        for _ in 0..3 {
            l.request("alice", Some(3)).unwrap();
        }
        let e = l.request("alice", Some(3)).unwrap_err();
        assert_eq!(e.status.as_u16(), 429);
        assert_eq!(e.retry_after, Some(20));
        l.request("bob", Some(3)).unwrap();
        l.request("alice", None).unwrap();
    }

    #[test]
    fn sequences_are_given_back_on_drop() {
        let l = Arc::new(Limiter::default());
        let a = l.hold_sequences("alice", 6, Some(8)).unwrap();
        assert!(l.hold_sequences("alice", 3, Some(8)).is_err());
        let b = l.hold_sequences("alice", 2, Some(8)).unwrap();
        assert_eq!(l.held("alice"), 8);
        drop(a);
        drop(b);
        assert_eq!(l.held("alice"), 0);
    }
}
