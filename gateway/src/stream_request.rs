//! Whether a request asks for a streamed answer, and the budgets of one that does not.
//!
//! A non-streamed answer (the SDKs' default, LangChain's `invoke()`) has its head and its
//! only body frame when the whole answer is ready: a first-frame budget would read every
//! answer slower than it as a stuck one, and retry it from scratch. Such a request is
//! bounded by the total budget only.

use std::time::Duration;

use serde::Deserialize;
use tower_stream_deadline::RequestBudgets;

/// The one field read of a request body; serde skips the rest without building it.
#[derive(Deserialize)]
struct StreamField {
    #[serde(default)]
    stream: bool,
}

/// Whether `body`, a JSON object, has `"stream": true` (OpenAI's chat completions,
/// completions and Responses, Anthropic's Messages).
///
/// Anything else is not streamed: no body, a body that is not JSON (a multipart upload),
/// `"stream"` missing, false or not a boolean. A healthy answer must never be cut by a
/// budget made for streams; at worst a stream not recognised here keeps only its total
/// budget, which still bounds it.
pub fn asks_for_stream(body: &[u8]) -> bool {
    serde_json::from_slice::<StreamField>(body).is_ok_and(|field| field.stream)
}

/// The budgets of a request that does not ask for a stream: no first-frame budget (so no
/// first-frame retries) and no idle budget; the layer's total budget stays.
pub fn total_only() -> RequestBudgets {
    // `Duration::MAX` is no deadline; a first-frame budget beyond the total is ignored.
    RequestBudgets::new()
        .first_frame(Duration::MAX)
        .idle(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_json_body_with_stream_true_asks_for_a_stream() {
        let streamed = [
            &br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#[..],
            br#"{"stream": true, "stream_options": {"include_usage": true}}"#,
            br#" {"input": "hi", "stream" : true } "#,
        ];
        for body in streamed {
            assert!(asks_for_stream(body), "{}", String::from_utf8_lossy(body));
        }
        let not_streamed = [
            &b""[..],
            br#"{"model":"m","messages":[]}"#,
            br#"{"stream":false}"#,
            br#"{"stream":null}"#,
            br#"{"stream":"true"}"#,
            br#"{"stream":1}"#,
            br#"[{"stream":true}]"#,
            br#"{"stream":true"#,
            b"--boundary\r\nContent-Disposition: form-data; name=\"stream\"\r\n\r\ntrue",
            b"\xff\xfe",
        ];
        for body in not_streamed {
            assert!(!asks_for_stream(body), "{}", String::from_utf8_lossy(body));
        }
    }
}
