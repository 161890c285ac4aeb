//! The upstreams a request may go to, and their passive health: which one gets an attempt,
//! and which are left out for a while after failing.
//!
//! The rule for an attempt: among the upstreams this request has not tried yet (all of them,
//! once it has tried each), those that are not out, and of those the one with the fewest
//! requests in flight; ties go round in turn. Fewest in flight rather than plain turns
//! because answers of a model server vary from a token to minutes: turns would keep sending
//! to the replica that holds the longest streams. With every candidate out, the gateway
//! still tries one rather than failing at once.
//!
//! Health is learnt from the attempts themselves: an upstream that fails
//! [`FAILURES_TO_LEAVE_OUT`] attempts in a row (stuck before its first token, refusing the
//! connection, answering a first event that is an error or a 5xx) is left out of first
//! attempts for [`LEFT_OUT_FOR`]; then it is tried again, and one more failure leaves it out
//! again at once, while one answer brings it back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::upstream_url::Upstream;

/// Failed attempts in a row that leave an upstream out.
pub const FAILURES_TO_LEAVE_OUT: u32 = 3;

/// How long an upstream that keeps failing is left out of first attempts.
pub const LEFT_OUT_FOR: Duration = Duration::from_secs(10);

/// One upstream, shared by every policy that names it, and kept across reloads of the
/// configuration (with its health and its requests in flight).
pub struct Member {
    upstream: Upstream,
    in_flight: AtomicUsize,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    failures: u32,
    /// Set while out, and kept after, until an answer: a failure then leaves it out again.
    out_until: Option<Instant>,
}

/// How an attempt at an upstream went, for its health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It answered (its first frame came, or a status below 500).
    Answered,
    /// It failed in a way that says something about the upstream.
    Failed,
    /// Nothing to learn: the request ran out of time, or the attempt lost a race.
    Neither,
}

/// What a verdict changed, for the log and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    LeftOut,
    Back,
}

