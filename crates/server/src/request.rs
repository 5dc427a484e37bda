//! What the OpenAI API asks: request bodies and their checks.

use std::time::{SystemTime, UNIX_EPOCH};

use bora_engine::chat::Message;
use bora_engine::serving::FinishReason;
use bora_engine::SamplingParams;
use serde::Deserialize;

use crate::error::{bad_param, bad_request, ApiResult};

/// Most choices one request may ask for (prompts × n).
pub const MAX_CHOICES: usize = 128;
/// Most stop strings one request may give.
pub const MAX_STOPS: usize = 16;
/// Most alternatives per token in `logprobs` / `top_logprobs`.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The fields both endpoints share.
#[derive(Deserialize)]
pub struct Sampling {
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// The chat API's newer name for `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    /// vLLM's extension; 0 or −1 turn it off.
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// vLLM's extension: HF's multiplicative penalty over prompt and answer (1 → off).
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub n: Option<usize>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// vLLM's and llama.cpp's extension: generate past the end-of-sequence token (benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
    /// Strings that end the answer (not shown).
    #[serde(default)]
    pub stop: Option<StopParam>,
}

#[derive(Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum StopParam {
    One(String),
    Many(Vec<String>),
}

impl Sampling {
    pub fn stops(&self) -> ApiResult<Vec<String>> {
        let v = match &self.stop {
            None => Vec::new(),
            Some(StopParam::One(s)) => vec![s.clone()],
            Some(StopParam::Many(v)) => v.clone(),
        };
        // OpenAI allows 4; lm-eval sends HumanEval's 5 and an end-of-text, as vLLM allows.
        if v.len() > MAX_STOPS {
            return Err(bad_param("stop", format!("at most {MAX_STOPS} strings")));
        }
        Ok(v)
    }

    pub fn n(&self) -> ApiResult<usize> {
        match self.n.unwrap_or(1) {
            0 => Err(bad_param("n", "must be at least 1")),
            n => Ok(n),
        }
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }

    /// The sampling of choice `i`: with a seed, choice i draws from seed + i, so each
    /// choice differs and the whole answer reproduces.
    pub fn params(&self, choice: usize) -> ApiResult<SamplingParams> {
        let seed = self.seed.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0).max(0) as usize,
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            repeat_penalty: self.repetition_penalty.unwrap_or(1.0),
            repeat_last_n: usize::MAX,
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            seed: seed.wrapping_add(choice as u64),
        };
        p.validate().map_err(|e| bad_request(e.to_string()))?;
        Ok(p)
    }
}

/// A completions prompt: a text, several texts, token ids, or several lists of ids.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptInput,
    /// Return the prompt before the answer (with its tokens' log-probabilities when
    /// `logprobs` is set).
    #[serde(default)]
    pub echo: bool,
    /// Log-probabilities of each token and of this many alternatives.
    #[serde(default)]
    pub logprobs: Option<usize>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    #[serde(default)]
    pub logprobs: bool,
    #[serde(default)]
    pub top_logprobs: Option<usize>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

impl CompletionRequest {
    pub fn top_logprobs(&self) -> ApiResult<Option<usize>> {
        match self.logprobs {
            Some(k) if k > MAX_TOP_LOGPROBS => {
                Err(bad_param("logprobs", format!("at most {MAX_TOP_LOGPROBS}")))
            }
            k => Ok(k),
        }
    }
}

impl ChatRequest {
    pub fn top_logprobs(&self) -> ApiResult<Option<usize>> {
        match (self.logprobs, self.top_logprobs) {
            (_, Some(k)) if k > MAX_TOP_LOGPROBS => Err(bad_param(
                "top_logprobs",
                format!("at most {MAX_TOP_LOGPROBS}"),
            )),
            (false, Some(_)) => Err(bad_param("top_logprobs", "needs logprobs: true")),
            (true, k) => Ok(Some(k.unwrap_or(0))),
            (false, None) => Ok(None),
        }
    }
}

pub fn finish_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Cancelled => "length",
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
