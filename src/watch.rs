//! Releasing the upstream at the deadline when nobody polls the body
//! ([`StreamDeadlineLayer::release_unpolled`](crate::StreamDeadlineLayer::release_unpolled)).
//!
//! A proxy polls a body only while its downstream accepts bytes, so a client that stops
//! reading stops the polls, and a body released only by polls keeps its upstream generating.
//! Here the body and one watcher task share the upstream and the body's record behind a
//! mutex: the body locks it for each poll, the watcher sleeps until the next deadline and
//! then, if no poll got there first, drops the upstream, reports the outcome and leaves the
//! deadline for the next poll to yield.
//!
//! The watcher sleeps on one tokio timer and is re-armed lazily: it wakes at the deadline it
//! last saw, re-reads the state and sleeps again if the deadline moved later (an idle wait
//! that ended). Only a deadline that moves earlier (an idle wait starting) wakes it from the
//! body, and only when it sleeps past that deadline: about once per idle period. The body
//! also wakes it when the upstream ends or the body is dropped, so it never outlives the
//! response.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::runtime::Handle;
use tokio::time::{Instant, Sleep};

use crate::BoxError;
use crate::body::{Core, Upstream};
use crate::deadline::Deadlines;
use crate::error::DeadlineExceeded;

/// The part of a body that its watcher shares.
pub(crate) struct Watched<B: Body> {
    state: Mutex<State<B>>,
}

struct State<B: Body> {
    upstream: Pin<Box<Upstream<B>>>,
    core: Core,
    /// Set when the watcher released the upstream: the next poll yields it.
    expired: Option<DeadlineExceeded>,
    /// The instant the watcher sleeps until, if any.
    armed_at: Option<Instant>,
    /// The watcher's task, to wake for an earlier deadline or the end.
    watcher: Option<Waker>,
}

impl<B: Body> State<B> {
    /// The watcher's task if it must look again: the upstream is gone, or the next deadline
    /// is earlier than the one it sleeps until.
    fn watcher_to_wake(&mut self) -> Option<Waker> {
        let wake = self.upstream.is_released()
            || match (self.core.next_deadline(), self.armed_at) {
                (Some(next), Some(armed)) => next < armed,
                (Some(_), None) => true,
                (None, _) => false,
            };
        if !wake {
            return None;
        }
        // At most one wake-up per change: the watcher re-arms and sets `armed_at` itself.
        self.armed_at = self.core.next_deadline();
        self.watcher.take()
    }
}

/// The timer for a watcher of a body with these `deadlines` on `runtime`; `None` where no
/// watcher is needed or none can be had (a runtime without timers).
///
/// None is needed without a deadline to watch, or once the upstream has ended: a short
/// answer whose head and body came together (the first frame, under a first-frame budget,
/// was its last) holds nothing upstream that a deadline could stop, so it costs no task.
pub(crate) fn timer<B: Body>(
    runtime: &Handle,
    upstream: &Upstream<B>,
    deadlines: &Deadlines,
) -> Option<Sleep> {
    if !deadlines.bind_the_body() || upstream.has_ended() {
        return None;
    }
    // tokio panics here when the runtime was built without `enable_time`; the body's own
    // timer says so in a `tracing` event when it first has to wait.
    let _entered = runtime.enter();
    let now = Instant::now();
    catch_unwind(AssertUnwindSafe(|| tokio::time::sleep_until(now))).ok()
}

/// Moves `upstream` and `core` behind a watcher task on `runtime`, sleeping on `sleep`.
pub(crate) fn spawn<B>(
    upstream: Upstream<B>,
    core: Core,
    runtime: &Handle,
    sleep: Sleep,
) -> Arc<Watched<B>>
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    let shared = Arc::new(Watched {
        state: Mutex::new(State {
            upstream: Box::pin(upstream),
            core,
            expired: None,
            armed_at: None,
            watcher: None,
        }),
    });
    // A runtime that has shut down drops the task unpolled: the body then works as one
    // without a watcher, released by polls.
    drop(runtime.spawn(Watch {
        shared: shared.clone(),
        sleep,
        sleeping_until: None,
    }));
    shared
}

impl<B: Body> Watched<B> {
    fn lock(&self) -> MutexGuard<'_, State<B>> {
        // A poll of the upstream that panicked leaves the state as consistent as a body that
        // panicked mid-poll ever is; the deadline still applies.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[inline]
    pub(crate) fn poll_frame(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>>
    where
        B::Data: Buf + 'static,
        B::Error: Into<BoxError>,
    {
        let mut guard = self.lock();
        let state = &mut *guard;
        if let Some(expired) = state.expired.take() {
            return state.core.ending(expired);
        }
        let was_waiting = state.core.is_waiting();
        let polled = state.core.poll_frame(state.upstream.as_mut(), cx);
        // Only a wait that starts can bring the next deadline earlier (a frame ending a wait
        // moves it later: the watcher finds that out when it wakes).
        if (was_waiting || !state.core.is_waiting()) && !state.upstream.is_released() {
            return polled;
        }
        let watcher = state.watcher_to_wake();
        drop(guard);
        if let Some(watcher) = watcher {
            watcher.wake();
        }
        polled
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        let state = self.lock();
        state.expired.is_none() && state.core.is_end_stream(&state.upstream)
    }

    pub(crate) fn size_hint(&self) -> SizeHint
    where
        B::Data: Buf,
    {
        let state = self.lock();
        state.core.size_hint(&state.upstream)
    }

    /// The body is gone: report, release the upstream now (not when the watcher wakes) and
    /// let the watcher end.
    pub(crate) fn body_dropped(&self) {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.core.drop_with(state.upstream.as_ref());
        state.core.dropped();
        state.upstream.set(Upstream::Released);
        let watcher = state.watcher.take();
        drop(guard);
        if let Some(watcher) = watcher {
            watcher.wake();
        }
    }
}

impl<B: Body> fmt::Debug for Watched<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Watched")
            .field("released", &state.upstream.is_released())
            .field("core", &state.core)
            .field("armed_at", &state.armed_at)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// The watcher task of one body.
    struct Watch<B: Body> {
        shared: Arc<Watched<B>>,
        #[pin]
        sleep: Sleep,
        sleeping_until: Option<Instant>,
    }
}

impl<B: Body> Future for Watch<B> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // Two rounds: a timer that fired for a deadline that has since moved later is
        // re-armed and polled again.
        for _ in 0..2 {
            let mut guard = this.shared.lock();
            let state = &mut *guard;
            if state.upstream.is_released() {
                return Poll::Ready(());
            }
            if let Some(expired) = state.core.expired_at(Instant::now()) {
                state.core.expire(state.upstream.as_mut(), &expired);
                state.expired = Some(expired);
                return Poll::Ready(());
            }
            if !state
                .watcher
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.watcher = Some(cx.waker().clone());
            }
            let next = state.core.next_deadline();
            state.armed_at = next;
            drop(guard);
            let Some(at) = next else {
                // Only an idle budget, and no wait yet: the body wakes this task.
                return Poll::Pending;
            };
            if *this.sleeping_until != Some(at) {
                this.sleep.as_mut().reset(at);
                *this.sleeping_until = Some(at);
            }
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
