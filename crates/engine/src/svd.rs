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
    head_blocks_of(&model.config, component)
}

/// [`head_blocks`] from the configuration alone.
pub fn head_blocks_of(c: &crate::config::ModelConfig, component: Component) -> Vec<HeadBlock> {
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

/// The effective matrices of a map's heads, stacked: [heads, in_len, out_len], f64, on the
/// weight's device.
pub fn effective_matrices(
    lin: &Linear,
    norm: Option<&Norm>,
    kind: NormKind,
    blocks: &[HeadBlock],
) -> Result<Tensor> {
    let w = lin.weight.to_dtype(DType::F64)?;
    let gamma = norm.map(|n| n.weight.to_dtype(DType::F64)).transpose()?;
    let heads = blocks
        .iter()
        .map(|block| {
            let mut e = w
                .narrow(0, block.out_off, block.out_len)?
                .narrow(1, block.in_off, block.in_len)?
                .t()?;
            if let Some(g) = &gamma {
                let g = g.narrow(0, block.in_off, block.in_len)?.unsqueeze(1)?;
                e = e.broadcast_mul(&g)?;
                if kind == NormKind::LayerNorm {
                    e = e.broadcast_sub(&e.mean_keepdim(0)?)?;
                }
            }
            Ok(e)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&heads, 0)?)
}

/// Thin SVD on the CPU (faer, f64): U [m, r], s [r], Vh [r, n] as f32 tensors on `device`.
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

/// Where the SVDs are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvdBackend {
    /// faer on the host, one head at a time.
    Cpu,
    /// cuSOLVER on the model's GPU, every head of a component in one batched call.
    Cusolver,
}

impl SvdBackend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cusolver => "cusolver",
        }
    }
}

/// SVDs of every head of every chosen (layer, component): on the GPU when the model is on
/// one, else on the CPU. A component cuSOLVER cannot do accurately (gesvda needs full column
/// rank: LayerNorm's centring makes MLP input maps rank-deficient) falls back to the CPU.
pub fn decompose(model: &Transformer, components: &[Component]) -> Result<Vec<SiteSvd>> {
    decompose_with(model, components, |stacks| {
        if model.device().is_cuda() {
            if let Ok(factors) = gpu_svds(stacks) {
                return Ok(factors);
            }
        }
        cpu_svds(stacks, model.device())
    })
}

/// [`decompose`] on a chosen backend, without fallback.
pub fn decompose_on(
    model: &Transformer,
    components: &[Component],
    backend: SvdBackend,
) -> Result<Vec<SiteSvd>> {
    decompose_with(model, components, |stacks| match backend {
        SvdBackend::Cpu => cpu_svds(stacks, model.device()),
        SvdBackend::Cusolver => gpu_svds(stacks),
    })
}

/// Every chosen (layer, component), layer-major; `svds` factors one component's per-layer
/// stacks of effective matrices.
fn decompose_with(
    model: &Transformer,
    components: &[Component],
    svds: impl Fn(&[Tensor]) -> Result<Vec<Vec<Factors>>>,
) -> Result<Vec<SiteSvd>> {
    let layers = model.config.n_layers;
    let mut out: Vec<Option<SiteSvd>> = vec![None; layers * components.len()];
    for (ci, &component) in components.iter().enumerate() {
        let blocks = head_blocks(model, component);
        let stacks = (0..layers)
            .map(|layer| {
                let (lin, norm) = site_map(model, layer, component);
                effective_matrices(lin, norm, model.config.norm, &blocks)
            })
            .collect::<Result<Vec<_>>>()?;
        let per_head = svds(&stacks)?;
        for (layer, heads) in per_head.into_iter().enumerate() {
            out[layer * components.len() + ci] = Some(SiteSvd {
                layer,
                component,
                folded: site_map(model, layer, component).1.is_some(),
                heads: heads
                    .into_iter()
                    .zip(&blocks)
                    .map(|((u, s, vh), &block)| HeadSvd { block, u, s, vh })
                    .collect(),
            });
        }
    }
    Ok(out
        .into_iter()
        .map(|s| s.expect("every site decomposed"))
        .collect())
}

type Factors = (Tensor, Tensor, Tensor);

fn cpu_svds(stacks: &[Tensor], device: &Device) -> Result<Vec<Vec<Factors>>> {
    stacks
        .iter()
        .map(|stack| {
            stack
                .to_device(&Device::Cpu)?
                .to_vec3::<f64>()?
                .iter()
                .map(|e| thin_svd(e, device))
                .collect()
        })
        .collect()
}

