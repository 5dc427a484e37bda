//! From tokenized prompts to answers: submitting them to the engine loop, and turning its
//! events into text cut at stop strings, finish reasons, usage and log-probabilities, whole
//! or as server-sent events.

use std::convert::Infallible;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use bora_engine::sampler::TokenLogprobs;
use bora_engine::serving::{Event, FinishReason, Request, StopText};
use bora_engine::{SamplingParams, StreamDecoder, Tokenizer};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::error::{bad_request, error, ApiError, ApiResult};
use crate::App;

/// One choice to compute: a prompt and how to sample it.
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// Text shown before the answer (`echo`), if any.
    pub echo: Option<String>,
}

/// What every choice of a request shares.
pub struct Spec {
    pub max_tokens: Option<usize>,
    /// Go on past the model's stop tokens.
    pub ignore_eos: bool,
    pub logprobs: Option<usize>,
    pub prompt_logprobs: bool,
}

/// One request in the engine (waiting or running); dropped with its sink.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// A submitted choice: its events arrive on `rx`.
pub struct Submitted {
    pub index: usize,
    pub job: Job,
    rx: UnboundedReceiver<Event>,
}

/// Submits every job, or none: a request whose choices do not all fit the queue gets 429.
pub fn submit(app: &App, jobs: Vec<Job>, spec: &Spec) -> ApiResult<Vec<Submitted>> {
    for job in &jobs {
        if job.prompt.len() >= app.context {
            return Err(bad_request(format!(
                "the prompt has {} tokens; the context is {} tokens",
                job.prompt.len(),
                app.context
            )));
        }
        if job.prompt.is_empty() {
            return Err(bad_request("the prompt is empty"));
        }
        if let Some(&id) = job.prompt.iter().find(|&&t| t as usize >= app.vocab) {
            return Err(bad_request(format!(
                "prompt token {id} is outside the vocabulary of {}",
                app.vocab
            )));
        }
    }
    let k = jobs.len();
    if k > app.max_queue {
        return Err(bad_request(format!(
            "{k} choices are more than the server queues at once ({})",
            app.max_queue
        )));
    }
    let before = app.in_flight.fetch_add(k, SeqCst);
    if before + k > app.max_queue {
        app.in_flight.fetch_sub(k, SeqCst);
        return Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("{before} requests are already queued or running; try again shortly"),
        ));
    }
    let engine = app.engine.lock().map_err(|_| stopped())?;
    let mut out = Vec::with_capacity(k);
    for (index, job) in jobs.into_iter().enumerate() {
        let ticket = InFlight(app.in_flight.clone());
        let (tx, rx) = unbounded_channel();
        let watch = tx.clone();
        let max_tokens = spec.max_tokens.unwrap_or(app.context - job.prompt.len());
        let req = Request {
            prompt: job.prompt.clone(),
            max_tokens,
            sampling: job.params.clone(),
            stop_tokens: if spec.ignore_eos {
                Vec::new()
            } else {
                app.stop_tokens.clone()
            },
            logprobs: spec.logprobs,
            prompt_logprobs: spec.prompt_logprobs,
            sink: Box::new(move |e| {
                let _held = &ticket;
                tx.send(e).is_ok()
            }),
            cancelled: Box::new(move || watch.is_closed()),
        };
        engine.send(req).map_err(|_| stopped())?;
        out.push(Submitted { index, job, rx });
    }
    Ok(out)
}

fn stopped() -> ApiError {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "the engine has stopped",
    )
}

/// A token as the API shows it: its text, log-probability and the best alternatives.
#[derive(Clone)]
pub struct ShownToken {
    pub text: String,
    /// What the token stands for, which for part of a character is not `text`'s bytes.
    pub bytes: Vec<u8>,
    /// None for a prompt's first token, which nothing predicts.
    pub logprob: Option<f32>,
    /// Alternatives: text, log-probability, bytes.
    pub top: Vec<(String, f32, Vec<u8>)>,
}

