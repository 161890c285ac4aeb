//! `StreamDeadlineLayer::grpc_endings()` against a real tonic client and a real tonic server
//! over HTTP/2 on 127.0.0.1 (port 0).
//!
//! The server speaks one hand-written server-streaming RPC, `/test.Babble/Stream`, whose
//! message stream yields `Word { seq: 0 }`, `Word { seq: 1 }`, ... every [`TICK`], forever,
//! and reports the instant it is dropped. (No protoc: the messages are `prost::Message`
//! derived by hand and the RPC is wired with `tonic::server::Grpc` / `tonic::client::Grpc`.)
//!
//! The promises checked, with the layer on the server (`Server::builder().layer(..)`) and on
//! the client (around the `Channel`):
//! - a deadline after the head ends the call with every message sent before it, in order,
//!   then `Code::DeadlineExceeded` with a message naming the budget, and the server's
//!   message stream is dropped promptly;
//! - a deadline before the head is a trailers-only response: the call itself fails with
//!   `Code::DeadlineExceeded`;
//! - without `grpc_endings()` the same late stream reaches the client as another code,
//!   which is why the feature exists;
//! - a deadline that falls inside a length-prefixed message sends nothing of it: tonic and a
//!   raw HTTP/2 reader see the whole messages, then the status trailers.
//!
//! Every wait is bounded ([`within`]); nothing sleeps to let things settle.

#[path = "support/sockets.rs"]
mod sockets;
mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tonic::Code;
use tonic::server::{NamedService, ServerStreamingService};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_prost::ProstCodec;
use tower::{Service, ServiceBuilder};
use tower_stream_deadline::StreamDeadlineLayer;

/// The total budget under test.
const BUDGET: Duration = Duration::from_millis(300);
/// The interval between two messages of the babbling server.
const TICK: Duration = Duration::from_millis(10);
/// The promise: the server's message stream is dropped this soon after the deadline.
const RELEASE_BOUND: Duration = Duration::from_millis(150);
/// How much earlier than our estimate the real deadline may be (the estimate is taken a
/// little after the layer's `call`, on the server side).
const ESTIMATE_SLACK: Duration = Duration::from_millis(50);
/// The upper bound on any single wait on the network (not a sleep).
const SIGNAL_WAIT: Duration = Duration::from_secs(2);
/// The messages a 300 ms budget must at least let through at one per 10 ms.
const MIN_MESSAGES: u64 = 10;

const PATH: &str = "/test.Babble/Stream";

// ---------------------------------------------------------------------------------------
// The messages, by hand (no protoc).
// ---------------------------------------------------------------------------------------

/// The request: which client is asking (echoed in each word).
#[derive(Clone, PartialEq, prost::Message)]
struct Ask {
    #[prost(string, tag = "1")]
    who: String,
}

/// One message of the stream.
#[derive(Clone, PartialEq, prost::Message)]
struct Word {
    #[prost(uint64, tag = "1")]
    seq: u64,
    #[prost(string, tag = "2")]
    text: String,
}

// ---------------------------------------------------------------------------------------
// What the server reports.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    /// The RPC handler was called (after the request message was decoded).
    HandlerCalled,
    /// The handler future was dropped before it answered.
    HandlerDropped,
    /// The message stream was dropped (the server stopped producing).
    StreamDropped,
}

type Events = mpsc::UnboundedReceiver<(Event, Instant)>;

/// Sends `event` with the instant it is dropped.
struct OnDrop {
    event: Event,
    tx: Option<mpsc::UnboundedSender<(Event, Instant)>>,
}

impl OnDrop {
    fn new(event: Event, tx: &mpsc::UnboundedSender<(Event, Instant)>) -> Self {
        OnDrop {
            event,
            tx: Some(tx.clone()),
        }
    }

    /// Disarms the guard: the watched thing completed instead of being dropped.
    fn disarm(&mut self) {
        self.tx = None;
    }
}

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send((self.event, Instant::now()));
        }
    }
}

