//! The model a request asks for, read from its buffered JSON body for the request's log line.

use std::borrow::Cow;

use serde::Deserialize;

/// Longer names are not logged: a log line should not carry whatever a client puts there.
pub const LONGEST_LOGGED: usize = 256;

/// The top-level `"model"` of a JSON body, as OpenAI's and Anthropic's APIs (and the servers
/// that copy them) take it. Any other field is skipped without being kept.
#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
}

/// The model `body` names, if it is a JSON object with a string `model` of at most
/// [`LONGEST_LOGGED`] bytes; `None` for any other body.
pub fn named_in(body: &[u8]) -> Option<String> {
    let named: Named<'_> = serde_json::from_slice(body).ok()?;
    named
        .model
        .filter(|model| model.len() <= LONGEST_LOGGED)
        .map(Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_of_a_json_body_is_found_and_anything_else_is_none() {
        let body = br#"{"messages":[{"role":"user","content":"hi \"model\""}],"model":"llama-3.1-8b","stream":true}"#;
        assert_eq!(named_in(body).as_deref(), Some("llama-3.1-8b"));
        assert_eq!(named_in(br#"{"model":"a\u00e9b"}"#).as_deref(), Some("aéb"));
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(LONGEST_LOGGED + 1));
        for body in [
            &b""[..],
            b"not json",
            b"[1, 2]",
            br#"{"model": 7}"#,
            br#"{"stream": true}"#,
            br#"{"model": "a""#,
            long.as_bytes(),
        ] {
            assert_eq!(named_in(body), None, "{}", String::from_utf8_lossy(body));
        }
    }
}