/// The text `id` adds after `prev`: decoding a pair keeps SentencePiece's leading space.
fn token_text(tok: &Tokenizer, prev: Option<u32>, id: u32) -> String {
    match prev {
        Some(p) => {
            let before = tok.decode(&[p]);
            let both = tok.decode(&[p, id]);
            both.strip_prefix(before.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| tok.decode(&[id]))
        }
        None => tok.decode(&[id]),
    }
}

/// A token's bytes: its text's, unless the token is part of a character.
fn bytes_of(tok: &Tokenizer, text: &str, id: u32) -> Vec<u8> {
    if text.contains('\u{FFFD}') {
        tok.token_bytes(id)
    } else {
        text.as_bytes().to_vec()
    }
}

fn shown(tok: &Tokenizer, prev: Option<u32>, lp: &TokenLogprobs) -> ShownToken {
    let text = token_text(tok, prev, lp.token);
    ShownToken {
        bytes: bytes_of(tok, &text, lp.token),
        text,
        logprob: Some(lp.logprob),
        top: lp
            .top
            .iter()
            .map(|&(id, v)| {
                let text = token_text(tok, prev, id);
                let bytes = bytes_of(tok, &text, id);
                (text, v, bytes)
            })
            .collect(),
    }
}

/// Token counts of a finished choice.
#[derive(Clone, Copy, Default)]
pub struct Usage {
    pub prompt: usize,
    pub completion: usize,
    pub cached: usize,
}

/// What the next event means for the client.
pub enum Step {
    /// Text (possibly empty) and the tokens whose log-probabilities go with it.
    Text(String, Vec<ShownToken>),
    /// The answer is over: the last text and tokens, why, and usage.
    End(String, Vec<ShownToken>, FinishReason, Usage),
    Fail(String),
}

/// One choice's events turned into what the client sees.
pub struct ChoiceOut {
    dec: StreamDecoder,
    stops: StopText,
    prompt: Vec<u32>,
    prev: Option<u32>,
    tokens: usize,
    /// Log-probabilities not yet sent with text.
    pending: Vec<ShownToken>,
    /// Prompt tokens the prefix cache supplied.
    cached: usize,
    start: Instant,
    last: Option<Instant>,
}

impl ChoiceOut {
    pub fn new(prompt: &[u32], stops: Vec<String>) -> Self {
        Self {
            dec: StreamDecoder::new(prompt),
            stops: StopText::new(stops),
            prompt: prompt.to_vec(),
            prev: prompt.last().copied(),
            tokens: 0,
            pending: Vec::new(),
            cached: 0,
            start: Instant::now(),
            last: None,
        }
    }

    fn usage(&self, completion: usize, cached: usize) -> Usage {
        Usage {
            prompt: self.prompt.len(),
            completion,
            cached,
        }
    }

