//! `StreamDeadlineLayer` in front of a hyper_util legacy `Client`, against real sockets on
//! 127.0.0.1: upstream failures pass through as the client's own errors (never relabelled
//! as deadlines), and a server that never answers fails the call with kind `Total` at the
//! budget, cancelling the request.

#[path = "support/sockets.rs"]
mod sockets;

use std::time::Duration;

use http_body::Body;
use sockets::*;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_stream_deadline::{DeadlineExceeded, DeadlineKind, StreamDeadline, StreamDeadlineLayer};

const BUDGET: Duration = Duration::from_millis(200);
/// A budget that must not run out in the test: failures have to come from upstream.
const LONG: Duration = Duration::from_secs(5);

fn wrapped(proto: Proto, total: Duration) -> StreamDeadline<TestClient> {
    ServiceBuilder::new()
        .layer(StreamDeadlineLayer::new(total))
        .service(client(proto))
}

/// Calls a server that never answers through the layer: the call must fail with kind
/// `Total`, near the budget. Returns the deadline window and the error.
async fn the_call_fails_at_the_total_deadline(
    proto: Proto,
    addr: std::net::SocketAddr,
    what: &str,
) -> (Window, DeadlineExceeded) {
    let mut svc = wrapped(proto, BUDGET);
    let svc = svc.ready().await.unwrap();
    let start = Instant::now();
    let err = within(
        "the call to fail",
        BUDGET + SIGNAL_WAIT,
        svc.call(get(addr, "/")),
    )
    .await
    .expect_err("no head ever comes: the call must fail");
    let failed_at = Instant::now();
    let deadline = Window::from_call(start, BUDGET);

    let deadline_err = err
        .downcast_ref::<DeadlineExceeded>()
        .unwrap_or_else(|| panic!("expected DeadlineExceeded, got {err:?}"))
        .clone();
    eprintln!("the caller got: {deadline_err}");
    assert_eq!(deadline_err.kind(), DeadlineKind::Total);
    assert_eq!(deadline_err.budget(), BUDGET);
    assert!(deadline_err.elapsed() >= BUDGET, "{deadline_err}");
    assert_near_deadline(failed_at, deadline, &format!("{what} ({deadline_err})"));
    (deadline, deadline_err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refused_passes_through_as_the_clients_own_error_not_a_deadline() {
    // A port that was just free: nothing listens on it.
    let addr = {
        let (listener, addr) = listener().await;
        drop(listener);
        addr
    };
    let mut svc = wrapped(Proto::Http1, LONG);
    let start = Instant::now();
    let err = within(
        "the connect error",
        SIGNAL_WAIT,
        svc.ready().await.unwrap().call(get(addr, "/")),
    )
    .await
    .expect_err("nothing listens: the connect must fail");

    assert!(
        start.elapsed() < LONG,
        "a refused connect fails at once, not at the budget"
    );
    assert!(
        err.downcast_ref::<DeadlineExceeded>().is_none(),
        "an upstream error is not a deadline: {err:?}"
    );
    assert!(
        DeadlineExceeded::find(&*err).is_none(),
        "no deadline anywhere in the chain of {err:?}"
    );
    let client_err = err
        .downcast::<hyper_util::client::legacy::Error>()
        .unwrap_or_else(|err| panic!("expected the client's own error, got {err:?}"));
    assert!(client_err.is_connect(), "a connect error: {client_err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_server_that_never_answers_fails_the_call_with_total_at_the_budget_and_sees_the_connection_closed()
 {
    let (addr, closed) = silent_server().await;
    let (deadline, deadline_err) = the_call_fails_at_the_total_deadline(
        Proto::Http1,
        addr,
        "http1 call to a silent server failed",
    )
    .await;

    // Failing dropped the client's future: the request is cancelled, the connection closed.
    let closed_at = within(
        "the silent server to see the connection closed",
        SIGNAL_WAIT,
        closed,
    )
    .await
    .expect("the server reports");
    assert_released_in_time(
        closed_at,
        deadline,
        &format!("http1 silent server ({deadline_err})"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_server_that_never_answers_fails_the_call_with_total_at_the_budget_and_sees_the_request_cancelled()
 {
    let (tx, mut cancelled) = tokio::sync::mpsc::unbounded_channel();
    let addr = serve(move |_req| {
        let (never, release) =
            never_answers::<http::Response<http_body_util::Empty<bytes::Bytes>>>();
        let _ = tx.send(release);
        never
    })
    .await;
    let (deadline, deadline_err) = the_call_fails_at_the_total_deadline(
        Proto::Http2,
        addr,
        "http2 call to a silent handler failed",
    )
    .await;

    // Failing dropped the client's future: the stream is reset, the handler dropped.
    let handler = next_request(&mut cancelled).await;
    let cancelled_at = handler.observed("http2 silent handler").await;
    assert_released_in_time(
        cancelled_at,
        deadline,
        &format!("http2 silent handler ({deadline_err})"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_upstream_dropping_the_connection_mid_stream_is_a_body_error_not_a_deadline() {
    const SENT: usize = 5;
    let addr = http1_server_dropping_the_connection_after(SENT).await;
    let mut svc = wrapped(Proto::Http1, LONG);
    let start = Instant::now();
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(get(addr, "/"))
        .await
        .expect("the head arrives");
    let mut body = response.into_body();
    let read = read_body(&mut body, SIGNAL_WAIT, "http1 dropped connection").await;

    let err = read
        .end
        .as_ref()
        .expect_err("a chunked body cut without its last chunk is an error");
    eprintln!("upstream error, as the caller sees it: {err:?}");
    assert!(
        start.elapsed() < LONG,
        "the error came from upstream, not the budget"
    );
    assert!(
        DeadlineExceeded::find(&**err).is_none(),
        "not a deadline: {err:?}"
    );
    let hyper_err = err
        .downcast_ref::<hyper::Error>()
        .unwrap_or_else(|| panic!("expected hyper's own error, untouched, got {err:?}"));
    assert!(!hyper_err.is_timeout(), "{hyper_err:?}");
    assert_eq!(
        assert_whole_records_in_order(&read.frames, "http1 dropped connection"),
        SENT,
        "every record sent before the drop is delivered"
    );
    assert!(
        body.is_end_stream(),
        "the body ends after the upstream error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstream_resetting_the_stream_mid_stream_is_a_body_error_not_a_deadline() {
    const SENT: usize = 5;
    let (addr, mut served) = serve_script(Script::records(SENT, Then::Fail)).await;
    let mut svc = wrapped(Proto::Http2, LONG);
    let start = Instant::now();
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(get(addr, "/"))
        .await
        .expect("the head arrives");
    let _ = next_request(&mut served).await;
    let mut body = response.into_body();
    let read = read_body(&mut body, SIGNAL_WAIT, "http2 reset stream").await;

    let err = read.end.as_ref().expect_err("a reset stream is an error");
    eprintln!("upstream error, as the caller sees it: {err:?}");
    assert!(
        start.elapsed() < LONG,
        "the error came from upstream, not the budget"
    );
    assert!(
        DeadlineExceeded::find(&**err).is_none(),
        "not a deadline: {err:?}"
    );
    assert!(
        err.downcast_ref::<hyper::Error>().is_some(),
        "expected hyper's own error, untouched, got {err:?}"
    );
    // h2 may discard DATA still queued when the server resets the stream, so only order and
    // wholeness are certain, not the count.
    let delivered = assert_whole_records_in_order(&read.frames, "http2 reset stream");
    assert!(delivered <= SENT, "no more than was sent");
    assert!(
        body.is_end_stream(),
        "the body ends after the upstream error"
    );
}
