//! A request stuck before its first frame is abandoned at the first-frame budget and
//! retried by `tower::retry`; nothing else is retried.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tower::retry::RetryLayer;
use tower::{Service, ServiceBuilder};
use tower_stream_deadline::{DeadlineKind, RetryFirstFrame, StreamDeadlineLayer};

use support::{MS, Scripted, Step, UpstreamError, assert_fired, deadline_of, drain, send_prompt};

const SEC: Duration = Duration::from_secs(1);

/// An upstream that plays `scripts[n]` for its n-th call (the last one again after that).
fn scripted_upstream(
    scripts: Vec<Vec<Step>>,
) -> (
    impl Service<Request<String>, Response = Response<Scripted>, Error = UpstreamError, Future: Send>
    + Clone,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = tower::service_fn(move |req: Request<String>| {
        assert_eq!(
            req.body(),
            "prompt",
            "every attempt carries the request body"
        );
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let script = scripts[n.min(scripts.len() - 1)].clone();
        async move { Ok(Response::new(Scripted::new(script))) }
    });
    (svc, calls)
}

#[tokio::test(start_paused = true)]
async fn a_stuck_attempt_is_abandoned_at_the_first_frame_budget_and_the_retry_is_served() {
    let stuck = vec![Step::Stall];
    let answers = vec![
        Step::After(50 * MS),
        Step::Data("the "),
        Step::Data("answer"),
    ];
    let (upstream, calls) = scripted_upstream(vec![stuck, answers]);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryFirstFrame::new(2)))
        .layer(StreamDeadlineLayer::new(60 * SEC).first_frame(SEC))
        .service(upstream);

    let start = Instant::now();
    let mut body = send_prompt(&mut svc).await.unwrap().into_body();
    assert_eq!(
        start.elapsed(),
        SEC + 50 * MS,
        "one first-frame budget lost, then served"
    );
    let drained = drain(&mut body).await;

    assert!(drained.error.is_none());
    assert_eq!(drained.text(), "the answer");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn retries_are_bounded_and_the_last_first_frame_error_is_returned() {
    let (upstream, calls) = scripted_upstream(vec![vec![Step::Stall]]);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryFirstFrame::new(2)))
        .layer(StreamDeadlineLayer::new(60 * SEC).first_frame(SEC))
        .service(upstream);

    let result = send_prompt(&mut svc).await;

    assert_fired(deadline_of(&result), DeadlineKind::FirstFrame, SEC);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "one attempt and two retries"
    );
}

#[tokio::test(start_paused = true)]
async fn total_deadlines_and_upstream_errors_are_not_retried() {
    // Headers never come within the total budget, which is shorter than the first-frame one.
    let (upstream, calls) = scripted_upstream(vec![vec![Step::Stall]]);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryFirstFrame::new(2)))
        .layer(StreamDeadlineLayer::new(SEC).first_frame(5 * SEC))
        .service(upstream);
    let mut body = send_prompt(&mut svc).await.unwrap().into_body();
    assert_eq!(
        drain(&mut body).await.deadline().kind(),
        DeadlineKind::Total
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let (upstream, calls) = scripted_upstream(vec![vec![Step::Fail("reset")]]);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryFirstFrame::new(2)))
        .layer(StreamDeadlineLayer::new(60 * SEC).first_frame(SEC))
        .service(upstream);
    let err = send_prompt(&mut svc).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<UpstreamError>(),
        Some(&UpstreamError("reset"))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A request body that counts its copies.
struct Counted(Arc<AtomicUsize>);

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, Ordering::SeqCst);
        Counted(self.0.clone())
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_is_copied_only_for_a_retry_that_can_still_happen() {
    let stuck = tower::service_fn(|_req: Request<Counted>| async {
        Ok::<_, UpstreamError>(Response::new(Scripted::new(vec![Step::Stall])))
    });
    for (retries, attempts) in [(0, 1), (1, 2), (2, 3)] {
        let copies = Arc::new(AtomicUsize::new(0));
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::new(RetryFirstFrame::new(retries)))
            .layer(StreamDeadlineLayer::new(60 * SEC).first_frame(SEC))
            .service(stuck);
        let request = Request::new(Counted(copies.clone()));
        let result = tower::ServiceExt::oneshot(svc, request).await;
        // The last attempt fails at the first-frame budget too: one budget per attempt.
        assert_fired(deadline_of(&result), DeadlineKind::FirstFrame, SEC);
        assert_eq!(
            copies.load(Ordering::SeqCst),
            attempts - 1,
            "{retries} retries: a copy for each retry, none for the last attempt"
        );
    }
}
