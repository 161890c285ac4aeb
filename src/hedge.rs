//! [`HedgeFirstFrame`]: a second attempt at a request whose first frame is late, raced
//! against the first.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::Request;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;
use crate::attempt::Attempt;
use crate::error::{DeadlineExceeded, DeadlineKind};
use crate::timer::Timer;

/// Applies [`HedgeFirstFrame`]: when an attempt has produced no first frame after a delay,
/// another attempt starts on a clone of the request while the first goes on; the first to
/// answer wins and the others are dropped at once.
///
/// A retry at the [first-frame budget](crate::StreamDeadlineLayer::first_frame) waits out the
/// whole budget before it tries again; a hedge tries again much sooner, without giving up on
/// the attempt that may still answer. Place it *outside* a
/// [`StreamDeadlineLayer`](crate::StreamDeadlineLayer) with a first-frame budget: that
/// layer's call resolves only once the first body frame has come, so "answered" here means
/// "sent its first token". (Under a layer without a first-frame budget the call resolves at
/// the response head, and the race is for the head.)
///
/// Each hedge is marked with its [`Attempt`] number, so a router inside can send it to
/// another backend. With `tower::retry` and [`RetryFirstFrame`](struct.RetryFirstFrame.html)
/// outside it, a request whose every hedge failed is tried again, hedges and all (its docs
/// show the stack).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower::ServiceBuilder;
/// use tower_stream_deadline::{HedgeFirstFrameLayer, StreamDeadlineLayer};
///
/// let upstream = tower::service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
/// });
/// let svc = ServiceBuilder::new()
///     // No first token after 300 ms: another attempt, then a third 300 ms later.
///     .layer(HedgeFirstFrameLayer::new(Duration::from_millis(300), 3))
///     .layer(StreamDeadlineLayer::new(Duration::from_secs(60)).first_frame(Duration::from_secs(10)))
///     .service(upstream);
/// # let _ = svc;
/// ```
#[derive(Clone, Copy, Debug)]
pub struct HedgeFirstFrameLayer {
    after: Duration,
    max_attempts: usize,
}

impl HedgeFirstFrameLayer {
    /// Starts another attempt each time `after` passes with no attempt answered, up to
    /// `max_attempts` in all (counting the first; 0 and 1 mean no hedging).
    ///
    /// An attempt that fails starts the next one at once, while attempts remain, unless it
    /// ran out its total budget. When every attempt has failed, the last error is returned.
    pub fn new(after: Duration, max_attempts: usize) -> Self {
        HedgeFirstFrameLayer {
            after,
            max_attempts,
        }
    }
}

impl<S> Layer<S> for HedgeFirstFrameLayer {
    type Service = HedgeFirstFrame<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HedgeFirstFrame {
            inner,
            after: self.after,
            max_attempts: self.max_attempts,
        }
    }
}

/// Races attempts at a request whose first frame is late: see [`HedgeFirstFrameLayer`].
///
/// Needs a `Clone` request body (buffer a streamed one first, as for
/// [`RetryFirstFrame`](struct.RetryFirstFrame.html)) and a `Clone` inner service: each hedge
/// calls its own clone, once that clone is ready. The first attempt goes to the service
/// itself, so it costs a clone of the request and of the service per call, and the hedges a
/// boxed future each.
#[derive(Clone, Debug)]
pub struct HedgeFirstFrame<S> {
    inner: S,
    after: Duration,
    max_attempts: usize,
}

impl<S, B> Service<Request<B>> for HedgeFirstFrame<S>
where
    S: Service<Request<B>> + Clone,
    S::Error: Into<BoxError>,
    B: Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = HedgeFuture<S, Request<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let hedges = self.max_attempts.saturating_sub(1);
        let next_at = Instant::now().checked_add(self.after);
        let spare = match (hedges, next_at) {
            (0, _) | (_, None) => None,
            (_, Some(_)) => {
                let mut template = request.clone();
                Attempt::mark_next(&mut template);
                Some(Spare {
                    service: self.inner.clone(),
                    template,
                    left: hedges,
                })
            }
        };
        let first = Box::pin(Launch::Calling {
            future: self.inner.call(request),
        });
        HedgeFuture {
            attempts: vec![first],
            spare,
            after: self.after,
            next_at: next_at.unwrap_or_else(Instant::now),
            timer: Timer::new(),
            error: None,
        }
    }
}

/// What it takes to start the next hedge.
struct Spare<S, Req> {
    service: S,
    /// The request for the next hedge, marked with its attempt number.
    template: Req,
    left: usize,
}

