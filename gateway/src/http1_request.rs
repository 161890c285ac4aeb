//! Requests written on the gateway's own HTTP/1.1 connections: the head in origin form (the
//! path and query in the request line, the upstream's authority in `Host`), then the body,
//! delimited by its length when it is known and chunked when it is not. A buffered body goes
//! out with its head in one write; a streamed one as its frames come, while the answer is
//! read.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Method, request};
use http_body::{Body, Frame};
use http_body_util::Either;
use tokio::io::AsyncWrite;

use crate::http1_error::Http1Error;
use crate::request_body::Streamed;
use crate::upstream::UpstreamBody;

/// How a request body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// None at all: a `GET` with an empty body, say.
    None,
    Length(u64),
    Chunked,
}

/// A request being written: what is encoded and not yet written, then the frames of a
/// streamed body as they come. Polled by whoever waits for the answer, and after the answer's
/// head by its body: an upstream may answer before it has the whole request (an error, or a
/// server that streams its answer as the request comes), and the rest is still sent.
pub struct RequestWriter {
    /// Encoded and not yet written, in order.
    pending: VecDeque<Bytes>,
    /// The frames still to come, until the body ends.
    body: Option<Streamed>,
    framing: Framing,
    /// The data bytes written so far, checked against a declared length at the end.
    sent: u64,
}

/// The most pieces handed to one `writev`.
const PIECES_AT_ONCE: usize = 16;

impl RequestWriter {
    /// The request `head` and its `body`, framed. A buffered body goes with the head, in the
    /// same write.
    pub fn new(head: &request::Parts, body: UpstreamBody) -> Self {
        let framing = match body.size_hint().exact() {
            Some(0) if !matches!(head.method, Method::POST | Method::PUT | Method::PATCH) => {
                Framing::None
            }
            Some(length) => Framing::Length(length),
            None => Framing::Chunked,
        };
        let mut pending = VecDeque::with_capacity(2);
        pending.push_back(encode_head(head, framing).freeze());
        let body = match body {
            Either::Left(mut full) => {
                // A buffered body is one frame, there at once.
                let mut cx = Context::from_waker(Waker::noop());
                if let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut full).poll_frame(&mut cx) {
                    if let Ok(data) = frame.into_data() {
                        pending.push_back(data);
                    }
                }
                None
            }
            Either::Right(streamed) => Some(streamed),
        };
        RequestWriter {
            pending,
            body,
            framing,
            sent: 0,
        }
    }

    /// Writes on `io` what it can: `Ready(Ok)` once the whole request is written. A failure
    /// of the body (the caller's) comes back as [`Http1Error::RequestBody`], one of the
    /// connection as [`Http1Error::Io`]; the connection is unusable after either.
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Http1Error>> {
        loop {
            while !self.pending.is_empty() {
                let mut slices = [IoSlice::new(&[]); PIECES_AT_ONCE];
                let count = self.pending.len().min(PIECES_AT_ONCE);
                for (slice, piece) in slices.iter_mut().zip(&self.pending) {
                    *slice = IoSlice::new(piece);
                }
                let written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))
                    .map_err(Http1Error::Io)?;
                if written == 0 {
                    return Poll::Ready(Err(Http1Error::Io(io::ErrorKind::WriteZero.into())));
                }
                self.advance(written);
            }
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => self.push(frame),
                Some(Err(err)) => {
                    self.body = None;
                    return Poll::Ready(Err(Http1Error::RequestBody(err)));
                }
                None => {
                    self.body = None;
                    match self.framing {
                        Framing::Chunked => {
                            self.pending.push_back(Bytes::from_static(b"0\r\n\r\n"))
                        }
                        Framing::Length(length) if length != self.sent => {
                            return Poll::Ready(Err(Http1Error::RequestLength));
                        }
                        Framing::Length(_) | Framing::None => {}
                    }
                }
            }
        }
    }

    /// Takes `written` bytes off the front of what is pending.
    fn advance(&mut self, mut written: usize) {
        while let Some(front) = self.pending.front_mut() {
            if written < front.len() {
                front.advance(written);
                return;
            }
            written -= front.len();
            self.pending.pop_front();
        }
    }

    /// Encodes one frame of a streamed body.
    fn push(&mut self, frame: Frame<Bytes>) {
        match (frame.into_data(), self.framing) {
            (Ok(data), _) if data.is_empty() => {}
            (Ok(data), Framing::Chunked) => {
                let mut size = BytesMut::with_capacity(18);
                let _ = write!(size, "{:x}\r\n", data.len());
                self.pending.push_back(size.freeze());
                self.pending.push_back(data);
                self.pending.push_back(Bytes::from_static(b"\r\n"));
            }
            (Ok(data), _) => {
                self.sent += data.len() as u64;
                self.pending.push_back(data);
            }
            (Err(frame), Framing::Chunked) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let mut last = BytesMut::from(&b"0\r\n"[..]);
                    put_fields(&mut last, &trailers);
                    last.put_slice(b"\r\n");
                    self.pending.push_back(last.freeze());
                    // The trailers end the body.
                    self.body = None;
                }
            }
            (Err(_), _) => {
                tracing::debug!(target: crate::log::TARGET, "request trailers dropped: the body has a length, which cannot carry them");
            }
        }
    }
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
        let mut writer = RequestWriter::new(&head, body);
        std::future::poll_fn(|cx| writer.poll_write(&mut wire, cx))
            .await
            .unwrap();
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
