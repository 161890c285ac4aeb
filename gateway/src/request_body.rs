//! Request bodies: buffered up to the replay limit (so a retry can send them again), streamed
//! beyond it; in both cases a caller that stops sending is timed out.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// Request bodies up to this size are buffered, and so can be replayed by a retry.
pub const REPLAY_LIMIT: usize = 1024 * 1024;

pub enum RequestBody {
    /// The whole body, which a retry can send again.
    Replayable(Bytes),
    /// Too large (or carrying trailers): what was read so far, then the rest as it comes.
    Streamed(Streamed),
}

/// Why a request body could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Nothing came for this long.
    Idle(Duration),
    Failed(hyper::Error),
}

/// The caller sent no more of its request body for the idle timeout.
#[derive(Debug)]
pub struct BodyIdle(pub Duration);

impl std::fmt::Display for BodyIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no more of the request body came for {:?}", self.0)
    }
}

impl std::error::Error for BodyIdle {}

/// The caller's request body broke off before its end (the client went away, say): the
/// client's doing, not the upstream's.
#[derive(Debug)]
pub struct BodyBroken(pub hyper::Error);

impl std::fmt::Display for BodyBroken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body broke off: {}", self.0)
    }
}

impl std::error::Error for BodyBroken {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

pub async fn read(
    headers: &HeaderMap,
    mut body: Incoming,
    idle: Duration,
) -> Result<RequestBody, ReadError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > REPLAY_LIMIT as u64) {
        return Ok(RequestBody::Streamed(Streamed::new(
            VecDeque::new(),
            body,
            idle,
        )));
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut length = 0;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ReadError::Idle(idle)),
            Ok(None) => break,
            Ok(Some(frame)) => frame.map_err(ReadError::Failed)?,
        };
        match frame.into_data() {
            Ok(data) => {
                length += data.len();
                chunks.push(data);
                if length > REPLAY_LIMIT {
                    let prefix = chunks.into_iter().map(Frame::data).collect();
                    return Ok(RequestBody::Streamed(Streamed::new(prefix, body, idle)));
                }
            }
            Err(trailers) => {
                let mut prefix: VecDeque<_> = chunks.into_iter().map(Frame::data).collect();
                prefix.push_back(trailers);
                return Ok(RequestBody::Streamed(Streamed::new(prefix, body, idle)));
            }
        }
    }
    Ok(RequestBody::Replayable(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut whole = BytesMut::with_capacity(length);
            chunks
                .iter()
                .for_each(|chunk| whole.extend_from_slice(chunk));
            whole.freeze()
        }
    }))
}

pin_project_lite::pin_project! {
    /// The frames already read, then the rest of the caller's body, failing with [`BodyIdle`]
    /// when the caller stops sending and [`BodyBroken`] when its body breaks off.
    pub struct Streamed {
        prefix: VecDeque<Frame<Bytes>>,
        #[pin]
        rest: Incoming,
        // Boxed: the upstream client needs an `Unpin` body.
        timer: Pin<Box<Sleep>>,
        idle: Duration,
        // Whether `timer` is set for the current wait.
        waiting: bool,
    }
}

impl Streamed {
    fn new(prefix: VecDeque<Frame<Bytes>>, rest: Incoming, idle: Duration) -> Self {
        Streamed {
            prefix,
            rest,
            timer: Box::pin(tokio::time::sleep(idle)),
            idle,
            waiting: false,
        }
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if let Some(frame) = this.prefix.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Poll::Ready(frame) = this.rest.poll_frame(cx) {
            *this.waiting = false;
            return Poll::Ready(frame.map(|frame| frame.map_err(|err| BodyBroken(err).into())));
        }
        if !*this.waiting {
            // The wait starts now, not when the last frame came: the upstream may have been
            // slow to take it.
            let at = Instant::now().checked_add(*this.idle);
            let Some(at) = at else { return Poll::Pending };
            this.timer.as_mut().reset(at);
            *this.waiting = true;
        }
        ready!(this.timer.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyIdle(*this.idle)))))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .prefix
            .iter()
            .filter_map(|frame| frame.data_ref())
            .map(|data| data.len() as u64)
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + buffered);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}
