//! Tokenising examples and packing them into padded batches (dynamic padding: each batch is
//! as long as its longest row).

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::tasks::Example;
use crate::{EngineError, Result};

/// A prompt and one continuation, as token ids.
#[derive(Clone, Debug)]
pub struct Sequence {
    pub prompt: Vec<u32>,
    pub answer: Vec<u32>,
}

impl Sequence {
    pub fn len(&self) -> usize {
        self.prompt.len() + self.answer.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn tokens(&self) -> Vec<u32> {
        [self.prompt.as_slice(), self.answer.as_slice()].concat()
    }
    /// What a teacher-forced answer loss feeds: the prompt and the answer but its last token
    /// (every answer token is then predicted from an input position).
    pub fn inputs(&self) -> Vec<u32> {
        let mut t = self.tokens();
        t.pop();
        t
    }
}

pub fn encode(tok: &Tokenizer, prompt: &str, answer: &str) -> Result<Sequence> {
    let e = |x: tokenizers::Error| EngineError::Tokenizer(x.to_string());
    let prompt = tok.encode(prompt, true).map_err(e)?.get_ids().to_vec();
    let answer = tok.encode(answer, false).map_err(e)?.get_ids().to_vec();
    if prompt.is_empty() || answer.is_empty() {
        return Err(EngineError::InvalidInput(
            "a prompt or answer tokenises to nothing".into(),
        ));
    }
    Ok(Sequence { prompt, answer })
}

/// The sequence an example is scored on (its gold answer).
pub fn encode_example(tok: &Tokenizer, ex: &Example) -> Result<Sequence> {
    encode(tok, &ex.prompt, &ex.answer)
}

/// A padded batch: ids [B, T], validity flags, and where each row's tokens start.
pub struct Packed {
    pub ids: Tensor,
    pub valid: Vec<Vec<bool>>,
    pub starts: Vec<usize>,
    pub width: usize,
}

/// Pads rows to the longest; left padding aligns the ends (the answer positions) of the rows.
pub fn pack(rows: &[Vec<u32>], left: bool, pad_id: u32, device: &Device) -> Result<Packed> {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut valid = Vec::with_capacity(rows.len());
    let mut starts = Vec::with_capacity(rows.len());
    for row in rows {
        let pad = width - row.len();
        let start = if left { pad } else { 0 };
        let mut flags = vec![false; width];
        flags[start..start + row.len()].fill(true);
        let mut r = vec![pad_id; width];
        r[start..start + row.len()].copy_from_slice(row);
        ids.extend(r);
        valid.push(flags);
        starts.push(start);
    }
    Ok(Packed {
        ids: Tensor::from_vec(ids, (rows.len(), width), device)?,
        valid,
        starts,
        width,
    })
}

/// Flat indices into [B*T] of the positions whose logits predict each answer token,
/// with the token each must predict.
pub fn answer_targets(seqs: &[&Sequence], packed: &Packed) -> (Vec<u32>, Vec<u32>) {
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (b, s) in seqs.iter().enumerate() {
        let base = b * packed.width + packed.starts[b] + s.prompt.len() - 1;
        for (i, &tok) in s.answer.iter().enumerate() {
            rows.push((base + i) as u32);
            targets.push(tok);
        }
    }
    (rows, targets)
}
