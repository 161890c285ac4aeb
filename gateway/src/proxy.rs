//! Forwarding one request: the deadline layer (and first-frame retries) on the upstream
//! client, the budgets the client's headers ask for, the heartbeats of a slow stream, the
//! request id, and the gateway's own error answers.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use tower::retry::RetryLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_stream_deadline::{
    DeadlineBody, DeadlineExceeded, OnRequestOutcome, ReleaseUnpolled, RetryFirstFrame,
    StreamDeadlineLayer,
};

use crate::client_budgets::{ClientBudgets, Configured};
use crate::config::Flags;
use crate::errors::{error_chain, json_error, request_timeout};
use crate::headers;
use crate::heartbeat::{self, Heartbeat, Raced};
use crate::log::RequestLog;
use crate::metrics::Metrics;
use crate::request_body::{self, BodyBroken, BodyLimits, BodyTimeout, ReadError, RequestBody};
use crate::shutdown::DrainBody;
use crate::stream_request::asks_for_stream;
use crate::upstream::{self, UpstreamClient};
use crate::upstream_url::Upstream;
use crate::{model, request_id};

/// What the gateway answers with: the upstream's body under its deadlines (after the
/// heartbeats, if they began before it), or its own error.
pub type GatewayBody = Either<DrainBody<UpstreamBody>, Full<Bytes>>;

/// The upstream's body, as it came or after the heartbeats.
type UpstreamBody = Either<DeadlineBody<Incoming>, Heartbeat<DeadlineBody<Incoming>>>;

pub struct Gateway {
    client: UpstreamClient,
    upstream: Upstream,
    layer: StreamDeadlineLayer<ReleaseUnpolled>,
    retries: usize,
    request_body_idle: std::time::Duration,
    /// The budgets a client's headers may shorten; the total one its body must also come
    /// within.
    budgets: Configured,
    metrics: Arc<Metrics>,
    /// Cancelled at the end of the shutdown grace: live responses end then.
    cut: CancellationToken,
}

impl Gateway {
    pub fn new(
        flags: &Flags,
        metrics: Arc<Metrics>,
        cut: CancellationToken,
    ) -> Result<Gateway, String> {
        Ok(Gateway {
            client: upstream::client(flags)?,
            upstream: flags.upstream.clone(),
            layer: flags.layer(),
            retries: flags.retries,
            request_body_idle: flags.request_body_idle,
            budgets: Configured::from_flags(flags),
            metrics,
            cut,
        })
    }

