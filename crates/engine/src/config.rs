//! One normalised description of every supported decoder-only transformer.

/// The checkpoint families the engine loads; `models/` maps each onto [`ModelConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Gpt2,
    Phi,
    Llama,
    Mistral,
    Qwen2,
    Gemma3,
}

pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "GPT2LMHeadModel (gpt2)",
    "PhiForCausalLM (phi)",
    "LlamaForCausalLM (llama)",
    "MistralForCausalLM (mistral)",
    "Qwen2ForCausalLM (qwen2)",
    "Gemma3ForCausalLM (gemma3_text)",
];

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Gpt2 => "gpt2",
            Arch::Phi => "phi",
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3_text",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// LayerNorm: centre, scale by 1/std, then gamma and beta.
    LayerNorm,
    /// RMSNorm: scale by 1/rms, then gamma.
    RmsNorm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// GELU with the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// Exact GELU (`gelu`).
    GeluErf,
    Silu,
}

impl Activation {
    pub fn from_hf(name: &str) -> crate::Result<Self> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            "gelu" => Ok(Self::GeluErf),
            "silu" | "swish" => Ok(Self::Silu),
            other => Err(crate::EngineError::BadConfig(format!(
                "unsupported activation `{other}`"
            ))),
        }
    }
}

/// Shapes and flavours of a model, independent of its checkpoint's naming.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_mlp: usize,
    pub norm: NormKind,
    pub norm_eps: f64,
    /// Learned absolute positions (GPT-2) when 0; else rotary on the first `rotary_dims` of each head.
    pub rotary_dims: usize,
    pub rope_theta: f64,
    pub max_positions: usize,
    /// Phi: attention and MLP read the same normed input and add in parallel.
    pub parallel_block: bool,
    /// Llama family: down(act(gate(x)) * up(x)).
    pub gated_mlp: bool,
    pub activation: Activation,
    pub sliding_window: Option<usize>,
    /// Which layers attend locally (Gemma-3 interleaves sliding-window and global layers);
    /// empty: every layer uses `sliding_window` (None = global).
    pub local_layers: Vec<bool>,
    /// Rotary base of the local layers, when it differs from `rope_theta` (Gemma-3).
    pub rope_local_theta: Option<f64>,
    /// Embeddings are multiplied by this (Gemma: sqrt(d_model)).
    pub embed_scale: Option<f64>,
    /// Attention logits are multiplied by this; None = 1/sqrt(head_dim).
    pub query_scale: Option<f64>,
    pub tie_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    /// Whether `layer` attends within `sliding_window` only.
    pub fn is_local(&self, layer: usize) -> bool {
        self.sliding_window.is_some() && self.local_layers.get(layer).copied().unwrap_or(true)
    }
    /// The attention windows: of the layers that are not local, and of the local ones where
    /// some layers attend locally and others globally (Gemma-3); None where none.
    pub fn attention_windows(&self) -> (Option<usize>, Option<usize>) {
        match self.sliding_window.is_some() && !self.local_layers.is_empty() {
            true => (None, self.sliding_window),
            false => (self.sliding_window, None),
        }
    }
    /// The window `layer` attends within (None: every earlier position).
    pub fn window(&self, layer: usize) -> Option<usize> {
        match self.attention_windows() {
            (_, Some(local)) if self.is_local(layer) => Some(local),
            (main, _) => main,
        }
    }
    /// Sanity checks shared by every loader.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::EngineError::BadConfig(m));
        if self.n_heads == 0
            || self.n_kv_heads == 0
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
        {
            return bad(format!(
                "{} attention heads cannot be grouped over {} key/value heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.rotary_dims.is_multiple_of(2) || self.rotary_dims > self.head_dim {
            return bad(format!(
                "rotary dims {} must be even and at most head_dim {}",
                self.rotary_dims, self.head_dim
            ));
        }
        if self.vocab_size == 0 || self.d_model == 0 || self.n_layers == 0 {
            return bad("vocab_size, hidden size and layer count must be positive".into());
        }
        Ok(())
    }
}
