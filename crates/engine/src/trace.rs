//! Recording the inputs of chosen linear maps during a forward pass, and the gradients
//! at their outputs after backward: exactly what eigenpruning's attribution needs.

use std::collections::{HashMap, HashSet};

use candle_core::{backprop::GradStore, Tensor, TensorId, Var};

/// The linear maps of a block that can be traced (and pruned).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Q,
    K,
    V,
    /// Attention output projection.
    O,
    /// First MLP map (`up`/`fc1`/`c_fc`; gated MLPs trace `up`).
    MlpIn,
    /// Second MLP map (`down`/`fc2`/`c_proj`).
    MlpOut,
}

impl Component {
    pub const ALL: [Component; 6] = [
        Component::K,
        Component::Q,
        Component::V,
        Component::O,
        Component::MlpIn,
        Component::MlpOut,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Component::Q => "q",
            Component::K => "k",
            Component::V => "v",
            Component::O => "o",
            Component::MlpIn => "mlp_in",
            Component::MlpOut => "mlp_out",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// What the forward recorded for one (layer, component).
#[derive(Clone, Debug)]
pub struct Record {
    /// The map's true input, [B, T, d_in] (detached).
    pub input: Tensor,
    /// The residual stream before the block's norm, [B, T, d_model] (detached);
    /// only for maps that read a normed residual (q, k, v, mlp_in).
    pub resid_pre: Option<Tensor>,
    /// The map's output as the forward used it: [`Trace::backward`] keeps its gradient.
    pub output: Tensor,
}

/// Ask the forward to record some components; read the records and their gradients after.
#[derive(Debug, Default)]
pub struct Trace {
    components: Vec<Component>,
    records: HashMap<(usize, Component), Record>,
}

impl Trace {
    pub fn new(components: &[Component]) -> Self {
        Self {
            components: components.to_vec(),
            records: HashMap::new(),
        }
    }

    pub fn wants(&self, component: Component) -> bool {
        self.components.contains(&component)
    }

    /// Records a map's input and output. An output that depends on no variable (the first
    /// traced maps: the weights are constants) becomes one, a copy; the later outputs depend
    /// on it and are tracked as they are, with no probe added: [`Trace::backward`] keeps their
    /// gradients.
    pub(crate) fn tap(
        &mut self,
        layer: usize,
        component: Component,
        input: &Tensor,
        resid_pre: Option<&Tensor>,
        output: Tensor,
    ) -> candle_core::Result<Tensor> {
        if !self.wants(component) {
            return Ok(output);
        }
        let output = if output.track_op() {
            output
        } else {
            Var::from_tensor(&output)?.into_inner()
        };
        let record = Record {
            input: input.detach(),
            resid_pre: resid_pre.map(Tensor::detach),
            output: output.clone(),
        };
        self.records.insert((layer, component), record);
        Ok(output)
    }

    /// Backprop from `loss`, keeping the gradient at every recorded output.
    pub fn backward(&self, loss: &Tensor) -> candle_core::Result<GradStore> {
        let keep: HashSet<TensorId> = self.records.values().map(|r| r.output.id()).collect();
        loss.backward_keeping(&keep)
    }

    pub fn get(&self, layer: usize, component: Component) -> Option<&Record> {
        self.records.get(&(layer, component))
    }

    /// The gradient of the loss at the map's output, [B, T, d_out], from the store
    /// [`Trace::backward`] returned (a plain `backward` keeps only the first layer's).
    pub fn output_grad<'g>(
        &self,
        grads: &'g GradStore,
        layer: usize,
        component: Component,
    ) -> Option<&'g Tensor> {
        self.get(layer, component)
            .and_then(|r| grads.get(&r.output))
    }
}
