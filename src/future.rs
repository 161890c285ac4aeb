//! [`ResponseFuture`]: waits for the response head (and, under a first-frame budget, its
//! first frame) within the budgets.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::BoxError;
use crate::body::{DeadlineBody, Upstream};
use crate::deadline::{Deadlines, Phase};
use crate::error::DeadlineExceeded;
use crate::grpc;
use crate::outcome::Recorder;
use crate::protocol::{Protocol, ProtocolConfig};
use crate::release::{ReleaseOnPoll, ReleaseUnpolled};
use crate::replay::Replayed;
use crate::timer::Timer;

pin_project! {
    /// The future returned by [`StreamDeadline`](crate::StreamDeadline).
    ///
    /// Resolves to the response with its body wrapped in [`DeadlineBody`], or fails with a
    /// boxed [`DeadlineExceeded`] when the total budget (kind `Total`) or the first-frame
    /// budget (kind `FirstFrame`) runs out first. Failing drops the inner future, which
    /// cancels the request. An error from the inner service passes through unchanged.
    ///
    /// Under a first-frame budget it also waits for the first body frame (or the end of an
    /// empty body), and hands it to the body to be replayed first. That is what makes a stuck
    /// request an error of the *call*, which `tower::retry` can retry. Frames that do not
    /// count as progress (under the layer's progress rules) are held with it and replayed
    /// in order.
    ///
    /// With gRPC endings on and a gRPC request, a deadline before the head resolves to a
    /// trailers-only response with `grpc-status: 4` instead of an error.
    ///
    /// `R` is the layer's [`ReleaseOnPoll`] (the default) or [`ReleaseUnpolled`]: with the
    /// latter, the body it resolves to is handed to a watcher task, so it needs
    /// `B: Send + 'static`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::{Service, ServiceExt};
    /// use tower_stream_deadline::{DeadlineExceeded, DeadlineKind, StreamDeadline};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// // An upstream that never answers.
    /// let silent = tower::service_fn(|_req: http::Request<()>| {
    ///     std::future::pending::<Result<http::Response<http_body_util::Empty<bytes::Bytes>>, std::convert::Infallible>>()
    /// });
    /// let mut svc = StreamDeadline::new(silent, Duration::from_secs(2));
    /// let future = svc.ready().await.unwrap().call(http::Request::new(()));
    /// let err = future.await.unwrap_err();
    /// assert_eq!(err.downcast_ref::<DeadlineExceeded>().unwrap().kind(), DeadlineKind::Total);
    /// # }
    /// ```
    #[project = Projected]
    pub struct ResponseFuture<F, B: Body, R = ReleaseOnPoll> {
        #[pin]
        state: State<F, B>,
        deadlines: Deadlines,
        timer: Timer,
        // `None` once handed to the body; dropped with the future, it reports the drop.
        recorder: Option<Recorder>,
        protocol: Option<Arc<ProtocolConfig>>,
        grpc_request: bool,
        // The runtime of the watcher that releases the upstream when nobody polls, if the
        // layer asked for one.
        watcher: Option<Handle>,
        release: PhantomData<fn() -> R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B: Body> {
        Head { #[pin] future: F },
        // `None` only for the instant its contents are handed to the `DeadlineBody`.
        FirstFrame { waiting: Option<Waiting<B>> },
        Done,
    }
}

/// A response whose head has come, waiting for its first frame that counts as progress.
struct Waiting<B: Body> {
    head: http::response::Parts,
    body: Pin<Box<Replayed<B>>>,
    held_bytes: usize,
    protocol: Option<Box<Protocol>>,
}

/// Past this many bytes of frames that are not progress, the call resolves anyway: the
/// upstream is clearly sending, and the future will not buffer without bound.
const MAX_HELD_BYTES: usize = 64 * 1024;

impl<F, B: Body, R> ResponseFuture<F, B, R> {
    pub(crate) fn new(
        future: F,
        deadlines: Deadlines,
        recorder: Recorder,
        protocol: Option<Arc<ProtocolConfig>>,
        grpc_request: bool,
        release_unpolled: bool,
    ) -> Self {
        let timer = Timer::new();
        let watcher = if release_unpolled {
            timer.runtime()
        } else {
            None
        };
        ResponseFuture {
            state: State::Head { future },
            deadlines,
            timer,
            recorder: Some(recorder),
            protocol,
            grpc_request,
            watcher,
            release: PhantomData,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    B::Data: 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<DeadlineBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_response(cx, None)
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, ReleaseUnpolled>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<DeadlineBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_response(cx, Some(DeadlineBody::new_watched))
    }
}

/// Makes the body handed over by a future whose layer has `release_unpolled`: one with a
/// watcher task on the given runtime. Only that layer's future names one, so only it needs
/// the `Send + 'static` bound a task takes.
type Watched<B> =
    fn(Upstream<B>, Deadlines, Timer, Recorder, Option<Box<Protocol>>, Handle) -> DeadlineBody<B>;

impl<F, B, E, R> ResponseFuture<F, B, R>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    B::Data: 'static,
    B::Error: Into<BoxError>,
{
    #[inline]
    fn poll_response(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        watched: Option<Watched<B>>,
    ) -> Poll<Output<B>> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Head { future } => match future.poll(cx) {
                    Poll::Pending => {}
                    Poll::Ready(Err(err)) => return Poll::Ready(this.upstream_failed(err.into())),
                    Poll::Ready(Ok(response)) => {
                        let (head, body) = response.into_parts();
                        let protocol = this.protocol.as_ref().and_then(|p| p.for_response(&head));
                        if !this.deadlines.waits_for_first_frame() {
                            // Only a watcher's layer gains by it, and not for a stream the
                            // protocol reads.
                            let upstream = match (&watched, &this.watcher, &protocol) {
                                (Some(_), Some(_), None) => take_ready(body, this.deadlines, cx),
                                _ => Upstream::Inline { body },
                            };
                            return Poll::Ready(this.finish(head, upstream, protocol, watched));
                        }
                        if let Some(recorder) = this.recorder {
                            recorder.head(Instant::now());
                        }
                        let waiting = Waiting {
                            head,
                            body: Replayed::new(body),
                            held_bytes: 0,
                            protocol,
                        };
                        this.state.set(State::FirstFrame {
                            waiting: Some(waiting),
                        });
                        continue;
                    }
                },
                StateProj::FirstFrame { waiting } => {
                    let Some(w) = waiting.as_mut() else {
                        return Poll::Ready(Err(POLLED_AFTER_COMPLETION.into()));
                    };
                    match w.body.as_mut().body().poll_frame(cx) {
                        Poll::Pending => {}
                        Poll::Ready(Some(Err(err))) => {
                            return Poll::Ready(this.upstream_failed(err.into()));
                        }
                        Poll::Ready(Some(Ok(frame))) => {
                            let (frame, progress) = match w.protocol.as_deref_mut() {
                                None => (Some(frame), true),
                                Some(protocol) => protocol.inspect(frame),
                            };
                            let error = match (progress, w.protocol.as_deref_mut()) {
                                (true, Some(protocol)) => protocol.first_event_error(),
                                _ => None,
                            };
                            if let Some(error) = error {
                                // Nothing of the answer came: an error of the call.
                                return Poll::Ready(this.upstream_failed(error.into()));
                            }
                            // All of it held back (an SSE event not finished yet): read on.
                            let Some(frame) = frame else { continue };
                            let size = frame.data_ref().map_or(0, |d| d.remaining());
                            if !progress && w.held_bytes + size <= MAX_HELD_BYTES {
                                w.held_bytes += size;
                                w.body.as_mut().hold(frame);
                                continue;
                            }
                            let Some(mut w) = waiting.take() else {
                                continue;
                            };
                            w.body.as_mut().first(frame);
                            let upstream = Upstream::Replayed { body: w.body };
                            return Poll::Ready(this.finish(w.head, upstream, w.protocol, watched));
                        }
                        Poll::Ready(None) => {
                            let Some(mut w) = waiting.take() else {
                                continue;
                            };
                            let tail = w.protocol.as_deref_mut().and_then(Protocol::take_tail);
                            w.body.as_mut().ended(tail);
                            let upstream = Upstream::Replayed { body: w.body };
                            return Poll::Ready(this.finish(w.head, upstream, w.protocol, watched));
                        }
                    }
                }
                StateProj::Done => return Poll::Ready(Err(POLLED_AFTER_COMPLETION.into())),
            }
            // Nothing ready yet: wait, at most until the next deadline.
            let expired = ready!(this.timer.poll_expired(
                this.deadlines,
                Phase::BeforeFirstFrame,
                cx
            ));
            return Poll::Ready(this.expired(expired));
        }
    }
}

