//! The deadline is a property of the body, not of the task or thread that polls it.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::Layer;
use tower_stream_deadline::{
    BoxError, DeadlineBody, DeadlineExceeded, DeadlineKind, StreamDeadlineLayer,
};

use support::{MS, Scripted, Step, Upstream, assert_fired, call};

type Body = DeadlineBody<Scripted>;

/// Reads the next frame on a brand-new task, the way LangChain's runnables do.
async fn next_frame_on_a_new_task(mut body: Body) -> (Body, Option<Result<Bytes, BoxError>>) {
    tokio::spawn(async move {
        let frame = body
            .frame()
            .await
            .map(|f| f.map(|f| f.into_data().unwrap_or_default()));
        (body, frame)
    })
    .await
    .expect("the polling task panicked")
}

fn deadline(err: &BoxError) -> &DeadlineExceeded {
    err.downcast_ref::<DeadlineExceeded>()
        .unwrap_or_else(|| panic!("expected a DeadlineExceeded, got {err:?}"))
}

#[tokio::test(start_paused = true)]
async fn a_babbling_stream_read_one_frame_per_new_task_is_cut_at_the_deadline() {
    let upstream = Upstream::new(Duration::ZERO, [Step::Babble { every: 10 * MS }]);
    let mut svc = StreamDeadlineLayer::new(Duration::from_secs(1)).layer(upstream.service());
    let mut body = call(&mut svc).await.unwrap().into_body();

    let mut frames = 0;
    // Bounded: at 10 ms a frame, a working deadline stops this after 100 frames.
    for _ in 0..10_000 {
        let (returned, frame) = next_frame_on_a_new_task(body).await;
        body = returned;
        match frame {
            Some(Ok(_)) => frames += 1,
            Some(Err(err)) => {
                assert_fired(deadline(&err), DeadlineKind::Total, Duration::from_secs(1));
                assert_eq!(frames, 100, "frames at 0, 10, .., 990 ms");
                assert!(upstream.body_dropped.is_dropped());
                return;
            }
            None => panic!("the babbling stream ended by itself"),
        }
    }
    panic!("no deadline after {frames} frames read from new tasks");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_stream_polled_from_a_task_that_went_away_still_fails_on_time() {
    let upstream = Upstream::new(Duration::ZERO, [Step::Data("a"), Step::Stall]);
    let mut svc = StreamDeadlineLayer::new(Duration::from_secs(1)).layer(upstream.service());
    let mut body = call(&mut svc).await.unwrap().into_body();
    let (returned, _) = next_frame_on_a_new_task(body).await;
    body = returned;

    // A task polls the stalled body once and is cancelled: the timer now holds its waker.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let first_poller = tokio::spawn(async move {
        let mut body = body;
        tokio::select! {
            biased;
            _ = body.frame() => panic!("nothing should be ready"),
            _ = std::future::ready(()) => {}
        }
        tx.send(body).ok();
    });
    first_poller.await.unwrap();
    let body = rx.await.unwrap();

    // A second task picks the body up later and waits: the deadline wakes it, on time.
    let start = Instant::now();
    let (_, frame) = next_frame_on_a_new_task(body).await;
    let err = frame
        .expect("an error, not the end")
        .expect_err("a deadline, not a frame");
    assert_fired(deadline(&err), DeadlineKind::Total, Duration::from_secs(1));
    assert!(start.elapsed() <= Duration::from_secs(1) + MS);
}

#[test]
fn a_stalled_body_polled_on_another_worker_thread_fails_at_the_deadline() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let upstream = Upstream::new(Duration::ZERO, [Step::Stall]);
        let budget = 200 * MS;
        let mut svc = StreamDeadlineLayer::new(budget).layer(upstream.service());
        let mut body = call(&mut svc).await.unwrap().into_body();

        let err = tokio::spawn(async move { body.frame().await })
            .await
            .unwrap()
            .expect("an error, not the end")
            .expect_err("a deadline, not a frame");
        let deadline = deadline(&err);
        assert_eq!(deadline.kind(), DeadlineKind::Total);
        assert!(deadline.elapsed() >= budget, "never early: {deadline}");
    });
}

