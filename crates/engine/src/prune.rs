//! Selection (one global ascending sort of the scores, `portion` of them pruned) and the edit:
//! per head, the removed part R = U diag(s * pruned) Vh leaves E' = E - R; mapped back into the
//! checkpoint's layout (the gamma fold undone) as low-rank factors, with the bias delta that
//! makes the edited map compute exactly xhat E' + b_eff (+ mean(xhat) R with `bias = mean`).

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

use crate::attribution::Scores;
use crate::config::NormKind;
use crate::edit::{Edit, MatrixEdit};
use crate::svd::{site_map, SiteSvd};
use crate::transformer::Transformer;
use crate::{EngineError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Lowest attribution scores first (eigenpruning).
    Attribution,
    /// A seeded random choice of the same count (control).
    Random,
    /// Smallest singular values first, LASER-like (control).
    Smallest,
}

impl Method {
    pub const ALL: [Self; 3] = [Self::Attribution, Self::Random, Self::Smallest];
    pub fn name(self) -> &'static str {
        match self {
            Self::Attribution => "attribution",
            Self::Random => "random",
            Self::Smallest => "smallest",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BiasMode {
    None,
    /// Freeze the removed part's mean effect into the bias.
    Mean,
}

impl BiasMode {
    pub const ALL: [Self; 2] = [Self::Mean, Self::None];
    pub fn name(self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::None => "none",
        }
    }
}

/// Which singular values are pruned, `[site][head][i]`.
#[derive(Clone, Debug)]
pub struct Selection {
    pub pruned: Vec<Vec<Vec<bool>>>,
    pub candidates: usize,
    pub count: usize,
}

/// Every (site, head, i) in (layer, component, head, i) order.
fn all_candidates(svds: &[SiteSvd]) -> Vec<(usize, usize, usize)> {
    svds.iter()
        .enumerate()
        .flat_map(|(si, site)| {
            site.heads
                .iter()
                .enumerate()
                .flat_map(move |(hi, h)| (0..h.rank()).map(move |i| (si, hi, i)))
        })
        .collect()
}

/// Orders candidates by pruning priority for `method`; ties keep (l, c, h, i) order.
pub fn ranking(
    svds: &[SiteSvd],
    scores: &Scores,
    method: Method,
    seed: u64,
) -> Result<Vec<(usize, usize, usize)>> {
    let mut cands = all_candidates(svds);
    match method {
        Method::Attribution => {
            let sc = &scores.scores;
            cands.sort_by(|a, b| sc[a.0][a.1][a.2].total_cmp(&sc[b.0][b.1][b.2]));
        }
        Method::Random => cands.shuffle(&mut StdRng::seed_from_u64(seed)),
        Method::Smallest => {
            let s: Vec<Vec<Vec<f32>>> = svds
                .iter()
                .map(|site| {
                    site.heads
                        .iter()
                        .map(|h| h.s.to_vec1())
                        .collect::<candle_core::Result<_>>()
                })
                .collect::<candle_core::Result<_>>()?;
            cands.sort_by(|a, b| s[a.0][a.1][a.2].total_cmp(&s[b.0][b.1][b.2]));
        }
    }
    Ok(cands)
}

/// The first floor(N * portion) of a ranking.
pub fn select(
    svds: &[SiteSvd],
    ranking: &[(usize, usize, usize)],
    portion: f64,
) -> Result<Selection> {
    if !(0.0..=1.0).contains(&portion) {
        return Err(EngineError::InvalidInput(format!(
            "portion {portion} is outside [0, 1]"
        )));
    }
    let mut pruned: Vec<Vec<Vec<bool>>> = svds
        .iter()
        .map(|s| s.heads.iter().map(|h| vec![false; h.rank()]).collect())
        .collect();
    let count = crate::analysis::cutoff(ranking.len(), portion);
    for &(si, hi, i) in &ranking[..count] {
        pruned[si][hi][i] = true;
    }
    Ok(Selection {
        pruned,
        candidates: ranking.len(),
        count,
    })
}

/// Builds the edit of a selection. `input_means[site]` is mean(xhat) over the scoring tokens.
pub fn build_edit(
    model: &Transformer,
    svds: &[SiteSvd],
    selection: &Selection,
    input_means: &[Vec<f32>],
    bias: BiasMode,
) -> Result<Edit> {
    let device = model.device();
    let mut matrices = Vec::new();
    for (si, site) in svds.iter().enumerate() {
        let (lin, norm) = site_map(model, site.layer, site.component);
        let (d_out, d_in) = lin.weight.dims2()?;
        let norm = norm.filter(|_| site.folded);
        let inv_gamma: Option<Vec<f32>> = norm
            .map(|n| n.weight.to_dtype(DType::F32)?.to_vec1::<f32>())
            .transpose()?
            .map(|g| {
                g.iter()
                    .map(|&x| if x == 0.0 { 0.0 } else { 1.0 / x })
                    .collect()
            });
        let beta: Option<Vec<f32>> = norm
            .filter(|_| model.config.norm == NormKind::LayerNorm)
            .and_then(|n| n.bias.as_ref())
            .map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>())
            .transpose()?;
        let mut a_parts = Vec::new();
        let mut b_parts = Vec::new();
        let mut bias_delta = vec![0f32; d_out];
        for (hi, head) in site.heads.iter().enumerate() {
            let idx: Vec<u32> = selection.pruned[si][hi]
                .iter()
                .enumerate()
                .filter(|(_, &p)| p)
                .map(|(i, _)| i as u32)
                .collect();
            if idx.is_empty() {
                continue;
            }
            let blk = head.block;
            let idx_t = Tensor::new(idx.as_slice(), device)?;
            let u = head.u.index_select(&idx_t, 1)?; // [in_len, k]
            let s = head.s.index_select(&idx_t, 0)?; // [k]
            let vh = head.vh.index_select(&idx_t, 0)?; // [k, out_len]
                                                       // Undo the gamma fold: rows of U scale by 1/gamma.
            let u_ckpt = match &inv_gamma {
                Some(ig) => {
                    let ig = Tensor::new(&ig[blk.in_off..blk.in_off + blk.in_len], device)?;
                    u.broadcast_mul(&ig.unsqueeze(1)?)?
                }
                None => u.clone(),
            };
            let a = u_ckpt
                .t()?
                .pad_with_zeros(1, blk.in_off, d_in - blk.in_off - blk.in_len)?;
            let b = vh
                .t()?
                .broadcast_mul(&s.unsqueeze(0)?)?
                .neg()?
                .pad_with_zeros(0, blk.out_off, d_out - blk.out_off - blk.out_len)?;
            a_parts.push(a);
            b_parts.push(b);
            // r = U diag(s) Vh, the removed part in the folded space: [in_len, out_len].
            let r = u.broadcast_mul(&s.unsqueeze(0)?)?.matmul(&vh)?;
            let mut shift = vec![0f32; blk.in_len];
            if bias == BiasMode::Mean {
                for (sh, m) in shift.iter_mut().zip(&input_means[si][blk.in_off..]) {
                    *sh += m;
                }
            }
            if let (Some(beta), Some(ig)) = (&beta, &inv_gamma) {
                for (k, sh) in shift.iter_mut().enumerate() {
                    *sh += beta[blk.in_off + k] * ig[blk.in_off + k];
                }
            }
            let delta: Vec<f32> = Tensor::new(shift.as_slice(), device)?
                .unsqueeze(0)?
                .matmul(&r)?
                .squeeze(0)?
                .to_vec1()?;
            for (o, d) in bias_delta[blk.out_off..blk.out_off + blk.out_len]
                .iter_mut()
                .zip(delta)
            {
                *o += d;
            }
        }
        if a_parts.is_empty() {
            continue;
        }
        let has_bias_delta = bias_delta.iter().any(|&d| d != 0.0);
        matrices.push(MatrixEdit {
            layer: site.layer,
            component: site.component,
            a: Tensor::cat(&a_parts, 0)?.contiguous()?,
            b: Tensor::cat(&b_parts, 1)?.contiguous()?,
            bias_delta: if has_bias_delta {
                Some(Tensor::from_vec(bias_delta, d_out, device)?)
            } else {
                None
            },
        });
    }
    Ok(Edit {
        matrices,
        finetuned: Vec::new(),
        metadata: BTreeMap::new(),
    })
}
