//! Request bodies: buffered up to the replay limit (so a retry can send them again), streamed
//! beyond it; in both cases a caller that stops sending, or sends too slowly to finish within
//! the request's total budget, is timed out.

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
    TimedOut(BodyTimeout),
    Failed(hyper::Error),
}

/// How long a request body may take.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// The longest wait for its next piece (`--request-body-idle`).
    idle: Duration,
    /// When the request's total budget runs out.
    deadline: Instant,
    /// That budget, for the error.
    budget: Duration,
}

impl BodyLimits {
    /// For a request that arrived at `arrived` with the total `budget`.
    pub fn new(idle: Duration, arrived: Instant, budget: Duration) -> Self {
        BodyLimits {
            idle,
            // Every duration the gateway takes is at most 100 years: this is on the clock.
            deadline: arrived.checked_add(budget).unwrap_or(arrived),
            budget,
        }
    }

    /// When a wait that starts now ends, and what it is called if it runs out.
    fn wait(&self) -> (Instant, BodyTimeout) {
        match Instant::now().checked_add(self.idle) {
            Some(at) if at < self.deadline => (at, BodyTimeout::Idle(self.idle)),
            _ => (self.deadline, BodyTimeout::Total(self.budget)),
        }
    }
}

/// The caller's request body did not come in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyTimeout {
    /// No more of it came for the idle timeout.
    Idle(Duration),
    /// Not all of it came within the request's total budget.
    Total(Duration),
}

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyTimeout::Idle(idle) => {
                write!(f, "no more of the request body came for {idle:?}")
            }
            BodyTimeout::Total(budget) => write!(
                f,
                "the request body did not all come within the request's total budget of {budget:?}"
            ),
        }
    }
}

impl std::error::Error for BodyTimeout {}

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
    limits: BodyLimits,
) -> Result<RequestBody, ReadError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > REPLAY_LIMIT as u64) {
        return Ok(RequestBody::Streamed(Streamed::new(
            VecDeque::new(),
            body,
            limits,
        )));
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut length = 0;
    loop {
        let (at, timeout) = limits.wait();
        let frame = match tokio::time::timeout_at(at, body.frame()).await {
            Err(_) => return Err(ReadError::TimedOut(timeout)),
            Ok(None) => break,
            Ok(Some(frame)) => frame.map_err(ReadError::Failed)?,
        };
        match frame.into_data() {
            Ok(data) => {
                length += data.len();
                chunks.push(data);
                if length > REPLAY_LIMIT {
                    let prefix = chunks.into_iter().map(Frame::data).collect();
                    return Ok(RequestBody::Streamed(Streamed::new(prefix, body, limits)));
                }
            }
            Err(trailers) => {
                let mut prefix: VecDeque<_> = chunks.into_iter().map(Frame::data).collect();
                prefix.push_back(trailers);
                return Ok(RequestBody::Streamed(Streamed::new(prefix, body, limits)));
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
    /// The frames already read, then the rest of the caller's body, failing with
    /// [`BodyTimeout`] when the caller stops sending or runs out of its total budget, and [`BodyBroken`] when its body breaks off.
    pub struct Streamed {
        prefix: VecDeque<Frame<Bytes>>,
        #[pin]
        rest: Incoming,
        // Boxed: the upstream client needs an `Unpin` body.
        timer: Pin<Box<Sleep>>,
        limits: BodyLimits,
        // What the current wait, if any, is called when `timer` fires.
        waiting: Option<BodyTimeout>,
    }
}

impl Streamed {
    fn new(prefix: VecDeque<Frame<Bytes>>, rest: Incoming, limits: BodyLimits) -> Self {
        Streamed {
            prefix,
            rest,
            timer: Box::pin(tokio::time::sleep_until(limits.deadline)),
            limits,
            waiting: None,
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
            *this.waiting = None;
            return Poll::Ready(frame.map(|frame| frame.map_err(|err| BodyBroken(err).into())));
        }
        let timeout = match *this.waiting {
            Some(timeout) => timeout,
            None => {
                // The wait starts now, not when the last frame came: the upstream may have
                // been slow to take it.
                let (at, timeout) = this.limits.wait();
                this.timer.as_mut().reset(at);
                *this.waiting = Some(timeout);
                timeout
            }
        };
        ready!(this.timer.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(timeout))))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_the_idle_timeout_or_the_total_budget_whichever_comes_first() {
        let idle = Duration::from_secs(30);
        let arrived = Instant::now();
        let limits = BodyLimits::new(idle, arrived, Duration::from_secs(45));
        assert_eq!(limits.wait(), (arrived + idle, BodyTimeout::Idle(idle)));
        tokio::time::advance(Duration::from_secs(20)).await;
        let total = BodyTimeout::Total(Duration::from_secs(45));
        assert_eq!(limits.wait(), (arrived + Duration::from_secs(45), total));
        assert_eq!(
            total.to_string(),
            "the request body did not all come within the request's total budget of 45s"
        );
    }
}
