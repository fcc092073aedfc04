//! Prometheus metrics: counters and a latency histogram kept in atomics, rendered on demand
//! with the gauges read at scrape time (jobs by status, queue depth, resident models, memory).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the request-latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0, 120.0];

#[derive(Default)]
pub struct Metrics {
    /// Responses by status class: 1xx..5xx.
    responses: [AtomicU64; 5],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_micros: AtomicU64,
    pub tokens_generated: AtomicU64,
}

/// What the scrape reads from the database and the model host.
pub struct Gauges {
    pub jobs: Vec<(String, String, i64)>,
    pub resident_models: usize,
    pub resident_model_bytes: u64,
    /// (used, total) bytes of the accelerator, when there is one.
    pub device_memory: Option<(u64, u64)>,
    /// Completion sequences (decoding, waiting to join a batch).
    pub decoding: (usize, usize),
    pub edit_pool: crate::edit_pool::PoolUsage,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn observe(&self, status: u16, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
            self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        Self::add(&self.latency_micros, elapsed.as_micros() as u64);
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut line = |s: String| {
            let _ = writeln!(out, "{s}");
        };
        line("# TYPE eigenprune_requests_total counter".into());
        let mut total = 0;
        for (i, c) in self.responses.iter().enumerate() {
            total += load(c);
            line(format!(
                "eigenprune_requests_total{{code=\"{}xx\"}} {}",
                i + 1,
                load(c)
            ));
        }
        line("# TYPE eigenprune_request_duration_seconds histogram".into());
        let mut cumulative = 0;
        for (b, c) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            cumulative += load(c);
            line(format!(
                "eigenprune_request_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}"
            ));
        }
        line(format!(
            "eigenprune_request_duration_seconds_bucket{{le=\"+Inf\"}} {total}"
        ));
        line(format!(
            "eigenprune_request_duration_seconds_sum {}",
            load(&self.latency_micros) as f64 / 1e6
        ));
        line(format!("eigenprune_request_duration_seconds_count {total}"));
        line("# TYPE eigenprune_tokens_generated_total counter".into());
        line(format!(
            "eigenprune_tokens_generated_total {}",
            load(&self.tokens_generated)
        ));
        line("# TYPE eigenprune_jobs gauge".into());
        for (kind, status, n) in &g.jobs {
            line(format!(
                "eigenprune_jobs{{kind=\"{kind}\",status=\"{status}\"}} {n}"
            ));
        }
        let queued: i64 = g.jobs.iter().filter(|j| j.1 == "queued").map(|j| j.2).sum();
        line("# TYPE eigenprune_queue_depth gauge".into());
        line(format!("eigenprune_queue_depth {queued}"));
        line("# TYPE eigenprune_resident_models gauge".into());
        line(format!("eigenprune_resident_models {}", g.resident_models));
        line("# TYPE eigenprune_resident_model_bytes gauge".into());
        line(format!(
            "eigenprune_resident_model_bytes {}",
            g.resident_model_bytes
        ));
        let p = &g.edit_pool;
        line("# TYPE eigenprune_edit_pool_bytes gauge".into());
        line(format!(
            "eigenprune_edit_pool_bytes{{tier=\"device\"}} {}",
            p.device_bytes
        ));
        line(format!(
            "eigenprune_edit_pool_bytes{{tier=\"host\"}} {}",
            p.host_bytes
        ));
        line("# TYPE eigenprune_edit_pool_edits gauge".into());
        line(format!(
            "eigenprune_edit_pool_edits{{tier=\"device\"}} {}",
            p.device_edits
        ));
        line(format!(
            "eigenprune_edit_pool_edits{{tier=\"host\"}} {}",
            p.host_edits
        ));
        line("# TYPE eigenprune_edit_pool_lookups_total counter".into());
        line(format!(
            "eigenprune_edit_pool_lookups_total{{answered_by=\"device\"}} {}",
            p.hits
        ));
        line(format!(
            "eigenprune_edit_pool_lookups_total{{answered_by=\"host\"}} {}",
            p.host_hits
        ));
        line("# TYPE eigenprune_edit_pool_loads_total counter".into());
        line(format!("eigenprune_edit_pool_loads_total {}", p.loads));
        line("# TYPE eigenprune_edit_pool_evictions_total counter".into());
        line(format!(
            "eigenprune_edit_pool_evictions_total {}",
            p.evictions
        ));
        line("# TYPE eigenprune_decoding_sequences gauge".into());
        line(format!(
            "eigenprune_decoding_sequences{{state=\"active\"}} {}",
            g.decoding.0
        ));
        line(format!(
            "eigenprune_decoding_sequences{{state=\"waiting\"}} {}",
            g.decoding.1
        ));
        if let Some((used, total)) = g.device_memory {
            line("# TYPE eigenprune_gpu_memory_used_bytes gauge".into());
            line(format!("eigenprune_gpu_memory_used_bytes {used}"));
            line("# TYPE eigenprune_gpu_memory_total_bytes gauge".into());
            line(format!("eigenprune_gpu_memory_total_bytes {total}"));
        }
        out
    }
}
