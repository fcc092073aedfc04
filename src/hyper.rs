//! Pruning hyperparameters as users write them (CLI flags and the jobs API), validated into
//! the engine's settings with stable error codes.

use eigenprune_engine::attribution::{Aggregate, InputMode, Precision};
use eigenprune_engine::finetune::FinetuneSettings;
use eigenprune_engine::pipeline::{Portion, PruneSettings};
use eigenprune_engine::prune::{BiasMode, Method};
use eigenprune_engine::Component;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The largest `pass_tokens` a job may ask for (the document's maximum says the same).
pub const MAX_PASS_TOKENS: usize = 1 << 20;

/// A portion: a number in [0, 1], "auto", or a list of numbers (one sweep serves them all;
/// the variant is the first's).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(untagged)]
pub enum PortionSpec {
    Fixed(f64),
    Named(String),
    Several(Vec<f64>),
}

/// The most portions one job evaluates.
pub const MAX_PORTIONS: usize = 16;

/// How a job prunes; every field has a default.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
#[schema(default)]
pub struct Hyperparameters {
    /// Share of the candidate singular values pruned, in [0, 1], or "auto" (chosen on a dev
    /// split carved from train), or a list of up to 16 shares (each evaluated; the variant is
    /// the first's).
    pub portion: PortionSpec,
    /// Examples per scoring batch (>= 2: the corruption pairs examples within a batch).
    #[schema(minimum = 2)]
    pub batch_size: usize,
    /// Padded tokens per forward/backward pass of the sweep: groups of batch_size examples
    /// share a pass up to this many, each scored as if alone (the scores do not change; 0:
    /// one group per pass). Larger passes are faster on a GPU and hold more memory. Default:
    /// on a GPU the largest of 16384, 8192, 4096 and 2048 whose memory estimate takes at most
    /// half of the free memory; one group per pass on the CPU.
    #[schema(minimum = 0, maximum = 1048576)]
    pub pass_tokens: Option<usize>,
    /// What the sweep's forward and backward compute in: f32, tf32 (f32 with tensor-core
    /// products; a GPU only) or bf16 (scores, norms' statistics, softmax and loss stay f32).
    /// Unless f32, the job's evaluations take TF32 products on a GPU. Default: tf32 on a GPU,
    /// f32 on the CPU.
    pub precision: Option<String>,
    /// Matrices pruned: k, q, v, o, mlp_in, mlp_out.
    pub components: Vec<String>,
    /// attribution, random or smallest.
    pub method: String,
    /// normed or resid_pre.
    pub input: String,
    /// max, mean or mean_abs.
    pub aggregate: String,
    /// mean or none.
    pub bias: String,
    pub seed: u64,
    /// Score on this many batches only (default: all of train).
    #[schema(minimum = 1)]
    pub scoring_batches: Option<usize>,
    /// Examples per evaluation pass, at least (clamped to 1..=256); on a GPU a pass takes more
    /// while its padded tokens stay within the sweep's `pass_tokens`.
    pub eval_batch_size: usize,
    /// Full fine-tuning before pruning; None (the default) prunes the base model as is.
    pub finetune: Option<Finetune>,
    /// Also evaluate the controls (the other two of attribution, random and smallest) at every
    /// portion; the variant is still `method`'s.
    pub controls: bool,
}

/// `{"epochs": N, "lr": F}` (and optionally batch_size, weight_decay).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Finetune {
    #[schema(minimum = 1, maximum = 100)]
    pub epochs: usize,
    #[schema(exclusive_minimum = 0.0, exclusive_maximum = 1.0)]
    pub lr: f64,
    pub batch_size: Option<usize>,
    pub weight_decay: Option<f64>,
}

impl Finetune {
    fn to_settings(&self) -> Result<FinetuneSettings, Invalid> {
        let mut s = FinetuneSettings::new(self.epochs, self.lr);
        s.batch_size = self.batch_size.unwrap_or(s.batch_size);
        s.weight_decay = self.weight_decay.unwrap_or(s.weight_decay);
        s.validate()
            .map_err(|e| invalid("invalid_finetune", e.to_string()))?;
        Ok(s)
    }
}

impl Default for Hyperparameters {
    /// The engine's defaults ([`PruneSettings::default`]), as users write them.
    fn default() -> Self {
        let d = PruneSettings::default();
        let portion = match d.portions.first() {
            Some(Portion::Fixed(p)) => PortionSpec::Fixed(*p),
            _ => PortionSpec::Named("auto".into()),
        };
        Self {
            portion,
            batch_size: d.batch_size,
            pass_tokens: d.pass_tokens,
            precision: d.precision.map(|p| p.name().into()),
            components: d.components.iter().map(|c| c.name().to_string()).collect(),
            method: d.method.name().into(),
            input: d.input.name().into(),
            aggregate: d.aggregate.name().into(),
            bias: d.bias.name().into(),
            seed: d.seed,
            scoring_batches: d.scoring_batches,
            eval_batch_size: d.eval_batch_size,
            finetune: None,
            controls: d.controls,
        }
    }
}

impl PortionSpec {
    /// As the CLI writes it.
    pub fn to_arg(&self) -> String {
        match self {
            Self::Fixed(v) => v.to_string(),
            Self::Named(s) => s.clone(),
            Self::Several(v) => v.iter().map(f64::to_string).collect::<Vec<_>>().join(","),
        }
    }
}

