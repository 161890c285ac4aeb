//! At a deadline the `DeadlineBody` lets go of the upstream at once, over real sockets:
//! a hyper upstream on 127.0.0.1 sees the HTTP/1 connection close or the HTTP/2 stream
//! reset within 100 ms of the deadline, while the caller still holds the `DeadlineBody`;
//! with `release_unpolled`, also while nobody polls it.
//!
//! The client is a hyper_util legacy `Client` wrapped in `StreamDeadlineLayer`; the upstream
//! babbles a 13-byte record every 5 ms (or stalls after a few) and reports the instant its
//! response body is dropped, which hyper does when the client disconnects.
//!
//! Deadlines are measured from an instant taken just before `call`, so the real deadline is
//! never earlier than the one the assertions use: "no earlier than the deadline" and "at most
//! 100 ms after it" both hold for the real one whenever they hold here.

#[path = "support/sockets.rs"]
mod sockets;

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::Body;
use http_body_util::BodyExt;
use sockets::*;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_stream_deadline::{DeadlineExceeded, DeadlineKind, Ending, Outcome, StreamDeadlineLayer};

const TOTAL: Duration = Duration::from_millis(300);
const IDLE: Duration = Duration::from_millis(150);
/// Records sent before the upstream stalls, in the idle tests.
const BEFORE_STALL: usize = 5;

/// The upstream saw its release within the bound, while the caller still held the ended body.
async fn assert_released_while_held<B>(
    mut body: B,
    release: Release,
    deadline: Window,
    deadline_err: &DeadlineExceeded,
    what: &str,
) where
    B: Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let released = release.observed(what).await;
    // The timer's part and the release's part, to tell them apart if this fails.
    let context = format!(
        "{what} (the caller saw the deadline {:?} into the budget)",
        deadline_err.elapsed()
    );
    assert_released_in_time(released, deadline, &context);
    assert!(
        body.is_end_stream(),
        "{what}: the body is ended after its error"
    );
    assert!(
        body.frame().await.is_none(),
        "{what}: nothing after the error"
    );
    drop(body);
}

/// A babbling upstream, cut by the total budget.
async fn total_deadline_releases_the_upstream(proto: Proto) {
    let what = format!("{proto:?} total deadline");
    let (addr, mut served) = serve_script(Script::babbling()).await;
    let mut svc = ServiceBuilder::new()
        .layer(StreamDeadlineLayer::new(TOTAL))
        .service(client(proto));

    let svc = svc.ready().await.expect("the client is ready");
    let start = Instant::now();
    let response = svc
        .call(get(addr, "/babble"))
        .await
        .expect("the head arrives well within the budget");
    let deadline = Window::from_call(start, TOTAL);
    let release = next_request(&mut served).await;

    let mut body = response.into_body();
    let read = read_body(&mut body, TOTAL + SIGNAL_WAIT, &what).await;

    // The caller got the deadline, of the right kind, no earlier than the deadline.
    let err = read
        .end
        .as_ref()
        .expect_err("an endless stream must be cut by the total budget");
    let deadline_err = err
        .downcast_ref::<DeadlineExceeded>()
        .unwrap_or_else(|| panic!("{what}: expected DeadlineExceeded, got {err:?}"));
    eprintln!("{what}: the caller got: {deadline_err}");
    assert_eq!(deadline_err.kind(), DeadlineKind::Total, "{what}");
    assert_eq!(deadline_err.budget(), TOTAL, "{what}");
    assert!(deadline_err.elapsed() >= TOTAL, "{what}: {deadline_err}");
    assert!(
        read.ended_at >= deadline.earliest,
        "{what}: the error came before the deadline"
    );

    // Everything delivered before it was whole and in order.
    let delivered = assert_whole_records_in_order(&read.frames, &what);
    assert!(
        delivered >= 5,
        "{what}: only {delivered} records in {TOTAL:?} of a record every {TICK:?}"
    );

    // The upstream saw the disconnect, while we still hold the DeadlineBody.
    assert_released_while_held(body, release, deadline, deadline_err, &what).await;
}

