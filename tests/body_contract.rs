//! What passes through untouched, what ends the body, and inputs at the extremes.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_stream_deadline::{
    BoxError, DeadlineExceeded, DeadlineKind, StreamDeadline, StreamDeadlineLayer,
};

use support::{MS, Step, Upstream, UpstreamError, assert_fired, call, deadline_of, drain};

const SEC: Duration = Duration::from_secs(1);

fn full(
    data: &'static str,
) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(move |_req: Request<()>| async move {
        Ok(Response::new(Full::new(Bytes::from(data))))
    })
}

#[tokio::test(start_paused = true)]
async fn size_hint_and_is_end_stream_pass_through() {
    for layer in [
        StreamDeadlineLayer::new(SEC),
        StreamDeadlineLayer::new(SEC).first_frame(100 * MS),
    ] {
        let mut svc = layer.layer(full("hello"));
        let body = call(&mut svc).await.unwrap().into_body();
        assert_eq!(body.size_hint().exact(), Some(5), "{body:?}");
        assert!(!body.is_end_stream());

        let mut body = body;
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "hello"
        );
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.frame().await.is_none());
    }
}

#[tokio::test(start_paused = true)]
async fn trailers_pass_through() {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let upstream = Upstream::new(
        Duration::ZERO,
        [Step::Data("a"), Step::Trailers(trailers.clone())],
    );
    let mut svc = StreamDeadlineLayer::new(SEC)
        .idle(SEC)
        .layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert!(drained.error.is_none());
    assert_eq!(drained.trailers, Some(trailers));
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_finishes_in_time_is_byte_identical_with_and_without_the_layer() {
    let steps: Vec<Step> = (0..100)
        .flat_map(|i| {
            [
                Step::After(MS * (i % 7)),
                Step::Data(["alpha ", "", "βeta ", "\u{0}"][i as usize % 4]),
            ]
        })
        .collect();
    let upstream = Upstream::new(5 * MS, steps);

    let mut bare = upstream.service();
    let bare = bare
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    let bare = bare.into_body().collect().await.unwrap().to_bytes();

    let layer = StreamDeadlineLayer::new(SEC).first_frame(SEC).idle(SEC);
    let mut svc = layer.layer(upstream.service());
    let wrapped = call(&mut svc)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();

    assert_eq!(wrapped, bare);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_body_error_passes_through_unrelabelled_and_ends_the_body() {
    let upstream = Upstream::new(
        Duration::ZERO,
        [Step::Data("a"), Step::Fail("reset"), Step::Data("b")],
    );
    let mut svc = StreamDeadlineLayer::new(SEC).layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert_eq!(drained.text(), "a");
    let err = drained.error.expect("the upstream error");
    assert_eq!(
        err.downcast_ref::<UpstreamError>(),
        Some(&UpstreamError("reset"))
    );
    assert!(DeadlineExceeded::find(&*err).is_none());
}

#[tokio::test(start_paused = true)]
async fn an_upstream_error_before_the_first_frame_fails_the_call_unrelabelled() {
    let upstream = Upstream::new(Duration::ZERO, [Step::Fail("reset")]);
    let mut svc = StreamDeadlineLayer::new(SEC)
        .first_frame(100 * MS)
        .layer(upstream.service());

    let err = call(&mut svc).await.unwrap_err();

    assert_eq!(
        err.downcast_ref::<UpstreamError>(),
        Some(&UpstreamError("reset"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_service_error_passes_through_unrelabelled() {
    let failing = tower::service_fn(|_req: Request<()>| async {
        Err::<Response<Full<Bytes>>, _>(UpstreamError("connection refused"))
    });
    let mut svc = StreamDeadlineLayer::new(SEC).layer(failing);

    let err = call(&mut svc).await.unwrap_err();

    assert_eq!(
        err.downcast_ref::<UpstreamError>(),
        Some(&UpstreamError("connection refused"))
    );
}

/// A service that is not ready until told, then fails readiness.
#[derive(Clone)]
struct Gate {
    ready: Poll<Result<(), UpstreamError>>,
}

impl Service<Request<()>> for Gate {
    type Response = Response<Full<Bytes>>;
    type Error = UpstreamError;
    type Future = std::future::Ready<Result<Self::Response, UpstreamError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        self.ready.clone()
    }

    fn call(&mut self, _req: Request<()>) -> Self::Future {
        std::future::ready(Ok(Response::new(Full::default())))
    }
}

#[test]
fn poll_ready_passes_through() {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut pending = StreamDeadlineLayer::new(SEC).layer(Gate {
        ready: Poll::Pending,
    });
    assert!(pending.poll_ready(&mut cx).is_pending());

    let mut failing = StreamDeadlineLayer::new(SEC).layer(Gate {
        ready: Poll::Ready(Err(UpstreamError("overloaded"))),
    });
    let Poll::Ready(Err(err)) = failing.poll_ready(&mut cx) else {
        panic!("expected the readiness error")
    };
    assert_eq!(
        err.downcast_ref::<UpstreamError>(),
        Some(&UpstreamError("overloaded"))
    );
}

#[test]
fn layer_and_service_are_clone() {
    let layer = StreamDeadlineLayer::new(SEC).first_frame(MS).idle(MS);
    let svc: StreamDeadline<Gate> = layer.clone().layer(Gate {
        ready: Poll::Ready(Ok(())),
    });
    let _twin = svc.clone();
}

#[tokio::test(start_paused = true)]
async fn a_zero_budget_delivers_nothing_and_fails_with_kind_total() {
    for layer in [
        StreamDeadlineLayer::new(Duration::ZERO),
        StreamDeadlineLayer::new(Duration::ZERO)
            .first_frame(Duration::ZERO)
            .idle(Duration::ZERO),
    ] {
        let mut svc = layer.layer(full("never"));
        let result = call(&mut svc).await;
        let deadline = deadline_of(&result);
        assert_eq!(
            (deadline.kind(), deadline.budget()),
            (DeadlineKind::Total, Duration::ZERO)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn zero_first_frame_and_idle_budgets_fail_at_once_with_their_kinds() {
    let upstream = Upstream::new(
        Duration::ZERO,
        [Step::Data("a"), Step::After(MS), Step::Data("b")],
    );
    let mut svc = StreamDeadlineLayer::new(SEC)
        .first_frame(Duration::ZERO)
        .layer(upstream.service());
    assert_eq!(
        deadline_of(&call(&mut svc).await).kind(),
        DeadlineKind::FirstFrame
    );

    let mut svc = StreamDeadlineLayer::new(SEC)
        .idle(Duration::ZERO)
        .layer(upstream.service());
    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;
    assert_eq!(
        drained.text(),
        "a",
        "a frame already waiting is taken without waiting"
    );
    assert_eq!(drained.deadline().kind(), DeadlineKind::Idle);
}

#[tokio::test(start_paused = true)]
async fn a_max_budget_is_no_deadline_and_never_overflows() {
    let upstream = Upstream::new(
        Duration::from_secs(3600),
        [
            Step::Data("a"),
            Step::After(Duration::from_secs(86_400)),
            Step::Data("b"),
        ],
    );
    let layer = StreamDeadlineLayer::new(Duration::MAX)
        .first_frame(Duration::MAX)
        .idle(Duration::MAX);
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert!(drained.error.is_none());
    assert_eq!(drained.text(), "ab");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_stream_under_a_max_budget_only_waits_on_its_upstream() {
    let upstream = Upstream::new(Duration::ZERO, [Step::Stall]);
    let mut svc = StreamDeadlineLayer::new(Duration::MAX).layer(upstream.service());
    let mut body = call(&mut svc).await.unwrap().into_body();

    let waited = tokio::time::timeout(Duration::from_secs(365 * 86_400), body.frame()).await;
    assert!(waited.is_err(), "no deadline fired in a year");
}

#[tokio::test(start_paused = true)]
async fn polling_after_the_end_or_the_error_returns_none() {
    let mut svc = StreamDeadlineLayer::new(SEC).layer(full("x"));
    let mut body = call(&mut svc).await.unwrap().into_body();
    assert!(body.frame().await.unwrap().is_ok());
    for _ in 0..3 {
        assert!(body.frame().await.is_none());
    }

    let upstream = Upstream::new(Duration::ZERO, [Step::Stall]);
    let mut svc = StreamDeadlineLayer::new(SEC).layer(upstream.service());
    let mut body = call(&mut svc).await.unwrap().into_body();
    assert!(body.frame().await.unwrap().is_err());
    for _ in 0..3 {
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
    }
}

#[tokio::test(start_paused = true)]
async fn a_response_future_polled_after_it_completed_errs_instead_of_panicking() {
    let mut svc = StreamDeadlineLayer::new(SEC).layer(full("x"));
    let mut future = pin!(svc.ready().await.unwrap().call(Request::new(())));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(_))));
    let Poll::Ready(Err(err)) = future.as_mut().poll(&mut cx) else {
        panic!("expected an error on the second poll")
    };
    assert!(
        err.to_string().contains("polled after it completed"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_error_is_a_boxed_deadline_exceeded_found_by_downcast_ref() {
    let upstream = Upstream::new(Duration::ZERO, [Step::Stall]);
    let mut svc = StreamDeadlineLayer::new(SEC).layer(upstream.service());
    let mut body = call(&mut svc).await.unwrap().into_body();

    let err: BoxError = body.frame().await.unwrap().unwrap_err();

    let deadline = err
        .downcast_ref::<DeadlineExceeded>()
        .expect("a DeadlineExceeded");
    assert_fired(deadline, DeadlineKind::Total, SEC);
    assert_eq!(DeadlineExceeded::find(&*err), Some(deadline));
    assert_eq!(err.to_string(), deadline.to_string());
}
