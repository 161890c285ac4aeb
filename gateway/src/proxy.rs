//! Forwarding one request: its policy (by the model it names), the deadline layer on the
//! upstream client, each attempt routed to an upstream, first-frame retries or hedges, the
//! budgets the client's headers ask for, the heartbeats of a slow stream, the request id,
//! and the gateway's own error answers.

use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tower::retry::{Retry, RetryLayer};
use tower::util::{MapRequest, MapRequestLayer};
use tower::{Layer, ServiceExt};
use tower_stream_deadline::{
    DeadlineBody, DeadlineExceeded, HedgeFirstFrame, HedgeFirstFrameLayer, OnRequestOutcome,
    ReleaseUnpolled, RequestBudgets, RetryFirstFrame, StreamDeadline, StreamDeadlineLayer,
    UpstreamErrorEvent,
};

use crate::client_budgets::{ClientBudgets, Configured};
use crate::config::Flags;
use crate::errors::{error_chain, json_error, request_timeout};
use crate::headers::{self, ForwardedFor};
use crate::heartbeat::{self, Heartbeat, Raced};
use crate::log::RequestLog;
use crate::metrics::Metrics;
use crate::policy::{ByModel, Policies, Policy};
use crate::pool::Members;
use crate::request_body::{self, BodyBroken, BodyLimits, BodyTimeout, ReadError, RequestBody};
use crate::routing::{Attempts, Route};
use crate::shutdown::{Cut, DrainBody};
use crate::upstream::{self, ResponseBody, UpstreamBody, UpstreamClient};
use crate::{request_fields, request_id, stream_request};

/// What the gateway answers with: the upstream's body under its deadlines (after the
/// heartbeats, if they began before it), or its own error.
pub type GatewayBody = Either<DrainBody<AnsweredBody>, Full<Bytes>>;

/// The upstream's body, as it came or after the heartbeats.
type AnsweredBody = Either<DeadlineBody<ResponseBody>, Heartbeat<DeadlineBody<ResponseBody>>>;

/// The deadline layer on the upstream client, each attempt routed to an upstream of the
/// policy's pool.
type Routed = Route<StreamDeadline<UpstreamClient, ReleaseUnpolled>>;
/// [`Routed`], for a buffered request body.
type Replayed = MapRequest<Routed, fn(Request<Full<Bytes>>) -> Request<UpstreamBody>>;

/// A policy with the tower stack its requests go through, built once when the policy is
/// loaded: a request clones the stack it needs (a few `Arc`s) instead of building it.
struct Stack {
    policy: Arc<Policy>,
    /// The budgets a request that asks for a stream (`[1]`) or not (`[0]`) gets when its
    /// client asks for none of its own: the layers below hold them already, and a request
    /// carries budgets only when its client's differ (a request's extensions are a map
    /// whose every entry is an allocation).
    budgets: [RequestBudgets; 2],
    /// A request whose body is streamed: one attempt (it is never read, so never asks for
    /// a stream).
    routed: Routed,
    /// A buffered body that does not ask for a stream: one attempt (it has no first-frame
    /// budget, so nothing to retry at; no copy of it is kept).
    replayed: Replayed,
    /// A buffered body that asks for a stream: retried at the first-frame budget.
    retried: Retry<RetryFirstFrame, Replayed>,
    /// With `hedge_after`, a buffered body that asks for a stream: hedged after it. Hedges
    /// count against the retries: as many attempts in all.
    hedged: Option<HedgeFirstFrame<Replayed>>,
}

impl Stack {
    fn new(policy: &Arc<Policy>, client: &UpstreamClient, metrics: &Arc<Metrics>) -> Stack {
        let route = |layer: &StreamDeadlineLayer<ReleaseUnpolled>| {
            Route::new(
                layer.layer(client.clone()),
                policy.pool.clone(),
                metrics.clone(),
            )
        };
        let configured = Configured::from_policy(policy);
        let budgets = [false, true]
            .map(|streamed| ClientBudgets::default().request_budgets(&configured, streamed));
        let whole = stream_request::total_only_layer(policy.layer.clone());
        let replayable: fn(Request<Full<Bytes>>) -> Request<UpstreamBody> =
            |request| request.map(Either::Left);
        let replay = |routed: Routed| MapRequestLayer::new(replayable).layer(routed);
        let streamed = replay(route(&policy.layer));
        let routed = route(&whole);
        Stack {
            policy: policy.clone(),
            budgets,
            retried: RetryLayer::new(RetryFirstFrame::new(policy.retries)).layer(streamed.clone()),
            hedged: policy
                .hedge_after
                .map(|after| HedgeFirstFrameLayer::new(after, policy.retries + 1).layer(streamed)),
            replayed: replay(routed.clone()),
            routed,
        }
    }
}

