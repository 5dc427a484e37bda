//! `POST /v1/chat/completions`: a conversation rendered with the model's chat format, one
//! answer per choice.

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
use crate::request::{finish_name, ChatRequest, MAX_CHOICES};
use crate::App;

pub async fn chat_completions(
    State(app): State<Arc<App>>,
    body: std::result::Result<Json<ChatRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(req)) => handle(app, req).await.unwrap_or_else(|e| e.into_response()),
        Err(e) => rejection(e).into_response(),
    }
}

async fn handle(app: Arc<App>, req: ChatRequest) -> ApiResult<Response> {
    let top = req.top_logprobs()?;
    let s = &req.sampling;
    let (n, stops) = (s.n()?, s.stops()?);
    if n > MAX_CHOICES {
        return Err(bad_request(format!("n: at most {MAX_CHOICES}")));
    }
    let prompt = app
        .format
        .encode(&app.tokenizer, &req.messages)
        .map_err(|e| bad_request(e.to_string()))?;
    let jobs = (0..n)
        .map(|j| {
            Ok(Job {
                prompt: prompt.clone(),
                params: s.params(j)?,
                echo: None,
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let spec = Spec {
        max_tokens: s.max_completion_tokens.or(s.max_tokens),
        logprobs: top,
        ignore_eos: s.ignore_eos,
        prompt_logprobs: false,
    };
    let subs = submit(&app, jobs, &spec)?;
    let env = Envelope::new(&app, "chatcmpl", "chat.completion");
    let with_logprobs = top.is_some();
    if s.stream {
        return Ok(stream(
            app.clone(),
            subs,
            n,
            stops,
            env.as_object("chat.completion.chunk"),
            s.include_usage(),
            move |c: &Chunk| {
                let delta = match c.finish {
                    None => json!({"role": "assistant", "content": c.text}),
                    Some(_) => json!({}),
                };
                let lp = with_logprobs.then(|| chat_logprobs(c.tokens));
                json!({"index": c.index, "delta": delta, "logprobs": lp,
                       "finish_reason": c.finish.map(finish_name)})
            },
        ));
    }
    let answers = collect(&app, subs, &stops).await?;
    let usage = total_usage(answers.iter().map(|a| (a.index, &a.usage)), n);
    let choices: Vec<Value> = answers
        .iter()
        .map(|a| {
            json!({"index": a.index, "message": {"role": "assistant", "content": a.text},
                   "logprobs": with_logprobs.then(|| chat_logprobs(&a.tokens)),
                   "finish_reason": finish_name(a.reason)})
        })
        .collect();
    Ok(Json(env.wrap(choices, Some(&usage))).into_response())
}

/// The chat API's log-probabilities: one entry per token, with its UTF-8 bytes.
fn chat_logprobs(tokens: &[ShownToken]) -> Value {
    let entry =
        |text: &str, lp: f32, bytes: &[u8]| json!({"token": text, "logprob": lp, "bytes": bytes});
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(&t.text, t.logprob.unwrap_or(0.0), &t.bytes);
            e["top_logprobs"] = t.top.iter().map(|(s, v, b)| entry(s, *v, b)).collect();
            e
        })
        .collect();
    json!({"content": content})
}
