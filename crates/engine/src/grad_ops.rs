//! Differentiable fused ops for the traced forward (the one the sweep differentiates).
//!
//! candle's fused softmax, norms and rotary kernels have no backward, and their composite
//! forms cost a dozen kernels each way plus a zeroed gradient buffer per node. Here the fused
//! kernel runs the forward on the detached input, and a node carries the result together
//! with its backward written as one formula: the output is the fused result (its storage
//! shared, no copy), the gradient the formula's. The formulas run in f32 whatever the dtype (bf16
//! sweeps keep f32 statistics), then return in the input's dtype.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};

use crate::config::Activation;

/// A backward formula: the input's gradient from the input, the output and the output's
/// gradient.
trait Backward: Send + Sync + 'static {
    const NAME: &'static str;
    fn grad(&self, x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Tensor>;

    /// Both operands' gradients from (x, the node's second operand, y, g): a fused op's second
    /// operand is its own output, which gets none.
    fn grads(
        &self,
        x: &Tensor,
        _: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.grad(x, y, g)?.to_dtype(x.dtype())?), None))
    }
}

/// The node: arg1 is the input, arg2 the already computed (detached) output, whose storage
/// the node shares (`Tensor::attach_op2_arc`, vendored): only its backward ever runs.
struct WithBackward<B>(B);

impl<B: Backward> CustomOp2 for WithBackward<B> {
    fn name(&self) -> &'static str {
        B::NAME
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("{}: an attached node has no forward of its own", B::NAME)
    }

    fn bwd(
        &self,
        x: &Tensor,
        rhs: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        self.0.grads(x, rhs, y, g)
    }
}

/// `fused(x)` as a node of x's graph with `backward`'s gradient (no copy of the result).
fn attach<B: Backward>(
    x: &Tensor,
    fused: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
    backward: B,
) -> candle_core::Result<Tensor> {
    let y = fused(&x.detach())?.contiguous()?.detach();
    Ok(x.attach_op2_arc(&y, &y, Arc::new(Box::new(WithBackward(backward)))))
}

fn f32(t: &Tensor) -> candle_core::Result<Tensor> {
    t.to_dtype(DType::F32)
}

/// softmax(x * scale + mask) over the last dimension, in one node: the mask (a constant) is
/// added with x viewed as `view` (e.g. grouped query heads split out, so a [B, 1, 1, T, Tk]
/// mask broadcasts over them), and the result has x's shape. dx = scale * y * (g - sum(g y)).
pub fn masked_softmax(
    x: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
    view: &[usize],
) -> candle_core::Result<Tensor> {
    struct Softmax {
        scale: f64,
    }
    impl Backward for Softmax {
        const NAME: &'static str = "masked-softmax-with-backward";
        fn grad(&self, _: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
            #[cfg(feature = "cuda")]
            if let Some(dx) = crate::grad_ops_cuda::softmax_bwd(y, g, self.scale)? {
                return Ok(dx);
            }
            let (y, g) = (f32(y)?, f32(g)?);
            let dot = (&g * &y)?.sum_keepdim(D::Minus1)?;
            y.mul(&g.broadcast_sub(&dot)?)? * self.scale
        }
    }
    let shape = x.shape().clone();
    let fused = |x: &Tensor| {
        let scaled = (x * scale)?;
        let masked = match mask {
            Some(m) => scaled.reshape(view)?.broadcast_add(m)?,
            None => scaled,
        };
        candle_nn::ops::softmax_last_dim(&masked)?.reshape(&shape)
    };
    attach(&x.contiguous()?, fused, Softmax { scale })
}

/// Softmax over the last dimension.
#[cfg(test)]
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    let view = x.dims().to_vec();
    masked_softmax(x, 1.0, None, &view)
}

/// A norm's input gradient (its weight a constant). With h = g * w, c = x (RMSNorm) or
/// x - mean(x) (LayerNorm), r = 1/sqrt(mean(c^2) + eps) and xhat = c r:
/// dx = r (h - [mean(h)] - xhat mean(h xhat)), the bracket LayerNorm's only.
struct NormGrad {
    weight: Tensor,
    eps: f64,
    centre: bool,
}

