//! The error a deadline produces, and how to find it behind wrappers.

use std::error::Error;
use std::fmt;
use std::time::Duration;

/// Which budget ran out.
///
/// Marked `#[non_exhaustive]`: later budgets may add kinds, so match with a
/// wildcard arm.
///
/// ```
/// use tower_stream_deadline::DeadlineKind;
///
/// fn worth_retrying(kind: DeadlineKind) -> bool {
///     // Stuck before the first token: nothing was sent yet, try again.
///     matches!(kind, DeadlineKind::FirstFrame)
/// }
/// assert!(worth_retrying(DeadlineKind::FirstFrame));
/// assert_eq!(DeadlineKind::Idle.to_string(), "idle");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadlineKind {
    /// The whole response, from `call` to the end of the body, took longer than the total budget.
    Total,
    /// No body frame (nor the end of an empty body) arrived within the first-frame budget,
    /// measured from `call`.
    FirstFrame,
    /// The body waited longer than the idle budget for its next frame.
    Idle,
}

impl DeadlineKind {
    /// A short lowercase name, as used in messages and `tracing` events.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadlineKind::Total => "total",
            DeadlineKind::FirstFrame => "first-frame",
            DeadlineKind::Idle => "idle",
        }
    }
}

impl fmt::Display for DeadlineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A response ran past one of its budgets.
///
/// Returned, boxed as `Box<dyn Error + Send + Sync>`, by the
/// [`ResponseFuture`](crate::ResponseFuture) (before the response, or its first frame, arrived)
/// or by [`DeadlineBody`](crate::DeadlineBody) (while streaming). Upstream errors are never
/// turned into this type, so a `DeadlineExceeded` always means a budget ran out.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_stream_deadline::{DeadlineExceeded, DeadlineKind};
///
/// fn describe(err: &(dyn std::error::Error + 'static)) -> String {
///     match DeadlineExceeded::find(err) {
///         Some(d) if d.kind() == DeadlineKind::FirstFrame => "stuck before the first token: retry".into(),
///         Some(d) => format!("cut after {:?} (budget {:?})", d.elapsed(), d.budget()),
///         None => format!("upstream failed: {err}"),
///     }
/// }
/// # let _ = describe;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadlineExceeded {
    kind: DeadlineKind,
    budget: Duration,
    elapsed: Duration,
}

impl DeadlineExceeded {
    pub(crate) fn new(kind: DeadlineKind, budget: Duration, elapsed: Duration) -> Self {
        DeadlineExceeded {
            kind,
            budget,
            elapsed,
        }
    }

    /// Which budget ran out.
    pub fn kind(&self) -> DeadlineKind {
        self.kind
    }

    /// The budget that ran out, as configured.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// How much time had passed when the deadline was observed: since `call` for
    /// [`Total`](DeadlineKind::Total) and [`FirstFrame`](DeadlineKind::FirstFrame), since the
    /// body started waiting for its next frame for [`Idle`](DeadlineKind::Idle).
    ///
    /// Never less than [`budget`](Self::budget); later by however long the timer and the
    /// scheduler took to get the body polled.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Finds a `DeadlineExceeded` in `err` or anywhere in its [`source`](Error::source) chain.
    ///
    /// Errors get wrapped on their way up (hyper wraps a body error it could not send,
    /// axum wraps body errors in `axum::Error`), so a plain `downcast_ref` on the outer
    /// error can miss the deadline. This walks the whole chain.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_stream_deadline::{DeadlineExceeded, StreamDeadlineLayer};
    ///
    /// let plain: Box<dyn std::error::Error + Send + Sync> = "connection refused".into();
    /// assert!(DeadlineExceeded::find(&*plain).is_none());
    /// ```
    pub fn find<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a DeadlineExceeded> {
        find_in_chain(err)
    }
}

/// The first error of type `T` in `err`'s source chain, `err` included.
pub(crate) fn find_in_chain<'a, T: Error + 'static>(
    err: &'a (dyn Error + 'static),
) -> Option<&'a T> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        next = err.source();
    }
    None
}

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream deadline exceeded: {} budget of {:?} ran out after ",
            self.kind, self.budget
        )?;
        write_elapsed(f, self.elapsed)
    }
}

/// Elapsed time to a precision a person reads: `45.003s`, `500.2ms`, `700µs`.
fn write_elapsed(f: &mut fmt::Formatter<'_>, elapsed: Duration) -> fmt::Result {
    if elapsed >= Duration::from_secs(1) {
        write!(f, "{:.3}s", elapsed.as_secs_f64())
    } else if elapsed >= Duration::from_millis(1) {
        write!(f, "{:.1}ms", elapsed.as_secs_f64() * 1e3)
    } else {
        write!(f, "{}µs", elapsed.as_micros())
    }
}

impl Error for DeadlineExceeded {
    /// With the `h2` feature: an HTTP/2 `CANCEL` error, which hyper reads to choose the
    /// reason of the `RST_STREAM` it sends when a body fails. Without it, `None`, and hyper
    /// resets with `INTERNAL_ERROR`.
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        #[cfg(feature = "h2")]
        {
            static CANCEL: std::sync::LazyLock<h2::Error> =
                std::sync::LazyLock::new(|| h2::Error::from(h2::Reason::CANCEL));
            Some(&*CANCEL)
        }
        #[cfg(not(feature = "h2"))]
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_reads_to_the_millisecond_not_the_nanosecond() {
        let msg = |elapsed| {
            DeadlineExceeded::new(DeadlineKind::Total, Duration::from_secs(2), elapsed).to_string()
        };
        assert!(msg(Duration::from_nanos(2_000_731_466)).ends_with("after 2.001s"));
        assert!(msg(Duration::from_nanos(500_992_113)).ends_with("after 501.0ms"));
        assert!(msg(Duration::from_nanos(700_400)).ends_with("after 700µs"));
    }

    #[test]
    fn each_kind_has_its_own_message_naming_budget_and_elapsed() {
        let msg = |kind| {
            DeadlineExceeded::new(kind, Duration::from_secs(45), Duration::from_millis(45_003))
                .to_string()
        };
        assert_eq!(
            msg(DeadlineKind::Total),
            "stream deadline exceeded: total budget of 45s ran out after 45.003s"
        );
        assert_eq!(
            msg(DeadlineKind::FirstFrame),
            "stream deadline exceeded: first-frame budget of 45s ran out after 45.003s"
        );
        assert_eq!(
            msg(DeadlineKind::Idle),
            "stream deadline exceeded: idle budget of 45s ran out after 45.003s"
        );
    }

    #[derive(Debug)]
    struct Wrapper(Box<dyn Error + Send + Sync>);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn find_sees_through_wrappers_and_ignores_other_errors() {
        let deadline = DeadlineExceeded::new(
            DeadlineKind::Idle,
            Duration::from_secs(1),
            Duration::from_secs(2),
        );
        let wrapped = Wrapper(Box::new(Wrapper(Box::new(deadline.clone()))));
        assert_eq!(DeadlineExceeded::find(&wrapped), Some(&deadline));

        let other = Wrapper("reset by peer".into());
        assert_eq!(DeadlineExceeded::find(&other), None);
    }
}
