//! `release_unpolled`: the upstream is dropped at the deadline while nobody polls the body,
//! on tokio's paused clock; the next poll yields what it would have; and where no watcher
//! can run (no runtime, no timers, a runtime shut down) the body works as without it.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body as _;
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use tower::{Layer, Service};
use tower_stream_deadline::{DeadlineExceeded, DeadlineKind, Ending, Outcome, StreamDeadlineLayer};

use support::{MS, Step, Upstream, call, call_with};

const SEC: Duration = Duration::from_secs(1);

/// Every outcome reported, with the paused clock's time since the test began.
#[derive(Clone, Default)]
struct Outcomes(Arc<Mutex<Vec<Outcome>>>);

impl Outcomes {
    fn layer<R>(&self, layer: StreamDeadlineLayer<R>) -> StreamDeadlineLayer<R> {
        let seen = self.0.clone();
        layer.on_outcome(move |outcome| seen.lock().unwrap().push(outcome.clone()))
    }

    fn endings(&self) -> Vec<Ending> {
        self.0.lock().unwrap().iter().map(|o| o.ending).collect()
    }
}

fn deadline_kind(
    frame: Option<Result<http_body::Frame<Bytes>, tower_stream_deadline::BoxError>>,
) -> DeadlineKind {
    let err = frame
        .expect("the error, not the end")
        .expect_err("the error, not a frame");
    err.downcast_ref::<DeadlineExceeded>()
        .unwrap_or_else(|| panic!("expected a DeadlineExceeded, got {err:?}"))
        .kind()
}

#[tokio::test(start_paused = true)]
async fn a_body_held_unpolled_is_released_and_reported_at_the_total_deadline_and_yields_the_error_next()
 {
    let upstream = Upstream::new(Duration::ZERO, [Step::Babble { every: 10 * MS }]);
    let outcomes = Outcomes::default();
    let layer = outcomes.layer(StreamDeadlineLayer::new(SEC).release_unpolled());
    let mut svc = layer.layer(upstream.service());
    let mut body = call(&mut svc).await.unwrap().into_body();
    body.frame().await.expect("a frame").expect("a frame");

    tokio::time::sleep(SEC - MS).await;
    assert!(
        !upstream.body_dropped.is_dropped(),
        "not before the deadline"
    );
    assert!(outcomes.endings().is_empty());
    tokio::time::sleep(2 * MS).await;
    assert!(
        upstream.body_dropped.is_dropped(),
        "released at the deadline, unpolled"
    );
    let reported = outcomes.0.lock().unwrap().clone();
    assert_eq!(reported.len(), 1, "one outcome");
    assert_eq!(reported[0].ending, Ending::Deadline(DeadlineKind::Total));
    assert_eq!((reported[0].frames, reported[0].total_time), (1, SEC));

    assert!(!body.is_end_stream(), "the error is still to come");
    assert_eq!(deadline_kind(body.frame().await), DeadlineKind::Total);
    assert!(body.frame().await.is_none());
    assert!(body.is_end_stream());
    assert_eq!(outcomes.endings().len(), 1, "still one outcome");
}

#[tokio::test(start_paused = true)]
async fn the_idle_deadline_of_an_unpolled_body_counts_only_while_it_waits_on_upstream() {
    let upstream = Upstream::new(
        Duration::ZERO,
        [Step::Data("a"), Step::After(10 * SEC), Step::Data("b")],
    );
    let idle = 100 * MS;
    let layer = StreamDeadlineLayer::new(60 * SEC)
        .idle(idle)
        .release_unpolled();
    let mut svc = layer.layer(upstream.service());
    let mut body = call(&mut svc).await.unwrap().into_body();
    body.frame().await.expect("a").expect("a");

    // The caller took a frame and went away: that is not the upstream being idle.
    tokio::time::sleep(SEC).await;
    assert!(
        !upstream.body_dropped.is_dropped(),
        "the caller's own time is not idle"
    );

    // One poll finds nothing ready: the idle wait starts; nobody polls again.
    assert!(futures::poll!(body.frame()).is_pending());
    tokio::time::sleep(idle - MS).await;
    assert!(
        !upstream.body_dropped.is_dropped(),
        "not before the idle deadline"
    );
    tokio::time::sleep(2 * MS).await;
    assert!(
        upstream.body_dropped.is_dropped(),
        "released at the idle deadline, unpolled"
    );
    assert_eq!(deadline_kind(body.frame().await), DeadlineKind::Idle);
}

#[tokio::test(start_paused = true)]
async fn a_late_sse_stream_held_unpolled_still_ends_with_its_error_event() {
    let upstream = Upstream::new(
        Duration::ZERO,
        [Step::Data("data: 1\n\n"), Step::After(10 * SEC)],
    )
    .with_content_type("text/event-stream");
    let layer = StreamDeadlineLayer::new(SEC)
        .sse_endings()
        .release_unpolled();
    let mut svc = layer.layer(upstream.service());
    let mut body = call(&mut svc).await.unwrap().into_body();
    body.frame().await.expect("a frame").expect("a frame");

    tokio::time::sleep(SEC + MS).await;
    assert!(
        upstream.body_dropped.is_dropped(),
        "released at the deadline"
    );
    let last = body
        .frame()
        .await
        .expect("the error event")
        .expect("an event, not an error");
    let last = last.into_data().expect("data");
    assert!(
        String::from_utf8_lossy(&last).contains("deadline_exceeded"),
        "the SSE error event, got {last:?}"
    );
    assert!(body.frame().await.is_none(), "then a clean end");
}

