//! Greedy generation for many prompts at once, each stopping at end-of-sequence, at a token
//! budget, or at the first of its stop strings (matched on the decoded text, so across token
//! boundaries; the stop string and what follows are cut off).

use bora_engine::{argmax, run_batch, BatchJob, BatchOptions, Tokenizer};
use bora_model::Model;

use crate::error::{EvalError, Result};

#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt: String,
    pub stop: Vec<String>,
    pub max_new_tokens: usize,
}

/// Cuts `text` at the earliest stop string; true when one was found.
pub fn cut_at_stop(text: &mut String, stop: &[String]) -> bool {
    let at = stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min();
    if let Some(i) = at {
        text.truncate(i);
    }
    at.is_some()
}

/// The completion of every request, in order.
pub fn generate_greedy(
    model: &Model,
    tok: &Tokenizer,
    requests: &[GenRequest],
    batch: BatchOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<String>> {
    let limit = model.config.max_context;
    let mut jobs = Vec::with_capacity(requests.len());
    for r in requests {
        let ids = tok.encode_prompt(&r.prompt)?;
        if ids.is_empty() {
            return Err(EvalError::Invalid(
                "an empty prompt (and no BOS to start from) cannot be continued".into(),
            ));
        }
        if r.max_new_tokens == 0 {
            return Err(EvalError::Invalid(
                "max_new_tokens must be at least 1".into(),
            ));
        }
        if ids.len() >= limit {
            return Err(EvalError::Invalid(format!(
                "a prompt of {} tokens leaves no room to generate within the context of {limit}",
                ids.len()
            )));
        }
        let max_len = (ids.len() + r.max_new_tokens).min(limit);
        let from = ids.len() - 1;
        jobs.push(BatchJob {
            tokens: ids,
            logits_from: from,
            max_len,
        });
    }
    let budget: Vec<usize> = jobs.iter().map(|j| j.max_len - j.tokens.len()).collect();
    let eos = tok.eos.clone();
    let mut generated: Vec<Vec<u32>> = vec![Vec::new(); requests.len()];
    let mut texts = vec![String::new(); requests.len()];
    let (total, mut done) = (requests.len(), 0);
    run_batch(model, jobs, batch, |o| {
        let vocab = model.config.vocab_size;
        let Some(last) = o.rows.chunks_exact(vocab).last().filter(|_| o.at_end) else {
            return Ok(None);
        };
        let next = argmax(last);
        let (g, j) = (&mut generated[o.job], o.job);
        let mut finished = eos.contains(&next);
        if !finished {
            g.push(next);
        }
        let mut text = tok.decode(g);
        finished |= cut_at_stop(&mut text, &requests[j].stop) || g.len() >= budget[j];
        if finished {
            texts[j] = text;
            done += 1;
            progress(done, total);
            return Ok(None);
        }
        Ok(Some(next))
    })?;
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_at_the_earliest_match() {
        let stops = vec!["\ndef".to_string(), "\n#".to_string(), String::new()];
        let mut t = "    return x\n# done\ndef f():".to_string();
        assert!(cut_at_stop(&mut t, &stops));
        assert_eq!(t, "    return x");
        let mut t = "no stop here".to_string();
        assert!(!cut_at_stop(&mut t, &stops));
        assert_eq!(t, "no stop here");
    }
}
