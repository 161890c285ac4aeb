//! What a request carries for the layer: its absolute [`Deadline`], and per-request
//! [`RequestBudgets`] set by application code.

use std::time::Duration;

use tokio::time::Instant;

use crate::budget::Budgets;

/// The absolute deadline of a request, carried in its extensions.
///
/// [`StreamDeadline`](crate::StreamDeadline) inserts it into every request it passes inward
/// (when its total deadline is finite), so that:
/// - a `StreamDeadline` further in takes the earlier of its own total deadline and this one:
///   stacked layers agree, and an outer layer placed outside `tower::retry` bounds all
///   attempts while an inner one bounds each;
/// - the inner service (an axum handler, say) can read how long it has left.
///
/// Application code may insert one too, to set a deadline for a request that reaches the
/// layer later; the layer only ever moves its deadline earlier, never later.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_stream_deadline::Deadline;
///
/// // In an axum handler: `Extension(deadline): Extension<Deadline>`, or from the request:
/// fn time_left(req: &http::Request<()>) -> Option<Duration> {
///     req.extensions().get::<Deadline>().map(Deadline::remaining)
/// }
/// # let _ = time_left;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// A deadline at `at`, on tokio's clock.
    pub fn new(at: Instant) -> Self {
        Deadline { at }
    }

    /// The instant the request runs out of time.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// How long is left from now (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }
}

/// Budgets for one request, overriding the layer's: insert into the request's extensions
/// before `call`.
///
/// Each budget set here replaces the layer's for this request (longer or shorter: this is
/// the application speaking, not the client); budgets left unset keep the layer's. A
/// [`Deadline`] or a timeout header on the request can still only shorten the total.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_stream_deadline::RequestBudgets;
///
/// let mut req = http::Request::new(());
/// // A long report: more time in all, but the first token must still come quickly.
/// req.extensions_mut().insert(
///     RequestBudgets::new().total(Duration::from_secs(300)).first_frame(Duration::from_secs(5)),
/// );
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestBudgets {
    total: Option<Duration>,
    first_frame: Option<Duration>,
    idle: Option<Duration>,
}

impl RequestBudgets {
    /// No overrides yet.
    pub fn new() -> Self {
        RequestBudgets::default()
    }

    /// The total budget for this request.
    pub fn total(mut self, budget: Duration) -> Self {
        self.total = Some(budget);
        self
    }

    /// The first-frame budget for this request.
    pub fn first_frame(mut self, budget: Duration) -> Self {
        self.first_frame = Some(budget);
        self
    }

    /// The idle budget for this request.
    pub fn idle(mut self, budget: Duration) -> Self {
        self.idle = Some(budget);
        self
    }

    pub(crate) fn apply(&self, mut budgets: Budgets) -> Budgets {
        if let Some(total) = self.total {
            budgets.total = total;
        }
        if self.first_frame.is_some() {
            budgets.first_frame = self.first_frame;
        }
        if self.idle.is_some() {
            budgets.idle = self.idle;
        }
        budgets
    }
}

/// A callback for the [`Outcome`](crate::Outcome) of one request, carried in its extensions.
///
/// [`StreamDeadline`](crate::StreamDeadline) reports each response's outcome to the layer's
/// [`on_outcome`](crate::StreamDeadlineLayer::on_outcome) callback and then to this one, if
/// the request carries it: the way to tie an outcome to the request it belongs to (its log
/// line, its caller) without building a layer per request. Under `tower::retry` the request
/// is cloned with its extensions, so the callback hears every attempt, in order.
///
/// Each response lets go of the callback as soon as it has run: what the callback holds (a
/// log line written when its last reference goes, say) is released when the response ends,
/// not when its body is dropped, nor when the watcher of
/// [`release_unpolled`](crate::StreamDeadlineLayer::release_unpolled) lets go of it.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower::{Layer, Service, ServiceExt};
/// use tower_stream_deadline::{Ending, OnRequestOutcome, StreamDeadlineLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let upstream = tower::service_fn(|_req: http::Request<()>| async {
///     let body = http_body_util::Full::new(bytes::Bytes::from_static(b"hello"));
///     Ok::<_, std::convert::Infallible>(http::Response::new(body))
/// });
/// let mut svc = StreamDeadlineLayer::new(Duration::from_secs(45)).layer(upstream);
///
/// let (tx, rx) = std::sync::mpsc::channel();
/// let mut req = http::Request::new(());
/// req.extensions_mut()
///     .insert(OnRequestOutcome::new(move |outcome| tx.send(outcome.ending).unwrap()));
/// let response = svc.ready().await.unwrap().call(req).await.unwrap();
/// http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
/// assert_eq!(rx.recv().unwrap(), Ending::Completed);
/// # }
/// ```
#[derive(Clone)]
pub struct OnRequestOutcome(pub(crate) std::sync::Arc<dyn Fn(&crate::Outcome) + Send + Sync>);

impl OnRequestOutcome {
    /// Calls `f` once with the outcome of each response made for this request.
    pub fn new(f: impl Fn(&crate::Outcome) + Send + Sync + 'static) -> Self {
        OnRequestOutcome(std::sync::Arc::new(f))
    }
}

impl std::fmt::Debug for OnRequestOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnRequestOutcome(..)")
    }
}
