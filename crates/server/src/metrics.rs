//! `/metrics` in Prometheus text: responses by status, tokens, steps, running and waiting
//! sequences, KV blocks, the prefix cache, preemptions, and latency histograms.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::App;

/// Counters the HTTP side keeps.
#[derive(Default)]
pub struct HttpStats {
    /// Responses by status code.
    pub by_status: std::sync::Mutex<std::collections::BTreeMap<u16, u64>>,
    /// Seconds from a request's arrival to its first token.
    pub ttft: Histogram,
    /// Seconds between tokens of one answer.
    pub itl: Histogram,
}

/// A Prometheus histogram with fixed buckets (seconds).
pub struct Histogram {
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
    n: AtomicU64,
}

const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
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
    pub fn observe(&self, secs: f64) {
        for (c, &b) in self.counts.iter().zip(&BUCKETS) {
            if secs <= b {
                c.fetch_add(1, Relaxed);
            }
        }
        self.sum_us.fetch_add((secs * 1e6) as u64, Relaxed);
        self.n.fetch_add(1, Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
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

fn scalar(out: &mut String, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
    out.push_str(&format!(
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
    ));
}

pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let e = &app.engine_stats;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::new();
    out.push_str("# HELP bora_requests_total HTTP responses by status code.\n# TYPE bora_requests_total counter\n");
    if let Ok(m) = app.http.by_status.lock() {
        for (code, n) in m.iter() {
            out.push_str(&format!("bora_requests_total{{status=\"{code}\"}} {n}\n"));
        }
    }
    let counters = [
        (
            "bora_prompt_tokens_total",
            "Prompt tokens read (cached ones included).",
            get(&e.prompt_tokens),
        ),
        (
            "bora_generated_tokens_total",
            "Tokens generated.",
            get(&e.generated_tokens),
        ),
        ("bora_steps_total", "Forward steps run.", get(&e.steps)),
        (
            "bora_preemptions_total",
            "Sequences preempted to free KV blocks (recomputed later).",
            get(&e.preemptions),
        ),
        (
            "bora_prefix_cache_queried_tokens_total",
            "Prompt tokens looked up in the prefix cache.",
            get(&e.prefix_queried_tokens),
        ),
        (
            "bora_prefix_cache_hit_tokens_total",
            "Prompt tokens whose KV came from the prefix cache.",
            get(&e.prefix_hit_tokens),
        ),
    ];
    for (name, help, v) in counters {
        scalar(&mut out, name, "counter", help, v);
    }
    let queried = get(&e.prefix_queried_tokens);
    let hit_rate = if queried == 0 {
        0.0
    } else {
        get(&e.prefix_hit_tokens) as f64 / queried as f64
    };
    let (used, total) = (
        e.kv_blocks_used.load(Relaxed),
        e.kv_blocks_total.load(Relaxed),
    );
    let cached = e.kv_blocks_cached.load(Relaxed);
    let gauges = [
        (
            "bora_running_sequences",
            "Sequences being processed.",
            e.running.load(Relaxed) as f64,
        ),
        (
            "bora_waiting_sequences",
            "Requests waiting for room.",
            e.waiting.load(Relaxed) as f64,
        ),
        (
            "bora_kv_blocks_used",
            "KV cache blocks held by sequences.",
            used as f64,
        ),
        (
            "bora_kv_blocks_cached",
            "Unheld KV blocks kept for the prefix cache (evictable).",
            cached as f64,
        ),
        (
            "bora_kv_blocks_free",
            "KV cache blocks not held by any sequence (cached ones included).",
            total.saturating_sub(used) as f64,
        ),
        (
            "bora_prefix_cache_hit_rate",
            "Share of prompt tokens found in the prefix cache.",
            hit_rate,
        ),
    ];
    for (name, help, v) in gauges {
        scalar(&mut out, name, "gauge", help, v);
    }
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
