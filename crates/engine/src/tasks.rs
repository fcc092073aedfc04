//! Tasks: the paper's five (prompts and label words verbatim from its reference code) and
//! custom JSONL. SuperGLUE data is embedded in the binary (see data/superglue/README.md).

use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::Deserialize;

use crate::{EngineError, Result};

/// One scored example: `prompt` followed by `answer` (teacher-forced when multi-token).
/// Fixed-choice tasks also carry the label words and which one is right.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub prompt: String,
    pub answer: String,
    pub choices: Option<Vec<String>>,
    pub label: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct Task {
    pub name: String,
    pub train: Vec<Example>,
    pub test: Vec<Example>,
}

pub const BUILTIN_TASKS: &[&str] = &["int-sum", "int-mult", "cb", "copa", "rte"];

/// The split of the integer tasks is fixed (seed 0) so every job sees the same test set.
const INT_SPLIT_SEED: u64 = 0;

pub fn builtin(name: &str) -> Result<Task> {
    let (train, test) = match name {
        "int-sum" => int_task(100, "+", |i, j| i + j),
        "int-mult" => int_task(20, "x", |i, j| i * j),
        "cb" => (
            superglue(include_str!("../../../data/superglue/cb/train.jsonl"), cb)?,
            superglue(
                include_str!("../../../data/superglue/cb/validation.jsonl"),
                cb,
            )?,
        ),
        "copa" => (
            superglue(
                include_str!("../../../data/superglue/copa/train.jsonl"),
                copa,
            )?,
            superglue(
                include_str!("../../../data/superglue/copa/validation.jsonl"),
                copa,
            )?,
        ),
        "rte" => (
            superglue(include_str!("../../../data/superglue/rte/train.jsonl"), rte)?,
            superglue(
                include_str!("../../../data/superglue/rte/validation.jsonl"),
                rte,
            )?,
        ),
        other => {
            return Err(EngineError::InvalidInput(format!(
                "unknown task `{other}` (built-in: {})",
                BUILTIN_TASKS.join(", ")
            )))
        }
    };
    Ok(Task {
        name: name.to_string(),
        train,
        test,
    })
}

fn int_task(n: u64, op: &str, f: impl Fn(u64, u64) -> u64) -> (Vec<Example>, Vec<Example>) {
    let mut all: Vec<Example> = (0..n)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .map(|(i, j)| Example {
            prompt: format!("{i} {op} {j} ="),
            answer: format!(" {}", f(i, j)),
            choices: None,
            label: None,
        })
        .collect();
    all.shuffle(&mut StdRng::seed_from_u64(INT_SPLIT_SEED));
    let test = all.split_off(all.len() * 4 / 5);
    (all, test)
}

#[derive(Deserialize)]
struct SuperGlueRow {
    premise: String,
    #[serde(default)]
    hypothesis: String,
    #[serde(default)]
    choice1: String,
    #[serde(default)]
    choice2: String,
    #[serde(default)]
    question: String,
    label: serde_json::Value,
}

fn superglue(text: &str, make: fn(SuperGlueRow) -> Option<Example>) -> Result<Vec<Example>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            let row: SuperGlueRow = serde_json::from_str(line).map_err(|e| {
                EngineError::InvalidInput(format!("embedded data line {}: {e}", i + 1))
            })?;
            make(row).ok_or_else(|| {
                EngineError::InvalidInput(format!("embedded data line {}: unknown label", i + 1))
            })
        })
        .collect()
}

fn choice_example(prompt: String, words: &[&str], label: usize) -> Example {
    Example {
        prompt,
        answer: words[label].to_string(),
        choices: Some(words.iter().map(|w| w.to_string()).collect()),
        label: Some(label),
    }
}

fn cb(r: SuperGlueRow) -> Option<Example> {
    let label = ["entailment", "contradiction", "neutral"]
        .iter()
        .position(|l| r.label.as_str() == Some(l))?;
    let prompt = format!(
        "Premise: {}\n\nHypothesis: {}\n\nDoes the premise entail, contradict or is neutral to the hypothesis?\nAnswer (entails, contradicts, is neutral): The premise",
        r.premise, r.hypothesis
    );
    Some(choice_example(
        prompt,
        &[" entails", " contradicts", " is neutral"],
        label,
    ))
}

fn rte(r: SuperGlueRow) -> Option<Example> {
    let label = ["entailment", "not_entailment"]
        .iter()
        .position(|l| r.label.as_str() == Some(l))?;
    let prompt = format!(
        "Premise: {}\n\nHypothesis: {}\n\nDoes the premise entail or contradict to the hypothesis?\nAnswer (entails or contradicts): The premise",
        r.premise, r.hypothesis
    );
    Some(choice_example(prompt, &[" entails", " contradicts"], label))
}

