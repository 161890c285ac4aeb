//! One request on a pooled HTTP/1.1 connection, driven by whoever waits for it: the request's
//! future writes the request and reads the head, then [`Http1Body`] reads the body, taking
//! every frame a read brought in before its reader writes them on.
//!
//! Why not a task per connection (as hyper-util's pooled client runs one): that task hands
//! the body over one frame at a time through a channel, waking the reader's task for each;
//! the reader finds nothing more yet and writes each frame on its own (one `writev` and two
//! wake-ups per server-sent event). Driven where the body is read, the frames of one read
//! are all there: the downstream connection writes them together.
//!
//! The connection goes back to the pool only when its response ended cleanly; a response
//! that was dropped before its end (a deadline cut it, the client left) or failed takes its
//! connection with it, closed. A body nobody polls drives nothing, and so holds the
//! upstream back (TCP's flow control) until it is polled again or dropped (the deadline
//! layer's release of an unpolled body drops it).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::header::HOST;
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower_stream_deadline::BoxError;

use crate::http1_pool::{Host, Http1Connection, Http1Pool};
use crate::upstream::UpstreamBody;

/// Sends `request` (with an absolute URI) to its host on a connection of `pool`, and reads
/// its response head.
pub async fn send(
    pool: Arc<Http1Pool>,
    request: Request<UpstreamBody>,
) -> Result<Response<Http1Body>, BoxError> {
    let host = pool
        .host(request.uri())
        .ok_or("the upstream URI has no host")?;
    let mut request = origin_form(request)?;
    loop {
        let mut connection = host.connection().await?;
        let reused = connection.reused;
        let answer = connection.sender.try_send_request(request);
        let mut connection = Some(connection);
        match drive_until(&mut connection, answer).await {
            Ok(response) => {
                let (head, body) = response.into_parts();
                let mut body = Http1Body {
                    failed: None,
                    held: None,
                    unflushed: false,
                    drained: false,
                    body,
                    // None when the upstream closed it with the head (`connection: close` and
                    // a body that came with it): the body is read from what came.
                    connection: connection.map(|connection| (connection, host)),
                };
                if body.body.is_end_stream() {
                    // Nothing to read: the connection is free now (the body may never be polled).
                    std::future::poll_fn(|cx| {
                        give_back(&mut body.connection, cx);
                        Poll::Ready(())
                    })
                    .await;
                }
                return Ok(Response::from_parts(head, body));
            }
            Err(mut err) => match err.take_message() {
                // The upstream closed an idle connection as it was taken: nothing was sent.
                Some(unsent) if reused => {
                    tracing::debug!(target: crate::log::TARGET, err = %err.error(), "an idle upstream connection was closed; the request goes on another");
                    request = unsent;
                }
                _ => return Err(err.into_error().into()),
            },
        }
    }
}

/// The request as an HTTP/1.1 origin server takes it: the path and query in the request
/// line, the authority in `Host`.
fn origin_form(mut request: Request<UpstreamBody>) -> Result<Request<UpstreamBody>, BoxError> {
    let uri = request.uri().clone();
    if !request.headers().contains_key(HOST) {
        if let Some(authority) = uri.authority() {
            let host = HeaderValue::from_str(authority.as_str())?;
            request.headers_mut().insert(HOST, host);
        }
    }
    let path = uri
        .path_and_query()
        .map_or("/", |path_and_query| path_and_query.as_str());
    *request.uri_mut() = Uri::try_from(path)?;
    Ok(request)
}

/// Drives `connection` until `answer` (the response head on it) comes. A connection that is
/// over is dropped: its end (an error, or the request handed back unsent) is the answer's.
async fn drive_until<T>(
    connection: &mut Option<Http1Connection>,
    answer: impl Future<Output = T>,
) -> T {
    tokio::pin!(answer);
    std::future::poll_fn(|cx| {
        let mut drove = false;
        loop {
            if let Poll::Ready(answer) = answer.as_mut().poll(cx) {
                return Poll::Ready(answer);
            }
            // The answer is looked at again after each drive: the drive may have brought it.
            let Some(driving) = connection.as_mut().filter(|_| !drove) else {
                return Poll::Pending;
            };
            if driving.driver.as_mut().poll(cx).is_ready() {
                *connection = None;
            }
            drove = true;
        }
    })
    .await
}

/// The most bytes of frames read at once that are passed on as one.
const BATCH_AT_MOST: usize = 16 * 1024;

