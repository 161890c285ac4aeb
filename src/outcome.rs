//! [`Outcome`]: one record per response of what happened, for metrics.
//!
//! The [`Recorder`] travels with the response, from the future to the body, and reports
//! exactly once: when the body ends, fails, or is dropped before its end (a dropped future
//! reports too). It reads the clock only where the body already does, plus once for the
//! head, once for the first frame and once at the end; when nothing would read the record
//! (no callback, the event disabled at `call`) it keeps nothing and reads no clock.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use http_body::Frame;
use tokio::time::Instant;

use crate::deadline::Deadlines;
use crate::error::{DeadlineExceeded, DeadlineKind};

/// How a response ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ending {
    /// The body reached its end within every budget.
    Completed,
    /// A budget ran out: the call or the body failed with [`DeadlineExceeded`] of this kind.
    Deadline(DeadlineKind),
    /// The inner service or the upstream body failed; its error was passed on.
    UpstreamError,
    /// The caller dropped the response future or the body before the end.
    Dropped,
}

impl Ending {
    /// A short lowercase name, as used in `tracing` events.
    pub fn as_str(&self) -> &'static str {
        match self {
            Ending::Completed => "completed",
            Ending::Deadline(DeadlineKind::Total) => "deadline-total",
            Ending::Deadline(DeadlineKind::FirstFrame) => "deadline-first-frame",
            Ending::Deadline(DeadlineKind::Idle) => "deadline-idle",
            Ending::UpstreamError => "upstream-error",
            Ending::Dropped => "dropped",
        }
    }
}

/// What happened to one response, reported once when it ends (see
/// [`StreamDeadlineLayer::on_outcome`](crate::StreamDeadlineLayer::on_outcome)).
///
/// All times are measured from `call` on tokio's clock, except `longest_idle`.
///
/// ```
/// use std::time::Duration;
/// use tower::{Layer, Service, ServiceExt};
/// use tower_stream_deadline::{Ending, StreamDeadlineLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let (tx, rx) = std::sync::mpsc::channel();
/// let layer = StreamDeadlineLayer::new(Duration::from_secs(45))
///     .on_outcome(move |outcome| tx.send(outcome.clone()).unwrap());
/// let upstream = tower::service_fn(|_req: http::Request<()>| async {
///     let body = http_body_util::Full::new(bytes::Bytes::from_static(b"hello"));
///     Ok::<_, std::convert::Infallible>(http::Response::new(body))
/// });
/// let mut svc = layer.layer(upstream);
/// let response = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
/// http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
///
/// let outcome = rx.recv().unwrap();
/// assert_eq!((outcome.ending, outcome.frames, outcome.bytes), (Ending::Completed, 1, 5));
/// assert_eq!(outcome.total_used(), Some(0.0));
/// # }
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Outcome {
    /// How it ended.
    pub ending: Ending,
    /// From `call` to the response head, if it came.
    pub time_to_head: Option<Duration>,
    /// From `call` to the first body frame, if one came.
    pub time_to_first_frame: Option<Duration>,
    /// The longest the body waited on upstream for a frame (or its end), if it ever waited.
    pub longest_idle: Option<Duration>,
    /// From `call` to the end (or the error, or the drop).
    pub total_time: Duration,
    /// Frames delivered to the caller.
    pub frames: u64,
    /// Data bytes delivered to the caller.
    pub bytes: u64,
    /// The total budget that applied (after per-request budgets and headers), if finite.
    pub total_budget: Option<Duration>,
    /// The first-frame budget that applied, if any.
    pub first_frame_budget: Option<Duration>,
    /// The idle budget that applied, if any.
    pub idle_budget: Option<Duration>,
}

impl Outcome {
    /// The share of the total budget used (`1.0` or more when it ran out).
    pub fn total_used(&self) -> Option<f64> {
        share(Some(self.total_time), self.total_budget)
    }

