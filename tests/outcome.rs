//! Every response reports one `Outcome` through the layer's callback.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_stream_deadline::{DeadlineKind, Ending, Outcome, StreamDeadlineLayer};

use support::{MS, Step, Upstream, call, drain};

const SEC: Duration = Duration::from_secs(1);

/// A layer whose outcomes land in a shared list.
fn recording(layer: StreamDeadlineLayer) -> (StreamDeadlineLayer, Arc<Mutex<Vec<Outcome>>>) {
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let sink = outcomes.clone();
    (
        layer.on_outcome(move |o| sink.lock().unwrap().push(o.clone())),
        outcomes,
    )
}

fn only(outcomes: &Arc<Mutex<Vec<Outcome>>>) -> Outcome {
    let all = outcomes.lock().unwrap();
    assert_eq!(all.len(), 1, "exactly one outcome per response: {all:#?}");
    all[0].clone()
}

#[tokio::test(start_paused = true)]
async fn a_completed_stream_reports_its_timings_sizes_and_budget_shares() {
    let (layer, outcomes) = recording(
        StreamDeadlineLayer::new(10 * SEC)
            .first_frame(SEC)
            .idle(SEC),
    );
    let upstream = Upstream::new(
        100 * MS,
        [
            Step::After(200 * MS),
            Step::Data("hello"),
            Step::After(500 * MS),
            Step::Data(" world"),
            Step::After(200 * MS),
        ],
    );
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    assert!(
        outcomes.lock().unwrap().is_empty(),
        "nothing is reported before the end"
    );
    assert!(drain(&mut body).await.error.is_none());

    let o = only(&outcomes);
    assert_eq!(o.ending, Ending::Completed);
    assert_eq!(o.time_to_head, Some(100 * MS));
    assert_eq!(o.time_to_first_frame, Some(300 * MS));
    assert_eq!(o.longest_idle, Some(500 * MS));
    assert_eq!(o.total_time, SEC);
    assert_eq!((o.frames, o.bytes), (2, 11));
    assert_eq!(o.total_used(), Some(0.1));
    assert_eq!(o.first_frame_used(), Some(0.3));
    assert_eq!(o.idle_used(), Some(0.5));
}

#[tokio::test(start_paused = true)]
async fn each_deadline_reports_its_kind() {
    for (layer, steps, kind) in [
        (
            StreamDeadlineLayer::new(SEC),
            vec![Step::Babble { every: 10 * MS }],
            DeadlineKind::Total,
        ),
        (
            StreamDeadlineLayer::new(10 * SEC).first_frame(SEC),
            vec![Step::Stall],
            DeadlineKind::FirstFrame,
        ),
        (
            StreamDeadlineLayer::new(10 * SEC).idle(SEC),
            vec![Step::Data("a"), Step::Stall],
            DeadlineKind::Idle,
        ),
    ] {
        let (layer, outcomes) = recording(layer);
        let mut svc = layer.layer(Upstream::new(Duration::ZERO, steps).service());
        if let Ok(response) = call(&mut svc).await {
            drain(&mut response.into_body()).await;
        }
        let o = only(&outcomes);
        assert_eq!(o.ending, Ending::Deadline(kind));
        assert!(o.total_time >= SEC, "{o:?}");
        if kind == DeadlineKind::Idle {
            assert_eq!(o.longest_idle, Some(SEC), "the wait that ran out counts");
            assert_eq!(o.idle_used(), Some(1.0));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn upstream_errors_report_as_such_before_and_after_the_head() {
    let (layer, outcomes) = recording(StreamDeadlineLayer::new(SEC));
    let mut svc = layer
        .layer(Upstream::new(Duration::ZERO, [Step::Data("a"), Step::Fail("reset")]).service());
    drain(&mut call(&mut svc).await.unwrap().into_body()).await;
    let o = only(&outcomes);
    assert_eq!((o.ending, o.frames), (Ending::UpstreamError, 1));

    let (layer, outcomes) = recording(StreamDeadlineLayer::new(SEC));
    let failing = tower::service_fn(|_req: Request<()>| async {
        Err::<Response<Full<Bytes>>, _>(support::UpstreamError("refused"))
    });
    let mut svc = layer.layer(failing);
    assert!(call(&mut svc).await.is_err());
    assert_eq!(only(&outcomes).ending, Ending::UpstreamError);
}

#[tokio::test(start_paused = true)]
async fn a_body_or_future_dropped_before_the_end_reports_dropped() {
    let (layer, outcomes) = recording(StreamDeadlineLayer::new(10 * SEC));
    let mut svc =
        layer.layer(Upstream::new(Duration::ZERO, [Step::Babble { every: 10 * MS }]).service());
    let mut body = call(&mut svc).await.unwrap().into_body();
    body.frame().await.unwrap().unwrap();
    tokio::time::sleep(SEC).await;
    drop(body);
    let o = only(&outcomes);
    assert_eq!(
        (o.ending, o.frames, o.total_time),
        (Ending::Dropped, 1, SEC)
    );

    let (layer, outcomes) = recording(StreamDeadlineLayer::new(10 * SEC));
    let mut svc = layer.layer(Upstream::new(5 * SEC, []).service());
    let future = svc.ready().await.unwrap().call(Request::new(()));
    assert!(
        tokio::time::timeout(SEC, future).await.is_err(),
        "the caller gives up first"
    );
    let o = only(&outcomes);
    assert_eq!((o.ending, o.time_to_head), (Ending::Dropped, None));
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_stops_at_is_end_stream_reports_completed() {
    let (layer, outcomes) = recording(StreamDeadlineLayer::new(SEC));
    let full = tower::service_fn(|_req: Request<()>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"all"))))
    });
    let mut svc = layer.layer(full);
    let mut body = call(&mut svc).await.unwrap().into_body();
    body.frame().await.unwrap().unwrap();
    assert!(body.is_end_stream());
    drop(body); // as hyper does: it never polls for the end

    assert_eq!(only(&outcomes).ending, Ending::Completed);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_callback_does_not_disturb_the_response() {
    let layer = StreamDeadlineLayer::new(SEC).on_outcome(|_| panic!("the user's bug"));
    let upstream = Upstream::new(Duration::ZERO, [Step::Data("a"), Step::Data("b")]);
    let mut svc = layer.layer(upstream.service());

    let drained = drain(&mut call(&mut svc).await.unwrap().into_body()).await;

    assert!(drained.error.is_none());
    assert_eq!(drained.text(), "ab");
}
