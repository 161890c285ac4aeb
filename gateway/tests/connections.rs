//! What bounds a client connection that sends no request: `--header-read-timeout`, counted
//! from the accept and from the end of each response, for HTTP/1 and HTTP/2 alike, however
//! many bytes (a head sent a byte at a time, HTTP/2 PINGs) come meanwhile.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{Gateway, PATIENCE, get, upstream};

const HEAD_TIMEOUT: Duration = Duration::from_millis(500);

/// The client connection preface of HTTP/2, then an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// A PING frame (8 bytes of opaque data).
const H2_PING: &[u8] = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00pingpong";

/// Reads (and discards) what the gateway sends until it closes the connection; how long
/// that took from `since`.
async fn closed_after(mut stream: tokio::io::ReadHalf<TcpStream>, since: Instant) -> Duration {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(PATIENCE, async {
        // A reset counts as closed too.
        while let Ok(1..) = stream.read(&mut buf).await {}
    })
    .await;
    assert!(closed.is_ok(), "still open after {PATIENCE:?}");
    since.elapsed()
}

/// Writes `bytes` every 100 ms until the gateway stops taking it.
async fn keep_sending(mut stream: tokio::io::WriteHalf<TcpStream>, bytes: &'static [u8]) {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline && stream.write_all(bytes).await.is_ok() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn silent_connections_slow_heads_and_http2_connections_without_a_stream_are_closed_at_the_head_timeout()
 {
    let gateway = Gateway::start(&["--header-read-timeout", "500ms"], &[]);
    let started = Instant::now();
    let mut closing = Vec::new();
    for _ in 0..20 {
        let stream = TcpStream::connect(gateway.addr).await.unwrap();
        let (read, write) = tokio::io::split(stream);
        closing.push(tokio::spawn(async move {
            let _write = write;
            closed_after(read, started).await
        }));
    }
    for pings in [false, false, false, true, true] {
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        stream.write_all(H2_PREFACE).await.unwrap();
        let (read, write) = tokio::io::split(stream);
        // PINGs every 100 ms are traffic, not a request: they keep nothing open.
        let sender = tokio::spawn(async move {
            if pings {
                keep_sending(write, H2_PING).await;
            } else {
                let _write = write;
                std::future::pending::<()>().await;
            }
        });
        closing.push(tokio::spawn(async move {
            let closed = closed_after(read, started).await;
            sender.abort();
            closed
        }));
    }
    for _ in 0..5 {
        // An HTTP/1 head that never ends: a byte of a header name every 100 ms.
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (read, write) = tokio::io::split(stream);
        let sender = tokio::spawn(keep_sending(write, b"x"));
        closing.push(tokio::spawn(async move {
            let closed = closed_after(read, started).await;
            sender.abort();
            closed
        }));
    }
    for (n, closing) in closing.into_iter().enumerate() {
        let closed = closing.await.unwrap();
        assert!(
            closed >= HEAD_TIMEOUT && closed < 4 * HEAD_TIMEOUT,
            "connection {n} closed after {closed:?}, for a head timeout of {HEAD_TIMEOUT:?}"
        );
    }
}

#[tokio::test]
async fn with_max_connections_full_of_silent_ones_a_request_is_answered_once_they_are_closed() {
    let (upstream, _) = upstream::start().await;
    let gateway = Gateway::start(
        &[
            "--upstream",
            &format!("http://{upstream}"),
            "--max-connections",
            "5",
            "--header-read-timeout",
            "500ms",
        ],
        &[],
    );
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(gateway.addr).await.unwrap());
    }
    let started = Instant::now();
    let answer = tokio::time::timeout(PATIENCE, get(gateway.addr, "/v1/after"))
        .await
        .expect("answered once the silent connections are closed");
    assert_eq!(answer.body, "upstream /v1/after");
    assert!(started.elapsed() >= HEAD_TIMEOUT, "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_when_no_request_follows_within_the_head_timeout() {
    let (upstream, _) = upstream::start().await;
    let gateway = Gateway::start(
        &[
            "--upstream",
            &format!("http://{upstream}"),
            "--header-read-timeout",
            "300ms",
        ],
        &[],
    );
    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    // A stream of 500 ms, longer than the head timeout: a request in flight is never cut by it.
    let request = Request::post("/v1/slow")
        .header("host", "gateway")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert!(body.ends_with(b"data: [DONE]\n\n"), "{body:?}");
    let ended = Instant::now();
    tokio::time::timeout(PATIENCE, connection)
        .await
        .expect("the idle kept-alive connection is closed")
        .unwrap()
        .unwrap();
    let closed = ended.elapsed();
    assert!(
        closed < 1200 * Duration::from_millis(1),
        "closed {closed:?} after the response"
    );
}
