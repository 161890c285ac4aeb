//! Absolute deadlines of one response, and the rule that says which one ran out.
//!
//! Everything here is plain arithmetic on `tokio::time::Instant`s: reading the clock and
//! holding a timer are the callers' business, so the rule is testable without either.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::budget::Budgets;
use crate::error::{DeadlineExceeded, DeadlineKind};

/// The deadlines of one response, fixed when `call` was made.
///
/// An instant that would overflow (a budget of `Duration::MAX`) is `None`: no deadline.
/// Every body holds one, so only what the per-frame check reads is kept as an instant; the
/// total budget is `total - start`, the first-frame deadline `start + budget`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadlines {
    start: Instant,
    total: Option<Instant>,
    /// The budget, kept only when its deadline is strictly earlier than the total deadline:
    /// otherwise the total budget wins.
    first_frame: Budget,
    idle: Budget,
}

/// An optional budget in 8 bytes where `Option<Duration>` takes 16 (every body holds two):
/// whole nanoseconds, `u64::MAX` for none. A budget of 584 years or more is none.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Budget(u64);

impl Budget {
    const NONE: Budget = Budget(u64::MAX);

    fn new(budget: Option<Duration>) -> Self {
        budget
            .and_then(|budget| u64::try_from(budget.as_nanos()).ok())
            .map_or(Budget::NONE, Budget)
    }

    #[inline]
    fn get(self) -> Option<Duration> {
        (self != Budget::NONE).then_some(Duration::from_nanos(self.0))
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

/// Where the response is: the first-frame deadline binds only until the first frame arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    BeforeFirstFrame,
    /// Streaming; `Some(t)` while the body has been waiting for its next frame since `t`.
    Streaming {
        waiting_since: Option<Instant>,
    },
}

impl Deadlines {
    pub(crate) fn new(start: Instant, budgets: &Budgets) -> Self {
        let total = start.checked_add(budgets.total);
        let first_frame = budgets.first_frame.and_then(|budget| {
            let at = start.checked_add(budget)?;
            match total {
                Some(total) if at >= total => None,
                _ => Some(budget),
            }
        });
        // An idle budget too long to add to an instant is no idle budget.
        let idle = budgets
            .idle
            .filter(|&idle| start.checked_add(idle).is_some());
        Deadlines {
            start,
            total,
            first_frame: Budget::new(first_frame),
            idle: Budget::new(idle),
        }
    }

    /// Moves the total deadline earlier to `at`; a later `at` changes nothing.
    pub(crate) fn cap_total(&mut self, at: Instant) {
        if self.total.is_some_and(|total| total <= at) {
            return;
        }
        self.total = Some(at);
        if self
            .first_frame_at()
            .is_some_and(|first_frame| first_frame >= at)
        {
            self.first_frame = Budget::NONE;
        }
    }

    /// The total deadline, if finite.
    pub(crate) fn total(&self) -> Option<Instant> {
        self.total
    }

    pub(crate) fn start(&self) -> Instant {
        self.start
    }

    /// The budgets that apply: total (if finite), first frame, idle.
    pub(crate) fn budgets(&self) -> (Option<Duration>, Option<Duration>, Option<Duration>) {
        (self.total_budget(), self.first_frame.get(), self.idle.get())
    }

    /// The total budget, if finite: from the start to the total deadline (zero for a
    /// deadline that had passed at the start).
    fn total_budget(&self) -> Option<Duration> {
        Some(self.total?.saturating_duration_since(self.start))
    }

    /// The first-frame deadline, if its budget applies.
    fn first_frame_at(&self) -> Option<Instant> {
        self.start.checked_add(self.first_frame.get()?)
    }

    /// Whether a first-frame budget applies (it is set and earlier than the total deadline).
    pub(crate) fn waits_for_first_frame(&self) -> bool {
        self.first_frame != Budget::NONE
    }

    /// Whether a frame arriving while not waiting needs the clock read at all.
    #[inline]
    pub(crate) fn has_total(&self) -> bool {
        self.total.is_some()
    }

    /// Whether an idle budget applies.
    #[inline]
    pub(crate) fn has_idle(&self) -> bool {
        self.idle != Budget::NONE
    }

    /// Whether a deadline binds the body once it is handed over (a total or an idle one):
    /// what a watcher of `release_unpolled` would watch.
    pub(crate) fn bind_the_body(&self) -> bool {
        self.total.is_some() || self.has_idle()
    }

