//! [`StreamDeadlineLayer`]: the budgets, as a `tower::Layer`.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderName;
use tower_layer::Layer;

use crate::budget::Budgets;
use crate::error::DeadlineExceeded;
use crate::outcome::{OnOutcome, Outcome};
use crate::protocol::ProtocolConfig;
use crate::release::{ReleaseOnPoll, ReleaseUnpolled};
use crate::service::StreamDeadline;
use crate::timeout_header::HeaderRules;

/// Applies [`StreamDeadline`] to a service: a total budget on each whole response, and
/// optionally a first-frame and an idle budget.
///
/// | budget | counts from | ends at | error kind |
/// |---|---|---|---|
/// | [`new(total)`](Self::new) | `call` | the end of the body | [`Total`](crate::DeadlineKind::Total) |
/// | [`first_frame(d)`](Self::first_frame) | `call` | the first body frame (or end of an empty body) | [`FirstFrame`](crate::DeadlineKind::FirstFrame) |
/// | [`idle(d)`](Self::idle) | each time the body starts waiting for a frame | the next frame (or the end) | [`Idle`](crate::DeadlineKind::Idle) |
///
/// A budget of `Duration::MAX` (or one so long the deadline would overflow) is no deadline.
/// A first-frame budget no shorter than the total budget is ignored: the total budget wins.
/// A budget of `Duration::ZERO` has run out before anything can arrive.
///
/// # Builder methods, by concern
///
/// Every layer starts from [`new`](Self::new); the rest are opt-in, in five groups (the
/// `impl` blocks in the list of methods below; budgets take two).
///
/// ## Budgets
///
/// How long a response may take: [`new`](Self::new) (in all),
/// [`first_frame`](Self::first_frame) and [`idle`](Self::idle) for streams that can stall,
/// and [`release_unpolled`](Self::release_unpolled) where the body may sit unpolled (a
/// proxy whose client stops reading).
///
/// ## Propagation
///
/// When one deadline should hold across hops: a client's header may shorten the budget
/// ([`read_grpc_timeout`](Self::read_grpc_timeout),
/// [`read_timeout_header`](Self::read_timeout_header)), and the next hop learns how long it
/// has left ([`forward_grpc_timeout`](Self::forward_grpc_timeout),
/// [`forward_timeout_header`](Self::forward_timeout_header),
/// [`forward_margin`](Self::forward_margin)).
///
/// ## Protocol endings
///
/// When the client should learn of a deadline in its own protocol's terms instead of a cut
/// stream: [`grpc_endings`](Self::grpc_endings), [`sse_endings`](Self::sse_endings),
/// [`sse_ending_event`](Self::sse_ending_event),
/// [`sse_upstream_errors`](Self::sse_upstream_errors) for an upstream that fails
/// mid-stream, and [`sse_first_event_errors`](Self::sse_first_event_errors) for one whose
/// first event is an error.
///
/// ## Progress
///
/// When keep-alives (SSE comments, empty frames, role-only chunks) would make a stuck stream
/// look alive to the first-frame and idle budgets: [`sse_progress`](Self::sse_progress),
/// [`sse_progress_filter`](Self::sse_progress_filter), [`llm_progress`](Self::llm_progress)
/// for LLM servers, [`progress`](Self::progress).
///
/// ## Observability
///
/// When you want numbers per response (metrics, logs, tuning the budgets) beyond the
/// `tracing` event each deadline emits: [`on_outcome`](Self::on_outcome).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower::ServiceBuilder;
/// use tower_stream_deadline::StreamDeadlineLayer;
///
/// let layer = StreamDeadlineLayer::new(Duration::from_secs(45)) // whole response: head + body
///     .first_frame(Duration::from_secs(10)) // stuck before the first token
///     .idle(Duration::from_secs(5)); // gap between frames
///
/// let upstream = tower::service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
/// });
/// let svc = ServiceBuilder::new().layer(layer.clone()).service(upstream);
/// # let _ = svc;
/// ```
///
/// # The type parameter
///
/// `R` says when a late body gives its upstream back: [`ReleaseOnPoll`], the default, which
/// puts no bound on your service or its body, or [`ReleaseUnpolled`], after
/// [`release_unpolled`](Self::release_unpolled), whose service needs `Send + 'static`
/// bodies. Written without it, `StreamDeadlineLayer` is the default.
#[derive(Clone, Debug)]
pub struct StreamDeadlineLayer<R = ReleaseOnPoll> {
    pub(crate) budgets: Budgets,
    pub(crate) headers: HeaderRules,
    pub(crate) on_outcome: Option<OnOutcome>,
    pub(crate) protocol: Option<Arc<ProtocolConfig>>,
    // A marker only: the type says which `Service` impl applies.
    pub(crate) release: PhantomData<R>,
}

