//! The one forward pass behind every architecture, with an optional trace and KV cache.
//!
//! Serving uses candle's fused kernels; a traced forward (one that will be differentiated)
//! uses the same kernels with a backward attached ([`crate::grad_ops`]).

use candle_core::{DType, Device, Tensor};

use crate::config::{Activation, ModelConfig, NormKind};
use crate::fixed_kv::FixedKv;
use crate::row_edits::RowEdits;
use crate::trace::{Component, Trace};
use crate::weights::{Linear, Norm, Weights};
use crate::{EngineError, Result};

/// Added to the attention scores of keys a query must not see.
const MASKED: f32 = -1e9;

#[derive(Clone)]
pub struct Transformer {
    pub config: ModelConfig,
    pub weights: Weights,
    /// (cos, sin), [max_positions, rotary_dims / 2] each; None for learned positions.
    rope: Option<(Tensor, Tensor)>,
    /// The local layers' (cos, sin) when their rotary base differs (Gemma-3).
    rope_local: Option<(Tensor, Tensor)>,
}

/// Keys and values of past positions, per layer, plus which of them are real (not padding).
#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Per row: one flag per cached position.
    valid: Vec<Vec<bool>>,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.valid.first().map_or(0, Vec::len)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Rows (sequences) held.
    pub fn rows(&self) -> usize {
        self.valid.len()
    }

    /// This cache's rows followed by `other`'s; the shorter is left-padded with positions
    /// marked as padding, so every row keeps its own positions.
    pub fn concat(self, other: KvCache) -> Result<KvCache> {
        if self.valid.is_empty() {
            return Ok(other);
        }
        if other.valid.is_empty() {
            return Ok(self);
        }
        let t = self.len().max(other.len());
        let (a, b) = (self.left_pad(t)?, other.left_pad(t)?);
        let mut layers = Vec::with_capacity(a.layers.len());
        for (x, y) in a.layers.into_iter().zip(b.layers) {
            layers.push(match (x, y) {
                (Some((ka, va)), Some((kb, vb))) => {
                    Some((Tensor::cat(&[&ka, &kb], 0)?, Tensor::cat(&[&va, &vb], 0)?))
                }
                _ => None,
            });
        }
        let mut valid = a.valid;
        valid.extend(b.valid);
        Ok(KvCache { layers, valid })
    }

    /// Only the given rows, dropping leading positions that are padding in all of them.
    pub fn select(&self, rows: &[usize]) -> Result<KvCache> {
        let valid: Vec<Vec<bool>> = rows.iter().map(|&r| self.valid[r].clone()).collect();
        let skip = valid
            .iter()
            .map(|v| v.iter().take_while(|&&ok| !ok).count())
            .min()
            .unwrap_or(0);
        let keep = self.len() - skip;
        let valid = valid.into_iter().map(|v| v[skip..].to_vec()).collect();
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        // One index tensor for every layer, on the cache's device.
        let idx = match self.layers.iter().flatten().next() {
            Some((k, _)) => Some(Tensor::new(idx.as_slice(), k.device())?),
            None => None,
        };
        let pick = |x: &Tensor| -> candle_core::Result<Tensor> {
            let idx = idx.as_ref().expect("a cached layer implies an index");
            x.index_select(idx, 0)?.narrow(2, skip, keep)?.contiguous()
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            layers.push(match layer {
                Some((k, v)) => Some((pick(k)?, pick(v)?)),
                None => None,
            });
        }
        Ok(KvCache { layers, valid })
    }

    /// The length and per-layer (keys, values) of a one-row cache without padding (a
    /// prompt's prefill).
    pub(crate) fn single_row(&self) -> Result<(usize, Vec<(Tensor, Tensor)>)> {
        if self.valid.len() != 1 || self.valid[0].iter().any(|&ok| !ok) {
            return Err(EngineError::InvalidInput(
                "not a one-row cache without padding".into(),
            ));
        }
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.clone()
                    .ok_or_else(|| EngineError::InvalidInput("an empty cache".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((self.len(), layers))
    }

    fn left_pad(self, t: usize) -> Result<KvCache> {
        let pad = t - self.len();
        if pad == 0 {
            return Ok(self);
        }
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in self.layers {
            layers.push(match layer {
                Some((k, v)) => {
                    let front = |x: &Tensor| -> candle_core::Result<Tensor> {
                        let (b, h, _, d) = x.dims4()?;
                        let zeros = Tensor::zeros((b, h, pad, d), x.dtype(), x.device())?;
                        Tensor::cat(&[&zeros, x], 2)
                    };
                    Some((front(&k)?, front(&v)?))
                }
                None => None,
            });
        }
        let valid = self
            .valid
            .into_iter()
            .map(|v| std::iter::repeat_n(false, pad).chain(v).collect())
            .collect();
        Ok(KvCache { layers, valid })
    }
}

struct Step<'a> {
    /// [B*T] u32 position of every new token.
    positions: Tensor,
    /// [B, 1, T, Tk] additive mask, or None when every key is visible.
    mask: Option<Tensor>,
    /// The same for sliding-window layers, when they differ from the others.
    local_mask: Option<Tensor>,
    /// Rotary (cos, sin) rows of the new tokens' positions, [B*T, rotary/2], global and
    /// sliding-window tables: looked up once per forward, not per layer.
    rope: Option<(Tensor, Tensor)>,
    rope_local: Option<(Tensor, Tensor)>,
    differentiable: bool,
    /// One new token a row after cached ones: the linear maps may read quantised blocks
    /// ([`Linear::forward_decoding`]).
    decoding: bool,
    trace: Option<&'a mut Trace>,
    /// Per-row corrections of a batch mixing the base and its variants.
    edits: Option<&'a RowEdits>,
}

