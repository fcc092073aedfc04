//! A pruning job's page: what ran, how long each phase took, accuracy per portion against the
//! controls, a paired test, and pictures of what was pruned. The same markup is the CLI's
//! offline `--report` (then without the server's forms and live updates).

use maud::{html, Markup};
use serde::Deserialize;

use super::charts::{self, BarGroup};
use super::stats;
use super::views::{Accuracy, Analysis, PruneResult};
use crate::http::jobs::Job;

/// What the page shows of the analysis (query parameters of the job page).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Pick {
    /// Index of the portion drawn (the job's first by default).
    pub portion: Option<usize>,
    /// The spectrum's head: component, layer and head index.
    pub component: Option<String>,
    pub layer: Option<usize>,
    pub head: Option<usize>,
}

pub struct JobPage<'a> {
    pub job: &'a Job,
    pub result: Option<&'a PruneResult>,
    pub analysis: Option<&'a Analysis>,
    pub pick: &'a Pick,
    /// A file on its own: no links into the service, no forms.
    pub offline: bool,
    /// The viewer may cancel the job (its owner or an admin).
    pub can_cancel: bool,
}

fn pct(a: &Accuracy) -> String {
    format!("{}/{} = {:.2}%", a.correct, a.total, 100.0 * a.accuracy)
}

fn choice(a: &Accuracy) -> String {
    match (a.choice_correct, a.choice_accuracy) {
        (Some(c), Some(p)) => format!("{c}/{} = {:.2}%", a.total, 100.0 * p),
        _ => "-".into(),
    }
}

