//! Helpers shared by the real-socket integration tests (`upstream_release`, `hyper_client`,
//! `axum_server`): upstream servers on 127.0.0.1 (port 0) whose response bodies are scripted
//! and report the instant they are released, a hyper_util legacy client, and checks on what
//! the caller received.
//!
//! Declared in each test file with `#[path = "support/sockets.rs"] mod sockets;`.
//!
//! Every wait on the network is bounded ([`within`]) with a message that says what did not
//! happen: a broken deadline fails the test, it never hangs it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// The promise under test: the upstream sees the disconnect this soon after the deadline.
pub const RELEASE_BOUND: Duration = Duration::from_millis(100);

/// How long any single wait on the network may take before the test fails (not a sleep:
/// an upper bound on waits that normally end in milliseconds).
pub const SIGNAL_WAIT: Duration = Duration::from_secs(2);

/// The interval between the frames of a babbling upstream.
pub const TICK: Duration = Duration::from_millis(5);

/// Which HTTP version a client speaks (HTTP/2 is h2c with prior knowledge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

// ---------------------------------------------------------------------------------------
// Records: the payload of every scripted body, so order and wholeness can be checked.
// ---------------------------------------------------------------------------------------

/// The length of one record.
pub const RECORD_LEN: usize = 13;

/// Record `i` of a scripted body: `frame 000042\n`, always [`RECORD_LEN`] bytes.
pub fn record(i: usize) -> Bytes {
    let record = Bytes::from(format!("frame {i:06}\n"));
    debug_assert_eq!(record.len(), RECORD_LEN);
    record
}

/// The bytes of records `0..n`, concatenated.
pub fn records(n: usize) -> Bytes {
    (0..n)
        .flat_map(|i| record(i).to_vec())
        .collect::<Vec<u8>>()
        .into()
}

/// Asserts that `frames` are whole records, in order, from record 0, with none skipped or
/// repeated (a transport may carry several records in one frame, never part of one);
/// returns how many records they hold.
#[track_caller]
pub fn assert_whole_records_in_order(frames: &[Bytes], what: &str) -> usize {
    let mut next = 0;
    for (f, frame) in frames.iter().enumerate() {
        assert!(
            !frame.is_empty() && frame.len() % RECORD_LEN == 0,
            "{what}: frame #{f} is not whole records ({} bytes: {frame:?})",
            frame.len()
        );
        for chunk in frame.chunks(RECORD_LEN) {
            assert_eq!(
                chunk,
                &record(next)[..],
                "{what}: frame #{f} holds {:?} where record {next} was due",
                String::from_utf8_lossy(chunk)
            );
            next += 1;
        }
    }
    next
}

// ---------------------------------------------------------------------------------------
// Release signals: an upstream body reports the instant it is dropped.
// ---------------------------------------------------------------------------------------

/// Sends the instant it is dropped.
struct DropSignal(Option<oneshot::Sender<Instant>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Instant::now());
        }
    }
}

/// The other end of an upstream body (or handler future): when it was released, and how
/// many records it produced.
#[derive(Debug)]
pub struct Release {
    rx: oneshot::Receiver<Instant>,
    produced: Arc<AtomicUsize>,
    /// When the body (or handler future) was created: for a layer on the server, no earlier
    /// than the `call` that started its deadline (the handler runs inside that call).
    pub started: Instant,
}

/// Creates a guard to move into whatever must be watched, and the [`Release`] that reports
/// when the guard is dropped.
fn release_pair() -> (DropSignal, Release, Arc<AtomicUsize>) {
    let (tx, rx) = oneshot::channel();
    let produced = Arc::new(AtomicUsize::new(0));
    (
        DropSignal(Some(tx)),
        Release {
            rx,
            produced: produced.clone(),
            started: Instant::now(),
        },
        produced,
    )
}

