//! # A deadline gateway in front of any OpenAI-compatible server
//!
//! A small reverse proxy for teams that cannot link a Rust crate: point the `openai` SDK's
//! or LangChain's `base_url` at it instead of at the model server (vLLM, TGI, llama.cpp),
//! and every streamed answer gets a hard time budget, whichever client reads it.
//!
//! ```text
//! cargo run --example llm_gateway -- --listen 127.0.0.1:8080 --upstream http://127.0.0.1:8000 \
//!     --total 45s --first-frame 10s --idle 5s --retries 2
//! ```
//!
//! - Every request (method, path, query, headers minus hop-by-hop ones, body) is forwarded
//!   to the upstream with one pooled hyper-util client (HTTP/1.1, or HTTP/2 prior knowledge
//!   with `--h2c`). The response streams back frame by frame, with no buffering.
//! - The [`StreamDeadlineLayer`] sits on that client, with SSE endings: after the head, a
//!   late `text/event-stream` answer ends with an error event and a clean end (the `openai`
//!   SDK raises `APIError`, the `anthropic` SDK `APIStatusError`), and the upstream
//!   connection is closed at once, so the model server stops generating. An upstream that
//!   fails mid-stream ends the same way, with an `upstream_error` event. A client's `x-request-timeout` header may shorten
//!   the total budget of its request, never lengthen it.
//! - Request bodies up to 1 MiB are buffered so that [`RetryFirstFrame`] can replay a request
//!   stuck before its first frame (each attempt with the full budgets); larger ones are
//!   streamed and never retried. A request whose deadline comes before anything could be
//!   sent back (head and first frame) is answered `504` with an OpenAI-shaped JSON error (with `x-should-retry: false` once the gateway has retried, which the `openai`
//!   SDK obeys); an upstream that cannot be reached, `502`.
//! - One `tracing` line per request on stderr, written when the response has ended: status,
//!   attempts, first-frame latency (from the request's arrival, across retries), frames and
//!   bytes, and the outcome of the last attempt. The listening address goes to stdout.
//!
//! The gateway serves HTTP/1.1 and h2c on the same port. `tests/python/run.sh` proves it
//! against the real `openai` and `langchain-openai` clients.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, TE};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tower::retry::RetryLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_stream_deadline::{
    DeadlineBody, DeadlineExceeded, Outcome, RetryFirstFrame, StreamDeadlineLayer,
};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// Request bodies up to this size are buffered, and so can be replayed by a retry.
const REPLAY_LIMIT: usize = 1024 * 1024;

/// The header a client may use to shorten its request's total budget.
const TIMEOUT_HEADER: &str = "x-request-timeout";

/// The target of the gateway's own `tracing` events.
const LOG_TARGET: &str = "llm_gateway";

const USAGE: &str = "\
llm_gateway: a deadline gateway in front of an OpenAI-compatible model server

USAGE:
    cargo run --example llm_gateway -- [OPTIONS]

OPTIONS:
    --listen ADDR        where to serve HTTP/1.1 and h2c        [default: 127.0.0.1:8080]
                         (port 0 picks a free port; the address is printed on stdout)
    --upstream URL       the model server, http:// only         [default: http://127.0.0.1:8000]
                         (a path prefix, such as http://host:8000/base, is kept)
    --h2c                talk HTTP/2 with prior knowledge to the upstream
    --total DUR          budget of the whole response, head and body  [default: 45s]
    --first-frame DUR    budget until the first body frame, or `off`  [default: 10s]
    --idle DUR           longest wait between two frames, or `off`    [default: 5s]
    --retries N          retries of a request stuck before its first frame [default: 2]
                         (only request bodies up to 1 MiB are replayed)
    -h, --help           print this help

DURATIONS: a number and a unit: 500ms, 45s, 1.5s, 2m, 1h.

A client may shorten (never lengthen) the total budget of one request with a header such
as `x-request-timeout: 5s`. One line per request is logged on stderr; RUST_LOG takes
targets and levels (default: llm_gateway=info,tower_stream_deadline=error,warn).";

// ---------------------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Config {
    listen: SocketAddr,
    upstream: Upstream,
    h2c: bool,
    total: Duration,
    first_frame: Option<Duration>,
    idle: Option<Duration>,
    retries: usize,
}