/// The policies in force, each with its stack.
struct Loaded {
    stacks: ByModel<Stack>,
    /// Whether any policy sends heartbeats (then every request is raced against them until
    /// its policy is known).
    any_heartbeat: bool,
}

impl Loaded {
    fn new(policies: &Policies, client: &UpstreamClient, metrics: &Arc<Metrics>) -> Loaded {
        Loaded {
            stacks: policies.map(|policy| Stack::new(policy, client, metrics)),
            any_heartbeat: policies.any_heartbeat(),
        }
    }
}

pub struct Gateway {
    client: UpstreamClient,
    flags: Flags,
    /// Every upstream, with its health, kept across reloads.
    members: Members,
    /// Swapped whole on a reload; a request keeps the policy (and stack) it started with.
    loaded: RwLock<Arc<Loaded>>,
    request_body_idle: std::time::Duration,
    /// The flags' total budget, which a request body must come within (the body is read
    /// before its model, and so its policy, is known).
    total: std::time::Duration,
    metrics: Arc<Metrics>,
    /// Cancelled at the end of the shutdown grace: live responses end then.
    cut: Cut,
}

impl Gateway {
    pub fn new(flags: &Flags, metrics: Arc<Metrics>, cut: Cut) -> Result<Gateway, String> {
        let members = Members::default();
        let policies = Policies::load(flags, &members)?;
        let client = upstream::client(flags, policies.any_https())?;
        let loaded = Loaded::new(&policies, &client, &metrics);
        let gateway = Gateway {
            client,
            flags: flags.clone(),
            members,
            loaded: RwLock::new(Arc::new(loaded)),
            request_body_idle: flags.request_body_idle,
            total: flags.total,
            metrics,
            cut,
        };
        gateway.count_policies();
        Ok(gateway)
    }