impl Release {
    /// The instant the upstream was released: its body (or handler future) dropped, which a
    /// hyper server does when the client closes the connection or resets the stream.
    /// Fails the test if that takes more than [`SIGNAL_WAIT`].
    pub async fn observed(self, what: &str) -> Instant {
        within(
            &format!("{what}: the upstream to observe the disconnect"),
            SIGNAL_WAIT,
            self.rx,
        )
        .await
        .expect("the drop signal always sends before it goes")
    }

    /// Whether the upstream has been released yet (without waiting).
    pub fn is_released(&mut self) -> bool {
        !matches!(self.rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
    }

    /// How many records the upstream body has produced so far.
    pub fn produced(&self) -> usize {
        self.produced.load(Ordering::SeqCst)
    }
}

/// A future that never completes, and reports (through the returned [`Release`]) when it
/// is dropped: a handler that never answers.
pub fn never_answers<T>() -> (impl Future<Output = T> + Send + 'static, Release) {
    let (guard, release, _) = release_pair();
    let future = async move {
        let _guard = guard;
        std::future::pending::<T>().await
    };
    (future, release)
}

// ---------------------------------------------------------------------------------------
// Scripted upstream bodies.
// ---------------------------------------------------------------------------------------

/// What a scripted body does after its records.
#[derive(Clone, Debug)]
pub enum Then {
    /// Ends, with these trailers if any.
    End(Option<HeaderMap>),
    /// Sends nothing more and never ends.
    Stall,
    /// Fails: a hyper server then closes the HTTP/1 connection or resets the HTTP/2 stream.
    Fail,
}

/// A body of records `0, 1, 2, ...`, the first at once and then one every `interval`.
#[derive(Clone, Debug)]
pub struct Script {
    pub interval: Duration,
    /// How many records; `None` babbles forever.
    pub records: Option<usize>,
    pub then: Then,
}

impl Script {
    /// A record every [`TICK`], forever.
    pub fn babbling() -> Self {
        Script {
            interval: TICK,
            records: None,
            then: Then::Stall,
        }
    }

    /// `n` records, one every [`TICK`], then `then`.
    pub fn records(n: usize, then: Then) -> Self {
        Script {
            interval: TICK,
            records: Some(n),
            then,
        }
    }
}

/// An upstream body.
pub type UpstreamBody = BoxBody<Bytes, io::Error>;

/// The body `script` describes, and the [`Release`] that reports when it is dropped.
pub fn scripted(script: Script) -> (UpstreamBody, Release) {
    let (guard, release, produced) = release_pair();
    struct St {
        next: usize,
        done: bool,
        script: Script,
        produced: Arc<AtomicUsize>,
        _guard: DropSignal,
    }
    let st = St {
        next: 0,
        done: false,
        script,
        produced,
        _guard: guard,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if st.next > 0 {
            tokio::time::sleep(st.script.interval).await;
        }
        if st.script.records.is_some_and(|n| st.next >= n) {
            st.done = true;
            return match st.script.then.clone() {
                Then::End(trailers) => trailers.map(|t| (Ok(Frame::trailers(t)), st)),
                Then::Stall => std::future::pending().await,
                Then::Fail => Some((
                    Err(io::Error::other("upstream failed mid-stream on purpose")),
                    st,
                )),
            };
        }
        let frame = Frame::data(record(st.next));
        st.next += 1;
        st.produced.store(st.next, Ordering::SeqCst);
        Some((Ok(frame), st))
    });
    (BodyExt::boxed(StreamBody::new(stream)), release)
}

// ---------------------------------------------------------------------------------------
// Servers.
// ---------------------------------------------------------------------------------------

/// Binds 127.0.0.1 on port 0.
pub async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    (listener, addr)
}

