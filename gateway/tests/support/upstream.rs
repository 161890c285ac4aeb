//! A model-server stand-in on 127.0.0.1: event streams chosen by path, each stream's end
//! (completed or cancelled) counted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What an overloaded server sends after its `200` (Anthropic's Messages API).
pub const OVERLOADED: &str = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";

/// A token every this often.
pub const TOKEN_EVERY: Duration = Duration::from_millis(20);

#[derive(Default)]
pub struct Counts {
    /// Connections accepted, open now, and the most open at once.
    pub connections: AtomicUsize,
    pub open: AtomicUsize,
    pub most_open: AtomicUsize,
    pub requests: AtomicUsize,
    pub completed: AtomicUsize,
    pub cancelled: AtomicUsize,
    stuck_once: AtomicUsize,
    /// Each request's HTTP version and the authority it named (`Host` or `:authority`).
    pub seen: std::sync::Mutex<Vec<(http::Version, String)>>,
    /// Each request's `Authorization`, if any.
    pub authorizations: std::sync::Mutex<Vec<Option<String>>>,
    /// Each request's `x-request-id`, if any.
    pub request_ids: std::sync::Mutex<Vec<Option<String>>>,
    /// Set: every request is left without an answer (a replica stuck before its first token).
    pub stuck: std::sync::atomic::AtomicBool,
    /// Set: every stream answers `200`, then an `overloaded_error` event (an overloaded server).
    pub overloaded: std::sync::atomic::AtomicBool,
    /// How long every stream waits before its first token (a slow prefill).
    pub first_token_after: std::sync::Mutex<Duration>,
}

impl Counts {
    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

/// Starts the upstream; its address and counts.
pub async fn start() -> (SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let shared = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            serve(TokioIo::new(stream), shared.clone());
        }
    });
    (addr, counts)
}

/// A server of its own on 127.0.0.1, whose `answer` makes each response; its address, and
/// its counts of the connections it accepted and the requests it got.
pub async fn answering<F, Fut, B>(answer: F) -> (SocketAddr, Arc<Counts>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let counted = counts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.connections.fetch_add(1, Ordering::SeqCst);
            let (counted, answer) = (counted.clone(), answer.clone());
            let service = service_fn(move |request: Request<Incoming>| {
                counted.requests.fetch_add(1, Ordering::SeqCst);
                let response = answer(request);
                async move { Ok::<_, Infallible>(response.await) }
            });
            tokio::spawn(
                auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned(),
            );
        }
    });
    (addr, counts)
}

/// Serves one connection (plain or TLS) with the routes below.
pub fn serve<I>(io: I, counts: Arc<Counts>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    counts.connections.fetch_add(1, Ordering::SeqCst);
    let open = counts.open.fetch_add(1, Ordering::SeqCst) + 1;
    counts.most_open.fetch_max(open, Ordering::SeqCst);
    tokio::spawn(async move {
        let routed = counts.clone();
        let service = service_fn(move |request| {
            let counts = routed.clone();
            async move { Ok::<_, Infallible>(route(request, &counts).await) }
        });
        let _ = auto::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await;
        counts.open.fetch_sub(1, Ordering::SeqCst);
    });
}

