//! What reaches the upstream: every request target goes to the configured upstream,
//! hop-by-hop headers stay behind, and the client's address is added to `x-forwarded-for`.

mod support;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{Gateway, PATIENCE, upstream};

/// Sends `request` as raw bytes on a new connection; what the gateway answers until it
/// closes the connection.
async fn exchange(gateway: &Gateway, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("the gateway answers and closes")
        .expect("reads");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn options_asterisk_reaches_the_configured_upstream_with_its_credentials_over_http1_and_http2()
 {
    let (upstream, counts) = upstream::start().await;
    // No path prefix: the target once became `http://HOST:PORT*`, whose port cannot be read.
    let gateway = Gateway::start(
        &["--upstream", &format!("http://user:s3cret@{upstream}")],
        &[],
    );
    let answer = exchange(
        &gateway,
        b"OPTIONS * HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("upstream *"), "{answer}");

    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let uri = Uri::builder()
        .scheme("http")
        .authority(gateway.addr.to_string())
        .path_and_query("*")
        .build()
        .unwrap();
    let request = Request::builder()
        .method(Method::OPTIONS)
        .uri(uri)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "upstream *");

    assert_eq!(upstream::Counts::get(&counts.requests), 2);
    let basic = Some("Basic dXNlcjpzM2NyZXQ=".to_owned());
    assert_eq!(
        *counts.authorizations.lock().unwrap(),
        [basic.clone(), basic]
    );
}

#[tokio::test]
async fn a_connection_header_with_an_unreadable_byte_still_strips_the_headers_it_names() {
    let (upstream, _) = upstream::start().await;
    let gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);
    let answer = exchange(
        &gateway,
        b"GET /v1/headers HTTP/1.1\r\nhost: gateway\r\n\
          connection: close\r\nconnection: x-secret, x-\xffjunk\r\n\
          x-secret: 1\r\nx-kept: 1\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(body.contains("x-kept\n"), "{body}");
    assert!(
        !body.contains("x-secret"),
        "a header named in Connection went on: {body}"
    );
}

#[tokio::test]
async fn the_client_address_is_added_to_x_forwarded_for_on_every_request_of_a_connection() {
    let (upstream, _) = upstream::answering(|request: Request<hyper::body::Incoming>| async move {
        let seen = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(" | ");
        http::Response::new(http_body_util::Full::new(Bytes::from(seen)))
    })
    .await;
    let gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);
    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    // One connection: its address is written once and goes on every request, after what
    // the client sent, if anything.
    for (sent, expected) in [
        (None, "127.0.0.1"),
        (Some("203.0.113.7"), "203.0.113.7, 127.0.0.1"),
        (None, "127.0.0.1"),
    ] {
        let mut request = Request::get("/v1/who").header("host", "gateway");
        if let Some(sent) = sent {
            request = request.header("x-forwarded-for", sent);
        }
        let request = request.body(Empty::<Bytes>::new()).unwrap();
        let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
            .await
            .expect("answered in time")
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, expected.as_bytes(), "sent {sent:?}");
    }
}
