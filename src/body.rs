//! [`DeadlineBody`]: the response body that enforces the total and idle deadlines.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::BoxError;
use crate::deadline::{Deadlines, Phase};
use crate::error::DeadlineExceeded;
use crate::outcome::Recorder;
use crate::protocol::Protocol;
use crate::replay::{Next, Replayed};
use crate::timer::Timer;
use crate::watch::{self, Watched};

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
    /// - **Release.** The upstream is dropped the moment the deadline is observed: by the
    ///   timer waking a task that waits on the body, or at the next poll or the drop. A body
    ///   that nobody polls (a proxy whose client stopped reading) keeps its upstream until
    ///   someone does, unless the layer has
    ///   [`release_unpolled`](crate::StreamDeadlineLayer::release_unpolled): then a watcher
    ///   task drops it at the total or idle deadline, polled or not, while the runtime of
    ///   `call` runs, and the next poll yields the error (or the protocol ending).
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
        mode: Mode<B>,
    }

    impl<B: Body> PinnedDrop for DeadlineBody<B> {
        fn drop(this: Pin<&mut Self>) {
            match this.project().mode.project() {
                ModeProj::Local { upstream, core } => core.drop_with(upstream.as_ref()),
                ModeProj::Watched { shared } => shared.body_dropped(),
            }
        }
    }
}