/// Where a layer keeps the keys and values of a forward.
enum LayerKv<'a> {
    /// Not kept (scoring).
    None,
    /// Appended to a growing cache (concatenated).
    Growing(&'a mut Option<(Tensor, Tensor)>),
    /// Written in place into a [`FixedKv`] layer at each row's position; attention reads its
    /// first `keys` positions.
    Fixed {
        k: &'a Tensor,
        v: &'a Tensor,
        positions: &'a Tensor,
        keys: usize,
    },
}

impl Transformer {
    pub fn new(config: ModelConfig, weights: Weights) -> Result<Self> {
        config.validate()?;
        let device = weights.embed.device().clone();
        let dtype = weights.embed.dtype();
        let tables = |theta: Option<f64>| match theta {
            Some(theta) if config.rotary_dims > 0 => {
                rope_tables(&config, theta, &device, dtype).map(Some)
            }
            _ => Ok(None),
        };
        let rope = tables(Some(config.rope_theta))?;
        let rope_local = tables(config.rope_local_theta)?;
        Ok(Self {
            config,
            weights,
            rope,
            rope_local,
        })
    }

    pub fn device(&self) -> &Device {
        self.weights.embed.device()
    }

    /// The dtype the weights (and so the activations) are in.
    pub fn dtype(&self) -> DType {
        self.weights.embed.dtype()
    }

    /// The same model serving its dense weights only (no quantised copies).
    pub fn dense(&self) -> Self {
        let mut m = self.clone();
        m.weights = m.weights.dense();
        m
    }

