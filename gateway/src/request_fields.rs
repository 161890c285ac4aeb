//! What the gateway reads of a request's buffered JSON body, in one pass: the model it names
//! (which picks its policy, and goes on its log line and metrics) and whether it asks for a
//! stream (which picks its budgets, see `stream_request`).

use serde::Deserialize;
use serde_json::Value;

/// Longer model names are not used: a log line or a label should not carry whatever a
/// client puts there.
pub const LONGEST_MODEL: usize = 256;

/// The two fields read; serde skips every other without building it. Read as any value, so
/// that one field of another type does not hide the other.
#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    model: Value,
    #[serde(default)]
    stream: Value,
}

/// What a request body says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RequestFields {
    /// The top-level `"model"`, as OpenAI's and Anthropic's APIs (and the servers that copy
    /// them) take it: a string of at most [`LONGEST_MODEL`] bytes.
    pub model: Option<String>,
    /// `"stream": true` (OpenAI's chat completions, completions and Responses, Anthropic's
    /// Messages). Anything else is not streamed: no body, a body that is not a JSON object (a
    /// multipart upload), `"stream"` missing, false or not a boolean. A healthy answer must
    /// never be cut by a budget made for streams; at worst a stream not recognised here keeps
    /// only its total budget, which still bounds it.
    pub stream: bool,
}

/// Reads `body`; a body that is not a JSON object says nothing.
pub fn read(body: &[u8]) -> RequestFields {
    // No body (a GET) says nothing either; serde_json's error for it would be made (and
    // allocated) only to be dropped.
    if body.is_empty() {
        return RequestFields::default();
    }
    let Ok(raw) = serde_json::from_slice::<Raw>(body) else {
        return RequestFields::default();
    };
    RequestFields {
        model: raw
            .model
            .as_str()
            .filter(|model| model.len() <= LONGEST_MODEL)
            .map(str::to_owned),
        stream: raw.stream == Value::Bool(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_of_a_json_body_is_found_and_anything_else_is_none() {
        let body = br#"{"messages":[{"role":"user","content":"hi \"model\""}],"model":"llama-3.1-8b","stream":true}"#;
        assert_eq!(read(body).model.as_deref(), Some("llama-3.1-8b"));
        assert_eq!(
            read(br#"{"model":"a\u00e9b"}"#).model.as_deref(),
            Some("aéb")
        );
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(LONGEST_MODEL + 1));
        for body in [
            &b""[..],
            b"not json",
            b"[1, 2]",
            br#"{"model": 7}"#,
            br#"{"stream": true}"#,
            br#"{"model": "a""#,
            long.as_bytes(),
        ] {
            assert_eq!(read(body).model, None, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn only_a_json_body_with_stream_true_asks_for_a_stream() {
        let streamed = [
            &br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#[..],
            br#"{"stream": true, "stream_options": {"include_usage": true}}"#,
            br#" {"input": "hi", "stream" : true } "#,
        ];
        for body in streamed {
            assert!(read(body).stream, "{}", String::from_utf8_lossy(body));
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
            assert!(!read(body).stream, "{}", String::from_utf8_lossy(body));
        }
    }
}
