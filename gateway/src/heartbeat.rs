//! Heartbeats for a stream whose answer is slow to begin (`--heartbeat`).
//!
//! Every hop in front of the gateway gives up on a response that sends nothing for a while,
//! knowing nothing of the gateway's budgets: nginx's `proxy_read_timeout` (60 s by default),
//! a cloud load balancer's idle timeout, an SDK's read timeout. A long prompt on a busy model
//! server can take longer than that to its first token. So when a request that asks for a
//! stream has no answer after the interval, the gateway sends the response head itself
//! (`200`, `text/event-stream`) and an SSE comment, one more every interval, while its
//! attempts (retries included) go on behind; then the upstream's stream goes on in the same
//! body. SSE clients skip comments, so they read the upstream's events as if they had come
//! straight.
//!
//! Once the head is out, its status can no longer say what went wrong: an answer that is
//! not an event stream (the gateway's own `504`, an upstream's `429` or `500`) is told as one
//! SSE error event, with its message, which the SDKs raise as an API error.
//!
//! The comments are the gateway's, not frames of the upstream's answer: the deadline layer
//! never sees them, so outcomes, metrics and first-frame latencies count only the upstream's
//! frames.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::{Interval, MissedTickBehavior};

use crate::errors::json_error;
use crate::headers;
use crate::log::RequestLog;

/// What an SSE client skips, and every hop in front sees as bytes.
const COMMENT: &[u8] = b": heartbeat\n\n";

/// How much of an answer that is not a stream is read for its error event.
const ERROR_READ_LIMIT: usize = 64 * 1024;

/// How much of an answer's text an error event quotes, in characters.
const QUOTED: usize = 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What forwarding a request gives: the upstream's response, or the gateway's own answer.
pub type Forwarded<B> = Result<Response<B>, Response<Full<Bytes>>>;

/// Where the forwarding code says, once it has read a request's body and knows its policy,
/// how often heartbeats go to it: only a request that asks for a stream, under a policy
/// with heartbeats, gets them.
#[derive(Clone)]
struct Heartbeats(Arc<watch::Sender<Option<Option<Duration>>>>);

/// Puts into a request's `extensions` the place where [`tell`] says how often its heartbeats
/// go; [`race`] reads it from the receiver.
pub fn ask(extensions: &mut http::Extensions) -> watch::Receiver<Option<Option<Duration>>> {
    let (sender, receiver) = watch::channel(None);
    extensions.insert(Heartbeats(Arc::new(sender)));
    receiver
}

/// Says how often the request whose `extensions` these are gets heartbeats (`None`: none),
/// if a heartbeat waits to know.
pub fn tell(extensions: &http::Extensions, every: Option<Duration>) {
    if let Some(heartbeats) = extensions.get::<Heartbeats>() {
        heartbeats.0.send_replace(Some(every));
    }
}

/// How [`race`] ended.
pub enum Raced<B> {
    /// The answer came before any heartbeat (or the request does not ask for a stream).
    Answered(Forwarded<B>),
    /// The head the gateway sends now; the answer follows in its body.
    Committed(Response<Heartbeat<B>>),
}

/// Runs `forward` until it answers or, for a request that gets heartbeats (as `told` says,
/// once its body is read), until their interval has passed since it began: then the
/// forwarding goes on in a task of its own, whose answer the returned [`Heartbeat`] body
/// waits for, sending a comment every interval.
pub async fn race<B, F>(
    mut forward: Pin<Box<F>>,
    mut told: watch::Receiver<Option<Option<Duration>>>,
    log: Arc<RequestLog>,
) -> Raced<B>
where
    F: Future<Output = Forwarded<B>> + Send + 'static,
    B: Send + 'static,
{
    let started = tokio::time::Instant::now();
    let every = loop {
        let told_now = *told.borrow_and_update();
        match told_now {
            Some(Some(every)) => break every,
            Some(None) => return Raced::Answered(forward.await),
            None => {}
        }
        tokio::select! {
            biased;
            answer = &mut forward => return Raced::Answered(answer),
            changed = told.changed() => if changed.is_err() {
                return Raced::Answered(forward.await);
            },
        }
    };
    tokio::select! {
        biased;
        answer = &mut forward => return Raced::Answered(answer),
        () = tokio::time::sleep_until(started + every) => {}
    }
    // In a task of its own, the forwarding goes on while the client reads slowly (or not
    // at all); dropping the body aborts it, and so releases the upstream.
    Raced::Committed(Heartbeat::respond(tokio::spawn(forward), every, log))
}

