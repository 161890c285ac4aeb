//! The answers the gateway writes itself: OpenAI-shaped JSON errors, as the `openai` SDK and
//! LangChain parse them.

use std::fmt::Write as _;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

/// `{"error": {"message", "type", "param", "code"}}` with `status`.
pub fn json_error(
    status: StatusCode,
    kind: &str,
    code: &str,
    message: &str,
) -> Response<Full<Bytes>> {
    let body = json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `408`: the caller stopped sending its request body. The connection closes after it, since
/// the rest of that body may still come.
pub fn request_timeout(message: &str) -> Response<Full<Bytes>> {
    let mut response = json_error(
        StatusCode::REQUEST_TIMEOUT,
        "invalid_request_error",
        "request_timeout",
        message,
    );
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The SSE event that ends a stream cut by the gateway's shutdown: the same shape as the
/// crate's deadline event, so SDKs raise the same kind of error.
pub fn shutdown_event() -> Bytes {
    Bytes::from(tower_stream_deadline::sse_error_event(
        "server_error",
        "gateway_shutting_down",
        "the gateway is shutting down; the answer was cut before its end",
    ))
}

/// `outer: cause: cause`, since hyper's errors say little at the top.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        let _ = write!(text, ": {err}");
        source = err.source();
    }
    text
}

/// The first error of type `E` in `err`'s source chain.
pub fn find<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        // An `io::Error`'s `source` skips the error it wraps (rustls's, in a TLS failure).
        let wrapped = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        current = wrapped.or_else(|| err.source());
    }
    None
}
