//! Command-line flags (raw), and their validation into engine options.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bora_engine::{LoadOptions, SamplingParams};
use bora_kernels::Activations;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bora",
    version,
    about = "Run Mistral-family language models on the CPU"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// No progress bars and no load summary on stderr (they never show when stderr is not a
    /// terminal anyway).
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Generate text (or token ids) after a prompt.
    Run(RunArgs),
    /// Print the logits the model gives at each position, for checking numerics.
    Logits(LogitsArgs),
    /// Show how the model's tokenizer splits a text.
    Tokenize(TokenizeArgs),
    /// Measure prompt-processing and generation speed (median of repetitions).
    Bench(BenchArgs),
    /// Write a GGUF file's weights in another quant type (as llama-quantize does).
    Quantize(QuantizeArgs),
    /// Perplexity of a text, as llama-perplexity measures it; KL divergence against a base run.
    Perplexity(PerplexityArgs),
    /// Score the model on a benchmark: MMLU, GSM8K, HumanEval or any multiple-choice set.
    Eval(EvalArgs),
    /// Describe a checkpoint: architecture, size, tensor types, tokenizer, memory needed.
    Inspect(InspectArgs),
    /// Talk to the model: an interactive conversation in its instruct format.
    Chat(ChatArgs),
    /// Download a model from the Hugging Face Hub into its cache (hf:OWNER/REPO[:FILE.gguf]).
    Pull(PullArgs),
    /// List the models in the Hugging Face cache, with their sizes.
    List,
    /// Remove a model (or one GGUF file of it) from the Hugging Face cache.
    Rm(PullArgs),
    /// Serve the model over an OpenAI-compatible HTTP API, many requests batched together.
    Serve(ServeArgs),
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the one chosen is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sequences running at once.
    #[arg(long, default_value_t = 16)]
    pub parallel: usize,
    /// Most tokens per forward step (decode tokens first, then prompt chunks; at least
    /// --parallel). A step's time bounds every stream's time between tokens: 64 tokens already
    /// run the matrix kernels at their full rate (7B Q4_0, 2 threads: 22.9 tok/s, 512: 22.8).
    #[arg(short = 'b', long, default_value_t = 64)]
    pub batch: usize,
    /// Memory for the KV cache, in MiB [default: what --parallel sequences need at full
    /// context, at most half the memory available].
    #[arg(long)]
    pub kv_memory_mib: Option<u64>,
    /// Do not share the KV blocks of prompts that begin alike.
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Requests queued or running before new ones get 429 (with Retry-After).
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Require `Authorization: Bearer KEY` on the /v1 endpoints.
    #[arg(long)]
    pub api_key: Option<String>,
}

#[derive(Args)]
pub struct PullArgs {
    /// hf:OWNER/REPO (a safetensors checkpoint), hf:OWNER/REPO:FILE.gguf, or a short name
    /// such as mistral-7b-instruct.
    pub model: String,
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A system prompt for the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// The instruct format (v1, v2, v3, v7, tekken, jinja); default: from the model's files.
    #[arg(long)]
    pub chat_format: Option<String>,
    /// Most tokens per answer (default: until the model ends its turn or the context is full).
    #[arg(short = 'n', long)]
    pub max_tokens: Option<usize>,
}

