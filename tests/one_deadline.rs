//! One deadline across layers, retries and headers, on tokio's paused clock.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_stream_deadline::{
    BoxError, Deadline, DeadlineKind, RequestBudgets, StreamDeadlineLayer,
};
// The tests of deadlines across retries need `RetryFirstFrame`.
#[cfg(feature = "retry")]
use {tokio::time::Instant, tower::retry::RetryLayer, tower_stream_deadline::RetryFirstFrame};

use support::{MS, Scripted, Step, assert_fired, deadline_of, drain};

const SEC: Duration = Duration::from_secs(1);

/// What the innermost service saw of each request: the deadline's remaining budget and the
/// `grpc-timeout` / `x-timeout` headers.
#[derive(Clone, Debug, Default)]
struct Seen(Arc<Mutex<Vec<SeenRequest>>>);

/// (the `Deadline` extension's remaining budget, `grpc-timeout`, `x-timeout`)
type SeenRequest = (Option<Duration>, Option<String>, Option<String>);

impl Seen {
    fn all(&self) -> Vec<SeenRequest> {
        self.0.lock().unwrap().clone()
    }
}

/// An upstream that records what it saw and plays `steps`.
fn recording(
    steps: Vec<Step>,
) -> (
    impl Service<
        Request<String>,
        Response = Response<Scripted>,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone,
    Seen,
) {
    let seen = Seen::default();
    let record = seen.clone();
    let svc = tower::service_fn(move |req: Request<String>| {
        let header = |name: &str| {
            let value = req.headers().get(name)?;
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        };
        record.0.lock().unwrap().push((
            req.extensions().get::<Deadline>().map(Deadline::remaining),
            header("grpc-timeout"),
            header("x-timeout"),
        ));
        let body = Scripted::new(steps.clone());
        async move { Ok(Response::new(body)) }
    });
    (svc, seen)
}

async fn send<S>(svc: &mut S, req: Request<String>) -> Result<S::Response, BoxError>
where
    S: Service<Request<String>, Error = BoxError>,
{
    svc.ready().await?.call(req).await
}

/// The deadline that ended a call: on the call itself or, if the head came, on its body.
#[cfg(feature = "retry")]
async fn final_deadline<B>(
    result: Result<Response<tower_stream_deadline::DeadlineBody<B>>, BoxError>,
) -> tower_stream_deadline::DeadlineExceeded
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    match result {
        Err(_) => deadline_of(&result).clone(),
        Ok(response) => drain(&mut response.into_body()).await.deadline().clone(),
    }
}

fn request() -> Request<String> {
    Request::new("prompt".to_owned())
}

#[tokio::test(start_paused = true)]
async fn an_inner_layer_takes_the_earlier_of_its_budget_and_the_outer_deadline() {
    let (upstream, seen) = recording(vec![Step::Babble { every: 10 * MS }]);
    let mut svc = ServiceBuilder::new()
        .layer(StreamDeadlineLayer::new(SEC))
        .layer(StreamDeadlineLayer::new(60 * SEC))
        .service(upstream);

    let mut body = send(&mut svc, request()).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert_eq!(
        seen.all()[0].0,
        Some(SEC),
        "the innermost service sees the outer deadline"
    );
    // The inner layer fires first, at the outer deadline, naming the budget that applied.
    assert_fired(drained.deadline(), DeadlineKind::Total, SEC);
}

#[cfg(feature = "retry")]
#[tokio::test(start_paused = true)]
async fn outside_retry_the_layer_bounds_all_attempts_together() {
    let (upstream, seen) = recording(vec![Step::Stall]);
    let mut svc = ServiceBuilder::new()
        .layer(StreamDeadlineLayer::new(3 * SEC))
        .layer(RetryLayer::new(RetryFirstFrame::new(100)))
        .layer(StreamDeadlineLayer::new(60 * SEC).first_frame(SEC))
        .service(upstream);

    let start = Instant::now();
    let result = send(&mut svc, request()).await;

    // The last attempt has no first-frame budget left: the overall deadline comes first.
    assert_eq!(final_deadline(result).await.kind(), DeadlineKind::Total);
    assert_eq!(
        start.elapsed(),
        3 * SEC,
        "three stuck attempts, then the overall budget"
    );
    let budgets: Vec<_> = seen.all().iter().map(|s| s.0.unwrap()).collect();
    assert_eq!(
        budgets,
        [3 * SEC, 2 * SEC, SEC],
        "each attempt had what was left"
    );
}