#[test]
fn a_stalled_body_polled_on_a_thread_with_no_runtime_fails_at_the_deadline() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let budget = 200 * MS;
    let upstream = Upstream::new(Duration::ZERO, [Step::Stall]);
    let mut body = runtime.block_on(async {
        let mut svc = StreamDeadlineLayer::new(budget).layer(upstream.service());
        call(&mut svc).await.unwrap().into_body()
    });

    // The runtime that made the response is alive, but this thread is not in it.
    let err = std::thread::spawn(move || futures::executor::block_on(body.frame()))
        .join()
        .expect("polling with no runtime must not panic")
        .expect("an error, not the end")
        .expect_err("a deadline, not a frame");
    let deadline = deadline(&err);
    assert_eq!(deadline.kind(), DeadlineKind::Total);
    assert!(deadline.elapsed() >= budget, "never early: {deadline}");
    assert!(upstream.body_dropped.is_dropped());
    drop(runtime);
}

#[test]
fn after_its_runtime_shut_down_the_body_never_panics_and_still_checks_the_clock() {
    let make = |budget: Duration, steps: Vec<Step>| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let upstream = Upstream::new(Duration::ZERO, steps);
        let body = runtime.block_on(async {
            let mut svc = StreamDeadlineLayer::new(budget).layer(upstream.service());
            call(&mut svc).await.unwrap().into_body()
        });
        (runtime, body)
    };

    // A stalled body whose timer was registered before its runtime shut down.
    // Its deadline is far off, so only the timer could end the wait, and it is gone.
    let (runtime, mut stalled) = make(Duration::from_secs(3600), vec![Step::Stall]);
    runtime.block_on(async {
        tokio::select! { biased; _ = stalled.frame() => panic!("stalled"), _ = std::future::ready(()) => {} }
    });
    drop(runtime);
    assert!(
        futures::executor::block_on(futures::future::poll_immediate(stalled.frame())).is_none(),
        "with no timer left, a stalled body stays pending instead of panicking"
    );

    // A body whose frames are ready: the clock check alone enforces the deadline.
    let budget = 50 * MS;
    let (runtime, mut ready) = make(budget, vec![Step::Data("a"), Step::Data("b")]);
    drop(runtime);
    let first = futures::executor::block_on(ready.frame()).unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "a");
    let start = std::time::Instant::now();
    while start.elapsed() < budget {
        std::thread::yield_now(); // real time must pass the deadline; nothing to wait on
    }
    let err = futures::executor::block_on(ready.frame())
        .unwrap()
        .unwrap_err();
    assert_eq!(deadline(&err).kind(), DeadlineKind::Total);
    assert!(futures::executor::block_on(ready.frame()).is_none());
}

#[test]
fn with_no_runtime_at_all_the_clock_check_still_cuts_the_stream() {
    let budget = 50 * MS;
    let upstream = tower::service_fn(|_req: http::Request<()>| async {
        let body =
            http_body_util::StreamBody::new(futures::stream::iter(["a", "b"].map(|s| {
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(s)))
            })));
        Ok::<_, std::convert::Infallible>(http::Response::new(body))
    });
    let mut svc = StreamDeadlineLayer::new(budget).layer(upstream);

    let mut body = futures::executor::block_on(async {
        use tower::{Service, ServiceExt};
        svc.ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .unwrap()
            .into_body()
    });
    let first = futures::executor::block_on(body.frame()).unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "a");
    let start = std::time::Instant::now();
    while start.elapsed() < budget {
        std::thread::yield_now();
    }
    let err = futures::executor::block_on(body.frame())
        .unwrap()
        .unwrap_err();
    assert_eq!(deadline(&err).kind(), DeadlineKind::Total);
}

#[test]
fn a_runtime_without_timers_does_not_make_the_body_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // Long enough that the poll below comes before it, even after the panic hook has printed
    // tokio's caught panic with a backtrace: a poll past the deadline would yield the error.
    let budget = Duration::from_secs(30);
    runtime.block_on(async {
        let upstream = tower::service_fn(|_req: http::Request<()>| async {
            let body = http_body_util::StreamBody::new(
                futures::stream::iter(["a", "b"].map(|s| {
                    Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(s)))
                }))
                .chain(futures::stream::pending()),
            );
            Ok::<_, std::convert::Infallible>(http::Response::new(body))
        });
        let mut svc = StreamDeadlineLayer::new(budget).layer(upstream);
        let mut body = call(&mut svc).await.unwrap().into_body();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "a"
        );
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "b"
        );
        // Pending upstream with no timer to be had: still pending, no panic.
        assert!(futures::poll!(std::pin::pin!(body.frame())).is_pending());
    });
}
