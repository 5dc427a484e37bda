//! vLLM's `POST /tokenize` and `POST /detokenize`: the server's own tokenizer and chat format,
//! so a client (lm-evaluation-harness's remote tokenizer, a proxy counting tokens) sees the
//! ids the engine will run.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bora_engine::chat::Message;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{bad_request, rejection, ApiResult};
use crate::App;

/// A text (BOS added unless `add_special_tokens` is false) or a conversation (rendered with the
/// chat format, which writes its own BOS and ends where the answer begins; a chat template
/// leaves out its generation prompt when `add_generation_prompt` is false).
#[derive(Deserialize)]
pub struct TokenizeRequest {
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    add_special_tokens: Option<bool>,
    #[serde(default)]
    add_generation_prompt: Option<bool>,
    #[serde(default)]
    return_token_strs: bool,
}

#[derive(Deserialize)]
pub struct DetokenizeRequest {
    tokens: Vec<u32>,
}

pub async fn tokenize(
    State(app): State<Arc<App>>,
    body: std::result::Result<Json<TokenizeRequest>, JsonRejection>,
) -> Response {
    let answer = body
        .map_err(rejection)
        .and_then(|Json(req)| tokenize_request(&app, req));
    match answer {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn tokenize_request(app: &App, req: TokenizeRequest) -> ApiResult<Value> {
    let ids = match (req.prompt, req.messages) {
        (Some(text), None) => {
            let ids = if req.add_special_tokens.unwrap_or(true) {
                app.tokenizer.encode_prompt(&text)
            } else {
                app.tokenizer.encode(&text)
            };
            ids.map_err(|e| bad_request(e.to_string()))?
        }
        (None, Some(messages)) => {
            if req.add_special_tokens == Some(true) {
                return Err(bad_request(
                    "add_special_tokens: the chat format writes its own special tokens",
                ));
            }
            let generation_prompt = req.add_generation_prompt.unwrap_or(true);
            app.format
                .encode_with(&app.tokenizer, &messages, generation_prompt)
                .map_err(|e| bad_request(e.to_string()))?
        }
        _ => return Err(bad_request("give either prompt or messages")),
    };
    let strs: Option<Vec<String>> = req
        .return_token_strs
        .then(|| ids.iter().map(|&id| app.tokenizer.piece(id)).collect());
    Ok(json!({
        "count": ids.len(),
        "max_model_len": app.context,
        "tokens": ids,
        "token_strs": strs,
    }))
}

pub async fn detokenize(
    State(app): State<Arc<App>>,
    body: std::result::Result<Json<DetokenizeRequest>, JsonRejection>,
) -> Response {
    let answer = body.map_err(rejection).and_then(|Json(req)| {
        if let Some(&bad) = req.tokens.iter().find(|&&id| id as usize >= app.vocab) {
            return Err(bad_request(format!(
                "tokens: {bad} is outside the vocabulary of {}",
                app.vocab
            )));
        }
        Ok(json!({"prompt": app.tokenizer.decode(&req.tokens)}))
    });
    match answer {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
