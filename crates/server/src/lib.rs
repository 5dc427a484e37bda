//! bora's OpenAI-compatible HTTP server (axum) in front of the continuous-batching loop:
//! `bora serve`. Handlers tokenize, hand the request to the engine thread, and turn its token
//! events into a JSON answer or a server-sent-event stream. One module per route, plus the
//! request bodies (`request`), the error objects (`error`) and the token pump (`generate`).

mod chat;
mod completions;
mod error;
mod generate;
mod metrics;
mod request;
mod tokenize;

use std::sync::mpsc::Sender;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bora_engine::chat::ChatFormat;
use bora_engine::serving::{spawn, Request, ServeOptions, ServeStats};
use bora_engine::{Engine, Tokenizer};
use serde_json::{json, Value};

use error::error;

/// How `serve` listens and schedules.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub host: String,
    /// 0: any free port (the one chosen is printed).
    pub port: u16,
    /// Sequences running at once.
    pub parallel: usize,
    /// Most tokens per forward step (at least `parallel`).
    pub step_tokens: usize,
    /// KV cache memory; `None`: what `parallel` sequences need at full context, at most half
    /// the memory available.
    pub kv_memory_bytes: Option<usize>,
    pub prefix_caching: bool,
    /// Requests queued or running before new ones get 429.
    pub max_queue: usize,
    /// Require `Authorization: Bearer KEY` on the /v1 endpoints.
    pub api_key: Option<String>,
    /// The id `/v1/models` lists.
    pub model_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("the model has no tokenizer: the server needs one")]
    NoTokenizer,
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
}

/// What every handler shares: the engine's queue, the tokenizer, limits and counters.
pub(crate) struct App {
    /// Requests in the engine now, and how many it may hold before answering 429.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    max_queue: usize,
    engine_stats: Arc<ServeStats>,
    http: metrics::HttpStats,
    /// Requests to /v1 need `Authorization: Bearer KEY` when set.
    api_key: Option<String>,
    tokenizer: Tokenizer,
    format: ChatFormat,
    engine: std::sync::Mutex<Sender<Request>>,
    model_name: String,
    stop_tokens: Vec<u32>,
    context: usize,
    vocab: usize,
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

/// The KV memory when none is given: enough for every parallel sequence at full context,
/// but at most half of the memory the system has available now.
fn default_kv_bytes(parallel: usize, context: usize, block_bytes: usize, block: usize) -> usize {
    let wanted = parallel * (context.div_ceil(block) + 1) * block_bytes;
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map(|kb| kb * 1024 / 2)
        .unwrap_or(2 << 30);
    wanted.min(available).max(block_bytes * 64)
}

/// Serves `engine` until Ctrl-C or SIGTERM, then finishes the requests in flight.
pub fn serve(engine: Engine, config: ServerConfig) -> Result<(), ServerError> {
    let format =
        ChatFormat::for_tokenizer(engine.tokenizer().map_err(|_| ServerError::NoTokenizer)?);
    let stop_tokens = engine.stop_tokens();
    let Engine {
        model, tokenizer, ..
    } = engine;
    let tokenizer = tokenizer.ok_or(ServerError::NoTokenizer)?;
    let model = Arc::new(model);
    let layout = model.kv_layout(bora_model::DEFAULT_BLOCK_SIZE);
    let block_bytes = layout.block_bytes();
    let context = model.config.max_context;
    let parallel = config.parallel.max(1);
    let kv_bytes = config
        .kv_memory_bytes
        .unwrap_or_else(|| default_kv_bytes(parallel, context, block_bytes, layout.block_size));
    let kv_blocks = kv_bytes / block_bytes.max(1);
    let opts = ServeOptions {
        max_seqs: parallel,
        step_tokens: config.step_tokens.max(parallel),
        block_size: bora_model::DEFAULT_BLOCK_SIZE,
        kv_blocks,
        prefix_caching: config.prefix_caching,
    };
    let vocab = model.config.vocab_size;
    let engine_stats = Arc::new(ServeStats::default());
    let app = Arc::new(App {
        in_flight: Default::default(),
        max_queue: config.max_queue.max(1),
        engine_stats: engine_stats.clone(),
        http: Default::default(),
        api_key: config.api_key.clone(),
        tokenizer,
        format,
        engine: std::sync::Mutex::new(spawn(model, opts, engine_stats)),
        model_name: config.model_name.clone(),
        stop_tokens,
        context,
        vocab,
    });
    let v1 = Router::new()
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), authorize));
    let router = Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics::metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            count_status,
        ))
        .with_state(app);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    rt.block_on(async move {
        let bind_error = |source| ServerError::Bind {
            addr: format!("{}:{}", config.host, config.port),
            source,
        };
        let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
            .await
            .map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        eprintln!(
            "bora: serving on http://{addr} ({} sequences at once, {} tokens per step, {kv_blocks} KV blocks = {} MiB{})",
            opts.max_seqs,
            opts.step_tokens,
            (kv_blocks * block_bytes) >> 20,
            if opts.prefix_caching { ", prefix caching" } else { "" }
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
            .map_err(ServerError::Serve)
    })
}