    pub fn step(&mut self, app: &App, e: Event) -> Step {
        let tok = &app.tokenizer;
        match e {
            Event::Prompt {
                cached_tokens,
                logprobs,
            } => {
                self.cached = cached_tokens;
                let Some(lps) = logprobs else {
                    return Step::Text(String::new(), Vec::new());
                };
                let first = token_text(tok, None, self.prompt[0]);
                let mut shown_lps = vec![ShownToken {
                    bytes: bytes_of(tok, &first, self.prompt[0]),
                    text: first,
                    logprob: None,
                    top: Vec::new(),
                }];
                for (i, lp) in lps.iter().enumerate() {
                    shown_lps.push(shown(tok, Some(self.prompt[i]), lp));
                }
                Step::Text(String::new(), shown_lps)
            }
            Event::Token { id, logprobs } => {
                let now = Instant::now();
                match self.last {
                    None => app.http.ttft.observe((now - self.start).as_secs_f64()),
                    Some(prev) => app.http.itl.observe((now - prev).as_secs_f64()),
                }
                self.last = Some(now);
                self.tokens += 1;
                if let Some(lp) = &logprobs {
                    self.pending.push(shown(tok, self.prev, lp));
                }
                self.prev = Some(id);
                let piece = self.dec.push(tok, id).unwrap_or_default();
                match self.stops.push(&piece) {
                    // Stopped: the caller drops the receiver, which ends the sequence.
                    (text, true) => Step::End(
                        text,
                        std::mem::take(&mut self.pending),
                        FinishReason::Stop,
                        self.usage(self.tokens, self.cached),
                    ),
                    (text, false) if text.is_empty() => Step::Text(text, Vec::new()),
                    (text, false) => Step::Text(text, std::mem::take(&mut self.pending)),
                }
            }
            Event::Done {
                reason,
                completion_tokens,
                cached_tokens,
                ..
            } => {
                let rest = self.dec.flush(tok).unwrap_or_default();
                let lps = std::mem::take(&mut self.pending);
                let usage = self.usage(completion_tokens, cached_tokens);
                match self.stops.push(&rest) {
                    (text, true) => Step::End(text, lps, FinishReason::Stop, usage),
                    (text, false) => Step::End(text + &self.stops.flush(), lps, reason, usage),
                }
            }
            Event::Error(msg) => Step::Fail(msg),
        }
    }
}

/// A whole choice.
pub struct Answer {
    pub index: usize,
    pub text: String,
    pub tokens: Vec<ShownToken>,
    pub reason: FinishReason,
    pub usage: Usage,
}

/// Waits for every choice to end.
pub async fn collect(app: &App, subs: Vec<Submitted>, stops: &[String]) -> ApiResult<Vec<Answer>> {
    let mut out = Vec::with_capacity(subs.len());
    for mut sub in subs {
        let mut c = ChoiceOut::new(&sub.job.prompt, stops.to_vec());
        let mut text = sub.job.echo.take().unwrap_or_default();
        let mut tokens = Vec::new();
        let answer = loop {
            let Some(e) = sub.rx.recv().await else {
                return Err(engine_failed("the engine dropped the request"));
            };
            match c.step(app, e) {
                Step::Text(t, lps) => {
                    text.push_str(&t);
                    tokens.extend(lps);
                }
                Step::End(t, lps, reason, usage) => {
                    text.push_str(&t);
                    tokens.extend(lps);
                    break Answer {
                        index: sub.index,
                        text,
                        tokens,
                        reason,
                        usage,
                    };
                }
                Step::Fail(msg) => return Err(engine_failed(msg)),
            }
        };
        out.push(answer);
    }
    Ok(out)
}

fn engine_failed(msg: impl Into<String>) -> ApiError {
    error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", msg)
}

/// One streamed piece of one choice.
pub struct Chunk<'a> {
    pub index: usize,
    pub text: &'a str,
    pub tokens: &'a [ShownToken],
    /// Where the first of `tokens` starts in the choice's token texts so far.
    pub offset: usize,
    pub finish: Option<FinishReason>,
}

/// Usage of a whole request whose choices are `n` per prompt: each prompt counts once.
pub fn total_usage<'a>(usages: impl IntoIterator<Item = (usize, &'a Usage)>, n: usize) -> Usage {
    let mut total = Usage::default();
    for (index, u) in usages {
        if index % n == 0 {
            total.prompt += u.prompt;
            total.cached += u.cached;
        }
        total.completion += u.completion;
    }
    total
}

pub fn usage_json(u: &Usage) -> Value {
    json!({"prompt_tokens": u.prompt, "completion_tokens": u.completion,
           "total_tokens": u.prompt + u.completion,
           "prompt_tokens_details": {"cached_tokens": u.cached}})
}

/// The fields around an answer's or a chunk's choices.
#[derive(Clone)]
pub struct Envelope {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
}