impl Backward for NormGrad {
    const NAME: &'static str = "norm-with-backward";
    fn grad(&self, x: &Tensor, _: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(dx) = crate::grad_ops_cuda::norm_bwd(x, &self.weight, g, self.eps, self.centre)?
        {
            return Ok(dx);
        }
        let (x, mut h) = (f32(x)?, f32(g)?.broadcast_mul(&f32(&self.weight)?)?);
        let c = if self.centre {
            h = h.broadcast_sub(&h.mean_keepdim(D::Minus1)?)?;
            x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?
        } else {
            x
        };
        let r = (c.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        let xhat = c.broadcast_mul(&r)?;
        let proj = (&h * &xhat)?.mean_keepdim(D::Minus1)?;
        (h - xhat.broadcast_mul(&proj)?)?.broadcast_mul(&r)
    }
}

/// RMSNorm over the last dimension, scaled by `weight` (a constant: its gradient is not
/// needed).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let w = weight.detach();
    attach(
        &x.contiguous()?,
        |x| candle_nn::ops::rms_norm(x, &w, eps as f32),
        NormGrad {
            weight: w.clone(),
            eps,
            centre: false,
        },
    )
}

/// LayerNorm over the last dimension with `weight` and `bias` (constants).
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let (w, b) = (weight.detach(), bias.detach());
    attach(
        &x.contiguous()?,
        |x| candle_nn::ops::layer_norm(x, &w, &b, eps as f32),
        NormGrad {
            weight: w.clone(),
            eps,
            centre: true,
        },
    )
}

/// The MLP's activation. On a GPU one node whose backward is one kernel; elsewhere candle's
/// op, differentiated by candle.
pub fn activation(x: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && crate::grad_ops_cuda::available(x.dtype()) {
        struct Act(Activation);
        impl Backward for Act {
            const NAME: &'static str = "activation-with-backward";
            fn grad(&self, x: &Tensor, _: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
                crate::grad_ops_cuda::activation_bwd(x, g, self.0)?.ok_or_else(|| {
                    candle_core::Error::Msg("the activation kernel cannot run".into())
                })
            }
        }
        return attach(x, |x| plain_activation(x, act), Act(act));
    }
    plain_activation(x, act)
}

/// The activation without a backward of its own: on a GPU a kernel moving 16-byte words,
/// elsewhere candle's ops.
pub fn plain_activation(x: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(y) = crate::grad_ops_cuda::activation(x, act)? {
        return Ok(y);
    }
    match act {
        Activation::GeluTanh => x.gelu(),
        Activation::GeluErf => x.gelu_erf(),
        Activation::Silu => x.silu(),
    }
}

/// Rotary embedding ("rotate half") of the first `rot` dims of each head of x [B, H, T, D]
/// with (cos, sin) [B, T, rot/2]; the other dims pass through (Phi's partial rotary).
pub fn rotate_first(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    rot: usize,
) -> candle_core::Result<Tensor> {
    let hd = x.dim(3)?;
    if rot == hd {
        return candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin);
    }
    #[cfg(feature = "cuda")]
    if let Some(y) = crate::grad_ops_cuda::rotate_first(x, cos, sin, rot)? {
        return Ok(y);
    }
    let rotated = candle_nn::rotary_emb::rope(&x.narrow(3, 0, rot)?.contiguous()?, cos, sin)?;
    Tensor::cat(&[rotated, x.narrow(3, rot, hd - rot)?], 3)?.contiguous()
}

/// [`rotate_first`] as one node. A rotation's transpose is the rotation by the opposite
/// angle: dx = rotate_first(g, cos, -sin) (and the pass-through dims take g as it is).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, rot: usize) -> candle_core::Result<Tensor> {
    struct Rope {
        cos: Tensor,
        neg_sin: Tensor,
        rot: usize,
    }
    impl Backward for Rope {
        const NAME: &'static str = "rope-with-backward";
        fn grad(&self, _: &Tensor, _: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
            let g = g.to_dtype(self.cos.dtype())?;
            rotate_first(&g, &self.cos, &self.neg_sin, self.rot)
        }
    }
    let (cos, sin) = (cos.detach(), sin.detach());
    let neg_sin = sin.neg()?;
    attach(
        &x.contiguous()?,
        |x| rotate_first(x, &cos, &sin, rot),
        Rope {
            cos: cos.clone(),
            neg_sin,
            rot,
        },
    )
}

