//! `bora serve`: an OpenAI-compatible HTTP server (axum) in front of the continuous-batching
//! loop. Handlers tokenize, hand the request to the engine thread, and turn its token events
//! into a JSON answer or a server-sent-event stream.

use std::convert::Infallible;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bora_engine::chat::{ChatFormat, Message};
use bora_engine::serving::{
    spawn, Event, FinishReason, Request, ServeOptions, ServeStats, StopText,
};
use bora_engine::{SamplingParams, StreamDecoder, Tokenizer};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::args::ServeArgs;

/// Counters the HTTP side keeps, for `/metrics`.
#[derive(Default)]
struct HttpStats {
    /// Responses by status code.
    by_status: std::sync::Mutex<std::collections::BTreeMap<u16, u64>>,
    /// Seconds from a request's arrival to its first token.
    ttft: Histogram,
    /// Seconds between tokens of one answer.
    itl: Histogram,
}

/// A Prometheus histogram with fixed buckets (seconds).
struct Histogram {
    counts: Vec<std::sync::atomic::AtomicU64>,
    sum_us: std::sync::atomic::AtomicU64,
    n: std::sync::atomic::AtomicU64,
}

const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: BUCKETS.iter().map(|_| Default::default()).collect(),
            sum_us: Default::default(),
            n: Default::default(),
        }
    }
}

impl Histogram {
    fn observe(&self, secs: f64) {
        use std::sync::atomic::Ordering::Relaxed;
        for (c, &b) in self.counts.iter().zip(&BUCKETS) {
            if secs <= b {
                c.fetch_add(1, Relaxed);
            }
        }
        self.sum_us.fetch_add((secs * 1e6) as u64, Relaxed);
        self.n.fetch_add(1, Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        use std::sync::atomic::Ordering::Relaxed;
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        for (c, b) in self.counts.iter().zip(&BUCKETS) {
            out.push_str(&format!(
                "{name}_bucket{{le=\"{b}\"}} {}\n",
                c.load(Relaxed)
            ));
        }
        let n = self.n.load(Relaxed);
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {n}\n"));
        out.push_str(&format!(
            "{name}_sum {}\n",
            self.sum_us.load(Relaxed) as f64 / 1e6
        ));
        out.push_str(&format!("{name}_count {n}\n"));
    }
}

/// One request in the engine (waiting or running); dropped with its sink.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

struct App {
    /// Requests in the engine now, and how many it may hold before answering 429.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    max_queue: usize,
    engine_stats: Arc<ServeStats>,
    http: HttpStats,
    /// Requests to /v1 need `Authorization: Bearer KEY` when set.
    api_key: Option<String>,
    tokenizer: Tokenizer,
    format: ChatFormat,
    engine: std::sync::Mutex<Sender<Request>>,
    model_name: String,
    stop_tokens: Vec<u32>,
    context: usize,
}

/// An OpenAI error object, answered with its status.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    msg: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"message": self.msg, "type": self.kind, "param": null, "code": null}});
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}

fn error(status: StatusCode, kind: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError {
        status,
        kind,
        msg: msg.into(),
    }
}

/// A body that is not the JSON asked for: 400, or 413 past the size limit.
fn rejection(e: JsonRejection) -> ApiError {
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return error(
            status,
            "invalid_request_error",
            "the request body is over the 2 MB limit",
        );
    }
    bad_request(e.body_text())
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", msg)
}

#[derive(Deserialize)]
struct Sampling {
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    /// Up to 4 strings that end the answer (not shown).
    #[serde(default)]
    stop: Option<StopParam>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StopParam {
    One(String),
    Many(Vec<String>),
}

impl Sampling {
    fn stops(&self) -> std::result::Result<Vec<String>, ApiError> {
        let v = match &self.stop {
            None => Vec::new(),
            Some(StopParam::One(s)) => vec![s.clone()],
            Some(StopParam::Many(v)) => v.clone(),
        };
        if v.len() > 4 {
            return Err(bad_request("stop: at most 4 strings"));
        }
        Ok(v)
    }
}

impl Sampling {
    fn params(&self) -> std::result::Result<SamplingParams, String> {
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0),
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: self.seed.unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0)
            }),
        };
        p.validate().map_err(|e| e.to_string())?;
        Ok(p)
    }
}

/// OpenAI's default for completions; chat answers run to their end.
const COMPLETION_MAX_TOKENS: usize = 16;

