//! Response heads read on the gateway's own HTTP/1.1 connections, parsed by `httparse`, and
//! what a head says about the rest of the exchange: how its body is framed (RFC 9112,
//! section 6.3) and whether the connection can carry another request after it.

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};

use crate::http1_error::Http1Error;

/// Headers a response head has room for beyond its own.
const ROOM_FOR_ADDED: usize = 2;

/// The most header lines a head may have (hyper's limit too).
pub const MAX_HEADERS: usize = 100;

/// The largest response head taken (hyper's limit is about 400 KiB); a model server's is
/// well under 1 KiB.
const HEAD_AT_MOST: usize = 64 * 1024;

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// There is none: the answer to a `HEAD`, a `204` or `304`, a `content-length: 0`.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// A response head, and what it says about the exchange.
#[derive(Debug)]
pub struct ResponseHead {
    /// The status, version and headers, as they came.
    pub response: Response<()>,
    pub framing: Framing,
    /// Whether the connection can carry another request once the body has ended.
    pub keep_alive: bool,
}

/// Which of the fields that frame a body and keep a connection a head has, noted as its
/// fields are read: most heads have a length and neither of the others, and are then not
/// searched for them (a search hashes the name).
#[derive(Clone, Copy, Default)]
struct Framed {
    transfer_encoding: bool,
    content_length: bool,
    connection: bool,
}

impl Framed {
    fn note(&mut self, name: &HeaderName) {
        self.transfer_encoding |= *name == TRANSFER_ENCODING;
        self.content_length |= *name == CONTENT_LENGTH;
        self.connection |= *name == CONNECTION;
    }
}

/// Where a header value is: at an offset and length in the head, or copied out of it.
enum Value {
    At(usize, usize),
    Copied(Vec<u8>),
}

/// Takes the response head at the start of `read` (the bytes read on the connection since
/// the request was written), skipping informational (`1xx`) heads; `None` while it has not
/// all come yet, an error once 64 KiB came without its end. Header values share the read
/// buffer instead of being copied.
pub fn parse(read: &mut BytesMut, method: &Method) -> Result<Option<ResponseHead>, Http1Error> {
    loop {
        // Nothing read yet (the exchange looks before its first read, and after each wake).
        if read.is_empty() {
            return Ok(None);
        }
        // Left uninitialized for the parser to fill: 100 empty fields written for every look
        // cost more than parsing a model server's head.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let length = match config.parse_response_with_uninit_headers(&mut parsed, read, &mut fields)
        {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if read.len() < HEAD_AT_MOST => return Ok(None),
            Ok(httparse::Status::Partial) => {
                return Err(Http1Error::Malformed("a head larger than 64 KiB"));
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Http1Error::Malformed("more than 100 header lines"));
            }
            Err(_) => return Err(Http1Error::Malformed("not an HTTP/1.1 response head")),
        };
        let status = parsed
            .code
            .and_then(|code| StatusCode::from_u16(code).ok())
            .ok_or(Http1Error::Malformed("an invalid status code"))?;
        let version = match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        // Where each value lies in the head, so that it can be taken from the buffer once the
        // parser's borrow of it ends (a value found anywhere else is copied).
        let start = read.as_ptr() as usize;
        let mut located = Vec::with_capacity(parsed.headers.len());
        let mut framed = Framed::default();
        for field in parsed.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| Http1Error::Malformed("an invalid header name"))?;
            framed.note(&name);
            let len = field.value.len();
            let value = (field.value.as_ptr() as usize)
                .checked_sub(start)
                .filter(|at| at.checked_add(len).is_some_and(|end| end <= length))
                .map_or_else(
                    || Value::Copied(field.value.to_vec()),
                    |at| Value::At(at, len),
                );
            located.push((name, value));
        }
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Http1Error::Malformed("a protocol switch nobody asked for"));
            }
            // `100 Continue`, `103 Early Hints`: the answer proper follows.
            read.advance(length);
            continue;
        }
        let head = read.split_to(length).freeze();
        // With room for the headers a proxy adds to an answer (its request id, a note to
        // buffering proxies), which would otherwise grow the map: a new table, every name
        // hashed again.
        let mut headers = HeaderMap::with_capacity(located.len() + ROOM_FOR_ADDED);
        for (name, value) in located {
            let value = match value {
                Value::At(at, len) => HeaderValue::from_maybe_shared(head.slice(at..at + len)),
                Value::Copied(value) => HeaderValue::from_bytes(&value),
            };
            let value = value.map_err(|_| Http1Error::Malformed("an invalid header value"))?;
            headers.append(name, value);
        }
        let framing = framing(&headers, framed, status, method)?;
        let keep_alive =
            keep_alive(&headers, framed, version, framing) && method != Method::CONNECT;
        if framed.transfer_encoding {
            // The transfer coding overrides a length, which is not passed on (RFC 9112,
            // section 6.3): the client would wait for a length the body does not have.
            headers.remove(CONTENT_LENGTH);
        }
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        return Ok(Some(ResponseHead {
            response,
            framing,
            keep_alive,
        }));
    }
}

