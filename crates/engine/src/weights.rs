//! Dense weights in one layout for every architecture: linear maps are `[out, in]`
//! (PyTorch `nn.Linear`), so x -> x W^T + b. Loaders convert into it; exporters convert back.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Shape, Tensor};

#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// A GGUF's own quantised copy of `weight`, for serving on the CPU (llama.cpp's block
    /// formats: a token reads a quarter to an eighth of the f32 bytes). Only an untraced f32
    /// decoding step on the CPU uses it ([`Linear::forward_decoding`]); it is dropped whenever
    /// `weight` is handed out to be changed.
    quantized: Option<QMatMul>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            quantized: None,
        }
    }

    /// With `q` (the same matrix, quantised) as the CPU serving copy.
    pub fn with_quantized(mut self, q: Option<Arc<QTensor>>) -> crate::Result<Self> {
        self.quantized = q.map(QMatMul::from_arc).transpose()?;
        Ok(self)
    }

    /// Whether a quantised serving copy is attached.
    pub fn is_quantized(&self) -> bool {
        matches!(self.quantized, Some(QMatMul::QTensor(_)))
    }

    /// Forgets the quantised copy (after `weight` changed, or to serve the dense weights).
    pub fn drop_quantized(&mut self) {
        self.quantized = None;
    }

    /// [`Linear::forward`] for a decoding step: from the quantised blocks where they are kept
    /// (an untraced f32 input on the CPU), else the dense weights. Decoding reads every weight
    /// for a row or a few; prompts and scoring (many rows, compute-bound, and exact) stay dense.
    pub fn forward_decoding(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let Some(q) = &self.quantized else {
            return self.forward(x);
        };
        if !x.device().is_cpu() || x.dtype() != DType::F32 || x.track_op() {
            return self.forward(x);
        }
        let y = q.forward(&x.contiguous()?)?;
        match &self.bias {
            Some(b) => bias_add(&y, b),
            None => Ok(y),
        }
    }

    /// x: [.., in] -> [.., out].
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let d_in = *dims.last().expect("linear input has a last dim");
        let rows = x.elem_count() / d_in;
        let x2 = x.reshape((rows, d_in))?;
        // Decoding (few rows): W x^T reads W in its own row-major layout; x W^T would make
        // the matmul pack (copy) all of W^T on every call.
        let y = if rows <= 4 {
            self.weight.matmul(&x2.t()?)?.t()?
        } else if x2.track_op() && !self.weight.is_variable() {
            x2.apply_op2(&self.weight, ConstWeightMatmul)?
        } else {
            x2.matmul(&self.weight.t()?)?
        };
        let y = match &self.bias {
            Some(b) => bias_add(&y, b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty") = self.weight.dim(0)?;
        y.reshape(out_dims)
    }
}

/// y [rows, n] + b [n]: one kernel on a GPU, a broadcast add elsewhere.
fn bias_add(y: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(sum) = crate::grad_ops_cuda::bias_add(y, b)? {
        return Ok(sum);
    }
    y.broadcast_add(b)
}

/// x [m, k] times W^T for a weight W [n, k] that is a constant of the graph: its backward
/// gives x's gradient only. (candle's matmul backward always computes both operands'
/// gradients; the sweep differentiates activations, so W's would be a wasted matmul per map.)
struct ConstWeightMatmul;

impl ConstWeightMatmul {
    fn dims(l1: &Layout, l2: &Layout) -> candle_core::Result<(usize, usize, usize, Layout)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, _) = l2.shape().dims2()?;
        Ok((m, n, k, l2.transpose(0, 1)?))
    }
}

impl CustomOp2 for ConstWeightMatmul {
    fn name(&self) -> &'static str {
        "const-weight-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, n, k, wt) = Self::dims(l1, l2)?;
        Ok((s1.matmul(s2, (1, m, n, k), l1, &wt)?, (m, n).into()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (m, n, k, wt) = Self::dims(l1, l2)?;
        Ok((s1.matmul(s2, (1, m, n, k), l1, &wt)?, (m, n).into()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(weight)?), None))
    }
}

#[derive(Clone, Debug)]
pub struct Norm {
    pub weight: Tensor,
    /// LayerNorm's beta; None for RMSNorm.
    pub bias: Option<Tensor>,
}

#[derive(Clone, Debug)]
pub struct Block {
    pub ln1: Norm,
    /// None for parallel blocks (Phi), where the MLP reads ln1's output too.
    pub ln2: Option<Norm>,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    /// Gated MLPs (Llama family) only.
    pub gate: Option<Linear>,
    pub up: Linear,
    pub down: Linear,
    /// Gemma-3: RMSNorm of each query/key head, after the projection and before rotary.
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    /// Gemma-3: norms of the attention and MLP outputs before they join the residual.
    pub post_attn_norm: Option<Norm>,
    pub post_mlp_norm: Option<Norm>,
}

