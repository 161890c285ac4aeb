//! Closes a client connection that waits too long for a request: from the accept until its
//! first request head is read (HTTP/1) or its first stream is opened (HTTP/2), and from the
//! end of each response until the next request, however many bytes (PINGs, SETTINGS, a head
//! sent a byte at a time) come meanwhile.
//!
//! hyper's own `header_read_timeout` starts at the first byte of an HTTP/1 head and HTTP/2
//! has no such timer, so a connection that sends nothing, or only an HTTP/2 preface, would
//! otherwise hold one of `--max-connections` for as long as it likes. This bound covers a
//! head sent slowly too, so hyper's timer is off (it would be armed and dropped for every
//! request). A connection with a request in flight is never closed here: the request body
//! and response budgets bound it.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// Whether a connection has requests in flight, and since when it has had none.
///
/// A request's start and end only update this; the connection's timer is re-armed lazily,
/// when it fires (see [`Activity::waited`]), so that a request touches no timer and wakes no
/// task.
#[derive(Clone)]
pub struct Activity(Arc<Mutex<Waiting>>);

#[derive(Clone, Copy)]
struct Waiting {
    in_flight: usize,
    since: Instant,
}

impl Activity {
    /// A connection just accepted: waiting for its first request from now.
    pub fn new() -> Activity {
        Activity(Arc::new(Mutex::new(Waiting {
            in_flight: 0,
            since: Instant::now(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request has arrived; it is in flight until the guard is dropped.
    pub fn start(&self) -> InFlight {
        self.lock().in_flight += 1;
        InFlight(self.clone())
    }

    /// Resolves once the connection has had no request in flight for `timeout`.
    pub async fn waited(&self, timeout: Duration) {
        let mut at = Instant::now();
        loop {
            tokio::time::sleep_until(at).await;
            let waiting = *self.lock();
            let now = Instant::now();
            at = match waiting.since.checked_add(timeout) {
                Some(deadline) if waiting.in_flight == 0 => match deadline <= now {
                    true => return,
                    false => deadline,
                },
                // Busy: the wait starts at the end of the requests in flight, `timeout` from
                // now at the earliest.
                Some(_) => match now.checked_add(timeout) {
                    Some(later) => later,
                    None => return std::future::pending().await,
                },
                // A timeout beyond the clock (refused at start): never.
                None => return std::future::pending().await,
            };
        }
    }
}

/// A request in flight on its connection; dropped with the response body it is attached to.
pub struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut waiting = self.0.lock();
        waiting.in_flight = waiting.in_flight.saturating_sub(1);
        if waiting.in_flight == 0 {
            waiting.since = Instant::now();
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until hyper is done with it.
    pub struct Tracked<B> {
        #[pin]
        body: B,
        in_flight: InFlight,
    }
}

impl<B> Tracked<B> {
    pub fn new(body: B, in_flight: InFlight) -> Self {
        Tracked { body, in_flight }
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    /// Whether `waited` resolves within `within` of (paused) time.
    async fn closes_within(activity: &Activity, within: Duration) -> bool {
        tokio::time::timeout(within, activity.waited(TIMEOUT))
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_is_closed_at_the_timeout_from_the_accept() {
        let activity = Activity::new();
        let started = Instant::now();
        activity.waited(TIMEOUT).await;
        assert_eq!(started.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_its_connection_however_long_it_runs() {
        let activity = Activity::new();
        let request = activity.start();
        assert!(!closes_within(&activity, 10 * TIMEOUT).await);
        drop(request);
        // The wait starts again at the end of the response.
        let ended = Instant::now();
        activity.waited(TIMEOUT).await;
        assert_eq!(ended.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_requests_keep_it_until_the_last_ends() {
        let activity = Activity::new();
        let first = activity.start();
        let second = activity.start();
        drop(first);
        assert!(!closes_within(&activity, 2 * TIMEOUT).await);
        drop(second);
        assert!(closes_within(&activity, TIMEOUT + Duration::from_millis(1)).await);
    }
}