/// a [.., m, k] times b [.., n, k] transposed. Traced, one node whose backward gives each
/// tracked operand's gradient contiguous in its own layout (through candle's transpose node,
/// b's came back as a strided view that the backward then copied).
pub fn matmul_nt(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    struct MatmulNt;
    impl Backward for MatmulNt {
        const NAME: &'static str = "matmul-nt";
        fn grad(&self, _: &Tensor, _: &Tensor, _: &Tensor) -> candle_core::Result<Tensor> {
            candle_core::bail!("matmul-nt has two operands' gradients")
        }
        fn grads(
            &self,
            a: &Tensor,
            b: &Tensor,
            _: &Tensor,
            g: &Tensor,
        ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
            let da = a.track_op().then(|| g.matmul(&b.detach())).transpose()?;
            let db = b
                .track_op()
                .then(|| g.t()?.matmul(&a.detach()))
                .transpose()?;
            Ok((da, db))
        }
    }
    let y = a.detach().matmul(&b.detach().t()?)?;
    if !a.track_op() && !b.track_op() {
        return Ok(y);
    }
    Ok(a.attach_op2_arc(b, &y, Arc::new(Box::new(WithBackward(MatmulNt)))))
}

/// a + b of one shape: on a GPU one kernel moving 16-byte words (in a traced forward one node
/// whose backward passes the gradient to both); elsewhere candle's add. Also the backward's
/// sum of a tensor's gradients ([`install_gradient_sum`]).
pub fn add(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(sum) = crate::grad_ops_cuda::add(a, b)? {
        if !a.track_op() && !b.track_op() {
            return Ok(sum);
        }
        return Ok(a.attach_op2_arc(b, &sum, Arc::new(Box::new(WithBackward(SumNode)))));
    }
    a + b
}

/// The node of [`add`]'s kernel: both operands get the output's gradient.
#[cfg(feature = "cuda")]
struct SumNode;

#[cfg(feature = "cuda")]
impl Backward for SumNode {
    const NAME: &'static str = "sum";

    fn grad(&self, _: &Tensor, _: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
        Ok(g.clone())
    }

    fn grads(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(g.clone()), Some(g.clone())))
    }
}

/// Makes candle's backward sum repeated gradients with [`add`] (once per process).
pub fn install_gradient_sum() {
    fn sum(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        add(&a.detach(), &b.detach())
    }
    let _ = candle_core::backprop::GRADIENT_SUM.set(sum);
}

