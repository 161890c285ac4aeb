//! One request on a pooled HTTP/1.1 connection, driven by whoever waits for it: the request's
//! future writes the request and reads the head, then [`Http1Body`] reads the body, each read
//! it makes passed on as one frame.
//!
//! Why not hyper's client: it runs each connection as a task of its own, or at least as a
//! state machine that hands the body over one chunk at a time through a channel. For a stream
//! of server-sent events, each its own chunk, that hand-over costs more than everything else
//! the gateway does with the event. Read where the body is polled, and decoded a read at a
//! time ([`crate::http1_body_decoder`]), the events of one read reach the client in one write.
//!
//! The connection goes back to the pool only when its response ended cleanly and the
//! upstream lets it be kept; a response that was dropped before its end (a deadline cut it,
//! the client left) or failed takes its connection with it, closed. A body nobody polls reads
//! nothing, and so holds the upstream back (TCP's flow control) until it is polled again or
//! dropped (the deadline layer's release of an unpolled body drops it).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response, request};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Either;
use tower_stream_deadline::BoxError;

use crate::http1_body_decoder::{BodyDecoder, Decoded};
use crate::http1_error::Http1Error;
use crate::http1_head::{self, ResponseHead};
use crate::http1_pool::{Host, Http1Connection, Http1Pool};
use crate::http1_request::RequestWriter;
use crate::upstream::{ResponseBody, UpstreamBody};

/// Sends `request` (with an absolute URI) to its host on a connection of `pool`, and reads
/// its response head.
///
/// The request is taken apart before the future is made, and the future is an `async` block
/// that yields the gateway's [`ResponseBody`] itself: it is boxed for every request, and an
/// `async fn` (or a block that maps another future's output) would hold the request, or
/// the whole exchange, twice.
pub fn send(
    pool: &Http1Pool,
    request: Request<UpstreamBody>,
) -> impl Future<Output = Result<Response<ResponseBody>, BoxError>> + Send + 'static {
    let host = pool.host(request.uri());
    let (head, body) = request.into_parts();
    async move {
        let host = host.ok_or("the upstream URI has no host")?;
        let mut connection = host.connection().await?;
        let (answer, writing) = exchange(&mut connection, &head, body).await?;
        let mut body = Http1Body {
            decoder: BodyDecoder::new(answer.framing),
            connection: Some((connection, host)),
            keep_alive: answer.keep_alive,
            writing,
            failed: None,
            unflushed: false,
        };
        if body.decoder.is_done() {
            // Nothing to read: the connection is free now (the body may never be polled).
            std::future::poll_fn(|cx| {
                body.end(cx);
                Poll::Ready(())
            })
            .await;
        }
        let (parts, ()) = answer.response.into_parts();
        Ok(Response::from_parts(parts, Either::Right(body)))
    }
}

/// Writes the request on `connection` and reads the head of its answer, watching for the
/// answer while the request is written: an upstream may answer before it has the whole body
/// (a `413`, or a server that answers as the request streams in). The rest of the request,
/// if any, comes back with the answer, for the response body to go on writing; if writing
/// failed (the upstream stopped reading and closed), the answer is still taken, and the
/// connection is not kept.
async fn exchange(
    connection: &mut Http1Connection,
    head: &request::Parts,
    body: UpstreamBody,
) -> Result<(ResponseHead, Option<Box<RequestWriter>>), BoxError> {
    let mut writing = Some(RequestWriter::new(head, body));
    // The connection failed while the request was written: the answer may still be there.
    let mut write_failed: Option<Http1Error> = None;
    std::future::poll_fn(|cx| {
        if let Some(writer) = writing.as_mut() {
            match writer.poll_write(&mut connection.io, cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => writing = None,
                Poll::Ready(Err(err @ Http1Error::Io(_))) => {
                    writing = None;
                    write_failed = Some(err);
                }
                // The caller's body failed (its own error goes on), or did not match its length.
                Poll::Ready(Err(Http1Error::RequestBody(err))) => return Poll::Ready(Err(err)),
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err.into())),
            }
        }
        let failed = |err: Http1Error, write_failed: &mut Option<Http1Error>| {
            Poll::Ready(Err(write_failed.take().unwrap_or(err).into()))
        };
        loop {
            match http1_head::parse(&mut connection.read, &head.method) {
                Ok(Some(mut answer)) => {
                    if write_failed.is_some() {
                        answer.keep_alive = false;
                    }
                    return Poll::Ready(Ok((answer, writing.take().map(Box::new))));
                }
                Ok(None) => {}
                Err(err) => return failed(err, &mut write_failed),
            }
            match ready!(connection.poll_read(cx)) {
                Ok(0) => return failed(Http1Error::ClosedBeforeHead, &mut write_failed),
                Ok(_) => {}
                Err(err) => return failed(Http1Error::Io(err), &mut write_failed),
            }
        }
    })
    .await
}

