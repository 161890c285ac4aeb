//! [`StreamDeadline`]: the service that starts the clock at `call`.

use std::task::{Context, Poll};
use std::time::Duration;

use http::Response;
use http_body::Body;
use tokio::time::Instant;
use tower_service::Service;

use crate::BoxError;
use crate::body::DeadlineBody;
use crate::budget::Budgets;
use crate::future::ResponseFuture;
use crate::layer::StreamDeadlineLayer;

/// Puts a total budget (and optionally first-frame and idle budgets) on every response of
/// the inner service, head and body alike.
///
/// Usually built by [`StreamDeadlineLayer`]. The clock starts when [`call`](Service::call)
/// is made; `poll_ready` passes through untimed, so time spent waiting for capacity (a
/// concurrency limit, a connection pool) is not charged to the request.
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
pub struct StreamDeadline<S> {
    inner: S,
    budgets: Budgets,
}

impl<S> StreamDeadline<S> {
    /// Wraps `inner` with a total budget only. Use [`StreamDeadlineLayer`] to set the
    /// first-frame and idle budgets too.
    pub fn new(inner: S, total: Duration) -> Self {
        StreamDeadline::from_layer(inner, &StreamDeadlineLayer::new(total))
    }

    pub(crate) fn from_layer(inner: S, layer: &StreamDeadlineLayer) -> Self {
        StreamDeadline {
            inner,
            budgets: layer.budgets(),
        }
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

impl<S, Req, B> Service<Req> for StreamDeadline<S>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = Response<DeadlineBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Read before the inner `call`, which may already do work (start a connection).
        let deadlines = self.budgets.start(Instant::now());
        ResponseFuture::new(self.inner.call(req), deadlines)
    }
}
