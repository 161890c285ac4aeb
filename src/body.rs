//! [`DeadlineBody`]: the response body that enforces the total and idle deadlines.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use std::collections::VecDeque;

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::BoxError;
use crate::deadline::{Deadlines, Phase};
use crate::error::DeadlineExceeded;
use crate::outcome::Recorder;
use crate::protocol::Protocol;
use crate::timer::Timer;

pin_project! {
    /// The body of a response from [`StreamDeadline`](crate::StreamDeadline).
    ///
    /// It yields the upstream's frames unchanged and in order until a deadline passes; then
    /// it drops the upstream body (closing the HTTP/1 connection or resetting the HTTP/2
    /// stream, so the server stops producing), yields one error,
    /// [`DeadlineExceeded`], boxed, and ends.
    ///
    /// - **Any task, any thread.** Every frame taken from upstream is checked against the
    ///   clock, and while the body waits it holds a timer that wakes whichever task polled it
    ///   last. Moving it between tasks or threads, or polling it with no runtime in context,
    ///   does not lose the deadline.
    /// - **What is delivered.** A frame (or the end of the stream) taken from upstream at or
    ///   after the deadline is not delivered: the error is. Every frame delivered before it
    ///   is whole and in order.
    /// - **After the error** the body is ended: `poll_frame` returns `None` and
    ///   `is_end_stream` is `true`. Polling after the end never panics.
    /// - **Release is driven by polls.** The upstream is dropped the moment the deadline is
    ///   observed: by the timer waking a task that waits on the body, or at the next poll. A
    ///   body that nobody polls or drops keeps its upstream until someone does.
    /// - `size_hint`, `is_end_stream` and trailers pass through. An upstream error passes
    ///   through as it is (boxed, not relabelled) and ends the body.
    /// - **Protocol endings** (opt-in on the layer): a late gRPC stream ends with
    ///   `grpc-status: 4` trailers, a late SSE stream with a final error event, instead of
    ///   the error.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use http_body_util::BodyExt;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_stream_deadline::{DeadlineExceeded, DeadlineKind, StreamDeadlineLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// // An upstream whose body never sends a frame.
    /// let upstream = tower::service_fn(|_req: http::Request<()>| async {
    ///     let body = http_body_util::StreamBody::new(futures::stream::pending::<
    ///         Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
    ///     >());
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(body))
    /// });
    /// let mut svc = ServiceBuilder::new()
    ///     .layer(StreamDeadlineLayer::new(Duration::from_secs(45)).idle(Duration::from_secs(5)))
    ///     .service(upstream);
    ///
    /// let response = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
    /// let mut body = response.into_body();
    /// let err = body.frame().await.unwrap().unwrap_err();
    /// let deadline = err.downcast_ref::<DeadlineExceeded>().unwrap();
    /// assert_eq!(deadline.kind(), DeadlineKind::Idle);
    /// assert_eq!(deadline.budget(), Duration::from_secs(5));
    /// assert!(body.frame().await.is_none(), "the body ends after the error");
    /// # }
    /// ```
    pub struct DeadlineBody<B: Body> {
        #[pin]
        upstream: Upstream<B>,
        // Frames the `ResponseFuture` took that did not count as progress, replayed first,
        // then the first frame that did.
        held: VecDeque<Frame<B::Data>>,
        first: Option<Frame<B::Data>>,
        deadlines: Deadlines,
        // Set by the first poll that finds no frame ready: the idle budget counts from here.
        waiting_since: Option<Instant>,
        timer: Timer,
        recorder: Recorder,
        // Protocol endings and progress rules; `None` unless the layer opted in and the
        // content type matches.
        protocol: Option<Box<Protocol>>,
    }

    impl<B: Body> PinnedDrop for DeadlineBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // A caller that trusts `is_end_stream` (hyper does) never polls for the end.
            let this = this.project();
            let ended = this.held.is_empty()
                && this.first.is_none()
                && match this.upstream.as_ref().project_ref() {
                    UpstreamProjRef::Inline { body } => body.is_end_stream(),
                    UpstreamProjRef::Boxed { body } => body.is_end_stream(),
                    UpstreamProjRef::Released => true,
                };
            if ended {
                this.recorder.completed_if_unreported();
            }
        }
    }
}

