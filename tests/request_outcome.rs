//! A request may carry its own outcome callback: it hears exactly that request's outcomes,
//! one per attempt, after the layer's own callback.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use tower::retry::RetryLayer;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_stream_deadline::{
    DeadlineKind, Ending, OnRequestOutcome, RetryFirstFrame, StreamDeadlineLayer,
};

use support::{MS, Step, Upstream, call_with, drain};

const SEC: Duration = Duration::from_secs(1);

type Heard = Arc<Mutex<Vec<(&'static str, Ending, u64)>>>;

fn tagged(heard: &Heard, tag: &'static str) -> OnRequestOutcome {
    let heard = heard.clone();
    OnRequestOutcome::new(move |o| heard.lock().unwrap().push((tag, o.ending, o.bytes)))
}

#[tokio::test(start_paused = true)]
async fn each_request_hears_its_own_outcome_after_the_layers() {
    let heard: Heard = Arc::default();
    let layer = StreamDeadlineLayer::new(SEC).on_outcome({
        let heard = heard.clone();
        move |o| heard.lock().unwrap().push(("layer", o.ending, o.bytes))
    });
    let short = Upstream::new(10 * MS, [Step::Data("hi")]);
    let babbling = Upstream::new(10 * MS, [Step::Data("tok"), Step::After(2 * SEC)]);
    let mut completed = layer.layer(short.service());
    let mut cut = layer.layer(babbling.service());

    let mut req = Request::new(());
    req.extensions_mut().insert(tagged(&heard, "first"));
    let mut body = call_with(&mut completed, req).await.unwrap().into_body();
    assert!(drain(&mut body).await.error.is_none());

    let mut req = Request::new(());
    req.extensions_mut().insert(tagged(&heard, "second"));
    let mut body = call_with(&mut cut, req).await.unwrap().into_body();
    assert!(drain(&mut body).await.error.is_some());

    let total = Ending::Deadline(DeadlineKind::Total);
    assert_eq!(
        *heard.lock().unwrap(),
        [
            ("layer", Ending::Completed, 2),
            ("first", Ending::Completed, 2),
            ("layer", total, 3),
            ("second", total, 3),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_retried_request_hears_every_attempt() {
    let heard: Heard = Arc::default();
    let stuck = Upstream::new(10 * SEC, [Step::Data("late")]);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryFirstFrame::new(2)))
        .layer(StreamDeadlineLayer::new(10 * SEC).first_frame(SEC))
        .service(stuck.service());

    let mut req = Request::new(());
    req.extensions_mut().insert(tagged(&heard, "stuck"));
    let result = svc.ready().await.unwrap().call(req).await;
    assert!(result.is_err(), "stuck on every attempt");

    let first_frame = Ending::Deadline(DeadlineKind::FirstFrame);
    assert_eq!(stuck.calls(), 3);
    assert_eq!(*heard.lock().unwrap(), [("stuck", first_frame, 0); 3]);
}

/// What a request's callback holds (in a proxy, a log line written when its last reference
/// goes) is released once the callback has run: while the body is still held, and while the
/// watcher of `release_unpolled` may still hold the body's record.
#[tokio::test(start_paused = true)]
async fn a_callback_and_what_it_holds_are_released_once_it_has_run() {
    for release_unpolled in [false, true] {
        let held = Arc::new(());
        let babbling = Upstream::new(10 * MS, [Step::Data("tok"), Step::After(2 * SEC)]);
        let layer = StreamDeadlineLayer::new(SEC);
        let mut req = Request::new(());
        req.extensions_mut().insert(OnRequestOutcome::new({
            let held = held.clone();
            move |_| {
                let _ = &held;
            }
        }));
        let response = match release_unpolled {
            false => call_with(&mut layer.layer(babbling.service()), req).await,
            true => call_with(&mut layer.release_unpolled().layer(babbling.service()), req).await,
        };
        let mut body = response.unwrap().into_body();
        assert_eq!(
            drain(&mut body).await.deadline().kind(),
            DeadlineKind::Total
        );
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "the callback is still held with the body (release_unpolled: {release_unpolled})"
        );
    }
}
