//! Typed readings of a job's stored JSON (`report::report_json`, `report::analysis_json`):
//! the pages draw from these, never from untyped lookups.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct Accuracy {
    pub correct: usize,
    pub total: usize,
    pub accuracy: f64,
    pub choice_correct: Option<usize>,
    pub choice_accuracy: Option<f64>,
    /// '1'/'0' per test item (absent in results older than the dashboard).
    #[serde(default)]
    pub right: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Control {
    pub method: String,
    pub accuracy: Accuracy,
}

#[derive(Clone, Debug, Deserialize)]
pub struct PortionOutcome {
    pub portion: f64,
    pub pruned: usize,
    pub accuracy_after: Accuracy,
    pub pruned_per_layer: Vec<usize>,
    #[serde(default)]
    pub controls: Vec<Control>,
}

/// A pruning job's result.
#[derive(Clone, Debug, Deserialize)]
pub struct PruneResult {
    pub task: String,
    pub candidates: usize,
    pub accuracy_before: Accuracy,
    pub test_size: usize,
    #[serde(default)]
    pub scored_examples: usize,
    #[serde(default)]
    pub precision: Option<String>,
    #[serde(default)]
    pub seconds: BTreeMap<String, f64>,
    pub portions: Vec<PortionOutcome>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Head {
    pub layer: usize,
    pub component: String,
    pub head: usize,
    pub singular_values: Vec<f32>,
    pub scores: Vec<f32>,
    pub rank: Vec<u32>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TestItem {
    pub prompt: String,
    pub answer: String,
}

/// A pruning job's analysis (object store, `report::analysis_key`).
#[derive(Clone, Debug, Deserialize)]
pub struct Analysis {
    pub candidates: usize,
    pub method: String,
    pub heads: Vec<Head>,
    pub test_items: Vec<TestItem>,
}

impl Analysis {
    /// The components present, in the order the job listed its sites.
    pub fn components(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for h in &self.heads {
            if !out.contains(&h.component.as_str()) {
                out.push(&h.component);
            }
        }
        out
    }

    /// The ranks pruned at `portion` are those below this.
    pub fn cutoff(&self, portion: f64) -> u32 {
        eigenprune_engine::analysis::cutoff(self.candidates, portion) as u32
    }
}

/// One model's line in an evaluation's result.
#[derive(Clone, Debug, Deserialize)]
pub struct ModelAccuracy {
    #[serde(default)]
    pub model: Option<String>,
    pub accuracy: Accuracy,
    pub test_size: usize,
}

/// An evaluation's result: one model, or several.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum EvaluationResult {
    Several { models: Vec<ModelAccuracy> },
    One(ModelAccuracy),
}

impl EvaluationResult {
    /// Each model's line, named (`model` names a single model's).
    pub fn lines(self, model: &str) -> Vec<ModelAccuracy> {
        match self {
            Self::Several { models } => models,
            Self::One(mut m) => {
                m.model = Some(model.to_string());
                vec![m]
            }
        }
    }
}
