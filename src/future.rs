//! [`ResponseFuture`]: waits for the response head (and, under a first-frame budget, its
//! first frame) within the budgets.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::BoxError;
use crate::body::{DeadlineBody, Upstream};
use crate::deadline::{Deadlines, Phase};
use crate::error::DeadlineExceeded;
use crate::outcome::Recorder;
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
    /// request an error of the *call*, which `tower::retry` can retry.
    #[project = Projected]
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
        deadlines: Deadlines,
        timer: Timer,
        // `None` once handed to the body; dropped with the future, it reports the drop.
        recorder: Option<Recorder>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Head { #[pin] future: F },
        // `None` only for the instant the head and body are handed to the `DeadlineBody`.
        FirstFrame { waiting: Option<(http::response::Parts, Pin<Box<B>>)> },
        Done,
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn new(future: F, deadlines: Deadlines, recorder: Recorder) -> Self {
        ResponseFuture {
            state: State::Head { future },
            deadlines,
            timer: Timer::new(),
            recorder: Some(recorder),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<DeadlineBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Head { future } => match future.poll(cx) {
                    Poll::Pending => {}
                    Poll::Ready(Err(err)) => return Poll::Ready(this.upstream_failed(err.into())),
                    Poll::Ready(Ok(response)) => {
                        let (head, body) = response.into_parts();
                        if !this.deadlines.waits_for_first_frame() {
                            return Poll::Ready(this.finish(head, Upstream::Inline { body }, None));
                        }
                        if let Some(recorder) = this.recorder {
                            recorder.head(Instant::now());
                        }
                        let waiting = Some((head, Box::pin(body)));
                        this.state.set(State::FirstFrame { waiting });
                        continue;
                    }
                },
                StateProj::FirstFrame { waiting } => {
                    let Some((_, body)) = waiting.as_mut() else {
                        return Poll::Ready(Err(POLLED_AFTER_COMPLETION.into()));
                    };
                    match body.as_mut().poll_frame(cx) {
                        Poll::Pending => {}
                        Poll::Ready(Some(Err(err))) => {
                            return Poll::Ready(this.upstream_failed(err.into()));
                        }
                        Poll::Ready(first) => {
                            let Some((head, body)) = waiting.take() else {
                                return Poll::Ready(Err(POLLED_AFTER_COMPLETION.into()));
                            };
                            let first = first.and_then(Result::ok);
                            let upstream = match first {
                                Some(_) => Upstream::Boxed { body },
                                // An empty body: nothing left to hold on to.
                                None => Upstream::Released,
                            };
                            return Poll::Ready(this.finish(head, upstream, first));
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

const POLLED_AFTER_COMPLETION: &str =
    "tower-stream-deadline: ResponseFuture polled after it completed";

type Output<B> = Result<Response<DeadlineBody<B>>, BoxError>;

impl<F, B: Body> Projected<'_, F, B> {
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
        if let Some(mut recorder) = self.recorder.take() {
            recorder.deadline(&expired);
        }
        Err(expired.into())
    }

    /// Hands the response over, unless a deadline passed while it was being taken.
    fn finish(
        &mut self,
        head: http::response::Parts,
        upstream: Upstream<B>,
        first: Option<Frame<B::Data>>,
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
        if self.deadlines.waits_for_first_frame() {
            match first {
                Some(_) => recorder.first_frame(now),
                None => recorder.completed(now),
            }
        } else {
            recorder.head(now);
        }
        let body = DeadlineBody::new(
            upstream,
            first,
            *self.deadlines,
            self.timer.take(),
            recorder,
        );
        Ok(Response::from_parts(head, body))
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
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
