//! The form that submits a pruning job: the API's own request type and validation behind it, its
//! errors shown next to the fields they name, and nothing submitted while any field is wrong.

use std::collections::BTreeMap;

use axum::extract::Multipart;
use bytes::Bytes;
use eigenprune_engine::prune::Method;
use eigenprune_engine::tasks::BUILTIN_TASKS;
use eigenprune_engine::Component;
use maud::{html, Markup};

use crate::hyper::{Hyperparameters, PortionSpec};
use crate::identity::Visibility;

/// What the form holds, as typed (kept to show again with the errors).
#[derive(Clone, Debug)]
pub struct JobForm {
    pub model: String,
    /// A built-in task, or an uploaded data set's id.
    pub task: String,
    pub upload: Option<(String, Bytes)>,
    pub portion: String,
    pub components: Vec<String>,
    pub method: String,
    pub batch_size: String,
    pub seed: String,
    pub scoring_batches: String,
    pub controls: bool,
    pub suffix: String,
    pub visibility: String,
}

impl Default for JobForm {
    fn default() -> Self {
        let d = Hyperparameters::default();
        Self {
            model: String::new(),
            task: "int-mult".into(),
            upload: None,
            portion: d.portion.to_arg(),
            components: d.components,
            method: d.method,
            batch_size: d.batch_size.to_string(),
            seed: d.seed.to_string(),
            scoring_batches: String::new(),
            controls: false,
            suffix: String::new(),
            visibility: "private".into(),
        }
    }
}

/// Field -> message.
pub type FieldErrors = BTreeMap<String, String>;

/// The fields that show their own errors; any other error is shown at the top of the form.
const FIELDS: &[&str] = &[
    "model",
    "task",
    "dataset",
    "jsonl",
    "portion",
    "components",
    "method",
    "batch_size",
    "scoring_batches",
    "seed",
    "suffix",
];

impl JobForm {
    pub async fn read(mut body: Multipart) -> Result<Self, String> {
        let mut f = Self {
            components: Vec::new(),
            ..Self::default()
        };
        while let Some(field) = body.next_field().await.map_err(|e| e.body_text())? {
            let name = field.name().unwrap_or_default().to_string();
            if name == "jsonl" {
                let file = field.file_name().unwrap_or("upload.jsonl").to_string();
                let data = field.bytes().await.map_err(|e| e.body_text())?;
                if !data.is_empty() {
                    f.upload = Some((file, data));
                }
                continue;
            }
            let value = field.text().await.map_err(|e| e.body_text())?;
            match name.as_str() {
                "model" => f.model = value,
                "task" => f.task = value,
                "portion" => f.portion = value,
                "components" => f.components.push(value),
                "method" => f.method = value,
                "batch_size" => f.batch_size = value,
                "seed" => f.seed = value,
                "scoring_batches" => f.scoring_batches = value,
                "controls" => f.controls = true,
                "suffix" => f.suffix = value,
                "visibility" => f.visibility = value,
                _ => {}
            }
        }
        Ok(f)
    }

    /// The hyperparameters, or every field's error found before the API is asked.
    pub fn hyperparameters(&self) -> Result<Hyperparameters, FieldErrors> {
        let mut errors = FieldErrors::new();
        let mut number = |field: &str, text: &str| -> Option<u64> {
            match text.trim().parse::<u64>() {
                Ok(v) => Some(v),
                Err(_) => {
                    errors.insert(field.into(), "must be a whole number".into());
                    None
                }
            }
        };
        let batch_size = number("batch_size", &self.batch_size);
        let seed = number("seed", &self.seed);
        let scoring_batches = if self.scoring_batches.trim().is_empty() {
            None
        } else {
            number("scoring_batches", &self.scoring_batches)
        };
        let portion = parse_portion(&self.portion);
        if portion.is_none() {
            errors.insert(
                "portion".into(),
                "a number in [0, 1], a comma list of them, or auto".into(),
            );
        }
        let d = Hyperparameters::default();
        let hyper = Hyperparameters {
            portion: portion.unwrap_or(d.portion.clone()),
            batch_size: batch_size.unwrap_or(0) as usize,
            components: self.components.clone(),
            method: self.method.clone(),
            seed: seed.unwrap_or(0),
            scoring_batches: scoring_batches.map(|v| v as usize),
            controls: self.controls,
            ..d
        };
        if let Err(e) = hyper.to_settings() {
            errors.entry(e.param.into()).or_insert(e.message);
        }
        if errors.is_empty() {
            Ok(hyper)
        } else {
            Err(errors)
        }
    }