/// The future of [`HedgeFirstFrame`]: every attempt in flight, and the timer of the next.
pub struct HedgeFuture<S, Req>
where
    S: Service<Req>,
{
    attempts: Vec<Pin<Box<Launch<S, Req>>>>,
    // `None` once no hedge is left to start.
    spare: Option<Spare<S, Req>>,
    after: Duration,
    next_at: Instant,
    timer: Timer,
    // The latest failure, returned if every attempt fails.
    error: Option<BoxError>,
}

pin_project! {
    /// One attempt: its service made ready, then called.
    #[project = LaunchProj]
    enum Launch<S, Req>
    where
        S: Service<Req>,
    {
        Ready { service: S, request: Option<Req> },
        Calling { #[pin] future: S::Future },
    }
}

impl<S, Req> Future for Launch<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                LaunchProj::Ready { service, request } => {
                    if let Err(err) = ready!(service.poll_ready(cx)) {
                        return Poll::Ready(Err(err.into()));
                    }
                    let Some(request) = request.take() else {
                        return Poll::Ready(Err(POLLED_AFTER_COMPLETION.into()));
                    };
                    let future = service.call(request);
                    self.set(Launch::Calling { future });
                }
                LaunchProj::Calling { future } => return future.poll(cx).map_err(Into::into),
            }
        }
    }
}

const POLLED_AFTER_COMPLETION: &str =
    "tower-stream-deadline: a hedged attempt was polled after it completed";

// Every field is either boxed or not pinned.
impl<S: Service<Req>, Req> Unpin for HedgeFuture<S, Req> {}

impl<S, B> HedgeFuture<S, Request<B>>
where
    S: Service<Request<B>> + Clone,
    B: Clone,
{
    /// Starts the next hedge, if one is left.
    fn launch(&mut self) -> bool {
        let last = match &mut self.spare {
            None => return false,
            Some(spare) => {
                spare.left = spare.left.saturating_sub(1);
                spare.left == 0
            }
        };
        let (service, request) = match (last, &mut self.spare) {
            (false, Some(spare)) => {
                let request = spare.template.clone();
                Attempt::mark_next(&mut spare.template);
                (spare.service.clone(), request)
            }
            // The last hedge takes what was kept for it.
            _ => match self.spare.take() {
                Some(spare) => (spare.service, spare.template),
                None => return false,
            },
        };
        self.attempts.push(Box::pin(Launch::Ready {
            service,
            request: Some(request),
        }));
        true
    }
}

impl<S, B> Future for HedgeFuture<S, Request<B>>
where
    S: Service<Request<B>> + Clone,
    S::Error: Into<BoxError>,
    B: Clone,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            let mut i = 0;
            while i < this.attempts.len() {
                match this.attempts[i].as_mut().poll(cx) {
                    Poll::Pending => i += 1,
                    Poll::Ready(Ok(response)) => {
                        // The others are dropped here: their requests are cancelled.
                        this.attempts.clear();
                        this.spare = None;
                        return Poll::Ready(Ok(response));
                    }
                    Poll::Ready(Err(err)) => {
                        drop(this.attempts.swap_remove(i));
                        let out_of_time = DeadlineExceeded::find(&*err)
                            .is_some_and(|d| d.kind() == DeadlineKind::Total);
                        this.error = Some(err);
                        if out_of_time {
                            this.spare = None;
                        } else if this.launch() {
                            this.next_at = Instant::now()
                                .checked_add(this.after)
                                .unwrap_or(this.next_at);
                        }
                    }
                }
            }
            if this.attempts.is_empty() {
                let err = this.error.take();
                return Poll::Ready(Err(err.unwrap_or_else(|| POLLED_AFTER_COMPLETION.into())));
            }
            if this.spare.is_none() {
                return Poll::Pending;
            }
            ready!(this.timer.poll_at(this.next_at, cx));
            tracing::debug!(
                target: "tower_stream_deadline",
                after = ?this.after,
                "no first frame yet: starting another attempt"
            );
            this.launch();
            this.next_at = this.next_at.checked_add(this.after).unwrap_or(this.next_at);
        }
    }
}

impl<S: Service<Req>, Req> fmt::Debug for HedgeFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeFuture")
            .field("in_flight", &self.attempts.len())
            .field("hedges_left", &self.spare.as_ref().map_or(0, |s| s.left))
            .field("next_at", &self.next_at)
            .finish_non_exhaustive()
    }
}
