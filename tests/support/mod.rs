//! Shared test doubles: a scripted upstream body on tokio's clock, a service that answers
//! with it, and flags that say when the upstream was released.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::time::{Instant, Sleep};
use tower::{Service, ServiceExt};
use tower_stream_deadline::{BoxError, DeadlineBody, DeadlineExceeded, DeadlineKind};

pub const MS: Duration = Duration::from_millis(1);

/// One step of a scripted upstream body.
#[derive(Clone, Debug)]
pub enum Step {
    /// Wait this long on tokio's clock.
    After(Duration),
    Data(&'static str),
    Trailers(HeaderMap),
    Fail(&'static str),
    /// A data frame `every` period, forever.
    Babble {
        every: Duration,
    },
    /// Never another frame: pending without a wake-up.
    Stall,
}

/// Set when the value holding it is dropped: tells a test that the upstream was released.
#[derive(Clone, Debug, Default)]
pub struct DropFlag(Arc<AtomicBool>);

impl DropFlag {
    pub fn is_dropped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    pub fn guard(&self) -> DropGuard {
        DropGuard(self.0.clone())
    }
}

#[derive(Debug)]
pub struct DropGuard(Arc<AtomicBool>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// An upstream error, to check it passes through unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError(pub &'static str);

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream failed: {}", self.0)
    }
}

impl std::error::Error for UpstreamError {}

/// A body that plays a script of frames and waits on tokio's clock.
pub struct Scripted {
    steps: VecDeque<Step>,
    sleep: Option<Pin<Box<Sleep>>>,
    _guard: Option<DropGuard>,
}

impl Scripted {
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Scripted {
            steps: steps.into_iter().collect(),
            sleep: None,
            _guard: None,
        }
    }

    /// Sets `flag` when this body is dropped.
    pub fn flagged(mut self, flag: &DropFlag) -> Self {
        self._guard = Some(flag.guard());
        self
    }
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                self.sleep = None;
            }
            let Some(step) = self.steps.pop_front() else {
                return Poll::Ready(None);
            };
            match step {
                Step::After(wait) => self.sleep = Some(Box::pin(tokio::time::sleep(wait))),
                Step::Data(data) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(data))))),
                Step::Trailers(trailers) => {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Step::Fail(why) => return Poll::Ready(Some(Err(UpstreamError(why)))),
                Step::Babble { every } => {
                    self.steps.push_front(Step::Babble { every });
                    self.steps.push_front(Step::After(every));
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"tok ")))));
                }
                Step::Stall => {
                    self.steps.push_front(Step::Stall);
                    return Poll::Pending;
                }
            }
        }
    }
}

/// What the upstream does for each call: head after `head_after`, then the script.
#[derive(Clone, Debug, Default)]
pub struct Upstream {
    pub head_after: Duration,
    pub steps: Vec<Step>,
    /// Set when the response future or the body of the latest call is dropped.
    pub future_dropped: DropFlag,
    pub body_dropped: DropFlag,
    pub calls: Arc<AtomicUsize>,
    /// The response's `content-type`, if any.
    pub content_type: Option<&'static str>,
}

impl Upstream {
    pub fn new(head_after: Duration, steps: impl IntoIterator<Item = Step>) -> Self {
        Upstream {
            head_after,
            steps: steps.into_iter().collect(),
            ..Upstream::default()
        }
    }

    /// The same upstream, answering with this `content-type`.
    pub fn with_content_type(mut self, content_type: &'static str) -> Self {
        self.content_type = Some(content_type);
        self
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The upstream as a tower service (request bodies ignored).
    pub fn service<B>(
        &self,
    ) -> impl Service<Request<B>, Response = Response<Scripted>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static {
        let this = self.clone();
        tower::service_fn(move |_req: Request<B>| {
            this.calls.fetch_add(1, Ordering::SeqCst);
            let body = Scripted::new(this.steps.clone()).flagged(&this.body_dropped);
            let guard = this.future_dropped.guard();
            let head_after = this.head_after;
            let content_type = this.content_type;
            async move {
                let _guard = guard;
                tokio::time::sleep(head_after).await;
                let mut response = Response::new(body);
                if let Some(content_type) = content_type {
                    let value = http::HeaderValue::from_static(content_type);
                    response
                        .headers_mut()
                        .insert(http::header::CONTENT_TYPE, value);
                }
                Ok(response)
            }
        })
    }
}

/// Makes one call through `svc`.
pub async fn call<S>(svc: &mut S) -> Result<S::Response, BoxError>
where
    S: Service<Request<()>, Error = BoxError>,
{
    call_with(svc, Request::new(())).await
}

/// Makes one call through `svc` with a request whose body is `prompt`: one that can be
/// sent again (a `String` is `Clone`), for retries and hedges.
pub async fn send_prompt<S>(svc: &mut S) -> Result<S::Response, BoxError>
where
    S: Service<Request<String>, Error = BoxError>,
{
    svc.ready()
        .await?
        .call(Request::new("prompt".to_owned()))
        .await
}

/// Makes one call through `svc` with `req` (one that carries extensions, say).
pub async fn call_with<S>(svc: &mut S, req: Request<()>) -> Result<S::Response, BoxError>
where
    S: Service<Request<()>, Error = BoxError>,
{
    svc.ready().await?.call(req).await
}

/// Everything a caller sees when it reads a body to its end.
#[derive(Debug)]
pub struct Drained {
    pub data: Vec<Bytes>,
    pub trailers: Option<HeaderMap>,
    pub error: Option<BoxError>,
    /// When the error (or the end) was seen.
    pub at: Instant,
}

impl Drained {
    pub fn text(&self) -> String {
        self.data
            .iter()
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .collect()
    }

    pub fn deadline(&self) -> &DeadlineExceeded {
        let err = self
            .error
            .as_ref()
            .expect("the body ended without an error");
        err.downcast_ref::<DeadlineExceeded>()
            .unwrap_or_else(|| panic!("expected a DeadlineExceeded, got {err:?}"))
    }
}

/// Reads `body` to its end or its first error, then checks it stays ended.
pub async fn drain<B>(body: &mut DeadlineBody<B>) -> Drained
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut drained = Drained {
        data: Vec::new(),
        trailers: None,
        error: None,
        at: Instant::now(),
    };
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => drained.data.push(data),
                Err(frame) => drained.trailers = frame.into_trailers().ok(),
            },
            Err(err) => {
                drained.error = Some(err);
                break;
            }
        }
    }
    drained.at = Instant::now();
    assert!(body.frame().await.is_none(), "the body must stay ended");
    assert!(body.is_end_stream(), "an ended body says so");
    drained
}

/// The deadline in a call's error.
pub fn deadline_of<T: fmt::Debug>(result: &Result<T, BoxError>) -> &DeadlineExceeded {
    let err = result.as_ref().expect_err("expected the call to fail");
    err.downcast_ref::<DeadlineExceeded>()
        .unwrap_or_else(|| panic!("expected a DeadlineExceeded, got {err:?}"))
}

/// Asserts `deadline` is of `kind` and `budget`, observed within one timer tick of it.
#[track_caller]
pub fn assert_fired(deadline: &DeadlineExceeded, kind: DeadlineKind, budget: Duration) {
    assert_eq!(deadline.kind(), kind, "{deadline}");
    assert_eq!(deadline.budget(), budget, "{deadline}");
    assert!(
        deadline.elapsed() >= budget && deadline.elapsed() <= budget + MS,
        "expected to fire within one 1 ms tick of the {budget:?} budget: {deadline}"
    );
}
