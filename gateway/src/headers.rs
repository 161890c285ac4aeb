//! What changes in the heads that pass through: hop-by-hop headers stay behind, the caller
//! is added to `x-forwarded-for`, event streams lose a length they can no longer keep.

use std::net::SocketAddr;

use http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
    TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110, section 7.6.1), never forwarded.
// A `static`, not a `const`: a `const` array is built, and dropped, wherever it is named.
static HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names, with no hashing, finds which are here: most heads carry
    // none, and most others only `connection: keep-alive`, which is then the one lookup.
    let mut here = [false; HOP_BY_HOP.len()];
    let mut te = false;
    for name in headers.keys() {
        match hop_by_hop_index(name.as_str()) {
            Some(index) => here[index] = true,
            None => te |= name == TE,
        }
    }
    if here[CONNECTION_AT] {
        // Read as bytes, token by token: one byte that is not visible ASCII must not hide
        // the other names a `Connection` header lists. A token that is no header name names
        // nothing; one of the hop-by-hop names is removed below if it is here.
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
            .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
            .filter(|name| hop_by_hop_index(name.as_str()).is_none())
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(here).filter(|(_, here)| *here) {
        headers.remove(name);
    }
    // `te: trailers` is end-to-end in practice (gRPC needs it); anything else is not.
    if te && headers.get(TE).is_some_and(|te| te != "trailers") {
        headers.remove(TE);
    }
}

/// Where `connection` is in [`HOP_BY_HOP`].
const CONNECTION_AT: usize = 0;

/// Where `name` is in [`HOP_BY_HOP`], if it is there: a match on the lowercase text, which
/// compares lengths before bytes (comparing `HeaderName`s one by one took 250 instructions
/// a head, measured with callgrind).
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => CONNECTION_AT,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "trailer" => 5,
        "transfer-encoding" => 6,
        "upgrade" => 7,
        _ => return None,
    })
}

/// A client connection's address as `x-forwarded-for` names it, written once per connection
/// (formatting an address is most of what a request's head costs here otherwise).
#[derive(Clone, Debug)]
pub struct ForwardedFor(HeaderValue);

impl ForwardedFor {
    pub fn new(peer: SocketAddr) -> Self {
        let ip = peer.ip().to_string();
        // An address is digits, dots, colons and hex: always a valid value.
        ForwardedFor(HeaderValue::from_str(&ip).unwrap_or(HeaderValue::from_static("unknown")))
    }
}

pub fn prepare_request(parts: &mut Parts, peer: &ForwardedFor) {
    // The client speaks HTTP/1.1 or HTTP/2 to the upstream, whatever the caller spoke.
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    // The upstream's own authority goes in `Host` (HTTP/1) or `:authority` (HTTP/2), and so
    // matches the name the TLS connection was made for.
    parts.headers.remove(HOST);
    let forwarded_for = match parts.headers.get(X_FORWARDED_FOR) {
        Some(previous) => {
            let ip = peer.0.to_str().unwrap_or("");
            let joined = format!("{}, {ip}", previous.to_str().unwrap_or(""));
            match HeaderValue::from_str(&joined) {
                Ok(value) => value,
                Err(_) => return,
            }
        }
        None => peer.0.clone(),
    };
    parts.headers.insert(X_FORWARDED_FOR, forwarded_for);
}

/// Prepares a response head; whether the response is an event stream.
pub fn prepare_response(headers: &mut HeaderMap) -> bool {
    strip_hop_by_hop(headers);
    let event_stream = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("text/event-stream"));
    if event_stream {
        // At a deadline or a shutdown an event stream gets one more event: its length is no
        // longer known.
        headers.remove(CONTENT_LENGTH);
        // A buffering proxy in front (nginx) would hold tokens back.
        headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    }
    event_stream
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert("authorization", HeaderValue::from_static("Bearer sk"));
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|name| name.as_str()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "te"]);
    }

    #[test]
    fn a_connection_header_can_name_te_even_as_trailers() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, TE"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(|name| name.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_found_and_stripped() {
        for name in HOP_BY_HOP.iter().chain([&TE]) {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_static("gzip"));
            headers.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut headers);
            let left: Vec<_> = headers.keys().map(|name| name.as_str()).collect();
            assert_eq!(left, ["x-kept"], "{name} was forwarded");
        }
    }

    #[test]
    fn a_connection_header_with_unreadable_bytes_still_names_its_readable_tokens() {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_bytes(b"x-secret, x-\xffjunk,\tx-other ,").unwrap();
        headers.insert(CONNECTION, value);
        headers.append(
            CONNECTION,
            HeaderValue::from_bytes(b"\x80, x-third").unwrap(),
        );
        for name in ["x-secret", "x-other", "x-third", "x-kept"] {
            headers.insert(name, HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(|name| name.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn event_streams_are_marked_unbuffered_for_a_proxy_in_front() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("1024"));
        assert!(prepare_response(&mut headers));
        // nginx reads this header and passes the stream on as it comes, without any
        // `proxy_buffering off` in its configuration.
        assert_eq!(headers.get("x-accel-buffering").unwrap(), "no");
        assert!(headers.get(CONTENT_LENGTH).is_none());

        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(!prepare_response(&mut headers));
        assert!(headers.get("x-accel-buffering").is_none());
    }
}