#[tokio::test(start_paused = true)]
async fn a_body_that_ends_or_is_dropped_releases_its_watcher_and_reports_once() {
    let upstream = Upstream::new(Duration::ZERO, [Step::Data("a"), Step::Data("b")]);
    let outcomes = Outcomes::default();
    let layer = outcomes.layer(StreamDeadlineLayer::new(SEC).release_unpolled());
    let mut svc = layer.layer(upstream.service());

    let body = call(&mut svc).await.unwrap().into_body();
    let collected = body.collect().await.expect("a clean end").to_bytes();
    assert_eq!(collected, "ab");

    let mut dropped = call(&mut svc).await.unwrap().into_body();
    dropped.frame().await.expect("a").expect("a");
    drop(dropped);
    assert_eq!(outcomes.endings(), [Ending::Completed, Ending::Dropped]);
    // Past the deadline nothing more is reported: the watchers ended with their bodies.
    tokio::time::sleep(2 * SEC).await;
    assert_eq!(outcomes.endings(), [Ending::Completed, Ending::Dropped]);
}

/// Tasks alive on the test's runtime: the watchers (the test itself is not a task).
fn watchers() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

pin_project_lite::pin_project! {
    /// A body that says its length, as one with a `content-length` does.
    struct Known<B> {
        length: u64,
        #[pin]
        body: B,
    }
}

impl<B: http_body::Body> http_body::Body for Known<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.length)
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_whose_upstream_ended_by_the_hand_over_needs_no_watcher() {
    let outcomes = Outcomes::default();
    let upstream = tower::service_fn(|request: http::Request<()>| async move {
        let answer = || Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from("answer")));
        let body = match request.uri().path() {
            // Whole with its head, and says when it ended, as a `content-length` body does.
            "/short" => Full::new(Bytes::from("answer")).boxed_unsync(),
            "/empty" => Empty::new().boxed_unsync(),
            // Its length is known, its bytes come long after its head.
            "/late" => Known {
                length: 6,
                body: StreamBody::new(futures::stream::once(async move {
                    tokio::time::sleep(10 * SEC).await;
                    answer()
                })),
            }
            .boxed_unsync(),
            // A stream: no length, no end known before the last frame.
            _ => StreamBody::new(futures::stream::iter([answer()])).boxed_unsync(),
        };
        Ok::<_, std::convert::Infallible>(http::Response::new(body))
    });
    // Each answer in turn: the watchers alive once it is handed over, and what it yields
    // when read past the deadline, unpolled until then.
    let cases = [
        (
            StreamDeadlineLayer::new(SEC),
            vec![
                ("/short", 0, "answer, deadline"),
                ("/empty", 0, "deadline"),
                ("/late", 1, "deadline"),
                ("/stream", 2, "deadline"),
            ],
        ),
        (
            // The future takes the first frame (here the last) itself.
            StreamDeadlineLayer::new(SEC).first_frame(SEC / 2),
            vec![
                ("/short", 0, "answer, deadline"),
                ("/empty", 0, "end"),
                ("/stream", 1, "deadline"),
            ],
        ),
    ];
    for (layer, answers) in cases {
        let mut svc = outcomes.layer(layer.release_unpolled()).layer(upstream);
        let mut bodies = Vec::new();
        for (path, watching, _) in &answers {
            let request = http::Request::get(*path).body(()).unwrap();
            bodies.push(call_with(&mut svc, request).await.unwrap().into_body());
            assert_eq!(watchers(), *watching, "watchers once {path} is handed over");
        }

        // A watched body was released at the deadline and yields the error. One that needed
        // no watcher is read as the default layer reads it: what was taken in time (the
        // frame, or the end the future saw), then what is observed past the deadline.
        tokio::time::sleep(2 * SEC).await;
        assert_eq!(watchers(), 0, "each watcher ended at the deadline");
        for (mut body, (path, _, yields)) in bodies.into_iter().zip(answers) {
            let mut seen = Vec::new();
            while let Some(frame) = body.frame().await {
                seen.push(match frame {
                    Ok(frame) => String::from_utf8_lossy(&frame.into_data().unwrap()).into_owned(),
                    Err(err) => {
                        assert!(DeadlineExceeded::find(&*err).is_some(), "{path}: {err}");
                        "deadline".to_owned()
                    }
                });
            }
            if seen.is_empty() {
                seen.push("end".to_owned());
            }
            assert_eq!(seen.join(", "), yields, "{path}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_taken_at_the_hand_over_is_reported_and_fails_as_one_read_later() {
    let outcomes = Outcomes::default();
    let upstream = tower::service_fn(|request: http::Request<()>| async move {
        tokio::time::sleep(100 * MS).await;
        let body = match request.uri().path() {
            "/short" => Full::new(Bytes::from("answer"))
                .map_err(|never| match never {})
                .boxed_unsync(),
            // Says its length, then breaks at once: the body's error, not the call's.
            _ => Known {
                length: 6,
                body: StreamBody::new(futures::stream::iter([Err::<Frame<Bytes>, _>(
                    tower_stream_deadline::BoxError::from("connection reset"),
                )])),
            }
            .boxed_unsync(),
        };
        Ok::<_, std::convert::Infallible>(http::Response::new(body))
    });
    let layer = outcomes.layer(StreamDeadlineLayer::new(SEC).release_unpolled());
    let mut svc = layer.layer(upstream);

    let request = http::Request::get("/short").body(()).unwrap();
    let body = call_with(&mut svc, request).await.unwrap().into_body();
    tokio::time::sleep(200 * MS).await;
    assert_eq!(body.collect().await.unwrap().to_bytes(), "answer");
    let reported = outcomes.0.lock().unwrap().pop().expect("an outcome");
    assert_eq!(reported.ending, Ending::Completed);
    assert_eq!((reported.frames, reported.bytes), (1, 6));
    // The frame came with the head, not when it was read.
    assert_eq!(reported.time_to_head, Some(100 * MS));
    assert_eq!(reported.time_to_first_frame, Some(100 * MS));
    assert_eq!(reported.total_time, 300 * MS);

    let request = http::Request::get("/broken").body(()).unwrap();
    let mut body = call_with(&mut svc, request)
        .await
        .expect("the head came: the call succeeded")
        .into_body();
    assert!(!body.is_end_stream(), "the error is still to come");
    let err = body
        .frame()
        .await
        .expect("the error")
        .expect_err("the error");
    assert_eq!(
        err.to_string(),
        "connection reset",
        "passed through unchanged"
    );
    assert!(body.frame().await.is_none());
    assert_eq!(outcomes.endings(), [Ending::UpstreamError]);
}

#[test]
fn without_a_runtime_with_timers_the_body_works_as_without_release_unpolled() {
    let upstream = tower::service_fn(|_req: http::Request<()>| async {
        let body =
            http_body_util::StreamBody::new(futures::stream::iter(["a", "b"].map(|d| {
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(d)))
            })));
        Ok::<_, std::convert::Infallible>(http::Response::new(body))
    });
    let layer = StreamDeadlineLayer::new(SEC).release_unpolled();

    // No runtime at all.
    let mut svc = layer.layer(upstream);
    let read = futures::executor::block_on(async {
        let body = call(&mut svc).await.unwrap().into_body();
        body.collect().await.expect("a clean end").to_bytes()
    });
    assert_eq!(read, "ab");

    // A runtime built without timers.
    let no_timers = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let read = no_timers.block_on(async {
        let body = call(&mut svc).await.unwrap().into_body();
        body.collect().await.expect("a clean end").to_bytes()
    });
    assert_eq!(read, "ab");
}