    /// The share of the first-frame budget used by the first frame (`None` if it never came).
    pub fn first_frame_used(&self) -> Option<f64> {
        share(self.time_to_first_frame, self.first_frame_budget)
    }

    /// The share of the idle budget used by the longest wait.
    pub fn idle_used(&self) -> Option<f64> {
        share(self.longest_idle, self.idle_budget)
    }
}

fn share(used: Option<Duration>, budget: Option<Duration>) -> Option<f64> {
    let (used, budget) = (used?, budget?);
    if budget.is_zero() {
        return Some(if used.is_zero() { 0.0 } else { f64::INFINITY });
    }
    Some(used.as_secs_f64() / budget.as_secs_f64())
}

/// The callback set with `on_outcome`.
#[derive(Clone)]
pub(crate) struct OnOutcome(Arc<dyn Fn(&Outcome) + Send + Sync>);

impl OnOutcome {
    pub(crate) fn new(f: impl Fn(&Outcome) + Send + Sync + 'static) -> Self {
        OnOutcome(Arc::new(f))
    }

    /// The layer's callback (if any), then a request's own.
    pub(crate) fn both(
        layer: Option<OnOutcome>,
        request: Arc<dyn Fn(&Outcome) + Send + Sync>,
    ) -> Self {
        match layer {
            None => OnOutcome(request),
            Some(layer) => OnOutcome::new(move |outcome| {
                (layer.0)(outcome);
                request(outcome);
            }),
        }
    }
}

impl fmt::Debug for OnOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnOutcome(..)")
    }
}

/// Gathers one response's [`Outcome`] and reports it once, or keeps nothing when nothing
/// would read it: no callback and the crate's `tracing` event disabled at `call`. The record
/// is out of line so that a body that keeps none is one pointer smaller, not 170 bytes.
#[derive(Debug)]
pub(crate) struct Recorder(Option<Box<Record>>);

#[derive(Debug)]
struct Record {
    start: Instant,
    on_outcome: Option<OnOutcome>,
    outcome: Outcome,
    reported: bool,
}

/// Whether the crate's one event per response would be recorded by the current subscriber.
fn event_enabled() -> bool {
    tracing::enabled!(target: "tower_stream_deadline", tracing::Level::WARN)
        || tracing::enabled!(target: "tower_stream_deadline", tracing::Level::DEBUG)
}

impl Recorder {
    pub(crate) fn new(deadlines: &Deadlines, on_outcome: Option<OnOutcome>) -> Self {
        if on_outcome.is_none() && !event_enabled() {
            return Recorder(None);
        }
        let (total_budget, first_frame_budget, idle_budget) = deadlines.budgets();
        Recorder(Some(Box::new(Record {
            start: deadlines.start(),
            on_outcome,
            outcome: Outcome {
                ending: Ending::Dropped,
                time_to_head: None,
                time_to_first_frame: None,
                longest_idle: None,
                total_time: Duration::ZERO,
                frames: 0,
                bytes: 0,
                total_budget,
                first_frame_budget,
                idle_budget,
            },
            reported: false,
        })))
    }

    pub(crate) fn head(&mut self, now: Instant) {
        if let Some(r) = &mut self.0 {
            r.outcome.time_to_head = Some(now.saturating_duration_since(r.start));
        }
    }

    /// Counts a frame handed to the caller; `now` is the time it was taken, if known. The
    /// first frame that counts as progress sets the time to first frame.
    #[inline]
    pub(crate) fn frame<D: Buf>(&mut self, frame: &Frame<D>, now: Option<Instant>, progress: bool) {
        let Some(r) = &mut self.0 else { return };
        if progress && r.outcome.time_to_first_frame.is_none() {
            r.first_frame(now.unwrap_or_else(Instant::now));
        }
        r.outcome.frames += 1;
        if let Some(data) = frame.data_ref() {
            r.outcome.bytes += data.remaining() as u64;
        }
    }