    pub fn visibility(&self) -> Visibility {
        Visibility::parse(&self.visibility)
    }
}

/// "auto", one number, or a comma list of numbers (the API checks their range).
fn parse_portion(text: &str) -> Option<PortionSpec> {
    let text = text.trim();
    if text == "auto" {
        return Some(PortionSpec::Named("auto".into()));
    }
    let numbers: Vec<f64> = text
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .ok()?;
    match numbers.as_slice() {
        [] => None,
        [one] => Some(PortionSpec::Fixed(*one)),
        _ => Some(PortionSpec::Several(numbers)),
    }
}

/// The error shown under a field (the input names it in `aria-describedby`).
fn field_error(errors: &FieldErrors, field: &str) -> Markup {
    html! {
        @if let Some(e) = errors.get(field) {
            p class="field-error" id={(field) "-error"} { (e) }
        }
    }
}

/// A labelled text input with its error tied to it.
fn text_field(errors: &FieldErrors, name: &str, label: &str, value: &str, numeric: bool) -> Markup {
    let bad = errors.contains_key(name);
    html! {
        div class="field" {
            label for=(name) { (label) }
            input id=(name) name=(name) value=(value) inputmode=[numeric.then_some("numeric")]
                aria-invalid=[bad.then_some("true")] aria-describedby=[bad.then(|| format!("{name}-error"))];
            (field_error(errors, name))
        }
    }
}

