//! A hard time budget on streamed HTTP responses, enforced wherever the body is polled.
//!
//! # The problem
//!
//! A model server streaming tokens over SSE can babble for ten minutes. Per-read timeouts
//! never fire (each chunk arrives quickly), and a timer tied to one task watches the wrong
//! task as soon as frames are polled from another (a proxy, hyper, or an executor that
//! moves the body). Meanwhile the caller has given up and the GPU generates for nobody.
//!
//! # The model
//!
//! [`StreamDeadlineLayer`] wraps any service returning `http::Response<B>` (a hyper client,
//! an axum router, a tonic channel, a proxy) with up to three budgets:
//!
//! | budget | counts from | covers | on expiry |
//! |---|---|---|---|
//! | total ([`new`](StreamDeadlineLayer::new)) | `call` | head and whole body | `DeadlineKind::Total` |
//! | [`first_frame`](StreamDeadlineLayer::first_frame) | `call` | head and first body frame | `DeadlineKind::FirstFrame`, an error of the *call* |
//! | [`idle`](StreamDeadlineLayer::idle) | each time the body starts to wait | the wait for the next frame | `DeadlineKind::Idle` |
//!
//! - **Before the head** (and, under a first-frame budget, before the first frame), the
//!   [`ResponseFuture`] fails with a boxed [`DeadlineExceeded`] and drops the inner future,
//!   cancelling the request. A first-frame failure is an error of the call, so
// A relative link: docs built without the `retry` feature then have no broken link.
//!   `tower::retry` can restart a stuck request
//!   ([`RetryFirstFrame`](struct.RetryFirstFrame.html), feature `retry`).
//! - **After the head**, the [`DeadlineBody`] checks the clock on every frame it takes from
//!   upstream and, while it waits, holds one tokio timer that wakes whichever task polled it
//!   last. A frame taken at or after the deadline is not delivered: the upstream body is
//!   dropped at once (closing the HTTP/1 connection or resetting the HTTP/2 stream, so the
//!   server stops generating) and the body yields the error, then ends.
//! - **Even unpolled** (opt-in, [`release_unpolled`](StreamDeadlineLayer::release_unpolled)):
//!   without it the deadline is observed by a poll or by the timer waking a waiting task, so
//!   a body nobody polls (a proxy whose client stopped reading) keeps its upstream. With it,
//!   a watcher task on the runtime of `call` drops the upstream at the total or idle
//!   deadline whether or not anyone polls, and reports the outcome then. It costs a lock per
//!   poll and a task per response that streams (an answer whose upstream has ended by the
//!   time it is handed over needs none), and the task needs `Send + 'static` bodies (hyper's,
//!   axum's and tonic's are): the layer becomes a `StreamDeadlineLayer<`[`ReleaseUnpolled`]`>`,
//!   and only its service asks for that bound. Without it the layer puts no bound on your
//!   service or its body beyond `Body`.
//! - **Anywhere.** The deadline is a property of the body, not of a task: it holds when each
//!   frame is polled by a new task, on another thread, or on a thread with no runtime (the
//!   timer belongs to the runtime where `call` was made). Where no timer can be had at all
//!   (no runtime, a runtime without timers, or one that has shut down), the clock is still
//!   checked on every poll, and no panic escapes (in a runtime built without timers,
//!   tokio's own timer constructor panics: the crate catches it, but the panic hook still
//!   prints it once per response).
//! - **Errors** are `Box<dyn Error + Send + Sync>`. Deadlines are [`DeadlineExceeded`], with
//!   [`kind`](DeadlineExceeded::kind), [`budget`](DeadlineExceeded::budget) and
//!   [`elapsed`](DeadlineExceeded::elapsed); [`DeadlineExceeded::find`] finds one behind
//!   wrappers (hyper, axum). Upstream errors pass through untouched.
//! - **The clock** is tokio's (`tokio::time::Instant`, `sleep_until`), so tests on a paused
//!   clock are exact. Deadlines fire on tokio's 1 ms timer tick, at the deadline or up to one
//!   tick (plus scheduling) after it, never before.
//! - **One deadline across layers.** The layer inserts the absolute [`Deadline`] into the
//!   request it passes on; inner layers take the earlier deadline, handlers read what is
//!   left, [`RequestBudgets`] override budgets per request, and (opt-in) `grpc-timeout` or a
//!   plain header may shorten the budget and is forwarded to the next hop.
//! - **Protocol endings and progress** (opt-in): gRPC streams end with `grpc-status: 4`,
//!   SSE streams with a final error event; keep-alives need not count as progress, and
//!   for LLM servers only tokens do ([`llm_progress`](StreamDeadlineLayer::llm_progress)).
//! - **Observability.** Every response ends with one [`Outcome`] (to a callback set with
//!   [`on_outcome`](StreamDeadlineLayer::on_outcome), and to the request's own
//!   [`OnRequestOutcome`], if it carries one) and one `tracing` event (target
//!   `tower_stream_deadline`): WARN with kind, budget, elapsed, frames and bytes when a
//!   deadline fires, DEBUG otherwise. Nothing is emitted per frame.
//!
//! The layer's builder methods come in groups, each for one concern:
//! [budgets](StreamDeadlineLayer#budgets), [propagation](StreamDeadlineLayer#propagation)
//! across hops, [protocol endings](StreamDeadlineLayer#protocol-endings),
//! [progress](StreamDeadlineLayer#progress) filters and
//! [observability](StreamDeadlineLayer#observability).
//!
//! The [`guide`] tells where to place the layer (client, server, proxy, with retries) and
//! what each kind of client sees when a deadline fires.
//!
//! # Example: a hyper client with a babbling model server
//!
//! ```no_run
//! use std::time::Duration;
//! use http_body_util::{BodyExt, Empty};
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_stream_deadline::{DeadlineExceeded, StreamDeadlineLayer};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
//! let mut svc = ServiceBuilder::new()
//!     .layer(
//!         StreamDeadlineLayer::new(Duration::from_secs(45))
//!             .first_frame(Duration::from_secs(10))
//!             .idle(Duration::from_secs(5)),
//!     )
//!     .service(client);
//!
//! let request = http::Request::get("http://127.0.0.1:8000/v1/chat/completions").body(Empty::new())?;
//! let mut body = svc.ready().await?.call(request).await?.into_body();
//! while let Some(frame) = body.frame().await {
//!     match frame {
//!         Ok(frame) => { /* a token, delivered as it arrives */ let _ = frame; }
//!         Err(err) => match DeadlineExceeded::find(&*err) {
//!             Some(deadline) => eprintln!("cut: {deadline}"),
//!             None => eprintln!("upstream failed: {err}"),
//!         },
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Compared with other timeouts
//!
//! - `tower::timeout` bounds only the wait for the response head: a streaming body runs
//!   forever.
//! - tower-http's `TimeoutBody` is an idle timeout per frame (a babbling stream never trips
//!   it), and it re-arms a timer on every frame; its `DeadlineBody` bounds the body but not
//!   the head, and polls its timer on every frame. Here one clock runs from `call` to the
//!   last frame, the error says which budget ran out, and the timer is touched only when the
//!   body has to wait.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `retry` | on | [`RetryFirstFrame`](struct.RetryFirstFrame.html), a `tower::retry::Policy` for calls stuck before their first frame (depends on `tower`) |
//! | `h2` | off | deadlines carry an HTTP/2 `CANCEL` reason in their source chain, so a hyper server resets a late HTTP/2 stream with `CANCEL` instead of `INTERNAL_ERROR` (depends on `h2`) |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

