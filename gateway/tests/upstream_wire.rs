//! What goes over the gateway's own HTTP/1.1 connections to an `http://` upstream: request
//! bodies arrive whole however the caller sent them, and what upstreams answer besides a
//! plain response (informational heads, answers to `HEAD`, bodies ended by the close, a
//! `connection: close`, a head that is not HTTP, an answer before the whole request was sent)
//! is passed on or refused as HTTP/1.1 says, and a connection is kept only when that is safe;
//! the rest of a request goes on while its answer streams. The gateway binary on 127.0.0.1.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::upstream::{self, Counts};
use support::{Gateway, PATIENCE, get, send};

/// A digest of `bytes` that tells a reordered, cut or doubled body from the one sent.
fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A body of `length` bytes that differ from their neighbours.
fn pattern(length: usize) -> Vec<u8> {
    (0..length).map(|n| (n % 251) as u8).collect()
}

/// An upstream that answers every request with what it received: its length, digest, and
/// how it was framed.
async fn echo_upstream() -> (SocketAddr, Arc<Counts>) {
    upstream::answering(|request: Request<hyper::body::Incoming>| async move {
        let header = |name| {
            request
                .headers()
                .get(name)
                .map_or("-".to_owned(), |value| value.to_str().unwrap().to_owned())
        };
        let framing = format!(
            "{} {}",
            header("content-length"),
            header("transfer-encoding")
        );
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let text = format!("{} {} {framing}", body.len(), digest(&body));
        Response::new(Full::new(Bytes::from(text)))
    })
    .await
}

/// A body of the pieces it holds, of no known length.
struct Pieces(std::collections::VecDeque<Bytes>);

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.0
                .pop_front()
                .map(|piece| Ok(http_body::Frame::data(piece))),
        )
    }
}

/// `body` posted to `addr` in pieces of 64 KiB, with no length: the caller's HTTP/1.1
/// client sends it chunked.
async fn post_chunked(addr: SocketAddr, body: Vec<u8>) -> String {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let pieces = body.chunks(64 * 1024).map(Bytes::copy_from_slice).collect();
    let request = Request::post("/v1/upload")
        .header("host", "gateway")
        .body(Pieces(pieces))
        .unwrap();
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn request_bodies_reach_the_upstream_whole_buffered_streamed_or_chunked() {
    let (upstream, counts) = echo_upstream().await;
    let gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);

    // Small: buffered, sent with its length in the same write as the head.
    let small = br#"{"model":"m","stream":true}"#.to_vec();
    let request = Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from(small.clone())))
        .unwrap();
    let answer = send(gateway.addr, request).await;
    assert_eq!(
        answer.body,
        format!("{} {} {} -", small.len(), digest(&small), small.len())
    );

    // Larger than the replay buffer, with a length: streamed on with that length.
    let large = pattern(3 * 1024 * 1024 + 17);
    let request = Request::post("/v1/upload")
        .body(Full::new(Bytes::from(large.clone())))
        .unwrap();
    let answer = send(gateway.addr, request).await;
    assert_eq!(
        answer.body,
        format!("{} {} {} -", large.len(), digest(&large), large.len())
    );

    // Larger, with no length: streamed on chunked.
    let answer = post_chunked(gateway.addr, large.clone()).await;
    assert_eq!(
        answer,
        format!("{} {} - chunked", large.len(), digest(&large))
    );
    assert_eq!(Counts::get(&counts.requests), 3);
    assert_eq!(
        Counts::get(&counts.connections),
        1,
        "one kept-alive connection"
    );
}

#[tokio::test]
async fn an_answer_to_head_has_no_body_whatever_its_length_says() {
    let (upstream, counts) = upstream::answering(|_| async {
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{\"object\":\"list\"}")))
            .unwrap()
    })
    .await;
    let gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);
    for _ in 0..2 {
        let head = Request::head("/v1/models").body(Full::default()).unwrap();
        let answer = send(gateway.addr, head).await;
        assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, ""));
        assert_eq!(answer.headers["content-length"], "17");
        let answer = get(gateway.addr, "/v1/models").await;
        assert_eq!(answer.body, "{\"object\":\"list\"}");
    }
    assert_eq!(
        Counts::get(&counts.connections),
        1,
        "the connection outlived the answers to HEAD"
    );
}