/// A hyper server on 127.0.0.1 speaking HTTP/1.1 and h2c (prior knowledge), one task per
/// connection; it runs until the test's runtime shuts down.
pub async fn serve<H, Fut, B>(handler: H) -> SocketAddr
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let response = handler(req);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A hyper server answering every request with a body scripted by `script`; the receiver
/// yields one [`Release`] per request, as it is answered.
pub async fn serve_script(script: Script) -> (SocketAddr, mpsc::UnboundedReceiver<Release>) {
    serve_bodies(move || scripted(script.clone())).await
}

/// A hyper server answering every request with a body from `make`, as `text/event-stream`;
/// the receiver yields the [`Release`] of each, as the request is answered.
pub async fn serve_bodies<M>(make: M) -> (SocketAddr, mpsc::UnboundedReceiver<Release>)
where
    M: Fn() -> (UpstreamBody, Release) + Clone + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = serve(move |_req| {
        let (body, release) = make();
        let _ = tx.send(release);
        async move {
            Response::builder()
                .header(http::header::CONTENT_TYPE, "text/event-stream")
                .body(body)
                .expect("a valid response")
        }
    })
    .await;
    (addr, rx)
}

/// The size of each frame of a [`flood`].
pub const FLOOD_FRAME: usize = 16 * 1024;

/// An endless body of [`FLOOD_FRAME`]-byte frames, as fast as they are taken: whoever relays
/// it fills every buffer on the way within milliseconds. `produced` counts frames.
pub fn flood() -> (UpstreamBody, Release) {
    let (guard, release, produced) = release_pair();
    let frame = Bytes::from(vec![b'x'; FLOOD_FRAME]);
    let stream = futures::stream::unfold((guard, produced), move |(guard, produced)| {
        let frame = frame.clone();
        async move {
            // Let the server's other tasks run between frames, as a real producer would.
            tokio::task::yield_now().await;
            produced.fetch_add(1, Ordering::SeqCst);
            Some((Ok(Frame::data(frame)), (guard, produced)))
        }
    });
    (BodyExt::boxed(StreamBody::new(stream)), release)
}

/// The next [`Release`] from a server, within [`SIGNAL_WAIT`].
pub async fn next_request(served: &mut mpsc::UnboundedReceiver<Release>) -> Release {
    within(
        "the upstream to receive the request",
        SIGNAL_WAIT,
        served.recv(),
    )
    .await
    .expect("the server is still running")
}

/// A server that accepts one connection, reads what the client sends and never answers;
/// the receiver gets the instant the client closed the connection (read EOF or error).
pub async fn silent_server() -> (SocketAddr, oneshot::Receiver<Instant>) {
    let (listener, addr) = listener().await;
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = tx.send(Instant::now());
    });
    (addr, rx)
}

/// Reads an HTTP/1 request head (up to the blank line) from `stream`.
pub async fn read_request_head(stream: &mut tokio::net::TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

/// A raw HTTP/1.1 server for one request: answers with a chunked head and `n` records, one
/// per chunk every [`TICK`], then closes the connection without the final chunk.
pub async fn http1_server_dropping_the_connection_after(n: usize) -> SocketAddr {
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        if read_request_head(&mut stream).await.is_err() {
            return;
        }
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for i in 0..n {
            let mut chunk = format!("{RECORD_LEN:x}\r\n").into_bytes();
            chunk.extend_from_slice(&record(i));
            chunk.extend_from_slice(b"\r\n");
            if stream.write_all(&chunk).await.is_err() {
                return;
            }
            tokio::time::sleep(TICK).await;
        }
        drop(stream);
    });
    addr
}

// ---------------------------------------------------------------------------------------
// Client side.
// ---------------------------------------------------------------------------------------

/// The hyper_util legacy client the tests wrap.
pub type TestClient = Client<HttpConnector, Empty<Bytes>>;

