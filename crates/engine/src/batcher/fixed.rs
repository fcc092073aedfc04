//! The running batch over a fixed cache ([`FixedDecoder`]): each row keeps a decoder row (a
//! slot) from its prefill to its end, so a step is one upload of the rows' tokens and
//! positions and, on a GPU, one CUDA graph launch; greedy rows read their token from one copy
//! of every row's argmax. The decoder grows, copying the running rows over: rows to the next
//! power of two when an arrival does not fit, positions to twice as many when a row fills
//! them. A batch with variants steps eagerly with their corrections.

use std::sync::Arc;

use super::{choose, emit, BatchEdits, Row, Sampled};
use crate::edit::Edit;
use crate::fixed_decode::FixedDecoder;
use crate::transformer::{KvCache, Transformer};
use crate::Result;

#[derive(Default)]
pub(super) struct FixedBatch {
    decoder: Option<FixedDecoder>,
    /// The decoder row of each running row, in the batch's order.
    slots: Vec<usize>,
}

/// The fewest positions a decoder is made with.
const MIN_CAPACITY: usize = 16;

impl FixedBatch {
    /// Adds the newly prefilled rows (`rows`' last `own.rows()`, whose left-padded cache is
    /// `own`) to the decoder, growing it first when they do not fit.
    pub(super) fn join(&mut self, model: &Transformer, rows: &[Row], own: KvCache) -> Result<()> {
        let first_new = self.slots.len();
        let singles = (0..own.rows())
            .map(|i| own.select(&[i]))
            .collect::<Result<Vec<_>>>()?;
        // Room for every row's next token; the decoder doubles when a row fills it (not sized
        // for max_tokens up front: most requests stop early, and the cache is rows x positions).
        let mut need = 0;
        for i in 0..rows.len() {
            let held = match i.checked_sub(first_new) {
                Some(j) => singles[j].len(),
                None => self.held(self.slots[i]),
            };
            need = need.max(held + 1);
        }
        let capacity = need
            .next_power_of_two()
            .max(MIN_CAPACITY)
            .min(model.config.max_positions);
        let fits = self
            .decoder
            .as_ref()
            .is_some_and(|d| d.kv().rows() >= rows.len() && d.kv().capacity() >= capacity);
        if !fits {
            self.grow(model, rows.len().next_power_of_two(), capacity)?;
        }
        let decoder = self.decoder.as_mut().expect("a decoder after growing");
        for single in &singles {
            let slot = decoder
                .kv()
                .free_slot()
                .expect("the decoder has a row for every running row");
            decoder.load_row(slot, single)?;
            self.slots.push(slot);
        }
        Ok(())
    }

    fn held(&self, slot: usize) -> usize {
        self.decoder
            .as_ref()
            .and_then(|d| d.kv().length(slot))
            .unwrap_or(0)
    }

    /// A decoder of at least `rows` rows and `capacity` positions holding the running rows.
    fn grow(&mut self, model: &Transformer, rows: usize, capacity: usize) -> Result<()> {
        let (rows, capacity) = match &self.decoder {
            Some(d) => (rows.max(d.kv().rows()), capacity.max(d.kv().capacity())),
            None => (rows, capacity),
        };
        let mut grown = FixedDecoder::new(model, rows, capacity)?;
        if let Some(old) = &self.decoder {
            for (new_slot, slot) in self.slots.iter_mut().enumerate() {
                grown.copy_row(new_slot, old, *slot)?;
                *slot = new_slot;
            }
        }
        self.decoder = Some(grown);
        Ok(())
    }

    /// One decoding step for every row; finished rows leave the batch and free their slot.
    pub(super) fn step(
        &mut self,
        model: &Transformer,
        rows: &mut Vec<Row>,
        batch_edits: &mut BatchEdits,
    ) -> Result<()> {
        let longest = self.slots.iter().map(|&s| self.held(s)).max().unwrap_or(0);
        let capacity = self.decoder.as_ref().map_or(0, |d| d.kv().capacity());
        if longest >= capacity && capacity < model.config.max_positions {
            let doubled = (2 * capacity).min(model.config.max_positions);
            self.grow(model, self.slots.len(), doubled)?;
        }
        let decoder = self.decoder.as_mut().expect("rows imply a decoder");
        let mut tokens = vec![0u32; decoder.kv().rows()];
        let mut variants: Vec<Option<&Arc<Edit>>> = vec![None; tokens.len()];
        for (row, &slot) in rows.iter().zip(&self.slots) {
            tokens[slot] = row.last;
            variants[slot] = row.variant.as_ref();
        }
        let edits = batch_edits.for_variants(model, &variants)?;
        decoder.step_with(model, &tokens, edits)?;
        let plain = |r: &Row| r.params.plain_greedy() && r.params.logprobs.is_none();
        let greedy = match rows.iter().any(plain) {
            true => decoder.greedy()?,
            false => Vec::new(),
        };
        let mut stays = Vec::with_capacity(rows.len());
        for (row, &slot) in rows.iter_mut().zip(&self.slots) {
            let token = if plain(row) {
                let id = greedy[slot];
                *row.counts.entry(id).or_insert(0) += 1;
                Sampled { id, logprob: None }
            } else {
                choose(row, &decoder.logits().get(slot)?)?
            };
            stays.push(emit(row, token));
        }
        let mut kept = stays.iter();
        self.slots.retain(|&slot| {
            let stay = *kept.next().unwrap_or(&false);
            if !stay {
                decoder.free_row(slot);
            }
            stay
        });
        let mut kept = stays.into_iter();
        rows.retain(|_| kept.next().unwrap_or(false));
        if rows.is_empty() {
            // An idle model holds no cache on a shared GPU; the next burst makes one again.
            self.decoder = None;
        }
        Ok(())
    }
}
