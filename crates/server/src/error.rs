//! OpenAI error objects, and the statuses they are answered with.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An OpenAI error object, answered with its status.
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub msg: String,
    /// The request field at fault, when there is one.
    pub param: Option<&'static str>,
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.msg, "type": self.kind, "param": self.param, "code": null}});
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}

pub fn error(status: StatusCode, kind: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError {
        status,
        kind,
        msg: msg.into(),
        param: None,
    }
}

pub fn bad_request(msg: impl Into<String>) -> ApiError {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", msg)
}

pub(crate) fn bad_param(param: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError {
        param: Some(param),
        ..bad_request(format!("{param}: {}", msg.into()))
    }
}

/// A body that is not the JSON asked for: 400, or 413 past axum's 2 MB limit.
pub fn rejection(e: JsonRejection) -> ApiError {
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return error(
            status,
            "invalid_request_error",
            "the request body is over the 2 MB limit",
        );
    }
    bad_request(e.body_text())
}
