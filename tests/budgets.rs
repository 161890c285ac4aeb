//! The three budgets on tokio's paused clock: when each fires, what it names, and what the
//! caller received before it.

mod support;

use std::time::Duration;

use http_body::Body;
use tokio::time::Instant;
use tower::Layer;
use tower_stream_deadline::{DeadlineKind, StreamDeadlineLayer};

use support::{MS, Step, Upstream, assert_fired, call, deadline_of, drain};

const SEC: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn late_headers_fail_the_call_at_the_total_deadline_and_cancel_the_request() {
    let upstream = Upstream::new(10 * SEC, [Step::Data("never sent")]);
    let mut svc = StreamDeadlineLayer::new(SEC).layer(upstream.service());

    let result = call(&mut svc).await;

    assert_fired(deadline_of(&result), DeadlineKind::Total, SEC);
    assert!(
        upstream.future_dropped.is_dropped(),
        "the inner future (the request) is dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn a_babbling_stream_is_cut_at_the_total_deadline_with_every_earlier_frame_in_order() {
    // A frame at 0, 30, 60, ... ms, forever; headers at 100 ms.
    let upstream = Upstream::new(100 * MS, [Step::Babble { every: 30 * MS }]);
    let mut svc = StreamDeadlineLayer::new(SEC).layer(upstream.service());

    let start = Instant::now();
    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert_fired(drained.deadline(), DeadlineKind::Total, SEC);
    // Frames at 100 + 30k ms < 1000 ms: k = 0..=29.
    assert_eq!(
        drained.data.len(),
        30,
        "every frame before the deadline, none after"
    );
    assert!(
        drained.data.iter().all(|d| d == "tok "),
        "frames arrive whole"
    );
    assert!(drained.at - start <= SEC + MS);
    assert!(
        upstream.body_dropped.is_dropped(),
        "released while the caller still holds the body"
    );
    drop(body);
}

#[tokio::test(start_paused = true)]
async fn a_frame_that_is_ready_only_at_the_deadline_is_not_delivered() {
    let upstream = Upstream::new(
        Duration::ZERO,
        [
            Step::Data("early"),
            Step::After(SEC),
            Step::Data("at the deadline"),
        ],
    );
    let mut svc = StreamDeadlineLayer::new(SEC).layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert_eq!(drained.text(), "early");
    assert_eq!(drained.deadline().kind(), DeadlineKind::Total);
}

#[tokio::test(start_paused = true)]
async fn frames_left_unread_past_the_deadline_are_not_delivered() {
    let upstream = Upstream::new(
        Duration::ZERO,
        [Step::Data("a"), Step::Data("b"), Step::Data("c")],
    );
    let mut svc = StreamDeadlineLayer::new(SEC).layer(upstream.service());
    let mut body = call(&mut svc).await.unwrap().into_body();

    // The caller reads one frame, then goes away past the deadline.
    let first = http_body_util::BodyExt::frame(&mut body)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "a");
    tokio::time::sleep(2 * SEC).await;

    let drained = drain(&mut body).await;
    assert!(
        drained.data.is_empty(),
        "b and c were taken after the deadline: {drained:?}"
    );
    assert_eq!(drained.deadline().kind(), DeadlineKind::Total);
    assert_eq!(
        drained.deadline().elapsed(),
        2 * SEC,
        "elapsed is when it was observed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stalled_stream_fails_at_the_deadline_not_at_the_next_frame() {
    let upstream = Upstream::new(10 * MS, [Step::Data("only"), Step::Stall]);
    let mut svc = StreamDeadlineLayer::new(SEC).layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert_eq!(drained.text(), "only");
    assert_fired(drained.deadline(), DeadlineKind::Total, SEC);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_ends_in_time_is_delivered_whole_without_error() {
    let upstream = Upstream::new(
        50 * MS,
        [
            Step::Data("a"),
            Step::After(400 * MS),
            Step::Data("b"),
            Step::After(400 * MS),
        ],
    );
    let layer = StreamDeadlineLayer::new(SEC)
        .first_frame(100 * MS)
        .idle(500 * MS);
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert!(drained.error.is_none(), "{:?}", drained.error);
    assert_eq!(drained.text(), "ab");
}

#[tokio::test(start_paused = true)]
async fn the_end_of_the_stream_after_the_deadline_is_a_deadline_too() {
    let upstream = Upstream::new(
        Duration::ZERO,
        [Step::Data("all the data"), Step::After(2 * SEC)],
    );
    let mut svc = StreamDeadlineLayer::new(SEC).layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert_eq!(drained.text(), "all the data");
    assert_fired(drained.deadline(), DeadlineKind::Total, SEC);
}

#[tokio::test(start_paused = true)]
async fn stuck_before_the_first_frame_fails_the_call_with_kind_first_frame() {
    let upstream = Upstream::new(10 * MS, [Step::Stall]);
    let layer = StreamDeadlineLayer::new(60 * SEC).first_frame(500 * MS);
    let mut svc = layer.layer(upstream.service());

    let result = call(&mut svc).await;

    assert_fired(deadline_of(&result), DeadlineKind::FirstFrame, 500 * MS);
    assert!(
        upstream.body_dropped.is_dropped(),
        "the stuck body is released"
    );
}

#[tokio::test(start_paused = true)]
async fn the_first_frame_budget_counts_from_call_and_covers_the_headers() {
    let upstream = Upstream::new(600 * MS, [Step::Data("too late")]);
    let layer = StreamDeadlineLayer::new(60 * SEC).first_frame(500 * MS);
    let mut svc = layer.layer(upstream.service());

    let result = call(&mut svc).await;

    assert_fired(deadline_of(&result), DeadlineKind::FirstFrame, 500 * MS);
    assert!(upstream.future_dropped.is_dropped());
}

#[tokio::test(start_paused = true)]
async fn under_a_first_frame_budget_the_call_waits_for_the_first_frame_and_the_body_replays_it() {
    let upstream = Upstream::new(
        10 * MS,
        [
            Step::After(90 * MS),
            Step::Data("first"),
            Step::After(10 * MS),
            Step::Data(" second"),
        ],
    );
    let layer = StreamDeadlineLayer::new(60 * SEC).first_frame(500 * MS);
    let mut svc = layer.layer(upstream.service());

    let start = Instant::now();
    let response = call(&mut svc).await.unwrap();
    assert_eq!(
        start.elapsed(),
        100 * MS,
        "the call resolves with the first frame, not the headers"
    );

    let mut body = response.into_body();
    assert!(!body.is_end_stream(), "the replayed frame is still to come");
    let drained = drain(&mut body).await;
    assert!(drained.error.is_none());
    assert_eq!(drained.text(), "first second");
}

#[tokio::test(start_paused = true)]
async fn under_a_first_frame_budget_an_empty_body_resolves_the_call_and_ends() {
    let upstream = Upstream::new(10 * MS, []);
    let layer = StreamDeadlineLayer::new(60 * SEC).first_frame(500 * MS);
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    assert!(body.is_end_stream());
    let drained = drain(&mut body).await;
    assert!(drained.error.is_none() && drained.data.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_first_frame_budget_longer_than_the_total_yields_to_the_total() {
    let upstream = Upstream::new(10 * MS, [Step::Stall]);
    let layer = StreamDeadlineLayer::new(SEC).first_frame(5 * SEC);
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert_fired(drained.deadline(), DeadlineKind::Total, SEC);
}

#[tokio::test(start_paused = true)]
async fn the_idle_budget_bounds_the_gap_between_frames() {
    let upstream = Upstream::new(
        Duration::ZERO,
        [
            Step::Data("a"),
            Step::After(400 * MS),
            Step::Data("b"),
            Step::After(600 * MS),
            Step::Data("c"),
        ],
    );
    let layer = StreamDeadlineLayer::new(60 * SEC).idle(500 * MS);
    let mut svc = layer.layer(upstream.service());

    let start = Instant::now();
    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert_eq!(drained.text(), "ab");
    assert_fired(drained.deadline(), DeadlineKind::Idle, 500 * MS);
    assert_eq!(
        drained.at - start,
        900 * MS,
        "400 ms to b, then 500 ms of silence"
    );
    assert!(upstream.body_dropped.is_dropped());
}

#[tokio::test(start_paused = true)]
async fn the_idle_budget_counts_from_the_headers() {
    let upstream = Upstream::new(200 * MS, [Step::Stall]);
    let layer = StreamDeadlineLayer::new(60 * SEC).idle(500 * MS);
    let mut svc = layer.layer(upstream.service());

    let start = Instant::now();
    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert_fired(drained.deadline(), DeadlineKind::Idle, 500 * MS);
    assert_eq!(drained.at - start, 700 * MS);
}

#[tokio::test(start_paused = true)]
async fn under_a_first_frame_budget_the_idle_budget_counts_from_the_first_frame() {
    let upstream = Upstream::new(
        Duration::ZERO,
        [Step::After(800 * MS), Step::Data("first"), Step::Stall],
    );
    let layer = StreamDeadlineLayer::new(60 * SEC)
        .first_frame(SEC)
        .idle(500 * MS);
    let mut svc = layer.layer(upstream.service());

    let start = Instant::now();
    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert_eq!(drained.text(), "first");
    assert_fired(drained.deadline(), DeadlineKind::Idle, 500 * MS);
    assert_eq!(drained.at - start, 1300 * MS);
}

#[tokio::test(start_paused = true)]
async fn time_the_caller_spends_away_from_the_body_is_not_idle_time() {
    let upstream = Upstream::new(
        Duration::ZERO,
        [Step::Data("a"), Step::Data("b"), Step::Data("c")],
    );
    let layer = StreamDeadlineLayer::new(60 * SEC).idle(500 * MS);
    let mut svc = layer.layer(upstream.service());
    let mut body = call(&mut svc).await.unwrap().into_body();

    let mut seen = String::new();
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        seen.push_str(std::str::from_utf8(&frame.unwrap().into_data().unwrap()).unwrap());
        tokio::time::sleep(2 * SEC).await; // a slow consumer, not a silent upstream
    }
    assert_eq!(seen, "abc");
}

#[tokio::test(start_paused = true)]
async fn an_honest_slow_stream_within_every_budget_completes() {
    let mut steps = Vec::new();
    for _ in 0..50 {
        steps.extend([Step::After(490 * MS), Step::Data(".")]);
    }
    let upstream = Upstream::new(100 * MS, steps);
    let layer = StreamDeadlineLayer::new(30 * SEC)
        .first_frame(SEC)
        .idle(500 * MS);
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert!(drained.error.is_none(), "{:?}", drained.error);
    assert_eq!(drained.data.len(), 50);
}

#[tokio::test(start_paused = true)]
async fn when_total_and_idle_run_out_together_the_total_is_named() {
    // The last frame at 500 ms: idle runs out at 500 + 500 ms, with the total.
    let upstream = Upstream::new(
        Duration::ZERO,
        [
            Step::After(300 * MS),
            Step::Data("a"),
            Step::After(200 * MS),
            Step::Data("b"),
            Step::Stall,
        ],
    );
    let layer = StreamDeadlineLayer::new(SEC).idle(500 * MS);
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert_eq!(drained.text(), "ab");
    assert_fired(drained.deadline(), DeadlineKind::Total, SEC);
}