/// An answer whose length is known (one not streamed, an error) is often whole when its
/// head comes: under `release_unpolled`, what is ready of it is taken now, so that an
/// answer already whole holds nothing upstream and needs no watcher task. A stream, or a
/// body with nothing to watch for, is handed over untouched.
fn take_ready<B>(body: B, deadlines: &Deadlines, cx: &mut Context<'_>) -> Upstream<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    if !deadlines.bind_the_body() || body.is_end_stream() || body.size_hint().exact().is_none() {
        return Upstream::Inline { body };
    }
    let mut replayed = Replayed::new(body);
    match replayed.as_mut().body().poll_frame(cx) {
        Poll::Pending => {}
        Poll::Ready(Some(Ok(frame))) => replayed.as_mut().first(frame),
        Poll::Ready(Some(Err(err))) => replayed.as_mut().failed(err.into()),
        Poll::Ready(None) => replayed.as_mut().ended(None),
    }
    Upstream::Replayed { body: replayed }
}

const POLLED_AFTER_COMPLETION: &str =
    "tower-stream-deadline: ResponseFuture polled after it completed";

type Output<B> = Result<Response<DeadlineBody<B>>, BoxError>;

impl<F, B: Body, R> Projected<'_, F, B, R> {
    /// Ends the future, dropping the inner future or body: that cancels the request.
    fn upstream_failed(&mut self, err: BoxError) -> Output<B> {
        self.state.set(State::Done);
        if let Some(mut recorder) = self.recorder.take() {
            recorder.upstream_error();
        }
        Err(err)
    }

    fn expired(&mut self, expired: DeadlineExceeded) -> Output<B> {
        self.state.set(State::Done);
        let mut recorder = self.recorder.take();
        if let Some(recorder) = &mut recorder {
            recorder.deadline(&expired);
        }
        let grpc_endings = self.protocol.as_ref().is_some_and(|p| p.grpc_endings);
        match recorder {
            Some(recorder) if grpc_endings && *self.grpc_request => {
                let body = DeadlineBody::new(
                    Upstream::Released,
                    *self.deadlines,
                    self.timer.take(),
                    recorder,
                    None,
                );
                Ok(Response::from_parts(grpc::trailers_only(&expired), body))
            }
            _ => Err(expired.into()),
        }
    }

    /// Hands the response over, unless a deadline passed while it was being taken.
    fn finish(
        &mut self,
        head: http::response::Parts,
        upstream: Upstream<B>,
        protocol: Option<Box<Protocol>>,
        watched: Option<Watched<B>>,
    ) -> Output<B> {
        let now = Instant::now();
        if let Some(expired) = self.deadlines.expired(now, Phase::BeforeFirstFrame) {
            drop(upstream);
            return self.expired(expired);
        }
        self.state.set(State::Done);
        let Some(mut recorder) = self.recorder.take() else {
            return Err(POLLED_AFTER_COMPLETION.into());
        };
        if !self.deadlines.waits_for_first_frame() {
            recorder.head(now);
        }
        if matches!(&upstream, Upstream::Replayed { body } if body.made_progress()) {
            recorder.first_frame(now);
        }
        let mut head = head;
        if protocol.as_ref().is_some_and(|p| p.extends_body()) {
            // The final event would make a `content-length` a lie.
            head.headers.remove(http::header::CONTENT_LENGTH);
        }
        let (deadlines, timer) = (*self.deadlines, self.timer.take());
        let body = match (watched, self.watcher.take()) {
            (Some(watched), Some(runtime)) => {
                watched(upstream, deadlines, timer, recorder, protocol, runtime)
            }
            _ => DeadlineBody::new(upstream, deadlines, timer, recorder, protocol),
        };
        Ok(Response::from_parts(head, body))
    }
}

impl<F, B: Body, R> fmt::Debug for ResponseFuture<F, B, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Head { .. } => "waiting for the response head",
            State::FirstFrame { .. } => "waiting for the first frame",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("deadlines", &self.deadlines)
            .finish_non_exhaustive()
    }
}
