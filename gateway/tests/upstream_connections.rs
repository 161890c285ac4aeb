//! The gateway's connections to an `http://` upstream: a response that ended cleanly leaves
//! its connection to the next request; one that was cut (a deadline, a client that left) or
//! failed closes it; an idle connection the upstream closed is not used; and
//! `--upstream-connections` bounds how many are open, the requests beyond waiting within
//! their budgets; with `--h2c`, streams share one connection and a cut resets only its own
//! stream; an upstream named by host name is reached; a stream that comes in bursts,
//! read by a client with a small receive window that pauses, reaches it whole. The
//! gateway binary on 127.0.0.1, in front of servers that count their connections.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use support::upstream::{self, Counts};
use support::{Gateway, PATIENCE, get, post, sample, send, send_head, timed_out};

/// Waits until `counter` reads `expected`, for at most `PATIENCE`.
async fn until(what: &str, counter: &AtomicUsize, expected: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while counter.load(Ordering::SeqCst) != expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} after {PATIENCE:?}, expected {expected}",
            counter.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A server answering with bodies of a known length (`/json`) or none (`/empty`, `204`).
async fn sized_answers() -> (SocketAddr, Arc<Counts>) {
    upstream::answering(|request: Request<hyper::body::Incoming>| async move {
        let response = match request.uri().path() {
            "/empty" => Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(Full::default()),
            _ => Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(b"{\"id\":\"cmpl-1\"}"))),
        };
        response.unwrap()
    })
    .await
}

/// A raw server that answers each connection's first request with `answer`, then reads on
/// until the gateway closes the connection (reported on the channel) or `close`s it itself.
async fn raw_upstream(
    answer: &'static [u8],
    close: bool,
) -> (SocketAddr, Arc<AtomicUsize>, mpsc::UnboundedReceiver<usize>) {
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let (addr, accepted) = upstream::raw(move |mut stream, number| {
        let closed_tx = closed_tx.clone();
        async move {
            if !upstream::read_head(&mut stream, &mut Vec::new()).await
                || stream.write_all(answer).await.is_err()
                || close
            {
                return;
            }
            // Whatever comes next is not answered; the end of it is the gateway's close.
            let mut buffer = [0; 4096];
            while stream.read(&mut buffer).await.is_ok_and(|n| n > 0) {}
            let _ = closed_tx.send(number);
        }
    })
    .await;
    (addr, accepted, closed)
}

#[tokio::test]
async fn responses_that_end_cleanly_leave_their_connection_to_the_next_request() {
    let (upstream, counts) = upstream::start().await;
    let gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);
    for _ in 0..3 {
        let answer = send(gateway.addr, post("/v1/complete", &[])).await;
        assert!(answer.body.ends_with("data: [DONE]\n\n"), "{}", answer.body);
        let answer = get(gateway.addr, "/v1/plain").await;
        assert_eq!(answer.body, "upstream /v1/plain");
    }
    assert_eq!(Counts::get(&counts.requests), 6);
    assert_eq!(
        Counts::get(&counts.connections),
        1,
        "one kept-alive connection"
    );
    let metrics = get(gateway.admin.unwrap(), "/metrics").await.body;
    for (state, count) in [("idle", 1.0), ("busy", 0.0)] {
        let series = format!(
            "stream_deadline_upstream_connections{{upstream=\"http://{upstream}\",state=\"{state}\"}}"
        );
        assert_eq!(sample(&metrics, &series), Some(count), "{metrics}");
    }

    // Bodies of a known length, and none at all, end without a last empty read.
    let (sized, sized_counts) = sized_answers().await;
    let gateway = Gateway::start(&["--upstream", &format!("http://{sized}")], &[]);
    for _ in 0..3 {
        let answer = get(gateway.addr, "/json").await;
        assert_eq!(answer.body, "{\"id\":\"cmpl-1\"}");
        let answer = get(gateway.addr, "/empty").await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::NO_CONTENT, "")
        );
    }
    assert_eq!(
        Counts::get(&sized_counts.connections),
        1,
        "one kept-alive connection"
    );
}

