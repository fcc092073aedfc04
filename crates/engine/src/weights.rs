//! Dense weights in one layout for every architecture: linear maps are `[out, in]`
//! (PyTorch `nn.Linear`), so x -> x W^T + b. Loaders convert into it; exporters convert back.

use candle_core::Tensor;

#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
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
        } else {
            x2.matmul(&self.weight.t()?)?
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty") = self.weight.dim(0)?;
        y.reshape(out_dims)
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