/// An upstream that stalls after a few records, cut by the idle budget.
async fn idle_deadline_releases_the_upstream(proto: Proto) {
    let what = format!("{proto:?} idle deadline");
    let (addr, mut served) = serve_script(Script::records(BEFORE_STALL, Then::Stall)).await;
    let mut svc = ServiceBuilder::new()
        .layer(StreamDeadlineLayer::new(Duration::from_secs(10)).idle(IDLE))
        .service(client(proto));

    let svc = svc.ready().await.expect("the client is ready");
    let response = svc
        .call(get(addr, "/stall"))
        .await
        .expect("the head arrives well within the budget");
    let release = next_request(&mut served).await;

    let mut body = response.into_body();
    let read = read_body(&mut body, IDLE + SIGNAL_WAIT, &what).await;

    let err = read
        .end
        .as_ref()
        .expect_err("a stalled stream must be cut by the idle budget");
    let deadline_err = err
        .downcast_ref::<DeadlineExceeded>()
        .unwrap_or_else(|| panic!("{what}: expected DeadlineExceeded, got {err:?}"));
    eprintln!("{what}: the caller got: {deadline_err}");
    assert_eq!(deadline_err.kind(), DeadlineKind::Idle, "{what}");
    assert_eq!(deadline_err.budget(), IDLE, "{what}");
    assert!(deadline_err.elapsed() >= IDLE, "{what}: {deadline_err}");

    // All the records sent before the stall, whole and in order.
    let delivered = assert_whole_records_in_order(&read.frames, &what);
    assert_eq!(
        delivered, BEFORE_STALL,
        "{what}: every record before the stall"
    );

    // The body started waiting after the last record was handed over, so the idle deadline
    // is no earlier than this.
    let deadline = read.last_frame_at.expect("records were delivered") + IDLE;
    let deadline = Window {
        earliest: deadline,
        latest: deadline,
    };
    assert!(
        read.ended_at >= deadline.earliest,
        "{what}: the error came before the deadline"
    );

    // The upstream saw the disconnect, while we still hold the DeadlineBody.
    assert_released_while_held(body, release, deadline, deadline_err, &what).await;
}

/// A stream that ends within every budget reads the same with and without the layer.
async fn finished_stream_is_identical_with_and_without_the_layer(proto: Proto) {
    let what = format!("{proto:?} finished stream");
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "done".parse().unwrap());
    const N: usize = 20;
    let (addr, mut served) =
        serve_script(Script::records(N, Then::End(Some(trailers.clone())))).await;

    let mut bare = client(proto);
    let response = bare
        .ready()
        .await
        .unwrap()
        .call(get(addr, "/finite"))
        .await
        .expect("a plain response");
    let _ = next_request(&mut served).await;
    let bare_status = response.status();
    let bare_type = response.headers().get(http::header::CONTENT_TYPE).cloned();
    let mut bare_body = response.into_body();
    let without = read_body(&mut bare_body, SIGNAL_WAIT, &what).await;
    without.end.as_ref().expect("the plain stream ends cleanly");

    // All three budgets, none of which runs out; the first-frame one makes the response
    // future take the first frame and the body replay it.
    let mut svc = ServiceBuilder::new()
        .layer(
            StreamDeadlineLayer::new(Duration::from_secs(5))
                .first_frame(Duration::from_secs(2))
                .idle(Duration::from_secs(1)),
        )
        .service(client(proto));
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(get(addr, "/finite"))
        .await
        .expect("a response within budget");
    let _ = next_request(&mut served).await;
    assert_eq!(response.status(), bare_status, "{what}: status");
    assert_eq!(
        response.headers().get(http::header::CONTENT_TYPE),
        bare_type.as_ref(),
        "{what}: content-type"
    );
    let mut body = response.into_body();
    let with = read_body(&mut body, SIGNAL_WAIT, &what).await;
    if let Err(err) = &with.end {
        panic!("{what}: the stream must end cleanly within budget, got {err:?}");
    }

    assert_eq!(without.bytes(), records(N), "{what}: the plain stream");
    assert_eq!(
        with.bytes(),
        without.bytes(),
        "{what}: bytes with and without the layer"
    );
    assert_whole_records_in_order(&with.frames, &what);
    assert_eq!(with.trailers, without.trailers, "{what}: trailers");
    if proto == Proto::Http2 {
        assert_eq!(
            with.trailers.as_ref(),
            Some(&trailers),
            "{what}: trailers arrive over h2"
        );
    }
    assert!(body.is_end_stream(), "{what}: ended");
}

/// The outcome callback of a layer, reporting the instant it ran.
fn outcome_instants() -> (
    StreamDeadlineLayer,
    tokio::sync::mpsc::UnboundedReceiver<(Ending, Instant)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let layer = StreamDeadlineLayer::new(TOTAL).on_outcome(move |outcome: &Outcome| {
        let _ = tx.send((outcome.ending, Instant::now()));
    });
    (layer, rx)
}

/// After the deadline the held body yields the deadline of `kind`, then ends.
async fn assert_next_poll_yields_the_deadline<B>(body: &mut B, kind: DeadlineKind, what: &str)
where
    B: Body<Data = Bytes, Error = tower_stream_deadline::BoxError> + Unpin,
{
    assert!(!body.is_end_stream(), "{what}: the error is still to come");
    let err = within(what, SIGNAL_WAIT, body.frame())
        .await
        .expect("the error, not the end")
        .expect_err("the deadline error, not a frame");
    let deadline = DeadlineExceeded::find(&*err)
        .unwrap_or_else(|| panic!("{what}: expected DeadlineExceeded, got {err:?}"));
    assert_eq!(deadline.kind(), kind, "{what}");
    assert!(
        body.frame().await.is_none(),
        "{what}: nothing after the error"
    );
    assert!(body.is_end_stream(), "{what}: ended");
}

