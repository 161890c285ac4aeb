//! [`StreamDeadline`]: the service that starts the clock at `call`.

use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower_service::Service;

use crate::BoxError;
use crate::body::DeadlineBody;
use crate::deadline::Deadlines;
use crate::future::ResponseFuture;
use crate::grpc;
use crate::layer::StreamDeadlineLayer;
use crate::outcome::{OnOutcome, Recorder};
use crate::release::{ReleaseOnPoll, ReleaseUnpolled};
use crate::request::{Deadline, OnRequestOutcome, RequestBudgets};

/// Puts a total budget (and optionally first-frame and idle budgets) on every response of
/// the inner service, head and body alike.
///
/// Usually built by [`StreamDeadlineLayer`]. The clock starts when [`call`](Service::call)
/// is made; `poll_ready` passes through untimed, so time spent waiting for capacity (a
/// concurrency limit, a connection pool) is not charged to the request.
///
/// `R` is the layer's [`ReleaseOnPoll`] (the default: no bound on the inner service's body
/// beyond `Body`) or [`ReleaseUnpolled`] (`Send + 'static` bodies, for the watcher task of
/// [`release_unpolled`](StreamDeadlineLayer::release_unpolled)).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower::{Service, ServiceExt};
/// use tower_stream_deadline::StreamDeadline;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let upstream = tower::service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
///         bytes::Bytes::from_static(b"hello"),
///     )))
/// });
/// let mut svc = StreamDeadline::new(upstream, Duration::from_secs(45));
/// let response = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
/// let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
/// assert_eq!(body.to_bytes(), "hello");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct StreamDeadline<S, R = ReleaseOnPoll> {
    inner: S,
    layer: StreamDeadlineLayer<R>,
}

impl<S> StreamDeadline<S> {
    /// Wraps `inner` with a total budget only. Use [`StreamDeadlineLayer`] to set the
    /// first-frame and idle budgets too.
    pub fn new(inner: S, total: Duration) -> Self {
        StreamDeadline::from_layer(inner, StreamDeadlineLayer::new(total))
    }
}

impl<S, R> StreamDeadline<S, R> {
    pub(crate) fn from_layer(inner: S, layer: StreamDeadlineLayer<R>) -> Self {
        StreamDeadline { inner, layer }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, B> Service<Request<ReqBody>> for StreamDeadline<S>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Data: 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<DeadlineBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        self.start(req, false)
    }
}

/// The same service, whose bodies a watcher task releases at the deadline even when nobody
/// polls them: the task holds the body, hence `Send + 'static`.
impl<S, ReqBody, B> Service<Request<ReqBody>> for StreamDeadline<S, ReleaseUnpolled>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<DeadlineBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, B, ReleaseUnpolled>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        self.start(req, true)
    }
}

impl<S, R> StreamDeadline<S, R> {
    /// Starts the clock on `req` and calls the inner service with it; `watched` takes the
    /// runtime of this call for the watcher of `release_unpolled`.
    fn start<ReqBody, B>(
        &mut self,
        mut req: Request<ReqBody>,
        watched: bool,
    ) -> ResponseFuture<S::Future, B, R>
    where
        S: Service<Request<ReqBody>, Response = Response<B>>,
        B: Body,
    {
        // Read before the inner `call`, which may already do work (start a connection).
        let now = Instant::now();
        let deadlines = self.deadlines(&req, now);
        if let Some(at) = deadlines.total() {
            // An outer layer's deadline no later than ours already says it all.
            if req
                .extensions()
                .get::<Deadline>()
                .is_none_or(|d| d.at() > at)
            {
                req.extensions_mut().insert(Deadline::new(at));
            }
            let headers = &self.layer.headers;
            if headers.forwards() {
                headers.forward(req.headers_mut(), at.saturating_duration_since(now));
            }
        }
        let on_outcome = match req.extensions().get::<OnRequestOutcome>() {
            None => self.layer.on_outcome.clone(),
            Some(per_request) => Some(OnOutcome::both(
                self.layer.on_outcome.clone(),
                per_request.0.clone(),
            )),
        };
        let recorder = Recorder::new(&deadlines, on_outcome);
        let protocol = self.layer.protocol.clone();
        let grpc_request =
            protocol.as_ref().is_some_and(|p| p.grpc_endings) && grpc::is_grpc(req.headers());
        ResponseFuture::new(
            self.inner.call(req),
            deadlines,
            recorder,
            protocol,
            grpc_request,
            watched,
        )
    }

    /// The deadlines for `req`: the layer's budgets, overridden by the request's
    /// `RequestBudgets`, then shortened (never lengthened) by a `Deadline` the request
    /// carries and by its timeout headers.
    fn deadlines<ReqBody>(&self, req: &Request<ReqBody>, now: Instant) -> Deadlines {
        let extensions = req.extensions();
        let budgets = match extensions.get::<RequestBudgets>() {
            Some(overrides) => overrides.apply(self.layer.budgets),
            None => self.layer.budgets,
        };
        let mut deadlines = budgets.start(now);
        if let Some(outer) = extensions.get::<Deadline>() {
            deadlines.cap_total(outer.at());
        }
        let headers = &self.layer.headers;
        if headers.reads() {
            if let Some(at) = headers.read(req.headers()).and_then(|d| now.checked_add(d)) {
                deadlines.cap_total(at);
            }
        }
        deadlines
    }
}
