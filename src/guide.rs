//! How to place the layer, and what each kind of client sees when a deadline fires.
//!
//! This module holds no code: it is the crate's guide.
//!
//! # Placing the layer
//!
//! The clock starts at `call`, so the layer bounds whatever is inside it. One absolute
//! [`Deadline`](crate::Deadline) travels inward in the request's extensions: every
//! `StreamDeadline` further in takes the earlier of its own total deadline and the one it
//! finds, so stacked layers agree.
//!
//! ## On a client (the model server is upstream)
//!
//! ```text
//! ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryFirstFrame::new(2)))   // retries stuck attempts
//!     .layer(StreamDeadlineLayer::new(45s).first_frame(10s).idle(5s))
//!     .service(hyper_util_client)
//! ```
//!
//! At a deadline the hyper client's response body is dropped: on HTTP/1 the connection is
//! closed (it cannot be reused mid-body), on HTTP/2 the stream is reset with `CANCEL`.
//! Either way the server sees its client go away and can stop generating.
//!
//! Streams of small frames want `TCP_NODELAY` on the client's connector
//! (`HttpConnector::set_nodelay(true)`, as reqwest does by default): without it, Nagle's
//! algorithm can hold a small request or frame back for tens of milliseconds, which the
//! budgets then count.
//!
//! ## With retries: per attempt, overall, or both
//!
//! - **Inside** `tower::retry` (as above), each attempt gets the full budgets.
//! - **Outside** it, one budget bounds all attempts together; each attempt's request
//!   carries the [`Deadline`](crate::Deadline) of what is left.
//! - **Both**: an outer layer for the overall budget (60 s) and an inner one per attempt
//!   (20 s, first frame 10 s). The inner layer takes whichever deadline comes first, so the
//!   last attempt never outlives the overall budget. When what is left of the overall
//!   budget is shorter than an attempt's first-frame budget, the first-frame budget no
//!   longer applies to it (the total wins, as always) and that attempt ends as `Total`.
//!
//! ## Hedging, and sending retries elsewhere
//!
//! A retry waits out a whole first-frame budget before it tries again;
//! [`HedgeFirstFrameLayer`](crate::HedgeFirstFrameLayer), in the same place as the retry
//! layer, starts another attempt after a shorter delay while the first goes on, and keeps
//! the first to send a token. A replica that left one request stuck is usually stuck for the
//! next, so a retry or a hedge is worth more on another backend: both mark each request they
//! send again with its [`Attempt`](crate::Attempt) number, which a router between them and
//! the backends reads (first attempts to one backend, the second to the next, and so on).
//! The router sits *inside* the deadline layer when it only picks where to send, or
//! *outside* it (between the retry and the deadline layers) when it also learns from each
//! attempt's outcome, as the `stream-deadline-gateway`'s does: there a first-frame deadline
//! is an error it sees. With
//! [`sse_first_event_errors`](crate::StreamDeadlineLayer::sse_first_event_errors), a first
//! event that says the answer failed (an overloaded server's `200` and `event: error`) is
//! a failed attempt too.
//!
//! ## On a server (axum, hyper)
//!
//! Wrap the router or one route. The body of each response becomes a `DeadlineBody`, and
//! the layer's errors must become responses: map them with `HandleErrorLayer`
//! (`DeadlineExceeded` before the head → `504 Gateway Timeout`). After the head there is no
//! status to change: the stream is cut (HTTP/1: the connection closes before the final
//! chunk; HTTP/2: the stream is reset), unless a protocol ending applies (below). Handlers
//! read their remaining time from the [`Deadline`](crate::Deadline) extension, and with
//! [`read_grpc_timeout`](crate::StreamDeadlineLayer::read_grpc_timeout) or
//! [`read_timeout_header`](crate::StreamDeadlineLayer::read_timeout_header) a client's
//! header may shorten (never lengthen) the budget.
//!
//! ## In a proxy or gateway
//!
//! Put the layer on the upstream client, so the upstream is released the moment a deadline
//! fires, and the response streams back to the downstream client frame by frame. Turn on
//! [`release_unpolled`](crate::StreamDeadlineLayer::release_unpolled): a proxy polls the
//! body only while its downstream client takes bytes, so a client that stops reading
//! without closing (a stuck browser tab, a full TCP window) stops the polls, and without
//! it the upstream would keep generating until the client goes. With it the upstream is
//! dropped at the deadline anyway, and the client gets the ending when it reads again.
//! Turn on
//! [`forward_grpc_timeout`](crate::StreamDeadlineLayer::forward_grpc_timeout) (or
//! [`forward_timeout_header`](crate::StreamDeadlineLayer::forward_timeout_header)) with a
//! [`forward_margin`](crate::StreamDeadlineLayer::forward_margin) so the next hop knows how
//! long it has: each hop then sees less time than the one before, and the last hop's
//! stream is cut at the first hop's deadline.
//!
//! # What a client sees
//!
//! | where | ending | what the client sees |
//! |---|---|---|
//! | before the head, any | — | the call fails with `DeadlineExceeded` (a server maps it, e.g. to `504`) |
//! | before the head, gRPC request | [`grpc_endings`](crate::StreamDeadlineLayer::grpc_endings) | a trailers-only response, `grpc-status: 4`: `DEADLINE_EXCEEDED` |
//! | after the head, any | default | the body fails with `DeadlineExceeded`; served by hyper: HTTP/1 connection closed before the last chunk (clients report an incomplete body), HTTP/2 `RST_STREAM` with `INTERNAL_ERROR`, or `CANCEL` with the `h2` feature |
//! | after the head, `application/grpc*` | [`grpc_endings`](crate::StreamDeadlineLayer::grpc_endings) | every whole message sent before the deadline (a message half sent is held back and dropped), then trailers `grpc-status: 4` and a `grpc-message` naming the budget: tonic reports `Code::DeadlineExceeded` |
//! | after the head, `text/event-stream` | [`sse_endings`](crate::StreamDeadlineLayer::sse_endings) | every complete event (a half-sent event is dropped whole), then the error event below and a clean end |
//! | upstream fails after the head, `text/event-stream` | [`sse_upstream_errors`](crate::StreamDeadlineLayer::sse_upstream_errors) | every complete event, then the error event below with `"type":"upstream_error"`, and a clean end; `on_outcome` still reports `Ending::UpstreamError` |
//! | upstream fails after the head, any | default | the upstream's error, passed on as it is |
//!
//! ## The SSE error event, by client
//!
//! One event serves the OpenAI and Anthropic APIs alike, so nothing needs configuring:
//!
//! ```text
//! event: error
//! data: {"type":"error","error":{"type":"timeout","code":"deadline_exceeded","message":"stream deadline exceeded: total budget of 45s ran out after 45.001s","param":null}}
//! ```
//!
//! The `openai` SDK raises any event whose data holds an `error` object, whatever its name;
//! the `anthropic` SDK ignores events without a name and raises the one named `error`. An
//! upstream failure gives `"type":"upstream_error","code":"upstream_failed"` and a message
//! `upstream failed mid-stream: ...`. Measured with the pinned SDKs through the gateway
//! (`tests/python/endings.py`); the last column against the same upstream read directly, as
//! a client reads any body cut short; the `EventSource` row is the HTML event-stream rules:
//!
//! | client | deadline | upstream fails mid-stream, with `sse_upstream_errors` | upstream fails, without |
//! |---|---|---|---|
//! | `openai` 3.57, `chat.completions.create(stream=True)` | `openai.APIError`, `.type == "timeout"`, `.code == "deadline_exceeded"`, the message naming the budget | `openai.APIError`, `.type == "upstream_error"` | `openai.APIConnectionError` ("Connection error.") |
//! | `openai` 3.57, Responses (`responses.create(stream=True)`) | the same `openai.APIError` | the same `openai.APIError` | `openai.APIConnectionError` |
//! | `anthropic` 2.14, `messages.stream` (and LangChain's `ChatAnthropic`) | `anthropic.APIStatusError`, `.type == "timeout"`, `.body["error"]` as sent | `anthropic.APIStatusError`, `.type == "upstream_error"` | `httpx2.RemoteProtocolError` (incomplete chunked read), not even an `anthropic` error |
//! | a browser `EventSource` | an `error` event with the JSON as its `data` (`addEventListener("error", ...)`) | the same | the connection's `error` event, no data |
//!
//! Why not OpenAI's data-only `data: {"error":{...}}`: the `openai` SDK raises it, but the
//! `anthropic` SDK skips an event without a name and ends the stream silently, the answer
//! looking complete. OpenAI's Responses API names its own failure event
//! `error` with a flat `{"type":"error","code":..,"message":..}`, which the `openai` SDK
//! yields as an event instead of raising; the nested `error` object is what it raises.
//! [`sse_ending_event`](crate::StreamDeadlineLayer::sse_ending_event) replaces the deadline
//! event for other shapes.
//!
//! # Progress that counts
//!
//! Keep-alives make a stuck stream look alive. With
//! [`sse_progress`](crate::StreamDeadlineLayer::sse_progress) (and optionally a filter over
//! each event's data, such as "an OpenAI delta with content"), or
//! [`progress`](crate::StreamDeadlineLayer::progress) for other bodies, only frames that
//! count reset the idle clock and end the first-frame wait. The others are still delivered
//! in order and at once; only the clocks ignore them.
//! [`llm_progress`](crate::StreamDeadlineLayer::llm_progress) is that filter made for LLM
//! servers ([`is_llm_output`](crate::is_llm_output)): a token of text, reasoning or a tool
//! call counts; keep-alives, role-only first chunks and opening events such as
//! `response.created` or `message_start` do not.
//!
//! # What it costs
//!
//! Per frame, the body reads tokio's clock once (when a total deadline is set or it has
//! been waiting) and compares two instants. It touches its timer only when upstream has
//! nothing ready, and then only when something changed: the timer is armed once, keeps the
//! waker of the task that waits, and is polled again only when another task polls the body
//! or the timer fired early (an idle deadline that moves with every frame is re-armed
//! lazily, once per idle period). A response allocates its timer (one `Box`) the first time
//! it has to wait, and the `Deadline` extension is inserted into each request (three
//! allocations when the request had no extensions yet); under a first-frame budget the
//! upstream body is boxed with the frames taken from it. Deadlines fire on tokio's 1 ms
//! timer tick: never before the deadline, and after it by at most a tick plus scheduling
//! delay.
//!
//! Measured on a 2-core VM (`BENCHMARKS.md` has the commands, the load and the rest):
//!
//! | | this crate | tower-http `DeadlineBody` | tower-http `TimeoutBody` |
//! |---|---:|---:|---:|
//! | per frame, always ready (bare: 13 ns) | 55 ns | 29 ns | 749 ns |
//! | per frame after a wait, total / total+idle (bare: 15 ns) | 69 / 112 ns | 48 ns | 813 ns |
//! | bytes a stalled stream holds beyond its body | 239 | 119 | 135 |
//!
//! Most of the per-frame cost is the clock read (33 ns on that VM). It is the price of an
//! exact rule on every runtime: tower-http's `DeadlineBody` polls its registered timer
//! instead, which is cheaper but lets frames through until tokio's timer driver has run.
//! The idle budget costs one more clock read per wait, because it counts from the moment the
//! body starts waiting, so a slow caller is not charged to the upstream.
