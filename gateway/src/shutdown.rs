//! Graceful shutdown: the signals that start it, and the body that ends a response cut at
//! the end of the grace (or at a second signal) the way a deadline would (an error event, then a clean end, for an
//! event stream; an error for anything else, which the server turns into a reset).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::errors::shutdown_event;
use crate::log::RequestLog;

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// The end of the shutdown grace, for every response in flight: a flag that a response reads
/// at each frame (one atomic load; the token alone costs two locks a frame), and a wake-up for
/// the responses waiting on their upstream.
#[derive(Clone, Default)]
pub struct Cut {
    flag: Arc<AtomicBool>,
    token: CancellationToken,
}

impl Cut {
    pub fn new() -> Cut {
        Cut::default()
    }

    /// Ends every response still in flight.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Release);
        self.token.cancel();
    }
}

/// The response body was cut because the gateway is shutting down.
#[derive(Debug)]
pub struct ShuttingDown;

impl std::fmt::Display for ShuttingDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the gateway is shutting down")
    }
}

impl std::error::Error for ShuttingDown {}

pin_project_lite::pin_project! {
    /// A response body that ends when `cut` is cancelled: the upstream body is dropped at
    /// once (releasing the upstream), then an event stream gets one last error event and
    /// ends cleanly; any other body fails.
    ///
    /// The inner body must deliver event streams in whole events (the deadline layer's SSE
    /// endings do), so that the last event never lands inside another.
    pub struct DrainBody<B> {
        #[pin]
        inner: Option<B>,
        // Polled only while the inner body waits: then the cut must wake the response.
        #[pin]
        cut: WaitForCancellationFutureOwned,
        is_cut: Arc<AtomicBool>,
        // The task `cut` last registered to wake: polling it again for the same task would
        // only take its lock to find the same waker.
        registered: Option<Waker>,
        event_stream: bool,
        log: Arc<RequestLog>,
    }
}

impl<B> DrainBody<B> {
    pub fn new(inner: B, cut: &Cut, event_stream: bool, log: Arc<RequestLog>) -> Self {
        DrainBody {
            inner: Some(inner),
            cut: cut.token.clone().cancelled_owned(),
            is_cut: cut.flag.clone(),
            registered: None,
            event_stream,
            log,
        }
    }
}

impl<B> Body for DrainBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        if !this.is_cut.load(Ordering::Acquire) {
            match inner.poll_frame(cx) {
                Poll::Ready(frame) => {
                    return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
                }
                Poll::Pending => {
                    let same = this.registered.as_ref();
                    if same.is_some_and(|waker| waker.will_wake(cx.waker())) {
                        return Poll::Pending;
                    }
                    if this.cut.as_mut().poll(cx).is_pending() {
                        *this.registered = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                }
            }
        }
        this.inner.set(None);
        this.log.note("cut by the shutdown".to_owned());
        if *this.event_stream {
            return Poll::Ready(Some(Ok(Frame::data(shutdown_event()))));
        }
        Poll::Ready(Some(Err(Box::new(ShuttingDown))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(inner) => inner.is_end_stream(),
            None => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::default(),
        }
    }
}