/// **Budgets.** How long a response may take: in all, to its first frame, and between frames. Every
/// layer starts from [`new`](Self::new); add the others for streams that can stall, and
/// [`release_unpolled`](Self::release_unpolled) where the body may sit unpolled (a proxy whose
/// client stops reading).
impl StreamDeadlineLayer {
    /// A layer with a total budget for each response: from `call`, through the head, to the
    /// end of the body.
    pub fn new(total: Duration) -> Self {
        StreamDeadlineLayer {
            budgets: Budgets::new(total),
            headers: HeaderRules::default(),
            on_outcome: None,
            protocol: None,
            release: PhantomData,
        }
    }
}

/// **Budgets**, continued: the first-frame and idle budgets, and when the upstream is released.
impl<R> StreamDeadlineLayer<R> {
    /// Also fail the *call* if no body frame (nor the end of an empty body) arrives within
    /// `budget` of `call`.
    ///
    /// The response future then waits for the first frame itself and the body replays it, so
    /// a request stuck before its first token is an error of the call, which `tower::retry`
    /// can retry (see `RetryFirstFrame` under the `retry` feature).
    pub fn first_frame(mut self, budget: Duration) -> Self {
        self.budgets.first_frame = Some(budget);
        self
    }

    /// Also fail the body if it waits longer than `budget` for its next frame (or its end).
    ///
    /// The wait starts when a poll of the body finds no frame ready: after the head (or after
    /// the first frame, under a first-frame budget) and after each frame. Time the caller
    /// spends away from the body is not counted.
    pub fn idle(mut self, budget: Duration) -> Self {
        self.budgets.idle = Some(budget);
        self
    }

    /// Release the upstream at the deadline even when nobody polls the body: a proxy whose
    /// client stopped reading (hyper polls a body only while the downstream socket takes
    /// bytes), or a caller that holds the body and does something else.
    ///
    /// Without it, the upstream is dropped when the deadline is observed: by the body's
    /// timer waking a task that waits on the body, or at the next poll or the drop. With
    /// it, a watcher task on the runtime where `call` was made drops the upstream body at
    /// the total or idle deadline (within one timer tick plus scheduling) and reports the
    /// [`Outcome`] and the `tracing` event then; the next poll yields the error (or the
    /// protocol ending) as always. The idle deadline counts only while the body waits on
    /// upstream, as always: a caller that took a frame and stopped polling is not idle.
    ///
    /// Before the response is handed over (the head, and under a first-frame budget the first
    /// frame), the response future holds the upstream and releases it when it is polled or
    /// dropped, as a future awaited by its caller always is.
    ///
    /// An answer whose upstream has ended by the time it is handed over needs no watcher:
    /// nothing is left upstream to stop. That is an empty body, one whose first frame
    /// (taken under a first-frame budget) was its last, and one whose length is known
    /// (a `content-length`) and whose bytes all came with its head: the response future
    /// takes what is ready of such a body, and the body yields it first, as taken then.
    ///
    /// It costs an uncontended lock per poll of the body, and per answer that streams a task
    /// and three allocations (about 500 bytes, see BENCHMARKS.md): worth it in a proxy, not
    /// in a client that always reads its own stream. Where there is no runtime with timers
    /// at `call`, or it shuts down, the body is released by polls as without it.
    ///
    /// # What it requires
    ///
    /// The watcher task holds the upstream body, so the layer becomes a
    /// `StreamDeadlineLayer<`[`ReleaseUnpolled`]`>` whose service needs response bodies that
    /// are `Send + 'static` with `Send` data: hyper's `Incoming`, axum's and tonic's bodies
    /// are. Nothing else changes, and layers without it need none of this.
    ///
    /// Inside a spawned task, rustc cannot always prove that bound for a body type that has
    /// a lifetime in it (`StreamBody<Pin<Box<dyn Stream + Send>>>`) or an `async` block (a
    /// stream built with `.then(|x| async move { .. })`) when it comes out of a
    /// `tower::service_fn` whose future is an `async` block: the error is a "higher-ranked
    /// lifetime error ... could not prove `{async block}: Send`" (or "`FnOnce` is not general
    /// enough") that points at your code. Box the body where it is made
    /// (`http_body_util::BodyExt::boxed_unsync`): a plain `UnsyncBoxBody` has neither, and
    /// the program compiles.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http_body_util::{BodyExt, StreamBody};
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_stream_deadline::StreamDeadlineLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let svc = ServiceBuilder::new()
    ///     .layer(StreamDeadlineLayer::new(Duration::from_secs(45)).release_unpolled())
    ///     .service(tower::service_fn(|_req: http::Request<()>| async move {
    ///         let tokens: std::pin::Pin<Box<dyn futures::Stream<Item = _> + Send>> =
    ///             Box::pin(futures::stream::iter([Ok::<_, std::convert::Infallible>(
    ///                 http_body::Frame::data(bytes::Bytes::from_static(b"hello")),
    ///             )]));
    ///         let body = StreamBody::new(tokens).boxed_unsync();
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(body))
    ///     }));
    ///
    /// let answer = tokio::spawn(async move {
    ///     let response = svc.oneshot(http::Request::new(())).await.unwrap();
    ///     response.into_body().collect().await.unwrap().to_bytes()
    /// });
    /// assert_eq!(answer.await.unwrap(), "hello");
    /// # }
    /// ```
    pub fn release_unpolled(self) -> StreamDeadlineLayer<ReleaseUnpolled> {
        StreamDeadlineLayer {
            budgets: self.budgets,
            headers: self.headers,
            on_outcome: self.on_outcome,
            protocol: self.protocol,
            release: PhantomData,
        }
    }
}

