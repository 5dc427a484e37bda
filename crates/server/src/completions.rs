//! `POST /v1/completions`: text in, text out; with `echo` and `logprobs` it scores a text,
//! which is how lm-evaluation-harness (`local-completions`) asks for log-likelihoods.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::error::{bad_request, rejection, ApiResult};
use crate::generate::{
    collect, stream, submit, total_usage, Chunk, Envelope, Job, ShownToken, Spec,
};
use crate::request::{finish_name, CompletionRequest, PromptInput, MAX_CHOICES};
use crate::App;

/// OpenAI's default for completions.
const DEFAULT_MAX_TOKENS: usize = 16;

pub async fn completions(
    State(app): State<Arc<App>>,
    body: std::result::Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(req)) => handle(app, req).await.unwrap_or_else(|e| e.into_response()),
        Err(e) => rejection(e).into_response(),
    }
}

/// The prompts as token ids, each with the text `echo` shows.
fn prompts(app: &App, input: PromptInput) -> ApiResult<Vec<(Vec<u32>, String)>> {
    let encode = |text: String| -> ApiResult<(Vec<u32>, String)> {
        let ids = app
            .tokenizer
            .encode_prompt(&text)
            .map_err(|e| bad_request(e.to_string()))?;
        Ok((ids, text))
    };
    let ids = |ids: Vec<u32>| {
        let text = app.tokenizer.decode(&ids);
        (ids, text)
    };
    let out = match input {
        PromptInput::Text(t) => vec![encode(t)?],
        PromptInput::Texts(v) => v.into_iter().map(encode).collect::<ApiResult<_>>()?,
        PromptInput::Ids(v) => vec![ids(v)],
        PromptInput::IdLists(v) => v.into_iter().map(ids).collect(),
    };
    if out.is_empty() {
        return Err(bad_request("prompt: no prompt given"));
    }
    Ok(out)
}

async fn handle(app: Arc<App>, req: CompletionRequest) -> ApiResult<Response> {
    let top = req.top_logprobs()?;
    let s = &req.sampling;
    let (n, stops) = (s.n()?, s.stops()?);
    let prompts = prompts(&app, req.prompt)?;
    if prompts.len().saturating_mul(n) > MAX_CHOICES {
        return Err(bad_request(format!(
            "{} prompts × n = {n} is over {MAX_CHOICES} choices",
            prompts.len()
        )));
    }
    let mut jobs = Vec::new();
    for (ids, text) in prompts {
        for j in 0..n {
            jobs.push(Job {
                prompt: ids.clone(),
                params: s.params(j)?,
                echo: req.echo.then(|| text.clone()),
            });
        }
    }
    let spec = Spec {
        max_tokens: Some(s.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
        logprobs: top,
        ignore_eos: s.ignore_eos,
        prompt_logprobs: req.echo && top.is_some(),
    };
    let subs = submit(&app, jobs, &spec)?;
    let env = Envelope::new(&app, "cmpl", "text_completion");
    let with_logprobs = top.is_some();
    if s.stream {
        return Ok(stream(
            app.clone(),
            subs,
            n,
            stops,
            env,
            s.include_usage(),
            move |c: &Chunk| {
                let lp = with_logprobs.then(|| legacy_logprobs(c.tokens, c.offset));
                json!({"index": c.index, "text": c.text, "logprobs": lp,
                       "finish_reason": c.finish.map(finish_name)})
            },
        ));
    }
    let answers = collect(&app, subs, &stops).await?;
    let usage = total_usage(answers.iter().map(|a| (a.index, &a.usage)), n);
    let choices: Vec<Value> = answers
        .iter()
        .map(|a| {
            json!({"index": a.index, "text": a.text, "finish_reason": finish_name(a.reason),
               "logprobs": with_logprobs.then(|| legacy_logprobs(&a.tokens, 0))})
        })
        .collect();
    Ok(Json(env.wrap(choices, Some(&usage))).into_response())
}

/// The completions API's log-probabilities: parallel lists of tokens, their log-probabilities,
/// the alternatives (with the token itself) and each token's offset in the text (the first
/// at `offset`).
fn legacy_logprobs(tokens: &[ShownToken], mut offset: usize) -> Value {
    let mut text_offset = Vec::with_capacity(tokens.len());
    for t in tokens {
        text_offset.push(offset);
        offset += t.text.len();
    }
    let top: Vec<Value> = tokens
        .iter()
        .map(|t| match t.logprob {
            None => Value::Null,
            Some(lp) => {
                let mut m = serde_json::Map::new();
                for (text, v, _) in &t.top {
                    m.entry(text.clone()).or_insert(json!(v));
                }
                m.entry(t.text.clone()).or_insert(json!(lp));
                Value::Object(m)
            }
        })
        .collect();
    json!({
        "tokens": tokens.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}
