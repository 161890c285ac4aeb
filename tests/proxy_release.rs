//! A proxy whose downstream client stops reading: the upstream is still released at the
//! deadline.
//!
//! A hyper server on 127.0.0.1 relays an endless upstream stream, fetched through a
//! hyper_util legacy `Client` wrapped in `StreamDeadlineLayer`. The downstream client reads
//! a few KiB and then stops reading without closing:
//! - over HTTP/2 its flow-control window closes, and hyper stops polling the body until the
//!   window opens (it does not poll on a wake-up either): without `release_unpolled` the
//!   upstream is held until the client goes (the control case below); with it, the upstream
//!   sees the disconnect within 100 ms of the deadline.
//! - over HTTP/1.1, with small socket buffers, hyper's write buffer fills and hyper stops
//!   polling; a wake-up from the body's own timer may still get one poll out of it, so this
//!   case passes either way, and is kept as the plain promise.

#[path = "support/sockets.rs"]
mod sockets;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sockets::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_stream_deadline::{BoxError, DeadlineBody, StreamDeadline, StreamDeadlineLayer};

const TOTAL: Duration = Duration::from_millis(500);
/// Socket buffers on the proxy's downstream side, small so back-pressure comes quickly.
const SOCKET_BUFFER: u32 = 8 * 1024;
/// The least hyper allows.
const HYPER_BUFFER: usize = 8 * 1024;
/// What the downstream client reads before it stops.
const READ_BEFORE_STOPPING: usize = 4 * 1024;

