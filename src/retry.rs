//! [`RetryFirstFrame`]: a `tower::retry::Policy` for requests stuck before their first frame.

use std::future::{Ready, ready};

use tower::retry::Policy;

use crate::BoxError;
use crate::error::{DeadlineExceeded, DeadlineKind};

/// Retries a call that failed at the [first-frame budget](crate::StreamDeadlineLayer::first_frame),
/// up to a number of times, and nothing else.
///
/// A request stuck before its first token is often served at once by a second attempt; one
/// that already streamed, failed upstream, or ran out its total budget is not retried (the
/// caller has seen, or may have seen, part of the answer, or has no time left).
///
/// Place the `Retry` layer *outside* the [`StreamDeadlineLayer`](crate::StreamDeadlineLayer),
/// so that each attempt gets its own budgets. Needs the `retry` feature.
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

impl<Req: Clone, Res> Policy<Req, Res, BoxError> for RetryFirstFrame {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Req,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Self::Future> {
        let Err(err) = result else { return None };
        let deadline = DeadlineExceeded::find(&**err)?;
        if deadline.kind() != DeadlineKind::FirstFrame || self.retries == 0 {
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

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}