#[test]
fn a_body_whose_runtime_shut_down_still_meets_its_deadline_when_polled() {
    let upstream = Upstream::new(Duration::ZERO, [Step::Data("a"), Step::Stall]);
    let layer = StreamDeadlineLayer::new(50 * MS).release_unpolled();
    let mut svc = layer.layer(upstream.service());
    let first = runtime_with_timers();
    let mut body = first.block_on(async { call(&mut svc).await.unwrap().into_body() });
    drop(first);

    let second = runtime_with_timers();
    second.block_on(async {
        body.frame().await.expect("a").expect("a");
        // Without a timer of its own runtime, the body is woken by nothing: poll it after
        // the deadline, as a caller on another runtime would on its next frame.
        tokio::time::sleep(60 * MS).await;
        assert_eq!(deadline_kind(body.frame().await), DeadlineKind::Total);
    });
    assert!(upstream.body_dropped.is_dropped());
}

#[test]
fn a_response_whose_call_runtime_shut_down_before_the_head_still_streams_and_meets_its_deadline() {
    let upstream = Upstream::new(10 * MS, [Step::Data("a"), Step::Stall]);
    let layer = StreamDeadlineLayer::new(50 * MS).release_unpolled();
    let mut svc = layer.layer(upstream.service());
    let first = runtime_with_timers();
    // `call` in the first runtime; the head comes only once the second one polls.
    first
        .block_on(tower::ServiceExt::ready(&mut svc))
        .expect("ready");
    let future = {
        let _entered = first.enter();
        svc.call(http::Request::new(()))
    };
    drop(first);

    let second = runtime_with_timers();
    second.block_on(async {
        let mut body = future
            .await
            .expect("the head, within the budget")
            .into_body();
        body.frame().await.expect("a").expect("a");
        tokio::time::sleep(60 * MS).await;
        assert_eq!(deadline_kind(body.frame().await), DeadlineKind::Total);
    });
    assert!(upstream.body_dropped.is_dropped());
}

/// A current-thread runtime with timers, to call in or poll on and then shut down.
fn runtime_with_timers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}