#[derive(Deserialize)]
struct CompletionRequest {
    prompt: String,
    #[serde(flatten)]
    sampling: Sampling,
}

#[derive(Deserialize)]
struct ChatRequest {
    messages: Vec<Message>,
    #[serde(flatten)]
    sampling: Sampling,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn finish_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Cancelled => "length",
    }
}

/// Submits a request; its events arrive on the returned channel.
fn submit(
    app: &App,
    prompt: Vec<u32>,
    s: &Sampling,
) -> std::result::Result<UnboundedReceiver<Event>, ApiError> {
    if prompt.len() >= app.context {
        return Err(bad_request(format!(
            "the prompt has {} tokens; the context is {} tokens",
            prompt.len(),
            app.context
        )));
    }
    let params = s.params().map_err(bad_request)?;
    let n = app
        .in_flight
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let ticket = InFlight(app.in_flight.clone());
    if n >= app.max_queue {
        return Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("{n} requests are already queued or running; try again shortly"),
        ));
    }
    let (tx, rx) = unbounded_channel();
    let req = Request {
        max_tokens: s.max_tokens.unwrap_or(app.context - prompt.len()).max(1),
        prompt,
        sampling: params,
        stop_tokens: app.stop_tokens.clone(),
        sink: Box::new(move |e| {
            let _held = &ticket;
            tx.send(e).is_ok()
        }),
    };
    let sent = app
        .engine
        .lock()
        .map(|e| e.send(req).is_ok())
        .unwrap_or(false);
    if !sent {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the engine has stopped",
        ));
    }
    Ok(rx)
}

/// The text of a request's tokens as it completes, cut at its stop strings.
struct TextOut {
    dec: StreamDecoder,
    stops: StopText,
    tokens: usize,
    start: std::time::Instant,
    last: Option<std::time::Instant>,
}

/// What the next event means for the client.
enum Step {
    Text(String),
    /// The answer is over: the last text, why, and usage.
    End(String, FinishReason, usize, usize),
    Fail(String),
}

impl TextOut {
    fn new(prompt: &[u32], stops: Vec<String>) -> Self {
        Self {
            dec: StreamDecoder::new(prompt),
            stops: StopText::new(stops),
            tokens: 0,
            start: std::time::Instant::now(),
            last: None,
        }
    }

    fn step(&mut self, app: &App, e: Event) -> Step {
        let tok = &app.tokenizer;
        match e {
            Event::Token(t) => {
                let now = std::time::Instant::now();
                match self.last {
                    None => app.http.ttft.observe((now - self.start).as_secs_f64()),
                    Some(prev) => app.http.itl.observe((now - prev).as_secs_f64()),
                }
                self.last = Some(now);
                self.tokens += 1;
                let piece = self.dec.push(tok, t).unwrap_or_default();
                match self.stops.push(&piece) {
                    // Stopped: returning drops the receiver, which ends the sequence.
                    (text, true) => Step::End(text, FinishReason::Stop, 0, self.tokens),
                    (text, false) => Step::Text(text),
                }
            }
            Event::Done {
                reason,
                prompt_tokens,
                completion_tokens,
            } => {
                let rest = self.dec.flush(tok).unwrap_or_default();
                match self.stops.push(&rest) {
                    (text, true) => {
                        Step::End(text, FinishReason::Stop, prompt_tokens, completion_tokens)
                    }
                    (text, false) => Step::End(
                        text + &self.stops.flush(),
                        reason,
                        prompt_tokens,
                        completion_tokens,
                    ),
                }
            }
            Event::Error(msg) => Step::Fail(msg),
        }
    }
}

/// The whole answer: text, finish reason, usage.
async fn collect(
    app: &App,
    prompt: &[u32],
    stops: Vec<String>,
    mut rx: UnboundedReceiver<Event>,
) -> std::result::Result<(String, FinishReason, usize, usize), ApiError> {
    let mut out = TextOut::new(prompt, stops);
    let mut text = String::new();
    while let Some(e) = rx.recv().await {
        match out.step(app, e) {
            Step::Text(t) => text.push_str(&t),
            Step::End(t, reason, p, c) => {
                text.push_str(&t);
                return Ok((text, reason, p.max(prompt.len()), c));
            }
            Step::Fail(msg) => {
                return Err(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    msg,
                ))
            }
        }
    }
    Err(error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "the engine dropped the request",
    ))
}

