//! The upstream body of a response whose future polled it: boxed with what the
//! `ResponseFuture` took from it (frames, the end, an error), which the `DeadlineBody`
//! yields first.
//!
//! Under a first-frame budget the future polls the body for its first frame; under
//! `release_unpolled` it takes what is ready of an answer whose length is known, so that an
//! answer already whole needs no watcher. Once polled the body cannot move, so it is boxed;
//! what was taken travels in the same allocation rather than a second one.

use std::collections::VecDeque;
use std::pin::Pin;

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::BoxError;

pin_project! {
    pub(crate) struct Replayed<B: Body> {
        // Frames that did not count as progress, in order; then `first`.
        held: VecDeque<Frame<B::Data>>,
        // The first frame that counted as progress (or an unfinished SSE event at the end).
        first: Option<Frame<B::Data>>,
        // The body ended while the future waited: after the replay there is nothing to poll.
        ended: bool,
        // The body failed when the future polled it (not under a first-frame budget, where
        // that fails the call): yielded after the replay, as it came.
        failed: Option<BoxError>,
        #[pin]
        body: B,
    }
}

/// What a [`Replayed`] body yields before its upstream is polled again.
pub(crate) enum Next<D> {
    /// A frame taken by the future, and whether it counted as progress.
    Frame(Frame<D>, bool),
    /// The replay is over and the body had ended.
    End,
    /// The replay is over and the body had failed.
    Failed(BoxError),
    /// The replay is over: poll the body.
    Poll,
}

impl<B: Body> Replayed<B> {
    pub(crate) fn new(body: B) -> Pin<Box<Self>> {
        Box::pin(Replayed {
            held: VecDeque::new(),
            first: None,
            ended: false,
            failed: None,
            body,
        })
    }

    /// Holds a frame that did not count as progress.
    pub(crate) fn hold(self: Pin<&mut Self>, frame: Frame<B::Data>) {
        self.project().held.push_back(frame);
    }

    /// The first frame that counted as progress: the future is done with the body.
    pub(crate) fn first(self: Pin<&mut Self>, frame: Frame<B::Data>) {
        *self.project().first = Some(frame);
    }

    /// The body ended, with an unfinished event to go out last, if any.
    pub(crate) fn ended(self: Pin<&mut Self>, tail: Option<Frame<B::Data>>) {
        let this = self.project();
        *this.first = tail;
        *this.ended = true;
    }

    /// The body failed, after the frames held, if any.
    pub(crate) fn failed(self: Pin<&mut Self>, error: BoxError) {
        *self.project().failed = Some(error);
    }

    /// Whether the body sent a frame that counted as progress (rather than ending).
    pub(crate) fn made_progress(&self) -> bool {
        self.first.is_some() && !self.ended
    }

    /// The next frame to replay, or what to do once there is none.
    pub(crate) fn next(self: Pin<&mut Self>) -> Next<B::Data> {
        let this = self.project();
        if let Some(frame) = this.held.pop_front() {
            return Next::Frame(frame, false);
        }
        if let Some(frame) = this.first.take() {
            return Next::Frame(frame, true);
        }
        if let Some(error) = this.failed.take() {
            return Next::Failed(error);
        }
        match this.ended {
            true => Next::End,
            false => Next::Poll,
        }
    }

    /// The body itself, to poll once the replay is over.
    pub(crate) fn body(self: Pin<&mut Self>) -> Pin<&mut B> {
        self.project().body
    }

    /// Frames still to replay.
    pub(crate) fn len(&self) -> usize {
        self.held.len() + usize::from(self.first.is_some())
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.len() == 0 && self.failed.is_none() && self.upstream_ended()
    }

    /// The body itself has no more to give, whatever is left to replay.
    pub(crate) fn upstream_ended(&self) -> bool {
        self.ended || self.failed.is_some() || self.body.is_end_stream()
    }

    /// The body's own size hint (nothing once it ended), and the data bytes still to replay.
    pub(crate) fn size_hint(&self) -> (SizeHint, u64)
    where
        B::Data: Buf,
    {
        let held = self
            .held
            .iter()
            .chain(&self.first)
            .filter_map(Frame::data_ref)
            .map(|d| d.remaining() as u64)
            .sum();
        match self.ended {
            true => (SizeHint::with_exact(0), held),
            false => (self.body.size_hint(), held),
        }
    }
}
