//! One tokio timer per response that never panics, wherever and whenever it is polled.
//!
//! `tokio::time::Sleep` panics when it is created outside a runtime or in one without timers,
//! and when it is polled for the first time, or at all, after its runtime shut down. A body
//! handed to another thread, or kept past its runtime, must not, so this wrapper:
//! - takes the runtime from `call` (falling back to the polling thread's), creates the `Sleep`
//!   only when a poll first has to wait, and gives up (clock checks only) where it cannot;
//! - registers the `Sleep` with `reset`, which fires it instead of panicking on a runtime that
//!   has shut down, and reads `is_elapsed` before every poll, so a shut-down timer is never
//!   polled;
//! - is re-armed lazily: armed earlier than needed, it fires early and is re-armed then,
//!   so an idle deadline that moves on every frame costs one re-arm per idle period, not one
//!   per frame;
//! - is not polled again by the task whose waker it already holds: a body that waits before
//!   every frame (every frame read from a socket does) would otherwise pay tokio's
//!   cooperative-budget check and the waker's registration on each of them.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use pin_project_lite::pin_project;

use tokio::runtime::Handle;
use tokio::time::{Instant, Sleep};

use crate::deadline::{Deadlines, Phase};
use crate::error::DeadlineExceeded;

#[derive(Debug)]
pub(crate) struct Timer {
    state: State,
}

#[derive(Debug)]
enum State {
    /// No wait yet; the runtime seen at `call`, if any.
    Unarmed(Option<Handle>),
    Armed(Pin<Box<Armed>>),
    /// No timer can be had: the deadline is still checked on every poll.
    Unavailable,
}

pin_project! {
    /// A registered `Sleep`, armed for `sleep.deadline()`.
    #[derive(Debug)]
    struct Armed {
        #[pin]
        sleep: Sleep,
        // The waker the `Sleep` holds from its last `Pending` poll, until it fires or is reset.
        registered: Option<Waker>,
    }
}

impl Timer {
    /// A timer from the current runtime, if there is one; nothing is allocated or registered
    /// until [`poll_at`](Self::poll_at) first has to wait.
    pub(crate) fn new() -> Self {
        Timer {
            state: State::Unarmed(Handle::try_current().ok()),
        }
    }

    /// The runtime of a timer not yet armed, if it has one.
    pub(crate) fn runtime(&self) -> Option<Handle> {
        match &self.state {
            State::Unarmed(handle) => handle.clone(),
            State::Armed { .. } | State::Unavailable => None,
        }
    }

    /// Leaves this timer spent and returns what it held, to hand it from future to body.
    pub(crate) fn take(&mut self) -> Timer {
        std::mem::replace(
            self,
            Timer {
                state: State::Unavailable,
            },
        )
    }

    /// `Ready` with the deadline that ran out once the next deadline of `phase` has passed;
    /// otherwise `Pending`, with the task in `cx` to be woken at that deadline.
    pub(crate) fn poll_expired(
        &mut self,
        deadlines: &Deadlines,
        phase: Phase,
        cx: &mut Context<'_>,
    ) -> Poll<DeadlineExceeded> {
        let Some(at) = deadlines.next(phase) else {
            return Poll::Pending;
        };
        ready!(self.poll_at(at, cx));
        // `poll_at` is ready only once the clock has reached `at`, so this is `Some`.
        deadlines
            .expired(Instant::now(), phase)
            .map_or(Poll::Pending, Poll::Ready)
    }

    /// `Ready` once the clock has reached `at`; otherwise `Pending`, with the task in `cx` to be
    /// woken no later than `at` (unless no timer can be had: then only a later poll sees it).
    #[inline]
    pub(crate) fn poll_at(&mut self, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        // The same task again, and the timer, armed no later than `at`, has not fired: it
        // already holds this task's waker. The path of every wait but the first.
        if let State::Armed(armed) = &self.state {
            if armed.sleep.deadline() <= at
                && !armed.sleep.is_elapsed()
                && armed
                    .registered
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
            {
                return Poll::Pending;
            }
        }
        self.poll_at_slow(at, cx)
    }

    /// [`poll_at`](Self::poll_at) when the timer is not armed, is armed too late, fired, or
    /// holds another task's waker.
    #[inline(never)]
    fn poll_at_slow(&mut self, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if let State::Unarmed(handle) = &mut self.state {
            self.state = arm(handle.take(), at);
        }
        let State::Armed(armed) = &mut self.state else {
            // No timer: nothing will wake the task, but a poll past the deadline still sees it.
            return match Instant::now() >= at {
                true => Poll::Ready(()),
                false => Poll::Pending,
            };
        };
        let mut armed = armed.as_mut().project();
        if armed.sleep.deadline() > at {
            armed.sleep.as_mut().reset(at);
            *armed.registered = None;
        }
        // Two rounds: a timer armed for an earlier deadline fires, is re-armed, then waits.
        for _ in 0..2 {
            // Never poll a fired timer: after its runtime shut down, that panics.
            if !armed.sleep.is_elapsed() && armed.sleep.as_mut().poll(cx).is_pending() {
                *armed.registered = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if Instant::now() >= at {
                return Poll::Ready(());
            }
            // Fired before `at`: it was armed for an earlier deadline, or its runtime shut down
            // (which fires every timer). Re-arming tells them apart: a shut-down runtime fires
            // the timer again at once instead of registering it.
            armed.sleep.as_mut().reset(at);
            *armed.registered = None;
            if armed.sleep.is_elapsed() && Instant::now() < at {
                tracing::debug!(
                    target: "tower_stream_deadline",
                    "the runtime that held the deadline timer shut down; \
                     the deadline is now checked only when the body is polled"
                );
                self.state = State::Unavailable;
                return Poll::Pending;
            }
        }
        // A timer that keeps firing early: ask to be polled again rather than sleep unwoken.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Creates and registers a `Sleep` at `at` in `handle`'s runtime, or the polling thread's.
#[cold]
fn arm(handle: Option<Handle>, at: Instant) -> State {
    let Some(handle) = handle.or_else(|| Handle::try_current().ok()) else {
        tracing::debug!(
            target: "tower_stream_deadline",
            "no tokio runtime to hold a deadline timer; \
             the deadline is checked only when the body is polled"
        );
        return State::Unavailable;
    };
    let _entered = handle.enter();
    // tokio panics here when the runtime was built without `enable_time`.
    let armed = || {
        Box::pin(Armed {
            sleep: tokio::time::sleep_until(at),
            registered: None,
        })
    };
    match catch_unwind(AssertUnwindSafe(armed)) {
        Ok(mut armed) => {
            // Registers without polling: on a runtime that has shut down this fires the timer
            // rather than panicking, and `poll_at` sees it elapsed.
            armed.as_mut().project().sleep.reset(at);
            State::Armed(armed)
        }
        Err(_) => {
            tracing::warn!(
                target: "tower_stream_deadline",
                "the tokio runtime has no timers (built without `enable_time`); \
                 the deadline is checked only when the body is polled"
            );
            State::Unavailable
        }
    }
}