impl Member {
    fn new(upstream: Upstream) -> Member {
        Member {
            upstream,
            in_flight: AtomicUsize::new(0),
            health: Mutex::new(Health::default()),
        }
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether it is left out of first attempts at `now`.
    pub fn is_out(&self, now: Instant) -> bool {
        self.health().out_until.is_some_and(|until| now < until)
    }

    /// Learns from one attempt.
    pub fn report(&self, verdict: Verdict, now: Instant) -> Option<Change> {
        let mut health = self.health();
        match verdict {
            Verdict::Neither => None,
            Verdict::Answered => {
                health.failures = 0;
                health.out_until.take().map(|_| Change::Back)
            }
            Verdict::Failed => {
                health.failures = health.failures.saturating_add(1);
                // Back on trial after being out, one failure is enough.
                let on_trial = health.out_until.is_some_and(|until| now >= until);
                if on_trial || health.failures >= FAILURES_TO_LEAVE_OUT {
                    health.failures = 0;
                    let was_out = health.out_until.is_some_and(|until| now < until);
                    health.out_until = Some(now + LEFT_OUT_FOR);
                    return (!was_out).then_some(Change::LeftOut);
                }
                None
            }
        }
    }

    /// Counts a request in flight on this upstream until the guard is dropped.
    pub fn in_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight on an upstream: counted until dropped (with the response body).
pub struct InFlight(Arc<Member>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every upstream the gateway knows, by the URL it shows (credentials hidden): a policy that
/// names an upstream already known shares its health.
#[derive(Default)]
pub struct Members {
    by_url: Mutex<HashMap<String, Arc<Member>>>,
}

impl Members {
    /// The member for `upstream`, made when it is new. The same URL with other credentials
    /// is another member (the key holds them; it is never shown).
    pub fn get(&self, upstream: &Upstream) -> Arc<Member> {
        let credentials = upstream.authorization.as_ref().map(|v| v.as_bytes());
        let key = format!("{upstream}\0{credentials:?}");
        let mut by_url = self.by_url.lock().unwrap_or_else(PoisonError::into_inner);
        by_url
            .entry(key)
            .or_insert_with(|| Arc::new(Member::new(upstream.clone())))
            .clone()
    }

    /// Every member, in the order of their URLs.
    pub fn all(&self) -> Vec<Arc<Member>> {
        let by_url = self.by_url.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = by_url.values().cloned().collect();
        all.sort_by_key(|member| member.upstream.to_string());
        all
    }
}

/// The upstreams of one policy.
pub struct Pool {
    members: Vec<Arc<Member>>,
    turn: AtomicUsize,
}

impl Pool {
    /// A pool of these members; `None` without any.
    pub fn new(members: Vec<Arc<Member>>) -> Option<Pool> {
        (!members.is_empty()).then(|| Pool {
            members,
            turn: AtomicUsize::new(0),
        })
    }

    pub fn members(&self) -> &[Arc<Member>] {
        &self.members
    }

    /// The member for the next attempt of a request that has tried `tried` (indices into
    /// this pool), by the rule in the module docs.
    pub fn pick(&self, tried: &[usize], now: Instant) -> usize {
        let n = self.members.len().max(1);
        let untried = |i: &usize| !tried.contains(i);
        let any_untried = (0..n).any(|i| untried(&i));
        let candidate = |i: &usize| !any_untried || untried(i);
        let any_in = (0..n).any(|i| candidate(&i) && !self.members[i].is_out(now));
        // Only first attempts move the turn on: were retries and hedges to move it too, a
        // request that takes two attempts of two upstreams would leave the turn where it
        // was, and every first attempt would go to the same upstream.
        let turn = if tried.is_empty() {
            self.turn.fetch_add(1, Ordering::Relaxed)
        } else {
            self.turn.load(Ordering::Relaxed)
        };
        let start = turn % n;
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| candidate(i) && (!any_in || !self.members[*i].is_out(now)))
            .min_by_key(|&i| self.members[i].in_flight.load(Ordering::Relaxed))
            .unwrap_or(start)
    }

    /// Whether an attempt could still go to an upstream this request has not tried, once
    /// the one at `picked` is tried too.
    pub fn has_untried(&self, tried: &[usize], picked: usize) -> bool {
        (0..self.members.len()).any(|i| i != picked && !tried.contains(&i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Pool {
        let members = Members::default();
        Pool::new(
            (0..n)
                .map(|i| {
                    members
                        .get(&Upstream::parse(&format!("http://127.0.0.1:{}", 8000 + i)).unwrap())
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn first_attempts_take_turns_and_retries_go_to_an_upstream_not_tried() {
        let pool = pool(3);
        let now = Instant::now();
        let picks: Vec<usize> = (0..6).map(|_| pool.pick(&[], now)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        for _ in 0..6 {
            let first = pool.pick(&[], now);
            let second = pool.pick(&[first], now);
            let third = pool.pick(&[first, second], now);
            assert_ne!(first, second);
            assert!(third != first && third != second);
        }
    }

    #[test]
    fn first_attempts_take_turns_whatever_the_retries() {
        let pool = pool(2);
        let now = Instant::now();
        let firsts: Vec<usize> = (0..4)
            .map(|_| {
                let first = pool.pick(&[], now);
                pool.pick(&[first], now);
                first
            })
            .collect();
        assert_eq!(firsts, [0, 1, 0, 1]);
    }

    #[test]
    fn the_upstream_with_fewest_requests_in_flight_gets_the_attempt() {
        let pool = pool(2);
        let _busy = pool.members()[0].in_flight();
        let now = Instant::now();
        assert!((0..4).all(|_| pool.pick(&[], now) == 1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_that_keeps_failing_is_left_out_for_a_while_then_tried_again() {
        let pool = pool(2);
        let failing = &pool.members()[0];
        let now = Instant::now();
        assert_eq!(failing.report(Verdict::Failed, now), None);
        assert_eq!(failing.report(Verdict::Failed, now), None);
        assert_eq!(failing.report(Verdict::Failed, now), Some(Change::LeftOut));
        assert!((0..4).all(|_| pool.pick(&[], now) == 1), "left out");
        // A retry of a request the other upstream failed still goes to the one left out.
        assert_eq!(pool.pick(&[1], now), 0);

        tokio::time::advance(LEFT_OUT_FOR).await;
        let later = Instant::now();
        assert!(!failing.is_out(later));
        assert!((0..4).any(|_| pool.pick(&[], later) == 0), "tried again");
        // On trial: one failure leaves it out again; one answer brings it back.
        assert_eq!(
            failing.report(Verdict::Failed, later),
            Some(Change::LeftOut)
        );
        tokio::time::advance(LEFT_OUT_FOR).await;
        assert_eq!(
            failing.report(Verdict::Answered, Instant::now()),
            Some(Change::Back)
        );
        assert_eq!(failing.report(Verdict::Failed, Instant::now()), None);
    }

    #[test]
    fn with_every_upstream_out_one_is_still_tried() {
        let pool = pool(2);
        let now = Instant::now();
        for member in pool.members() {
            for _ in 0..FAILURES_TO_LEAVE_OUT {
                member.report(Verdict::Failed, now);
            }
        }
        let picked = pool.pick(&[], now);
        assert!(picked < 2);
    }

    #[test]
    fn members_are_shared_by_url() {
        let members = Members::default();
        let a = members.get(&Upstream::parse("http://u:p@127.0.0.1:9").unwrap());
        let b = members.get(&Upstream::parse("http://u:p@127.0.0.1:9/").unwrap());
        let c = members.get(&Upstream::parse("http://v:q@127.0.0.1:9/").unwrap());
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c), "other credentials, another member");
        assert_eq!(members.all().len(), 2);
    }
}