    /// The earliest deadline that binds in `phase`, if any.
    #[inline]
    pub(crate) fn next(&self, phase: Phase) -> Option<Instant> {
        let other = match phase {
            Phase::BeforeFirstFrame => self.first_frame_at(),
            Phase::Streaming { waiting_since } => {
                waiting_since.and_then(|since| self.idle_deadline(since))
            }
        };
        match (self.total, other) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The deadline that has run out at `now` in `phase`, if any. When several have, the
    /// earliest is named; on a tie the total budget is.
    #[inline]
    pub(crate) fn expired(&self, now: Instant, phase: Phase) -> Option<DeadlineExceeded> {
        match self.next(phase) {
            Some(next) if now >= next => Some(self.name_expired(now, phase)),
            _ => None,
        }
    }

    #[cold]
    pub(crate) fn name_expired(&self, now: Instant, phase: Phase) -> DeadlineExceeded {
        let since_start = now.saturating_duration_since(self.start);
        let total_budget = self.total_budget().unwrap_or(Duration::MAX);
        let total = DeadlineExceeded::new(DeadlineKind::Total, total_budget, since_start);
        let other = match phase {
            Phase::BeforeFirstFrame => {
                self.first_frame_at()
                    .zip(self.first_frame.get())
                    .map(|(at, budget)| {
                        (
                            at,
                            DeadlineExceeded::new(DeadlineKind::FirstFrame, budget, since_start),
                        )
                    })
            }
            Phase::Streaming { waiting_since } => {
                waiting_since
                    .zip(self.idle.get())
                    .and_then(|(since, idle)| {
                        let at = self.idle_deadline(since)?;
                        let waited = now.saturating_duration_since(since);
                        Some((at, DeadlineExceeded::new(DeadlineKind::Idle, idle, waited)))
                    })
            }
        };
        match (self.total, other) {
            (Some(total_at), Some((other_at, other))) if other_at < total_at => other,
            (None, Some((_, other))) => other,
            _ => total,
        }
    }

    /// The idle deadline of a wait that starts at `now`, if there is an idle budget.
    #[inline]
    pub(crate) fn idle_deadline(&self, now: Instant) -> Option<Instant> {
        now.checked_add(self.idle.get()?)
    }

    /// When the wait whose idle deadline is `idle_at` began.
    pub(crate) fn wait_start(&self, idle_at: Instant) -> Option<Instant> {
        idle_at.checked_sub(self.idle.get()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn budgets(total: Duration, first_frame: Option<Duration>, idle: Option<Duration>) -> Budgets {
        Budgets {
            total,
            first_frame,
            idle,
        }
    }

    fn kind_at(d: &Deadlines, after: Duration, phase: Phase) -> Option<DeadlineKind> {
        d.expired(d.start + after, phase).map(|e| e.kind())
    }

    #[test]
    fn total_expires_at_its_deadline_not_before() {
        let d = Deadlines::new(Instant::now(), &budgets(100 * MS, None, None));
        let phase = Phase::BeforeFirstFrame;
        assert_eq!(kind_at(&d, 99 * MS, phase), None);
        assert_eq!(kind_at(&d, 100 * MS, phase), Some(DeadlineKind::Total));
        let err = d.expired(d.start + 150 * MS, phase).unwrap();
        assert_eq!((err.budget(), err.elapsed()), (100 * MS, 150 * MS));
    }

    #[test]
    fn zero_budget_has_expired_at_the_start() {
        let d = Deadlines::new(Instant::now(), &budgets(Duration::ZERO, None, None));
        assert_eq!(
            kind_at(&d, Duration::ZERO, Phase::BeforeFirstFrame),
            Some(DeadlineKind::Total)
        );
    }

    #[test]
    fn max_budget_is_no_deadline_and_does_not_overflow() {
        let max = Duration::MAX;
        let d = Deadlines::new(Instant::now(), &budgets(max, Some(max), Some(max)));
        let phase = Phase::Streaming {
            waiting_since: Some(d.start),
        };
        assert_eq!(d.next(phase), None);
        assert_eq!(d.next(Phase::BeforeFirstFrame), None);
        assert_eq!(kind_at(&d, Duration::from_secs(1 << 40), phase), None);
    }

    #[test]
    fn budgets_too_long_to_count_in_nanoseconds_are_none_and_zero_is_kept() {
        let years_584 = Duration::from_nanos(u64::MAX);
        let d = Deadlines::new(
            Instant::now(),
            &budgets(Duration::MAX, Some(years_584), Some(Duration::ZERO)),
        );
        assert_eq!(d.budgets(), (None, None, Some(Duration::ZERO)));
        assert!(!d.waits_for_first_frame() && d.has_idle());

        let almost = years_584 - Duration::from_nanos(1);
        let d = Deadlines::new(Instant::now(), &budgets(Duration::MAX, Some(almost), None));
        assert_eq!(d.budgets(), (None, Some(almost), None));
    }

    #[test]
    fn first_frame_applies_only_before_the_first_frame_and_only_when_earlier_than_total() {
        let d = Deadlines::new(Instant::now(), &budgets(100 * MS, Some(10 * MS), None));
        assert_eq!(
            kind_at(&d, 10 * MS, Phase::BeforeFirstFrame),
            Some(DeadlineKind::FirstFrame)
        );
        let streaming = Phase::Streaming {
            waiting_since: None,
        };
        assert_eq!(kind_at(&d, 10 * MS, streaming), None);

        for first_frame in [100 * MS, 200 * MS] {
            let d = Deadlines::new(Instant::now(), &budgets(100 * MS, Some(first_frame), None));
            assert!(!d.waits_for_first_frame());
            assert_eq!(
                kind_at(&d, 100 * MS, Phase::BeforeFirstFrame),
                Some(DeadlineKind::Total)
            );
        }
    }

    #[test]
    fn idle_counts_from_when_the_body_started_waiting() {
        let d = Deadlines::new(Instant::now(), &budgets(100 * MS, None, Some(10 * MS)));
        let waiting = |at| Phase::Streaming {
            waiting_since: Some(d.start + at),
        };
        assert_eq!(kind_at(&d, 59 * MS, waiting(50 * MS)), None);
        let err = d.expired(d.start + 61 * MS, waiting(50 * MS)).unwrap();
        assert_eq!(
            (err.kind(), err.budget(), err.elapsed()),
            (DeadlineKind::Idle, 10 * MS, 11 * MS)
        );
        // Not waiting: only the total budget binds.
        assert_eq!(
            kind_at(
                &d,
                99 * MS,
                Phase::Streaming {
                    waiting_since: None
                }
            ),
            None
        );
    }

    #[test]
    fn capping_the_total_only_ever_shortens_it_and_drops_a_first_frame_budget_it_overtakes() {
        let mut d = Deadlines::new(Instant::now(), &budgets(100 * MS, Some(50 * MS), None));
        d.cap_total(d.start + 200 * MS);
        assert_eq!(d.budgets(), (Some(100 * MS), Some(50 * MS), None));
        d.cap_total(d.start + 80 * MS);
        assert_eq!(d.budgets(), (Some(80 * MS), Some(50 * MS), None));
        d.cap_total(d.start + 30 * MS);
        assert_eq!(d.budgets(), (Some(30 * MS), None, None));
        assert_eq!(
            kind_at(&d, 30 * MS, Phase::BeforeFirstFrame),
            Some(DeadlineKind::Total)
        );

        let mut unbounded = Deadlines::new(Instant::now(), &budgets(Duration::MAX, None, None));
        unbounded.cap_total(unbounded.start + SEC_FOR_TEST);
        assert_eq!(unbounded.budgets().0, Some(SEC_FOR_TEST));
    }

    const SEC_FOR_TEST: Duration = Duration::from_secs(1);

    #[test]
    fn the_earliest_deadline_is_named_and_total_wins_a_tie() {
        let d = Deadlines::new(Instant::now(), &budgets(100 * MS, None, Some(10 * MS)));
        let phase = |at| Phase::Streaming {
            waiting_since: Some(d.start + at),
        };
        assert_eq!(
            kind_at(&d, 200 * MS, phase(95 * MS)),
            Some(DeadlineKind::Total)
        );
        assert_eq!(
            kind_at(&d, 200 * MS, phase(90 * MS)),
            Some(DeadlineKind::Total)
        );
        assert_eq!(
            kind_at(&d, 200 * MS, phase(80 * MS)),
            Some(DeadlineKind::Idle)
        );
    }
}
