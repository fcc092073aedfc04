//! Continuous batching: one decoding thread per model serves every concurrent generation.
//! Requests that arrive together are prefilled together, then join the running batch (its KV cache rows are
//! concatenated, left-padded, to the others'); every step decodes one token for all rows at
//! once; a row leaves as soon as it finishes or its receiver is dropped. A long request never
//! holds back a short one, and concurrent requests share each step's weight reads. A request
//! may name a variant of the model (its low-rank edit): rows of the base and of any variants
//! decode in the same batch, each with its own corrections ([`RowEdits`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use candle_core::{DType, Tensor};
use rand::{rngs::StdRng, SeedableRng};

mod fixed;

use crate::batch::pack;
use crate::edit::Edit;
use crate::generate::{sample, token_logprob, SamplingParams, TokenCounts, TokenLogprob};
use crate::row_edits::RowEdits;
use crate::svd::site_map;
use crate::transformer::{KvCache, Transformer};
use crate::{EngineError, LoadedModel, Result};

/// A chosen token, with its log-probability and the top alternatives when the request asked
/// for logprobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub id: u32,
    pub logprob: Option<TokenLogprob>,
}

/// What a request receives, in order: tokens, then exactly one `Stop`, `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Token(Sampled),
    /// Finished: a stop token was chosen. It is no part of the text, but it was generated
    /// (echo logprobs and usage count it).
    Stop(Sampled),
    /// Finished: `max_tokens` tokens were sent (or `max_tokens` is 0).
    Done,
    Failed(String),
}

/// What the decoding thread is asked to do.
enum Work {
    Generate(Request),
    Score(ScoreRequest),
}

/// A prompt to score teacher-forced (echo logprobs): every token's log-probability given the
/// ones before it.
pub(crate) struct ScoreRequest {
    pub tokens: Vec<u32>,
    pub top: usize,
    pub variant: Option<Arc<Edit>>,
    pub reply: Sender<std::result::Result<Vec<TokenLogprob>, String>>,
}

struct Request {
    prompt: Vec<u32>,
    params: SamplingParams,
    events: Sender<Event>,
    /// The variant the request runs (None: the model itself).
    variant: Option<Arc<Edit>>,
}

/// A handle to a model's decoding thread; cheap to clone. The thread ends when every handle
/// is dropped and its last rows are done.
#[derive(Clone)]
pub struct Batcher {
    requests: Sender<Work>,
    load: Arc<Load>,
    /// The variant this handle's requests run (None: the model itself).
    variant: Option<Arc<Edit>>,
}

/// Sequences decoding now, and submitted ones not yet admitted (for /metrics).
#[derive(Default)]
struct Load {
    active: AtomicUsize,
    waiting: AtomicUsize,
    /// Decoding steps run (one token for every active row).
    steps: AtomicUsize,
}

impl Batcher {
    /// Starts the decoding thread for `model`; at most `max_rows` sequences decode together.
    /// The steps go over a fixed cache: on a GPU replaying CUDA graphs (unless
    /// `EIGENPRUNE_CUDA_GRAPHS=0`), on the CPU eagerly (f32 models).
    pub fn start(model: Arc<LoadedModel>, max_rows: usize) -> Self {
        let graphs = crate::fixed_decode::graphs_enabled(model.model.device());
        let fixed = crate::fixed_decode::fixed_steps(&model.model, graphs);
        Self::start_with(model, max_rows, fixed)
    }

    /// [`Batcher::start`] choosing the cache: `fixed_kv` steps over a fixed cache (CUDA graphs
    /// on a GPU, eager steps elsewhere), else over a growing one.
    pub fn start_with(model: Arc<LoadedModel>, max_rows: usize, fixed_kv: bool) -> Self {
        let (tx, rx) = channel();
        let load = Arc::new(Load::default());
        let l = load.clone();
        std::thread::Builder::new()
            .name("eigenprune-batcher".into())
            .spawn(move || run(&model.model, rx, max_rows.max(1), fixed_kv, &l))
            .expect("spawning the batcher thread");
        Self {
            requests: tx,
            load,
            variant: None,
        }
    }

    /// A handle whose requests run `variant` (its edit) in this model's batch.
    pub fn with_variant(&self, variant: Option<Arc<Edit>>) -> Self {
        Self {
            variant,
            ..self.clone()
        }
    }

    /// (sequences decoding, sequences waiting to join).
    pub fn load(&self) -> (usize, usize) {
        (
            self.load.active.load(Ordering::Relaxed),
            self.load.waiting.load(Ordering::Relaxed),
        )
    }

