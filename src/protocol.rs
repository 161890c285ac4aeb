//! Opt-in protocol awareness, chosen per response by its content type: how a late stream
//! ends (gRPC status trailers, a final SSE event), how an SSE stream whose upstream failed
//! ends, and which frames count as progress for the first-frame and idle budgets.

use std::any::Any;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::response::Parts;
use http_body::Frame;

use crate::BoxError;
use crate::error::DeadlineExceeded;
use crate::first_event_error::UpstreamErrorEvent;
use crate::sse::{self, Scanner};
use crate::{grpc, grpc_frames};

/// A user's judgement on data: does it count as progress?
pub(crate) type Filter = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;
/// A judgement on one SSE event, by its name and its data: does it count as progress?
pub(crate) type SseFilter = Arc<dyn Fn(&[u8], &[u8]) -> bool + Send + Sync>;
/// A user's last SSE event for a stream cut at `DeadlineExceeded`.
pub(crate) type EventFn = Arc<dyn Fn(&DeadlineExceeded) -> Bytes + Send + Sync>;

/// What the layer was asked to do; everything off by default.
#[derive(Clone, Default)]
pub(crate) struct ProtocolConfig {
    pub(crate) grpc_endings: bool,
    /// `Some(None)`: the default error event.
    pub(crate) sse_endings: Option<Option<EventFn>>,
    /// End an SSE stream whose upstream fails after the head with an error event.
    pub(crate) sse_upstream_errors: bool,
    /// Fail the call when the first SSE event that counts is an error.
    pub(crate) sse_first_event_errors: bool,
    /// `Some(None)`: count SSE events with data, unfiltered.
    pub(crate) sse_progress: Option<Option<SseFilter>>,
    /// The SSE filter is the crate's own (`llm_progress`): it only tells whether an event
    /// counts, so the events after one that counted in the same frame are not judged.
    pub(crate) sse_progress_is_ours: bool,
    pub(crate) progress: Option<Filter>,
}

impl fmt::Debug for ProtocolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtocolConfig")
            .field("grpc_endings", &self.grpc_endings)
            .field("sse_endings", &self.sse_endings.is_some())
            .field("sse_upstream_errors", &self.sse_upstream_errors)
            .field("sse_first_event_errors", &self.sse_first_event_errors)
            .field("sse_progress", &self.sse_progress.is_some())
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl ProtocolConfig {
    /// What applies to a response with this head; `None` (nothing to do) in the default case.
    pub(crate) fn for_response(&self, head: &Parts) -> Option<Box<Protocol>> {
        let is_sse = head
            .headers
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let is_grpc = self.grpc_endings && grpc::is_grpc(&head.headers);
        let ending = if is_grpc {
            Ending::Grpc
        } else if let (true, Some(event)) = (is_sse, &self.sse_endings) {
            Ending::Sse(event.clone())
        } else {
            Ending::Error
        };
        let upstream_errors = is_sse && self.sse_upstream_errors;
        let sse_progress = self.sse_progress.as_ref().filter(|_| is_sse);
        let framing = if is_grpc {
            // A late call ends with trailers: hold back a message not yet whole.
            Some(Framing::new(
                Boundaries::Grpc(grpc_frames::Scanner::default()),
                true,
            ))
        } else if is_sse {
            // An added event must not be spliced into one the upstream was half-way through.
            let hold_back = self.sse_endings.is_some() || upstream_errors;
            let first_errors = self.sse_first_event_errors;
            (hold_back || sse_progress.is_some() || first_errors).then(|| {
                let mut scanner = match first_errors {
                    true => Scanner::watching_the_first_event(),
                    false => Scanner::new(sse_progress.is_some_and(Option::is_some)),
                };
                if self.sse_progress_is_ours {
                    scanner = scanner.judging_until_one_counts();
                }
                let progress = sse_progress.cloned();
                Framing::new(Boundaries::Sse { scanner, progress }, hold_back)
            })
        } else {
            None
        };
        let progress = self.progress.clone().filter(|_| sse_progress.is_none());
        if matches!(ending, Ending::Error) && framing.is_none() && progress.is_none() {
            return None;
        }
        Some(Box::new(Protocol {
            ending,
            upstream_errors,
            framing,
            progress,
        }))
    }
}

/// What applies to one response.
pub(crate) struct Protocol {
    ending: Ending,
    /// An upstream failure after the head ends the stream with an SSE error event.
    upstream_errors: bool,
    framing: Option<Framing>,
    /// For bodies without SSE progress: the user's predicate over data frames.
    progress: Option<Filter>,
}

enum Ending {
    Error,
    Grpc,
    Sse(Option<EventFn>),
}

/// Where the units of the body (SSE events, gRPC messages) end, and what is held back of
/// one not yet whole.
struct Framing {
    boundaries: Boundaries,
    /// Hold back bytes after the last boundary, so that an ending never follows half a
    /// unit (a client would read it spliced with the ending, or as a broken message).
    hold_back: bool,
    tail: BytesMut,
}

enum Boundaries {
    Sse {
        scanner: Scanner,
        /// `Some(filter)` when only (filtered) data events count as progress.
        progress: Option<Option<SseFilter>>,
    },
    Grpc(grpc_frames::Scanner),
}

impl Framing {
    fn new(boundaries: Boundaries, hold_back: bool) -> Self {
        Framing {
            boundaries,
            hold_back,
            tail: BytesMut::new(),
        }
    }

