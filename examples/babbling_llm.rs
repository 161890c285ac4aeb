//! # A model server that never stops talking, and one that never starts
//!
//! The crate's main demo. It starts a tiny OpenAI-compatible server on `127.0.0.1` and calls
//! it through a hyper client wrapped in [`StreamDeadlineLayer`], in two acts:
//!
//! 1. **The babbler.** `POST /v1/chat/completions` streams a server-sent event with one token
//!    every 20 ms, forever. Each token arrives quickly, so a per-read timeout would never fire;
//!    the 2 s *total* budget cuts the stream anyway. The demo prints the tokens as they arrive,
//!    the [`DeadlineExceeded`] error (kind, budget, elapsed), and how soon after the deadline
//!    the server saw the client hang up, which is when a real server would stop generating.
//! 2. **The stuck server.** `POST /flaky/v1/chat/completions` answers its first request with
//!    headers and then silence, and serves later ones normally. The 500 ms *first-frame*
//!    budget turns the silence into an error of the call, and [`RetryFirstFrame`] (feature
//!    `retry`, on by default) retries it: the second attempt streams a short answer.
//!
//! Everything runs on real time in one process and finishes in about three seconds:
//!
//! ```text
//! cargo run --example babbling_llm
//! ```
//!
//! It exits with status 0 when every budget behaved, and otherwise prints what did not
//! and exits with status 1.

use std::convert::Infallible;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};
use tower::retry::RetryLayer;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_stream_deadline::{
    BoxError, DeadlineBody, DeadlineExceeded, DeadlineKind, RetryFirstFrame, StreamDeadlineLayer,
};

/// The whole response, head and body, of any one attempt.
const TOTAL: Duration = Duration::from_secs(2);
/// How long an attempt may wait for its first token before it is abandoned (and retried).
const FIRST_FRAME: Duration = Duration::from_millis(500);
/// The longest gap allowed between two tokens; the babbler never comes near it.
const IDLE: Duration = Duration::from_millis(300);
/// How often the server emits a token.
const TOKEN_EVERY: Duration = Duration::from_millis(20);
/// How soon after a deadline the server must see the client hang up.
const HANGUP_WITHIN: Duration = Duration::from_secs(1);
/// Gives up on an act that should long be over: only a broken deadline gets here.
const WATCHDOG: Duration = Duration::from_secs(5);

/// What the babbler says, a word at a time, over and over.
const BABBLE: &str = "As a large language model, I would be delighted to elaborate further. \
                      Moreover, it is worth noting that ";
/// What the flaky route says once it gets going.
const ANSWER: &str = "Hello! Sorry for the wait.";

