//! `bora inspect`: what a checkpoint is and what it needs, without running it.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;
use bora_engine::chat::ChatFormat;
use bora_model::{Arch, Checkpoint};

use crate::args::InspectArgs;

/// KV cache bytes per position: K and V, every layer.
fn kv_bytes_per_position(c: &bora_model::ModelConfig, kv_type: bora_model::KvType) -> usize {
    c.n_layers * 2 * c.kv_dim() * kv_type.bytes()
}

fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

pub fn run(a: InspectArgs) -> Result<()> {
    let model = crate::hub::resolve(&a.model, super::quiet())?;
    let ckpt = Checkpoint::open(&model)?;
    let c = &ckpt.config;
    let mut by_type: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new(); // tensors, bytes, params
    let (mut params, mut weight_bytes) = (0u64, 0u64);
    for t in ckpt.tensors.values() {
        let n: u64 = t.shape.iter().map(|&d| d as u64).product();
        let name = match &t.dtype {
            Ok(d) => d.to_string(),
            Err(s) => s.clone(),
        };
        let e = by_type.entry(name).or_default();
        e.0 += 1;
        e.1 += t.len as u64;
        e.2 += n;
        params += n;
        weight_bytes += t.len as u64;
    }
    let tokenizer = bora_engine::load_tokenizer(a.tokenizer.as_deref().unwrap_or(&model)).ok();
    let chat = tokenizer
        .as_ref()
        .map(|t| match ChatFormat::for_tokenizer(t) {
            ChatFormat::Mistral(f) => format!("Mistral {f:?}").replace("V", "v"),
            ChatFormat::Jinja(_) => "the model's Jinja chat_template".to_string(),
        });
    let ctx = a.ctx.unwrap_or(c.max_context);
    // As a run chooses (`Model::default_kv_type`): f16 when the matrices are quantized.
    let quantized = ckpt
        .tensors
        .values()
        .any(|t| t.dtype.as_ref().is_ok_and(|d| d.is_quantized()));
    let kv_type = a.kv_type.unwrap_or(if quantized {
        bora_model::KvType::F16
    } else {
        bora_model::KvType::F32
    });
    let per_pos = kv_bytes_per_position(c, kv_type);
    // With a window the rolling cache holds the window plus one step's chunk, no more.
    let held = match c.sliding_window {
        Some(w) => ctx.min(w + 512),
        None => ctx,
    };
    let kv = (per_pos * held) as u64;
    let arch = match c.arch {
        Arch::Mistral => "Mistral",
        Arch::Mixtral => "Mixtral",
        Arch::Llama => "Llama",
    };
    if a.json {
        let types: Vec<_> = by_type
            .iter()
            .map(|(k, &(n, b, p))| serde_json::json!({"type": k, "tensors": n, "bytes": b, "params": p, "share": b as f64 / weight_bytes.max(1) as f64}))
            .collect();
        let obj = serde_json::json!({
            "path": a.model.display().to_string(),
            "architecture": arch,
            "parameters": params,
            "layers": c.n_layers,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "heads": c.n_heads,
            "kv_heads": c.n_kv_heads,
            "head_dim": c.head_dim,
            "vocab_size": c.vocab_size,
            "context_length": c.max_context,
            "sliding_window": c.sliding_window,
            "rope_theta": c.rope_theta,
            "experts": c.moe.map(|m| serde_json::json!({"count": m.n_experts, "per_token": m.top_k})),
            "tensor_types": types,
            "tokenizer": tokenizer.as_ref().map(|t| t.kind()),
            "chat_format": chat,
            "memory": {"context": ctx, "weights_bytes": weight_bytes, "kv_cache_bytes": kv, "kv_cache_type": kv_type.to_string(), "total_bytes": weight_bytes + kv},
        });
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &obj)?;
        writeln!(out)?;
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", a.model.display())?;
    writeln!(out, "  architecture    {arch}")?;
    writeln!(
        out,
        "  parameters      {:.3} B ({params})",
        params as f64 / 1e9
    )?;
    writeln!(
        out,
        "  shape           {} layers, hidden {}, MLP {}, {} heads / {} KV heads of {}, vocab {}",
        c.n_layers,
        c.hidden_size,
        c.intermediate_size,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.vocab_size
    )?;
    writeln!(
        out,
        "  context         {} tokens (RoPE θ {})",
        c.max_context, c.rope_theta
    )?;
    writeln!(
        out,
        "  sliding window  {}",
        c.sliding_window
            .map_or("none (full attention)".to_string(), |w| w.to_string())
    )?;
    if let Some(m) = c.moe {
        writeln!(
            out,
            "  experts         {} per layer, {} per token",
            m.n_experts, m.top_k
        )?;
    }
    writeln!(
        out,
        "  tokenizer       {}",
        tokenizer
            .as_ref()
            .map_or("none found".to_string(), |t| format!(
                "{} ({})",
                t.kind(),
                t.source().display()
            ))
    )?;
    writeln!(out, "  chat format     {}", chat.as_deref().unwrap_or("-"))?;
    writeln!(out, "  tensor types")?;
    for (k, (n, b, _)) in &by_type {
        writeln!(
            out,
            "    {k:<8} {n:>5} tensors  {:>11}  {:>5.1} %",
            human(*b as f64),
            100.0 * *b as f64 / weight_bytes.max(1) as f64
        )?;
    }
    writeln!(out, "  memory at {ctx} tokens of context")?;
    writeln!(out, "    weights       {}", human(weight_bytes as f64))?;
    writeln!(
        out,
        "    KV cache      {} ({} per position, {}{})",
        human(kv as f64),
        human(per_pos as f64),
        kv_type,
        if held < ctx {
            format!("; the window keeps {held} positions")
        } else {
            String::new()
        }
    )?;
    writeln!(
        out,
        "    total         {}",
        human((weight_bytes + kv) as f64)
    )?;
    Ok(())
}