    /// A copy with every weight and table in `dtype` (the same model when it already is).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let mut m = self.clone();
        m.weights.map_parameters(|_, t| Ok(t.to_dtype(dtype)?))?;
        let cast = |r: &Option<(Tensor, Tensor)>| -> Result<Option<(Tensor, Tensor)>> {
            Ok(match r {
                Some((c, s)) => Some((c.to_dtype(dtype)?, s.to_dtype(dtype)?)),
                None => None,
            })
        };
        m.rope = cast(&m.rope)?;
        m.rope_local = cast(&m.rope_local)?;
        Ok(m)
    }

    /// Runs the blocks over `ids` [B, T] and returns the final normed hidden states [B, T, D].
    /// `valid[b][t]` is false for padding. With a cache, `ids` continue the cached rows.
    /// With a trace, the chosen maps are recorded and the result can be differentiated.
    pub fn forward(
        &self,
        ids: &Tensor,
        valid: &[Vec<bool>],
        cache: Option<&mut KvCache>,
        trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        self.run(ids, valid, cache, trace, None)
    }

    /// [`Transformer::forward`] of a batch whose rows are the base or its variants: `edits`
    /// adds each row's correction to every map its variant edits (serving only, no trace).
    pub fn forward_with_edits(
        &self,
        ids: &Tensor,
        valid: &[Vec<bool>],
        cache: Option<&mut KvCache>,
        edits: &RowEdits,
    ) -> Result<Tensor> {
        if edits.rows() != ids.dim(0)? {
            return Err(EngineError::InvalidInput(format!(
                "{} rows of edits for a batch of {}",
                edits.rows(),
                ids.dim(0)?
            )));
        }
        self.run(ids, valid, cache, None, Some(edits))
    }

    fn run(
        &self,
        ids: &Tensor,
        valid: &[Vec<bool>],
        cache: Option<&mut KvCache>,
        trace: Option<&mut Trace>,
        edits: Option<&RowEdits>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if valid.len() != b || valid.iter().any(|r| r.len() != t) {
            return Err(EngineError::InvalidInput(
                "validity mask does not match the input ids".into(),
            ));
        }
        let mut cache = cache;
        if let Some(c) = cache.as_deref_mut() {
            if c.valid.is_empty() {
                c.valid = vec![Vec::new(); b];
                c.layers = vec![None; self.config.n_layers];
            } else if c.valid.len() != b {
                return Err(EngineError::InvalidInput(
                    "batch size differs from the cache's".into(),
                ));
            }
        }
        let past: Vec<Vec<bool>> = cache
            .as_deref()
            .map_or_else(|| vec![Vec::new(); b], |c| c.valid.clone());
        let (positions, mask, local_mask) = self.positions_and_mask(&past, valid)?;
        if let Some(c) = cache.as_deref_mut() {
            for (row, new) in c.valid.iter_mut().zip(valid) {
                row.extend_from_slice(new);
            }
        }
        let differentiable = trace.is_some();
        let decoding = t == 1 && !past.is_empty() && past.iter().all(|p| !p.is_empty());
        let mut step = Step {
            rope: self.rope_rows(&self.rope, &positions)?,
            rope_local: self.rope_rows(&self.rope_local, &positions)?,
            positions,
            mask,
            local_mask,
            differentiable,
            decoding,
            trace,
            edits,
        };
        let mut h = self.embed(ids, &step.positions)?;
        for layer in 0..self.config.n_layers {
            let kv = match cache.as_deref_mut() {
                Some(c) => LayerKv::Growing(&mut c.layers[layer]),
                None => LayerKv::None,
            };
            h = self.block(layer, &h, kv, &mut step)?;
        }
        Ok(self.norm(&h, &self.weights.final_norm, differentiable)?)
    }

    /// One decoding step over a [`FixedKv`]: `ids` [B, 1] follow each row's cached tokens,
    /// `positions` [B] u32 (on the device) are their positions (each row's length), and
    /// attention reads the first `keys` positions of every row, masked on the device by
    /// position. Every input is a device buffer: the same kernels on the same addresses each
    /// step (what a CUDA graph replays). `edits`: per-row corrections of a batch mixing the
    /// base and its variants. Returns the final normed hidden states [B, 1, D].
    pub fn forward_fixed(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        kv: &FixedKv,
        keys: usize,
        edits: Option<&RowEdits>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let edit_rows = edits.map_or(b, RowEdits::rows);
        if t != 1
            || b != kv.rows()
            || positions.dims() != [b]
            || keys > kv.capacity()
            || edit_rows != b
        {
            return Err(EngineError::InvalidInput(format!(
                "a fixed step of ids {:?}, positions {:?} and {keys} keys over a cache of {} rows x {}",
                ids.dims(),
                positions.dims(),
                kv.rows(),
                kv.capacity()
            )));
        }
        let (main_window, local_window) = self.config.attention_windows();
        // The fused attention reads each row's length itself: no masks.
        let fused = crate::fixed_kv::fused_attention(self, kv.capacity());
        let mask = match fused {
            true => None,
            false => Some(self.fixed_mask(kv, positions, keys, main_window)?),
        };
        let local_mask = match local_window.filter(|_| !fused) {
            Some(w) => Some(self.fixed_mask(kv, positions, keys, Some(w))?),
            None => None,
        };
        let mut step = Step {
            rope: self.rope_rows(&self.rope, positions)?,
            rope_local: self.rope_rows(&self.rope_local, positions)?,
            positions: positions.clone(),
            mask,
            local_mask,
            differentiable: false,
            decoding: true,
            trace: None,
            edits,
        };
        let mut h = self.embed(ids, positions)?;
        for (layer, (k, v)) in kv.layers.iter().enumerate() {
            let kv = LayerKv::Fixed {
                k,
                v,
                positions,
                keys,
            };
            h = self.block(layer, &h, kv, &mut step)?;
        }
        Ok(self.norm(&h, &self.weights.final_norm, false)?)
    }

    /// The embeddings [B, T, D] of `ids` [B, T] at `positions` [B*T] (learned positions added).
    fn embed(&self, ids: &Tensor, positions: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.weights.embed.index_select(&ids.flatten_all()?, 0)?;
        if let Some(scale) = self.config.embed_scale {
            h = (h * scale)?;
        }
        if let Some(pe) = &self.weights.pos_embed {
            h = (h + pe.index_select(positions, 0)?)?;
        }
        h.reshape((ids.dim(0)?, ids.dim(1)?, self.config.d_model))
    }

    /// The additive mask [B, 1, 1, keys] of a fixed step: row b sees key j when j <= its
    /// position (and, with a window, position - j < window), computed on the device.
    fn fixed_mask(
        &self,
        kv: &FixedKv,
        positions: &Tensor,
        keys: usize,
        window: Option<usize>,
    ) -> candle_core::Result<Tensor> {
        let b = positions.dim(0)?;
        let key_pos = kv.key_positions.narrow(0, 0, keys)?.unsqueeze(0)?;
        let query = positions.unsqueeze(1)?;
        let mut seen = key_pos.broadcast_le(&query)?;
        if let Some(w) = window {
            // j > position - w, as j + w > position (no unsigned underflow).
            let shifted = kv.key_positions_plus(w)?.narrow(0, 0, keys)?.unsqueeze(0)?;
            seen = (seen * shifted.broadcast_gt(&query)?)?;
        }
        // 1 -> 0, 0 -> MASKED.
        let mask = seen
            .to_dtype(DType::F32)?
            .affine(-(MASKED as f64), MASKED as f64)?;
        mask.to_dtype(self.dtype())?.reshape((b, 1, 1, keys))
    }

    /// Logits [.., vocab] of hidden states [.., D].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.weights.lm_head.forward(hidden)?)
    }

    /// [`Self::logits`] of a decoding step (from the output projection's quantised blocks,
    /// where kept).
    pub fn decoding_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.weights.lm_head.forward_decoding(hidden)?)
    }

    fn block(&self, layer: usize, h: &Tensor, kv: LayerKv, step: &mut Step) -> Result<Tensor> {
        let blk = &self.weights.blocks[layer];
        let decoding = step.decoding;
        let map = |l: &Linear, x: &Tensor| match decoding {
            true => l.forward_decoding(x),
            false => l.forward(x),
        };
        let x = self.norm(h, &blk.ln1, step.differentiable)?;
        let q = step.tap(layer, Component::Q, &x, Some(h), map(&blk.q, &x)?)?;
        let k = step.tap(layer, Component::K, &x, Some(h), map(&blk.k, &x)?)?;
        let v = step.tap(layer, Component::V, &x, Some(h), map(&blk.v, &x)?)?;
        let ctx = self.attention(layer, &q, &k, &v, kv, step)?;
        let mut attn_out = step.tap(layer, Component::O, &ctx, None, map(&blk.o, &ctx)?)?;
        if let Some(n) = &blk.post_attn_norm {
            attn_out = self.norm(&attn_out, n, step.differentiable)?;
        }
        let (mlp_in, mlp_resid) = match &blk.ln2 {
            None => (x, h.clone()),
            Some(ln2) => {
                let mid = crate::grad_ops::add(h, &attn_out)?;
                (self.norm(&mid, ln2, step.differentiable)?, mid)
            }
        };
        let up = map(&blk.up, &mlp_in)?;
        let up = step.tap(layer, Component::MlpIn, &mlp_in, Some(&mlp_resid), up)?;
        let act = match &blk.gate {
            Some(gate) => (step.activate(&map(gate, &mlp_in)?, self.config.activation)? * &up)?,
            None => step.activate(&up, self.config.activation)?,
        };
        let mut down = step.tap(layer, Component::MlpOut, &act, None, map(&blk.down, &act)?)?;
        if let Some(n) = &blk.post_mlp_norm {
            down = self.norm(&down, n, step.differentiable)?;
        }
        let add = crate::grad_ops::add;
        Ok(if blk.ln2.is_none() {
            add(&add(h, &attn_out)?, &down)?
        } else {
            add(&mlp_resid, &down)?
        })
    }

    fn attention(
        &self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        kv: LayerKv,
        step: &Step,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, t, _) = q.dims3()?;
        let heads = |x: &Tensor, n: usize| -> candle_core::Result<Tensor> {
            crate::grad_ops::swap_axes12(&x.reshape((b, t, n, c.head_dim))?)
        };
        let blk = &self.weights.blocks[layer];
        let local = c.is_local(layer);
        let (mut q, mut k) = (heads(q, c.n_heads)?, heads(k, c.n_kv_heads)?);
        if let Some(n) = &blk.q_norm {
            q = self.norm(&q, n, step.differentiable)?;
        }
        if let Some(n) = &blk.k_norm {
            k = self.norm(&k, n, step.differentiable)?;
        }
        let q = self.rotate(&q, step, local)?;
        let mut k = self.rotate(&k, step, local)?;
        let mut v = heads(v, c.n_kv_heads)?;
        // (The CUDA matmul needs each operand row- or column-major; a cat can leave neither.)
        k = k.contiguous()?;
        match kv {
            LayerKv::None => {}
            LayerKv::Growing(slot) => {
                if let Some((pk, pv)) = slot.as_ref() {
                    k = Tensor::cat(&[pk, &k], 2)?;
                    v = Tensor::cat(&[pv, &v], 2)?;
                }
                *slot = Some((k.clone(), v.clone()));
            }
            LayerKv::Fixed {
                k: cache_k,
                v: cache_v,
                positions,
                keys,
            } => {
                crate::fixed_kv::write(cache_k, &k, positions)?;
                crate::fixed_kv::write(cache_v, &v, positions)?;
                if crate::fixed_kv::fused_attention(self, cache_k.dim(2)?) {
                    let window = c.window(layer);
                    let scale = c.query_scale.unwrap_or(1.0 / (c.head_dim as f64).sqrt());
                    let ctx = crate::decode_attention::attention(
                        &q, cache_k, cache_v, positions, scale, window,
                    )?;
                    return Ok(crate::grad_ops::swap_axes12(&ctx)?.reshape((b, t, c.q_dim()))?);
                }
                k = cache_k.narrow(2, 0, keys)?;
                v = cache_v.narrow(2, 0, keys)?;
            }
        }
        // Grouped-query attention without copying keys and values per query head: the `rep`
        // query heads of a key/value head are stacked along the query axis.
        let rep = c.n_heads / c.n_kv_heads;
        let tk = k.dim(2)?;
        let grouped = q.reshape((b, c.n_kv_heads, rep * t, c.head_dim))?;
        let scale = c.query_scale.unwrap_or(1.0 / (c.head_dim as f64).sqrt());
        let raw = crate::grad_ops::matmul_nt(&grouped, &k)?;
        let mask = match &step.local_mask {
            Some(m) if local => Some(m),
            _ => step.mask.as_ref(),
        };
        let probs = if step.differentiable {
            // One node from the raw products to the probabilities, in the grouped layout.
            let mask = mask.map(|m| m.unsqueeze(2)).transpose()?;
            let view = [b, c.n_kv_heads, rep, t, tk];
            crate::grad_ops::masked_softmax(&raw, scale, mask.as_ref(), &view)?
        } else {
            let mut scores = (raw * scale)?.reshape((b, c.n_heads, t, tk))?;
            if let Some(mask) = mask {
                scores = scores.broadcast_add(mask)?;
            }
            candle_nn::ops::softmax_last_dim(&scores)?.reshape((b, c.n_kv_heads, rep * t, tk))?
        };
        let ctx = probs.matmul(&v)?.reshape((b, c.n_heads, t, c.head_dim))?;
        Ok(crate::grad_ops::swap_axes12(&ctx)?.reshape((b, t, c.q_dim()))?)
    }

    /// The rows of rotary `tables` at `positions`.
    fn rope_rows(
        &self,
        tables: &Option<(Tensor, Tensor)>,
        positions: &Tensor,
    ) -> candle_core::Result<Option<(Tensor, Tensor)>> {
        tables
            .as_ref()
            .map(|(cos, sin)| {
                Ok((
                    cos.index_select(positions, 0)?,
                    sin.index_select(positions, 0)?,
                ))
            })
            .transpose()
    }

    /// Rotary embedding (HF "rotate half" layout) on the first `rotary_dims` of each head,
    /// through candle's fused kernel (with a backward when differentiating).
    fn rotate(&self, x: &Tensor, step: &Step, local: bool) -> candle_core::Result<Tensor> {
        let (cos, sin) = match (&step.rope_local, &step.rope) {
            (Some(local_rows), _) if local => local_rows,
            (_, Some(rows)) => rows,
            _ => return Ok(x.clone()),
        };
        let (b, _h, t, _) = x.dims4()?;
        let rot = self.config.rotary_dims;
        let half = rot / 2;
        let (cos, sin) = (cos.reshape((b, t, half))?, sin.reshape((b, t, half))?);
        if step.differentiable {
            crate::grad_ops::rope(x, &cos, &sin, rot)
        } else {
            crate::grad_ops::rotate_first(x, &cos, &sin, rot)
        }
    }

    fn norm(&self, x: &Tensor, n: &Norm, differentiable: bool) -> candle_core::Result<Tensor> {
        let eps = self.config.norm_eps;
        match (self.config.norm, differentiable) {
            (NormKind::RmsNorm, false) => candle_nn::ops::rms_norm(x, &n.weight, eps as f32),
            (NormKind::RmsNorm, true) => crate::grad_ops::rms_norm(x, &n.weight, eps),
            (NormKind::LayerNorm, differentiable) => {
                let zeros;
                let bias = match &n.bias {
                    Some(b) => b,
                    None => {
                        zeros = n.weight.zeros_like()?;
                        &zeros
                    }
                };
                if differentiable {
                    crate::grad_ops::layer_norm(x, &n.weight, bias, eps)
                } else {
                    candle_nn::ops::layer_norm(x, &n.weight, bias, eps as f32)
                }
            }
        }
    }

    /// Positions of the new tokens and the additive attention masks over past + new keys:
    /// the one most layers use and, when some layers attend locally and others globally, the
    /// local layers' one.
    fn positions_and_mask(
        &self,
        past: &[Vec<bool>],
        valid: &[Vec<bool>],
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let b = valid.len();
        let t = valid.first().map_or(0, Vec::len);
        let p = past.first().map_or(0, Vec::len);
        let tk = p + t;
        let mut positions = Vec::with_capacity(b * t);
        let mut key_pos = vec![0u32; b * tk];
        let mut key_ok = vec![false; b * tk];
        for row in 0..b {
            let mut n = 0u32;
            for (j, &ok) in past[row].iter().chain(&valid[row]).enumerate() {
                key_ok[row * tk + j] = ok;
                if ok {
                    key_pos[row * tk + j] = n;
                    n += 1;
                } else {
                    key_pos[row * tk + j] = n.saturating_sub(1);
                }
                if j >= p {
                    positions.push(key_pos[row * tk + j]);
                }
            }
        }
        if let Some(&max) = positions.iter().max() {
            if max as usize >= self.config.max_positions {
                return Err(EngineError::InvalidInput(format!(
                    "sequence of {} tokens exceeds the model's {} positions",
                    max + 1,
                    self.config.max_positions
                )));
            }
        }
        let positions_t = Tensor::from_vec(positions.clone(), b * t, self.device())?;
        let keys = Keys {
            past: p,
            total: tk,
            pos: &key_pos,
            ok: &key_ok,
        };
        let (main_window, local_window) = self.config.attention_windows();
        let mask = self.mask(&positions, valid, &keys, main_window)?;
        let local_mask = match local_window {
            Some(w) => self.mask(&positions, valid, &keys, Some(w))?,
            None => None,
        };
        Ok((positions_t, mask, local_mask))
    }

    /// The additive mask [B, 1, T, Tk] for queries at `positions` over `keys`, each query
    /// seeing real keys at or before it (within `window` positions); None when all are seen.
    fn mask(
        &self,
        positions: &[u32],
        valid: &[Vec<bool>],
        keys: &Keys,
        window: Option<usize>,
    ) -> Result<Option<Tensor>> {
        let b = valid.len();
        let t = valid.first().map_or(0, Vec::len);
        let (p, tk) = (keys.past, keys.total);
        let all_valid = keys.ok.iter().all(|&ok| ok);
        if t == 1 && all_valid && window.is_none_or(|w| tk <= w) {
            return Ok(None);
        }
        let mut mask = vec![MASKED; b * t * tk];
        for row in 0..b {
            for i in 0..t {
                let qi = p + i;
                let qpos = positions[row * t + i];
                for j in 0..=qi {
                    let seen = keys.ok[row * tk + j]
                        && window.is_none_or(|w| (qpos - keys.pos[row * tk + j]) < w as u32);
                    if seen {
                        mask[(row * t + i) * tk + j] = 0.0;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(mask, (b, 1, t, tk), self.device())?;
        Ok(Some(mask.to_dtype(self.dtype())?))
    }
}

/// Every key position of a batch: `past` cached then new; per row, its position and whether
/// it is a real token.
struct Keys<'a> {
    past: usize,
    total: usize,
    pos: &'a [u32],
    ok: &'a [bool],
}

impl Step<'_> {
    fn activate(&self, x: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
        if self.differentiable {
            crate::grad_ops::activation(x, act)
        } else {
            crate::grad_ops::plain_activation(x, act)
        }
    }

    fn tap(
        &mut self,
        layer: usize,
        component: Component,
        input: &Tensor,
        resid_pre: Option<&Tensor>,
        output: Tensor,
    ) -> candle_core::Result<Tensor> {
        let output = match self.trace.as_deref_mut() {
            Some(tr) => tr.tap(layer, component, input, resid_pre, output)?,
            None => output,
        };
        match self.edits {
            Some(e) => e.apply(layer, component, input, output),
            None => Ok(output),
        }
    }
}

/// (cos, sin) tables, computed in f32 and kept in the weights' `dtype`.
fn rope_tables(
    config: &ModelConfig,
    theta: f64,
    device: &Device,
    dtype: DType,
) -> Result<(Tensor, Tensor)> {
    let half = config.rotary_dims / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf(2.0 * i as f64 / config.rotary_dims as f64) as f32)
        .collect();
    let n = config.max_positions;
    let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
    let pos = Tensor::arange(0u32, n as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((n, 1))?;
    let freqs = pos.broadcast_mul(&inv_freq)?;
    Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
}