/// Why the demo failed, in a sentence.
type Failure = String;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => {
            println!(
                "\nok: the babbler was cut at its total budget and the stuck call was retried"
            );
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!();
            eprintln!("FAILED: {why}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Failure> {
    let (hangups_tx, mut hangups) = mpsc::unbounded_channel();
    let server = ModelServer {
        flaky_calls: Arc::default(),
        hangups: hangups_tx,
    };
    let addr = start_server(server.clone())
        .await
        .map_err(|err| format!("could not start the server: {err}"))?;
    println!("model server listening on 127.0.0.1:{}", addr.port());
    println!("  POST /v1/chat/completions        a token every 20 ms, forever");
    println!("  POST /flaky/v1/chat/completions  first request: headers, then silence\n");

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    act_babbler(client.clone(), addr, &mut hangups).await?;
    act_stuck(client, addr, &server, &mut hangups).await
}

// ---------------------------------------------------------------------------------------
// The client side: the two acts.
// ---------------------------------------------------------------------------------------

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The budgets both acts use. The first-frame budget is what makes a stuck request retryable.
fn deadline_layer() -> StreamDeadlineLayer {
    StreamDeadlineLayer::new(TOTAL)
        .first_frame(FIRST_FRAME)
        .idle(IDLE)
}

/// Act 1: a stream that never ends is cut at the total budget, and the server notices.
async fn act_babbler(
    client: HttpClient,
    addr: SocketAddr,
    hangups: &mut mpsc::UnboundedReceiver<Hangup>,
) -> Result<(), Failure> {
    // The idle budget is set too, to show that it cannot help: the gaps are only 20 ms.
    println!("Act 1: the babbler, under a {TOTAL:?} total budget (and a {IDLE:?} idle budget)");
    let svc = ServiceBuilder::new()
        .layer(deadline_layer())
        .service(client);

    let (sent_at, response) = send(svc, chat_request(addr, "/v1/chat/completions")).await?;
    let transcript = watchdog(
        "the babbler's stream",
        read_chat_stream(response.into_body()),
    )
    .await?;
    let StreamEnd::Failed(err) = transcript.end else {
        return Err("the babbler's stream ended without a deadline error".into());
    };
    let deadline = expect_deadline(&*err, DeadlineKind::Total)?;
    println!("  cut after {} tokens: {deadline}", transcript.tokens);
    println!(
        "  kind = {}, budget = {:?}, elapsed = {}",
        deadline.kind(),
        deadline.budget(),
        ms(deadline.elapsed())
    );

    // The client closed the connection when it saw the deadline; hyper on the server drops
    // the response body once it notices. That is the moment a real model stops generating.
    let late = next_hangup(hangups, Route::Babble, sent_at + TOTAL).await?;
    println!(
        "  server saw the disconnect {} after the deadline: generation stopped\n",
        ms(late)
    );
    Ok(())
}

/// Act 2: an attempt stuck before its first token is abandoned at the first-frame budget and
/// retried; the retry streams the answer.
async fn act_stuck(
    client: HttpClient,
    addr: SocketAddr,
    server: &ModelServer,
    hangups: &mut mpsc::UnboundedReceiver<Hangup>,
) -> Result<(), Failure> {
    println!("Act 2: the stuck server, under a {FIRST_FRAME:?} first-frame budget, 2 retries");
    let svc = ServiceBuilder::new()
        // Outside the deadline layer, so that each attempt gets fresh budgets.
        .layer(RetryLayer::new(RetryFirstFrame::new(2)))
        // Between the two, to show each failed attempt before the policy decides on it.
        .map_err(report_failed_attempt)
        .layer(deadline_layer())
        .service(client);

    let (sent_at, response) = send(svc, chat_request(addr, "/flaky/v1/chat/completions")).await?;
    let attempts = server.flaky_calls.load(Ordering::SeqCst);
    if attempts != 2 {
        return Err(format!(
            "expected attempt 2 to answer, got attempt {attempts}"
        ));
    }
    println!(
        "  attempt 2 answered: first token {} after the call",
        ms(sent_at.elapsed())
    );

    let transcript = watchdog("the answer", read_chat_stream(response.into_body())).await?;
    match transcript.end {
        StreamEnd::Done => println!(
            "  [DONE] after {} tokens, {} after the call",
            transcript.tokens,
            ms(sent_at.elapsed())
        ),
        StreamEnd::Closed => return Err("the answer ended without `data: [DONE]`".into()),
        StreamEnd::Failed(err) => return Err(format!("the answer failed: {err}")),
    }

    // Abandoning attempt 1 closed its connection too, so the stuck server is not left
    // holding a request that nobody waits for.
    let late = next_hangup(hangups, Route::Stuck, sent_at + FIRST_FRAME).await?;
    println!(
        "  server saw attempt 1 hang up {} after its first-frame deadline",
        ms(late)
    );
    Ok(())
}

/// Sends `request` through `svc` and checks that an event stream comes back. Returns the
/// response and the instant it was sent (the layer starts its clock inside `call`,
/// microseconds later), from which the deadlines are measured.
async fn send<S>(
    mut svc: S,
    request: Request<Full<Bytes>>,
) -> Result<(Instant, Response<DeadlineBody<Incoming>>), Failure>
where
    S: Service<Request<Full<Bytes>>, Response = Response<DeadlineBody<Incoming>>, Error = BoxError>,
{
    let svc = svc
        .ready()
        .await
        .map_err(|err| format!("the client is not ready: {err}"))?;
    let sent_at = Instant::now();
    let response = watchdog("the call", svc.call(request))
        .await?
        .map_err(|err| format!("the call failed: {err}"))?;
    let content_type = response.headers().get(CONTENT_TYPE);
    if response.status() != StatusCode::OK
        || content_type.is_none_or(|ct| ct != "text/event-stream")
    {
        return Err(format!(
            "expected 200 text/event-stream, got {} {content_type:?}",
            response.status()
        ));
    }
    Ok((sent_at, response))
}

/// Prints an attempt that failed inside the retry layer, and passes the error on unchanged.
fn report_failed_attempt(err: BoxError) -> BoxError {
    match DeadlineExceeded::find(&*err) {
        Some(deadline) => println!("  attempt abandoned: {deadline}"),
        None => println!("  attempt failed: {err}"),
    }
    err
}

/// Runs `future`, or gives up on it after [`WATCHDOG`]: only a budget that failed to fire
/// lets it run that long.
async fn watchdog<T>(what: &str, future: impl Future<Output = T>) -> Result<T, Failure> {
    timeout(WATCHDOG, future)
        .await
        .map_err(|_| format!("{what} was still running after {WATCHDOG:?}: no deadline fired"))
}

/// Checks that `err` is a deadline of the expected kind.
fn expect_deadline<'e>(
    err: &'e (dyn std::error::Error + 'static),
    kind: DeadlineKind,
) -> Result<&'e DeadlineExceeded, Failure> {
    match DeadlineExceeded::find(err) {
        Some(deadline) if deadline.kind() == kind => Ok(deadline),
        Some(deadline) => Err(format!("expected a {kind} deadline, got: {deadline}")),
        None => Err(format!(
            "expected a {kind} deadline, got an upstream error: {err}"
        )),
    }
}