pin_project! {
    #[project = UpstreamProj]
    #[project_ref = UpstreamProjRef]
    pub(crate) enum Upstream<B> {
        Inline { #[pin] body: B },
        // Boxed by the `ResponseFuture` to poll it for the first frame and still hand it over.
        Boxed { body: Pin<Box<B>> },
        Released,
    }
}

/// Frames the `ResponseFuture` took before handing the body over, to be replayed: those that
/// were not progress, then the first that was.
pub(crate) type Replay<D> = (VecDeque<Frame<D>>, Option<Frame<D>>);

impl<B: Body> DeadlineBody<B> {
    pub(crate) fn new(
        upstream: Upstream<B>,
        (held, first): Replay<B::Data>,
        deadlines: Deadlines,
        timer: Timer,
        recorder: Recorder,
        protocol: Option<Box<Protocol>>,
    ) -> Self {
        DeadlineBody {
            upstream,
            held,
            first,
            deadlines,
            waiting_since: None,
            timer,
            recorder,
            protocol,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body,
    B::Data: 'static,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Some(frame) = this.held.pop_front() {
            this.recorder.frame(&frame, None, false);
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(frame) = this.first.take() {
            this.recorder.frame(&frame, None, true);
            return Poll::Ready(Some(Ok(frame)));
        }
        let expired = loop {
            let polled = match this.upstream.as_mut().project() {
                UpstreamProj::Inline { body } => body.poll_frame(cx),
                UpstreamProj::Boxed { body } => body.as_mut().poll_frame(cx),
                UpstreamProj::Released => {
                    this.recorder.completed_if_unreported();
                    return Poll::Ready(None);
                }
            };
            match polled {
                Poll::Ready(Some(Ok(frame))) => {
                    let (frame, progress) = match this.protocol.as_deref_mut() {
                        // The common case, kept short (measured: wrapping the frame in an
                        // `Option` here costs about 6 ns a frame).
                        None => {
                            let now = match check(
                                this.deadlines,
                                this.waiting_since,
                                this.recorder,
                                true,
                            ) {
                                Ok(now) => now,
                                Err(expired) => break expired,
                            };
                            this.recorder.frame(&frame, now, true);
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        Some(protocol) => protocol.inspect(frame),
                    };
                    let now =
                        match check(this.deadlines, this.waiting_since, this.recorder, progress) {
                            Ok(now) => now,
                            Err(expired) => break expired,
                        };
                    // All of it held back (an SSE event not finished yet): read on.
                    let Some(frame) = frame else { continue };
                    this.recorder.frame(&frame, now, progress);
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(err))) => {
                    this.upstream.set(Upstream::Released);
                    this.recorder.upstream_error();
                    let err = err.into();
                    let last = this.protocol.as_deref_mut();
                    return match last.and_then(|p| p.upstream_ending(&err)) {
                        Some(last) => Poll::Ready(Some(Ok(last))),
                        None => Poll::Ready(Some(Err(err))),
                    };
                }
                Poll::Ready(None) => {
                    // The end is judged like a frame.
                    let now = match check(this.deadlines, this.waiting_since, this.recorder, true) {
                        Ok(now) => now.unwrap_or_else(Instant::now),
                        Err(expired) => break expired,
                    };
                    this.upstream.set(Upstream::Released);
                    // An event the upstream never finished goes out as it is, then the end.
                    if let Some(tail) = this.protocol.as_deref_mut().and_then(Protocol::take_tail) {
                        this.recorder.frame(&tail, Some(now), false);
                        return Poll::Ready(Some(Ok(tail)));
                    }
                    this.recorder.completed(now);
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if this.waiting_since.is_none() && this.deadlines.idle().is_some() {
                        *this.waiting_since = Some(Instant::now());
                    }
                    let phase = Phase::Streaming {
                        waiting_since: *this.waiting_since,
                    };
                    break ready!(this.timer.poll_expired(this.deadlines, phase, cx));
                }
            }
        };
        this.upstream.set(Upstream::Released);
        if let Some(since) = this.waiting_since.take() {
            this.recorder.waited(since, Instant::now());
        }
        this.recorder.deadline(&expired);
        match this
            .protocol
            .as_deref_mut()
            .and_then(|p| p.ending(&expired))
        {
            Some(last) => Poll::Ready(Some(Ok(last))),
            None => Poll::Ready(Some(Err(expired.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        if !self.held.is_empty()
            || self.first.is_some()
            || self.protocol.as_ref().is_some_and(|p| p.held() > 0)
        {
            return false;
        }
        match &self.upstream {
            Upstream::Inline { body } => body.is_end_stream(),
            Upstream::Boxed { body } => body.is_end_stream(),
            Upstream::Released => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        let upstream = match &self.upstream {
            Upstream::Inline { body } => body.size_hint(),
            Upstream::Boxed { body } => body.size_hint(),
            Upstream::Released => SizeHint::with_exact(0),
        };
        let held = self
            .held
            .iter()
            .chain(&self.first)
            .filter_map(Frame::data_ref)
            .map(|d| d.remaining() as u64)
            .sum::<u64>()
            + self.protocol.as_ref().map_or(0, |p| p.held());
        let extends = self.protocol.as_ref().is_some_and(|p| p.extends_body());
        if held == 0 && !extends {
            return upstream;
        }
        let mut hint = SizeHint::new();
        hint.set_lower(upstream.lower().saturating_add(held));
        // A final SSE event may still come: no upper bound, so no `content-length`.
        if let (Some(upper), false) = (upstream.upper(), extends) {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}

/// Checks a frame just taken from upstream against the deadlines: `Err` if one has passed,
/// else when it was taken, if the clock had to be read. A frame that is not progress leaves
/// the idle clock running.
#[inline(always)]
fn check(
    deadlines: &Deadlines,
    waiting_since: &mut Option<Instant>,
    recorder: &mut Recorder,
    progress: bool,
) -> Result<Option<Instant>, DeadlineExceeded> {
    let since = match progress {
        true => waiting_since.take(),
        false => *waiting_since,
    };
    if !deadlines.has_total() && since.is_none() && progress {
        return Ok(None);
    }
    let now = Instant::now();
    if let Some(expired) = deadlines.expired(
        now,
        Phase::Streaming {
            waiting_since: since,
        },
    ) {
        return Err(expired);
    }
    match since {
        Some(since) if progress => recorder.waited(since, now),
        None if !progress && deadlines.idle().is_some() => *waiting_since = Some(now),
        _ => {}
    }
    Ok(Some(now))
}

impl<B: Body> fmt::Debug for DeadlineBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineBody")
            .field("released", &matches!(self.upstream, Upstream::Released))
            .field("held", &self.held.len())
            .field("deadlines", &self.deadlines)
            .field("waiting_since", &self.waiting_since)
            .field("recorder", &self.recorder)
            .finish_non_exhaustive()
    }
}
