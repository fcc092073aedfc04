//! One worker loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eigenprune_engine::eval::evaluate_variants;
use eigenprune_engine::tasks::{self, Task};
use eigenprune_engine::EngineError;
use eigenprune_engine::{memory, pipeline};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::admission;
use crate::app::AppState;
use crate::db::jobs::JobRow;
use crate::db::variants::VariantRow;
use crate::hyper::Hyperparameters;

/// Seconds a claimed job stays this worker's without a heartbeat (EIGENPRUNE_LEASE_SECS,
/// default 30); a worker that dies loses its jobs to others after this long.
pub fn lease_secs() -> i64 {
    std::env::var("EIGENPRUNE_LEASE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v: &i64| v >= 2)
        .unwrap_or(30)
}

enum Outcome {
    Pruned { result: Value, variant: VariantRow },
    Evaluated { result: Value },
}

/// Claims and runs jobs until `state.shutdown` is cancelled; a job running then is given back
/// (queued again for the next claim) unless it finishes first.
pub async fn run(state: AppState, name: String) {
    tracing::info!(worker = %name, "worker started");
    let rules = state.lab.claim_rules(lease_secs());
    let reap_every = Duration::from_secs(rules.lease_secs as u64);
    let mut reaped: Option<std::time::Instant> = None;
    while !state.shutdown.is_cancelled() {
        if reaped.is_none_or(|t| t.elapsed() >= reap_every) {
            if let Err(e) = state.db.reap_lost_jobs(rules.max_attempts).await {
                tracing::warn!(error = %e, "ending lost jobs");
            }
            reaped = Some(std::time::Instant::now());
        }
        match state.db.claim_job(&name, rules).await {
            Ok(Some(job)) => process(&state, &name, job).await,
            Ok(None) => {
                tokio::select! {
                    _ = state.wake.notified() => {}
                    _ = state.shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "claiming a job");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    tracing::info!(worker = %name, "worker stopped");
}

async fn process(state: &AppState, worker: &str, job: JobRow) {
    tracing::info!(job = %job.id, kind = %job.kind, attempt = job.attempts, "running");
    let cancel = Arc::new(AtomicBool::new(false));
    let draining = {
        let (stop, cancel) = (state.shutdown.clone(), cancel.clone());
        tokio::spawn(async move {
            stop.cancelled().await;
            cancel.store(true, Ordering::Relaxed);
        })
    };
    let heartbeat = {
        let (db, id, w, cancel) = (
            state.db.clone(),
            job.id.clone(),
            worker.to_string(),
            cancel.clone(),
        );
        let lease = lease_secs();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis((lease * 250) as u64)).await;
                if !db.heartbeat(&id, &w, lease).await.unwrap_or(false) {
                    cancel.store(true, Ordering::Relaxed);
                    break;
                }
                if db.cancel_requested(&id).await.unwrap_or(false) {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
        })
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, f64, String)>();
    let events = {
        let (db, id, attempt) = (state.db.clone(), job.id.clone(), job.attempts);
        tokio::spawn(async move {
            while let Some((phase, fraction, message)) = rx.recv().await {
                if let Err(e) = db.add_event(&id, attempt, &phase, fraction, &message).await {
                    tracing::warn!(error = %e, "recording a job event");
                }
            }
        })
    };
    let outcome = execute(state, &job, cancel.clone(), tx).await;
    heartbeat.abort();
    draining.abort();
    let _ = events.await;
    let db = &state.db;
    let done = match outcome {
        Ok(Outcome::Pruned { result, variant }) => {
            let r = db.insert_variant(&variant).await;
            match r {
                Ok(()) => {
                    db.finish_job(
                        &job.id,
                        worker,
                        "succeeded",
                        Some(&result.to_string()),
                        None,
                        Some(&variant.id),
                    )
                    .await
                }
                Err(e) => Err(e),
            }
        }
        Ok(Outcome::Evaluated { result }) => {
            db.finish_job(
                &job.id,
                worker,
                "succeeded",
                Some(&result.to_string()),
                None,
                None,
            )
            .await
        }
        Err(JobError::Cancelled) if state.shutdown.is_cancelled() => {
            tracing::info!(job = %job.id, "giving the job back (shutting down)");
            db.release_job(&job.id, worker).await
        }
        Err(JobError::Cancelled) => {
            db.finish_job(&job.id, worker, "cancelled", None, None, None)
                .await
        }
        Err(JobError::Failed(code, message)) => {
            tracing::warn!(job = %job.id, code, %message, "job failed");
            db.finish_job(
                &job.id,
                worker,
                "failed",
                None,
                Some((code, &message)),
                None,
            )
            .await
        }
    };
    match done {
        Ok(true) => tracing::info!(job = %job.id, "finished"),
        Ok(false) => {
            tracing::warn!(job = %job.id, "lease lost before finishing; another worker owns the job")
        }
        Err(e) => {
            tracing::error!(job = %job.id, error = %e, "recording the outcome; the lease will expire and the job re-run")
        }
    }
}

enum JobError {
    Cancelled,
    Failed(&'static str, String),
}

/// An engine error as a job error. Running out of GPU memory is told as such, with what is
/// free now and what to change, rather than as an opaque engine error.
fn engine_failure(e: EngineError, device_memory: Option<(u64, u64)>) -> JobError {
    let text = e.to_string();
    if matches!(e, EngineError::Cancelled) {
        return JobError::Cancelled;
    }
    if text.contains("OUT_OF_MEMORY") || text.to_lowercase().contains("out of memory") {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let free = device_memory.map_or_else(
            || "unknown".to_string(),
            |(used, total)| format!("{:.1} of {:.1} GiB", gib(total - used), gib(total)),
        );
        return JobError::Failed(
            "out_of_gpu_memory",
            format!(
                "the job did not fit in GPU memory (free now: {free}); lower batch_size or \
                 eval_batch_size, or keep fewer models resident (--max-resident-models). \
                 Engine: {text}"
            ),
        );
    }
    JobError::Failed("engine_error", text)
}

fn failed(code: &'static str) -> impl Fn(anyhow::Error) -> JobError {
    move |e| JobError::Failed(code, format!("{e:#}"))
}

/// Evaluates every served model on `examples`: the ones that share a batch (a base and its
/// variants) in one pass, their rows together. Results in the models' order.
fn evaluate_served(
    served: &[crate::engine_host::Served],
    examples: &[eigenprune_engine::tasks::Example],
    progress: &mut dyn FnMut(&str, usize, usize) -> bool,
) -> Result<Vec<eigenprune_engine::eval::EvalResult>, EngineError> {
    let mut results = vec![None; served.len()];
    let mut keys: Vec<&str> = served.iter().map(|s| s.key.as_str()).collect();
    keys.dedup();
    let mut seen = std::collections::BTreeSet::new();
    for key in keys {
        if !seen.insert(key) {
            continue;
        }
        let group: Vec<usize> = (0..served.len())
            .filter(|&i| served[i].key == key)
            .collect();
        let model = &served[group[0]].model;
        let edits: Vec<_> = group.iter().map(|&i| served[i].edit.clone()).collect();
        // Evaluations score the dense weights, as a pruning job's do.
        let rs = evaluate_variants(
            &model.model.dense(),
            &model.tokenizer,
            examples,
            16,
            &edits,
            &mut |d, t| progress("eval", d, t),
        )?;
        for (i, r) in group.into_iter().zip(rs) {
            results[i] = Some(r);
        }
    }
    Ok(results.into_iter().flatten().collect())
}

async fn load_task(state: &AppState, job: &JobRow, seed: u64) -> Result<Task, JobError> {
    if let Some(t) = &job.task {
        return tasks::builtin(t).map_err(|e| failed("task_not_found")(e.into()));
    }
    let id = job.dataset.as_deref().unwrap_or_default();
    let row = state
        .db
        .dataset(id)
        .await
        .map_err(|e| failed("database")(e.into()))?
        .ok_or_else(|| JobError::Failed("dataset_not_found", format!("no dataset `{id}`")))?;
    let bytes = state
        .storage
        .get(&row.object_key)
        .await
        .map_err(failed("object_store"))?;
    let text = String::from_utf8_lossy(&bytes);
    tasks::custom(&row.name, &text, seed).map_err(|e| failed("invalid_dataset")(e.into()))
}

/// Reserves the job's GPU memory, waiting (with an event saying why) while running jobs hold
/// what it needs; refuses a job that cannot fit.
async fn admit(
    state: &AppState,
    need: memory::JobMemory,
    events: &mpsc::UnboundedSender<(String, f64, String)>,
    cancelled: &AtomicBool,
) -> Result<Option<admission::Reservation>, JobError> {
    let host = &state.host;
    let mut told = String::new();
    loop {
        let Some(device) = host.device_memory() else {
            return Ok(None);
        };
        match host
            .reservations
            .try_reserve(need.total, device, host.resident_bytes())
        {
            Ok(r) => return Ok(Some(r)),
            Err(admission::Denied::Refuse(why)) => {
                return Err(JobError::Failed("insufficient_gpu_memory", why))
            }
            Err(admission::Denied::Wait(why)) => {
                if why_changed(&mut told, &why) {
                    let _ = events.send(("gpu_memory".into(), 0.0, why));
                }
            }
        }
        if cancelled.load(Ordering::Relaxed) {
            return Err(JobError::Cancelled);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn why_changed(told: &mut String, why: &str) -> bool {
    let changed = told != why;
    *told = why.to_string();
    changed
}

async fn execute(
    state: &AppState,
    job: &JobRow,
    cancel: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<(String, f64, String)>,
) -> Result<Outcome, JobError> {
    let params: Value = serde_json::from_str(&job.params).unwrap_or(Value::Null);
    let (events, cancelled) = (tx.clone(), cancel.clone());
    let mut last = (String::new(), -1.0f64);
    let mut progress = move |phase: &str, done: usize, total: usize| -> bool {
        let fraction = done as f64 / total.max(1) as f64;
        if phase != last.0 || fraction - last.1 >= 0.1 || done == total {
            let _ = tx.send((
                phase.to_string(),
                fraction,
                format!("{phase}: {done}/{total}"),
            ));
            last = (phase.to_string(), fraction);
        }
        !cancel.load(Ordering::Relaxed)
    };
    let host = state.host.clone();
    let map_engine = move |e: EngineError| engine_failure(e, host.device_memory());
    if job.kind == "evaluation" {
        let task = load_task(state, job, 42).await?;
        let split = params
            .get("split")
            .and_then(Value::as_str)
            .unwrap_or("test")
            .to_string();
        // Several models: every variant of one base in the same batched pass over the split.
        let several: Option<Vec<String>> = params
            .get("models")
            .and_then(|m| serde_json::from_value(m.clone()).ok());
        let ids = several.clone().unwrap_or_else(|| vec![job.model.clone()]);
        let resolving = std::time::Instant::now();
        // Every model at once: cold edits load in parallel; a base loads once (ModelHost).
        let served =
            futures::future::try_join_all(ids.iter().map(|id| crate::catalog::load(state, id)))
                .await
                .map_err(|e| JobError::Failed(e.code, e.message))?;
        let resolve_s = resolving.elapsed().as_secs_f64();
        let evaluating = std::time::Instant::now();
        let results = tokio::task::spawn_blocking(move || {
            let examples = if split == "train" {
                &task.train
            } else {
                &task.test
            };
            evaluate_served(&served, examples, &mut progress)
        })
        .await
        .map_err(|e| failed("worker")(e.into()))?
        .map_err(map_engine)?;
        tracing::debug!(
            job = %job.id,
            models = ids.len(),
            resolve_s,
            evaluate_s = evaluating.elapsed().as_secs_f64(),
            "evaluated"
        );
        let view = |r: &eigenprune_engine::eval::EvalResult| json!({"accuracy": crate::report::eval_json(r), "test_size": r.total});
        let result = match several {
            None => view(&results[0]),
            Some(_) => json!({"models": ids.iter().zip(&results).map(|(id, r)| {
                let mut v = view(r);
                v["model"] = json!(id);
                v
            }).collect::<Vec<_>>()}),
        };
        return Ok(Outcome::Evaluated { result });
    }
    let hyper: Hyperparameters =
        serde_json::from_value(params).map_err(|e| failed("invalid_hyperparameters")(e.into()))?;
    let settings = hyper
        .to_settings()
        .map_err(|e| JobError::Failed(e.code, e.message))?;
    let task = load_task(state, job, hyper.seed).await?;
    let host = state.host.clone();
    let base = job.model.clone();
    let (model, task, settings, need) = tokio::task::spawn_blocking(move || {
        let model = host.base(&base).map_err(failed("model_not_found"))?;
        // Only a GPU is admitted against its memory; there the job takes the pass that fits
        // what is free now.
        let Some((used, total)) = host.device_memory() else {
            return Ok::<_, JobError>((model, task, settings, None));
        };
        let room = total
            .saturating_sub(used)
            .saturating_sub(host.reservations.reserved());
        let (settings, need) =
            memory::fit_pass_for_task(&model.model, &model.tokenizer, &task, &settings, room)
                .map_err(|e| failed("invalid_dataset")(e.into()))?;
        Ok((model, task, settings, Some(need)))
    })
    .await
    .map_err(|e| failed("worker")(e.into()))??;
    let _reservation = match need {
        Some(need) => admit(state, need, &events, &cancelled).await?,
        None => None,
    };
    let report = tokio::task::spawn_blocking(move || -> Result<_, JobError> {
        pipeline::run(
            &model.model,
            &model.tokenizer,
            &task,
            &settings,
            &mut progress,
        )
        .map_err(map_engine)
    })
    .await
    .map_err(|e| failed("worker")(e.into()))??;
    let variant_id = format!(
        "ep-{}-{}",
        job.suffix.as_deref().unwrap_or("v"),
        job.id.trim_start_matches("pj-")
    );
    let mut edit = report.results[0].edit.clone();
    edit.metadata.insert("base_model".into(), job.model.clone());
    edit.metadata.insert("job".into(), job.id.clone());
    edit.metadata
        .insert("hyperparameters".into(), job.params.clone());
    let bytes = edit
        .to_bytes()
        .map_err(|e| failed("engine_error")(e.into()))?;
    let key = format!("variants/{variant_id}.safetensors");
    state
        .storage
        .put(&key, Bytes::from(bytes))
        .await
        .map_err(failed("object_store"))?;
    let analysis = crate::report::analysis_json(&report, &hyper.method);
    state
        .storage
        .put(
            &crate::report::analysis_key(&job.id),
            Bytes::from(analysis.to_string()),
        )
        .await
        .map_err(failed("object_store"))?;
    let result = crate::report::report_json(&report);
    let summary = json!({"task": report.task, "pruned": report.results[0].pruned, "candidates": report.candidates});
    Ok(Outcome::Pruned {
        result,
        variant: VariantRow {
            id: variant_id,
            parent: job.model.clone(),
            job_id: job.id.clone(),
            object_key: key,
            created_at: 0,
            owner: job.owner.clone(),
            visibility: job.visibility.clone(),
            summary: summary.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_gpu_memory_is_named_with_what_is_free() {
        let oom = EngineError::InvalidInput(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        );
        let used_total = Some((100u64 << 30, 140u64 << 30));
        match engine_failure(oom, used_total) {
            JobError::Failed(code, message) => {
                assert_eq!(code, "out_of_gpu_memory");
                assert!(message.contains("40.0 of 140.0 GiB"), "{message}");
            }
            JobError::Cancelled => panic!("not a cancel"),
        }
        let other = EngineError::InvalidInput("bad".into());
        assert!(matches!(
            engine_failure(other, None),
            JobError::Failed("engine_error", _)
        ));
        assert!(matches!(
            engine_failure(EngineError::Cancelled, None),
            JobError::Cancelled
        ));
    }
}
