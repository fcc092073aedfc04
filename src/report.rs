//! JSON shapes of engine results, shared by the CLI and the service.

use eigenprune_engine::pipeline::PruneReport;
use serde_json::json;

pub fn eval_json(e: &eigenprune_engine::eval::EvalResult) -> serde_json::Value {
    json!({
        "correct": e.correct,
        "total": e.total,
        "accuracy": e.accuracy(),
        "choice_correct": e.choice_correct,
        "choice_accuracy": e.choice_accuracy(),
        "right": right_bits(&e.right),
    })
}

/// Per-example correctness as a string of '1' (right) and '0', in the test split's order.
pub fn right_bits(right: &[bool]) -> String {
    right.iter().map(|&r| if r { '1' } else { '0' }).collect()
}

/// Where a pruning job's [`analysis_json`] is kept in the object store.
pub fn analysis_key(job_id: &str) -> String {
    format!("jobs/{job_id}/analysis.json")
}

/// Every head's singular values, scores and ranks, and the test items: what the job page draws
/// (stored beside the result: it grows with the model).
pub fn analysis_json(r: &PruneReport, method: &str) -> serde_json::Value {
    let heads: Vec<_> = r
        .analysis
        .heads
        .iter()
        .map(|h| {
            json!({
                "layer": h.layer,
                "component": h.component.name(),
                "head": h.head,
                "singular_values": h.singular_values,
                "scores": h.scores,
                "rank": h.rank,
            })
        })
        .collect();
    json!({
        "candidates": r.analysis.candidates,
        "method": method,
        "heads": heads,
        "test_items": r.test_items.iter().map(|(p, a)| json!({"prompt": p, "answer": a})).collect::<Vec<_>>(),
    })
}

pub fn report_json(r: &PruneReport) -> serde_json::Value {
    let first = &r.results[0];
    let per_portion: Vec<_> = r
        .results
        .iter()
        .map(|p| {
            json!({
                "portion": p.portion,
                "pruned": p.pruned,
                "accuracy_after": eval_json(&p.accuracy_after),
                "pruned_per_layer": p.pruned_per_layer,
                "controls": p.controls.iter().map(|(m, e)| json!({"method": m.name(), "accuracy": eval_json(e)})).collect::<Vec<_>>(),
                "auto_dev": p.auto_dev.as_ref().map(|(grid, n)| json!({
                    "dev_size": n,
                    "grid": grid.iter().map(|(p, e)| json!({"portion": p, "accuracy": eval_json(e)})).collect::<Vec<_>>(),
                })),
            })
        })
        .collect();
    json!({
        "task": r.task,
        "candidates": r.candidates,
        "pruned": first.pruned,
        "portion": first.portion,
        "accuracy_before": eval_json(&r.accuracy_before),
        "accuracy_after": eval_json(&first.accuracy_after),
        "test_size": r.test_size,
        "scored_examples": r.scored_examples,
        "precision": r.precision.name(),
        "pass_tokens": r.pass_tokens,
        "seconds": r.seconds,
        "portions": per_portion,
        "finetune": r.finetune.as_ref().map(|(ft, pretrained)| json!({
            "epoch_losses": ft.epoch_losses,
            "accuracy_pretrained": eval_json(pretrained),
        })),
    })
}