impl Envelope {
    pub fn new(app: &App, id_prefix: &str, object: &'static str) -> Self {
        let created = crate::request::now();
        Self {
            id: format!("{id_prefix}-{created}"),
            object,
            created,
            model: app.model_name.clone(),
        }
    }

    /// The same answer as another kind of object (chat: a chunk, or the whole answer).
    pub fn as_object(&self, object: &'static str) -> Self {
        Self {
            object,
            ..self.clone()
        }
    }

    pub fn wrap(&self, choices: Vec<Value>, usage: Option<&Usage>) -> Value {
        let mut v = json!({"id": self.id, "object": self.object, "created": self.created,
                           "model": self.model, "choices": choices});
        if let Some(u) = usage {
            v["usage"] = usage_json(u);
        }
        v
    }
}

/// Server-sent events: every choice's pieces as they come (`choice` renders one), then,
/// when asked, a chunk with the whole request's usage, then `[DONE]`. A client that goes
/// away drops the receivers, which cancels the sequences.
pub fn stream(
    app: Arc<App>,
    subs: Vec<Submitted>,
    n: usize,
    stops: Vec<String>,
    envelope: Envelope,
    include_usage: bool,
    choice: impl Fn(&Chunk) -> Value + Send + Sync + 'static,
) -> Response {
    let env = envelope.clone();
    let render = move |c: &Chunk| env.wrap(vec![choice(c)], None);
    let (tx, out) = unbounded_channel::<std::result::Result<SseEvent, Infallible>>();
    let render = Arc::new(render);
    let mut tasks = Vec::new();
    for mut sub in subs {
        let (app, tx, render, stops) = (app.clone(), tx.clone(), render.clone(), stops.clone());
        tasks.push(tokio::spawn(async move {
            let send = |v: Value| tx.send(Ok(SseEvent::default().data(v.to_string()))).is_ok();
            let mut c = ChoiceOut::new(&sub.job.prompt, stops);
            let index = sub.index;
            let mut offset = 0;
            let mut piece = |text: &str, tokens: &[ShownToken], finish| {
                let chunk = Chunk {
                    index,
                    text,
                    tokens,
                    offset,
                    finish,
                };
                offset += tokens.iter().map(|t| t.text.len()).sum::<usize>();
                send(render(&chunk))
            };
            if let Some(echo) = sub.job.echo.take() {
                if !echo.is_empty() && !piece(&echo, &[], None) {
                    return None;
                }
            }
            loop {
                // A client that leaves while its request waits or reads its prompt is
                // noticed here, not only at its first token.
                let e = tokio::select! {
                    e = sub.rx.recv() => e,
                    _ = tx.closed() => return None,
                };
                let e = e?;
                match c.step(&app, e) {
                    Step::Text(t, lps) if t.is_empty() && lps.is_empty() => {}
                    Step::Text(t, lps) => {
                        if !piece(&t, &lps, None) {
                            return None;
                        }
                    }
                    Step::End(t, lps, reason, usage) => {
                        if !t.is_empty() || !lps.is_empty() {
                            piece(&t, &lps, None);
                        }
                        piece("", &[], Some(reason));
                        return Some((index, usage));
                    }
                    Step::Fail(msg) => {
                        send(json!({"error": {"message": msg, "type": "server_error"}}));
                        return None;
                    }
                }
            }
        }));
    }
    tokio::spawn(async move {
        let mut usages = Vec::new();
        for t in tasks {
            if let Ok(Some(u)) = t.await {
                usages.push(u);
            }
        }
        let total = total_usage(usages.iter().map(|(i, u)| (*i, u)), n);
        if include_usage {
            let last = envelope.wrap(Vec::new(), Some(&total));
            tx.send(Ok(SseEvent::default().data(last.to_string()))).ok();
        }
        tx.send(Ok(SseEvent::default().data("[DONE]"))).ok();
    });
    Sse::new(tokio_stream::wrappers::UnboundedReceiverStream::new(out)).into_response()
}