pin_project! {
    #[project = ModeProj]
    enum Mode<B: Body> {
        // The upstream inline, released when a poll or the drop observes the deadline.
        Local { #[pin] upstream: Upstream<B>, core: Core },
        // Shared with a watcher task that releases the upstream at the deadline even when
        // nobody polls (`StreamDeadlineLayer::release_unpolled`).
        Watched { shared: Arc<Watched<B>> },
    }
}

/// Everything a body tracks besides its upstream.
pub(crate) struct Core {
    pub(crate) deadlines: Deadlines,
    // While the body waits on upstream under an idle budget: the idle deadline of this wait,
    // counted from the first poll that found no frame. Kept as the deadline rather than the
    // start, so that checking a frame compares instants and adds nothing.
    idle_at: Option<Instant>,
    timer: Timer,
    recorder: Recorder,
    // Protocol endings and progress rules; `None` unless the layer opted in and the
    // content type matches.
    protocol: Option<Box<Protocol>>,
}

pin_project! {
    #[project = UpstreamProj]
    #[project_ref = UpstreamProjRef]
    pub(crate) enum Upstream<B: Body> {
        Inline { #[pin] body: B },
        // Polled by the `ResponseFuture` for its first frame, with the frames it took.
        Replayed { body: Pin<Box<Replayed<B>>> },
        Released,
    }
}

impl<B: Body> Upstream<B> {
    fn is_end_stream(&self) -> bool {
        match self {
            Upstream::Inline { body } => body.is_end_stream(),
            Upstream::Replayed { body } => body.is_end_stream(),
            Upstream::Released => true,
        }
    }

    /// The upstream's size hint, and the data bytes still to replay.
    fn size_hint(&self) -> (SizeHint, u64)
    where
        B::Data: Buf,
    {
        match self {
            Upstream::Inline { body } => (body.size_hint(), 0),
            Upstream::Replayed { body } => body.size_hint(),
            Upstream::Released => (SizeHint::with_exact(0), 0),
        }
    }

    /// Frames still to replay.
    fn replaying(&self) -> usize {
        match self {
            Upstream::Replayed { body } => body.len(),
            _ => 0,
        }
    }

    pub(crate) fn is_released(&self) -> bool {
        matches!(self, Upstream::Released)
    }

    /// Nothing more will come from upstream: it was released, or its body says it ended
    /// (what is left, if anything, are frames the `ResponseFuture` took, held in memory).
    pub(crate) fn has_ended(&self) -> bool {
        match self {
            Upstream::Inline { body } => body.is_end_stream(),
            Upstream::Replayed { body } => body.upstream_ended(),
            Upstream::Released => true,
        }
    }
}

impl<B: Body> DeadlineBody<B> {
    pub(crate) fn new(
        upstream: Upstream<B>,
        deadlines: Deadlines,
        timer: Timer,
        recorder: Recorder,
        protocol: Option<Box<Protocol>>,
    ) -> Self {
        let core = Core::new(deadlines, timer, recorder, protocol);
        DeadlineBody {
            mode: Mode::Local { upstream, core },
        }
    }
}

impl<B> DeadlineBody<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    /// Like [`new`](Self::new), with a watcher that releases the upstream at the deadline
    /// even when nobody polls; a body without one where no watcher can be had.
    pub(crate) fn new_watched(
        upstream: Upstream<B>,
        deadlines: Deadlines,
        timer: Timer,
        recorder: Recorder,
        protocol: Option<Box<Protocol>>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        let core = Core::new(deadlines, timer, recorder, protocol);
        let mode = match watch::timer(&runtime, &upstream, &deadlines) {
            Some(sleep) => Mode::Watched {
                shared: watch::spawn(upstream, core, &runtime, sleep),
            },
            None => Mode::Local { upstream, core },
        };
        DeadlineBody { mode }
    }
}

impl Core {
    fn new(
        deadlines: Deadlines,
        timer: Timer,
        recorder: Recorder,
        protocol: Option<Box<Protocol>>,
    ) -> Self {
        Core {
            deadlines,
            idle_at: None,
            timer,
            recorder,
            protocol,
        }
    }

    /// Reports completion if the body is dropped at its end: a caller that trusts
    /// `is_end_stream` (hyper does) never polls for the end.
    pub(crate) fn drop_with<B: Body>(&mut self, upstream: Pin<&Upstream<B>>) {
        if upstream.is_end_stream() {
            self.recorder.completed_if_unreported();
        }
    }

    /// Reports the drop of a body that had not ended, now rather than when the last
    /// reference to this record goes.
    pub(crate) fn dropped(&mut self) {
        self.recorder.dropped_if_unreported();
    }

    /// Releases the upstream at a deadline that has passed and reports it; the body yields
    /// [`ending`](Self::ending) next.
    pub(crate) fn expire<B: Body>(
        &mut self,
        mut upstream: Pin<&mut Upstream<B>>,
        expired: &DeadlineExceeded,
    ) {
        upstream.set(Upstream::Released);
        if let Some(since) = self.waiting_since() {
            self.idle_at = None;
            self.recorder.waited(since, Instant::now());
        }
        self.recorder.deadline(expired);
    }

    /// Whether the body waits on upstream under an idle budget.
    pub(crate) fn is_waiting(&self) -> bool {
        self.idle_at.is_some()
    }

    /// When the current wait on upstream began, if the body waits under an idle budget.
    pub(crate) fn waiting_since(&self) -> Option<Instant> {
        self.deadlines.wait_start(self.idle_at?)
    }

    /// The earliest deadline that binds now: the total one, or while the body waits under an
    /// idle budget, the earlier of it and the idle deadline.
    #[inline]
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match (self.deadlines.total(), self.idle_at) {
            (Some(total), Some(idle)) => Some(total.min(idle)),
            (total, idle) => total.or(idle),
        }
    }

    /// Whether a deadline has run out at `now`.
    #[inline]
    fn has_expired(&self, now: Instant) -> bool {
        self.next_deadline().is_some_and(|next| now >= next)
    }

    /// The deadline that has run out at `now`, if any.
    pub(crate) fn expired_at(&self, now: Instant) -> Option<DeadlineExceeded> {
        self.has_expired(now).then(|| self.name_expired(now))
    }

    /// Which deadline ran out, when one has at `now`.
    #[cold]
    fn name_expired(&self, now: Instant) -> DeadlineExceeded {
        let phase = Phase::Streaming {
            waiting_since: self.waiting_since(),
        };
        self.deadlines.name_expired(now, phase)
    }

    /// Checks a frame just taken from upstream against the deadlines: `Err` if one has
    /// passed, else when it was taken, if the clock had to be read. A frame that is not
    /// progress leaves the idle clock running, or starts it.
    #[inline(always)]
    fn check(&mut self, progress: bool) -> Result<Option<Instant>, DeadlineExceeded> {
        if progress && self.idle_at.is_none() && !self.deadlines.has_total() {
            return Ok(None);
        }
        let now = Instant::now();
        if self.has_expired(now) {
            return Err(self.name_expired(now));
        }
        match self.idle_at {
            Some(_) if progress => {
                if self.recorder.is_recording() {
                    if let Some(since) = self.waiting_since() {
                        self.recorder.waited(since, now);
                    }
                }
                self.idle_at = None;
            }
            None if !progress => self.idle_at = self.deadlines.idle_deadline(now),
            _ => {}
        }
        Ok(Some(now))
    }

    /// The upstream failed: it is released, and the body yields the protocol's ending for
    /// the failure, or the error itself.
    #[cold]
    fn upstream_failed<B, D>(
        &mut self,
        mut upstream: Pin<&mut Upstream<B>>,
        err: BoxError,
    ) -> Poll<Option<Result<Frame<D>, BoxError>>>
    where
        B: Body,
        D: Buf + 'static,
    {
        upstream.set(Upstream::Released);
        self.recorder.upstream_error();
        match self
            .protocol
            .as_deref_mut()
            .and_then(|p| p.upstream_ending(&err))
        {
            Some(last) => Poll::Ready(Some(Ok(last))),
            None => Poll::Ready(Some(Err(err))),
        }
    }

    /// What the body yields for a deadline: the protocol's ending, or the error.
    pub(crate) fn ending<D>(
        &mut self,
        expired: DeadlineExceeded,
    ) -> Poll<Option<Result<Frame<D>, BoxError>>>
    where
        D: Buf + 'static,
    {
        match self
            .protocol
            .as_deref_mut()
            .and_then(|p| p.ending(&expired))
        {
            Some(last) => Poll::Ready(Some(Ok(last))),
            None => Poll::Ready(Some(Err(expired.into()))),
        }
    }

    #[inline]
    pub(crate) fn poll_frame<B, D>(
        &mut self,
        mut upstream: Pin<&mut Upstream<B>>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<D>, BoxError>>>
    where
        B: Body<Data = D>,
        B::Error: Into<BoxError>,
        D: Buf + 'static,
    {
        if let UpstreamProj::Replayed { body } = upstream.as_mut().project() {
            // Taken before the body was handed over, and checked then.
            match body.as_mut().next() {
                Next::Frame(frame, progress) => {
                    self.recorder.frame(&frame, None, progress);
                    return Poll::Ready(Some(Ok(frame)));
                }
                Next::End => {
                    upstream.set(Upstream::Released);
                    self.recorder.completed_if_unreported();
                    return Poll::Ready(None);
                }
                Next::Failed(err) => return self.upstream_failed(upstream, err),
                Next::Poll => {}
            }
        }
        let expired = loop {
            let polled = match upstream.as_mut().project() {
                UpstreamProj::Inline { body } => body.poll_frame(cx),
                UpstreamProj::Replayed { body } => body.as_mut().body().poll_frame(cx),
                UpstreamProj::Released => {
                    self.recorder.completed_if_unreported();
                    return Poll::Ready(None);
                }
            };
            match polled {
                Poll::Ready(Some(Ok(frame))) => {
                    let (frame, progress) = match self.protocol.as_deref_mut() {
                        // The common case, kept short (measured: wrapping the frame in an
                        // `Option` here costs about 6 ns a frame).
                        None => {
                            let now = match self.check(true) {
                                Ok(now) => now,
                                Err(expired) => break expired,
                            };
                            self.recorder.frame(&frame, now, true);
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        Some(protocol) => protocol.inspect(frame),
                    };
                    let now = match self.check(progress) {
                        Ok(now) => now,
                        Err(expired) => break expired,
                    };
                    // All of it held back (an SSE event not finished yet): read on.
                    let Some(frame) = frame else { continue };
                    self.recorder.frame(&frame, now, progress);
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(err))) => return self.upstream_failed(upstream, err.into()),
                Poll::Ready(None) => {
                    // The end is judged like a frame.
                    let now = match self.check(true) {
                        Ok(now) => now.unwrap_or_else(Instant::now),
                        Err(expired) => break expired,
                    };
                    upstream.set(Upstream::Released);
                    // An event the upstream never finished goes out as it is, then the end.
                    if let Some(tail) = self.protocol.as_deref_mut().and_then(Protocol::take_tail) {
                        self.recorder.frame(&tail, Some(now), false);
                        return Poll::Ready(Some(Ok(tail)));
                    }
                    self.recorder.completed(now);
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if self.idle_at.is_none() && self.deadlines.has_idle() {
                        self.idle_at = self.deadlines.idle_deadline(Instant::now());
                    }
                    let Some(at) = self.next_deadline() else {
                        return Poll::Pending;
                    };
                    ready!(self.timer.poll_at(at, cx));
                    // The timer is ready only once the clock has reached `at`.
                    break self.name_expired(Instant::now());
                }
            }
        };
        self.expire(upstream, &expired);
        self.ending(expired)
    }

    pub(crate) fn is_end_stream<B: Body>(&self, upstream: &Upstream<B>) -> bool {
        if self.protocol.as_ref().is_some_and(|p| p.held() > 0) {
            return false;
        }
        upstream.is_end_stream()
    }

    pub(crate) fn size_hint<B: Body>(&self, upstream: &Upstream<B>) -> SizeHint
    where
        B::Data: Buf,
    {
        let (upstream, replaying) = upstream.size_hint();
        let held = replaying + self.protocol.as_ref().map_or(0, |p| p.held());
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

impl<B> Body for DeadlineBody<B>
where
    B: Body,
    B::Data: 'static,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().mode.project() {
            ModeProj::Local { upstream, core } => core.poll_frame(upstream, cx),
            ModeProj::Watched { shared } => shared.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.mode {
            Mode::Local { upstream, core } => core.is_end_stream(upstream),
            Mode::Watched { shared } => shared.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.mode {
            Mode::Local { upstream, core } => core.size_hint(upstream),
            Mode::Watched { shared } => shared.size_hint(),
        }
    }
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("deadlines", &self.deadlines)
            .field("waiting_since", &self.waiting_since())
            .field("recorder", &self.recorder)
            .finish_non_exhaustive()
    }
}

impl<B: Body> fmt::Debug for DeadlineBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mode {
            Mode::Local { upstream, core } => f
                .debug_struct("DeadlineBody")
                .field("released", &upstream.is_released())
                .field("replaying", &upstream.replaying())
                .field("core", core)
                .finish_non_exhaustive(),
            Mode::Watched { shared } => f
                .debug_struct("DeadlineBody")
                .field("watched", shared)
                .finish_non_exhaustive(),
        }
    }
}
