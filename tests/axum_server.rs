//! `StreamDeadlineLayer` behind an axum `Router`, served by `axum::serve` on 127.0.0.1 and
//! called by a plain hyper_util legacy client over HTTP/1.1 and h2c.
//!
//! # Wiring it in axum 0.8
//!
//! The `StreamDeadline` service fails with a `BoxError` (a `DeadlineExceeded` before the
//! head), and its response is `http::Response<DeadlineBody<axum::body::Body>>`. axum needs
//! an infallible service whose response is `IntoResponse`, so one extra layer does it,
//! `HandleErrorLayer`, outermost, with any `async fn(BoxError) -> impl IntoResponse` (the
//! tests below use a variant returning a plain `http::Response<String>`):
//!
//! ```ignore
//! use axum::{Router, error_handling::HandleErrorLayer, http::StatusCode, routing::get};
//! use tower::ServiceBuilder;
//! use tower_stream_deadline::{BoxError, DeadlineExceeded, StreamDeadlineLayer};
//!
//! async fn deadline_to_504(err: BoxError) -> (StatusCode, String) {
//!     match DeadlineExceeded::find(&*err) {
//!         Some(deadline) => (StatusCode::GATEWAY_TIMEOUT, deadline.to_string()),
//!         None => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
//!     }
//! }
//!
//! let app = Router::new()
//!     .route("/v1/chat/completions", get(handler))
//!     .layer(
//!         ServiceBuilder::new()
//!             // outermost: turns the call's error (a deadline before the head) into a 504
//!             .layer(HandleErrorLayer::new(deadline_to_504))
//!             .layer(StreamDeadlineLayer::new(Duration::from_secs(45))),
//!     );
//! ```
//!
//! No body mapping layer is needed: axum implements `IntoResponse` for any
//! `http::Response<B>` with `B: Body<Data = Bytes> + Send + 'static` and
//! `B::Error: Into<BoxError>`, which `DeadlineBody<axum::body::Body>` is (`HandleError`
//! boxes it into `axum::body::Body` itself). `Router::layer` applies it to every route
//! (and the fallback); `Router::route_layer` to the matched routes only.
//!
//! What the client sees:
//! - a deadline **before the head**: the `504 Gateway Timeout` from `deadline_to_504`, and
//!   the handler's future is dropped (the work is cancelled);
//! - a deadline **after the head**: the status (200) is already sent, so the response body
//!   is cut: hyper closes the HTTP/1 connection before the final chunk, or resets the HTTP/2
//!   stream, and the client's body ends with an error after the frames sent before the
//!   deadline. The handler's stream is dropped at the deadline.

#[path = "support/sockets.rs"]
mod sockets;

use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing;
use http_body_util::BodyExt;
use sockets::*;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_stream_deadline::{BoxError, DeadlineExceeded, StreamDeadlineLayer};

const BUDGET: Duration = Duration::from_millis(300);

/// Maps the `StreamDeadline` error to a response: a deadline (found anywhere in the source
/// chain) is `504 Gateway Timeout` with the deadline's message; anything else is a bare 500.
///
/// Plain `http` types, no axum: `HandleErrorLayer` takes any `async fn(E) -> impl
/// IntoResponse`, and axum's `IntoResponse` covers `http::Response<String>`. A user's
/// application would carry the same function.
async fn deadline_to_504(err: BoxError) -> http::Response<String> {
    let (status, message) = match DeadlineExceeded::find(&*err) {
        Some(deadline) => (StatusCode::GATEWAY_TIMEOUT, deadline.to_string()),
        None => (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
    };
    let mut response = http::Response::new(message);
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().unwrap(),
    );
    response
}

/// Each handler reports, through this channel, when its work (future or stream) is dropped.
#[derive(Clone)]
struct Handlers {
    released: mpsc::UnboundedSender<Release>,
}

/// Never produces a head.
async fn late_head(State(handlers): State<Handlers>) -> Response {
    let (never, release) = never_answers::<Response>();
    let _ = handlers.released.send(release);
    never.await
}

/// Answers at once with an endless stream of records, one every few milliseconds.
async fn babble(State(handlers): State<Handlers>) -> Response {
    let (body, release) = scripted(Script::babbling());
    let _ = handlers.released.send(release);
    Response::builder()
        .header(http::header::CONTENT_TYPE, "text/event-stream")
        .body(axum::body::Body::new(body))
        .expect("a valid response")
}