    pub(crate) fn first_frame(&mut self, now: Instant) {
        if let Some(r) = &mut self.0 {
            r.first_frame(now);
        }
    }

    /// Whether a record is kept (something will read it).
    #[inline]
    pub(crate) fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    /// Records a wait on upstream that ended at `now`.
    #[inline]
    pub(crate) fn waited(&mut self, since: Instant, now: Instant) {
        let Some(r) = &mut self.0 else { return };
        let waited = now.saturating_duration_since(since);
        if r.outcome
            .longest_idle
            .is_none_or(|longest| waited > longest)
        {
            r.outcome.longest_idle = Some(waited);
        }
    }

    pub(crate) fn completed(&mut self, now: Instant) {
        self.report(Ending::Completed, Some(now), None);
    }

    /// Reports completion unless something was reported already; reads the clock only then.
    pub(crate) fn completed_if_unreported(&mut self) {
        self.report(Ending::Completed, None, None);
    }

    /// Reports the drop of a response before its end, unless something was reported already.
    pub(crate) fn dropped_if_unreported(&mut self) {
        self.report(Ending::Dropped, None, None);
    }

    pub(crate) fn upstream_error(&mut self) {
        self.report(Ending::UpstreamError, None, None);
    }

    pub(crate) fn deadline(&mut self, expired: &DeadlineExceeded) {
        self.report(Ending::Deadline(expired.kind()), None, Some(expired));
    }

    /// Reports once; `now` is the time of the ending, read here if not given.
    #[inline]
    fn report(&mut self, ending: Ending, now: Option<Instant>, expired: Option<&DeadlineExceeded>) {
        if let Some(r) = &mut self.0 {
            r.report(ending, now, expired);
        }
    }
}

impl Record {
    #[cold]
    fn first_frame(&mut self, now: Instant) {
        self.outcome.time_to_first_frame = Some(now.saturating_duration_since(self.start));
    }

    #[cold]
    fn report(&mut self, ending: Ending, now: Option<Instant>, expired: Option<&DeadlineExceeded>) {
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        let now = now.unwrap_or_else(Instant::now);
        let outcome = &mut self.outcome;
        outcome.ending = ending;
        outcome.total_time = now.saturating_duration_since(self.start);
        trace(outcome, expired);
        // Taken, so that what the callback holds (a request's log line, say) goes when it
        // has run, not when the last holder of this record does: a watcher task may hold it
        // a little longer than the body.
        let Some(on_outcome) = self.on_outcome.take() else {
            return;
        };
        // A panic while already unwinding would abort the process: skip the callback then.
        if std::thread::panicking() {
            return;
        }
        if catch_unwind(AssertUnwindSafe(|| (on_outcome.0)(outcome))).is_err() {
            tracing::error!(
                target: "tower_stream_deadline",
                "the on_outcome callback panicked; the response is unaffected"
            );
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.dropped_if_unreported();
    }
}

/// The one `tracing` event per response: WARN for a deadline, DEBUG otherwise.
fn trace(outcome: &Outcome, expired: Option<&DeadlineExceeded>) {
    let Some(expired) = expired else {
        tracing::debug!(
            target: "tower_stream_deadline",
            ending = outcome.ending.as_str(),
            total_time = ?outcome.total_time,
            time_to_head = ?outcome.time_to_head,
            time_to_first_frame = ?outcome.time_to_first_frame,
            longest_idle = ?outcome.longest_idle,
            frames = outcome.frames,
            bytes = outcome.bytes,
            "stream ended"
        );
        return;
    };
    tracing::warn!(
        target: "tower_stream_deadline",
        kind = expired.kind().as_str(),
        budget = ?expired.budget(),
        elapsed = ?expired.elapsed(),
        time_to_head = ?outcome.time_to_head,
        time_to_first_frame = ?outcome.time_to_first_frame,
        longest_idle = ?outcome.longest_idle,
        frames = outcome.frames,
        bytes = outcome.bytes,
        "stream deadline exceeded; upstream released"
    );
}