impl Config {
    /// The flags, or `None` when help was asked for.
    fn from_args(args: impl IntoIterator<Item = String>) -> Result<Option<Config>, String> {
        let mut config = Config {
            listen: "127.0.0.1:8080".parse().expect("a valid default address"),
            upstream: Upstream::parse("http://127.0.0.1:8000").expect("a valid default URL"),
            h2c: false,
            total: Duration::from_secs(45),
            first_frame: Some(Duration::from_secs(10)),
            idle: Some(Duration::from_secs(5)),
            retries: 2,
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value)),
                _ => (arg.clone(), None),
            };
            let mut value = || match inline {
                Some(value) => Ok(value.to_owned()),
                None => args.next().ok_or(format!("{flag} needs a value")),
            };
            match flag.as_str() {
                "-h" | "--help" => return Ok(None),
                "--listen" => {
                    let value = value()?;
                    config.listen = value
                        .parse()
                        .map_err(|err| format!("--listen {value}: {err}"))?;
                }
                "--upstream" => config.upstream = Upstream::parse(&value()?)?,
                "--h2c" => config.h2c = true,
                "--total" => config.total = parse_duration(&value()?)?,
                "--first-frame" => config.first_frame = parse_optional_duration(&value()?)?,
                "--idle" => config.idle = parse_optional_duration(&value()?)?,
                "--retries" => {
                    let value = value()?;
                    config.retries = value
                        .parse()
                        .map_err(|err| format!("--retries {value}: {err}"))?;
                }
                other => return Err(format!("unknown argument `{other}`")),
            }
        }
        Ok(Some(config))
    }

    fn layer(&self) -> StreamDeadlineLayer {
        let mut layer = StreamDeadlineLayer::new(self.total)
            .sse_endings()
            .sse_upstream_errors()
            .read_timeout_header(HeaderName::from_static(TIMEOUT_HEADER));
        if let Some(first_frame) = self.first_frame {
            layer = layer.first_frame(first_frame);
        }
        if let Some(idle) = self.idle {
            layer = layer.idle(idle);
        }
        layer
    }
}

/// `500ms`, `45s`, `1.5s`, `2m`, `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or(format!("duration `{text}` needs a unit: ms, s, m or h"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("duration `{text}`: `{number}` is not a number"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("duration `{text}`: unknown unit `{unit}`")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|err| format!("duration `{text}`: {err}"))
}

fn parse_optional_duration(text: &str) -> Result<Option<Duration>, String> {
    match text {
        "off" | "none" => Ok(None),
        text => parse_duration(text).map(Some),
    }
}

/// The upstream's scheme and authority, and a path prefix put before every request's path.
#[derive(Debug, Clone)]
struct Upstream {
    origin: String,
    prefix: String,
}

impl Upstream {
    fn parse(text: &str) -> Result<Upstream, String> {
        let uri: Uri = text
            .parse()
            .map_err(|err| format!("--upstream {text}: {err}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "--upstream {text}: only http:// upstreams (HTTP/1.1, or h2c with --h2c)"
            ));
        }
        let authority = uri
            .authority()
            .ok_or(format!("--upstream {text}: no host"))?;
        if uri.query().is_some() {
            return Err(format!("--upstream {text}: a query is not allowed here"));
        }
        Ok(Upstream {
            origin: format!("http://{authority}"),
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    fn uri_for(&self, incoming: &Uri) -> Result<Uri, http::uri::InvalidUri> {
        let path = incoming.path_and_query().map_or("/", |pq| pq.as_str());
        format!("{}{}{}", self.origin, self.prefix, path).parse()
    }
}

// ---------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_args(std::env::args().skip(1)) {
        Ok(Some(config)) => config,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(why) => {
            eprintln!("llm_gateway: {why} (see --help)");
            return ExitCode::from(2);
        }
    };
    init_tracing();
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("llm_gateway: {err}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let default = "llm_gateway=info,tower_stream_deadline=error,warn";
    let targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| spec.parse::<Targets>().ok())
        .unwrap_or_else(|| default.parse().expect("a valid default filter"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(targets)
        .init();
}

async fn serve(config: Config) -> std::io::Result<()> {
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    // The one line on stdout: scripts wait for it and read the address from it.
    println!("llm_gateway listening on http://{addr}");
    std::io::stdout().flush()?;
    tracing::info!(
        target: LOG_TARGET,
        upstream = %format_args!("{}{}", config.upstream.origin, config.upstream.prefix),
        h2c = config.h2c,
        total = ?config.total,
        first_frame = %off_or(config.first_frame),
        idle = %off_or(config.idle),
        retries = config.retries,
        "gateway ready"
    );

    let gateway = Arc::new(Gateway::new(&config));
    let mut server = auto::Builder::new(TokioExecutor::new());
    server.http1().timer(TokioTimer::new());
    server.http2().timer(TokioTimer::new());

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(target: LOG_TARGET, %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        // Tokens are small writes that should leave at once.
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(gateway.handle(request, peer).await) }
            });
            if let Err(err) = server.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(target: LOG_TARGET, %peer, %err, "connection ended with an error");
            }
        });
    }
}