/// The app as documented at the top, served on 127.0.0.1.
async fn serve_app(budget: Duration) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Release>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route("/late-head", routing::get(late_head))
        .route("/babble", routing::get(babble))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(deadline_to_504))
                .layer(StreamDeadlineLayer::new(budget)),
        )
        .with_state(Handlers { released: tx });
    let (listener, addr) = listener().await;
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, rx)
}

/// Bounds on the server-side deadline, which starts when the layer's `call` is made on the
/// server: no earlier than `client_start + BUDGET` (the request was sent after
/// `client_start`), and no later than `handler.started + BUDGET` (the handler runs inside
/// that `call`). Checking "not before" against the first and "at most 100 ms after" against
/// the second keeps connection setup and request delivery, which can take tens of
/// milliseconds on a loaded machine, out of the measurement.
fn server_deadline(client_start: Instant, handler: &Release) -> Window {
    Window {
        earliest: client_start + BUDGET,
        latest: handler.started + BUDGET,
    }
}

async fn deadline_before_the_head_is_a_504(proto: Proto) {
    let what = format!("{proto:?} late head");
    let (addr, mut handlers) = serve_app(BUDGET).await;
    let mut client = client(proto);
    let client = client.ready().await.unwrap();
    let start = Instant::now();
    let response = within(
        &what,
        BUDGET + SIGNAL_WAIT,
        client.call(get(addr, "/late-head")),
    )
    .await
    .expect("the server answers");
    let answered_at = Instant::now();
    let handler = next_request(&mut handlers).await;
    let deadline = server_deadline(start, &handler);

    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT, "{what}");
    assert_near_deadline(answered_at, deadline, &format!("{what}: the 504"));
    let message = within(&what, SIGNAL_WAIT, response.into_body().collect())
        .await
        .expect("the 504 has a whole body")
        .to_bytes();
    let message = String::from_utf8_lossy(&message);
    eprintln!("{what}: the 504 says: {message}");
    assert!(
        message.starts_with("stream deadline exceeded: total budget of 300ms"),
        "{what}: the 504 says which budget ran out: {message:?}"
    );

    let cancelled = handler.observed(&what).await;
    assert_released_in_time(
        cancelled,
        deadline,
        &format!("{what}: handler cancelled ({message})"),
    );
}

async fn deadline_after_the_head_cuts_the_body(proto: Proto) {
    let what = format!("{proto:?} babbling handler");
    let (addr, mut handlers) = serve_app(BUDGET).await;
    let mut client = client(proto);
    let client = client.ready().await.unwrap();
    let start = Instant::now();
    let response = within(&what, SIGNAL_WAIT, client.call(get(addr, "/babble")))
        .await
        .expect("the head arrives at once");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{what}: the head went out before the deadline"
    );
    let handler = next_request(&mut handlers).await;
    let deadline = server_deadline(start, &handler);

    let mut body = response.into_body();
    let read = read_body(&mut body, BUDGET + SIGNAL_WAIT, &what).await;

    let err = read
        .end
        .as_ref()
        .expect_err("the client must see the cut stream as an error, not a clean end");
    eprintln!("{what}: the client's body error: {err:?}");
    assert!(
        read.ended_at >= deadline.earliest,
        "{what}: cut before the deadline"
    );
    let received = assert_whole_records_in_order(&read.frames, &what);
    assert!(
        received >= 5,
        "{what}: only {received} records before the deadline"
    );
    assert!(
        received <= handler.produced(),
        "{what}: {received} records received but only {} produced",
        handler.produced()
    );

    let released = handler.observed(&what).await;
    assert_released_in_time(released, deadline, &format!("{what}: stream dropped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_deadline_before_the_head_reaches_the_client_as_504_gateway_timeout() {
    deadline_before_the_head_is_a_504(Proto::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_deadline_before_the_head_reaches_the_client_as_504_gateway_timeout() {
    deadline_before_the_head_is_a_504(Proto::Http2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_deadline_after_the_head_ends_the_clients_body_early_with_an_error_after_the_frames_sent_before_it()
 {
    deadline_after_the_head_cuts_the_body(Proto::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_deadline_after_the_head_ends_the_clients_body_early_with_an_error_after_the_frames_sent_before_it()
 {
    deadline_after_the_head_cuts_the_body(Proto::Http2).await;
}