#[tokio::test]
async fn a_response_cut_at_its_deadline_or_left_by_its_client_closes_its_connection() {
    let (upstream, counts) = upstream::start().await;
    let gateway = Gateway::start(
        &[
            "--upstream",
            &format!("http://{upstream}"),
            "--total",
            "300ms",
        ],
        &[],
    );
    let answer = send(gateway.addr, post("/v1/babble", &[])).await;
    assert!(
        answer.body.contains("total budget of 300ms"),
        "{}",
        answer.body
    );
    // Closed by the gateway, not kept: the upstream's stream is cancelled, its connection ends.
    until("babbles cancelled", &counts.cancelled, 1).await;
    until("upstream connections open", &counts.open, 0).await;
    let answer = send(gateway.addr, post("/v1/complete", &[])).await;
    assert!(answer.body.ends_with("data: [DONE]\n\n"), "{}", answer.body);
    assert_eq!(Counts::get(&counts.connections), 2);

    // A client that leaves in the middle of a stream.
    let response = send_head(gateway.addr, post("/v1/babble", &[])).await;
    let mut body = response.into_body();
    let first = tokio::time::timeout(PATIENCE, body.frame()).await.unwrap();
    assert!(first.is_some_and(|frame| frame.is_ok()));
    drop(body);
    until("babbles cancelled", &counts.cancelled, 2).await;
    // It had taken the idle connection of the complete answer: none is left.
    until("upstream connections open", &counts.open, 0).await;
    let answer = send(gateway.addr, post("/v1/complete", &[])).await;
    assert!(answer.body.ends_with("data: [DONE]\n\n"), "{}", answer.body);
    assert_eq!(Counts::get(&counts.connections), 3);
}

#[tokio::test]
async fn a_response_that_fails_closes_its_connection_after_what_came_before_the_failure() {
    // A chunk size that is not a number, on a connection the upstream keeps open.
    let (upstream, accepted, mut closed) = raw_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nnot-a-size\r\n",
        false,
    )
    .await;
    let gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);
    for attempt in 1..=2 {
        let response = send_head(gateway.addr, get_request("/v1/plain")).await;
        let mut body = response.into_body();
        // What came before the failure reaches the client, then the failure.
        let first = tokio::time::timeout(PATIENCE, body.frame()).await.unwrap();
        let first = first.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "hello");
        let read = tokio::time::timeout(PATIENCE, body.collect()).await;
        assert!(read.unwrap().is_err(), "the client sees the body fail");
        let closed = tokio::time::timeout(PATIENCE, closed.recv()).await;
        assert_eq!(
            closed.unwrap(),
            Some(attempt),
            "the failed connection is closed"
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            attempt,
            "a new connection each"
        );
    }
}

/// A `200` of `body`, as `text/event-stream`.
fn event_stream<B>(body: B) -> Response<B> {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    response
}

fn get_request(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::default()).unwrap()
}