    /// Reads `--config` again: requests from now on get the new policies, those in flight
    /// keep theirs. A file that does not load leaves the last good one in force.
    pub fn reload(&self) -> Result<(), String> {
        let policies = Policies::load(&self.flags, &self.members)?;
        let loaded = Loaded::new(&policies, &self.client, &self.metrics);
        *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
        self.count_policies();
        Ok(())
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The metrics' series for the policies in force: their models and upstreams.
    fn count_policies(&self) {
        self.metrics.set_models(self.loaded().stacks.models());
        for member in self.members.all() {
            self.metrics.upstream(&member.upstream().to_string());
        }
        self.refresh_health();
    }

    /// Whether each upstream is left out now, and what the gateway's connections to it are
    /// doing, for the metrics (read at each scrape).
    pub fn refresh_health(&self) {
        let now = tokio::time::Instant::now();
        let root = http::Uri::from_static("/");
        for member in self.members.all() {
            let shown = member.upstream().to_string();
            self.metrics.upstream_out(&shown, member.is_out(now));
            let usage = member.upstream().uri_for(&root).ok();
            if let Some(usage) = usage.and_then(|uri| self.client.usage(&uri)) {
                self.metrics.upstream_connections(&shown, usage);
            }
        }
    }

    pub async fn handle(
        self: &Arc<Self>,
        mut request: Request<Incoming>,
        peer: ForwardedFor,
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
        // Read once: the request keeps the policies it started with.
        let loaded = self.loaded();
        // The race against heartbeats is built and boxed outside this future: hyper keeps one
        // of these per connection and moves it in for each request, so every byte held here
        // is copied per request (5.3 KB with the race inline, 1.3 KB without).
        let forwarded = match loaded.any_heartbeat {
            false => Raced::Answered(self.forward(request, peer, loaded, &log).await),
            true => self.race_heartbeats(request, peer, loaded, &log).await,
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

    /// [`forward`](Self::forward), raced against the heartbeats of a request that gets
    /// them.
    fn race_heartbeats(
        self: &Arc<Self>,
        mut request: Request<Incoming>,
        peer: ForwardedFor,
        loaded: Arc<Loaded>,
        log: &Arc<RequestLog>,
    ) -> impl Future<Output = Raced<DeadlineBody<ResponseBody>>> + use<> {
        let told = heartbeat::ask(request.extensions_mut());
        let (gateway, held) = (self.clone(), log.clone());
        let forward = Box::pin(async move { gateway.forward(request, peer, loaded, &held).await });
        heartbeat::race(forward, told, log.clone())
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        peer: ForwardedFor,
        loaded: Arc<Loaded>,
        log: &Arc<RequestLog>,
    ) -> Result<Response<DeadlineBody<ResponseBody>>, Response<Full<Bytes>>> {
        let arrived = tokio::time::Instant::now();
        let (mut parts, body) = request.into_parts();
        let client = ClientBudgets::read(&parts.headers, arrived, log);
        // The body must come within the request's total budget too.
        let budget = client.total(self.total, arrived);
        let limits = BodyLimits::new(self.request_body_idle, arrived, budget);
        // Checked once against the flags' first upstream (every upstream makes its URI the
        // same way), so that a bad target is the client's 400, not an attempt's failure.
        let first = &loaded.stacks.for_model(None).policy.pool.members()[0];
        if let Err(err) = first.upstream().check(&parts.uri) {
            log.note(format!("bad request URI: {err}"));
            return Err(json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "bad_request",
                &format!("cannot forward this URI: {err}"),
            ));
        }
        headers::prepare_request(&mut parts, &peer);
        parts.extensions.insert(OnRequestOutcome::new({
            let log = log.clone();
            move |outcome| log.record(outcome)
        }));

        let body = match request_body::read(&parts.headers, body, limits).await {
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
        // A body too large to buffer is not read: it gets the flags' policy and the total
        // budget only, as a request that does not ask for a stream (see `stream_request`).
        let fields = match &body {
            RequestBody::Replayable(bytes) => request_fields::read(bytes),
            RequestBody::Streamed(_) => Default::default(),
        };
        if let Some(model) = &fields.model {
            log.model(model.clone());
        }
        let stack = loaded.stacks.for_model(fields.model.as_deref());
        let policy = &stack.policy;
        if let Some(deadline) = client.deadline() {
            parts.extensions.insert(deadline);
        }
        let configured = Configured::from_policy(policy);
        let budgets = client.request_budgets(&configured, fields.stream);
        if budgets != stack.budgets[usize::from(fields.stream)] {
            parts.extensions.insert(budgets);
        }
        heartbeat::tell(
            &parts.extensions,
            policy.heartbeat.filter(|_| fields.stream),
        );
        // For the routing of each attempt: the upstreams tried, and the one that answered.
        // `--total` bounds every attempt together, from now: the first attempt has it whole
        // (and its errors name it), later ones what is left.
        parts.extensions.insert(Attempts {
            log: log.clone(),
            end: tokio::time::Instant::now().checked_add(policy.total),
        });
        log.forwarding();
        let result = match body {
            RequestBody::Replayable(bytes) => {
                // Each attempt to an upstream the request has not tried, while there is one.
                let request = Request::from_parts(parts, Full::new(bytes));
                match (fields.stream, &stack.hedged) {
                    (false, _) => stack.replayed.clone().oneshot(request).await,
                    (true, Some(hedged)) => hedged.clone().oneshot(request).await,
                    (true, None) => stack.retried.clone().oneshot(request).await,
                }
            }
            RequestBody::Streamed(body) => {
                let request = Request::from_parts(parts, Either::Right(body));
                stack.routed.clone().oneshot(request).await
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
        if let Some(event) = UpstreamErrorEvent::find(err) {
            // Every attempt's first event said the answer failed: the client gets the last
            // one as its upstream sent it, so its SDK raises the upstream's error.
            log.note(event.to_string());
            let mut response = Response::new(Full::new(event.event()));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
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
