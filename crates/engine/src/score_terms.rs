//! The sweep's per-site terms on the scored rows, in f32: the corrupted input differences,
//! the input sums for the bias mean, the output gradients' rows and the aggregate of each
//! singular value's products. On a GPU each is one or two kernels reading the forward's
//! tensors in their own dtype (`score_terms_cuda.rs`); elsewhere the composite: a cast, the
//! fused norm, gathers and a reduction.

use candle_core::{DType, Tensor, D};

use crate::attribution::{normalise, Aggregate};
use crate::config::NormKind;

/// How a site's input rows are read: as they are, or normalised without the norm's affine
/// part (a folded site's input, read from the residual stream before the norm).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum RowNorm {
    Plain,
    Normalised(NormKind, f64),
}

/// A site's input rows [N, d], read through a norm: on a GPU the rows in the forward's dtype
/// with each row's statistics (computed once, for both terms); elsewhere the f32 (normalised)
/// rows.
pub(crate) enum Rows {
    Dense(Tensor),
    #[cfg(feature = "cuda")]
    Device {
        x: Tensor,
        stats: Tensor,
    },
}

impl Rows {
    pub(crate) fn new(x: &Tensor, norm: RowNorm) -> candle_core::Result<Self> {
        let d = x.dim(D::Minus1)?;
        let x = x.reshape((x.elem_count() / d.max(1), d))?;
        #[cfg(feature = "cuda")]
        if crate::score_terms_cuda::fits(&x) {
            let stats = crate::score_terms_cuda::row_stats(&x, norm)?;
            return Ok(Self::Device { x, stats });
        }
        let f = x.to_dtype(DType::F32)?;
        Ok(Self::Dense(match norm {
            RowNorm::Plain => f,
            RowNorm::Normalised(kind, eps) => normalise(&f, kind, eps)?,
        }))
    }

    /// rows[there] - rows[here], [n, d].
    pub(crate) fn diff(&self, there: &Tensor, here: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense(x) => x.index_select(there, 0)? - x.index_select(here, 0)?,
            #[cfg(feature = "cuda")]
            Self::Device { x, stats } => crate::score_terms_cuda::row_diff(x, stats, there, here),
        }
    }

    /// The sum of rows[r] over `rows`, [d].
    pub(crate) fn sum(&self, rows: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense(x) => x.index_select(rows, 0)?.sum(0),
            #[cfg(feature = "cuda")]
            Self::Device { x, stats } => crate::score_terms_cuda::row_sum(x, stats, rows),
        }
    }
}

/// x [N, d] at `rows`, as f32 [n, d].
pub(crate) fn gather_f32(x: &Tensor, rows: &Tensor) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::score_terms_cuda::fits(x) {
        return crate::score_terms_cuda::gather_f32(x, rows);
    }
    x.index_select(rows, 0)?.to_dtype(DType::F32)
}

/// `agg` over the rows of a * b (both f32 [n, m]), [m].
pub(crate) fn product_aggregate(
    a: &Tensor,
    b: &Tensor,
    agg: Aggregate,
) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::score_terms_cuda::fits(a) && a.dtype() == DType::F32 && b.dtype() == DType::F32 {
        return crate::score_terms_cuda::product_aggregate(a, b, agg);
    }
    let products = (a * b)?;
    match agg {
        Aggregate::Max => products.max(0),
        Aggregate::Mean => products.sum(0),
        Aggregate::MeanAbs => products.abs()?.sum(0),
    }
}