#[tokio::test]
async fn with_h2c_streams_share_one_upstream_connection_and_a_cut_resets_only_its_own() {
    let (upstream, counts) = upstream::start().await;
    let gateway = Gateway::start(
        &[
            "--upstream",
            &format!("http://{upstream}"),
            "--h2c",
            "--total",
            "1s",
        ],
        &[],
    );
    // Streams at once, each from a client connection of its own, each cut at its budget.
    let babbles: Vec<_> = (0..4)
        .map(|_| tokio::spawn(send(gateway.addr, post("/v1/babble", &[]))))
        .collect();
    for babble in babbles {
        let answer = babble.await.unwrap();
        assert!(answer.body.starts_with("data: {"), "{}", answer.body);
        assert!(
            answer.body.contains("total budget of 1s"),
            "{}",
            answer.body
        );
    }
    // Each upstream stream is reset at its deadline (the model server stops that answer)...
    until("babbles cancelled", &counts.cancelled, 4).await;
    // ...and their connection stays for the next request.
    let answer = send(gateway.addr, post("/v1/complete", &[])).await;
    assert!(answer.body.ends_with("data: [DONE]\n\n"), "{}", answer.body);
    assert_eq!(
        Counts::get(&counts.connections),
        1,
        "one connection for all"
    );
    assert_eq!(Counts::get(&counts.open), 1, "still open");
    let seen = counts.seen.lock().unwrap();
    assert_eq!(seen.len(), 5);
    assert!(
        seen.iter()
            .all(|(version, _)| *version == http::Version::HTTP_2),
        "{seen:?}"
    );
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_not_used() {
    // Closed after each answer without a `connection: close`, as a server whose keep-alive
    // timeout ran out between two requests.
    let (upstream, accepted, _) =
        raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true).await;
    let gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);
    for _ in 0..3 {
        let answer = get(gateway.addr, "/v1/models").await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "ok")
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_upstream_named_by_host_name_is_resolved_and_its_connection_kept() {
    let (upstream, counts) = upstream::start().await;
    let named = format!("http://localhost:{}", upstream.port());
    let gateway = Gateway::start(&["--upstream", &named], &[]);
    for _ in 0..2 {
        let answer = get(gateway.addr, "/v1/plain").await;
        assert_eq!(answer.body, "upstream /v1/plain");
    }
    assert_eq!(Counts::get(&counts.connections), 1, "one connection, kept");
    let (_, authority) = counts.seen.lock().unwrap()[0].clone();
    assert_eq!(authority, format!("localhost:{}", upstream.port()));
}

#[tokio::test]
async fn at_the_connection_limit_requests_wait_for_a_free_connection_within_their_budgets() {
    let (upstream, counts) = upstream::start().await;
    let gateway = Gateway::start(
        &[
            "--upstream",
            &format!("http://{upstream}"),
            "--upstream-connections",
            "1",
            "--first-frame",
            "1s",
            "--retries",
            "0",
        ],
        &[],
    );
    let addr = gateway.addr;
    let streams: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { send(addr, post("/v1/complete", &[])).await }))
        .collect();
    for stream in streams {
        let answer = stream.await.unwrap();
        assert!(answer.body.ends_with("data: [DONE]\n\n"), "{}", answer.body);
    }
    assert_eq!(Counts::get(&counts.requests), 4);
    assert_eq!(Counts::get(&counts.connections), 1);
    assert_eq!(Counts::get(&counts.most_open), 1);

    // While a stream holds the only connection, a request gets no connection: its first-frame
    // budget ends the wait, which the metrics show meanwhile.
    let babble = send_head(addr, post("/v1/babble", &[])).await;
    let waiting = tokio::spawn(async move {
        timed_out(
            addr,
            post("/v1/complete", &[]),
            &["first-frame budget of 1s"],
        )
        .await
    });
    let admin = gateway.admin.unwrap();
    let waits =
        format!("stream_deadline_upstream_connection_waits{{upstream=\"http://{upstream}\"}}");
    let busy = format!(
        "stream_deadline_upstream_connections{{upstream=\"http://{upstream}\",state=\"busy\"}}"
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let metrics = get(admin, "/metrics").await.body;
        if sample(&metrics, &waits) == Some(1.0) {
            assert_eq!(sample(&metrics, &busy), Some(1.0), "{metrics}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no wait shown: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, took) = waiting.await.unwrap();
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert_eq!(
        Counts::get(&counts.requests),
        5,
        "the waiting request never went out"
    );
    drop(babble);
}

/// A body of 64 KiB chunks, as fast as they are taken, forever; it counts its drop.
struct Firehose(Arc<AtomicUsize>);

impl http_body::Body for Firehose {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let chunk = Bytes::from(format!("data: {}\n\n", "x".repeat(64 * 1024)));
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }
}

impl Drop for Firehose {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_still_gets_its_upstream_released_at_the_deadline() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let counted = dropped.clone();
    let (upstream, _) = upstream::answering(move |_| {
        let counted = counted.clone();
        async move { event_stream(Firehose(counted)) }
    })
    .await;
    let gateway = Gateway::start(
        &[
            "--upstream",
            &format!("http://{upstream}"),
            "--total",
            "1s",
            "--idle",
            "off",
        ],
        &[],
    );
    // Reads the head and a little, then neither reads nor closes: the gateway's writes stop,
    // and with them its polls of the response body.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(gateway.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    client
        .write_all(b"POST /v1/chat HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"stream\":true}")
        .await
        .unwrap();
    let mut first = [0; 1024];
    let read = tokio::time::timeout(PATIENCE, client.read(&mut first)).await;
    assert!(read.unwrap().unwrap() > 0);
    until("upstream bodies dropped", &dropped, 1).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "released before the deadline: {took:?}"
    );
    drop(client);
}

