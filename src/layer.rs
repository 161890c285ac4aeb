//! [`StreamDeadlineLayer`]: the budgets, as a `tower::Layer`.

use std::time::Duration;

use tower_layer::Layer;

use crate::budget::Budgets;
use crate::service::StreamDeadline;

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
    budgets: Budgets,
}

impl StreamDeadlineLayer {
    /// A layer with a total budget for each response: from `call`, through the head, to the
    /// end of the body.
    pub fn new(total: Duration) -> Self {
        StreamDeadlineLayer {
            budgets: Budgets::new(total),
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

    pub(crate) fn budgets(&self) -> Budgets {
        self.budgets
    }
}

impl<S> Layer<S> for StreamDeadlineLayer {
    type Service = StreamDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamDeadline::from_layer(inner, self)
    }
}