mod attempt;
mod body;
mod budget;
mod deadline;
mod error;
mod first_event_error;
mod future;
mod grpc;
mod grpc_frames;
pub mod guide;
mod hedge;
mod layer;
mod llm_progress;
mod outcome;
mod protocol;
mod release;
mod replay;
mod request;
#[cfg(feature = "retry")]
mod retry;
mod service;
mod sse;
mod timeout_header;
mod timer;
mod watch;

pub use attempt::Attempt;
pub use body::DeadlineBody;
pub use error::{DeadlineExceeded, DeadlineKind};
pub use first_event_error::UpstreamErrorEvent;
pub use future::ResponseFuture;
pub use hedge::{HedgeFirstFrame, HedgeFirstFrameLayer, HedgeFuture};
pub use layer::StreamDeadlineLayer;
pub use llm_progress::is_llm_output;
pub use outcome::{Ending, Outcome};
pub use release::{ReleaseOnPoll, ReleaseUnpolled};
pub use request::{Deadline, OnRequestOutcome, RequestBudgets};
#[cfg(feature = "retry")]
pub use retry::RetryFirstFrame;
pub use service::StreamDeadline;
pub use sse::error_event as sse_error_event;

// The README's Rust snippets are complete programs, compiled (not run) as doctests. They use
// `RetryFirstFrame`, so they are compiled with the `retry` feature.
#[cfg(all(doctest, feature = "retry"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The error type of [`StreamDeadline`] and [`DeadlineBody`]: upstream errors as they are,
/// or a [`DeadlineExceeded`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