/// Waits (bounded) for `event`, skipping others; fails the test with `what` if it does not
/// come within [`SIGNAL_WAIT`].
async fn wait_for(events: &mut Events, event: Event, what: &str) -> Instant {
    within(
        &format!("{what}: the server to report {event:?}"),
        SIGNAL_WAIT,
        async {
            loop {
                match events.recv().await {
                    Some((got, at)) if got == event => return at,
                    Some(_) => continue,
                    None => panic!("{what}: the server went away before reporting {event:?}"),
                }
            }
        },
    )
    .await
}

/// `future`, or a failed test naming `what` did not happen within `limit`.
async fn within<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------------------
// The server: a hand-written `test.Babble` service with one server-streaming RPC.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Answer at once with a stream of a message every [`TICK`], forever.
    Babble,
    /// Never answer: the handler future stays pending (until it is dropped).
    Stall,
}

#[derive(Clone)]
struct BabbleServer {
    mode: Mode,
    events: mpsc::UnboundedSender<(Event, Instant)>,
}

impl NamedService for BabbleServer {
    const NAME: &'static str = "test.Babble";
}

impl Service<http::Request<tonic::body::Body>> for BabbleServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let handler = StreamHandler {
            mode: self.mode,
            events: self.events.clone(),
        };
        Box::pin(async move {
            if req.uri().path() != PATH {
                let status =
                    tonic::Status::unimplemented(format!("no method {}", req.uri().path()));
                return Ok(status.into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Word, Ask>::default());
            Ok(grpc.server_streaming(handler, req).await)
        })
    }
}

/// The RPC handler, as tonic's codegen would have written it.
struct StreamHandler {
    mode: Mode,
    events: mpsc::UnboundedSender<(Event, Instant)>,
}

impl ServerStreamingService<Ask> for StreamHandler {
    type Response = Word;
    type ResponseStream = Words;
    type Future =
        Pin<Box<dyn Future<Output = Result<tonic::Response<Words>, tonic::Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<Ask>) -> Self::Future {
        let _ = self.events.send((Event::HandlerCalled, Instant::now()));
        let mode = self.mode;
        let events = self.events.clone();
        Box::pin(async move {
            let mut dropped = OnDrop::new(Event::HandlerDropped, &events);
            if let Mode::Stall = mode {
                std::future::pending::<()>().await;
            }
            dropped.disarm();
            let mut ticks = tokio::time::interval(TICK);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            Ok(tonic::Response::new(Words {
                who: request.into_inner().who,
                next: 0,
                ticks,
                _dropped: OnDrop::new(Event::StreamDropped, &events),
            }))
        })
    }
}

/// `Word { seq: 0 }` at once, then one more every [`TICK`], forever; reports its drop.
struct Words {
    who: String,
    next: u64,
    ticks: Interval,
    _dropped: OnDrop,
}

impl Stream for Words {
    type Item = Result<Word, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        std::task::ready!(self.ticks.poll_tick(cx));
        let seq = self.next;
        self.next += 1;
        let text = format!("word {seq} for {}", self.who);
        Poll::Ready(Some(Ok(Word { seq, text })))
    }
}

/// Which layer (if any) the server runs behind.
enum ServerLayer {
    None,
    Deadline(StreamDeadlineLayer),
}

/// Starts a tonic server on 127.0.0.1 (port 0) behind `layer`; returns its address and the
/// events it reports. The server lives as long as the test's runtime.
async fn serve(layer: ServerLayer, mode: Mode) -> (SocketAddr, Events) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let incoming = TcpIncoming::from(listener);
    let (tx, rx) = mpsc::unbounded_channel();
    let service = BabbleServer { mode, events: tx };
    match layer {
        ServerLayer::None => {
            let router = Server::builder().add_service(service);
            tokio::spawn(async move { router.serve_with_incoming(incoming).await.expect("serve") });
        }
        ServerLayer::Deadline(layer) => {
            let router = Server::builder().layer(layer).add_service(service);
            tokio::spawn(async move { router.serve_with_incoming(incoming).await.expect("serve") });
        }
    }
    (addr, rx)
}