/// A response body on a pooled HTTP/1.1 connection, which it reads while it is polled, and
/// gives back to the pool at its clean end.
pub struct Http1Body {
    decoder: BodyDecoder,
    // Until the body's end; dropped with the body before it (the connection closes).
    connection: Option<(Http1Connection, Arc<Host>)>,
    // Whether the upstream lets the connection carry another request.
    keep_alive: bool,
    // The rest of the request, when the upstream answered before it had all of it. Boxed:
    // that is rare, and inline it would be three fifths of the body, which every response
    // moves several times on its way to the client.
    writing: Option<Box<RequestWriter>>,
    // A failure met after frames not yet written on: held for one turn (see `fail`).
    failed: Option<Http1Error>,
    // Whether a frame was returned since the reader last got `Pending`.
    unflushed: bool,
}

impl Http1Body {
    /// The body ended cleanly: its connection can serve another request, if the upstream
    /// lets it.
    fn end(&mut self, cx: &mut Context<'_>) {
        if let Some((connection, host)) = self.connection.take() {
            // A request not all written leaves the connection in its middle.
            if self.keep_alive && self.writing.is_none() {
                connection.give_back(&host, cx);
            }
        }
    }

    /// The body failed: its connection closes. hyper's server drops what it has not written
    /// yet when a body fails, so what came before the failure goes out first (the reader
    /// is asked to poll again, and finds the failure then).
    fn fail(
        &mut self,
        err: Http1Error,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Http1Error>>> {
        self.connection = None;
        if std::mem::take(&mut self.unflushed) {
            self.failed = Some(err);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Some(Err(err)))
    }
}

impl Body for Http1Body {
    type Data = Bytes;
    type Error = Http1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Http1Error>>> {
        let this = self.get_mut();
        if let Some(err) = this.failed.take() {
            return Poll::Ready(Some(Err(err)));
        }
        if let (Some(writer), Some((connection, _))) =
            (this.writing.as_mut(), this.connection.as_mut())
        {
            match writer.poll_write(&mut connection.io, cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => this.writing = None,
                Poll::Ready(Err(Http1Error::Io(err))) => {
                    this.writing = None;
                    this.keep_alive = false;
                    // The upstream stopped taking the request: its answer goes on.
                    tracing::debug!(target: crate::log::TARGET, %err, "the rest of the request could not be sent; the answer goes on");
                }
                Poll::Ready(Err(err)) => {
                    this.writing = None;
                    return this.fail(err, cx);
                }
            }
        }
        loop {
            let Some((connection, _)) = this.connection.as_mut() else {
                // Ended, given back or closed with its end.
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut connection.read) {
                Ok(Decoded::Frame(frame)) => {
                    if this.decoder.is_done() {
                        // Its last frame: the reader may not poll again (hyper's server does not).
                        this.end(cx);
                    }
                    this.unflushed = true;
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Decoded::End) => {
                    this.end(cx);
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(err) => return this.fail(err, cx),
            }
            match connection.poll_read(cx) {
                Poll::Pending => {
                    this.unflushed = false;
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => match this.decoder.closed() {
                    Ok(()) => {
                        this.connection = None;
                        return Poll::Ready(None);
                    }
                    Err(err) => return this.fail(err, cx),
                },
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(err)) => return this.fail(Http1Error::Io(err), cx),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(remaining) => SizeHint::with_exact(remaining),
            None => SizeHint::default(),
        }
    }
}
