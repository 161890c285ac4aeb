//! The upstream every contender relays: a hyper HTTP/1.1 server on 127.0.0.1 in the bench's
//! own process, cheap enough to share a core with the load generator.
//!
//! - `GET /burst`: server-sent events back to back, for as long as the client reads (the
//!   body is always ready, so hyper writes as many events per `writev` as its buffer takes);
//! - `GET /paced`: one event every 20 ms, for as long as the client reads;
//! - `GET /short`: a 200-byte JSON answer with a `content-length`.
//!
//! Every event is 200 bytes (about an OpenAI chat chunk with one word of content):
//! `data: <nanoseconds since the epoch at its write, 20 wide> <padding>\n\n`. `/burst`
//! repeats one event written at 0, since nothing times it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body::{Body, Frame};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Bytes in one event, both newlines included.
pub const EVENT_LEN: usize = 200;
/// The pace of `/paced`.
pub const PACE: Duration = Duration::from_millis(20);

/// Upstream connections still open: a run waits for 0 before the next one starts, so
/// that the previous contender's teardown does not load the next contender's run.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// The instant every timestamp counts from (the upstream and the clients share it).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Connections to the upstream that are still open.
pub fn open_connections() -> usize {
    OPEN.load(Relaxed)
}

/// Starts the upstream; its address.
pub async fn serve() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            OPEN.fetch_add(1, Relaxed);
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    Ok::<_, Infallible>(answer(request.uri().path()))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                OPEN.fetch_sub(1, Relaxed);
            });
        }
    });
    Ok(addr)
}

fn answer(path: &str) -> Response<Either<Events, Full<Bytes>>> {
    let (body, content_type) = match path {
        "/burst" => (Either::Left(Events::Burst), "text/event-stream"),
        "/paced" => {
            let mut tick = tokio::time::interval(PACE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            (Either::Left(Events::Paced(tick)), "text/event-stream")
        }
        _ => (Either::Right(Full::new(short_answer())), "application/json"),
    };
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An endless event stream.
pub enum Events {
    /// Always ready: the same event again.
    Burst,
    /// An event with its write instant at every tick.
    Paced(tokio::time::Interval),
}

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let event = match self.get_mut() {
            Events::Burst => burst_event(),
            Events::Paced(tick) => {
                ready!(tick.poll_tick(cx));
                event(now_ns())
            }
        };
        Poll::Ready(Some(Ok(Frame::data(event))))
    }
}

fn event(written_ns: u64) -> Bytes {
    let event = format!("data: {written_ns:>20} {:>171}\n\n", "");
    debug_assert_eq!(event.len(), EVENT_LEN);
    Bytes::from(event)
}

fn burst_event() -> Bytes {
    static EVENT: OnceLock<Bytes> = OnceLock::new();
    EVENT.get_or_init(|| event(0)).clone()
}

fn short_answer() -> Bytes {
    static ANSWER: OnceLock<Bytes> = OnceLock::new();
    ANSWER
        .get_or_init(|| {
            let answer = format!(r#"{{"object":"list","data":[],"padding":"{:>160}"}}"#, "");
            debug_assert_eq!(answer.len(), 200);
            Bytes::from(answer)
        })
        .clone()
}