#[cfg(feature = "retry")]
#[tokio::test(start_paused = true)]
async fn inside_retry_each_attempt_gets_its_own_budgets() {
    let (upstream, seen) = recording(vec![Step::Stall]);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryFirstFrame::new(2)))
        .layer(StreamDeadlineLayer::new(60 * SEC).first_frame(SEC))
        .service(upstream);

    let start = Instant::now();
    let result = send(&mut svc, request()).await;

    assert_fired(deadline_of(&result), DeadlineKind::FirstFrame, SEC);
    assert_eq!(start.elapsed(), 3 * SEC);
    assert!(
        seen.all().iter().all(|s| s.0 == Some(60 * SEC)),
        "{:?}",
        seen.all()
    );
}

#[cfg(feature = "retry")]
#[tokio::test(start_paused = true)]
async fn an_overall_budget_and_a_per_attempt_budget_work_together() {
    let stack = |upstream| {
        ServiceBuilder::new()
            .layer(StreamDeadlineLayer::new(60 * SEC))
            .layer(RetryLayer::new(RetryFirstFrame::new(100)))
            .layer(StreamDeadlineLayer::new(20 * SEC).first_frame(10 * SEC))
            .service(upstream)
    };

    // Stuck every time: attempts at 0, 10, .. 50 s; the overall budget ends the last one.
    let (stuck, seen) = recording(vec![Step::Stall]);
    let start = Instant::now();
    let result = send(&mut stack(stuck), request()).await;
    assert_eq!(final_deadline(result).await.kind(), DeadlineKind::Total);
    assert_eq!(start.elapsed(), 60 * SEC);
    assert_eq!(seen.all().len(), 6);

    // Babbling from the start: the per-attempt total cuts it at 20 s, and it is not retried.
    let (babbler, seen) = recording(vec![Step::Babble { every: 100 * MS }]);
    let mut body = send(&mut stack(babbler), request())
        .await
        .unwrap()
        .into_body();
    assert_fired(
        drain(&mut body).await.deadline(),
        DeadlineKind::Total,
        20 * SEC,
    );
    assert_eq!(seen.all().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn request_budgets_override_the_layer_for_that_request_only() {
    let layer = StreamDeadlineLayer::new(SEC)
        .first_frame(100 * MS)
        .idle(50 * MS);
    let (upstream, seen) = recording(vec![
        Step::After(500 * MS),
        Step::Data("first"),
        Step::After(400 * MS),
        Step::Data("second"),
        Step::After(MS),
    ]);
    let mut svc = layer.layer(upstream);

    let mut req = request();
    req.extensions_mut().insert(
        RequestBudgets::new()
            .total(5 * SEC)
            .first_frame(SEC)
            .idle(450 * MS),
    );
    let mut body = send(&mut svc, req).await.unwrap().into_body();
    let drained = drain(&mut body).await;
    assert!(drained.error.is_none(), "{:?}", drained.error);
    assert_eq!(drained.text(), "firstsecond");
    assert_eq!(seen.all()[0].0, Some(5 * SEC));

    // The next request, without overrides, gets the layer's budgets.
    let result = send(&mut svc, request()).await;
    assert_fired(deadline_of(&result), DeadlineKind::FirstFrame, 100 * MS);

    // Only the idle budget overridden: the others stay the layer's.
    let mut req = request();
    req.extensions_mut()
        .insert(RequestBudgets::new().first_frame(SEC).idle(10 * MS));
    let mut body = send(&mut svc, req).await.unwrap().into_body();
    assert_fired(
        drain(&mut body).await.deadline(),
        DeadlineKind::Idle,
        10 * MS,
    );
}

#[tokio::test(start_paused = true)]
async fn the_inner_service_can_read_how_long_it_has_left() {
    let (upstream, seen) = recording(vec![]);
    let mut svc = StreamDeadlineLayer::new(45 * SEC).layer(upstream);
    send(&mut svc, request()).await.unwrap();
    assert_eq!(seen.all()[0].0, Some(45 * SEC));

    let (upstream, seen) = recording(vec![]);
    let mut svc = StreamDeadlineLayer::new(Duration::MAX).layer(upstream);
    send(&mut svc, request()).await.unwrap();
    assert_eq!(seen.all()[0].0, None, "no deadline, no extension");
}

fn with_header(name: &'static str, value: &'static [u8]) -> Request<String> {
    let mut req = request();
    req.headers_mut()
        .append(name, HeaderValue::from_bytes(value).unwrap());
    req
}

#[tokio::test(start_paused = true)]
async fn a_timeout_header_shortens_the_budget_but_never_lengthens_it() {
    let layer = StreamDeadlineLayer::new(SEC)
        .read_grpc_timeout()
        .read_timeout_header(http::HeaderName::from_static("x-timeout"));
    let (upstream, _) = recording(vec![Step::Stall]);
    let mut svc = layer.layer(upstream);

    for (name, value, budget) in [
        ("grpc-timeout", &b"500m"[..], 500 * MS),
        ("grpc-timeout", b"5S", SEC),
        ("x-timeout", b"250ms", 250 * MS),
        ("x-timeout", b"300", 300 * MS),
        ("x-timeout", b"1h", SEC),
    ] {
        let mut body = send(&mut svc, with_header(name, value))
            .await
            .unwrap()
            .into_body();
        let drained = drain(&mut body).await;
        assert_fired(drained.deadline(), DeadlineKind::Total, budget);
    }
}

#[tokio::test(start_paused = true)]
async fn headers_are_ignored_unless_the_layer_opts_in() {
    let (upstream, _) = recording(vec![Step::Stall]);
    let mut svc = StreamDeadlineLayer::new(SEC).layer(upstream);
    let mut body = send(&mut svc, with_header("grpc-timeout", b"1m"))
        .await
        .unwrap()
        .into_body();
    assert_fired(drain(&mut body).await.deadline(), DeadlineKind::Total, SEC);
}

#[tokio::test(start_paused = true)]
async fn malformed_timeout_headers_are_ignored_and_never_fail_the_request() {
    let layer = StreamDeadlineLayer::new(SEC).read_grpc_timeout();
    let (upstream, _) = recording(vec![Step::Data("served"), Step::Stall]);
    let mut svc = layer.layer(upstream);

    for value in [
        &b"+5S"[..],
        b"-1S",
        b"123456789S",
        b"5",
        b"5X",
        b"",
        b"1.5S",
        b"\xff\xfeS",
        b"99999999999999999999999n",
    ] {
        let mut body = send(&mut svc, with_header("grpc-timeout", value))
            .await
            .unwrap()
            .into_body();
        let drained = drain(&mut body).await;
        assert_eq!(drained.text(), "served", "{value:?}");
        assert_fired(drained.deadline(), DeadlineKind::Total, SEC);
    }

    let mut repeated = with_header("grpc-timeout", b"10m");
    repeated
        .headers_mut()
        .append("grpc-timeout", HeaderValue::from_static("20m"));
    let mut body = send(&mut svc, repeated).await.unwrap().into_body();
    assert_fired(drain(&mut body).await.deadline(), DeadlineKind::Total, SEC);
}

#[tokio::test(start_paused = true)]
async fn the_remaining_budget_is_forwarded_rounded_down_less_the_margin() {
    let layer = StreamDeadlineLayer::new(SEC)
        .read_grpc_timeout()
        .forward_grpc_timeout()
        .forward_timeout_header(http::HeaderName::from_static("x-timeout"))
        .forward_margin(50 * MS);
    let (upstream, seen) = recording(vec![]);
    let mut svc = layer.layer(upstream);

    send(&mut svc, request()).await.unwrap();
    send(&mut svc, with_header("grpc-timeout", b"300m"))
        .await
        .unwrap();
    send(&mut svc, with_header("grpc-timeout", b"20m"))
        .await
        .unwrap();

    let forwarded: Vec<_> = seen
        .all()
        .into_iter()
        .map(|(_, grpc, plain)| (grpc.unwrap(), plain.unwrap()))
        .collect();
    assert_eq!(
        forwarded,
        [
            ("950000u".to_owned(), "950ms".to_owned()),
            ("250000u".to_owned(), "250ms".to_owned()),
            ("0n".to_owned(), "0ms".to_owned()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_axum_handler_reads_how_long_it_has_left() {
    use axum::{Extension, Router, error_handling::HandleErrorLayer, routing::get};

    let app = Router::new()
        .route(
            "/",
            get(|Extension(deadline): Extension<Deadline>| async move {
                tokio::time::sleep(SEC).await;
                format!("{:?}", deadline.remaining())
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: BoxError| async {
                    http::StatusCode::GATEWAY_TIMEOUT
                }))
                .layer(StreamDeadlineLayer::new(45 * SEC)),
        );

    let response = app
        .oneshot(Request::get("/").body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();

    assert_eq!(
        body.to_bytes(),
        "44s",
        "45 s budget, 1 s spent in the handler"
    );
}
