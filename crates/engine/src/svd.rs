//! Effective matrices and their thin SVDs, per head.
//!
//! For a map that reads a normed residual (q, k, v, mlp_in), the SVD is of the matrix acting
//! on the *normalised* input xhat, with the norm's scale folded in: E = diag(gamma) W^T
//! (RMSNorm) or E = C diag(gamma) W^T (LayerNorm, C = I - 11^T/d removes the inert all-ones
//! direction). Other maps (o, mlp_out) use E = W^T. Heads: q per attention head, k and v per
//! key/value head (grouped-query attention), o per attention head (its input slice); MLP maps
//! are one matrix each. The SVD depends only on the weights.

use candle_core::{DType, Device, Tensor};

use crate::config::NormKind;
use crate::trace::Component;
use crate::transformer::Transformer;
use crate::weights::{Linear, Norm};
use crate::Result;

/// Where one head's block sits in its map's `[out, in]` weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadBlock {
    pub in_off: usize,
    pub in_len: usize,
    pub out_off: usize,
    pub out_len: usize,
}

/// E_h = U diag(s) Vh, thin: U [in_len, r], s [r], Vh [r, out_len].
#[derive(Clone, Debug)]
pub struct HeadSvd {
    pub block: HeadBlock,
    pub u: Tensor,
    pub s: Tensor,
    pub vh: Tensor,
}

impl HeadSvd {
    pub fn rank(&self) -> usize {
        self.s.dim(0).expect("s is a vector")
    }
}

#[derive(Clone, Debug)]
pub struct SiteSvd {
    pub layer: usize,
    pub component: Component,
    /// Whether the SVD is of the norm-folded matrix (the input is xhat).
    pub folded: bool,
    pub heads: Vec<HeadSvd>,
}

/// The weight of a (layer, component) and the norm in front of it, if any.
pub fn site_map(
    model: &Transformer,
    layer: usize,
    component: Component,
) -> (&Linear, Option<&Norm>) {
    let b = &model.weights.blocks[layer];
    let mlp_norm = b.ln2.as_ref().unwrap_or(&b.ln1);
    match component {
        Component::Q => (&b.q, Some(&b.ln1)),
        Component::K => (&b.k, Some(&b.ln1)),
        Component::V => (&b.v, Some(&b.ln1)),
        Component::O => (&b.o, None),
        Component::MlpIn => (&b.up, Some(mlp_norm)),
        Component::MlpOut => (&b.down, None),
    }
}

pub fn head_blocks(model: &Transformer, component: Component) -> Vec<HeadBlock> {
    let c = &model.config;
    let hd = c.head_dim;
    let per_out = |n: usize| -> Vec<HeadBlock> {
        (0..n)
            .map(|h| HeadBlock {
                in_off: 0,
                in_len: c.d_model,
                out_off: h * hd,
                out_len: hd,
            })
            .collect()
    };
    match component {
        Component::Q => per_out(c.n_heads),
        Component::K | Component::V => per_out(c.n_kv_heads),
        Component::O => (0..c.n_heads)
            .map(|h| HeadBlock {
                in_off: h * hd,
                in_len: hd,
                out_off: 0,
                out_len: c.d_model,
            })
            .collect(),
        Component::MlpIn => vec![HeadBlock {
            in_off: 0,
            in_len: c.d_model,
            out_off: 0,
            out_len: c.d_mlp,
        }],
        Component::MlpOut => vec![HeadBlock {
            in_off: 0,
            in_len: c.d_mlp,
            out_off: 0,
            out_len: c.d_model,
        }],
    }
}

/// The effective matrix of one head, [in_len, out_len], in f64 row-major.
pub fn effective_matrix(
    lin: &Linear,
    norm: Option<&Norm>,
    kind: NormKind,
    block: HeadBlock,
) -> Result<Vec<Vec<f64>>> {
    let w = lin
        .weight
        .narrow(0, block.out_off, block.out_len)?
        .narrow(1, block.in_off, block.in_len)?
        .t()?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?;
    let mut e = w;
    if let Some(n) = norm {
        let gamma: Vec<f64> = n.weight.to_dtype(DType::F64)?.to_vec1()?;
        for (row, g) in e
            .iter_mut()
            .zip(&gamma[block.in_off..block.in_off + block.in_len])
        {
            row.iter_mut().for_each(|x| *x *= g);
        }
        if kind == NormKind::LayerNorm {
            let rows = e.len() as f64;
            for j in 0..block.out_len {
                let mean = e.iter().map(|r| r[j]).sum::<f64>() / rows;
                e.iter_mut().for_each(|r| r[j] -= mean);
            }
        }
    }
    Ok(e)
}