/// How the body after a head with `headers` and `status`, answering `method`, is delimited.
fn framing(
    headers: &HeaderMap,
    framed: Framed,
    status: StatusCode,
    method: &Method,
) -> Result<Framing, Http1Error> {
    // A `2xx` to `CONNECT` would start a tunnel, which the gateway does not carry: no body.
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || (method == Method::CONNECT && status.is_success())
    {
        return Ok(Framing::Empty);
    }
    if framed.transfer_encoding {
        // Chunked when it is the last coding applied; otherwise only the close ends it.
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|value| value.as_bytes().rsplit(|&byte| byte == b',').next())
            .map(<[u8]>::trim_ascii);
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            _ => Framing::UntilClose,
        });
    }
    if !framed.content_length {
        return Ok(Framing::UntilClose);
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        // `content-length: 5, 5` and repeated fields are one length, if they agree.
        for item in value.as_bytes().split(|&byte| byte == b',') {
            let item = std::str::from_utf8(item.trim_ascii())
                .ok()
                .filter(|item| !item.is_empty() && item.bytes().all(|byte| byte.is_ascii_digit()))
                .and_then(|item| item.parse::<u64>().ok())
                .ok_or(Http1Error::Malformed("an invalid content-length"))?;
            if length.is_some_and(|length| length != item) {
                return Err(Http1Error::Malformed("content-lengths that disagree"));
            }
            length = Some(item);
        }
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(length) => Framing::Length(length),
        None => Framing::UntilClose,
    })
}