/// The form, with its values and errors. `datasets` are (id, name) the caller may use.
pub fn render(
    form: &JobForm,
    errors: &FieldErrors,
    models: &[String],
    datasets: &[(String, String)],
) -> Markup {
    let invalid = |f: &str| errors.contains_key(f).then_some("true");
    let described = |f: &str| errors.contains_key(f).then(|| format!("{f}-error"));
    html! {
        form id="job-form" class="stack" method="post" action="/jobs/new" enctype="multipart/form-data" novalidate {
            @for (field, e) in errors.iter().filter(|(f, _)| !FIELDS.contains(&f.as_str())) {
                p class="error" role="alert" id="form-error" {
                    @if field != "form" { code { (field) } ": " }
                    (e)
                }
            }
            div class="field" {
                label for="model" { "Model" }
                select id="model" name="model" aria-invalid=[invalid("model")] aria-describedby=[described("model")] {
                    @for m in models { option selected[*m == form.model] { (m) } }
                }
                (field_error(errors, "model"))
            }
            div class="field" {
                label for="task" { "Task" }
                select id="task" name="task" aria-invalid=[invalid("task")] aria-describedby=[described("task")] {
                    optgroup label="built-in" {
                        @for t in BUILTIN_TASKS { option selected[*t == form.task] { (t) } }
                    }
                    @if !datasets.is_empty() {
                        optgroup label="uploaded" {
                            @for (id, name) in datasets { option value=(id) selected[*id == form.task] { (name) } }
                        }
                    }
                }
                (field_error(errors, "task"))
                (field_error(errors, "dataset"))
            }
            div class="field" {
                label for="jsonl" { "Or upload a JSONL data set" }
                input id="jsonl" name="jsonl" type="file" accept=".jsonl,application/jsonl,text/plain"
                    aria-invalid=[invalid("jsonl")] aria-describedby=[described("jsonl")];
                p class="hint" { "Rows of {\"prompt\", \"answer\"} or {\"prompt\", \"choices\", \"label\"}; it replaces the task above." }
                (field_error(errors, "jsonl"))
            }
            div class="field" {
                label for="portion" { "Portion(s)" }
                input id="portion" name="portion" value=(form.portion) aria-invalid=[invalid("portion")] aria-describedby=[described("portion")];
                p class="hint" { "A share of candidates in [0, 1], a comma list (one sweep serves all; the variant is the first), or auto." }
                (field_error(errors, "portion"))
            }
            fieldset aria-invalid=[invalid("components")] aria-describedby=[described("components")] {
                legend { "Components" }
                @for c in Component::ALL {
                    label { input type="checkbox" name="components" value=(c.name()) checked[form.components.iter().any(|x| x == c.name())]; " " (c.name()) }
                    " "
                }
                (field_error(errors, "components"))
            }
            div class="field" {
                label for="method" { "Method" }
                select id="method" name="method" aria-invalid=[invalid("method")] {
                    @for m in Method::ALL { option selected[m.name() == form.method] { (m.name()) } }
                }
                (field_error(errors, "method"))
            }
            label { input type="checkbox" name="controls" value="on" checked[form.controls]; " Also evaluate the controls (random and smallest, or the other two methods)" }
            (text_field(errors, "batch_size", "Scoring batch size", &form.batch_size, true))
            (text_field(errors, "scoring_batches", "Scoring batches (empty: all of train)", &form.scoring_batches, true))
            (text_field(errors, "seed", "Seed", &form.seed, true))
            (text_field(errors, "suffix", "Variant name suffix (optional)", &form.suffix, false))
            div class="field" {
                label for="visibility" { "Visibility" }
                select id="visibility" name="visibility" {
                    option value="private" selected[form.visibility != "lab"] { "private (you and admins)" }
                    option value="lab" selected[form.visibility == "lab"] { "lab (every user)" }
                }
            }
            button type="submit" id="submit-job" { "Submit job" }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portions_parse_as_the_api_takes_them() {
        assert_eq!(
            parse_portion(" auto "),
            Some(PortionSpec::Named("auto".into()))
        );
        assert_eq!(parse_portion("0.2"), Some(PortionSpec::Fixed(0.2)));
        assert_eq!(
            parse_portion("0.05, 0.1"),
            Some(PortionSpec::Several(vec![0.05, 0.1]))
        );
        assert_eq!(parse_portion("lots"), None);
        assert_eq!(parse_portion(""), None);
    }

    #[test]
    fn every_bad_field_is_named_and_the_range_is_the_apis() {
        let form = JobForm {
            portion: "2".into(),
            batch_size: "x".into(),
            components: vec!["k".into()],
            ..JobForm::default()
        };
        let errors = form.hyperparameters().unwrap_err();
        assert_eq!(errors["batch_size"], "must be a whole number");
        // batch_size failed to parse, so the API's check ran on 0 and named batch_size too;
        // the portion's range is the API's message.
        let form = JobForm {
            portion: "2".into(),
            components: vec!["k".into()],
            ..JobForm::default()
        };
        let errors = form.hyperparameters().unwrap_err();
        assert!(errors["portion"].contains("outside [0, 1]"), "{errors:?}");
        let ok = JobForm {
            components: vec!["k".into(), "v".into()],
            ..JobForm::default()
        };
        assert_eq!(ok.hyperparameters().unwrap().components, ["k", "v"]);
    }

    #[test]
    fn an_error_of_no_field_shows_at_the_top() {
        let errors = FieldErrors::from([
            ("portion".to_string(), "bad portion".to_string()),
            ("pass_tokens".to_string(), "too many".to_string()),
        ]);
        let html = render(&JobForm::default(), &errors, &["m".into()], &[]).into_string();
        assert!(html.contains("id=\"portion-error\"") && html.contains("bad portion"));
        let top = html.find("id=\"form-error\"").expect("a form-level error");
        assert!(html[top..].contains("too many"));
        assert!(
            top < html.find("id=\"portion\"").unwrap(),
            "shown before the fields"
        );
    }
}
