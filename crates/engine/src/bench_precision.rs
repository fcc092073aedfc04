//! What a sweep's precision does to the method's outcome: one job's sweep in f32 and in
//! another precision, each timed, their scores' rank correlation, and per portion the overlap
//! (Jaccard) of the pruned sets and the test accuracy of each edit.

use std::time::Instant;

use serde::Serialize;
use tokenizers::Tokenizer;

use crate::attribution::{sweep, Precision, Scores, SweepSettings};
use crate::eval::evaluate;
use crate::prune::{build_edit, ranking, select, BiasMode, Method, Selection};
use crate::svd::{decompose, SiteSvd};
use crate::tasks::Task;
use crate::trace::Component;
use crate::transformer::Transformer;
use crate::Result;

/// One portion under both precisions.
#[derive(Clone, Debug, Serialize)]
pub struct PortionAgreement {
    pub portion: f64,
    pub pruned: usize,
    /// |f32 set ∩ other set| / |f32 set ∪ other set|.
    pub jaccard: f64,
    /// Test examples right after the f32 edit and after the other's (evaluated in f32).
    pub correct_f32: usize,
    pub correct_other: usize,
    /// The other's edit evaluated with TF32 products, as a job in that precision evaluates
    /// on a GPU (on the CPU the same as `correct_other`).
    pub correct_other_tf32_eval: usize,
    pub test_size: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct PrecisionAgreement {
    pub task: String,
    pub precision: &'static str,
    pub sweep_seconds_f32: f64,
    pub sweep_seconds_other: f64,
    /// Spearman's rank correlation of every score.
    pub spearman: f64,
    /// The unedited model's test accuracy evaluated in f32 and with TF32 products.
    pub correct_before_f32: usize,
    pub correct_before_tf32_eval: usize,
    pub portions: Vec<PortionAgreement>,
}

/// Sweeps `task`'s training split on the f32 `model` in f32 and in `other` (`sweep`'s other
/// settings as given; each after a one-batch warm-up) and compares what each prunes.
pub fn compare(
    model: &Transformer,
    tok: &Tokenizer,
    task: &Task,
    components: &[Component],
    portions: &[f64],
    other: Precision,
    settings: &SweepSettings,
) -> Result<PrecisionAgreement> {
    let svds = decompose(model, components)?;
    let run = |precision| -> Result<(f64, Scores)> {
        let s = SweepSettings {
            precision: Some(precision),
            ..settings.clone()
        };
        let warm = SweepSettings {
            scoring_batches: Some(1),
            ..s.clone()
        };
        sweep(model, tok, &task.train, &svds, &warm, &mut |_, _| true)?;
        let start = Instant::now();
        let scores = sweep(model, tok, &task.train, &svds, &s, &mut |_, _| true)?;
        Ok((start.elapsed().as_secs_f64(), scores))
    };
    let (t32, s32) = run(Precision::F32)?;
    let (tother, sother) = run(other)?;
    let (o32, oother) = (
        ranking(&svds, &s32, Method::Attribution, 0)?,
        ranking(&svds, &sother, Method::Attribution, 0)?,
    );
    let mut rows = Vec::new();
    for &portion in portions {
        let (a, b) = (
            select(&svds, &o32, portion)?,
            select(&svds, &oother, portion)?,
        );
        let (correct_other, correct_other_tf32_eval) =
            accuracy_after(model, tok, task, &svds, &b, &sother)?;
        rows.push(PortionAgreement {
            portion,
            pruned: a.count,
            jaccard: jaccard(&a, &b),
            correct_f32: accuracy_after(model, tok, task, &svds, &a, &s32)?.0,
            correct_other,
            correct_other_tf32_eval,
            test_size: task.test.len(),
        });
    }
    let (correct_before_f32, correct_before_tf32_eval) = correct_f32_and_tf32(model, tok, task)?;
    Ok(PrecisionAgreement {
        task: task.name.clone(),
        precision: other.name(),
        sweep_seconds_f32: t32,
        sweep_seconds_other: tother,
        spearman: spearman(&s32.flat(), &sother.flat()),
        correct_before_f32,
        correct_before_tf32_eval,
        portions: rows,
    })
}

/// Test examples right after the edit of `selection`, evaluated in f32 and with TF32 products.
fn accuracy_after(
    model: &Transformer,
    tok: &Tokenizer,
    task: &Task,
    svds: &[SiteSvd],
    selection: &Selection,
    scores: &Scores,
) -> Result<(usize, usize)> {
    let edit = build_edit(model, svds, selection, &scores.input_means, BiasMode::Mean)?;
    let mut edited = model.clone();
    edit.apply(&mut edited)?;
    correct_f32_and_tf32(&edited, tok, task)
}

fn correct_f32_and_tf32(
    model: &Transformer,
    tok: &Tokenizer,
    task: &Task,
) -> Result<(usize, usize)> {
    let correct =
        || -> Result<usize> { Ok(evaluate(model, tok, &task.test, 16, &mut |_, _| true)?.correct) };
    let f32 = correct()?;
    let _tf32 = crate::device::Tf32::enable(model.device(), true);
    Ok((f32, correct()?))
}

/// The Jaccard overlap of two selections over the same candidates (1 when both are empty).
pub fn jaccard(a: &Selection, b: &Selection) -> f64 {
    let flat =
        |s: &Selection| -> Vec<bool> { s.pruned.iter().flatten().flatten().copied().collect() };
    let (a, b) = (flat(a), flat(b));
    let both = a.iter().zip(&b).filter(|(x, y)| **x && **y).count();
    let either = a.iter().zip(&b).filter(|(x, y)| **x || **y).count();
    if either == 0 {
        1.0
    } else {
        both as f64 / either as f64
    }
}

/// Spearman's rank correlation (ties share their mean rank).
pub fn spearman(a: &[f32], b: &[f32]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let mean = (n - 1.0) / 2.0;
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - mean) * (y - mean);
        va += (x - mean).powi(2);
        vb += (y - mean).powi(2);
    }
    if va == 0.0 || vb == 0.0 {
        return if ra == rb { 1.0 } else { 0.0 };
    }
    cov / (va * vb).sqrt()
}

fn ranks(v: &[f32]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut out = vec![0.0; v.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && v[order[end]] == v[order[start]] {
            end += 1;
        }
        let rank = (start + end - 1) as f64 / 2.0;
        for &i in &order[start..end] {
            out[i] = rank;
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_monotone_and_reversed_orders() {
        let a = [0.1f32, 0.5, 0.2, 3.0, -1.0];
        let up: Vec<f32> = a.iter().map(|x| x * 10.0 + 1.0).collect();
        let down: Vec<f32> = a.iter().map(|x| -x).collect();
        assert!((spearman(&a, &up) - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &down) + 1.0).abs() < 1e-12);
        // One swap of neighbours out of 5: 1 - 6 * 2 / (5 * 24) = 0.9.
        let swapped = [0.1f32, 0.5, 0.05, 3.0, -1.0];
        assert!((spearman(&a, &swapped) - 0.9).abs() < 1e-12);
        // Ties share their mean rank.
        assert_eq!(ranks(&[2.0, 1.0, 2.0]), vec![1.5, 0.0, 1.5]);
    }
}
