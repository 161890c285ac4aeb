//! Ending a late gRPC call the way gRPC clients understand: status 4, `DEADLINE_EXCEEDED`.

use std::fmt::Write;

use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use http::{HeaderName, StatusCode};

use crate::error::DeadlineExceeded;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `DEADLINE_EXCEEDED` in the gRPC status codes.
const DEADLINE_EXCEEDED: HeaderValue = HeaderValue::from_static("4");

/// Whether these headers (of a request or a response) are gRPC's.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The trailers that end a late stream: `grpc-status: 4` and a message naming the budget.
pub(crate) fn status_trailers(expired: &DeadlineExceeded) -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(2);
    trailers.insert(GRPC_STATUS, DEADLINE_EXCEEDED);
    if let Ok(message) = HeaderValue::try_from(percent_encode(&expired.to_string())) {
        trailers.insert(GRPC_MESSAGE, message);
    }
    trailers
}

/// The head of a trailers-only response: the call failed before the upstream answered.
pub(crate) fn trailers_only(expired: &DeadlineExceeded) -> http::response::Parts {
    let (mut head, ()) = http::Response::new(()).into_parts();
    head.status = StatusCode::OK;
    head.headers = status_trailers(expired);
    head.headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    head
}

/// `grpc-message` is percent-encoded: printable ASCII but `%` passes, the rest is escaped.
fn percent_encode(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            encoded.push(b as char);
        } else {
            let _ = write!(encoded, "%{b:02X}");
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::DeadlineKind;

    #[test]
    fn trailers_carry_status_4_and_the_message_percent_encoded() {
        let expired = DeadlineExceeded::new(
            DeadlineKind::Idle,
            Duration::from_micros(500),
            Duration::from_micros(700),
        );
        let trailers = status_trailers(&expired);
        assert_eq!(trailers[GRPC_STATUS], "4");
        assert_eq!(
            trailers[GRPC_MESSAGE],
            "stream deadline exceeded: idle budget of 500%C2%B5s ran out after 700%C2%B5s"
        );
        assert_eq!(percent_encode("100% done"), "100%25 done");
    }

    #[test]
    fn grpc_is_recognised_by_content_type() {
        let mut headers = HeaderMap::new();
        assert!(!is_grpc(&headers));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&headers));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(!is_grpc(&headers));
    }
}
