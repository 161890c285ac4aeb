//! Requests written on the gateway's own HTTP/1.1 connections: the head in origin form (the
//! path and query in the request line, the upstream's authority in `Host`), then the body,
//! delimited by its length when it is known and chunked when it is not. A buffered body goes
//! out with its head in one write.

use std::fmt::Write as _;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Method, request};
use http_body::Body;
use http_body_util::{BodyExt, Either};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tower_stream_deadline::BoxError;

use crate::http1_error::Http1Error;
use crate::upstream::UpstreamBody;

/// How a request body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// None at all: a `GET` with an empty body, say.
    None,
    Length(u64),
    Chunked,
}

/// Writes the request `head` and its `body` on `io`. A failure of the body (the caller's)
/// comes back as it was, one of the connection as [`Http1Error::Io`]; the connection is
/// unusable after any failure.
pub async fn write<W: AsyncWrite + Unpin>(
    io: &mut W,
    head: &request::Parts,
    body: UpstreamBody,
) -> Result<(), BoxError> {
    let framing = match body.size_hint().exact() {
        Some(0) if !matches!(head.method, Method::POST | Method::PUT | Method::PATCH) => {
            Framing::None
        }
        Some(length) => Framing::Length(length),
        None => Framing::Chunked,
    };
    let mut encoded = encode_head(head, framing);
    let mut body = match body {
        Either::Left(mut full) => {
            // One write for the head and the whole body, which is already here.
            let data = match full.frame().await {
                Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
                _ => Bytes::new(),
            };
            io.write_all_buf(&mut encoded.chain(data))
                .await
                .map_err(Http1Error::Io)?;
            return Ok(());
        }
        Either::Right(streamed) => streamed,
    };
    io.write_all_buf(&mut encoded)
        .await
        .map_err(Http1Error::Io)?;
    let mut sent = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match (frame.into_data(), framing) {
            (Ok(data), Framing::Chunked) if !data.is_empty() => {
                let mut size = BytesMut::with_capacity(20);
                let _ = write!(size, "{:x}\r\n", data.len());
                io.write_all_buf(&mut size.chain(data).chain(&b"\r\n"[..]))
                    .await
                    .map_err(Http1Error::Io)?;
            }
            (Ok(mut data), _) => {
                sent += data.len() as u64;
                io.write_all_buf(&mut data).await.map_err(Http1Error::Io)?;
            }
            (Err(frame), Framing::Chunked) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let mut last = BytesMut::from(&b"0\r\n"[..]);
                    put_fields(&mut last, &trailers);
                    last.put_slice(b"\r\n");
                    io.write_all_buf(&mut last).await.map_err(Http1Error::Io)?;
                }
                return Ok(());
            }
            (Err(_), _) => {
                tracing::debug!(target: crate::log::TARGET, "request trailers dropped: the body has a length, which cannot carry them");
            }
        }
    }
    match framing {
        Framing::Chunked => io.write_all(b"0\r\n\r\n").await.map_err(Http1Error::Io)?,
        Framing::Length(length) if length != sent => return Err(Http1Error::RequestLength.into()),
        Framing::Length(_) | Framing::None => {}
    }
    Ok(())
}

/// The request line and headers, with the framing header for `framing` in place of any the
/// request had.
fn encode_head(head: &request::Parts, framing: Framing) -> BytesMut {
    let mut encoded = BytesMut::with_capacity(256 + 32 * head.headers.len());
    encoded.put_slice(head.method.as_str().as_bytes());
    encoded.put_u8(b' ');
    let target = head
        .uri
        .path_and_query()
        .map_or("/", |path_and_query| path_and_query.as_str());
    encoded.put_slice(if target.is_empty() { "/" } else { target }.as_bytes());
    encoded.put_slice(b" HTTP/1.1\r\n");
    if !head.headers.contains_key(HOST) {
        if let Some(authority) = head.uri.authority() {
            encoded.put_slice(b"host: ");
            encoded.put_slice(authority.as_str().as_bytes());
            encoded.put_slice(b"\r\n");
        }
    }
    for (name, value) in &head.headers {
        if name != CONTENT_LENGTH && name != TRANSFER_ENCODING {
            put_field(&mut encoded, name.as_str(), value.as_bytes());
        }
    }
    match framing {
        Framing::None => {}
        Framing::Length(length) => {
            let _ = write!(encoded, "content-length: {length}\r\n");
        }
        Framing::Chunked => encoded.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    encoded.put_slice(b"\r\n");
    encoded
}

fn put_fields(encoded: &mut BytesMut, fields: &http::HeaderMap) {
    for (name, value) in fields {
        put_field(encoded, name.as_str(), value.as_bytes());
    }
}

/// One header line. `http` has already refused names and values with a line break in them,
/// so nothing a caller sends can end the head early.
fn put_field(encoded: &mut BytesMut, name: &str, value: &[u8]) {
    encoded.put_slice(name.as_bytes());
    encoded.put_slice(b": ");
    encoded.put_slice(value);
    encoded.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use http::Request;
    use http_body_util::Full;

    use super::*;

    async fn written(request: Request<UpstreamBody>) -> String {
        let (head, body) = request.into_parts();
        let mut wire = Vec::new();
        write(&mut wire, &head, body).await.unwrap();
        String::from_utf8(wire).unwrap()
    }

    #[tokio::test]
    async fn a_buffered_body_goes_with_its_length_and_the_upstream_authority_as_host() {
        let request = Request::post("http://10.0.0.7:8000/v1/chat/completions?stream=1")
            .header("content-type", "application/json")
            .header("content-length", "999")
            .header("transfer-encoding", "chunked")
            .body(Either::Left(Full::new(Bytes::from_static(b"{\"a\":1}"))))
            .unwrap();
        assert_eq!(
            written(request).await,
            "POST /v1/chat/completions?stream=1 HTTP/1.1\r\nhost: 10.0.0.7:8000\r\n\
             content-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
        );
    }

    #[tokio::test]
    async fn a_host_the_request_has_is_kept_and_an_empty_get_has_no_framing() {
        let request = Request::get("http://upstream/")
            .header("host", "model.internal")
            .body(Either::Left(Full::default()))
            .unwrap();
        assert_eq!(
            written(request).await,
            "GET / HTTP/1.1\r\nhost: model.internal\r\n\r\n"
        );
        let empty_post = Request::post("http://upstream")
            .body(Either::Left(Full::default()))
            .unwrap();
        assert_eq!(
            written(empty_post).await,
            "POST / HTTP/1.1\r\nhost: upstream\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn trailers_are_written_as_header_lines() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let mut encoded = BytesMut::new();
        put_fields(&mut encoded, &trailers);
        assert_eq!(&encoded[..], b"grpc-status: 0\r\n");
    }
}