    /// Decoding steps this batcher has run.
    pub fn steps(&self) -> usize {
        self.load.steps.load(Ordering::Relaxed)
    }

    /// Queues a generation; its events arrive on the returned receiver. Dropping the receiver
    /// cancels it at the next step.
    pub fn submit(&self, prompt: Vec<u32>, params: SamplingParams) -> Receiver<Event> {
        self.submit_to(prompt, params, self.variant.clone())
    }

    /// [`Batcher::submit`] for a variant of the model (its edit, shared by its requests); it
    /// decodes in the same batch as the model's other rows.
    pub fn submit_to(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
        variant: Option<Arc<Edit>>,
    ) -> Receiver<Event> {
        let (events, rx) = channel();
        let request = Request {
            prompt,
            params,
            events,
            variant,
        };
        self.send(Work::Generate(request));
        rx
    }

    /// Hands `work` to the decoding thread, or tells its requester the thread is gone.
    fn send(&self, work: Work) {
        self.load.waiting.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.requests.send(work) {
            self.load.waiting.fetch_sub(1, Ordering::Relaxed);
            let gone = "the model was unloaded".to_string();
            match e.0 {
                Work::Generate(r) => {
                    let _ = r.events.send(Event::Failed(gone));
                }
                Work::Score(r) => {
                    let _ = r.reply.send(Err(gone));
                }
            }
        }
    }

    /// Scores `tokens` teacher-forced on the model (or this handle's variant): entry i is
    /// token i+1's log-probability and the `top` alternatives there. Scoring requests that
    /// arrive together run in one batched forward pass, whatever their variants.
    pub fn score(
        &self,
        tokens: Vec<u32>,
        top: usize,
    ) -> Receiver<std::result::Result<Vec<TokenLogprob>, String>> {
        let variant = self.variant.clone();
        let (reply, rx) = channel();
        let request = ScoreRequest {
            tokens,
            top,
            variant,
            reply,
        };
        self.send(Work::Score(request));
        rx
    }
}

/// One sequence in the running batch.
struct Row {
    params: SamplingParams,
    rng: StdRng,
    last: u32,
    sent: usize,
    /// Tokens generated so far, for the penalties.
    counts: TokenCounts,
    events: Sender<Event>,
    variant: Option<Arc<Edit>>,
}

/// The running batch's corrections, rebuilt only when its rows' variants change.
#[derive(Default)]
struct BatchEdits {
    key: Vec<usize>,
    edits: Option<RowEdits>,
}

impl BatchEdits {
    fn for_rows(&mut self, model: &Transformer, rows: &[Row]) -> Result<Option<&RowEdits>> {
        let variants: Vec<Option<&Arc<Edit>>> = rows.iter().map(|r| r.variant.as_ref()).collect();
        self.for_variants(model, &variants)
    }

    /// The corrections of rows running `variants` (None: the model itself).
    fn for_variants(
        &mut self,
        model: &Transformer,
        variants: &[Option<&Arc<Edit>>],
    ) -> Result<Option<&RowEdits>> {
        let key: Vec<usize> = variants
            .iter()
            .map(|v| v.map_or(0, |e| Arc::as_ptr(e) as usize))
            .collect();
        if key != self.key {
            self.edits = row_edits(model, variants, self.edits.as_ref())?;
            self.key = key;
        }
        Ok(self.edits.as_ref())
    }
}

/// The corrections of rows running `variants` (None when every row is the model itself),
/// reusing what `previous` (the batch's last composition) prepared.
pub(crate) fn row_edits(
    model: &Transformer,
    variants: &[Option<&Arc<Edit>>],
    previous: Option<&RowEdits>,
) -> Result<Option<RowEdits>> {
    if variants.iter().all(Option::is_none) {
        return Ok(None);
    }
    let mut distinct: Vec<&Arc<Edit>> = Vec::new();
    let rows: Vec<Option<usize>> = variants
        .iter()
        .map(|v| {
            v.map(|e| match distinct.iter().position(|d| Arc::ptr_eq(d, e)) {
                Some(k) => k,
                None => {
                    distinct.push(e);
                    distinct.len() - 1
                }
            })
        })
        .collect();
    Ok(Some(RowEdits::reusing(
        &distinct,
        &rows,
        model.device(),
        model.dtype(),
        previous,
    )?))
}

