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