// ---------------------------------------------------------------------------------------
// Forwarding
// ---------------------------------------------------------------------------------------

/// What the upstream client sends: a buffered body (replayable) or a streamed one.
type UpstreamBody = Either<Full<Bytes>, Streamed>;
/// What the gateway answers with: the upstream's body under its deadlines, or an error.
type GatewayBody = Either<DeadlineBody<Incoming>, Full<Bytes>>;
type UpstreamClient = Client<HttpConnector, UpstreamBody>;

struct Gateway {
    client: UpstreamClient,
    upstream: Upstream,
    /// The budgets; each request gets a clone with its own `on_outcome` callback.
    layer: StreamDeadlineLayer,
    retries: usize,
}

impl Gateway {
    fn new(config: &Config) -> Gateway {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(config.h2c)
            .build(connector);
        Gateway {
            client,
            upstream: config.upstream.clone(),
            layer: config.layer(),
            retries: config.retries,
        }
    }

    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<GatewayBody> {
        let log = Arc::new(RequestLog::new(request.method(), request.uri()));
        let response = self.forward(request, peer, &log).await;
        log.status
            .store(response.status().as_u16(), Ordering::Relaxed);
        // `log` is written when its last holder lets go: this function, and the response
        // body's outcome callback, which runs when the body ends (or is dropped).
        response
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        log: &Arc<RequestLog>,
    ) -> Response<GatewayBody> {
        let (mut parts, body) = request.into_parts();
        parts.uri = match self.upstream.uri_for(&parts.uri) {
            Ok(uri) => uri,
            Err(err) => {
                log.note(format!("bad request URI: {err}"));
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "bad_request",
                    &format!("cannot forward this URI: {err}"),
                );
            }
        };
        prepare_request_head(&mut parts, peer);

        // One layer per request, so that each attempt's outcome lands in this request's log.
        let layer = self.layer.clone().on_outcome({
            let log = log.clone();
            move |outcome| log.record(outcome)
        });
        let result = match read_body(&parts.headers, body).await {
            Ok(RequestBody::Replayable(bytes)) => {
                ServiceBuilder::new()
                    // Outside the deadline layer: each attempt gets the full budgets.
                    .layer(RetryLayer::new(RetryFirstFrame::new(self.retries)))
                    .layer(layer)
                    .map_request(|request: Request<Full<Bytes>>| request.map(Either::Left))
                    .service(self.client.clone())
                    .oneshot(Request::from_parts(parts, Full::new(bytes)))
                    .await
            }
            Ok(RequestBody::Streamed(body)) => {
                ServiceBuilder::new()
                    .layer(layer)
                    .service(self.client.clone())
                    .oneshot(Request::from_parts(parts, Either::Right(body)))
                    .await
            }
            Err(err) => {
                log.note(format!("reading the request body failed: {err}"));
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "bad_request_body",
                    &format!("reading the request body failed: {err}"),
                );
            }
        };

        match result {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                prepare_response_head(&mut parts.headers);
                Response::from_parts(parts, Either::Left(body))
            }
            Err(err) => {
                let attempts = log.attempts.load(Ordering::Relaxed);
                match DeadlineExceeded::find(&*err) {
                    Some(deadline) => {
                        let mut response = error_response(
                            StatusCode::GATEWAY_TIMEOUT,
                            "timeout",
                            "deadline_exceeded",
                            &format!(
                                "{deadline}, before any of the response was sent ({attempts} {})",
                                if attempts == 1 { "attempt" } else { "attempts" }
                            ),
                        );
                        if attempts > 1 {
                            // The gateway has retried already: the `openai` SDK reads this
                            // and does not retry on top (3 x 3 attempts).
                            response
                                .headers_mut()
                                .insert("x-should-retry", HeaderValue::from_static("false"));
                        }
                        response
                    }
                    None => {
                        let err = error_chain(&*err);
                        log.note(err.clone());
                        error_response(
                            StatusCode::BAD_GATEWAY,
                            "upstream_error",
                            "upstream_unavailable",
                            &format!("the upstream request failed: {err}"),
                        )
                    }
                }
            }
        }
    }
}