/// Whether `edit` fits `model`: low-rank only, every map's factors of its shape.
pub(crate) fn check_variant(model: &Transformer, edit: &Edit) -> Result<()> {
    if !edit.finetuned.is_empty() {
        return Err(EngineError::InvalidInput(
            "a fine-tuned variant is a full model; it cannot share its base's batch".into(),
        ));
    }
    for m in &edit.matrices {
        if m.layer >= model.config.n_layers {
            return Err(EngineError::InvalidInput(format!(
                "the variant edits layer {} of a {}-layer model",
                m.layer, model.config.n_layers
            )));
        }
        let (out, d_in) = site_map(model, m.layer, m.component).0.weight.dims2()?;
        if m.a.dims() != [m.rank(), d_in] || m.b.dims() != [out, m.rank()] {
            return Err(EngineError::ShapeMismatch {
                name: format!("layers.{}.{} edit", m.layer, m.component.name()),
                found: vec![m.b.dim(0)?, m.a.dim(1)?],
                expected: vec![out, d_in],
            });
        }
    }
    Ok(())
}

/// The running batch's keys and values: a growing cache (eager steps), or a fixed one whose
/// steps replay CUDA graphs on a GPU ([`fixed::FixedBatch`]).
enum BatchKv {
    Growing(KvCache),
    Fixed(fixed::FixedBatch),
}

impl BatchKv {
    fn new(fixed: bool) -> Self {
        match fixed {
            true => Self::Fixed(Default::default()),
            false => Self::Growing(KvCache::default()),
        }
    }

    /// Adds the newly prefilled rows (the last `own.rows()` of `rows`) with their cache.
    fn join(&mut self, model: &Transformer, rows: &[Row], own: KvCache) -> Result<()> {
        match self {
            Self::Growing(cache) => {
                *cache = std::mem::take(cache).concat(own)?;
                Ok(())
            }
            Self::Fixed(batch) => batch.join(model, rows, own),
        }
    }

    /// Empties it (after a failure that ended every row).
    fn reset(&mut self) {
        *self = Self::new(matches!(self, Self::Fixed(_)));
    }

    fn step(
        &mut self,
        model: &Transformer,
        rows: &mut Vec<Row>,
        edits: &mut BatchEdits,
    ) -> Result<()> {
        match self {
            Self::Growing(cache) => {
                let edits = edits.for_rows(model, rows)?;
                step(model, rows, cache, edits)
            }
            Self::Fixed(batch) => batch.step(model, rows, edits),
        }
    }
}

fn run(
    model: &Transformer,
    requests: Receiver<Work>,
    max_rows: usize,
    fixed_kv: bool,
    load: &Load,
) {
    let mut rows: Vec<Row> = Vec::new();
    let mut kv = BatchKv::new(fixed_kv);
    let mut batch_edits = BatchEdits::default();
    loop {
        load.active.store(rows.len(), Ordering::Relaxed);
        // Admit waiting requests (block only when idle), then prefill them together.
        let mut arrivals = Vec::new();
        let mut scores = Vec::new();
        while rows.len() + arrivals.len() + scores.len() < max_rows {
            let next = if rows.is_empty() && arrivals.is_empty() && scores.is_empty() {
                match requests.recv() {
                    Ok(r) => r,
                    Err(_) => return,
                }
            } else {
                match requests.try_recv() {
                    Ok(r) => r,
                    Err(_) => break,
                }
            };
            load.waiting.fetch_sub(1, Ordering::Relaxed);
            match next {
                Work::Generate(r) => arrivals.push(r),
                Work::Score(r) => scores.push(r),
            }
        }
        crate::batch_scoring::score_all(model, scores);
        if let Some((new_rows, own)) = prefill(model, arrivals, batch_edits.edits.as_ref()) {
            rows.extend(new_rows);
            if let Err(e) = kv.join(model, &rows, own) {
                fail_all(&mut rows, &e);
                kv.reset();
            }
        }
        if rows.is_empty() {
            continue;
        }
        load.steps.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = kv.step(model, &mut rows, &mut batch_edits) {
            fail_all(&mut rows, &e);
            kv.reset();
        }
    }
}

fn fail_all(rows: &mut Vec<Row>, e: &EngineError) {
    for r in rows.drain(..) {
        let _ = r.events.send(Event::Failed(e.to_string()));
    }
}