/// A hyper proxy on 127.0.0.1 relaying every request to `upstream` through the layered
/// client; its listening socket has small send buffers, inherited by accepted connections.
async fn proxy<R>(upstream: SocketAddr, proto: Proto, layer: StreamDeadlineLayer<R>) -> SocketAddr
where
    R: Clone + Send + Sync + 'static,
    StreamDeadline<TestClient, R>: Service<
            http::Request<Empty<Bytes>>,
            Response = http::Response<DeadlineBody<Incoming>>,
            Error = BoxError,
            Future: Send,
        >,
{
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .set_send_buffer_size(SOCKET_BUFFER)
        .expect("SO_SNDBUF");
    socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("bind 127.0.0.1:0");
    let addr = socket.local_addr().expect("local_addr");
    let listener = socket.listen(64).expect("listen");
    let client = ServiceBuilder::new().layer(layer).service(client(proto));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let client = client.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let client = client.clone();
                    let uri = format!("http://{upstream}{}", req.uri().path());
                    let request = http::Request::get(uri).body(Empty::new()).unwrap();
                    client.oneshot(request)
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // hyper buffers this much of a body before it stops polling it.
                builder.http1().max_buf_size(HYPER_BUFFER);
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A downstream HTTP/2 client whose windows are small (16 KiB) that reads `GET /relay` up to
/// a few KiB, then stops reading and keeps the stream open (the returned body and the
/// connection's sender), and the instant before it connected.
async fn h2_client_that_stops_reading(
    proxy: SocketAddr,
    what: &str,
) -> (
    (
        hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
        Incoming,
    ),
    Instant,
) {
    const WINDOW: u32 = 16 * 1024;
    let connecting = Instant::now();
    let stream = within(what, SIGNAL_WAIT, TcpStream::connect(proxy))
        .await
        .expect("connect to the proxy");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .handshake(TokioIo::new(stream))
        .await
        .expect("an HTTP/2 connection");
    tokio::spawn(connection);
    let request = http::Request::get(format!("http://{proxy}/relay"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = within(what, SIGNAL_WAIT, sender.send_request(request))
        .await
        .expect("a relayed response");
    assert_eq!(response.status(), 200, "{what}");
    let mut body = response.into_body();
    let mut read = 0;
    while read < READ_BEFORE_STOPPING {
        let frame = within(what, SIGNAL_WAIT, body.frame()).await;
        let frame = frame.expect("more of the stream").expect("no error yet");
        read += frame.data_ref().map_or(0, Bytes::len);
    }
    ((sender, body), connecting)
}

/// A downstream HTTP/1.1 client with a small receive buffer that sends `GET /relay`, reads
/// the head and a few KiB of the body, then stops reading and keeps the connection open
/// (the returned stream), and the instant before it connected.
async fn client_that_stops_reading(proxy: SocketAddr, what: &str) -> (TcpStream, Instant) {
    let connecting = Instant::now();
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .set_recv_buffer_size(SOCKET_BUFFER)
        .expect("SO_RCVBUF");
    let mut stream = within(what, SIGNAL_WAIT, socket.connect(proxy))
        .await
        .expect("connect to the proxy");
    stream
        .write_all(b"GET /relay HTTP/1.1\r\nhost: proxy\r\n\r\n")
        .await
        .expect("send the request");
    let mut read = 0;
    let mut buf = [0u8; 1024];
    while read < READ_BEFORE_STOPPING {
        let n = within(what, SIGNAL_WAIT, stream.read(&mut buf))
            .await
            .expect("read from the proxy");
        assert!(n > 0, "{what}: the proxy closed the connection early");
        if read == 0 {
            assert!(
                buf.starts_with(b"HTTP/1.1 200"),
                "{what}: a relayed response, got {:?}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
        read += n;
    }
    (stream, connecting)
}

/// Which HTTP version the downstream client speaks to the proxy.
async fn stopped_client(
    downstream: Proto,
    proxy: SocketAddr,
    what: &str,
) -> (Box<dyn Send + Sync>, Instant) {
    match downstream {
        Proto::Http1 => {
            let (stream, connecting) = client_that_stops_reading(proxy, what).await;
            (Box::new(stream), connecting)
        }
        Proto::Http2 => {
            let (held, connecting) = h2_client_that_stops_reading(proxy, what).await;
            (Box::new(held), connecting)
        }
    }
}

async fn proxy_releases_the_upstream_of_a_client_that_stopped_reading(
    downstream: Proto,
    upstream_proto: Proto,
) {
    let what = format!("proxy, {downstream:?} client stopped reading, {upstream_proto:?} upstream");
    let (upstream, mut served) = serve_bodies(flood).await;
    let layer = StreamDeadlineLayer::new(TOTAL).release_unpolled();
    let proxy = proxy(upstream, upstream_proto, layer).await;

    let (downstream, connecting) = stopped_client(downstream, proxy, &what).await;
    let release = next_request(&mut served).await;
    // The proxy's `call` came after the client connected, and before the upstream made
    // its body.
    let deadline = Window {
        earliest: connecting + TOTAL,
        latest: release.started + TOTAL,
    };
    let released = release.observed(&what).await;
    assert_released_in_time(released, deadline, &what);
    drop(downstream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_upstream_of_a_proxy_whose_http2_client_stopped_reading_sees_the_close_within_100ms_of_the_deadline()
 {
    proxy_releases_the_upstream_of_a_client_that_stopped_reading(Proto::Http2, Proto::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstream_of_a_proxy_whose_http2_client_stopped_reading_sees_the_reset_within_100ms_of_the_deadline()
 {
    proxy_releases_the_upstream_of_a_client_that_stopped_reading(Proto::Http2, Proto::Http2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_upstream_of_a_proxy_whose_http1_client_stopped_reading_sees_the_close_within_100ms_of_the_deadline()
 {
    proxy_releases_the_upstream_of_a_client_that_stopped_reading(Proto::Http1, Proto::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstream_of_a_proxy_whose_http1_client_stopped_reading_sees_the_reset_within_100ms_of_the_deadline()
 {
    proxy_releases_the_upstream_of_a_client_that_stopped_reading(Proto::Http1, Proto::Http2).await;
}

/// The control: without `release_unpolled`, a proxy whose HTTP/2 client stopped reading does
/// not poll the body, so the upstream is still held after the deadline; it is released
/// when the client goes away. (That is what makes the tests above able to fail.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_release_unpolled_a_proxy_whose_http2_client_stopped_reading_holds_the_upstream_until_the_client_goes()
 {
    let what = "proxy without release_unpolled, client stopped reading";
    let (upstream, mut served) = serve_bodies(flood).await;
    let proxy = proxy(upstream, Proto::Http1, StreamDeadlineLayer::new(TOTAL)).await;

    let (downstream, _) = stopped_client(Proto::Http2, proxy, what).await;
    let mut release = next_request(&mut served).await;
    let past_deadline = release.started + TOTAL + 2 * RELEASE_BOUND;
    tokio::time::sleep_until(past_deadline).await;
    assert!(
        !release.is_released(),
        "{what}: released with nobody polling: the proxy was not stalled, so the test proves nothing"
    );
    let produced = release.produced();
    drop(downstream);
    let gone = Instant::now();
    let released = release.observed(what).await;
    eprintln!(
        "{what}: {produced} frames produced; released {:?} after the client went",
        released - gone
    );
}