/// Server-sent events: one chunk per piece of text, then the finish reason, then [DONE].
fn stream(
    app: Arc<App>,
    prompt: Vec<u32>,
    stops: Vec<String>,
    mut rx: UnboundedReceiver<Event>,
    chunk: impl Fn(Option<&str>, Option<&str>) -> Value + Send + 'static,
) -> Response {
    let (tx, out) = unbounded_channel::<std::result::Result<SseEvent, Infallible>>();
    tokio::spawn(async move {
        let mut text = TextOut::new(&prompt, stops);
        let send = |v: Value| tx.send(Ok(SseEvent::default().data(v.to_string()))).is_ok();
        while let Some(e) = rx.recv().await {
            match text.step(&app, e) {
                Step::Text(t) if t.is_empty() => {}
                Step::Text(t) => {
                    if !send(chunk(Some(&t), None)) {
                        return; // the client left: dropping rx cancels the sequence
                    }
                }
                Step::End(t, reason, _, _) => {
                    if !t.is_empty() {
                        send(chunk(Some(&t), None));
                    }
                    send(chunk(None, Some(finish_name(reason))));
                    break;
                }
                Step::Fail(msg) => {
                    send(json!({"error": {"message": msg, "type": "server_error"}}));
                    break;
                }
            }
        }
        tx.send(Ok(SseEvent::default().data("[DONE]"))).ok();
    });
    Sse::new(tokio_stream::wrappers::UnboundedReceiverStream::new(out)).into_response()
}

async fn completions(
    State(app): State<Arc<App>>,
    body: std::result::Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return rejection(e).into_response(),
    };
    let prompt = match app.tokenizer.encode_prompt(&req.prompt) {
        Ok(p) => p,
        Err(e) => return bad_request(e.to_string()).into_response(),
    };
    let mut sampling = req.sampling;
    sampling.max_tokens = sampling.max_tokens.or(Some(COMPLETION_MAX_TOKENS));
    let stops = match sampling.stops() {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let rx = match submit(&app, prompt.clone(), &sampling) {
        Ok(rx) => rx,
        Err(r) => return r.into_response(),
    };
    let (id, created, model) = (format!("cmpl-{}", now()), now(), app.model_name.clone());
    if sampling.stream {
        return stream(app.clone(), prompt, stops, rx, move |text, reason| {
            json!({"id": id, "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": 0, "text": text.unwrap_or(""), "finish_reason": reason, "logprobs": null}]})
        });
    }
    match collect(&app, &prompt, stops, rx).await {
        Ok((text, reason, p, c)) => Json(json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish_name(reason), "logprobs": null}],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
        }))
        .into_response(),
        Err(r) => r.into_response(),
    }
}

async fn chat_completions(
    State(app): State<Arc<App>>,
    body: std::result::Result<Json<ChatRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return rejection(e).into_response(),
    };
    let prompt = match app.format.encode(&app.tokenizer, &req.messages) {
        Ok(p) => p,
        Err(e) => return bad_request(e.to_string()).into_response(),
    };
    let stops = match req.sampling.stops() {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let rx = match submit(&app, prompt.clone(), &req.sampling) {
        Ok(rx) => rx,
        Err(r) => return r.into_response(),
    };
    let (id, created, model) = (format!("chatcmpl-{}", now()), now(), app.model_name.clone());
    if req.sampling.stream {
        return stream(app.clone(), prompt, stops, rx, move |text, reason| {
            let delta = match text {
                Some(t) => json!({"role": "assistant", "content": t}),
                None => json!({}),
            };
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]})
        });
    }
    match collect(&app, &prompt, stops, rx).await {
        Ok((text, reason, p, c)) => Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_name(reason)}],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
        }))
        .into_response(),
        Err(r) => r.into_response(),
    }
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": app.model_name, "object": "model", "created": 0, "owned_by": "bora"}]}),
    )
}