impl JobPage<'_> {
    pub fn render(&self) -> Markup {
        let j = self.job;
        html! {
            h1 { "Pruning job " code { (j.id) } }
            (self.summary())
            @if let Some(e) = &j.error {
                p class="error" role="alert" { "Failed: " code { (e.code) } " " (e.message.as_deref().unwrap_or("")) }
            }
            @if !self.offline && matches!(j.status.as_str(), "queued" | "running") {
                section id="live" data-job=(j.id) {
                    h2 { "Progress" }
                    p { span class="status" data-status=(j.status) { (j.status) } " "
                        progress max="1" value="0" {} " " span class="phase" {} }
                    p class="hint" { "This page follows the job and reloads when it ends." }
                    @if self.can_cancel {
                        form method="post" action={"/jobs/" (j.id) "/cancel"} {
                            button type="submit" id="cancel-job" { "Cancel job" }
                        }
                    }
                }
            }
            @if let Some(r) = self.result {
                (self.phases(r))
                (self.accuracy(r))
                (self.paired(r))
                (self.pictures(r))
            }
        }
    }

    fn summary(&self) -> Markup {
        let j = self.job;
        html! {
            dl class="facts" {
                dt { "Status" } dd { span class="status" data-status=(j.status) { (j.status) } }
                dt { "Model" } dd { (j.model) }
                dt { "Task" } dd { (j.task.as_deref().or(j.dataset.as_deref()).unwrap_or("-")) }
                dt { "Owner" } dd { (j.owner) " (" (j.visibility.name()) ")" }
                dt { "Attempts" } dd { (j.attempts) }
                @if let Some(Some(v)) = &j.pruned_model {
                    dt { "Variant" }
                    dd {
                        @if self.offline { code { (v) } } @else { a href={"/variants/" (v)} { (v) } }
                        @if j.pruned_model_deleted == Some(true) { " (deleted)" }
                    }
                }
            }
            @if let Some(h) = j.hyperparameters.as_ref().and_then(|h| h.as_object()) {
                details {
                    summary { "Hyperparameters" }
                    table {
                        @for (k, v) in h {
                            tr { th scope="row" { (k) } td { code { (v) } } }
                        }
                    }
                }
            }
        }
    }

    fn phases(&self, r: &PruneResult) -> Markup {
        let total: f64 = r.seconds.values().sum();
        html! {
            section {
                h2 { "Phases" }
                table id="phases" {
                    thead { tr { th { "phase" } th { "seconds" } th { "share" } } }
                    tbody {
                        @for (phase, s) in &r.seconds {
                            tr { td { (phase) } td class="num" { (format!("{s:.2}")) }
                                 td class="num" { (format!("{:.0}%", 100.0 * s / total.max(1e-9))) } }
                        }
                        tr { th { "total" } th class="num" { (format!("{total:.2}")) } td {} }
                    }
                }
                p { (r.candidates) " candidate singular values; " (r.scored_examples) " examples scored"
                    @if let Some(p) = &r.precision { " in " (p) } "; test size " (r.test_size) "." }
            }
        }
    }

    fn accuracy(&self, r: &PruneResult) -> Markup {
        let method = self.analysis.map_or("after", |a| a.method.as_str());
        let mut series: Vec<String> = vec!["before".into(), method.into()];
        for c in r.portions.iter().flat_map(|p| &p.controls) {
            if !series.contains(&c.method) {
                series.push(c.method.clone());
            }
        }
        let groups: Vec<BarGroup> = r
            .portions
            .iter()
            .map(|p| {
                let mut bars = vec![
                    (
                        0,
                        r.accuracy_before.accuracy,
                        format!("before: {}", pct(&r.accuracy_before)),
                    ),
                    (
                        1,
                        p.accuracy_after.accuracy,
                        format!("{method}: {}", pct(&p.accuracy_after)),
                    ),
                ];
                for c in &p.controls {
                    let s = series.iter().position(|x| x == &c.method).unwrap_or(0);
                    bars.push((
                        s,
                        c.accuracy.accuracy,
                        format!("{} control: {}", c.method, pct(&c.accuracy)),
                    ));
                }
                BarGroup {
                    label: format!("portion {}", p.portion),
                    bars,
                }
            })
            .collect();
        let names: Vec<&str> = series.iter().map(String::as_str).collect();
        html! {
            section id="accuracy-section" {
                h2 { "Accuracy" }
                (charts::grouped_bars("accuracy-chart", "Test accuracy (paper metric) before and after, per portion", &names, &groups, 1.0, "accuracy"))
                table id="accuracy" {
                    thead { tr { th { "portion" } th { "pruned" } th { "before" } th { "after" } th { "choice before" } th { "choice after" } th { "controls" } } }
                    tbody {
                        @for p in &r.portions {
                            tr {
                                td class="num" { (p.portion) } td class="num" { (p.pruned) }
                                td { (pct(&r.accuracy_before)) } td { (pct(&p.accuracy_after)) }
                                td { (choice(&r.accuracy_before)) } td { (choice(&p.accuracy_after)) }
                                td {
                                    @if p.controls.is_empty() { "not run" }
                                    @for c in &p.controls { (c.method) ": " (pct(&c.accuracy)) br; }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn paired(&self, r: &PruneResult) -> Markup {
        let items = self.analysis.map(|a| &a.test_items);
        html! {
            section id="paired" {
                h2 { "Is the change more than noise?" }
                p { "Exact McNemar test of after against before on the same test items (two-sided): only the items that changed count." }
                @for p in &r.portions {
                    @match stats::mcnemar(&r.accuracy_before.right, &p.accuracy_after.right) {
                        None => p { "Portion " (p.portion) ": no per-item results stored (a job older than this page)." },
                        Some(t) => {
                            h3 { "Portion " (p.portion) }
                            p class="paired" data-gained=(t.gained.len()) data-lost=(t.lost.len()) data-p=(t.p_value) {
                                (t.gained.len()) " gained, " (t.lost.len()) " lost: p = " (format!("{:.4}", t.p_value))
                                @if t.p_value < 0.05 { " (unlikely to be noise at 5%)" } @else { " (could be noise)" }
                            }
                            @for (what, list) in [("Gained", &t.gained), ("Lost", &t.lost)] {
                                @if !list.is_empty() {
                                    details {
                                        summary { (what) " (" (list.len()) ")" }
                                        ol {
                                            @for &i in list.iter() {
                                                li { "#" (i) ": "
                                                    @if let Some(item) = items.and_then(|it| it.get(i)) {
                                                        q { (item.prompt) } " → " code { (item.answer) }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn pictures(&self, r: &PruneResult) -> Markup {
        let Some(a) = self.analysis else {
            return html! { section { h2 { "What was pruned" } p { "No analysis is stored for this job (it ran before the dashboard)." } } };
        };
        let pi = self
            .pick
            .portion
            .unwrap_or(0)
            .min(r.portions.len().saturating_sub(1));
        let Some(portion) = r.portions.get(pi) else {
            return html! {};
        };
        let cut = a.cutoff(portion.portion);
        let layers = portion.pruned_per_layer.len();
        html! {
            section id="pictures" {
                h2 { "What was pruned at portion " (portion.portion) }
                @if r.portions.len() > 1 && !self.offline {
                    form method="get" class="inline" {
                        label for="portion" { "Portion" }
                        select id="portion" name="portion" {
                            @for (i, p) in r.portions.iter().enumerate() {
                                option value=(i) selected[i == pi] { (p.portion) }
                            }
                        }
                        button type="submit" { "Show" }
                    }
                }
                h3 { "Pruned singular values per layer" }
                (charts::grouped_bars("per-layer-chart", "Pruned singular values per layer", &["pruned"],
                    &portion.pruned_per_layer.iter().enumerate().map(|(l, &n)| BarGroup { label: if layers <= 16 || l % 4 == 0 { l.to_string() } else { String::new() }, bars: vec![(0, n as f64, format!("layer {l}: {n}"))] }).collect::<Vec<_>>(),
                    portion.pruned_per_layer.iter().copied().max().unwrap_or(1).max(1) as f64, "pruned"))
                @for comp in a.components() {
                    h3 { "Component " code { (comp) } }
                    (charts::heatmap(&format!("heatmap-{comp}"), &format!("Pruned singular values of {comp} per layer and head"), &heat_counts(a, comp, cut, layers), "head"))
                    (score_histogram(a, comp, cut))
                }
                (self.spectrum(a, cut))
            }
        }
    }

    fn spectrum(&self, a: &Analysis, cut: u32) -> Markup {
        // The chosen head, else the one with the most pruned.
        let chosen = a.heads.iter().find(|h| {
            Some(&h.component) == self.pick.component.as_ref()
                && Some(h.layer) == self.pick.layer
                && Some(h.head) == self.pick.head
        });
        let most = || {
            a.heads
                .iter()
                .max_by_key(|h| h.rank.iter().filter(|&&r| r < cut).count())
        };
        let Some(h) = chosen.or_else(most) else {
            return html! {};
        };
        let pruned: Vec<bool> = h.rank.iter().map(|&r| r < cut).collect();
        let max_layer = a.heads.iter().map(|h| h.layer).max().unwrap_or(0);
        let max_head = a.heads.iter().map(|h| h.head).max().unwrap_or(0);
        html! {
            h3 { "Spectrum of " code { (h.component) } " layer " (h.layer) " head " (h.head) }
            @if !self.offline {
                form method="get" class="inline" id="spectrum-form" {
                    @if let Some(p) = self.pick.portion { input type="hidden" name="portion" value=(p); }
                    label for="component" { "Component" }
                    select id="component" name="component" {
                        @for c in a.components() { option selected[c == h.component] { (c) } }
                    }
                    label for="layer" { "Layer" }
                    input id="layer" name="layer" type="number" min="0" max=(max_layer) value=(h.layer);
                    label for="head" { "Head" }
                    input id="head" name="head" type="number" min="0" max=(max_head) value=(h.head);
                    button type="submit" { "Show" }
                }
            }
            (charts::spectrum("spectrum-chart", &format!("Singular values of {} layer {} head {}", h.component, h.layer, h.head), &h.singular_values, &pruned))
        }
    }
}

/// Pruned counts of `comp` as [layer][head].
fn heat_counts(a: &Analysis, comp: &str, cut: u32, layers: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); layers];
    for h in a.heads.iter().filter(|h| h.component == comp) {
        if h.layer >= out.len() {
            out.resize(h.layer + 1, Vec::new());
        }
        let row = &mut out[h.layer];
        if row.len() <= h.head {
            row.resize(h.head + 1, 0);
        }
        row[h.head] = h.rank.iter().filter(|&&r| r < cut).count();
    }
    out
}

fn score_histogram(a: &Analysis, comp: &str, cut: u32) -> Markup {
    let heads = a.heads.iter().filter(|h| h.component == comp);
    let (mut values, mut pruned) = (Vec::new(), Vec::new());
    for h in heads {
        values.extend(&h.scores);
        pruned.extend(h.rank.iter().map(|&r| r < cut));
    }
    let bins = stats::histogram(&values, &pruned, 40);
    // Attribution ranks every candidate by score: the cut is the largest pruned score overall.
    let threshold = (a.method == "attribution")
        .then(|| {
            a.heads
                .iter()
                .flat_map(|h| h.scores.iter().zip(&h.rank))
                .filter(|(_, &r)| r < cut)
                .map(|(&v, _)| v as f64)
                .reduce(f64::max)
        })
        .flatten();
    charts::histogram(
        &format!("histogram-{comp}"),
        &format!("Scores of {comp}'s singular values"),
        &bins,
        threshold,
    )
}

/// The job page as one self-contained HTML file (the CLI's `--report`): the same sections and
/// charts, inline style, no script, nothing fetched.
pub fn standalone_report(
    job: &Job,
    result: &serde_json::Value,
    analysis: &serde_json::Value,
) -> String {
    let result: Option<PruneResult> = serde_json::from_value(result.clone()).ok();
    let analysis: Option<Analysis> = serde_json::from_value(analysis.clone()).ok();
    let body = JobPage {
        job,
        result: result.as_ref(),
        analysis: analysis.as_ref(),
        pick: &Pick::default(),
        offline: true,
        can_cancel: false,
    }
    .render();
    super::layout::standalone(
        &format!(
            "eigenprune: {} on {}",
            job.model,
            job.task.as_deref().unwrap_or("")
        ),
        body,
    )
    .into_string()
}
