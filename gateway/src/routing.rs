//! Which upstream each attempt goes to: the pool's pick (an upstream this request has not
//! tried, while there is one), the request's URI and credentials made for it, and the
//! attempt's verdict reported back to the pool's health and to the metrics.
//!
//! [`Route`] sits between the retry or hedging layer and the deadline layer, so each attempt
//! (a retry, a hedge) is routed anew, and the verdict it reports is the deadline layer's: a
//! call that resolved has its first frame (or its head, for a request bounded by its total
//! budget only), a first-frame deadline is the upstream's failure. A connection the upstream
//! refused costs nothing: the next upstream is tried at once, within the same attempt.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body_util::Either;
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tower_stream_deadline::{
    BoxError, Deadline, DeadlineExceeded, DeadlineKind, UpstreamErrorEvent,
};

use crate::log::RequestLog;
use crate::metrics::Metrics;
use crate::pool::{Change, Pool, Verdict};
use crate::upstream::{self, UpstreamBody};

/// What the routing of a request's attempts reads of it, in its extensions (one entry, so
/// that a request carries few).
#[derive(Clone)]
pub struct Attempts {
    /// The request's log, which keeps each attempt's upstream (the next attempt goes to one
    /// not tried yet) and the count of the one that answered.
    pub log: Arc<RequestLog>,
    /// When every attempt must be over (`--total` from when the request was forwarded): the
    /// first attempt's own total budget ends then, and each later attempt is given what is
    /// left, as the request's [`Deadline`].
    pub end: Option<Instant>,
}

/// Routes each attempt of a request to an upstream of `pool`; see the module docs.
#[derive(Clone)]
pub struct Route<S> {
    inner: S,
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
}

impl<S> Route<S> {
    pub fn new(inner: S, pool: Arc<Pool>, metrics: Arc<Metrics>) -> Self {
        Route {
            inner,
            pool,
            metrics,
        }
    }
}

/// How an attempt at an upstream ended, as the metrics label it.
fn judge<B>(result: &Result<Response<B>, BoxError>) -> (Verdict, &'static str) {
    match result {
        Ok(response) if response.status().is_server_error() => (Verdict::Failed, "status_5xx"),
        Ok(_) => (Verdict::Answered, "answered"),
        Err(err) => match DeadlineExceeded::find(&**err).map(DeadlineExceeded::kind) {
            Some(DeadlineKind::FirstFrame) => (Verdict::Failed, "deadline_first_frame"),
            // The request ran out of time: nothing to learn of the upstream.
            Some(_) => (Verdict::Neither, "deadline_total"),
            None if UpstreamErrorEvent::find(&**err).is_some() => (Verdict::Failed, "error_event"),
            None if upstream::refused(&**err) => (Verdict::Failed, "refused"),
            None => (Verdict::Failed, "upstream_error"),
        },
    }
}

/// The request as the next attempt sends it, if it can be sent again (a buffered body).
fn copy(request: &Request<UpstreamBody>) -> Option<Request<UpstreamBody>> {
    let Either::Left(body) = request.body() else {
        return None;
    };
    let mut copy = Request::new(Either::Left(body.clone()));
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
}

/// Records, once, an attempt that was dropped before it ended (it lost a race, or the
/// client left).
struct Pending {
    metrics: Arc<Metrics>,
    upstream: Option<Arc<str>>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(upstream) = self.upstream.take() {
            self.metrics.upstream_attempt(&upstream, "cancelled");
        }
    }
}

impl<S, B> Service<Request<UpstreamBody>> for Route<S>
where
    S: Service<Request<UpstreamBody>, Response = Response<B>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<UpstreamBody>) -> Self::Future {
        // The clone that was made ready takes this call; the next one readies itself.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let (pool, metrics) = (self.pool.clone(), self.metrics.clone());
        Box::pin(attempt(inner, pool, metrics, request))
    }
}

/// One attempt: to the upstream the pool picks, and on a refused connection at once to the
/// next one not tried, while there is one.
///
/// An `async` block rather than an `async fn`: the future is boxed for every attempt, and an
/// `async fn` keeps a second copy of each argument (the request among them).
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would hold the request twice"
)]
fn attempt<S, B>(
    mut inner: S,
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
    mut request: Request<UpstreamBody>,
) -> impl Future<Output = Result<Response<B>, BoxError>>
where
    S: Service<Request<UpstreamBody>, Response = Response<B>, Error = BoxError>,
{
    async move {
        let (log, end) = match request.extensions().get::<Attempts>() {
            Some(attempts) => (Some(attempts.log.clone()), attempts.end),
            None => (None, None),
        };
        // The target alone, not the whole URI: it keeps the boxed future under 1 KiB, the
        // most that mimalloc serves from its small-block pages without a slower search.
        let target = request.uri().path_and_query().cloned();
        loop {
            let now = Instant::now();
            let tried = log.as_ref().map(|log| log.tried()).unwrap_or_default();
            if let (false, Some(end)) = (tried.is_empty(), end) {
                limit_to_what_is_left(&mut request, end);
            }
            let index = pool.pick(&tried, now);
            let member = pool.members()[index].clone();
            let upstream = member.upstream();
            let shown = upstream.shown().clone();
            if let Some(log) = &log {
                log.trying(index, shown.clone());
            }
            // Kept for a refused connection, only while another upstream is left to try
            // (boxed: most pools have one upstream, and the future stays small).
            let copy = match pool.has_untried(&tried, index) {
                true => copy(&request).map(Box::new),
                false => None,
            };
            *request.uri_mut() = upstream.uri_for_target(target.as_ref())?;
            if let Some(authorization) = &upstream.authorization {
                // The URL's credentials, unless the client sent its own.
                request
                    .headers_mut()
                    .entry(http::header::AUTHORIZATION)
                    .or_insert_with(|| authorization.clone());
            }
            let in_flight = member.in_flight();
            let mut pending = Pending {
                metrics: metrics.clone(),
                upstream: Some(shown.clone()),
            };
            let result = match inner.ready().await {
                Ok(ready) => ready.call(request).await,
                Err(err) => Err(err),
            };
            pending.upstream = None;
            let (verdict, label) = judge(&result);
            metrics.upstream_attempt(&shown, label);
            if let Some(change) = member.report(verdict, Instant::now()) {
                let out = change == Change::LeftOut;
                metrics.upstream_out(&shown, out);
                if out {
                    tracing::warn!(target: crate::log::TARGET, upstream = %shown, "upstream left out for a while: it keeps failing");
                } else {
                    tracing::info!(target: crate::log::TARGET, upstream = %shown, "upstream back");
                }
            }
            if let (Some(copy), "refused") = (copy, label) {
                request = *copy;
                continue;
            }
            if let (Ok(_), Some(log)) = (&result, &log) {
                // Counted while the response lasts: the log goes when the response ends.
                log.hold(in_flight);
            }
            return result;
        }
    }
}

/// Gives a later attempt what is left until `end` (see [`Attempts::end`]), unless its own
/// deadline (the client's) is earlier.
fn limit_to_what_is_left<B>(request: &mut Request<B>, end: Instant) {
    let extensions = request.extensions_mut();
    if extensions.get::<Deadline>().is_none_or(|d| d.at() > end) {
        extensions.insert(Deadline::new(end));
    }
}