/// x [B, A, C, D] -> [B, C, A, D], contiguous (the attention heads' split and merge). A
/// swap with a size-1 axis is a reshape; on a GPU one kernel (in a traced forward one node,
/// its backward the same swap); elsewhere candle's transpose and copy.
pub fn swap_axes12(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, a, c, d) = x.dims4()?;
    if a == 1 || c == 1 {
        return x.contiguous()?.reshape((b, c, a, d));
    }
    #[cfg(feature = "cuda")]
    if let Some(y) = crate::grad_ops_cuda::swap_axes12(x)? {
        return Ok(y);
    }
    x.transpose(1, 2)?.contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// d(sum(f(x) * probe))/dx through the fused op and through the composite, f32 and bf16
    /// (the probe shaped as f(x), which may permute x's axes).
    fn same_gradient(
        shape: &[usize],
        fused: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
        composite: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) {
        let dev = Device::Cpu;
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 997) as f32 / 61.0).sin() * 3.0)
            .collect();
        let probe: Vec<f32> = (0..n)
            .map(|i| ((i * 104729 % 991) as f32 / 37.0).cos())
            .collect();
        let probe = Tensor::from_vec(probe, shape, &dev).unwrap();
        for (dtype, tol) in [(DType::F32, 2e-5f32), (DType::BF16, 2e-2)] {
            let run = |f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>| {
                let x = Var::from_tensor(
                    &Tensor::from_vec(data.clone(), shape, &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap(),
                )
                .unwrap();
                let y = f(x.as_tensor()).unwrap();
                let probe = probe.reshape(y.shape()).unwrap();
                let loss = (y.to_dtype(DType::F32).unwrap() * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let dx = loss.backward().unwrap().get(x.as_tensor()).unwrap().clone();
                let flat = |t: Tensor| t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
                (
                    flat(y).to_vec1::<f32>().unwrap(),
                    flat(dx).to_vec1::<f32>().unwrap(),
                )
            };
            let (y1, g1) = run(&fused);
            let (y2, g2) = run(&composite);
            let scale = g2.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            for (a, b) in y1.iter().zip(&y2) {
                assert!(
                    (a - b).abs() <= tol * (1.0 + b.abs()),
                    "{dtype:?} value {a} vs {b}"
                );
            }
            for (a, b) in g1.iter().zip(&g2) {
                assert!(
                    (a - b).abs() <= tol * scale,
                    "{dtype:?} gradient {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn softmax_gradient_is_the_composites() {
        same_gradient(&[2, 3, 5, 17], softmax_last_dim, |x| {
            candle_nn::ops::softmax(&x.to_dtype(DType::F32)?, D::Minus1)?.to_dtype(x.dtype())
        });
    }

    #[test]
    fn norm_gradients_are_the_composites() {
        let dev = Device::Cpu;
        let d = 24;
        let w = Tensor::from_vec((0..d).map(|i| 0.5 + i as f32 / 10.0).collect(), d, &dev).unwrap();
        let b = Tensor::from_vec((0..d).map(|i| i as f32 / 7.0 - 1.0).collect(), d, &dev).unwrap();
        let eps = 1e-5;
        let rms = |x: &Tensor| -> candle_core::Result<Tensor> {
            let x = x.to_dtype(DType::F32)?;
            let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
            x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(&w)
        };
        same_gradient(
            &[3, 7, d],
            |x| rms_norm(x, &w.to_dtype(x.dtype())?, eps),
            rms,
        );
        let ln = |x: &Tensor| -> candle_core::Result<Tensor> {
            let x = x.to_dtype(DType::F32)?;
            let c = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
            let var = c.sqr()?.mean_keepdim(D::Minus1)?;
            c.broadcast_div(&(var + eps)?.sqrt()?)?
                .broadcast_mul(&w)?
                .broadcast_add(&b)
        };
        same_gradient(
            &[3, 7, d],
            |x| layer_norm(x, &w.to_dtype(x.dtype())?, &b.to_dtype(x.dtype())?, eps),
            ln,
        );
    }

    /// The vendored candle-core's backprop (vendor/README.md): a constant gets no gradient
    /// (candle's own stored a zeroed buffer plus a sum for it), a tensor used twice gets both
    /// uses' sum, a first gradient that arrives as a view is stored contiguous, and
    /// `backward_keeping` keeps a chosen intermediate's gradient.
    #[test]
    fn backprop_skips_constants_and_sums_repeated_uses() {
        let dev = Device::Cpu;
        let x = Var::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev).unwrap();
        let w = Tensor::new(&[[1f32, 2., 0.], [0., 1., 3.]], &dev).unwrap();
        // loss = sum(2 * x * w + x): x's gradient is 2 w + 1, w's none.
        let h = x.as_tensor().mul(&w).unwrap();
        let loss = ((&h + x.as_tensor()).unwrap() + &h)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        assert!(grads.get(&w).is_none(), "a constant got a gradient");
        let gx = grads.get(x.as_tensor()).unwrap();
        assert_eq!(
            gx.to_vec2::<f32>().unwrap(),
            vec![vec![3f32, 5., 1.], vec![1., 3., 7.]]
        );
        // `backward_keeping` also keeps an intermediate's gradient (d loss / dh = 2); plain
        // backward keeps none.
        assert!(grads.get(&h).is_none());
        let kept = loss
            .backward_keeping(&std::collections::HashSet::from([h.id()]))
            .unwrap();
        assert_eq!(
            kept.get(&h).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![2f32; 3]; 2]
        );
        assert_eq!(
            kept.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap(),
            gx.to_vec2::<f32>().unwrap()
        );
        // Through a transpose alone, x's only gradient is a transposed view: stored contiguous.
        let y = x
            .as_tensor()
            .t()
            .unwrap()
            .mul(&w.t().unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let gy = y.backward().unwrap();
        assert!(gy.get(x.as_tensor()).unwrap().is_contiguous());
    }

    /// The swap equals candle's transpose + copy, with and without a size-1 axis, values and
    /// gradients.
    #[test]
    fn swap_axes12_is_transpose_then_copy() {
        for shape in [[2, 3, 5, 4], [2, 1, 5, 4], [2, 3, 1, 4]] {
            same_gradient(&shape, swap_axes12, |x| x.transpose(1, 2)?.contiguous());
        }
    }

    /// Both operands' gradients of a b^T equal candle's matmul-with-transpose ones, stored
    /// contiguous; an untracked operand gets none.
    #[test]
    fn matmul_nt_gradients_are_candles() {
        let dev = Device::Cpu;
        let values = |n: usize, k: usize| -> Vec<f32> {
            (0..n).map(|i| ((i * k % 97) as f32 / 13.0).sin()).collect()
        };
        let a = Var::from_vec(values(2 * 3 * 5 * 4, 7), (2, 3, 5, 4), &dev).unwrap();
        let b = Var::from_vec(values(2 * 3 * 6 * 4, 11), (2, 3, 6, 4), &dev).unwrap();
        let probe = Tensor::from_vec(values(2 * 3 * 5 * 6, 5), (2, 3, 5, 6), &dev).unwrap();
        let grads = |y: Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let ours = grads(matmul_nt(a.as_tensor(), b.as_tensor()).unwrap());
        let candles = grads(a.as_tensor().matmul(&b.as_tensor().t().unwrap()).unwrap());
        for v in [&a, &b] {
            let (g1, g2) = (ours.get(v).unwrap(), candles.get(v).unwrap());
            assert!(g1.is_contiguous());
            let gap = (g1 - g2).unwrap().abs().unwrap().max_all().unwrap();
            assert!(gap.to_scalar::<f32>().unwrap() < 1e-6);
        }
        let constant = b.as_tensor().detach();
        let y = matmul_nt(a.as_tensor(), &constant).unwrap();
        let only_a = grads(y);
        assert!(only_a.get(&constant).is_none());
        assert!(only_a.get(a.as_tensor()).is_some());
    }

    /// Whole-head rotary and Phi's partial one (the last dims passed through).
    #[test]
    fn rope_gradient_is_the_composites() {
        let dev = Device::Cpu;
        let (b, h, t, half) = (2, 3, 5, 4);
        let angles: Vec<f32> = (0..b * t * half).map(|i| i as f32 * 0.37).collect();
        let angles = Tensor::from_vec(angles, (b, t, half), &dev).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        for pass_through in [0, 3] {
            let rot = 2 * half;
            let composite = |x: &Tensor| -> candle_core::Result<Tensor> {
                let x = x.to_dtype(DType::F32)?;
                let c = cos.reshape((b, 1, t, half))?;
                let s = sin.reshape((b, 1, t, half))?;
                let (x1, x2) = (x.narrow(3, 0, half)?, x.narrow(3, half, half)?);
                let r1 = (x1.broadcast_mul(&c)? - x2.broadcast_mul(&s)?)?;
                let r2 = (x2.broadcast_mul(&c)? + x1.broadcast_mul(&s)?)?;
                let mut parts = vec![r1, r2];
                if pass_through > 0 {
                    parts.push(x.narrow(3, rot, pass_through)?);
                }
                Tensor::cat(&parts, 3)
            };
            same_gradient(
                &[b, h, t, rot + pass_through],
                |x| rope(x, &cos.to_dtype(x.dtype())?, &sin.to_dtype(x.dtype())?, rot),
                composite,
            );
        }
    }
}