#[derive(Clone, Debug)]
pub struct Weights {
    /// [vocab, d_model]
    pub embed: Tensor,
    /// [max_positions, d_model], learned absolute positions (GPT-2).
    pub pos_embed: Option<Tensor>,
    pub blocks: Vec<Block>,
    pub final_norm: Norm,
    /// Tied models share `embed` here.
    pub lm_head: Linear,
}

impl Linear {
    fn tensors_mut(&mut self) -> impl Iterator<Item = &mut Tensor> {
        self.quantized = None;
        std::iter::once(&mut self.weight).chain(self.bias.as_mut())
    }
}

impl Norm {
    fn tensors_mut(&mut self) -> impl Iterator<Item = &mut Tensor> {
        std::iter::once(&mut self.weight).chain(self.bias.as_mut())
    }
}

impl Weights {
    /// Whether the output projection shares the embedding's storage.
    pub fn tied(&self) -> bool {
        self.lm_head.weight.id() == self.embed.id()
    }

    /// Every parameter tensor once (a tied lm_head is left out: it is `embed`). Quantised
    /// serving copies are dropped: the tensors may change.
    pub fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        let tied = self.tied();
        if tied {
            self.lm_head.drop_quantized();
        }
        let mut out: Vec<&mut Tensor> = vec![&mut self.embed];
        out.extend(self.pos_embed.as_mut());
        for b in &mut self.blocks {
            out.extend(b.ln1.tensors_mut());
            out.extend(b.ln2.iter_mut().flat_map(Norm::tensors_mut));
            for l in [
                &mut b.q,
                &mut b.k,
                &mut b.v,
                &mut b.o,
                &mut b.up,
                &mut b.down,
            ] {
                out.extend(l.tensors_mut());
            }
            out.extend(b.gate.iter_mut().flat_map(Linear::tensors_mut));
            for n in [
                &mut b.q_norm,
                &mut b.k_norm,
                &mut b.post_attn_norm,
                &mut b.post_mlp_norm,
            ] {
                out.extend(n.iter_mut().flat_map(Norm::tensors_mut));
            }
        }
        out.extend(self.final_norm.tensors_mut());
        if !tied {
            out.extend(self.lm_head.tensors_mut());
        }
        out
    }

    /// Replaces every parameter, in [`Self::tensors_mut`] order, by `f(index, current)`; a tied
    /// output projection follows the embedding.
    pub fn map_parameters(
        &mut self,
        mut f: impl FnMut(usize, &Tensor) -> crate::Result<Tensor>,
    ) -> crate::Result<()> {
        let tied = self.tied();
        for (i, t) in self.tensors_mut().into_iter().enumerate() {
            *t = f(i, t)?;
        }
        if tied {
            self.lm_head.weight = self.embed.clone();
        }
        Ok(())
    }

    /// Every linear map: the blocks' and the output projection.
    pub fn linears(&self) -> Vec<&Linear> {
        let mut out = Vec::new();
        for b in &self.blocks {
            out.extend([&b.q, &b.k, &b.v, &b.o, &b.up, &b.down]);
            out.extend(b.gate.as_ref());
        }
        out.push(&self.lm_head);
        out
    }

    /// The same weights without quantised serving copies (every map served dense).
    pub fn dense(&self) -> Self {
        let mut w = self.clone();
        w.tensors_mut();
        w
    }

    /// Every parameter tensor once, in [`Self::tensors_mut`] order (cheap: tensors share storage).
    pub fn parameters(&self) -> Vec<Tensor> {
        let mut w = self.clone();
        w.tensors_mut().into_iter().map(|t| t.clone()).collect()
    }

    /// Bytes held by the parameters, on whatever device they live.
    pub fn bytes(&self) -> u64 {
        self.parameters()
            .iter()
            .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;
    use candle_core::Device;

    /// A decoding step through each block format's dot product equals the dense product of the dequantised weights up to the activations' 8-bit
    /// rounding; a changed weight drops the blocks.
    #[test]
    fn decoding_from_blocks_is_the_dense_product() {
        let dev = Device::Cpu;
        let values = |n: usize, k: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * k % 1009) as f32 / 97.0).sin())
                .collect()
        };
        let w = Tensor::from_vec(values(64 * 256, 7), (64, 256), &dev).unwrap();
        let b = Tensor::from_vec(values(64, 3), 64, &dev).unwrap();
        let x = Tensor::from_vec(values(2 * 256, 11), (2, 1, 256), &dev).unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
        ] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let dense = q.dequantize(&dev).unwrap();
            let mut lin = Linear::new(dense, Some(b.clone()))
                .with_quantized(Some(Arc::new(q)))
                .unwrap();
            assert!(lin.is_quantized());
            let want = lin.forward(&x).unwrap();
            let got = lin.forward_decoding(&x).unwrap();
            let max_abs = |t: &Tensor| {
                t.abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let (scale, gap) = (max_abs(&want), max_abs(&(&got - &want).unwrap()));
            assert!(gap <= 2e-2 * scale, "{dtype:?}: gap {gap} of {scale}");
            lin.tensors_mut().for_each(drop);
            assert!(!lin.is_quantized());
        }
    }
}