/// **Propagation.** When one deadline should hold across hops: let a client's header shorten the
/// budget, and tell the next hop how long it has left.
impl<R> StreamDeadlineLayer<R> {
    /// Honour a `grpc-timeout` request header (gRPC wire format: 1 to 8 digits and a unit of
    /// `H M S m u n`): it may shorten the total budget of that request, never lengthen it.
    ///
    /// Malformed, overlong, signed, non-ASCII or repeated values are ignored (with a
    /// `tracing` debug event); they never fail the request.
    pub fn read_grpc_timeout(mut self) -> Self {
        self.headers.read_grpc = true;
        self
    }

    /// Honour a plain timeout request header, such as `x-request-timeout: 45s`: digits and a
    /// unit of `ms`, `s`, `m` or `h`, or bare digits for milliseconds. Like `grpc-timeout`, it
    /// may only shorten the total budget, and bad values are ignored.
    pub fn read_timeout_header(mut self, name: HeaderName) -> Self {
        self.headers.read_plain = Some(name);
        self
    }

    /// Write the remaining total budget as `grpc-timeout` on the request passed inward (to
    /// the next hop), in the finest unit that fits 8 digits, rounded down; replaces any
    /// value the request had.
    pub fn forward_grpc_timeout(mut self) -> Self {
        self.headers.forward_grpc = true;
        self
    }

    /// Write the remaining total budget, in whole milliseconds rounded down (`1500ms`), in
    /// the header `name` on the request passed inward; replaces any value it had.
    pub fn forward_timeout_header(mut self, name: HeaderName) -> Self {
        self.headers.forward_plain = Some(name);
        self
    }

    /// Subtract `margin` from the budget written by the `forward_*` settings, leaving time
    /// for the answer to travel back.
    pub fn forward_margin(mut self, margin: Duration) -> Self {
        self.headers.forward_margin = margin;
        self
    }
}

/// **Protocol endings.** When the client should learn of a deadline (or an upstream failure) in its
/// own protocol's terms, a gRPC status or a last SSE event, instead of a cut stream.
impl<R> StreamDeadlineLayer<R> {
    /// End a late gRPC call the way gRPC clients understand: for a response with
    /// `content-type: application/grpc*`, a deadline after the head ends the body with
    /// trailers `grpc-status: 4` (`DEADLINE_EXCEEDED`) and a `grpc-message` naming the
    /// budget, instead of an error (which hyper turns into a reset stream, and tonic into
    /// `INTERNAL`, or `CANCELLED` with the `h2` feature). For a gRPC request, a deadline
    /// before the head resolves
    /// to a trailers-only response with status 4. Every whole message sent before the
    /// deadline is delivered; the upstream is released at once as always.
    ///
    /// Frames do not align with gRPC's length-prefixed messages, so the body holds back the
    /// bytes of a message until it is whole (servers such as tonic send whole messages per
    /// frame, and then nothing is held; a large message split across frames is held until
    /// its last byte). At the deadline a half-sent message is dropped: a client sees whole
    /// messages, then status 4, never a truncated message. Needs the body's data to be
    /// `bytes::Bytes`; other bodies pass through unread.
    ///
    /// Since such a call resolves instead of failing, `RetryFirstFrame` does not see it.
    pub fn grpc_endings(mut self) -> Self {
        self.protocol_mut().grpc_endings = true;
        self
    }