/// Waits for the server to report that the client hung up on `route`, at most until
/// [`HANGUP_WITHIN`] after `deadline`; returns how long after `deadline` it did.
async fn next_hangup(
    hangups: &mut mpsc::UnboundedReceiver<Hangup>,
    route: Route,
    deadline: Instant,
) -> Result<Duration, Failure> {
    match timeout_at(deadline + HANGUP_WITHIN, hangups.recv()).await {
        Ok(Some(hangup)) if hangup.route == route => {
            Ok(hangup.at.saturating_duration_since(deadline))
        }
        Ok(Some(hangup)) => Err(format!(
            "expected a hang-up on {route:?}, the server saw one on {:?}",
            hangup.route
        )),
        Ok(None) => Err("the server stopped reporting hang-ups".into()),
        Err(_) => Err(format!(
            "the server did not see the client hang up on {route:?} within {HANGUP_WITHIN:?} \
             of the deadline"
        )),
    }
}

/// A duration for people: milliseconds, to a tenth.
fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

/// A streaming chat request, as an OpenAI client would send it. `Full` is `Clone`, which the
/// retry policy needs to send the request again.
fn chat_request(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    let body = json!({
        "model": "babbler-7b",
        "stream": true,
        "messages": [{ "role": "user", "content": "Say hello." }],
    });
    Request::post(format!("http://{addr}{path}"))
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "text/event-stream")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a request built from valid parts")
}

/// How a chat stream ended.
enum StreamEnd {
    /// `data: [DONE]` arrived.
    Done,
    /// The body ended without `[DONE]`.
    Closed,
    /// The body failed: a deadline, or an upstream error.
    Failed(BoxError),
}

struct Transcript {
    tokens: usize,
    end: StreamEnd,
}

/// Reads a chat completion stream, printing each token as it arrives, until `[DONE]`, the
/// end of the body, or an error.
async fn read_chat_stream(mut body: DeadlineBody<Incoming>) -> Transcript {
    let mut events = SseDecoder::default();
    let mut tokens = 0;
    let mut stdout = std::io::stdout();
    print!("  tokens: ");
    let end = loop {
        let chunk = match body.frame().await {
            None => break StreamEnd::Closed,
            Some(Err(err)) => break StreamEnd::Failed(err),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(chunk) => chunk,
                Err(_trailers) => continue,
            },
        };
        let mut done = false;
        for data in events.push(&chunk) {
            match parse_event(&data) {
                ChatEvent::Token(token) => {
                    tokens += 1;
                    print!("{token}");
                }
                ChatEvent::Done => done = true,
                ChatEvent::Unknown => print!("[?]"),
            }
        }
        // Tokens show up as they arrive, not when a line is full.
        let _ = stdout.flush();
        if done {
            break StreamEnd::Done;
        }
    };
    println!();
    Transcript { tokens, end }
}

enum ChatEvent {
    Token(String),
    Done,
    Unknown,
}

fn parse_event(data: &str) -> ChatEvent {
    if data == "[DONE]" {
        return ChatEvent::Done;
    }
    let content = serde_json::from_str::<Value>(data).ok().and_then(|chunk| {
        chunk["choices"][0]["delta"]["content"]
            .as_str()
            .map(str::to_owned)
    });
    content.map_or(ChatEvent::Unknown, ChatEvent::Token)
}

/// Splits a `text/event-stream` into the payloads of its `data:` lines, however the bytes
/// happen to be chunked on the wire. Enough of the format for one-line chat events.
#[derive(Default)]
struct SseDecoder {
    pending: Vec<u8>,
}

impl SseDecoder {
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(chunk);
        let mut payloads = Vec::new();
        while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.pending.drain(..end + 2).collect();
            let event = String::from_utf8_lossy(&event);
            payloads.extend(
                event
                    .lines()
                    .filter_map(|line| line.strip_prefix("data:"))
                    .map(|data| data.trim_start().to_owned()),
            );
        }
        payloads
    }
}