fn copa(r: SuperGlueRow) -> Option<Example> {
    let label = r.label.as_u64().filter(|&l| l < 2)? as usize;
    let question = match r.question.as_str() {
        "cause" => "What was the cause of this?",
        "effect" => "What happened as a result?",
        _ => return None,
    };
    let prompt = format!(
        "Premise: {}\n{}\n\nAlternative 1: {}\nAlternative 2: {}\n\nWhat is the correct alternative?\nThe correct alternative is alternative",
        r.premise, question, r.choice1, r.choice2
    );
    Some(choice_example(prompt, &[" 1", " 2"], label))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomRow {
    prompt: String,
    answer: Option<String>,
    choices: Option<Vec<String>>,
    label: Option<usize>,
}

/// Parses a custom JSONL data set: rows of `{"prompt", "answer"}` or
/// `{"prompt", "choices", "label"}`. The first bad line is reported; nothing is half-loaded.
pub fn parse_jsonl(text: &str) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| EngineError::InvalidInput(format!("line {}: {why}", i + 1));
        let row: CustomRow = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        if row.prompt.is_empty() {
            return Err(bad("empty prompt".into()));
        }
        let example = match (row.answer, row.choices, row.label) {
            (Some(answer), None, None) if !answer.is_empty() => Example {
                prompt: row.prompt,
                answer,
                choices: None,
                label: None,
            },
            (None, Some(choices), Some(label)) if label < choices.len() && choices.len() >= 2 => {
                if choices.iter().any(String::is_empty) {
                    return Err(bad("empty choice".into()));
                }
                Example {
                    prompt: row.prompt,
                    answer: choices[label].clone(),
                    choices: Some(choices),
                    label: Some(label),
                }
            }
            _ => {
                return Err(bad(
                    "expected {\"prompt\", \"answer\"} or {\"prompt\", \"choices\" (2 or more), \"label\" (an index into choices)}".into(),
                ))
            }
        };
        out.push(example);
    }
    if out.is_empty() {
        return Err(EngineError::InvalidInput("the data set has no rows".into()));
    }
    Ok(out)
}

/// A custom task: a seeded 80/20 split of one JSONL file.
pub fn custom(name: &str, text: &str, seed: u64) -> Result<Task> {
    let mut rows = parse_jsonl(text)?;
    if rows.len() < 2 {
        return Err(EngineError::InvalidInput(
            "a custom data set needs at least 2 rows (train and test)".into(),
        ));
    }
    rows.shuffle(&mut StdRng::seed_from_u64(seed));
    let test = rows.split_off((rows.len() * 4 / 5).max(1));
    Ok(Task {
        name: name.to_string(),
        train: rows,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_sizes_match_the_paper() {
        for (name, train, test) in [
            ("int-sum", 8000, 2000),
            ("int-mult", 320, 80),
            ("cb", 250, 56),
            ("copa", 400, 100),
            ("rte", 2490, 277),
        ] {
            let t = builtin(name).unwrap();
            assert_eq!((t.train.len(), t.test.len()), (train, test), "{name}");
        }
    }

    #[test]
    fn prompts_are_verbatim() {
        let mult = builtin("int-mult").unwrap();
        let e = &mult.test[0];
        let (i, j) = e.prompt.trim_end_matches(" =").split_once(" x ").unwrap();
        let (i, j): (u64, u64) = (i.parse().unwrap(), j.parse().unwrap());
        assert_eq!(e.answer, format!(" {}", i * j));
        let copa = builtin("copa").unwrap();
        assert!(copa.train[0].prompt.starts_with(
            "Premise: My body cast a shadow over the grass.\nWhat was the cause of this?\n\nAlternative 1: The sun was rising."
        ));
        assert_eq!(copa.train[0].answer, " 1");
        let cb = builtin("cb").unwrap();
        assert!(cb.train[0]
            .prompt
            .ends_with("Answer (entails, contradicts, is neutral): The premise"));
    }

    #[test]
    fn bad_jsonl_names_its_line_and_loads_nothing() {
        let text = "{\"prompt\": \"a\", \"answer\": \" b\"}\n{\"prompt\": \"c\"}\n";
        let err = parse_jsonl(text).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = parse_jsonl("{\"prompt\": \"a\", \"choices\": [\" x\", \" y\"], \"label\": 2}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(parse_jsonl("not json")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        let ok = parse_jsonl("{\"prompt\": \"a\", \"choices\": [\" x\", \" y\"], \"label\": 1}")
            .unwrap();
        assert_eq!(ok[0].answer, " y");
    }
}