// ---------------------------------------------------------------------------------------
// The client: tonic's generic client, over a `Channel` (wrapped or not).
// ---------------------------------------------------------------------------------------

async fn channel(addr: SocketAddr) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).expect("endpoint");
    within("the channel to connect", SIGNAL_WAIT, endpoint.connect())
        .await
        .expect("connect to the test server")
}

/// What the client got from one call.
#[derive(Debug)]
struct Outcome {
    /// When the call started (just before the request was handed to the service).
    started: Instant,
    /// The `seq` of every message received, in the order received.
    seqs: Vec<u64>,
    /// The status that ended the call: from the call itself or from the stream.
    status: tonic::Status,
    /// Whether the status came from the call itself (before any message).
    from_call: bool,
    /// When the status arrived.
    ended: Instant,
}

/// Calls `/test.Babble/Stream` through `service` and reads the stream to its end (bounded).
async fn call_stream<T>(service: T) -> Outcome
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut grpc = tonic::client::Grpc::new(service);
    within("the client to be ready", SIGNAL_WAIT, grpc.ready())
        .await
        .unwrap_or_else(|err| panic!("client not ready: {}", err.into()));
    let request = tonic::Request::new(Ask { who: "test".into() });
    let codec = ProstCodec::<Ask, Word>::default();
    let started = Instant::now();
    let call = grpc.server_streaming(request, PathAndQuery::from_static(PATH), codec);
    let response = within("the response head", SIGNAL_WAIT, call).await;
    let mut stream = match response {
        Ok(response) => response.into_inner(),
        Err(status) => {
            return Outcome {
                started,
                seqs: Vec::new(),
                status,
                from_call: true,
                ended: Instant::now(),
            };
        }
    };
    let mut seqs = Vec::new();
    let status = within("the stream to end", SIGNAL_WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(word)) => {
                    assert_eq!(
                        word.text,
                        format!("word {} for test", word.seq),
                        "a whole message"
                    );
                    seqs.push(word.seq);
                }
                Ok(None) => panic!(
                    "the stream ended with status OK after {} messages; the server never ends it, \
                     so only a deadline can",
                    seqs.len()
                ),
                Err(status) => return status,
            }
        }
    })
    .await;
    Outcome {
        started,
        seqs,
        status,
        from_call: false,
        ended: Instant::now(),
    }
}

/// Asserts that `seqs` is exactly `0, 1, 2, ..., n-1` with `n` at least [`MIN_MESSAGES`].
#[track_caller]
fn assert_every_message_in_order(seqs: &[u64]) {
    for (i, seq) in seqs.iter().enumerate() {
        assert_eq!(
            *seq, i as u64,
            "message #{i} carries seq {seq}: messages lost or out of order: {seqs:?}"
        );
    }
    assert!(
        seqs.len() as u64 >= MIN_MESSAGES,
        "a {BUDGET:?} budget at one message per {TICK:?} lets through far more than {} messages: {seqs:?}",
        seqs.len()
    );
}

/// Asserts that the status is `DEADLINE_EXCEEDED` with the crate's message naming the budget.
#[track_caller]
fn assert_deadline_exceeded(status: &tonic::Status) {
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "expected DEADLINE_EXCEEDED (4), got {:?}: {:?}",
        status.code(),
        status.message()
    );
    assert!(
        status.message().contains("total budget of 300ms"),
        "grpc-message names the budget: {:?}",
        status.message()
    );
}