/// Thin SVD on the CPU (faer, f64), returned as f32 tensors on `device`.
pub fn thin_svd(e: &[Vec<f64>], device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let (m, n) = (e.len(), e[0].len());
    let mat = faer::Mat::<f64>::from_fn(m, n, |i, j| e[i][j]);
    let svd = mat.thin_svd().map_err(|err| {
        crate::EngineError::InvalidInput(format!("SVD did not converge: {err:?}"))
    })?;
    let r = m.min(n);
    let (u, s, v) = (svd.U(), svd.S().column_vector(), svd.V());
    let uv: Vec<f32> = (0..m)
        .flat_map(|i| (0..r).map(move |k| u[(i, k)] as f32))
        .collect();
    let sv: Vec<f32> = (0..r).map(|k| s[k] as f32).collect();
    let vhv: Vec<f32> = (0..r)
        .flat_map(|k| (0..n).map(move |j| v[(j, k)] as f32))
        .collect();
    Ok((
        Tensor::from_vec(uv, (m, r), device)?,
        Tensor::from_vec(sv, r, device)?,
        Tensor::from_vec(vhv, (r, n), device)?,
    ))
}

/// SVDs of every head of every chosen (layer, component).
pub fn decompose(model: &Transformer, components: &[Component]) -> Result<Vec<SiteSvd>> {
    let mut out = Vec::new();
    for layer in 0..model.config.n_layers {
        for &component in components {
            let (lin, norm) = site_map(model, layer, component);
            let mut heads = Vec::new();
            for block in head_blocks(model, component) {
                let e = effective_matrix(lin, norm, model.config.norm, block)?;
                let (u, s, vh) = thin_svd(&e, model.device())?;
                heads.push(HeadSvd { block, u, s, vh });
            }
            out.push(SiteSvd {
                layer,
                component,
                folded: norm.is_some(),
                heads,
            });
        }
    }
    Ok(out)
}

/// The mutable weight of a (layer, component), for applying edits.
pub fn site_map_mut(model: &mut Transformer, layer: usize, component: Component) -> &mut Linear {
    let b = &mut model.weights.blocks[layer];
    match component {
        Component::Q => &mut b.q,
        Component::K => &mut b.k,
        Component::V => &mut b.v,
        Component::O => &mut b.o,
        Component::MlpIn => &mut b.up,
        Component::MlpOut => &mut b.down,
    }
}

/// A content key of the weights an SVD set depends on (each site's weight and norm scale).
pub fn weights_key(model: &Transformer, components: &[Component]) -> Result<String> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (model.config.arch.name(), model.config.norm_eps.to_bits()).hash(&mut h);
    for layer in 0..model.config.n_layers {
        for &c in components {
            c.name().hash(&mut h);
            let (lin, norm) = site_map(model, layer, c);
            let mut tensors = vec![&lin.weight];
            tensors.extend(norm.map(|n| &n.weight));
            for t in tensors {
                t.dims().hash(&mut h);
                for v in t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()? {
                    v.to_bits().hash(&mut h);
                }
            }
        }
    }
    Ok(format!("{:016x}", h.finish()))
}

/// [`decompose`], reading and writing `dir/svd-<key>.safetensors` (the SVD depends only on
/// the weights). Returns the SVDs and whether they came from the cache.
pub fn decompose_cached(
    model: &Transformer,
    components: &[Component],
    dir: &std::path::Path,
) -> Result<(Vec<SiteSvd>, bool)> {
    let mut comps = components.to_vec();
    comps.sort();
    comps.dedup();
    let names: Vec<&str> = comps.iter().map(|c| c.name()).collect();
    let path = dir.join(format!(
        "svd-{}-{}.safetensors",
        weights_key(model, &comps)?,
        names.join("_")
    ));
    let template = || -> Vec<(usize, Component, Vec<HeadBlock>, bool)> {
        (0..model.config.n_layers)
            .flat_map(|l| {
                components.iter().map(move |&c| {
                    (
                        l,
                        c,
                        head_blocks(model, c),
                        site_map(model, l, c).1.is_some(),
                    )
                })
            })
            .collect()
    };
    if path.exists() {
        let t = candle_core::safetensors::load(&path, model.device())?;
        let get = |k: String| {
            t.get(&k)
                .cloned()
                .ok_or_else(|| crate::EngineError::MissingTensor(k))
        };
        let sites = template()
            .into_iter()
            .map(|(layer, component, blocks, folded)| {
                let heads = blocks
                    .into_iter()
                    .enumerate()
                    .map(|(h, block)| {
                        let p = format!("{layer}.{}.{h}", component.name());
                        Ok(HeadSvd {
                            block,
                            u: get(format!("{p}.u"))?,
                            s: get(format!("{p}.s"))?,
                            vh: get(format!("{p}.vh"))?,
                        })
                    })
                    .collect::<Result<_>>()?;
                Ok(SiteSvd {
                    layer,
                    component,
                    folded,
                    heads,
                })
            })
            .collect::<Result<_>>()?;
        return Ok((sites, true));
    }
    let sites = decompose(model, components)?;
    std::fs::create_dir_all(dir).map_err(|e| crate::EngineError::io(dir, e))?;
    let mut tensors = std::collections::HashMap::new();
    for site in &sites {
        for (h, head) in site.heads.iter().enumerate() {
            let p = format!("{}.{}.{h}", site.layer, site.component.name());
            tensors.insert(format!("{p}.u"), head.u.clone());
            tensors.insert(format!("{p}.s"), head.s.clone());
            tensors.insert(format!("{p}.vh"), head.vh.clone());
        }
    }
    let tmp = path.with_extension("partial");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, &path).map_err(|e| crate::EngineError::io(&path, e))?;
    Ok((sites, false))
}