    /// Of `bytes`, the part to deliver now: what was held before and `bytes` up to the last
    /// boundary at `end`; the rest is held.
    fn split(&mut self, bytes: Bytes, end: Option<usize>) -> Option<Bytes> {
        match end {
            None => {
                self.tail.extend_from_slice(&bytes);
                None
            }
            Some(end) if self.tail.is_empty() && end == bytes.len() => Some(bytes),
            Some(end) => {
                let mut deliver = std::mem::take(&mut self.tail);
                deliver.extend_from_slice(&bytes[..end]);
                self.tail.extend_from_slice(&bytes[end..]);
                Some(deliver.freeze())
            }
        }
    }
}

impl Protocol {
    /// Looks at a frame from upstream: the part to deliver now (`None` when it is all held
    /// back) and whether it counts as progress.
    pub(crate) fn inspect<D: Buf + 'static>(
        &mut self,
        mut frame: Frame<D>,
    ) -> (Option<Frame<D>>, bool) {
        let Some(data) = frame.data_mut() else {
            if let Some(framing) = self.framing.as_mut().filter(|f| !f.tail.is_empty()) {
                // Trailers end the body: the unit they cut is one no client could read (an
                // SSE parser discards it at the end, a gRPC decoder skips it), and its bytes
                // cannot follow the trailers.
                tracing::debug!(
                    bytes = framing.tail.len(),
                    "trailers after an unfinished unit"
                );
                framing.tail.clear();
            }
            return (Some(frame), true);
        };
        let user_progress = |chunk: &[u8]| self.progress.as_ref().is_none_or(|p| p(chunk));
        let Some(framing) = &mut self.framing else {
            let progress = user_progress(data.chunk());
            return (Some(frame), progress);
        };
        let Some(bytes) = as_bytes(data) else {
            // A body whose data is not `Bytes`: passed through, unread.
            return (Some(frame), true);
        };
        let (end, progress) = match &mut framing.boundaries {
            Boundaries::Sse { scanner, progress } => {
                let filter = progress.as_ref().and_then(|f| f.as_deref());
                let filter = filter.map(|f| f as &sse::EventFilter<'_>);
                let scanned = scanner.feed(&bytes[..], filter);
                let progress = match progress {
                    Some(_) => scanned.data_event,
                    None => user_progress(bytes),
                };
                (scanned.last_boundary, progress)
            }
            Boundaries::Grpc(scanner) => (scanner.feed(bytes), user_progress(bytes)),
        };
        if !framing.hold_back {
            return (Some(frame), progress);
        }
        let deliver = framing.split(std::mem::take(bytes), end);
        (deliver.and_then(from_bytes).map(Frame::data), progress)
    }

    /// The first event that counted as progress, if it was an error (under
    /// `sse_first_event_errors`).
    pub(crate) fn first_event_error(&mut self) -> Option<UpstreamErrorEvent> {
        let Some(Framing {
            boundaries: Boundaries::Sse { scanner, .. },
            ..
        }) = &mut self.framing
        else {
            return None;
        };
        let (name, data) = scanner.take_first_error()?;
        Some(UpstreamErrorEvent::new(&name, data))
    }

    /// At the end of the stream: what was held back (a unit the upstream never finished).
    pub(crate) fn take_tail<D: 'static>(&mut self) -> Option<Frame<D>> {
        let framing = self.framing.as_mut().filter(|f| !f.tail.is_empty())?;
        from_bytes(std::mem::take(&mut framing.tail).freeze()).map(Frame::data)
    }

    /// Whether an ending may add bytes the upstream never sent (so no exact size holds).
    pub(crate) fn extends_body(&self) -> bool {
        matches!(self.ending, Ending::Sse(_)) || self.upstream_errors
    }

    /// The bytes held back, for `size_hint`.
    pub(crate) fn held(&self) -> u64 {
        self.framing.as_ref().map_or(0, |f| f.tail.len() as u64)
    }

    /// Drops a half-sent unit: what a client sees of it at an ending is nothing.
    fn drop_tail(&mut self) {
        if let Some(framing) = &mut self.framing {
            framing.tail.clear();
        }
    }

    /// The last frame of a stream cut at `expired`, or `None` to end it with the error.
    pub(crate) fn ending<D: 'static>(&mut self, expired: &DeadlineExceeded) -> Option<Frame<D>> {
        let ending = match &self.ending {
            Ending::Error => return None,
            Ending::Grpc => Frame::trailers(grpc::status_trailers(expired)),
            Ending::Sse(event) => {
                let event = match event {
                    Some(event) => event(expired),
                    None => Bytes::from(sse::deadline_event(&expired.to_string())),
                };
                Frame::data(from_bytes(event)?)
            }
        };
        self.drop_tail();
        Some(ending)
    }

    /// The last frame of a stream whose upstream failed with `err` after the head, or
    /// `None` to pass the error on.
    #[cold]
    pub(crate) fn upstream_ending<D: 'static>(&mut self, err: &BoxError) -> Option<Frame<D>> {
        if !self.upstream_errors {
            return None;
        }
        let mut message = format!("upstream failed mid-stream: {err}");
        let mut source = err.source();
        while let Some(cause) = source {
            let _ = write!(message, ": {cause}");
            source = cause.source();
        }
        let event = from_bytes(Bytes::from(sse::upstream_error_event(&message)))?;
        // The error no longer travels on: say here what it was.
        tracing::warn!(error = %message, "ending the event stream with an error event");
        self.drop_tail();
        Some(Frame::data(event))
    }
}

/// The data as `Bytes`, when that is what the body carries (hyper's and axum's do).
fn as_bytes<D: 'static>(data: &mut D) -> Option<&mut Bytes> {
    (data as &mut dyn Any).downcast_mut::<Bytes>()
}

fn from_bytes<D: 'static>(bytes: Bytes) -> Option<D> {
    let mut slot = Some(bytes);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<D>>()?
        .take()
}
