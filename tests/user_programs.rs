//! Ordinary user programs, compiled and run as they are written: a spawned `oneshot` through
//! a `service_fn` whose future is an `async move` block, a hyper server whose connection
//! task serves a layered `service_fn`, and a body that is not `Send`.
//!
//! These shapes are everywhere (tests, small servers, most examples on the internet), and
//! they are the ones the compiler cannot see through: a bound on the layer's service or its
//! body (`Send + 'static` for a task of its own, say) makes rustc try to prove it for the
//! user's `async` blocks inside a higher-ranked context, and it fails with "higher-ranked
//! lifetime error ... could not prove `{async block}: Send`", an error that names the user's
//! code. The default layer must add no such bound; only `.release_unpolled()`, which spawns,
//! may, and the last test shows a program using it the way its docs say.
//!
//! Each program also runs, on tokio's paused clock or real sockets on 127.0.0.1, and asserts
//! what it received.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_stream_deadline::{DeadlineExceeded, DeadlineKind, StreamDeadlineLayer};

type Tokens = StreamBody<Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>>;

/// A model that babbles: one token every 100 ms, forever.
fn tokens() -> Tokens {
    let ticks = futures::stream::unfold(0u32, |n| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok(Frame::data(Bytes::from(format!("token {n}\n")))), n + 1))
    });
    StreamBody::new(Box::pin(ticks))
}

#[tokio::test(start_paused = true)]
async fn a_spawned_oneshot_through_a_service_fn_with_an_async_block_compiles_and_is_cut() {
    let svc = ServiceBuilder::new()
        .layer(StreamDeadlineLayer::new(Duration::from_secs(1)))
        .service(service_fn(|_req: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(tokens()))
        }));

    let task = tokio::spawn(async move {
        let mut body = svc.oneshot(Request::new(())).await.unwrap().into_body();
        let mut received = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => received.push(frame.into_data().unwrap()),
                Err(err) => return (received, DeadlineExceeded::find(&*err).map(|d| d.kind())),
            }
        }
        (received, None)
    });

    let (received, ending) = task.await.unwrap();
    // Tokens at 100, 200, ..., 900 ms; the one at 1 s meets the deadline and is not delivered.
    let expected: Vec<Bytes> = (0..9).map(|n| format!("token {n}\n").into()).collect();
    assert_eq!(received, expected);
    assert_eq!(ending, Some(DeadlineKind::Total));
}

/// A hyper server: one spawned task per connection, serving a layered `service_fn` whose
/// response body is a stream built with `.then(|b| async move ..)` and boxed.
#[tokio::test]
async fn a_hyper_server_connection_task_over_a_layered_service_fn_compiles_and_serves() {
    let svc = ServiceBuilder::new()
        .layer(
            StreamDeadlineLayer::new(Duration::from_secs(30))
                .first_frame(Duration::from_secs(10))
                .idle(Duration::from_secs(10)),
        )
        .service(service_fn(
            |req: Request<hyper::body::Incoming>| async move {
                let name = req.uri().path().trim_start_matches('/').to_owned();
                let words = ["hello", ", ", "world"].map(String::from);
                let words = futures::stream::iter(words).then(move |word| {
                    let name = name.clone();
                    async move {
                        tokio::task::yield_now().await;
                        Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{word}@{name} "))))
                    }
                });
                Ok::<_, Infallible>(Response::new(StreamBody::new(words.boxed())))
            },
        ));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = svc.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| svc.clone().oneshot(req));
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
            });
        }
    });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = Request::get(format!("http://{addr}/gpu"))
        .body(Empty::new())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
        .await
        .expect("the server answers within 5 s")
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .expect("the body ends within 5 s")
        .unwrap()
        .to_bytes();
    assert_eq!(text, "hello@gpu , @gpu world@gpu ");
    server.abort();
}

/// The same spawned program with `.release_unpolled()`, as its docs show it: the watcher
/// task holds the body, so that layer needs `Send + 'static` bodies, which rustc cannot
/// prove inside a spawned task for a body type with a lifetime (here `dyn Stream + Send +
/// 'static`) or an `async` block in it; boxed where it is made, the body is a plain
/// `UnsyncBoxBody`, and the program compiles and is cut alike.
#[tokio::test(start_paused = true)]
async fn the_same_program_with_release_unpolled_and_a_boxed_body_compiles_and_is_cut() {
    let svc = ServiceBuilder::new()
        .layer(StreamDeadlineLayer::new(Duration::from_secs(1)).release_unpolled())
        .service(service_fn(|_req: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(tokens().boxed_unsync()))
        }));

    let task = tokio::spawn(async move {
        let mut body = svc.oneshot(Request::new(())).await.unwrap().into_body();
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(_) => frames += 1,
                Err(err) => return (frames, DeadlineExceeded::find(&*err).map(|d| d.kind())),
            }
        }
        (frames, None)
    });

    assert_eq!(task.await.unwrap(), (9, Some(DeadlineKind::Total)));
}

/// A body that is not `Send` (it holds an `Rc`), on a current-thread runtime: the default
/// layer wraps it, as it wraps any `Body`.
#[tokio::test(start_paused = true)]
async fn a_body_that_is_not_send_is_wrapped_by_the_default_layer() {
    let shared = std::rc::Rc::new(String::from("local"));
    let svc = ServiceBuilder::new()
        .layer(StreamDeadlineLayer::new(Duration::from_secs(1)))
        .service(service_fn(move |_req: Request<()>| {
            let shared = shared.clone();
            async move {
                let words = futures::stream::iter([0, 1]).map(move |n| {
                    Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{shared} {n}\n"))))
                });
                Ok::<_, Infallible>(Response::new(StreamBody::new(words)))
            }
        }));

    let body = svc.oneshot(Request::new(())).await.unwrap().into_body();
    let text = body.collect().await.unwrap().to_bytes();
    assert_eq!(text, "local 0\nlocal 1\n");
}