pin_project! {
    /// A response body on a pooled HTTP/1.1 connection, which it drives while it is read, and
    /// gives back to the pool at its clean end.
    pub struct Http1Body {
        #[pin]
        body: Incoming,
        // Until the body's end; dropped with the body before it (the connection closes).
        connection: Option<(Http1Connection, Arc<Host>)>,
        // An error that came in the same read as frames not yet written on: held for one turn
        // (see `poll_frame`).
        failed: Option<hyper::Error>,
        // The end or the trailers, read while batching frames: the next poll's.
        held: Option<Polled>,
        // Whether a frame was returned since the reader last got `Pending`.
        unflushed: bool,
        // The last batch found nothing more to read: the next poll looks with the reader's
        // waker at once, a quiet look being likely to find nothing too.
        drained: bool,
    }
}

/// The body ended cleanly: its connection can serve another request.
fn give_back(connection: &mut Option<(Http1Connection, Arc<Host>)>, cx: &mut Context<'_>) {
    if let Some((connection, host)) = connection.take() {
        connection.give_back(&host, cx);
    }
}

/// What one poll of the upstream body gave, frame by frame.
type Polled = Option<Result<Frame<Bytes>, hyper::Error>>;

impl Http1Body {
    /// The next frame of the upstream body, driving the connection for it.
    fn poll_one(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Polled> {
        let mut this = self.project();
        let mut drove = false;
        loop {
            match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if this.body.is_end_stream() {
                        // Its last frame: the reader may not poll again (hyper's server does not).
                        give_back(this.connection, cx);
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(None) => {
                    give_back(this.connection, cx);
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(err))) => {
                    *this.connection = None;
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Pending if drove => return Poll::Pending,
                Poll::Pending => {}
            }
            let Some((connection, _)) = this.connection.as_mut() else {
                return Poll::Pending;
            };
            if connection.driver.as_mut().poll(cx).is_ready() {
                // Over: what it read is in the body's channel, then its end or its error.
                *this.connection = None;
            }
            drove = true;
        }
    }

    /// The next frame, polled first with no waker: while frames are ready, each one the
    /// connection hands over through hyper's body channel would wake this very task, which
    /// would then run again for nothing. Only when nothing is ready are the reader's waker
    /// left with the connection and the channel (the most recent poll's, which is the one
    /// a future wakes).
    fn poll_quietly(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Polled> {
        match self
            .as_mut()
            .poll_one(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Pending => self.poll_one(cx),
            ready => ready,
        }
    }

    /// `first` and the data frames read in with it, as one: the layers above and the
    /// downstream connection then handle one frame, and write it in one piece. What ends the
    /// batch (the end, trailers, a failure) is kept for the next polls.
    ///
    /// Its looks are quiet, as in [`poll_quietly`](Self::poll_quietly): a frame is returned
    /// whatever they find, so no waker needs leaving (the next poll leaves one). A waker
    /// left here could not be relied on: the reader may be woken and polled before it polls
    /// this body again (while its client is slow), which would take that wake-up.
    fn batch(mut self: Pin<&mut Self>, first: Bytes) -> Bytes {
        *self.as_mut().project().unflushed = true;
        let mut quiet = Context::from_waker(Waker::noop());
        let mut batch: Option<BytesMut> = None;
        while batch.as_ref().map_or(first.len(), BytesMut::len) < BATCH_AT_MOST
            && !self.body.is_end_stream()
        {
            let next = match self.as_mut().poll_one(&mut quiet) {
                Poll::Pending => {
                    *self.as_mut().project().drained = true;
                    break;
                }
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(err))) => {
                    *self.as_mut().project().failed = Some(err);
                    break;
                }
                Poll::Ready(None) => {
                    *self.as_mut().project().held = Some(None);
                    break;
                }
            };
            match next.into_data() {
                Ok(data) => batch
                    .get_or_insert_with(|| BytesMut::from(&first[..]))
                    .extend_from_slice(&data),
                Err(trailers) => {
                    *self.as_mut().project().held = Some(Some(Ok(trailers)));
                    break;
                }
            }
        }
        batch.map_or(first, BytesMut::freeze)
    }
}

impl Body for Http1Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Polled> {
        if let Some(held) = self.as_mut().project().held.take() {
            return Poll::Ready(held);
        }
        if self.failed.is_none() {
            let polled = match std::mem::take(self.as_mut().project().drained) {
                true => self.as_mut().poll_one(cx),
                false => self.as_mut().poll_quietly(cx),
            };
            match polled {
                Poll::Pending => {
                    *self.as_mut().project().unflushed = false;
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    return match frame.into_data() {
                        Ok(first) => Poll::Ready(Some(Ok(Frame::data(self.batch(first))))),
                        Err(trailers) => Poll::Ready(Some(Ok(trailers))),
                    };
                }
                Poll::Ready(Some(Err(err))) => *self.as_mut().project().failed = Some(err),
                Poll::Ready(None) => return Poll::Ready(None),
            }
        }
        let this = self.project();
        if std::mem::take(this.unflushed) {
            // hyper's server drops what it has not written yet when a body fails: what came
            // before the failure goes out first, the failure at the next poll.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(this.failed.take().map(Err))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
