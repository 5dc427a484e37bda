//! Log-likelihood of continuations, as EleutherAI's lm-evaluation-harness scores
//! multiple-choice tasks: the context's trailing spaces move to the continuation, the whole
//! text and the context are tokenized separately, and the continuation is what the whole
//! has past the context's tokens.

use std::collections::HashMap;

use bora_engine::{run_batch, BatchJob, BatchOptions, Tokenizer};
use bora_model::Model;

use crate::error::{EvalError, Result};
use crate::logprob::RowSoftmax;

#[derive(Debug, Clone)]
pub struct LoglikRequest {
    pub context: String,
    pub continuation: String,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Loglik {
    /// Σ ln p over the continuation's tokens.
    pub logprob: f64,
    /// Whether greedy decoding would have produced the continuation.
    pub is_greedy: bool,
    pub tokens: usize,
}

/// (context ids, continuation ids) as lm-eval's `_encode_pair` splits them.
pub fn encode_pair(
    tok: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end();
    let (context, continuation) = if trimmed.len() < context.len() {
        (
            trimmed,
            format!("{}{continuation}", &context[trimmed.len()..]),
        )
    } else {
        (context, continuation.to_string())
    };
    let mut ctx_ids = tok.encode_prompt(context)?;
    if ctx_ids.is_empty() {
        // An empty context conditions on BOS (or EOS), as lm-eval's prefix token.
        ctx_ids.extend(tok.bos.or(tok.eos.first().copied()));
        let cont = tok.encode(&continuation)?;
        return Ok((ctx_ids, cont));
    }
    let whole = tok.encode_prompt(&format!("{context}{continuation}"))?;
    let cont = whole.get(ctx_ids.len()..).unwrap_or_default().to_vec();
    Ok((ctx_ids, cont))
}

/// Scores every request, batched through the model. Requests sharing a context whose
/// continuations are all one token are scored from one pass over the context.
pub fn loglikelihoods(
    model: &Model,
    tok: &Tokenizer,
    requests: &[LoglikRequest],
    batch: BatchOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Loglik>> {
    let mut pairs = Vec::with_capacity(requests.len());
    for r in requests {
        let (c, k) = encode_pair(tok, &r.context, &r.continuation)?;
        if c.is_empty() {
            return Err(EvalError::Invalid(
                "an empty context needs a BOS or EOS token to condition on".into(),
            ));
        }
        if k.is_empty() {
            return Err(EvalError::Invalid(format!(
                "the continuation {:?} adds no tokens to its context",
                r.continuation
            )));
        }
        let vocab = model.config.vocab_size;
        if let Some(&t) = c.iter().chain(&k).find(|&&t| t as usize >= vocab) {
            return Err(EvalError::Invalid(format!(
                "token {t} is outside the model's vocabulary of {vocab}: the tokenizer does not belong to this model"
            )));
        }
        pairs.push((c, k));
    }
    // One job per distinct context when every continuation after it is a single token;
    // otherwise one job per request, fed context + continuation minus its last token.
    let mut by_context: HashMap<&[u32], Vec<usize>> = HashMap::new();
    for (i, (c, _)) in pairs.iter().enumerate() {
        by_context.entry(c.as_slice()).or_default().push(i);
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, (c, _)) in pairs.iter().enumerate() {
        let members = &by_context[c.as_slice()];
        if members.iter().all(|&m| pairs[m].1.len() == 1) {
            if members[0] == i {
                groups.push(members.clone());
            }
        } else {
            groups.push(vec![i]);
        }
    }
    let limit = model.config.max_context;
    let jobs: Vec<BatchJob> = groups
        .iter()
        .map(|g| {
            let (c, k) = &pairs[g[0]];
            let mut tokens = c.clone();
            if g.len() == 1 && k.len() > 1 {
                tokens.extend_from_slice(&k[..k.len() - 1]);
            }
            let from = c.len() - 1;
            if tokens.len() > limit {
                return Err(EvalError::Invalid(format!(
                    "a request of {} tokens exceeds the context of {limit} tokens",
                    tokens.len()
                )));
            }
            Ok(BatchJob::score(tokens, from))
        })
        .collect::<Result<_>>()?;
    let vocab = model.config.vocab_size;
    let mut rows: Vec<Vec<f32>> = vec![Vec::new(); groups.len()];
    let mut out = vec![
        Loglik {
            logprob: 0.0,
            is_greedy: true,
            tokens: 0
        };
        requests.len()
    ];
    let (total, mut done) = (groups.len(), 0);
    run_batch(model, jobs, batch, |o| {
        rows[o.job].extend_from_slice(o.rows);
        if o.at_end {
            for &m in &groups[o.job] {
                out[m] = score(&rows[o.job], &pairs[m].1, vocab);
            }
            rows[o.job] = Vec::new();
            done += 1;
            progress(done, total);
        }
        Ok(None)
    })?;
    Ok(out)
}

/// Row k predicts continuation token k.
fn score(rows: &[f32], cont: &[u32], vocab: usize) -> Loglik {
    let mut r = Loglik {
        logprob: 0.0,
        is_greedy: true,
        tokens: cont.len(),
    };
    for (row, &t) in rows.chunks_exact(vocab).zip(cont) {
        let s = RowSoftmax::new(row);
        r.logprob += s.log_prob(row, t);
        r.is_greedy &= s.argmax == t as usize;
    }
    r
}