/// `--api-key`: the /v1 endpoints want `Authorization: Bearer KEY`.
async fn authorize(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(key) = &app.api_key {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing or wrong API key (Authorization: Bearer KEY)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Counts every response by status, for `/metrics`.
async fn count_status(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let resp = next.run(req).await;
    if let Ok(mut m) = app.http.by_status.lock() {
        *m.entry(resp.status().as_u16()).or_default() += 1;
    }
    resp
}

/// Prometheus text: requests by status, tokens, running and waiting sequences, KV blocks,
/// time to first token and between tokens.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let e = &app.engine_stats;
    let mut out = String::new();
    out.push_str("# HELP bora_requests_total HTTP responses by status code.\n# TYPE bora_requests_total counter\n");
    if let Ok(m) = app.http.by_status.lock() {
        for (code, n) in m.iter() {
            out.push_str(&format!("bora_requests_total{{status=\"{code}\"}} {n}\n"));
        }
    }
    let scalar = |out: &mut String, name: &str, kind: &str, help: &str, v: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    };
    scalar(
        &mut out,
        "bora_prompt_tokens_total",
        "counter",
        "Prompt tokens read.",
        e.prompt_tokens.load(Relaxed),
    );
    scalar(
        &mut out,
        "bora_generated_tokens_total",
        "counter",
        "Tokens generated.",
        e.generated_tokens.load(Relaxed),
    );
    scalar(
        &mut out,
        "bora_steps_total",
        "counter",
        "Forward steps run.",
        e.steps.load(Relaxed),
    );
    scalar(
        &mut out,
        "bora_running_sequences",
        "gauge",
        "Sequences being processed.",
        e.running.load(Relaxed) as u64,
    );
    scalar(
        &mut out,
        "bora_waiting_sequences",
        "gauge",
        "Requests waiting for room.",
        e.waiting.load(Relaxed) as u64,
    );
    let (used, total) = (
        e.kv_blocks_used.load(Relaxed),
        e.kv_blocks_total.load(Relaxed),
    );
    scalar(
        &mut out,
        "bora_kv_blocks_used",
        "gauge",
        "KV cache blocks in use.",
        used as u64,
    );
    scalar(
        &mut out,
        "bora_kv_blocks_free",
        "gauge",
        "KV cache blocks free.",
        total.saturating_sub(used) as u64,
    );
    app.http.ttft.render(
        "bora_time_to_first_token_seconds",
        "Time from a request to its first token.",
        &mut out,
    );
    app.http.itl.render(
        "bora_inter_token_latency_seconds",
        "Time between tokens of an answer.",
        &mut out,
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such endpoint",
    )
    .into_response()
}

pub fn run(a: ServeArgs) -> Result<()> {
    let engine = super::load(&a.model, false)?;
    let tokenizer = engine.tokenizer()?;
    let format = ChatFormat::for_tokenizer(tokenizer);
    let stop_tokens = engine.stop_tokens();
    let bora_engine::Engine {
        model, tokenizer, ..
    } = engine;
    let tokenizer = tokenizer.context("the model has no tokenizer: the server needs one")?;
    let model = Arc::new(model);
    let layout = model.kv_layout(bora_model::DEFAULT_BLOCK_SIZE);
    let block_bytes = 2 * layout.n_layers * layout.kv_dim() * layout.block_size * 4;
    let kv_blocks = ((a.kv_memory_mib as usize) << 20) / block_bytes.max(1);
    let opts = ServeOptions {
        max_seqs: a.parallel.max(1),
        step_tokens: a.batch.max(1),
        block_size: bora_model::DEFAULT_BLOCK_SIZE,
        kv_blocks,
    };
    let context = model.config.max_context;
    let engine_stats = Arc::new(ServeStats::default());
    let app = Arc::new(App {
        in_flight: Default::default(),
        max_queue: a.max_queue.max(1),
        engine_stats: engine_stats.clone(),
        http: HttpStats::default(),
        api_key: a.api_key.clone(),
        tokenizer,
        format,
        engine: std::sync::Mutex::new(spawn(model, opts, engine_stats)),
        model_name: a
            .model
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bora".into()),
        stop_tokens,
        context,
    });
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), authorize));
    let router = Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            count_status,
        ))
        .with_state(app);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "bora: serving on http://{addr} ({} sequences at once, {} tokens per step, {kv_blocks} KV blocks)",
            opts.max_seqs, opts.step_tokens
        );
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                // Ctrl-C or SIGTERM: stop accepting, let running requests finish, exit 0.
                let term = async {
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                        Ok(mut s) => {
                            s.recv().await;
                        }
                        Err(_) => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term => {}
                }
                eprintln!("bora: shutting down: finishing the requests in flight");
            })
            .await
            .context("the server failed")
    })
}