/// The body of a response whose head the gateway sent before the answer came: a comment
/// every interval until the answer, then the upstream's stream, or one error event for an
/// answer that is not a stream.
pub struct Heartbeat<B> {
    state: State<B>,
    log: Arc<RequestLog>,
}

enum State<B> {
    Waiting {
        answer: Forwarding<B>,
        ticks: Interval,
    },
    Streaming(Pin<Box<B>>),
    /// An answer that is no stream: read (up to a limit), then told in one error event.
    Telling {
        status: StatusCode,
        body: Pin<Box<Either<B, Full<Bytes>>>>,
        read: BytesMut,
    },
    Done,
}

/// The forwarding task; aborted when dropped.
struct Forwarding<B>(JoinHandle<Forwarded<B>>);

impl<B> Drop for Forwarding<B> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<B> Heartbeat<B> {
    /// The head, whose body sends its first comment at once.
    fn respond(
        answer: JoinHandle<Forwarded<B>>,
        every: Duration,
        log: Arc<RequestLog>,
    ) -> Response<Self> {
        // `interval` takes no zero period; the flag refuses one.
        let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let body = Heartbeat {
            state: State::Waiting {
                answer: Forwarding(answer),
                ticks,
            },
            log,
        };
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // A buffering proxy in front (nginx) would hold the comments back.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        response
    }

    /// What the body becomes once the forwarding task has ended.
    fn answered(&self, joined: Result<Forwarded<B>, JoinError>) -> State<B> {
        let (status, body) = match joined {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                let event_stream = headers::prepare_response(&mut parts.headers);
                if event_stream && parts.status.is_success() {
                    return State::Streaming(Box::pin(body));
                }
                self.log.note(format!(
                    "the upstream answered {} after the heartbeats' head: told in an error event",
                    parts.status
                ));
                (parts.status, Either::Left(body))
            }
            Ok(Err(answer)) => (answer.status(), Either::Right(answer.into_body())),
            Err(err) => {
                self.log
                    .note(format!("forwarding the request failed: {err}"));
                let answer = json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal_error",
                    "the gateway failed to forward the request",
                );
                (answer.status(), Either::Right(answer.into_body()))
            }
        };
        State::Telling {
            status,
            body: Box::pin(body),
            read: BytesMut::new(),
        }
    }
}

