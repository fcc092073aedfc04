//! Echo scoring in the batcher: prompts scored teacher-forced, the ones that arrive together
//! in batched forward passes (right-padded, so each row sees the positions it sees alone),
//! rows of the base and of any of its variants mixed.

use std::sync::Arc;

use crate::batch::pack;
use crate::batcher::{check_variant, row_edits, ScoreRequest};
use crate::edit::Edit;
use crate::generate::next_token_logprobs;
use crate::transformer::Transformer;
use crate::Result;

/// Padded tokens one scoring pass takes at most (bounds its activations).
const MAX_PASS_TOKENS: usize = 16_384;

/// Scores every request and replies to each (a failure fails its pass only).
pub(crate) fn score_all(model: &Transformer, mut requests: Vec<ScoreRequest>) {
    requests.retain(|r| {
        let misfit = r
            .variant
            .as_ref()
            .and_then(|e| check_variant(model, e).err());
        match misfit {
            Some(e) => {
                let _ = r.reply.send(Err(e.to_string()));
                false
            }
            None if r.tokens.len() < 2 => {
                let _ = r.reply.send(Ok(Vec::new()));
                false
            }
            None => true,
        }
    });
    requests.sort_by_key(|r| r.tokens.len());
    let mut pass: Vec<ScoreRequest> = Vec::new();
    for r in requests {
        let width = r.tokens.len();
        if !pass.is_empty() && (pass.len() + 1) * width > MAX_PASS_TOKENS {
            run_pass(model, std::mem::take(&mut pass));
        }
        pass.push(r);
    }
    if !pass.is_empty() {
        run_pass(model, pass);
    }
}

fn run_pass(model: &Transformer, pass: Vec<ScoreRequest>) {
    match score_pass(model, &pass) {
        Ok(scored) => {
            for (r, s) in pass.into_iter().zip(scored) {
                let _ = r.reply.send(Ok(s));
            }
        }
        Err(e) => {
            for r in pass {
                let _ = r.reply.send(Err(e.to_string()));
            }
        }
    }
}

fn score_pass(
    model: &Transformer,
    pass: &[ScoreRequest],
) -> Result<Vec<Vec<crate::generate::TokenLogprob>>> {
    let prompts: Vec<Vec<u32>> = pass.iter().map(|r| r.tokens.clone()).collect();
    let packed = pack(&prompts, false, 0, model.device())?;
    let variants: Vec<Option<&Arc<Edit>>> = pass.iter().map(|r| r.variant.as_ref()).collect();
    let hidden = match row_edits(model, &variants, None)? {
        Some(e) => model.forward_with_edits(&packed.ids, &packed.valid, None, &e)?,
        None => model.forward(&packed.ids, &packed.valid, None, None)?,
    };
    pass.iter()
        .enumerate()
        .map(|(i, r)| {
            let n = r.tokens.len();
            let h = hidden.get(i)?.narrow(0, 0, n - 1)?;
            next_token_logprobs(model, &h, &r.tokens[1..], r.top)
        })
        .collect()
}