/// A validation failure: a stable machine-readable code and a message.
#[derive(Debug)]
pub struct Invalid {
    pub code: &'static str,
    /// The hyperparameter at fault.
    pub param: &'static str,
    pub message: String,
}

fn invalid(code: &'static str, message: String) -> Invalid {
    let param = match code {
        "invalid_finetune" => "finetune",
        "unknown_component" => "components",
        c => c.trim_start_matches("invalid_"),
    };
    Invalid {
        code,
        param,
        message,
    }
}

pub fn parse_portion(p: &PortionSpec) -> Result<Portion, Invalid> {
    match p {
        PortionSpec::Fixed(v) if (0.0..=1.0).contains(v) => Ok(Portion::Fixed(*v)),
        PortionSpec::Named(s) if s == "auto" => Ok(Portion::Auto),
        PortionSpec::Named(s) => match s.parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => Ok(Portion::Fixed(v)),
            _ => Err(invalid(
                "invalid_portion",
                format!("portion `{s}` must be a number in [0, 1] or \"auto\""),
            )),
        },
        PortionSpec::Fixed(v) => Err(invalid(
            "invalid_portion",
            format!("portion {v} is outside [0, 1]"),
        )),
        PortionSpec::Several(_) => Err(invalid(
            "invalid_portion",
            "a portion list cannot hold another list".into(),
        )),
    }
}

/// Every portion a spec names, in order.
pub fn parse_portions(p: &PortionSpec) -> Result<Vec<Portion>, Invalid> {
    match p {
        PortionSpec::Several(v) if v.is_empty() || v.len() > MAX_PORTIONS => Err(invalid(
            "invalid_portion",
            format!("a portion list holds 1 to {MAX_PORTIONS} numbers"),
        )),
        PortionSpec::Several(v) => v
            .iter()
            .map(|x| parse_portion(&PortionSpec::Fixed(*x)))
            .collect(),
        one => Ok(vec![parse_portion(one)?]),
    }
}

/// The variant of `all` named `v`, or the error `code` listing the names.
fn pick<T: Copy>(
    code: &'static str,
    v: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<T, Invalid> {
    all.iter().copied().find(|&x| name(x) == v).ok_or_else(|| {
        let names: Vec<&str> = all.iter().map(|&x| name(x)).collect();
        invalid(
            code,
            format!("unknown value `{v}` (one of {})", names.join(", ")),
        )
    })
}

impl Hyperparameters {
    /// Settings for one portion (the API's); the CLI adds more portions itself.
    pub fn to_settings(&self) -> Result<PruneSettings, Invalid> {
        if self.batch_size < 2 {
            return Err(invalid(
                "invalid_batch_size",
                "batch_size must be at least 2: with 1 the corrupted input equals the input and every score is 0".into(),
            ));
        }
        if self.components.is_empty() {
            return Err(invalid(
                "unknown_component",
                "components must not be empty".into(),
            ));
        }
        let components = self
            .components
            .iter()
            .map(|c| {
                Component::parse(c.trim()).ok_or_else(|| {
                    invalid(
                        "unknown_component",
                        format!("unknown component `{c}` (k, q, v, o, mlp_in, mlp_out)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let method = pick("invalid_method", &self.method, &Method::ALL, Method::name)?;
        let input = pick(
            "invalid_input",
            &self.input,
            &InputMode::ALL,
            InputMode::name,
        )?;
        let aggregate = pick(
            "invalid_aggregate",
            &self.aggregate,
            &Aggregate::ALL,
            Aggregate::name,
        )?;
        let bias = pick("invalid_bias", &self.bias, &BiasMode::ALL, BiasMode::name)?;
        if self.pass_tokens.is_some_and(|p| p > MAX_PASS_TOKENS) {
            return Err(invalid(
                "invalid_pass_tokens",
                format!("pass_tokens must be at most {MAX_PASS_TOKENS}"),
            ));
        }
        let precision = self
            .precision
            .as_deref()
            .map(|p| pick("invalid_precision", p, &Precision::ALL, Precision::name))
            .transpose()?;
        if self.scoring_batches == Some(0) {
            return Err(invalid(
                "invalid_scoring_batches",
                "scoring_batches must be at least 1".into(),
            ));
        }
        Ok(PruneSettings {
            components,
            portions: parse_portions(&self.portion)?,
            batch_size: self.batch_size,
            pass_tokens: self.pass_tokens,
            precision,
            method,
            input,
            aggregate,
            bias,
            seed: self.seed,
            scoring_batches: self.scoring_batches,
            eval_batch_size: self.eval_batch_size.clamp(1, 256),
            svd_cache: None,
            finetune: self
                .finetune
                .as_ref()
                .map(Finetune::to_settings)
                .transpose()?,
            controls: self.controls,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_documented_epoch_bound_is_the_engines() {
        let doc = crate::openapi::spec();
        let epochs = &doc["components"]["schemas"]["Finetune"]["properties"]["epochs"];
        assert_eq!(
            epochs["maximum"].as_u64(),
            Some(eigenprune_engine::finetune::MAX_EPOCHS as u64),
            "{epochs}"
        );
        let pass = &doc["components"]["schemas"]["Hyperparameters"]["properties"]["pass_tokens"];
        assert_eq!(
            pass["maximum"].as_u64(),
            Some(super::MAX_PASS_TOKENS as u64),
            "{pass}"
        );
    }
}