#[derive(Args)]
pub struct InspectArgs {
    /// A Hugging Face folder, a Mistral native folder or a GGUF file.
    pub model: PathBuf,
    /// The context to size the KV cache for (default: the model's).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// The KV cache type to size it for, f16 or f32 (default: what a run would use, f16 for
    /// quantized weights, f32 for float ones).
    #[arg(long, value_name = "TYPE")]
    pub kv_type: Option<bora_model::KvType>,
    /// Use this tokenizer file instead of the model's own.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct PerplexityArgs {
    /// The model; `--ctx N` is the window (default 512), as llama-perplexity's -c.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to score (UTF-8).
    #[arg(short = 'f', long, required_unless_present = "kl_divergence")]
    pub file: Option<PathBuf>,
    /// Tokens per forward step; windows run together when it holds several (default: one window).
    #[arg(short = 'b', long)]
    pub batch: Option<usize>,
    /// Score only the first N windows.
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Save this run's log-probabilities (llama.cpp's --kl-divergence-base format) to FILE.
    #[arg(long, conflicts_with = "kl_divergence")]
    pub save_logits: Option<PathBuf>,
    /// Compare against a base run saved with --save-logits (or llama-perplexity
    /// --kl-divergence-base): KL divergence, top-1 agreement, perplexity change. The text
    /// and window come from the file.
    #[arg(long)]
    pub kl_divergence: Option<PathBuf>,
    /// One JSON object with the results instead of the running estimate.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EvalTask {
    Mmlu,
    Gsm8k,
    Humaneval,
    Mc,
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_enum)]
    pub task: EvalTask,
    /// The data: MMLU's data/ folder (dev/, test/), or a .jsonl file for the other tasks.
    #[arg(long)]
    pub data: PathBuf,
    /// Solved examples before each question (MMLU: from dev/, default 5; GSM8K: from
    /// --train, else the data file's first items, which are then not scored; default 8).
    #[arg(long)]
    pub shots: Option<usize>,
    /// GSM8K: where the solved examples come from (e.g. the data set's train.jsonl).
    #[arg(long)]
    pub train: Option<PathBuf>,
    /// Score only the first N items (MMLU: per subject).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write the results, with every item, as JSON to this file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// HumanEval: run the model's code (in a subprocess, no network, with a timeout).
    #[arg(long)]
    pub allow_code_execution: bool,
    /// Most tokens generated per answer (default as lm-eval: GSM8K 256, HumanEval 1024).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// HumanEval: seconds each problem's tests may run.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// HumanEval: the Python interpreter that runs the tests.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Tokens per forward step.
    #[arg(short = 'b', long, default_value_t = 512)]
    pub batch: usize,
    /// Sequences in flight at once.
    #[arg(long, default_value_t = 16)]
    pub parallel: usize,
}

#[derive(Args)]
pub struct QuantizeArgs {
    /// The GGUF file to read (float or quantized).
    pub input: PathBuf,
    /// The GGUF file to write.
    pub output: PathBuf,
    /// llama-quantize's file types: f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_s, q3_k_m,
    /// q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k (q3_k, q4_k, q5_k: the _m mixes).
    #[arg(long = "type", value_parser = crate::commands::quantize::parse_file_type)]
    pub file_type: crate::commands::quantize::FileType,
}

/// A `--quant` value: a type bora can quantize weights to.
fn parse_quant(s: &str) -> std::result::Result<bora_kernels::DType, String> {
    bora_kernels::quantize::QUANTIZABLE
        .into_iter()
        .find(|d| d.to_string().eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            let names: Vec<String> = bora_kernels::quantize::QUANTIZABLE
                .iter()
                .map(|d| d.to_string().to_lowercase())
                .collect();
            format!("'{s}' is not one of {}", names.join(", "))
        })
}

/// How to load the model: shared by every subcommand that runs it.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A Hugging Face folder (config.json + *.safetensors), a Mistral native folder, a GGUF
    /// file, or a model on the Hub: hf:OWNER/REPO, hf:OWNER/REPO:FILE.gguf, or a short name
    /// (mistral-7b-instruct, mixtral-8x7b-instruct, …), downloaded into the HF cache.
    pub model: PathBuf,
    /// Use this tokenizer.json instead of the model's own.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Attend within this many positions (0: full attention); default: the checkpoint's.
    #[arg(long)]
    pub sliding_window: Option<usize>,
    /// Context limit in tokens; default: the checkpoint's.
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Prompt tokens per forward step during prefill (default: the window, at most 512).
    #[arg(long)]
    pub chunk: Option<usize>,
    /// Keep activations in f32 against quantized weights (exact; default: 8-bit blocks, as llama.cpp).
    #[arg(long)]
    pub f32_activations: bool,
    /// How the KV cache stores keys and values: f16 (as llama.cpp; half the memory) or f32
    /// (exact). Default: f16 for quantized models, f32 for float ones or with
    /// --f32-activations.
    #[arg(long, value_name = "TYPE")]
    pub kv_type: Option<bora_model::KvType>,
    /// Quantize a float checkpoint's weight matrices to this type while loading
    /// (q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k).
    #[arg(long, value_parser = parse_quant)]
    pub quant: Option<bora_kernels::DType>,
}