/// Hop-by-hop headers (RFC 9110, section 7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP.map(HeaderName::from_static)) {
        headers.remove(name);
    }
    // `te: trailers` is end-to-end in practice (gRPC needs it); anything else is not.
    if headers.get(TE).is_some_and(|te| te != "trailers") {
        headers.remove(TE);
    }
}

fn prepare_request_head(parts: &mut Parts, peer: SocketAddr) {
    // The client speaks HTTP/1.1 or HTTP/2 to the upstream, whatever the caller spoke.
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    // The upstream's own authority goes in `Host` (HTTP/1) or `:authority` (HTTP/2).
    parts.headers.remove(HOST);
    let forwarded_for = match parts.headers.get("x-forwarded-for") {
        Some(previous) => format!("{}, {}", previous.to_str().unwrap_or(""), peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        parts.headers.insert("x-forwarded-for", value);
    }
}

fn prepare_response_head(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    // At a deadline an event stream gets one more event: its length is no longer known.
    let event_stream = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("text/event-stream"));
    if event_stream {
        headers.remove(CONTENT_LENGTH);
    }
}

/// An OpenAI-shaped JSON error, as the `openai` SDK and LangChain parse them.
fn error_response(
    status: StatusCode,
    kind: &str,
    code: &str,
    message: &str,
) -> Response<GatewayBody> {
    let body = json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    });
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `outer: cause: cause`, since hyper's errors say little at the top.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        let _ = write!(text, ": {err}");
        source = err.source();
    }
    text
}

// ---------------------------------------------------------------------------------------
// Request bodies: buffered up to the replay limit, streamed beyond it
// ---------------------------------------------------------------------------------------

enum RequestBody {
    /// The whole body, which a retry can send again.
    Replayable(Bytes),
    /// Too large (or carrying trailers): what was read so far, then the rest as it comes.
    Streamed(Streamed),
}

async fn read_body(headers: &HeaderMap, mut body: Incoming) -> Result<RequestBody, hyper::Error> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > REPLAY_LIMIT as u64) {
        return Ok(RequestBody::Streamed(Streamed::new(VecDeque::new(), body)));
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut length = 0;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => {
                length += data.len();
                chunks.push(data);
                if length > REPLAY_LIMIT {
                    let prefix = chunks.into_iter().map(Frame::data).collect();
                    return Ok(RequestBody::Streamed(Streamed::new(prefix, body)));
                }
            }
            Err(trailers) => {
                let mut prefix: VecDeque<_> = chunks.into_iter().map(Frame::data).collect();
                prefix.push_back(trailers);
                return Ok(RequestBody::Streamed(Streamed::new(prefix, body)));
            }
        }
    }
    Ok(RequestBody::Replayable(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => {
            let mut whole = BytesMut::with_capacity(length);
            chunks
                .iter()
                .for_each(|chunk| whole.extend_from_slice(chunk));
            whole.freeze()
        }
    }))
}

/// The frames already read, then the rest of the caller's body.
struct Streamed {
    prefix: VecDeque<Frame<Bytes>>,
    rest: Incoming,
}