    /// End a late `text/event-stream` response with one last event carrying the error, then
    /// a clean end, instead of a broken stream. The default event is one that the `openai`
    /// SDK (chat completions and the Responses API) and the `anthropic` SDK (Messages) all
    /// raise as an API error, so nothing needs configuring for either API:
    /// `event: error` and
    /// `data: {"type":"error","error":{"type":"timeout","code":"deadline_exceeded","message":"stream deadline exceeded: ...","param":null}}`.
    ///
    /// Frames do not align with SSE events, so the body holds back the bytes after the last
    /// complete event until the event is complete (most servers send whole events per
    /// frame, and then nothing is held). At the deadline a half-sent event is dropped: a
    /// client sees every complete event, then the error event, and nothing of the half.
    /// Needs the body's data to be `bytes::Bytes` (hyper's and axum's are); other SSE bodies
    /// pass through unread and end with the error.
    pub fn sse_endings(mut self) -> Self {
        let protocol = self.protocol_mut();
        if protocol.sse_endings.is_none() {
            protocol.sse_endings = Some(None);
        }
        self
    }

    /// Like [`sse_endings`](Self::sse_endings), with your own last event: `event` returns
    /// its bytes, which should be whole SSE event(s) ending with a blank line.
    pub fn sse_ending_event(
        mut self,
        event: impl Fn(&DeadlineExceeded) -> Bytes + Send + Sync + 'static,
    ) -> Self {
        self.protocol_mut().sse_endings = Some(Some(Arc::new(event)));
        self
    }

    /// End a `text/event-stream` response whose upstream fails after the head (a reset
    /// connection or HTTP/2 stream, a truncated chunked body) with one last event saying so,
    /// then a clean end, instead of passing the error on: a client sees every complete
    /// event, then `event: error` and
    /// `data: {"type":"error","error":{"type":"upstream_error","code":"upstream_failed","message":"upstream failed mid-stream: ...","param":null}}`,
    /// which the `openai` and `anthropic` SDKs raise as an API error rather than a
    /// connection error (which their users tend to retry blindly). As with
    /// [`sse_endings`](Self::sse_endings), the bytes of an event not yet complete are held
    /// back, and dropped at the failure.
    ///
    /// The upstream error is still what [`on_outcome`](Self::on_outcome) reports
    /// (`Ending::UpstreamError`), and a `tracing` warning carries its text. Unset, upstream
    /// errors pass through untouched. Other content types are not affected.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http_body_util::BodyExt;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_stream_deadline::StreamDeadlineLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // An upstream that sends one event and half of another, then fails.
    /// let upstream = tower::service_fn(|_req: http::Request<()>| async {
    ///     let frames: Vec<Result<_, std::io::Error>> = vec![
    ///         Ok(http_body::Frame::data(bytes::Bytes::from("data: one\n\ndata: tw"))),
    ///         Err(std::io::ErrorKind::ConnectionReset.into()),
    ///     ];
    ///     let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    ///     let response = http::Response::builder()
    ///         .header("content-type", "text/event-stream")
    ///         .body(body)
    ///         .unwrap();
    ///     Ok::<_, std::convert::Infallible>(response)
    /// });
    /// let layer = StreamDeadlineLayer::new(Duration::from_secs(45)).sse_upstream_errors();
    /// let mut svc = ServiceBuilder::new().layer(layer).service(upstream);
    ///
    /// let response = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
    /// let text = response.into_body().collect().await.unwrap().to_bytes();
    /// let text = String::from_utf8(text.to_vec()).unwrap();
    /// assert!(text.starts_with("data: one\n\nevent: error\n"));
    /// assert!(text.contains(r#""type":"upstream_error""#));
    /// # }
    /// ```
    pub fn sse_upstream_errors(mut self) -> Self {
        self.protocol_mut().sse_upstream_errors = true;
        self
    }

