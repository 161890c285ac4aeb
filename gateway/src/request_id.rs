//! The request id: the client's `x-request-id`, or a new UUID v4 when it sent none, forwarded
//! to the upstream, returned on the response and written on the request's log line, so that
//! one id finds a request in the client's, the gateway's and the model server's logs.
//!
//! A UUID v4 (as Envoy sets in the same header) needs no coordination: 122 random bits keep
//! the ids of every replica and every restart apart. The bits come from `rand`'s thread-local
//! generator (a ChaCha stream seeded from the system's random source), so a request that
//! comes without an id costs no system call.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longer client ids are replaced: they would bloat every log line of the request.
pub const LONGEST: usize = 128;

/// The request's id: the client's when it is usable, otherwise a new one, which replaces
/// whatever the client sent in `headers`. The second value says why a client's id was not
/// used.
pub fn take_or_make(headers: &mut HeaderMap) -> (HeaderValue, Option<String>) {
    let ignored = match headers.get(&HEADER) {
        None => None,
        Some(id) if id.is_empty() => Some(format!("ignored an empty {HEADER}")),
        Some(id) if id.len() > LONGEST => Some(format!(
            "ignored an {HEADER} of {} bytes (at most {LONGEST})",
            id.len()
        )),
        Some(id) if id.to_str().is_err() => {
            Some(format!("ignored {HEADER}: {id:?}: not visible ASCII"))
        }
        Some(id) => return (id.clone(), None),
    };
    let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    // The text is the bytes' owner: one allocation, which the id's clones (the request's,
    // the log's, the response's) share, where a copy into a `Vec` is a second one at the
    // first clone.
    let id = HeaderValue::from_maybe_shared(Bytes::from_owner(text))
        .expect("a UUID's text is a valid header value");
    headers.insert(HEADER, id.clone());
    (id, ignored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_id_is_kept_and_a_missing_or_unusable_one_is_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_static("req-42"));
        assert_eq!(
            take_or_make(&mut headers),
            (HeaderValue::from_static("req-42"), None)
        );

        let mut headers = HeaderMap::new();
        let (made, ignored) = take_or_make(&mut headers);
        assert_eq!(ignored, None);
        assert_eq!(headers.get(HEADER), Some(&made));
        let uuid = uuid::Uuid::parse_str(made.to_str().unwrap()).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
        assert_ne!(take_or_make(&mut HeaderMap::new()).0, made);

        for unusable in [
            HeaderValue::from_static(""),
            HeaderValue::from_str(&"x".repeat(LONGEST + 1)).unwrap(),
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        ] {
            let mut headers = HeaderMap::new();
            headers.append(HEADER, unusable.clone());
            headers.append(HEADER, HeaderValue::from_static("second"));
            let (made, ignored) = take_or_make(&mut headers);
            assert!(ignored.is_some(), "{unusable:?} was kept");
            assert_ne!(made, unusable);
            // The replacement is the only id the upstream sees.
            assert_eq!(headers.get_all(HEADER).iter().collect::<Vec<_>>(), [&made]);
        }
    }
}
