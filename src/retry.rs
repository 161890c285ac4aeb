//! [`RetryFirstFrame`]: a `tower::retry::Policy` for requests stuck before their first frame.

use std::future::{Ready, ready};

use http::Request;
use tower::retry::Policy;

use crate::BoxError;
use crate::attempt::Attempt;
use crate::error::{DeadlineExceeded, DeadlineKind};
use crate::first_event_error::UpstreamErrorEvent;

/// Retries a call that failed at the [first-frame budget](crate::StreamDeadlineLayer::first_frame)
/// (or, under [`sse_first_event_errors`](crate::StreamDeadlineLayer::sse_first_event_errors),
/// whose first event was an error: an [`UpstreamErrorEvent`]), up to a number of times, and
/// nothing else.
///
/// A request stuck before its first token is often served at once by a second attempt; one
/// that already streamed, failed upstream, or ran out its total budget is not retried (the
/// caller has seen, or may have seen, part of the answer, or has no time left).
///
/// Place the `Retry` layer *outside* the [`StreamDeadlineLayer`](crate::StreamDeadlineLayer),
/// so that each attempt gets its own budgets. Each retry carries its [`Attempt`] number in
/// its extensions, for a router inside that sends it to another backend. Needs the `retry`
/// feature.
///
/// # The request must be `Clone`
///
/// A retry sends the request again, so `RetryFirstFrame` is a `Policy` only for requests
/// that are `Clone`: `http::Request<B>` with a `Clone` body such as `String`, `Bytes` or
/// `http_body_util::Full<Bytes>`. A body that streams in (hyper's `Incoming`,
/// `axum::body::Body`) is not, and calling the `Retry` service then fails to compile with
/// `E0599`: "the method ... exists ... but its trait bounds were not satisfied". The way
/// out is to buffer the body before the retry layer, as a proxy in front of a model server
/// can (a chat request is small): collect it into `Bytes` and send a `Full<Bytes>`, as the
/// second example below does. Bound what you buffer (`http_body_util::Limited`), or let
/// large bodies stream through without retry.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower::{ServiceBuilder, retry::RetryLayer};
/// use tower_stream_deadline::{RetryFirstFrame, StreamDeadlineLayer};
///
/// let upstream = tower::service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
/// });
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::new(RetryFirstFrame::new(2))) // up to 3 attempts in all
///     .layer(StreamDeadlineLayer::new(Duration::from_secs(60)).first_frame(Duration::from_secs(10)))
///     .service(upstream);
/// # let _ = svc;
/// ```
///
/// With hedging between them, a late first token gets a second attempt after 300 ms, and a
/// request whose every attempt got stuck is tried once more, hedges and all:
///
/// ```
/// use std::time::Duration;
/// use tower::{ServiceBuilder, retry::RetryLayer};
/// use tower_stream_deadline::{HedgeFirstFrameLayer, RetryFirstFrame, StreamDeadlineLayer};
///
/// let upstream = tower::service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
/// });
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::new(RetryFirstFrame::new(1)))
///     .layer(HedgeFirstFrameLayer::new(Duration::from_millis(300), 2))
///     .layer(StreamDeadlineLayer::new(Duration::from_secs(60)).first_frame(Duration::from_secs(10)))
///     .service(upstream);
/// # let _ = svc;
/// ```
///
/// A proxy whose incoming body streams (here a boxed body, like `axum::body::Body`) buffers
/// it into a `Full<Bytes>`, which is `Clone`, before the retry layer:
///
/// ```
/// use std::time::Duration;
///
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
/// use tower::{BoxError, ServiceBuilder, ServiceExt, retry::RetryLayer};
/// use tower_stream_deadline::{RetryFirstFrame, StreamDeadlineLayer};
///
/// /// Buffers a request body of at most 1 MiB, so that the request can be sent again.
/// async fn buffered<B>(request: Request<B>) -> Result<Request<Full<Bytes>>, BoxError>
/// where
///     B: http_body::Body,
///     B::Error: Into<BoxError>,
/// {
///     let (parts, body) = request.into_parts();
///     let bytes = Limited::new(body, 1 << 20).collect().await?.to_bytes();
///     Ok(Request::from_parts(parts, Full::new(bytes)))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// let upstream = tower::service_fn(|request: Request<Full<Bytes>>| async move {
///     let prompt = request.into_body().collect().await?.to_bytes();
///     Ok::<_, BoxError>(Response::new(Full::new(prompt)))
/// });
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::new(RetryFirstFrame::new(2)))
///     .layer(StreamDeadlineLayer::new(Duration::from_secs(60)).first_frame(Duration::from_secs(10)))
///     .service(upstream);
///
/// // What a server hands the proxy: a body that streams in, and is not `Clone`.
/// let incoming: Request<BoxBody<Bytes, BoxError>> =
///     Request::new(Full::new(Bytes::from("{\"stream\":true}")).map_err(Into::into).boxed());
/// let response = svc.oneshot(buffered(incoming).await?).await?;
/// let answer = response.into_body().collect().await?.to_bytes();
/// assert_eq!(answer, "{\"stream\":true}");
/// # Ok(())
/// # }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
#[derive(Clone, Debug)]
pub struct RetryFirstFrame {
    retries: usize,
}

impl RetryFirstFrame {
    /// Retries at most `retries` times per request (so `retries + 1` attempts in all).
    pub fn new(retries: usize) -> Self {
        RetryFirstFrame { retries }
    }
}

impl<B: Clone, Res> Policy<Request<B>, Res, BoxError> for RetryFirstFrame {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Request<B>,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Self::Future> {
        let Err(err) = result else { return None };
        let stuck =
            DeadlineExceeded::find(&**err).is_some_and(|d| d.kind() == DeadlineKind::FirstFrame);
        if !(stuck || UpstreamErrorEvent::find(&**err).is_some()) || self.retries == 0 {
            return None;
        }
        self.retries -= 1;
        tracing::debug!(
            target: "tower_stream_deadline",
            retries_left = self.retries,
            "retrying a request stuck before its first frame"
        );
        Some(ready(()))
    }

    /// The copy kept for a retry is marked as the next [`Attempt`]. None is kept once no
    /// retry is left: the request goes out as it is, without a copy.
    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        if self.retries == 0 {
            return None;
        }
        let mut retry = req.clone();
        Attempt::mark_next(&mut retry);
        Some(retry)
    }
}