impl<B> Body for Heartbeat<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Waiting { answer, ticks } => {
                    if let Poll::Ready(joined) = Pin::new(&mut answer.0).poll(cx) {
                        this.state = this.answered(joined);
                        continue;
                    }
                    ready!(ticks.poll_tick(cx));
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(COMMENT)))));
                }
                State::Streaming(body) => {
                    return body
                        .as_mut()
                        .poll_frame(cx)
                        .map(|frame| frame.map(|frame| frame.map_err(Into::into)));
                }
                State::Telling { status, body, read } => {
                    let read_all = match ready!(body.as_mut().poll_frame(cx)) {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                let room = ERROR_READ_LIMIT.saturating_sub(read.len());
                                read.extend_from_slice(&data[..data.len().min(room)]);
                            }
                            read.len() >= ERROR_READ_LIMIT
                        }
                        // What came before the answer broke off (or ran out of time) says
                        // what there is to say.
                        Some(Err(_)) | None => true,
                    };
                    if read_all {
                        let event = error_event(*status, read);
                        this.state = State::Done;
                        return Poll::Ready(Some(Ok(Frame::data(event))));
                    }
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Streaming(body) => body.is_end_stream(),
            State::Done => true,
            State::Waiting { .. } | State::Telling { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Streaming(body) => body.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

/// The error event that tells an answer of `status` with `body`, which is not a stream: its
/// error's message, type and code when it has OpenAI's or Anthropic's shape (`{"error":
/// {...}}`, as the gateway's own answers) or carries them at its top (vLLM's older errors);
/// its text otherwise.
pub fn error_event(status: StatusCode, body: &[u8]) -> Bytes {
    let json = serde_json::from_slice::<Value>(body).ok();
    let error = json.as_ref().map(|json| match json.get("error") {
        Some(error) if error.is_object() => error,
        _ => json,
    });
    let field = |name: &str| {
        error
            .and_then(|error| error.get(name))
            .and_then(Value::as_str)
    };
    // The event writes its type and code as they are: only plain identifiers are taken.
    let identifier = |text: &&str| {
        !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    let text = String::from_utf8_lossy(body);
    let text: String = text.trim().chars().take(QUOTED).collect();
    let message = match field("message") {
        Some(message) => message.to_owned(),
        None if status.is_success() => {
            format!("the upstream answered {status}, not an event stream")
        }
        None if text.is_empty() => format!("the upstream answered {status}"),
        None => format!("the upstream answered {status}: {text}"),
    };
    let kind = field("type").filter(identifier).unwrap_or("upstream_error");
    let code = field("code").filter(identifier).map_or_else(
        || format!("upstream_status_{}", status.as_u16()),
        str::to_owned,
    );
    Bytes::from(tower_stream_deadline::sse_error_event(
        kind, &code, &message,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::BodyExt;
    use tokio::sync::oneshot;

    fn log() -> Arc<RequestLog> {
        let id = HeaderValue::from_static("id");
        let metrics = Arc::new(crate::metrics::Metrics::new());
        Arc::new(RequestLog::new(
            &http::Method::POST,
            &"/".parse().unwrap(),
            &id,
            metrics,
        ))
    }

    /// A forwarding that never answers, and tells `dropped` when it is dropped.
    async fn stuck(dropped: oneshot::Sender<()>) -> Forwarded<Full<Bytes>> {
        let _guard = dropped;
        std::future::pending().await
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_is_committed_at_the_interval_and_its_forwarding_ends_with_the_body() {
        let every = Duration::from_millis(300);
        let (dropped, forwarding_ended) = oneshot::channel();
        let mut request = http::Request::new(());
        let told = ask(request.extensions_mut());
        tell(request.extensions(), Some(every));
        let started = tokio::time::Instant::now();
        let Raced::Committed(response) = race(Box::pin(stuck(dropped)), told, log()).await else {
            panic!("no heartbeat for a stream");
        };
        assert_eq!(started.elapsed(), every);
        let mut body = response.into_body();
        for k in 0..3 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), COMMENT);
            assert_eq!(started.elapsed(), every * (k + 1));
        }
        // The client leaves: the forwarding, and with it the upstream attempt, ends.
        drop(body);
        forwarding_ended.await.unwrap_err();
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_does_not_ask_for_a_stream_waits_for_its_answer() {
        let mut request = http::Request::new(());
        let told = ask(request.extensions_mut());
        tell(request.extensions(), None);
        let late = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(Response::new(Full::new(Bytes::from_static(b"whole"))))
        };
        let raced = race(Box::pin(late), told, log()).await;
        let Raced::Answered(Ok(response)) = raced else {
            panic!("a heartbeat for a request that does not ask for a stream");
        };
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "whole"
        );
    }

    fn event(status: u16, body: &str) -> Value {
        let event = error_event(StatusCode::from_u16(status).unwrap(), body.as_bytes());
        let event = String::from_utf8(event.to_vec()).unwrap();
        let data = event.strip_prefix("event: error\ndata: ").unwrap();
        serde_json::from_str(data.trim_end()).unwrap()
    }

    #[test]
    fn an_answer_that_is_not_a_stream_is_told_with_its_own_message_type_and_code() {
        let gateways = r#"{"error":{"message":"stream deadline exceeded","type":"timeout","param":null,"code":"deadline_exceeded"}}"#;
        let told = &event(504, gateways)["error"];
        assert_eq!(told["message"], "stream deadline exceeded");
        assert_eq!(
            (told["type"].as_str(), told["code"].as_str()),
            (Some("timeout"), Some("deadline_exceeded"))
        );

        let anthropics =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let told = &event(529, anthropics)["error"];
        assert_eq!(
            (told["type"].as_str(), told["message"].as_str()),
            (Some("overloaded_error"), Some("Overloaded"))
        );
        assert_eq!(told["code"], "upstream_status_529");

        let vllms = r#"{"object":"error","message":"too long","type":"BadRequestError","param":null,"code":400}"#;
        let told = &event(400, vllms)["error"];
        assert_eq!(
            (told["type"].as_str(), told["message"].as_str()),
            (Some("BadRequestError"), Some("too long"))
        );
        assert_eq!(told["code"], "upstream_status_400");
    }

    #[test]
    fn any_other_answer_is_told_with_its_status_and_text() {
        let told = &event(502, "<html>Bad Gateway</html>")["error"];
        assert_eq!(
            told["message"],
            "the upstream answered 502 Bad Gateway: <html>Bad Gateway</html>"
        );
        assert_eq!(told["type"], "upstream_error");
        let told = &event(200, r#"{"choices":[]}"#)["error"];
        assert_eq!(
            told["message"],
            "the upstream answered 200 OK, not an event stream"
        );
        // A type or code that is not a plain identifier is not written into the event.
        let odd = r#"{"error":{"message":"m","type":"a\"b","code":"x y"}}"#;
        let told = &event(500, odd)["error"];
        assert_eq!(
            (told["type"].as_str(), told["code"].as_str()),
            (Some("upstream_error"), Some("upstream_status_500"))
        );
    }
}