    /// Under a [first-frame budget](Self::first_frame), fail the *call* with an
    /// [`UpstreamErrorEvent`](crate::UpstreamErrorEvent) when the first event of a
    /// `text/event-stream` response (the first that counts as progress) says the answer
    /// failed: an event named `error` (Anthropic's Messages API), data with a top-level
    /// `error` object (OpenAI's APIs, vLLM, LiteLLM) or `"object": "error"` (older vLLM), or
    /// a Responses `response.failed` / `error`. Overloaded servers answer `200` and then such
    /// an event; as an error of the call, [`RetryFirstFrame`](struct.RetryFirstFrame.html)
    /// retries it, on another backend if a router sends it there (see
    /// [`Attempt`](crate::Attempt)), and the upstream is released at once.
    ///
    /// The event is read whole: with [`sse_progress`](Self::sse_progress) or
    /// [`llm_progress`](Self::llm_progress) the call waits for the end of the first event
    /// that counts; without them, a first frame that holds only the start of an error event
    /// counts as progress before the event can be read. Without a first-frame budget the call
    /// resolves at the head, and the first event is the body's to deliver. Needs the body's
    /// data to be `bytes::Bytes`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_stream_deadline::{StreamDeadlineLayer, UpstreamErrorEvent};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // An overloaded server: 200, then an error event.
    /// let upstream = tower::service_fn(|_req: http::Request<()>| async {
    ///     let event = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n";
    ///     let response = http::Response::builder()
    ///         .header("content-type", "text/event-stream")
    ///         .body(http_body_util::Full::new(bytes::Bytes::from(event)))
    ///         .unwrap();
    ///     Ok::<_, std::convert::Infallible>(response)
    /// });
    /// let layer = StreamDeadlineLayer::new(Duration::from_secs(45))
    ///     .first_frame(Duration::from_secs(10))
    ///     .llm_progress()
    ///     .sse_first_event_errors();
    /// let mut svc = ServiceBuilder::new().layer(layer).service(upstream);
    ///
    /// let err = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap_err();
    /// let event = UpstreamErrorEvent::find(&*err).unwrap();
    /// assert_eq!(event.name(), Some("error"));
    /// # }
    /// ```
    pub fn sse_first_event_errors(mut self) -> Self {
        self.protocol_mut().sse_first_event_errors = true;
        self
    }
}

/// **Progress.** When keep-alives (SSE comments, empty frames, role-only chunks) would make a stuck
/// stream look alive to the first-frame and idle budgets.
impl<R> StreamDeadlineLayer<R> {
    /// For `text/event-stream` responses, count only events that carry data as progress
    /// for the first-frame and idle budgets: comments (`: ping`), empty keep-alive frames
    /// and events without data leave the clocks running. Those frames are still delivered,
    /// in order and at once (before the first progress, the response future holds them and
    /// they are replayed with it, up to 64 KiB).
    pub fn sse_progress(mut self) -> Self {
        let protocol = self.protocol_mut();
        if protocol.sse_progress.is_none() {
            protocol.sse_progress = Some(None);
        }
        self
    }

    /// Like [`sse_progress`](Self::sse_progress), and an event counts only if `filter`
    /// accepts its data (the `data` lines joined with `\n`): for example, reject an OpenAI
    /// chunk whose delta has a role but no content.
    pub fn sse_progress_filter(
        mut self,
        filter: impl Fn(&[u8]) -> bool + Send + Sync + 'static,
    ) -> Self {
        let filter = move |_name: &[u8], data: &[u8]| filter(data);
        let protocol = self.protocol_mut();
        protocol.sse_progress = Some(Some(Arc::new(filter)));
        // A caller's filter sees every event, whatever the framing.
        protocol.sse_progress_is_ours = false;
        self
    }