#[cfg(feature = "cuda")]
fn gpu_svds(stacks: &[Tensor]) -> Result<Vec<Vec<Factors>>> {
    let (heads, m, n) = stacks[0].dims3()?;
    // Chunks of whole layers, about 1 GiB of f64 input each.
    let per_layer = heads * m * n * 8;
    let layers_per_call = ((1usize << 30) / per_layer.max(1)).max(1);
    let mut out = Vec::new();
    for chunk in stacks.chunks(layers_per_call) {
        let (u, s, vh, residual) = crate::svd_cuda::batched_thin_svd(&Tensor::cat(chunk, 0)?)?;
        if residual > 1e-8 {
            return Err(crate::EngineError::Gpu(format!(
                "cuSOLVER SVD residual {residual:e} relative to the matrix norm"
            )));
        }
        let (u, s, vh) = (
            u.to_dtype(DType::F32)?,
            s.to_dtype(DType::F32)?,
            vh.to_dtype(DType::F32)?,
        );
        for layer in 0..chunk.len() {
            out.push(
                (0..heads)
                    .map(|h| {
                        let i = layer * heads + h;
                        Ok((u.get(i)?, s.get(i)?, vh.get(i)?))
                    })
                    .collect::<Result<Vec<_>>>()?,
            );
        }
    }
    Ok(out)
}

#[cfg(not(feature = "cuda"))]
fn gpu_svds(_stacks: &[Tensor]) -> Result<Vec<Vec<Factors>>> {
    Err(crate::EngineError::Gpu(
        "this build has no CUDA support (build with --features cuda)".into(),
    ))
}

/// How far two SVDs of the same weights agree.
#[derive(Clone, Copy, Debug, Default)]
pub struct SvdAgreement {
    pub heads: usize,
    /// max |s_a - s_b| / s_b over singular values above 1e-6 of their head's largest.
    pub max_sigma_rel: f64,
    /// The largest principal angle (degrees) between the spans of the top-k left singular
    /// vectors, over heads and k = 1, 2, 4, ..., r (k stops before a gap under 1e-3 relative).
    pub max_angle_deg: f64,
}

/// Compares two decompositions of the same model (e.g. GPU against CPU).
pub fn agreement(a: &[SiteSvd], b: &[SiteSvd]) -> Result<SvdAgreement> {
    let mut out = SvdAgreement::default();
    for (sa, sb) in a.iter().zip(b) {
        for (ha, hb) in sa.heads.iter().zip(&sb.heads) {
            out.heads += 1;
            let (s1, s2): (Vec<f32>, Vec<f32>) = (ha.s.to_vec1()?, hb.s.to_vec1()?);
            let top = s2.first().copied().unwrap_or(0.0) as f64;
            for (&x, &y) in s1.iter().zip(&s2) {
                if (y as f64) > 1e-6 * top {
                    let rel = ((x - y) as f64).abs() / y as f64;
                    out.max_sigma_rel = out.max_sigma_rel.max(rel);
                }
            }
            let u1 = ha.u.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
            let u2 = hb.u.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
            let r = s2.len();
            let ks = (0..).map(|i| 1usize << i).take_while(|&k| k < r).chain([r]);
            for k in ks {
                // Only where the span is well defined: a gap after the k-th singular value.
                let gap_ok = k == r || ((s2[k - 1] - s2[k]) as f64) > 1e-3 * top;
                if gap_ok {
                    // sin of the largest angle = the largest singular value of the part of
                    // span(b) outside span(a) (no cancellation, unlike acos near 1).
                    let (a_k, b_k) = (u1.narrow(1, 0, k)?, u2.narrow(1, 0, k)?);
                    let outside =
                        (&b_k - a_k.matmul(&a_k.t()?.matmul(&b_k)?)?)?.to_vec2::<f64>()?;
                    let mat = faer::Mat::<f64>::from_fn(outside.len(), k, |i, j| outside[i][j]);
                    let sv = mat.singular_values().map_err(|e| {
                        crate::EngineError::InvalidInput(format!("SVD did not converge: {e:?}"))
                    })?;
                    let sin_max = sv.iter().copied().fold(0.0, f64::max).min(1.0);
                    out.max_angle_deg = out.max_angle_deg.max(sin_max.asin().to_degrees());
                }
            }
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
