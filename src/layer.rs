//! [`StreamDeadlineLayer`]: the budgets, as a `tower::Layer`.

use std::time::Duration;

use http::HeaderName;
use tower_layer::Layer;

use crate::budget::Budgets;
use crate::outcome::{OnOutcome, Outcome};
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
#[derive(Clone, Debug)]
pub struct StreamDeadlineLayer {
    pub(crate) budgets: Budgets,
    pub(crate) headers: HeaderRules,
    pub(crate) on_outcome: Option<OnOutcome>,
}

impl StreamDeadlineLayer {
    /// A layer with a total budget for each response: from `call`, through the head, to the
    /// end of the body.
    pub fn new(total: Duration) -> Self {
        StreamDeadlineLayer {
            budgets: Budgets::new(total),
            headers: HeaderRules::default(),
            on_outcome: None,
        }
    }

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

impl<S> Layer<S> for StreamDeadlineLayer {
    type Service = StreamDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamDeadline::from_layer(inner, self.clone())
    }
}