/// A finite stream of `left` events of 1 KiB, then `data: [DONE]`, in bursts: every
/// `PAUSE_EVERY` events a pause of a millisecond, so that its reader keeps catching up with
/// it and waiting again. `produced` counts the events it has handed to its server.
struct Burst {
    left: usize,
    pause: std::pin::Pin<Box<tokio::time::Sleep>>,
    produced: tokio::sync::watch::Sender<usize>,
}

const PAUSE_EVERY: usize = 20;

impl http_body::Body for Burst {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.left % PAUSE_EVERY == 0 && self.left > 0 {
            std::task::ready!(self.pause.as_mut().poll(cx));
            let next = tokio::time::Instant::now() + Duration::from_millis(1);
            self.pause.as_mut().reset(next);
        }
        let event = match self.left {
            0 => return std::task::Poll::Ready(None),
            1 => Bytes::from_static(b"data: [DONE]\n\n"),
            _ => Bytes::from(format!("data: {}\n\n", "x".repeat(1016))),
        };
        self.left -= 1;
        self.produced.send_modify(|produced| *produced += 1);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(event))))
    }
}

#[tokio::test]
async fn a_client_that_pauses_reading_a_stream_in_bursts_gets_it_whole() {
    const EVENTS: usize = 4_000;
    // Sent while the client does not read: more than its window and the gateway's write
    // buffer hold, less than the sockets and buffers between the gateway and the upstream.
    const WHILE_PAUSED: usize = 200;
    let (produced, mut progress) = tokio::sync::watch::channel(0);
    let (upstream, _) = upstream::answering(move |_| {
        let produced = produced.clone();
        async move {
            let pause = Box::pin(tokio::time::sleep(Duration::from_millis(1)));
            event_stream(Burst {
                left: EVENTS,
                pause,
                produced,
            })
        }
    })
    .await;
    // An idle budget far shorter than the test's patience: a stream whose reader missed a
    // wake-up stalls until it, and ends with an error event instead of `[DONE]`.
    let gateway = Gateway::start(
        &["--upstream", &format!("http://{upstream}"), "--idle", "2s"],
        &[],
    );
    // A small receive window: the gateway's writes fill it, and while the client does not
    // read, the gateway stops reading the upstream; the stream then goes on in turns of the
    // client reading and the gateway writing while the upstream runs ahead.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(gateway.addr).await.unwrap();
    client
        .write_all(b"POST /v1/chat HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: 15\r\nconnection: close\r\n\r\n{\"stream\":true}")
        .await
        .unwrap();
    let mut received = vec![0; 1024];
    let first = tokio::time::timeout(PATIENCE, client.read(&mut received)).await;
    received.truncate(first.expect("no answer").unwrap());
    // Only whether it came: the value's guard, kept, would hold back the upstream's next event.
    let paused = progress.wait_for(|produced| *produced >= WHILE_PAUSED);
    let paused = tokio::time::timeout(PATIENCE, paused)
        .await
        .is_ok_and(|seen| seen.is_ok());
    assert!(paused, "the upstream did not get {WHILE_PAUSED} events out");
    let read = tokio::time::timeout(PATIENCE, client.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the stream did not end within {PATIENCE:?}");
    let received = String::from_utf8_lossy(&received);
    assert!(received.starts_with("HTTP/1.1 200"), "{}", &received[..200]);
    assert!(
        received.contains("data: [DONE]"),
        "the stream did not end with the upstream's last event: {}",
        &received[received.len().saturating_sub(300)..]
    );
    let events = received.matches("data: ").count();
    assert_eq!(events, EVENTS, "every event, once");
}