/// Runs newly arrived prompts together (left-padded) on a cache of their own and sends each
/// its first token. Returns the rows that go on decoding with their cache, if any; requests
/// already done (max_tokens 0 or 1, a stop token, a dropped receiver) or failed are told so.
/// Variants the running batch has prepared (`running`) are reused.
fn prefill(
    model: &Transformer,
    requests: Vec<Request>,
    running: Option<&RowEdits>,
) -> Option<(Vec<Row>, KvCache)> {
    let mut ready = Vec::with_capacity(requests.len());
    for r in requests {
        let misfit = r
            .variant
            .as_ref()
            .and_then(|e| check_variant(model, e).err());
        if r.prompt.is_empty() {
            let _ = r.events.send(Event::Failed("the prompt is empty".into()));
        } else if let Some(e) = misfit {
            let _ = r.events.send(Event::Failed(e.to_string()));
        } else if r.params.max_tokens == 0 {
            let _ = r.events.send(Event::Done);
        } else {
            ready.push(r);
        }
    }
    if ready.is_empty() {
        return None;
    }
    let events: Vec<Sender<Event>> = ready.iter().map(|r| r.events.clone()).collect();
    match try_prefill(model, ready, running) {
        Ok(out) => out,
        Err(e) => {
            for ev in events {
                let _ = ev.send(Event::Failed(e.to_string()));
            }
            None
        }
    }
}

fn try_prefill(
    model: &Transformer,
    requests: Vec<Request>,
    running: Option<&RowEdits>,
) -> Result<Option<(Vec<Row>, KvCache)>> {
    let prompts: Vec<Vec<u32>> = requests.iter().map(|r| r.prompt.clone()).collect();
    let packed = pack(&prompts, true, 0, model.device())?;
    let mut cache = KvCache::default();
    let variants: Vec<Option<&Arc<Edit>>> = requests.iter().map(|r| r.variant.as_ref()).collect();
    let hidden = match row_edits(model, &variants, running)? {
        Some(e) => model.forward_with_edits(&packed.ids, &packed.valid, Some(&mut cache), &e)?,
        None => model.forward(&packed.ids, &packed.valid, Some(&mut cache), None)?,
    };
    let last = hidden.narrow(1, packed.width - 1, 1)?.squeeze(1)?;
    let logits = model.logits(&last)?.to_dtype(DType::F32)?;
    let (mut rows, mut keep) = (Vec::new(), Vec::new());
    for (i, req) in requests.into_iter().enumerate() {
        let mut row = Row {
            rng: StdRng::seed_from_u64(req.params.seed),
            params: req.params,
            last: 0,
            sent: 0,
            counts: TokenCounts::new(),
            events: req.events,
            variant: req.variant,
        };
        let token = choose(&mut row, &logits.get(i)?)?;
        if emit(&mut row, token) {
            rows.push(row);
            keep.push(i);
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let cache = if keep.len() < cache.rows() {
        cache.select(&keep)?
    } else {
        cache
    };
    Ok(Some((rows, cache)))
}

/// Samples the row's next token from its logits, with its logprobs when asked for.
fn choose(row: &mut Row, logits: &Tensor) -> Result<Sampled> {
    let id = sample(logits, &row.params, &row.counts, &mut row.rng)?;
    *row.counts.entry(id).or_insert(0) += 1;
    let logprob = match row.params.logprobs {
        Some(top) => Some(token_logprob(logits, id, top)?),
        None => None,
    };
    Ok(Sampled { id, logprob })
}

/// Sends `token` to the row's request (a stop token as `Stop`). Returns whether the row stays
/// in the batch.
fn emit(row: &mut Row, token: Sampled) -> bool {
    if row.params.stop_tokens.contains(&token.id) {
        let _ = row.events.send(Event::Stop(token));
        return false;
    }
    let id = token.id;
    if row.events.send(Event::Token(token)).is_err() {
        return false;
    }
    row.sent += 1;
    row.last = id;
    if row.sent >= row.params.max_tokens {
        let _ = row.events.send(Event::Done);
        return false;
    }
    true
}

/// One decoding step for every row; finished rows leave the batch and the cache.
fn step(
    model: &Transformer,
    rows: &mut Vec<Row>,
    cache: &mut KvCache,
    edits: Option<&RowEdits>,
) -> Result<()> {
    let last: Vec<u32> = rows.iter().map(|r| r.last).collect();
    let ids = Tensor::new(last.as_slice(), model.device())?.unsqueeze(1)?;
    let valid = vec![vec![true]; rows.len()];
    let hidden = match edits {
        Some(e) => model.forward_with_edits(&ids, &valid, Some(cache), e)?,
        None => model.forward(&ids, &valid, Some(cache), None)?,
    };
    let logits = model
        .decoding_logits(&hidden.squeeze(1)?)?
        .to_dtype(DType::F32)?;
    let mut stays = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter_mut().enumerate() {
        let token = choose(row, &logits.get(i)?)?;
        stays.push(emit(row, token));
    }
    if stays.contains(&false) {
        let keep: Vec<usize> = (0..rows.len()).filter(|&i| stays[i]).collect();
        *cache = cache.select(&keep)?;
        let mut stays = stays.into_iter();
        rows.retain(|_| stays.next().unwrap_or(false));
    }
    Ok(())
}
