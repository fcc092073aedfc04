//! Decoding steps over a [`FixedKv`]. A step uploads the rows' token ids and positions into
//! one fixed buffer (one copy) and runs [`Transformer::forward_fixed`], the output projection
//! and the argmax into fixed output buffers. On a GPU the step is captured once as a CUDA
//! graph and replayed: one launch instead of a dozen kernels a layer, each a few microseconds
//! of launch. Its attention kernel reads each row's length on the device, so one graph serves
//! every length; where that kernel does not serve (a cache past its shared memory), one graph
//! per attention length (a power of two from 16 up to the capacity). Elsewhere, or with
//! `EIGENPRUNE_CUDA_GRAPHS=0`, the same step runs eagerly.

use candle_core::{DType, Tensor};

use crate::fixed_kv::{self, FixedKv};
use crate::row_edits::RowEdits;
use crate::transformer::{KvCache, Transformer};
use crate::Result;

/// The smallest attention length a step reads.
const MIN_KEYS: usize = 16;

/// Whether decoding on `device` replays CUDA graphs: a GPU of a CUDA build, unless
/// `EIGENPRUNE_CUDA_GRAPHS=0`.
pub fn graphs_enabled(device: &candle_core::Device) -> bool {
    cfg!(feature = "cuda")
        && device.is_cuda()
        && std::env::var("EIGENPRUNE_CUDA_GRAPHS").map_or(true, |v| v != "0")
}

/// Whether decoding steps of `model` go over a fixed cache: on a GPU when they replay CUDA
/// graphs (`graphs`), on the CPU whenever the attention op serves its dtype (f32; eager steps,
/// no cache grown by concatenation).
pub fn fixed_steps(model: &Transformer, graphs: bool) -> bool {
    match model.device().is_cuda() {
        true => graphs,
        false => fixed_kv::fused_attention(model, model.config.max_positions),
    }
}

pub struct FixedDecoder {
    kv: FixedKv,
    /// [2 * rows] u32: token ids, then positions.
    inputs: Tensor,
    /// [rows, vocab] f32 logits of the last step.
    logits: Tensor,
    /// [rows] u32: the last step's argmax per row.
    next: Tensor,
    /// Whether steps are captured as CUDA graphs.
    graphs: bool,
    /// Captured steps by attention length.
    #[cfg(feature = "cuda")]
    captured: std::collections::HashMap<usize, crate::cuda_graph::Graph>,
}

impl FixedDecoder {
    /// A decoder of `rows` rows of up to `capacity` positions for `model`; steps are CUDA
    /// graphs when the model is on a GPU and `EIGENPRUNE_CUDA_GRAPHS` is not `0`.
    pub fn new(model: &Transformer, rows: usize, capacity: usize) -> Result<Self> {
        Self::with_graphs(model, rows, capacity, graphs_enabled(model.device()))
    }

    /// [`Self::new`] choosing whether to capture graphs (only on a GPU).
    pub fn with_graphs(
        model: &Transformer,
        rows: usize,
        capacity: usize,
        graphs: bool,
    ) -> Result<Self> {
        let device = model.device();
        let kv = FixedKv::new(model, rows, capacity)?;
        Ok(Self {
            kv,
            inputs: fixed_kv::step_inputs(rows, device)?,
            logits: Tensor::zeros((rows, model.config.vocab_size), DType::F32, device)?,
            next: Tensor::zeros(rows, DType::U32, device)?,
            graphs: graphs && cfg!(feature = "cuda") && device.is_cuda(),
            #[cfg(feature = "cuda")]
            captured: Default::default(),
        })
    }

    pub fn kv(&self) -> &FixedKv {
        &self.kv
    }

    /// Copies row `from_row` of another decoder of the same model into `row`.
    pub fn copy_row(&mut self, row: usize, from: &FixedDecoder, from_row: usize) -> Result<()> {
        self.kv.copy_row(row, &from.kv, from_row)
    }

    /// Whether steps replay CUDA graphs.
    pub fn uses_graphs(&self) -> bool {
        self.graphs
    }

    /// Whether its steps' attention is one kernel reading lengths on the device (one graph
    /// for every length) rather than masked products over a power-of-two length.
    pub fn fused_attention(&self, model: &Transformer) -> bool {
        fixed_kv::fused_attention(model, self.kv.capacity())
    }