    /// For the event streams of LLM servers: like
    /// [`sse_progress_filter`](Self::sse_progress_filter) with [`is_llm_output`](crate::is_llm_output),
    /// so the first-frame and idle budgets count only events that carry output (a token of
    /// text, reasoning or a tool call, the end of the answer, an error) by the APIs of
    /// OpenAI (chat completions, Responses), Anthropic (Messages) and the servers compatible
    /// with them (vLLM, llama.cpp, LiteLLM, ...). Keep-alive comments, `event: ping`, empty
    /// events, role-only first chunks and opening events (`response.created`,
    /// `message_start`, ...) leave the clocks running; they are still delivered, in order
    /// (before the first token, held and replayed with it, up to 64 KiB, as with
    /// [`sse_progress`](Self::sse_progress)). Events the rule does not know count, so other
    /// event streams keep their budgets.
    ///
    /// Beyond what `is_llm_output` reads in the data, an event *named* `ping` or as one of
    /// the opening events (`event: message_start`, ...) does not count whatever its data:
    /// sse-starlette's pings used to be `event: ping` with a timestamp for data, and the
    /// `anthropic` SDK takes an event's type from its name when its data has none.
    ///
    /// ```
    /// use std::time::Duration;
    /// use futures::StreamExt;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_stream_deadline::{DeadlineExceeded, DeadlineKind, StreamDeadlineLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// // A server that opens the answer at once, then only keeps the connection alive.
    /// let upstream = tower::service_fn(|_req: http::Request<()>| async {
    ///     let opening = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
    ///     let frames = futures::stream::iter([opening, ": keep-alive\n\n"])
    ///         .map(|event| Ok::<_, std::io::Error>(http_body::Frame::data(bytes::Bytes::from(event))))
    ///         .chain(futures::stream::pending());
    ///     let response = http::Response::builder()
    ///         .header("content-type", "text/event-stream")
    ///         .body(http_body_util::StreamBody::new(frames))
    ///         .unwrap();
    ///     Ok::<_, std::convert::Infallible>(response)
    /// });
    /// let layer = StreamDeadlineLayer::new(Duration::from_secs(45))
    ///     .first_frame(Duration::from_secs(10))
    ///     .llm_progress();
    /// let mut svc = ServiceBuilder::new().layer(layer).service(upstream);
    ///
    /// // No token: the call fails at the first-frame budget (and `RetryFirstFrame` retries it).
    /// let err = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap_err();
    /// let deadline = DeadlineExceeded::find(&*err).unwrap();
    /// assert_eq!(deadline.kind(), DeadlineKind::FirstFrame);
    /// # }
    /// ```
    pub fn llm_progress(mut self) -> Self {
        let filter = Arc::new(crate::llm_progress::is_llm_event);
        let protocol = self.protocol_mut();
        protocol.sse_progress = Some(Some(filter));
        protocol.sse_progress_is_ours = true;
        self
    }

    /// For any other body: a data frame counts as progress (for the first-frame and idle
    /// budgets) only if `filter` accepts its bytes (the first chunk of its buffer). Trailers
    /// always count. Unset, every frame counts and nothing is called.
    pub fn progress(mut self, filter: impl Fn(&[u8]) -> bool + Send + Sync + 'static) -> Self {
        self.protocol_mut().progress = Some(Arc::new(filter));
        self
    }

    fn protocol_mut(&mut self) -> &mut ProtocolConfig {
        Arc::make_mut(self.protocol.get_or_insert_with(Default::default))
    }
}

/// **Observability.** When you want numbers per response (metrics, logs, budget tuning) beyond the
/// `tracing` event each deadline emits.
impl<R> StreamDeadlineLayer<R> {
    /// Call `f` once for every response with its [`Outcome`]: how it ended, time to head and
    /// first frame, longest idle wait, total time, frames and bytes, and the budgets that
    /// applied. Feed your metrics from here.
    ///
    /// It runs on whichever task ends the response (or drops it), so keep it quick and
    /// non-blocking. A panic inside it is caught and logged (`tracing` error) and the
    /// response carries on; while the thread is already unwinding from another panic, the
    /// callback is skipped. Unset, it costs nothing.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_stream_deadline::{Ending, StreamDeadlineLayer};
    ///
    /// let layer = StreamDeadlineLayer::new(Duration::from_secs(45)).on_outcome(|outcome| {
    ///     if let Ending::Deadline(kind) = outcome.ending {
    ///         eprintln!("{kind} deadline after {} frames", outcome.frames);
    ///     }
    /// });
    /// # let _ = layer;
    /// ```
    pub fn on_outcome(mut self, f: impl Fn(&Outcome) + Send + Sync + 'static) -> Self {
        self.on_outcome = Some(OnOutcome::new(f));
        self
    }
}

impl<S, R: Clone> Layer<S> for StreamDeadlineLayer<R> {
    type Service = StreamDeadline<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamDeadline::from_layer(inner, self.clone())
    }
}