// ---------------------------------------------------------------------------------------
// The server side: an OpenAI-compatible endpoint that misbehaves on purpose.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// `/v1/chat/completions`: a token every 20 ms, forever.
    Babble,
    /// `/flaky/v1/chat/completions` on its first request: headers, then nothing.
    Stuck,
}

/// The server noticed that a client stopped listening to a response on `route`.
#[derive(Debug)]
struct Hangup {
    route: Route,
    at: Instant,
}

#[derive(Clone)]
struct ModelServer {
    /// Requests the flaky route has received: only the first one gets stuck.
    flaky_calls: Arc<AtomicUsize>,
    hangups: mpsc::UnboundedSender<Hangup>,
}

type ServerBody = UnsyncBoxBody<Bytes, Infallible>;

/// Serves HTTP/1.1 on an ephemeral port of 127.0.0.1, one task per connection.
async fn start_server(server: ModelServer) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let server = server.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.handle(&req)) }
                });
                // Errors are expected: cutting streams short is what the client is here for.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

impl ModelServer {
    fn handle(&self, req: &Request<Incoming>) -> Response<ServerBody> {
        if req.method() != Method::POST {
            return plain_status(StatusCode::METHOD_NOT_ALLOWED);
        }
        match req.uri().path() {
            "/v1/chat/completions" => {
                event_stream(watch_hangup(babble(), self.hangup_guard(Route::Babble)))
            }
            "/flaky/v1/chat/completions" => {
                if self.flaky_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    let silence = stream::pending();
                    event_stream(watch_hangup(silence, self.hangup_guard(Route::Stuck)))
                } else {
                    event_stream(short_answer())
                }
            }
            _ => plain_status(StatusCode::NOT_FOUND),
        }
    }

    fn hangup_guard(&self, route: Route) -> HangupGuard {
        HangupGuard {
            route,
            hangups: self.hangups.clone(),
        }
    }
}

type Frames = Result<Frame<Bytes>, Infallible>;

/// An endless stream of chat chunks.
fn babble() -> impl Stream<Item = Frames> + Send + Unpin {
    paced(BABBLE.split_inclusive(' ').cycle().map(sse_token))
}

/// A few tokens, then `[DONE]`, then the end of the body.
fn short_answer() -> impl Stream<Item = Frames> + Send + Unpin {
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    paced(ANSWER.split_inclusive(' ').map(sse_token).chain([done]))
}

/// One event every [`TOKEN_EVERY`], the first at once, like a model generating tokens.
fn paced<I>(events: I) -> impl Stream<Item = Frames> + Send + Unpin
where
    I: Iterator<Item = Bytes> + Send + 'static,
{
    let ticks = tokio::time::interval(TOKEN_EVERY);
    Box::pin(stream::unfold(
        (ticks, events),
        |(mut ticks, mut events)| async move {
            ticks.tick().await;
            let event = events.next()?;
            Some((Ok(Frame::data(event)), (ticks, events)))
        },
    ))
}

fn sse_token(token: &str) -> Bytes {
    let chunk = json!({ "choices": [{ "delta": { "content": token } }] });
    Bytes::from(format!("data: {chunk}\n\n"))
}

fn event_stream(frames: impl Stream<Item = Frames> + Send + 'static) -> Response<ServerBody> {
    Response::builder()
        .header(CONTENT_TYPE, "text/event-stream")
        .header(CACHE_CONTROL, "no-cache")
        .body(StreamBody::new(frames).boxed_unsync())
        .expect("a response built from valid parts")
}

fn plain_status(status: StatusCode) -> Response<ServerBody> {
    let mut response = Response::new(Empty::new().boxed_unsync());
    *response.status_mut() = status;
    response
}

/// Reports, when dropped, that hyper let go of a response body.
///
/// Hyper drops the body of a response it was sending when the connection closes under it.
/// The guard is only attached to streams that never end by themselves, so a drop means the
/// client hung up.
struct HangupGuard {
    route: Route,
    hangups: mpsc::UnboundedSender<Hangup>,
}

impl Drop for HangupGuard {
    fn drop(&mut self) {
        let hangup = Hangup {
            route: self.route,
            at: Instant::now(),
        };
        // Nobody listening any more means the demo is over: nothing to report to.
        let _ = self.hangups.send(hangup);
    }
}

/// `frames`, carrying `guard` along, so that the guard is dropped with the stream.
fn watch_hangup<S>(frames: S, guard: HangupGuard) -> impl Stream<Item = Frames> + Send
where
    S: Stream<Item = Frames> + Send + Unpin,
{
    stream::unfold((frames, guard), |(mut frames, guard)| async move {
        let frame = frames.next().await?;
        Some((frame, (frames, guard)))
    })
}