/// A babbling upstream whose body is polled for one frame and then held, unpolled: the
/// upstream is released at the total deadline, and the outcome reported then.
async fn total_deadline_releases_an_unpolled_body(proto: Proto) {
    let what = format!("{proto:?} total deadline, body held unpolled");
    let (addr, mut served) = serve_script(Script::babbling()).await;
    let (layer, mut outcomes) = outcome_instants();
    let mut svc = ServiceBuilder::new()
        .layer(layer.release_unpolled())
        .service(client(proto));

    let svc = svc.ready().await.expect("the client is ready");
    let start = Instant::now();
    let response = svc
        .call(get(addr, "/babble"))
        .await
        .expect("the head arrives well within the budget");
    let deadline = Window::from_call(start, TOTAL);
    let release = next_request(&mut served).await;
    let mut body = response.into_body();
    let first = within(&what, SIGNAL_WAIT, body.frame()).await;
    let first = first.expect("a frame").expect("a frame, not an error");
    assert_eq!(
        first.into_data().ok(),
        Some(record(0)),
        "{what}: the first record"
    );

    // Nobody polls the body from here on.
    let released = release.observed(&what).await;
    assert_released_in_time(released, deadline, &what);
    let (ending, reported) = within(&what, SIGNAL_WAIT, outcomes.recv())
        .await
        .expect("one outcome");
    assert_eq!(ending, Ending::Deadline(DeadlineKind::Total), "{what}");
    assert_near_deadline(
        reported,
        deadline,
        &format!("{what}: the outcome was reported"),
    );

    assert_next_poll_yields_the_deadline(&mut body, DeadlineKind::Total, &what).await;
}

/// An upstream that stalls after a few records; the body is polled once more, finds nothing
/// ready (the idle wait starts) and is held, unpolled: released at the idle deadline.
async fn idle_deadline_releases_an_unpolled_body(proto: Proto) {
    let what = format!("{proto:?} idle deadline, body held unpolled");
    let (addr, mut served) = serve_script(Script::records(BEFORE_STALL, Then::Stall)).await;
    let mut svc = ServiceBuilder::new()
        .layer(
            StreamDeadlineLayer::new(Duration::from_secs(10))
                .idle(IDLE)
                .release_unpolled(),
        )
        .service(client(proto));

    let svc = svc.ready().await.expect("the client is ready");
    let response = svc
        .call(get(addr, "/stall"))
        .await
        .expect("the head arrives well within the budget");
    let release = next_request(&mut served).await;
    let mut body = response.into_body();
    for i in 0..BEFORE_STALL {
        let frame = within(&what, SIGNAL_WAIT, body.frame()).await;
        let frame = frame.expect("a frame").expect("a frame, not an error");
        assert_eq!(
            frame.into_data().ok(),
            Some(record(i)),
            "{what}: record {i}"
        );
    }
    // One poll that finds nothing (the upstream has stalled), then no more.
    let earliest = Instant::now();
    assert!(
        futures::poll!(body.frame()).is_pending(),
        "{what}: nothing after the stall"
    );
    let deadline = Window {
        earliest: earliest + IDLE,
        latest: Instant::now() + IDLE,
    };

    let released = release.observed(&what).await;
    assert_released_in_time(released, deadline, &what);
    assert_next_poll_yields_the_deadline(&mut body, DeadlineKind::Idle, &what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_body_held_unpolled_releases_the_upstream_within_100ms_of_the_total_deadline() {
    total_deadline_releases_an_unpolled_body(Proto::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_body_held_unpolled_releases_the_upstream_within_100ms_of_the_total_deadline() {
    total_deadline_releases_an_unpolled_body(Proto::Http2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_body_held_unpolled_while_waiting_releases_the_upstream_within_100ms_of_the_idle_deadline()
 {
    idle_deadline_releases_an_unpolled_body(Proto::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_body_held_unpolled_while_waiting_releases_the_upstream_within_100ms_of_the_idle_deadline()
 {
    idle_deadline_releases_an_unpolled_body(Proto::Http2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_upstream_sees_the_connection_close_within_100ms_of_the_total_deadline() {
    total_deadline_releases_the_upstream(Proto::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstream_sees_the_stream_reset_within_100ms_of_the_total_deadline() {
    total_deadline_releases_the_upstream(Proto::Http2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_upstream_stalled_after_a_few_frames_sees_the_connection_close_within_100ms_of_the_idle_deadline()
 {
    idle_deadline_releases_the_upstream(Proto::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstream_stalled_after_a_few_frames_sees_the_stream_reset_within_100ms_of_the_idle_deadline()
 {
    idle_deadline_releases_the_upstream(Proto::Http2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_stream_finishing_within_budget_is_byte_identical_with_and_without_the_layer() {
    finished_stream_is_identical_with_and_without_the_layer(Proto::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_finishing_within_budget_is_byte_identical_with_and_without_the_layer() {
    finished_stream_is_identical_with_and_without_the_layer(Proto::Http2).await;
}