/// A fresh legacy client (its own pool) speaking `proto`, with `TCP_NODELAY` as production
/// clients have it (reqwest sets it by default).
///
/// Without it, Nagle's algorithm and the peer's delayed ACK hold a small write that follows
/// an unacknowledged one for ~40 ms: on a fresh h2c connection that is the request's HEADERS
/// frame after the preface and SETTINGS, which shows up as a ~40 ms late server-side
/// deadline (seen in about one run in four before this was set). That is transport latency,
/// not the layer's.
pub fn client(proto: Proto) -> TestClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let mut builder = Client::builder(TokioExecutor::new());
    if proto == Proto::Http2 {
        builder.http2_only(true);
    }
    builder.build(connector)
}

/// `GET http://{addr}{path}`.
pub fn get(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .expect("a valid request")
}

/// What a caller read from a body, up to its end or its first error.
#[derive(Debug)]
pub struct Read<E> {
    /// The data frames, as delivered.
    pub frames: Vec<Bytes>,
    pub trailers: Option<HeaderMap>,
    /// `Ok` if the body ended cleanly, else its error.
    pub end: Result<(), E>,
    /// When the last data frame was delivered.
    pub last_frame_at: Option<Instant>,
    /// When the end or the error was delivered.
    pub ended_at: Instant,
}

impl<E> Read<E> {
    /// All data bytes, concatenated.
    pub fn bytes(&self) -> Bytes {
        self.frames
            .iter()
            .flat_map(|f| f.to_vec())
            .collect::<Vec<u8>>()
            .into()
    }
}

/// Reads `body` (by `&mut`: the caller keeps holding it) to its end or first error, within
/// `limit`.
pub async fn read_body<B>(body: &mut B, limit: Duration, what: &str) -> Read<B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    within(&format!("{what}: the body to end or fail"), limit, async {
        let mut frames = Vec::new();
        let mut trailers = None;
        let mut last_frame_at = None;
        let end = loop {
            match body.frame().await {
                None => break Ok(()),
                Some(Err(err)) => break Err(err),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        last_frame_at = Some(Instant::now());
                        frames.push(data);
                    }
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                    }
                },
            }
        };
        Read {
            frames,
            trailers,
            end,
            last_frame_at,
            ended_at: Instant::now(),
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Time.
// ---------------------------------------------------------------------------------------

/// Awaits `fut`, failing the test with `what` if it takes longer than `limit`.
pub async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Where a deadline lies, as far as the test can tell: no earlier than `earliest`, no later
/// than `latest`. "Not before the deadline" is checked against `earliest`, "at most
/// [`RELEASE_BOUND`] after it" against `latest`, so both checks hold for the real deadline.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub earliest: Instant,
    pub latest: Instant,
}

impl Window {
    /// The deadline of a `call` made on the test's side just after `start`: `start + budget`
    /// (the real one is later by the microseconds between `start` and `call`, which only
    /// make the "at most" check stricter).
    pub fn from_call(start: Instant, budget: Duration) -> Self {
        Window {
            earliest: start + budget,
            latest: start + budget,
        }
    }
}

/// Asserts that the upstream was released no earlier than the deadline and at most
/// [`RELEASE_BOUND`] after it.
#[track_caller]
pub fn assert_released_in_time(released: Instant, deadline: Window, what: &str) {
    assert_in_window(
        released,
        deadline,
        &format!("{what}: the upstream was released"),
    );
}

/// Asserts that `at` is no earlier than the deadline and at most [`RELEASE_BOUND`] after it.
#[track_caller]
pub fn assert_near_deadline(at: Instant, deadline: Window, what: &str) {
    assert_in_window(at, deadline, what);
}

#[track_caller]
fn assert_in_window(at: Instant, deadline: Window, what: &str) {
    eprintln!(
        "{what} {:?} after the deadline",
        at.saturating_duration_since(deadline.latest)
    );
    assert!(
        at >= deadline.earliest,
        "{what} {:?} BEFORE the deadline",
        deadline.earliest - at
    );
    let late = at.saturating_duration_since(deadline.latest);
    assert!(
        late <= RELEASE_BOUND,
        "{what} {late:?} after the deadline (the promise is at most {RELEASE_BOUND:?})"
    );
}