/// Asserts that `dropped_at` is no earlier than the deadline estimated from `deadline` (up to
/// [`ESTIMATE_SLACK`]) and no later than [`RELEASE_BOUND`] after it.
#[track_caller]
fn assert_released_promptly(deadline: Instant, dropped_at: Instant) {
    assert!(
        dropped_at + ESTIMATE_SLACK >= deadline,
        "the message stream was dropped {:?} before the deadline",
        deadline - dropped_at
    );
    let late = dropped_at.saturating_duration_since(deadline);
    assert!(
        late <= RELEASE_BOUND,
        "the message stream was dropped {late:?} after the deadline (bound {RELEASE_BOUND:?})"
    );
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_client_sees_deadline_exceeded_after_every_message_sent_before_the_server_side_deadline()
 {
    let layer = StreamDeadlineLayer::new(BUDGET).grpc_endings();
    let (addr, mut events) = serve(ServerLayer::Deadline(layer), Mode::Babble).await;

    let outcome = call_stream(channel(addr).await).await;

    assert!(
        !outcome.from_call,
        "the head came before the deadline: {outcome:?}"
    );
    assert_every_message_in_order(&outcome.seqs);
    assert_deadline_exceeded(&outcome.status);
    assert!(
        outcome.ended - outcome.started >= BUDGET,
        "the stream ended after {:?}, before the {BUDGET:?} budget",
        outcome.ended - outcome.started
    );
    let called = wait_for(&mut events, Event::HandlerCalled, "server-side deadline").await;
    let dropped = wait_for(&mut events, Event::StreamDropped, "server-side deadline").await;
    assert_released_promptly(called + BUDGET, dropped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_side_deadline_before_the_head_fails_the_tonic_call_with_deadline_exceeded() {
    let layer = StreamDeadlineLayer::new(BUDGET).grpc_endings();
    let (addr, mut events) = serve(ServerLayer::Deadline(layer), Mode::Stall).await;

    let outcome = call_stream(channel(addr).await).await;

    assert!(
        outcome.from_call,
        "a trailers-only response fails the call itself, before any stream: {outcome:?}"
    );
    assert_deadline_exceeded(&outcome.status);
    let elapsed = outcome.ended - outcome.started;
    assert!(
        elapsed >= BUDGET,
        "the call failed after {elapsed:?}, before the {BUDGET:?} budget"
    );
    assert!(
        elapsed <= BUDGET + RELEASE_BOUND,
        "the call failed {elapsed:?} after it started: late for a {BUDGET:?} budget"
    );
    // The stalled handler is cancelled (its future dropped) at the deadline.
    let called = wait_for(
        &mut events,
        Event::HandlerCalled,
        "deadline before the head",
    )
    .await;
    let dropped = wait_for(
        &mut events,
        Event::HandlerDropped,
        "deadline before the head",
    )
    .await;
    assert_released_promptly(called + BUDGET, dropped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_channel_behind_the_layer_sees_deadline_exceeded_after_every_message_and_releases_the_server()
 {
    let (addr, mut events) = serve(ServerLayer::None, Mode::Babble).await;
    let wrapped = ServiceBuilder::new()
        .layer(StreamDeadlineLayer::new(BUDGET).grpc_endings())
        .service(channel(addr).await);

    // `StreamDeadline<Channel>` is a `GrpcService` as it is: its body is
    // `DeadlineBody<tonic::body::Body>`, with `Data = Bytes` and a boxed error.
    let outcome = call_stream(wrapped).await;

    assert!(
        !outcome.from_call,
        "the head came before the deadline: {outcome:?}"
    );
    assert_every_message_in_order(&outcome.seqs);
    assert_deadline_exceeded(&outcome.status);
    let elapsed = outcome.ended - outcome.started;
    assert!(
        elapsed >= BUDGET,
        "the stream ended after {elapsed:?}, before the {BUDGET:?} budget"
    );
    // The deadline runs from the client's call: `started` is taken just before it.
    let dropped = wait_for(&mut events, Event::StreamDropped, "client-side deadline").await;
    assert_released_promptly(outcome.started + BUDGET, dropped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_grpc_endings_a_tonic_client_sees_a_late_stream_as_some_other_code() {
    let layer = StreamDeadlineLayer::new(BUDGET); // no `.grpc_endings()`
    let (addr, mut events) = serve(ServerLayer::Deadline(layer), Mode::Babble).await;

    let outcome = call_stream(channel(addr).await).await;

    assert!(
        !outcome.from_call,
        "the head came before the deadline: {outcome:?}"
    );
    assert_every_message_in_order(&outcome.seqs);
    // The body's error makes hyper reset the HTTP/2 stream, and tonic reports the reset as
    // a transport failure, not as a deadline. Observed (tonic 0.14.5, hyper 1.12):
    // - with the crate's `h2` feature (as under `--all-features`), RST_STREAM(CANCEL):
    //   `Status { code: Cancelled, message: "h2 protocol error: error reading a body from
    //   connection", source: hyper::Error(Body, Reset(StreamId(1), CANCEL, Remote)) }`;
    // - without it, RST_STREAM(INTERNAL_ERROR), which tonic reports as `Code::Internal`.
    let code = outcome.status.code();
    assert_ne!(
        code,
        Code::DeadlineExceeded,
        "without grpc_endings nothing tells the client it was a deadline: {:?}",
        outcome.status
    );
    assert!(
        matches!(
            code,
            Code::Cancelled | Code::Internal | Code::Unavailable | Code::Unknown
        ),
        "a late stream cut without grpc_endings reaches tonic as a broken transport: {:?}",
        outcome.status
    );
    assert!(
        !outcome.status.message().contains("deadline"),
        "nothing in the status names the deadline: {:?}",
        outcome.status
    );
    let called = wait_for(&mut events, Event::HandlerCalled, "no grpc_endings").await;
    let dropped = wait_for(&mut events, Event::StreamDropped, "no grpc_endings").await;
    assert_released_promptly(called + BUDGET, dropped);
}

// ---------------------------------------------------------------------------------------
// Whole messages only: a deadline that falls inside a message.
// ---------------------------------------------------------------------------------------

/// `Word { seq }` as the babbling server sends it: the 5-byte prefix, then the message.
fn framed(seq: u64) -> Vec<u8> {
    let word = Word {
        seq,
        text: format!("word {seq} for test"),
    };
    let encoded = prost::Message::encode_to_vec(&word);
    let mut framed = vec![0];
    framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    framed.extend_from_slice(&encoded);
    framed
}

/// Messages 0 and 1 whole, then the first `half` bytes of message 2, in one frame; then
/// nothing, ever. (All of it is ASCII, so it fits a scripted `&'static str` frame.)
fn two_and_a_half(half: usize) -> (&'static str, Vec<u8>) {
    let whole = [framed(0), framed(1)].concat();
    let frame = [whole.clone(), framed(2)[..half].to_vec()].concat();
    let frame = String::from_utf8(frame).expect("ASCII").leak();
    (frame, whole)
}

/// A hyper server (HTTP/2) on 127.0.0.1 behind `grpc_endings()` with the total [`BUDGET`],
/// whose upstream answers every call with `frame`, then stalls.
async fn serve_half_message(frame: &'static str) -> SocketAddr {
    let upstream = support::Upstream::new(
        Duration::ZERO,
        [support::Step::Data(frame), support::Step::Stall],
    )
    .with_content_type("application/grpc");
    let svc = ServiceBuilder::new()
        .layer(StreamDeadlineLayer::new(BUDGET).grpc_endings())
        .service(upstream.service());
    sockets::serve(move |req| {
        let svc = svc.clone();
        async move {
            let response = tower::ServiceExt::oneshot(svc, req).await;
            response.expect("the head comes before the deadline")
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_inside_a_message_gives_a_tonic_client_every_whole_message_then_deadline_exceeded()
 {
    let (frame, _) = two_and_a_half(framed(2).len() - 3);
    let addr = serve_half_message(frame).await;

    let outcome = call_stream(channel(addr).await).await;

    assert!(!outcome.from_call, "the head came at once: {outcome:?}");
    assert_eq!(outcome.seqs, [0, 1], "the whole messages, in order");
    assert_deadline_exceeded(&outcome.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_inside_a_message_sends_no_byte_of_it_before_the_status_trailers() {
    // A message cut early: the prefix announcing it, and two of its bytes, sent.
    let (frame, whole) = two_and_a_half(5 + 2);
    let addr = serve_half_message(frame).await;

    // A raw HTTP/2 reader: every byte of the body, then the trailers.
    let tcp = within(
        "the connection",
        SIGNAL_WAIT,
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .expect("connect");
    let (client, connection) = within("the h2 handshake", SIGNAL_WAIT, h2::client::handshake(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = within("the client to be ready", SIGNAL_WAIT, client.ready())
        .await
        .expect("h2 client ready");
    let request = http::Request::post(format!("http://{addr}{PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut send) = client.send_request(request, false).expect("send request");
    let ask = prost::Message::encode_to_vec(&Ask { who: "test".into() });
    let mut message = vec![0];
    message.extend_from_slice(&(ask.len() as u32).to_be_bytes());
    message.extend_from_slice(&ask);
    send.send_data(message.into(), true)
        .expect("send the request message");
    let response = within("the response head", SIGNAL_WAIT, response)
        .await
        .expect("response head");
    assert_eq!(response.headers()["content-type"], "application/grpc");
    let mut body = response.into_body();
    let mut received = Vec::new();
    while let Some(data) = within("the next DATA frame", SIGNAL_WAIT, body.data()).await {
        let data = data.expect("a DATA frame, not a reset");
        let _ = body.flow_control().release_capacity(data.len());
        received.extend_from_slice(&data);
    }
    let trailers = within("the trailers", SIGNAL_WAIT, body.trailers())
        .await
        .expect("trailers, not a reset")
        .expect("trailers");

    assert_eq!(
        received, whole,
        "exactly the two whole messages, nothing of the third"
    );
    assert_eq!(trailers["grpc-status"], "4");
    let message = trailers["grpc-message"].to_str().expect("ASCII");
    assert!(message.contains("total budget of 300ms"), "{message}");
}

/// On tokio's paused clock: how the body holds back a message that is not yet whole.
mod paused {
    use super::*;
    use support::{Drained, Step, Upstream, call, drain};
    use tower::Layer;

    const GRPC: &str = "application/grpc";

    /// A gRPC response of `steps` through a layer with `grpc_endings` and a 1 s budget,
    /// drained.
    async fn drained_with_grpc_endings(steps: impl IntoIterator<Item = Step>) -> Drained {
        let upstream = Upstream::new(Duration::ZERO, steps).with_content_type(GRPC);
        let layer = StreamDeadlineLayer::new(Duration::from_secs(1)).grpc_endings();
        let mut svc = layer.layer(upstream.service());
        let mut body = call(&mut svc).await.unwrap().into_body();
        drain(&mut body).await
    }

    fn leaked(bytes: &[u8]) -> &'static str {
        String::from_utf8(bytes.to_vec()).expect("ASCII").leak()
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_split_across_frames_is_delivered_whole_once_complete() {
        let (one, two) = (framed(1), framed(2));
        let steps = [
            Step::Data(leaked(&one[..3])),
            Step::After(Duration::from_millis(10)),
            Step::Data(leaked(&[&one[3..], &two[..]].concat())),
            Step::Stall,
        ];
        let drained = drained_with_grpc_endings(steps).await;

        assert_eq!(
            drained.data,
            [bytes::Bytes::from([one, two].concat())],
            "one frame, both messages whole"
        );
        assert_eq!(drained.trailers.expect("trailers")["grpc-status"], "4");
        assert!(drained.error.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn trailers_after_half_a_message_come_last_and_the_half_is_not_sent() {
        let (frame, whole) = two_and_a_half(6);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("13"));
        let steps = [Step::Data(frame), Step::Trailers(trailers)];
        let drained = drained_with_grpc_endings(steps).await;

        assert_eq!(
            drained.data,
            [bytes::Bytes::from(whole)],
            "nothing after the trailers"
        );
        assert_eq!(drained.trailers.expect("trailers")["grpc-status"], "13");
        assert!(drained.error.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_body_that_ends_mid_message_in_time_delivers_every_byte() {
        let (frame, _) = two_and_a_half(6);
        let drained = drained_with_grpc_endings([Step::Data(frame)]).await;

        assert_eq!(
            drained.text(),
            frame,
            "the upstream's own truncation, as it is"
        );
        assert!(drained.trailers.is_none() && drained.error.is_none());
    }
}