/// - `/v1/complete`: three tokens, then `[DONE]`; `/v1/slow`: 25 (half a second);
/// - `/v1/babble`: a token every 20 ms, forever;
/// - `/v1/idle`: one token, then silence;
/// - `/v1/stuck-once`: the first request gets nothing at all; later ones are `/v1/complete`;
/// - `/v1/stuck`: nothing at all, ever;
/// - `/v1/own-id`: `200 upstream /v1/own-id`, with an `x-request-id` of its own;
/// - `/v1/headers`: the names of the request's headers, one a line;
/// - anything else: `200 upstream <path>` in plain text.
async fn route(request: Request<Incoming>, counts: &Arc<Counts>) -> Response<Tokens> {
    counts.requests.fetch_add(1, Ordering::SeqCst);
    let authority = match request.uri().authority() {
        Some(authority) => authority.to_string(),
        None => request
            .headers()
            .get(http::header::HOST)
            .and_then(|host| host.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    };
    counts
        .seen
        .lock()
        .unwrap()
        .push((request.version(), authority));
    let header = |name: &str| {
        let value = request.headers().get(name)?;
        value.to_str().ok().map(str::to_owned)
    };
    let authorization = header(http::header::AUTHORIZATION.as_str());
    counts.authorizations.lock().unwrap().push(authorization);
    counts
        .request_ids
        .lock()
        .unwrap()
        .push(header("x-request-id"));
    let path = request.uri().path().to_owned();
    if counts.stuck.load(Ordering::SeqCst) {
        // Counted as cancelled when the gateway gives up on it.
        let _cancelled = OnDrop(counts.clone());
        std::future::pending::<()>().await;
    }
    if counts.overloaded.load(Ordering::SeqCst) {
        let (tx, body) = Tokens::channel();
        let _ = tx.try_send(Bytes::from_static(OVERLOADED.as_bytes()));
        let mut response = Response::new(body);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        return response;
    }
    if path == "/v1/headers" {
        let names: String = request
            .headers()
            .keys()
            .map(|name| format!("{name}\n"))
            .collect();
        let (tx, body) = Tokens::channel();
        let _ = tx.try_send(Bytes::from(names));
        return Response::new(body);
    }
    let tokens: Option<usize> = match path.as_str() {
        "/v1/complete" => Some(3),
        "/v1/slow" => Some(25),
        "/v1/babble" => Some(usize::MAX),
        "/v1/idle" => Some(1),
        "/v1/stuck-once" if counts.stuck_once.fetch_add(1, Ordering::SeqCst) == 0 => {
            std::future::pending::<()>().await;
            None
        }
        "/v1/stuck-once" => Some(3),
        "/v1/stuck" => std::future::pending().await,
        _ => None,
    };
    let Some(tokens) = tokens else {
        let (tx, body) = Tokens::channel();
        let _ = tx.try_send(Bytes::from(format!("upstream {path}")));
        let mut response = Response::new(body);
        if path == "/v1/own-id" {
            let own = http::HeaderValue::from_static("upstream-own-id");
            response.headers_mut().insert("x-request-id", own);
        }
        return response;
    };
    let (tx, body) = Tokens::channel();
    let counts = counts.clone();
    let idle_after_one = path == "/v1/idle";
    let first_token_after = *counts.first_token_after.lock().unwrap();
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(first_token_after) => {}
            () = tx.closed() => {
                counts.cancelled.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
        let mut sent = 0;
        while sent < tokens {
            tokio::time::sleep(TOKEN_EVERY).await;
            let event =
                format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"t{sent} \"}}}}]}}\n\n");
            if tx.send(Bytes::from(event)).await.is_err() {
                counts.cancelled.fetch_add(1, Ordering::SeqCst);
                return;
            }
            sent += 1;
        }
        if idle_after_one {
            tx.closed().await;
            counts.cancelled.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
        counts.completed.fetch_add(1, Ordering::SeqCst);
    });
    let mut response = Response::new(body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    response
}

/// Counts a request the gateway gave up on while it was left unanswered.
struct OnDrop(Arc<Counts>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.cancelled.fetch_add(1, Ordering::SeqCst);
    }
}

/// A body fed by a channel; dropping it tells the sender.
pub struct Tokens(mpsc::Receiver<Bytes>);

impl Tokens {
    fn channel() -> (mpsc::Sender<Bytes>, Tokens) {
        let (tx, rx) = mpsc::channel(4);
        (tx, Tokens(rx))
    }
}

impl Body for Tokens {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|data| data.map(|data| Ok(Frame::data(data))))
    }
}

/// A server of raw sockets on 127.0.0.1, for upstreams that break HTTP's rules on purpose:
/// `serve` gets each connection it accepts, and its number (from 1). Its address, and how
/// many connections it accepted.
pub async fn raw<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream, usize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let number = counted.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(serve(stream, number));
        }
    });
    (addr, accepted)
}

/// Reads from `stream` into `read` until it holds a whole request head, which it takes out
/// (with nothing after it); false once the connection ended first.
pub async fn read_head(stream: &mut tokio::net::TcpStream, read: &mut Vec<u8>) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0; 4096];
    loop {
        if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            read.drain(..end + 4);
            return true;
        }
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => read.extend_from_slice(&buffer[..n]),
        }
    }
}