impl Streamed {
    fn new(prefix: VecDeque<Frame<Bytes>>, rest: Incoming) -> Self {
        Streamed { prefix, rest }
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match this.prefix.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => Pin::new(&mut this.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .prefix
            .iter()
            .filter_map(|frame| frame.data_ref())
            .map(|data| data.len() as u64)
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + buffered);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}

// ---------------------------------------------------------------------------------------
// One log line per request
// ---------------------------------------------------------------------------------------

/// What one request did, logged once when dropped: after the handler has answered and
/// the response body (which holds the outcome callback) has ended or been dropped.
struct RequestLog {
    method: Method,
    path: String,
    started: std::time::Instant,
    status: AtomicU16,
    attempts: AtomicU32,
    /// The outcome of the last attempt, and when its first frame came, counted from the
    /// request's arrival (so across retries: what the client waited for its first token).
    last: Mutex<Option<(Outcome, Option<Duration>)>>,
    note: Mutex<Option<String>>,
}

impl RequestLog {
    fn new(method: &Method, uri: &Uri) -> Self {
        RequestLog {
            method: method.clone(),
            path: uri.path().to_owned(),
            started: std::time::Instant::now(),
            status: AtomicU16::new(0),
            attempts: AtomicU32::new(0),
            last: Mutex::new(None),
            note: Mutex::new(None),
        }
    }

    /// Called once per attempt, from the deadline layer's `on_outcome`, as it ends.
    fn record(&self, outcome: &Outcome) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        // The outcome's times count from the attempt's `call`, which was `total_time` ago.
        let first_frame = outcome.time_to_first_frame.and_then(|first_frame| {
            let call = std::time::Instant::now().checked_sub(outcome.total_time)?;
            Some((call + first_frame).saturating_duration_since(self.started))
        });
        if let Ok(mut last) = self.last.lock() {
            *last = Some((outcome.clone(), first_frame));
        }
    }

    fn note(&self, note: String) {
        if let Ok(mut slot) = self.note.lock() {
            *slot = Some(note);
        }
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let last = self.last.get_mut().ok().and_then(|last| last.take());
        let note = self.note.get_mut().ok().and_then(|note| note.take());
        let (outcome, first_frame, frames, bytes) = match &last {
            Some((o, first_frame)) => (o.ending.as_str(), ms(*first_frame), o.frames, o.bytes),
            None => ("not-sent", ms(None), 0, 0),
        };
        // No status: the client went away before the response was ready.
        let status = match self.status.load(Ordering::Relaxed) {
            0 => "-".to_owned(),
            status => status.to_string(),
        };
        tracing::info!(
            target: LOG_TARGET,
            method = %self.method,
            path = %self.path,
            status = %status,
            attempts = self.attempts.load(Ordering::Relaxed),
            first_frame = %first_frame,
            frames,
            bytes,
            outcome,
            elapsed = %ms(Some(self.started.elapsed())),
            "request{}",
            note.map_or(String::new(), |note| format!(" ({note})")),
        );
    }
}

fn off_or(budget: Option<Duration>) -> String {
    budget.map_or("off".to_owned(), |budget| format!("{budget:?}"))
}

fn ms(duration: Option<Duration>) -> String {
    match duration {
        Some(duration) => format!("{:.1}ms", duration.as_secs_f64() * 1000.0),
        None => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("45").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5d").is_err());
        assert_eq!(parse_optional_duration("off"), Ok(None));
    }

    #[test]
    fn flags() {
        let args = "--listen 127.0.0.1:0 --upstream=http://10.0.0.1:8000/base/ --total 2s \
                    --first-frame 500ms --idle off --retries 1 --h2c";
        let config = Config::from_args(args.split(' ').map(String::from))
            .unwrap()
            .unwrap();
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.total, Duration::from_secs(2));
        assert_eq!(config.first_frame, Some(Duration::from_millis(500)));
        assert_eq!(config.idle, None);
        assert_eq!(config.retries, 1);
        assert!(config.h2c);
        let uri = config.upstream.uri_for(&"/v1/models?x=1".parse().unwrap());
        assert_eq!(uri.unwrap(), "http://10.0.0.1:8000/base/v1/models?x=1");
        assert!(Config::from_args(["--help".to_owned()]).unwrap().is_none());
        assert!(Config::from_args(["--bogus".to_owned()]).is_err());
        assert!(Config::from_args(["--upstream".to_owned(), "https://x".to_owned()]).is_err());
    }

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
}