/// A raw server that answers every request head on a connection with `answer`, and closes
/// the connection after it when `close`; its address and the connections it accepted.
async fn raw_upstream(answer: &'static [u8], close: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    upstream::raw(move |mut stream, _| async move {
        let mut read = Vec::new();
        while upstream::read_head(&mut stream, &mut read).await {
            if stream.write_all(answer).await.is_err() || close {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_connection_is_kept_after_an_answer_only_when_that_is_safe() {
    // Each upstream answers every request on a connection until it closes it (`close`): a
    // connection the gateway should not have kept would answer again, and be counted once.
    let cases: [(&'static [u8], bool, &str, usize, &str); 7] = [
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
              HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            false,
            "ok",
            1,
            "informational heads, then the answer",
        ),
        (
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
            false,
            "ok",
            1,
            "HTTP/1.0 with keep-alive",
        ),
        (
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            false,
            "ok",
            2,
            "connection: close",
        ),
        (
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
            false,
            "ok",
            2,
            "HTTP/1.0 without keep-alive",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the close",
            true,
            "until the close",
            2,
            "a body the close ends",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
            false,
            "ok",
            2,
            "bytes beyond the answer (a second answer, unasked)",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 9\r\n\r\n\
              2\r\nok\r\n0\r\n\r\n",
            false,
            "ok",
            2,
            "both a transfer coding and a length",
        ),
    ];
    for (answer, close, body, connections, what) in cases {
        let (upstream, accepted) = raw_upstream(answer, close).await;
        let gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);
        let mut answers = Vec::new();
        for _ in 0..2 {
            let answer = get(gateway.addr, "/v1/models").await;
            answers.push((answer.status, answer.body));
        }
        let expected = (StatusCode::OK, body.to_owned());
        assert_eq!(answers, [expected.clone(), expected], "{what}");
        assert_eq!(accepted.load(Ordering::SeqCst), connections, "{what}");
    }
}

#[tokio::test]
async fn an_answer_that_is_not_http_is_a_bad_gateway_and_its_connection_closed() {
    // A head that never ends within 64 KiB: one header line of 70 KiB.
    let endless = format!(
        "HTTP/1.1 200 OK\r\nx-pad: {}\r\n\r\n",
        "x".repeat(70 * 1024)
    );
    let cases: [&'static [u8]; 4] = [
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        endless.leak().as_bytes(),
    ];
    for answer in cases {
        let (upstream, accepted) = raw_upstream(answer, false).await;
        let gateway = Gateway::start(
            &[
                "--upstream",
                &format!("http://{upstream}"),
                "--retries",
                "0",
            ],
            &[],
        );
        for _ in 0..2 {
            let answer_seen = get(gateway.addr, "/v1/models").await;
            assert_eq!(
                answer_seen.status,
                StatusCode::BAD_GATEWAY,
                "{}: {}",
                String::from_utf8_lossy(answer),
                answer_seen.body
            );
            assert!(
                answer_seen.body.contains("malformed"),
                "{}",
                answer_seen.body
            );
            if answer.len() > 64 * 1024 {
                assert!(
                    answer_seen.body.contains("larger than 64 KiB"),
                    "{}",
                    answer_seen.body
                );
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "never reused");
    }
}

/// An upstream that answers `413` as soon as it has a request head, then reads on (drains
/// the body) or holds the connection open without reading; its address and the connections
/// it accepted.
async fn impatient_upstream(drains: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    upstream::raw(move |mut stream, _| async move {
        if !upstream::read_head(&mut stream, &mut Vec::new()).await {
            return;
        }
        let answer = b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 9\r\n\r\ntoo large";
        if stream.write_all(answer).await.is_err() {
            return;
        }
        // Reads on until the gateway closes the connection, or holds it open, unread, as
        // long as the test runs.
        let mut buffer = [0; 4096];
        while drains && stream.read(&mut buffer).await.is_ok_and(|n| n > 0) {}
        if !drains {
            std::future::pending::<()>().await;
        }
    })
    .await
}

/// Posts a body of `length` bytes to `addr` from a raw socket, as curl would: the answer is
/// read while the body is written, and read whole even if the gateway stops taking the body.
async fn post_large(addr: SocketAddr, length: usize) -> String {
    let (mut reader, mut writer) = TcpStream::connect(addr).await.unwrap().into_split();
    let head =
        format!("POST /v1/upload HTTP/1.1\r\nhost: gateway\r\ncontent-length: {length}\r\n\r\n");
    let sending = tokio::spawn(async move {
        // The gateway may close the connection once it has answered: the rest is not sent.
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(&pattern(length)).await;
        writer
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        let mut buffer = [0; 4096];
        while !answer.ends_with(b"too large") {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within {PATIENCE:?}");
    sending.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn an_answer_that_comes_before_the_whole_request_body_is_passed_on() {
    for drains in [false, true] {
        let (upstream, accepted) = impatient_upstream(drains).await;
        let gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);
        for attempt in 1..=2 {
            // Larger than the replay buffer and the sockets' buffers together.
            let answer = post_large(gateway.addr, 8 * 1024 * 1024).await;
            assert!(
                answer.starts_with("HTTP/1.1 413 ") && answer.ends_with("\r\n\r\ntoo large"),
                "drains: {drains}: {answer:?}"
            );
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                attempt,
                "drains: {drains}: the connection is not kept"
            );
        }
    }
}

#[tokio::test]
async fn an_upstream_that_answers_while_the_request_streams_in_gets_all_of_it() {
    // It sends its head at once and echoes the request's body as it reads it: the rest of
    // the request must go on after the answer's head, or neither would end.
    let (upstream, counts) =
        upstream::answering(|request: Request<hyper::body::Incoming>| async move {
            Response::new(request.into_body())
        })
        .await;
    let gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);
    let sent = pattern(3 * 1024 * 1024 + 5);
    let request = Request::post("/v1/echo")
        .body(Full::new(Bytes::from(sent.clone())))
        .unwrap();
    let response = support::send_head(gateway.addr, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let echoed = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("the echo ends in time")
        .expect("the echo reads without error")
        .to_bytes();
    assert_eq!(echoed.len(), sent.len());
    assert_eq!(digest(&echoed), digest(&sent), "every byte, in order");
    assert_eq!(Counts::get(&counts.requests), 1);
}