impl ModelArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            sliding_window: self.sliding_window.map(|w| (w > 0).then_some(w)),
            context_length: self.ctx,
            tokenizer: self.tokenizer.clone(),
            no_tokenizer: false,
            activations: if self.f32_activations {
                Activations::F32
            } else {
                Activations::Q8
            },
            quant: self.quant,
            kv_type: self.kv_type,
        }
    }

    pub fn init_threads(&self) -> Result<()> {
        if let Some(n) = self.threads {
            if n == 0 {
                bail!("--threads must be at least 1");
            }
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global()
                .context("cannot start the thread pool")?;
        }
        Ok(())
    }
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text.
    #[arg(short = 'p', long, conflicts_with = "ids")]
    pub prompt: Option<String>,
    /// Prompt as token ids, comma-separated (no tokenizer needed).
    #[arg(long)]
    pub ids: Option<String>,
    /// Tokens to generate.
    #[arg(short = 'n', long, default_value_t = 128)]
    pub n_predict: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print the generated token ids, space-separated on one line, instead of text.
    #[arg(long)]
    pub print_ids: bool,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Positions per KV-cache block.
    #[arg(long, default_value_t = bora_model::DEFAULT_BLOCK_SIZE)]
    pub block_size: usize,
}

/// Sampling flags shared by `run` and `chat`.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature (0: greedy).
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    pub fn params(&self) -> Result<SamplingParams> {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        let p = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed,
        };
        p.validate()?;
        Ok(p)
    }
}

impl RunArgs {
    pub fn sampling(&self) -> Result<SamplingParams> {
        let p = self.sampling.params()?;
        if self.block_size == 0 || self.block_size > bora_model::kv_cache::MAX_BLOCK_SIZE {
            bail!(
                "--block-size must be between 1 and {}",
                bora_model::kv_cache::MAX_BLOCK_SIZE
            );
        }
        Ok(p)
    }
}

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Token ids, comma-separated (no tokenizer needed).
    #[arg(long, conflicts_with = "text")]
    pub ids: Option<String>,
    /// Text, tokenized with the model's tokenizer (BOS added as the model expects).
    #[arg(long)]
    pub text: Option<String>,
    /// Logits of every position, not just the last.
    #[arg(long)]
    pub all: bool,
    /// One JSON object: {"ids": [...], "logits": [[vocab floats] per position]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens per repetition.
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Generated tokens per repetition.
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Repetitions.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    /// Skip the untimed warm-up run (a short prompt and one generated token, as llama-bench
    /// does) that pages the weights in before the first timed repetition.
    #[arg(long)]
    pub no_warmup: bool,
    /// One JSON object with `prompt_tokens_per_s` and `gen_tokens_per_s` (medians).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct TokenizeArgs {
    /// A model (HF folder, Mistral folder or GGUF file), a vocabulary-only GGUF, or a
    /// tokenizer file (tokenizer.json, tekken.json, tokenizer.model[.vN]).
    #[arg(required_unless_present = "tokenizer")]
    pub model: Option<PathBuf>,
    /// Use this tokenizer file instead of the model's own.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// The text to tokenize.
    #[arg(long, required_unless_present = "chat", conflicts_with = "chat")]
    pub text: Option<String>,
    /// A conversation to encode as the model's instruct format: a JSON list of
    /// {"role", "content"[, "prefix": true]} messages.
    #[arg(long)]
    pub chat: Option<PathBuf>,
    /// The instruct format: v1, v2, v3, v7 (Mistral's), tekken (the Tekken file's own),
    /// jinja (the model's chat_template); default: decided from the model's files.
    #[arg(long)]
    pub chat_format: Option<String>,
    /// Don't prepend BOS even when the model expects it.
    #[arg(long)]
    pub no_bos: bool,
    /// Take text like `<s>` literally instead of as the special token it spells.
    #[arg(long)]
    pub no_parse_special: bool,
    /// Print {"ids": [...], "pieces": [...]}.
    #[arg(long)]
    pub json: bool,
}

/// "1,415,12332" or "1 415 12332" → ids.
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    let ids = s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .with_context(|| format!("--ids: '{t}' is not a token id"))
        })
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        bail!("--ids: no token ids given");
    }
    Ok(ids)
}