    /// Graphs captured so far (one per attention length used).
    pub fn graphs_captured(&self) -> usize {
        #[cfg(feature = "cuda")]
        return self.captured.len();
        #[cfg(not(feature = "cuda"))]
        0
    }

    /// Puts a prompt's prefill cache (one row, no padding) into `row`.
    pub fn load_row(&mut self, row: usize, cache: &KvCache) -> Result<()> {
        self.kv.load_row(row, cache)
    }

    pub fn free_row(&mut self, row: usize) {
        self.kv.free_row(row)
    }

    /// Runs one step: `tokens[row]` follows each held row (ignored for free rows). Then
    /// [`Self::greedy`] or [`Self::logits`] read its result.
    pub fn step(&mut self, model: &Transformer, tokens: &[u32]) -> Result<()> {
        self.step_with(model, tokens, None)
    }

    /// [`Self::step`] of a batch mixing the base and its variants: `edits` has a row per
    /// decoder row (free rows the base's). Runs eagerly (a composition's corrections are not
    /// captured).
    pub fn step_with(
        &mut self,
        model: &Transformer,
        tokens: &[u32],
        edits: Option<&RowEdits>,
    ) -> Result<()> {
        let rows = self.kv.rows();
        if tokens.len() != rows {
            return Err(crate::EngineError::InvalidInput(format!(
                "{} tokens for {rows} rows",
                tokens.len()
            )));
        }
        let (positions, keys) = self.kv.next_positions()?;
        let mut inputs = tokens.to_vec();
        inputs.extend_from_slice(&positions);
        fixed_kv::upload(&self.inputs, &inputs)?;
        // The fused attention reads lengths on the device: one graph serves every length.
        let keys = match fixed_kv::fused_attention(model, self.kv.capacity()) {
            true => self.kv.capacity(),
            false => keys
                .next_power_of_two()
                .max(MIN_KEYS)
                .min(self.kv.capacity()),
        };
        match edits {
            Some(e) => self.step_once(model, keys, Some(e))?,
            None => self.run(model, keys)?,
        }
        self.kv.advance();
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn run(&mut self, model: &Transformer, keys: usize) -> Result<()> {
        if !self.graphs {
            return self.step_once(model, keys, None);
        }
        if !self.captured.contains_key(&keys) {
            let graph = crate::cuda_graph::Graph::capture(model.device(), || {
                self.step_once(model, keys, None)
            })?;
            self.captured.insert(keys, graph);
        }
        self.captured[&keys].launch()
    }

    #[cfg(not(feature = "cuda"))]
    fn run(&mut self, model: &Transformer, keys: usize) -> Result<()> {
        self.step_once(model, keys, None)
    }

    /// One step from the fixed inputs into the fixed outputs (logits, argmax).
    fn step_once(&self, model: &Transformer, keys: usize, edits: Option<&RowEdits>) -> Result<()> {
        let rows = self.kv.rows();
        let ids = self.inputs.narrow(0, 0, rows)?.reshape((rows, 1))?;
        let positions = self.inputs.narrow(0, rows, rows)?;
        let hidden = model.forward_fixed(&ids, &positions, &self.kv, keys, edits)?;
        let logits = model
            .decoding_logits(&hidden)?
            .reshape((rows, model.config.vocab_size))?
            .to_dtype(DType::F32)?;
        let next = logits.argmax_keepdim(1)?.reshape(rows)?;
        self.logits.slice_set(&logits, 0, 0)?;
        self.next.slice_set(&next, 0, 0)?;
        Ok(())
    }

    /// The last step's argmax of every row (free rows' values are meaningless).
    pub fn greedy(&self) -> Result<Vec<u32>> {
        Ok(self.next.to_vec1::<u32>()?)
    }

    /// The last step's logits, [rows, vocab] f32, in the decoder's own buffer (the next step
    /// overwrites it: copy what must outlive it).
    pub fn logits(&self) -> &Tensor {
        &self.logits
    }
}

#[cfg(feature = "cuda")]
impl Drop for FixedDecoder {
    fn drop(&mut self) {
        // Graphs go only after their last launch has finished.
        if !self.captured.is_empty() {
            let _ = self.logits.device().synchronize();
        }
    }
}
