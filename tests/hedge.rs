//! Hedging on the first frame: a late attempt gets company, the first to send a first frame
//! wins, the others are dropped at once; and every attempt says which one it is.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tower::retry::RetryLayer;
use tower::{Service, ServiceBuilder};
use tower_stream_deadline::{
    Attempt, DeadlineKind, HedgeFirstFrameLayer, RetryFirstFrame, StreamDeadlineLayer,
};

use support::{
    DropFlag, MS, Scripted, Step, UpstreamError, assert_fired, deadline_of, drain, send_prompt,
};

const SEC: Duration = Duration::from_secs(1);

/// One call the upstream received: the attempt it was, and whether its answer was dropped.
#[derive(Clone, Debug)]
struct Seen {
    attempt: usize,
    at: Duration,
    released: DropFlag,
}

/// An upstream that plays `scripts[n]` for its n-th call (the last one again after that) and
/// records every call.
#[derive(Clone)]
struct Replicas {
    scripts: Vec<Vec<Step>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    start: Instant,
}

impl Replicas {
    fn new(scripts: Vec<Vec<Step>>) -> Self {
        Replicas {
            scripts,
            seen: Arc::default(),
            start: Instant::now(),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn attempts(&self) -> Vec<(usize, Duration)> {
        self.seen().iter().map(|s| (s.attempt, s.at)).collect()
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<String>,
        Response = Response<Scripted>,
        Error = UpstreamError,
        Future: Send,
    > + Clone {
        let this = self.clone();
        tower::service_fn(move |req: Request<String>| {
            assert_eq!(req.body(), "prompt", "every attempt carries the body");
            let released = DropFlag::default();
            let mut seen = this.seen.lock().unwrap();
            let script = this.scripts[seen.len().min(this.scripts.len() - 1)].clone();
            seen.push(Seen {
                attempt: Attempt::of(&req).number(),
                at: this.start.elapsed(),
                released: released.clone(),
            });
            let body = Scripted::new(script).flagged(&released);
            async move { Ok(Response::new(body)) }
        })
    }
}

fn first_token_after(wait: Duration) -> Vec<Step> {
    vec![Step::After(wait), Step::Data("first"), Step::Data(" token")]
}

#[tokio::test(start_paused = true)]
async fn a_late_first_frame_is_hedged_and_the_faster_attempt_wins() {
    let replicas = Replicas::new(vec![first_token_after(2 * SEC), first_token_after(50 * MS)]);
    let mut svc = ServiceBuilder::new()
        .layer(HedgeFirstFrameLayer::new(300 * MS, 2))
        .layer(StreamDeadlineLayer::new(60 * SEC).first_frame(10 * SEC))
        .service(replicas.service());

    let start = Instant::now();
    let mut body = send_prompt(&mut svc).await.unwrap().into_body();
    assert_eq!(
        start.elapsed(),
        350 * MS,
        "the hedge's first token, 300 + 50 ms"
    );

    let seen = replicas.seen();
    assert_eq!(replicas.attempts(), [(1, Duration::ZERO), (2, 300 * MS)]);
    assert!(
        seen[0].released.is_dropped(),
        "the slow attempt is dropped the moment the hedge wins"
    );
    assert!(!seen[1].released.is_dropped());
    assert_eq!(drain(&mut body).await.text(), "first token");
}

#[tokio::test(start_paused = true)]
async fn an_attempt_that_answers_in_time_is_never_hedged() {
    let replicas = Replicas::new(vec![first_token_after(200 * MS)]);
    let mut svc = ServiceBuilder::new()
        .layer(HedgeFirstFrameLayer::new(300 * MS, 3))
        .layer(StreamDeadlineLayer::new(60 * SEC).first_frame(10 * SEC))
        .service(replicas.service());

    let mut body = send_prompt(&mut svc).await.unwrap().into_body();
    // Long after the hedge delay: the race is over, nothing else starts.
    assert_eq!(drain(&mut body).await.text(), "first token");
    tokio::time::sleep(SEC).await;
    assert_eq!(replicas.attempts(), [(1, Duration::ZERO)]);
}

#[tokio::test(start_paused = true)]
async fn hedges_are_bounded_and_the_last_error_is_returned() {
    let replicas = Replicas::new(vec![vec![Step::Stall]]);
    let mut svc = ServiceBuilder::new()
        .layer(HedgeFirstFrameLayer::new(300 * MS, 3))
        .layer(StreamDeadlineLayer::new(60 * SEC).first_frame(SEC))
        .service(replicas.service());

    let start = Instant::now();
    let result = send_prompt(&mut svc).await;

    // Started at 0, 300 and 600 ms; each abandoned one first-frame budget later.
    assert_eq!(start.elapsed(), SEC + 600 * MS);
    assert_fired(deadline_of(&result), DeadlineKind::FirstFrame, SEC);
    assert_eq!(
        replicas.attempts(),
        [(1, Duration::ZERO), (2, 300 * MS), (3, 600 * MS)]
    );
    assert!(replicas.seen().iter().all(|s| s.released.is_dropped()));
}

#[tokio::test(start_paused = true)]
async fn a_failed_attempt_starts_the_next_at_once() {
    let replicas = Replicas::new(vec![
        vec![Step::Fail("connection reset")],
        first_token_after(50 * MS),
    ]);
    let mut svc = ServiceBuilder::new()
        .layer(HedgeFirstFrameLayer::new(SEC, 2))
        .layer(StreamDeadlineLayer::new(60 * SEC).first_frame(10 * SEC))
        .service(replicas.service());

    let start = Instant::now();
    let mut body = send_prompt(&mut svc).await.unwrap().into_body();
    assert_eq!(start.elapsed(), 50 * MS, "no wait for the hedge delay");
    assert_eq!(
        replicas.attempts(),
        [(1, Duration::ZERO), (2, Duration::ZERO)]
    );
    assert_eq!(drain(&mut body).await.text(), "first token");
}

#[tokio::test(start_paused = true)]
async fn an_attempt_out_of_total_time_starts_no_other() {
    // A head that never comes, and a total budget shorter than the hedge delay: the first
    // attempt fails with the total deadline, and a hedge would have no time left either.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let silent = tower::service_fn(move |_req: Request<String>| {
        counter.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<Result<Response<Scripted>, UpstreamError>>()
    });
    let mut svc = ServiceBuilder::new()
        .layer(HedgeFirstFrameLayer::new(300 * MS, 3))
        .layer(StreamDeadlineLayer::new(200 * MS))
        .service(silent);

    let result = send_prompt(&mut svc).await;
    assert_fired(deadline_of(&result), DeadlineKind::Total, 200 * MS);
    tokio::time::sleep(SEC).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn retries_are_numbered_for_a_router_inside() {
    let replicas = Replicas::new(vec![
        vec![Step::Stall],
        vec![Step::Stall],
        first_token_after(MS),
    ]);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryFirstFrame::new(2)))
        .layer(StreamDeadlineLayer::new(60 * SEC).first_frame(SEC))
        .service(replicas.service());

    let mut body = send_prompt(&mut svc).await.unwrap().into_body();
    assert_eq!(drain(&mut body).await.text(), "first token");
    assert_eq!(
        replicas.attempts(),
        [(1, Duration::ZERO), (2, SEC), (3, 2 * SEC)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_outside_hedging_tries_the_whole_race_again() {
    let replicas = Replicas::new(vec![
        vec![Step::Stall],
        vec![Step::Stall],
        first_token_after(MS),
    ]);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryFirstFrame::new(1)))
        .layer(HedgeFirstFrameLayer::new(300 * MS, 2))
        .layer(StreamDeadlineLayer::new(60 * SEC).first_frame(SEC))
        .service(replicas.service());

    let start = Instant::now();
    let mut body = send_prompt(&mut svc).await.unwrap().into_body();
    // The race of attempts 1 and 2 is lost at 1.3 s; the retry answers 1 ms later.
    assert_eq!(start.elapsed(), SEC + 300 * MS + MS);
    assert_eq!(drain(&mut body).await.text(), "first token");
    assert_eq!(
        replicas.attempts(),
        [(1, Duration::ZERO), (2, 300 * MS), (2, SEC + 300 * MS)],
        "the retry carries the retry's number"
    );
}