/// Whether the connection outlives this response: HTTP/1.1 unless the upstream says `close`,
/// HTTP/1.0 only when it says `keep-alive`; never when only the close ends the body, nor
/// after a head with both a transfer coding and a length (a sign of a confused upstream).
fn keep_alive(headers: &HeaderMap, framed: Framed, version: Version, framing: Framing) -> bool {
    if framing == Framing::UntilClose || (framed.transfer_encoding && framed.content_length) {
        return false;
    }
    let says = |token: &str| {
        framed.connection
            && headers.get_all(CONNECTION).iter().any(|value| {
                value
                    .as_bytes()
                    .split(|&byte| byte == b',')
                    .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
            })
    };
    match version {
        Version::HTTP_10 => says("keep-alive"),
        _ => !says("close"),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_bytes_are_a_head_an_error_or_a_wait_for_more_never_a_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            prefix in prop::sample::select(vec!["", "HTTP/1.1 200 OK\r\n", "HTTP/1.0 204 x\r\ncontent-length: "]),
        ) {
            let mut read = BytesMut::from(prefix);
            read.extend_from_slice(&bytes);
            let before = read.len();
            if let Ok(Some(_)) = parse(&mut read, &Method::GET) {
                prop_assert!(read.len() < before, "a head taken is taken out of the buffer");
            }
        }
    }

    fn parsed(text: &str, method: Method) -> Result<Option<ResponseHead>, Http1Error> {
        parse(&mut BytesMut::from(text), &method)
    }

    fn head(text: &str) -> ResponseHead {
        parsed(text, Method::POST).unwrap().expect("a whole head")
    }

    #[test]
    fn a_head_is_taken_whole_and_what_follows_it_stays_for_the_body() {
        let mut read = BytesMut::from(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nX-Id: a\r\nx-id: b\r\n\
             transfer-encoding: chunked\r\n\r\n5\r\nhello",
        );
        let head = parse(&mut read, &Method::POST).unwrap().unwrap();
        assert_eq!(&read[..], b"5\r\nhello");
        assert_eq!(head.response.status(), StatusCode::OK);
        assert_eq!(head.response.version(), Version::HTTP_11);
        let headers = head.response.headers();
        assert_eq!(headers["content-type"], "text/event-stream");
        let ids: Vec<_> = headers.get_all("x-id").iter().collect();
        assert_eq!(ids, ["a", "b"], "repeated fields keep their order");
        assert_eq!((head.framing, head.keep_alive), (Framing::Chunked, true));
    }

    #[test]
    fn a_head_not_all_read_yet_asks_for_more_and_leaves_the_buffer_as_it_was() {
        for cut in ["", "HTTP/1.1 2", "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n"] {
            let mut read = BytesMut::from(cut);
            assert!(parse(&mut read, &Method::GET).unwrap().is_none(), "{cut:?}");
            assert_eq!(&read[..], cut.as_bytes());
        }
    }

    #[test]
    fn informational_heads_are_skipped_and_a_protocol_switch_is_refused() {
        let head = head(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
             HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n",
        );
        assert_eq!(head.response.status(), StatusCode::CREATED);
        assert!(!head.response.headers().contains_key("link"));
        let switched = parsed("HTTP/1.1 101 Switching Protocols\r\n\r\n", Method::GET);
        assert!(matches!(switched, Err(Http1Error::Malformed(_))));
    }

    #[test]
    fn the_body_is_framed_as_rfc_9112_says() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n",
                Framing::Length(12),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                Framing::Empty,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\ncontent-length: 7\r\n\r\n",
                Framing::Length(7),
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n",
                Framing::Chunked,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                Framing::Chunked,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                Framing::UntilClose,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", Framing::UntilClose),
            (
                "HTTP/1.1 204 No Content\r\ncontent-length: 3\r\n\r\n",
                Framing::Empty,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
                Framing::Empty,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n",
                Framing::Length(12),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Framing::Chunked,
            ),
        ];
        for (text, framing) in cases {
            assert_eq!(head(text).framing, framing, "{text:?}");
        }
        let both =
            head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n");
        assert!(
            !both.response.headers().contains_key(CONTENT_LENGTH),
            "a length a transfer coding overrides is not passed on"
        );
        let answer_to_head = parsed(
            "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n",
            Method::HEAD,
        );
        assert_eq!(answer_to_head.unwrap().unwrap().framing, Framing::Empty);
        let tunnel = parsed(
            "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n",
            Method::CONNECT,
        );
        let tunnel = tunnel.unwrap().unwrap();
        assert_eq!((tunnel.framing, tunnel.keep_alive), (Framing::Empty, false));
    }

    #[test]
    fn a_length_that_is_not_one_number_is_refused() {
        for length in [
            "-1",
            "1e3",
            "",
            "0x10",
            "5, 6",
            "+5",
            "99999999999999999999999",
        ] {
            let text = format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n");
            assert!(
                matches!(parsed(&text, Method::GET), Err(Http1Error::Malformed(_))),
                "{length:?}"
            );
        }
        let disagreeing = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n";
        assert!(parsed(disagreeing, Method::GET).is_err());
    }

    #[test]
    fn the_connection_is_kept_only_when_the_upstream_lets_it_be() {
        let cases = [
            ("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", true),
            (
                "HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 2\r\n\r\n",
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nconnection: te, close\r\ncontent-length: 2\r\n\r\n",
                false,
            ),
            ("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n", false),
            (
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\n",
                true,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n",
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n",
                false,
            ),
        ];
        for (text, keep_alive) in cases {
            assert_eq!(head(text).keep_alive, keep_alive, "{text:?}");
        }
    }

    #[test]
    fn what_is_not_an_http_head_is_refused() {
        for text in [
            "SSH-2.0-OpenSSH_9.2\r\n\r\n",
            "HTTP/1.1 20 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx: a\x01b\r\n\r\n",
        ] {
            assert!(parsed(text, Method::GET).is_err(), "{text:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|n| format!("x-{n}: v\r\n")).collect();
        let text = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert!(matches!(
            parsed(&text, Method::GET),
            Err(Http1Error::Malformed("more than 100 header lines"))
        ));
    }
}