    pub async fn handle(
        self: &Arc<Self>,
        mut request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<GatewayBody> {
        let (id, ignored) = request_id::take_or_make(request.headers_mut());
        let log = Arc::new(RequestLog::new(
            request.method(),
            request.uri(),
            &id,
            self.metrics.clone(),
        ));
        if let Some(ignored) = ignored {
            log.warn(ignored);
        }
        let forwarded = match self.budgets.heartbeat {
            None => Raced::Answered(self.forward(request, peer, &log).await),
            Some(every) => {
                let asks = heartbeat::ask(request.extensions_mut());
                let (gateway, held) = (self.clone(), log.clone());
                let forward = async move { gateway.forward(request, peer, &held).await };
                heartbeat::race(forward, every, asks, log.clone()).await
            }
        };
        let mut response = match forwarded {
            Raced::Answered(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                let event_stream = headers::prepare_response(&mut parts.headers);
                let body = DrainBody::new(Either::Left(body), &self.cut, event_stream, log.clone());
                Response::from_parts(parts, Either::Left(body))
            }
            Raced::Answered(Err(answer)) => answer.map(Either::Right),
            Raced::Committed(response) => response.map(|body| {
                Either::Left(DrainBody::new(
                    Either::Right(body),
                    &self.cut,
                    true,
                    log.clone(),
                ))
            }),
        };
        // The client gets the id its request went upstream with; an upstream's own id (a
        // hosted API's, say) stays findable in the log line.
        if let Some(theirs) = response.headers().get(&request_id::HEADER) {
            if *theirs != id {
                log.upstream_request_id(theirs);
            }
        }
        response.headers_mut().insert(request_id::HEADER, id);
        log.status(response.status().as_u16());
        // `log` is written when its last holder lets go: this function, and the response
        // body, whose outcome callback runs when it ends (or is dropped).
        response
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        log: &Arc<RequestLog>,
    ) -> Result<Response<DeadlineBody<Incoming>>, Response<Full<Bytes>>> {
        let arrived = tokio::time::Instant::now();
        let (mut parts, body) = request.into_parts();
        let client = ClientBudgets::read(&parts.headers, arrived, log);
        if let Some(deadline) = client.deadline() {
            parts.extensions.insert(deadline);
        }
        // The body must come within the request's total budget too.
        let budget = client.total(self.budgets.total, arrived);
        let limits = BodyLimits::new(self.request_body_idle, arrived, budget);
        parts.uri = self.upstream.uri_for(&parts.uri).map_err(|err| {
            log.note(format!("bad request URI: {err}"));
            json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "bad_request",
                &format!("cannot forward this URI: {err}"),
            )
        })?;
        headers::prepare_request(&mut parts, peer);
        if let Some(authorization) = &self.upstream.authorization {
            // The URL's credentials, unless the client sent its own.
            parts
                .headers
                .entry(http::header::AUTHORIZATION)
                .or_insert_with(|| authorization.clone());
        }
        parts.extensions.insert(OnRequestOutcome::new({
            let log = log.clone();
            move |outcome| log.record(outcome)
        }));

        let body = match request_body::read(&parts.headers, body, limits).await {
            Ok(RequestBody::Replayable(bytes)) => {
                if let Some(model) = model::named_in(&bytes) {
                    log.model(model);
                }
                RequestBody::Replayable(bytes)
            }
            Ok(body) => body,
            Err(ReadError::TimedOut(timeout)) => {
                let why = timeout.to_string();
                log.note(why.clone());
                return Err(request_timeout(&why));
            }
            Err(ReadError::Failed(err)) => {
                let why = format!("reading the request body failed: {err}");
                log.note(why.clone());
                return Err(json_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "bad_request_body",
                    &why,
                ));
            }
        };
        log.forwarding();
        // A body too large to buffer is not read: it gets the total budget only, as a
        // request that does not ask for a stream (see `stream_request`).
        let streamed = matches!(&body, RequestBody::Replayable(bytes) if asks_for_stream(bytes));
        parts
            .extensions
            .insert(client.request_budgets(&self.budgets, streamed));
        heartbeat::tell(&parts.extensions, streamed);
        let result = match body {
            RequestBody::Replayable(bytes) => {
                ServiceBuilder::new()
                    // Outside the deadline layer: each attempt gets the full budgets.
                    .layer(RetryLayer::new(RetryFirstFrame::new(self.retries)))
                    .layer(self.layer.clone())
                    .map_request(|request: Request<Full<Bytes>>| request.map(Either::Left))
                    .service(self.client.clone())
                    .oneshot(Request::from_parts(parts, Full::new(bytes)))
                    .await
            }
            RequestBody::Streamed(body) => {
                ServiceBuilder::new()
                    .layer(self.layer.clone())
                    .service(self.client.clone())
                    .oneshot(Request::from_parts(parts, Either::Right(body)))
                    .await
            }
        };
        result.map_err(|err| self.failure(&*err, log))
    }

    /// The answer to a request that got no response head from upstream in time.
    fn failure(
        &self,
        err: &(dyn std::error::Error + 'static),
        log: &RequestLog,
    ) -> Response<Full<Bytes>> {
        let attempts = log.attempts();
        if let Some(deadline) = DeadlineExceeded::find(err) {
            let plural = if attempts == 1 { "attempt" } else { "attempts" };
            let mut response = json_error(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "deadline_exceeded",
                &format!("{deadline}, before any of the response was sent ({attempts} {plural})"),
            );
            if attempts > 1 {
                // The gateway has retried already: the `openai` SDK reads this and does not
                // retry on top (3 x 3 attempts).
                response
                    .headers_mut()
                    .insert("x-should-retry", HeaderValue::from_static("false"));
            }
            return response;
        }
        if let Some(timeout) = crate::errors::find::<BodyTimeout>(err) {
            log.note(timeout.to_string());
            return request_timeout(&timeout.to_string());
        }
        if let Some(broken) = crate::errors::find::<BodyBroken>(err) {
            // The attempt is over (the upstream connection closed with the body unfinished);
            // the answer reaches a client that is still there, if any.
            log.client_left();
            log.note(broken.to_string());
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "bad_request_body",
                &broken.to_string(),
            );
        }
        let chain = error_chain(err);
        log.note(chain.clone());
        match upstream::tls_error(err) {
            Some(tls) => json_error(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_tls_error",
                &format!("the TLS connection to the upstream failed: {tls}"),
            ),
            None => json_error(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_unavailable",
                &format!("the upstream request failed: {chain}"),
            ),
        }
    }
}
