//! What an HTTP/2 peer sees when the layer, on a server, cuts a late stream: a reset with
//! reason CANCEL (with the `h2` feature), not INTERNAL_ERROR.
#![cfg(feature = "h2")]

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_stream_deadline::StreamDeadlineLayer;

/// Finds the HTTP/2 reason in an error's source chain.
fn h2_reason(err: &(dyn std::error::Error + 'static)) -> Option<h2::Reason> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason();
        }
        next = err.source();
    }
    None
}

#[tokio::test]
async fn an_http2_client_sees_its_stream_cancelled_not_an_internal_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let endless = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        let frames = futures::stream::repeat_with(|| {
            Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(b"tok ")))
        })
        .then(|frame| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            frame
        });
        Ok::<_, Infallible>(http::Response::new(StreamBody::new(Box::pin(frames))))
    });
    let svc = ServiceBuilder::new()
        .layer(StreamDeadlineLayer::new(Duration::from_millis(200)))
        .service(endless);
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
            .await
    });

    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    let response = client
        .get(format!("http://{addr}/").parse().unwrap())
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut frames = 0;
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(5), body.frame()).await {
            Err(_) => panic!("the stream was not cut within 5 s"),
            Ok(None) => panic!("the stream ended cleanly; expected a reset"),
            Ok(Some(Ok(_))) => frames += 1,
            Ok(Some(Err(err))) => break err,
        }
    };

    assert!(frames > 0, "frames before the deadline arrive");
    assert_eq!(h2_reason(&err), Some(h2::Reason::CANCEL), "{err:?}");
    server.abort();
}
