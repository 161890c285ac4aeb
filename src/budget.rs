//! The budgets a layer is configured with, before any clock starts.

use std::time::Duration;

use tokio::time::Instant;

use crate::deadline::Deadlines;

/// The configured budgets, as durations. [`start`](Budgets::start) turns them into
/// [`Deadlines`] at the moment a request is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Budgets {
    pub(crate) total: Duration,
    pub(crate) first_frame: Option<Duration>,
    pub(crate) idle: Option<Duration>,
}

impl Budgets {
    pub(crate) fn new(total: Duration) -> Self {
        Budgets {
            total,
            first_frame: None,
            idle: None,
        }
    }

    /// Fixes the absolute deadlines for a request sent at `now`.
    pub(crate) fn start(&self, now: Instant) -> Deadlines {
        Deadlines::new(now, self)
    }
}
