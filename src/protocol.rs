//! Opt-in protocol awareness, chosen per response by its content type: how a late stream
//! ends (gRPC status trailers, a final SSE event), and which frames count as progress for
//! the first-frame and idle budgets.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::response::Parts;
use http_body::Frame;

use crate::error::DeadlineExceeded;
use crate::grpc;
use crate::sse::{self, Scanner};

/// A user's judgement on data: does it count as progress?
pub(crate) type Filter = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;
/// A user's last SSE event for a stream cut at `DeadlineExceeded`.
pub(crate) type EventFn = Arc<dyn Fn(&DeadlineExceeded) -> Bytes + Send + Sync>;

/// What the layer was asked to do; everything off by default.
#[derive(Clone, Default)]
pub(crate) struct ProtocolConfig {
    pub(crate) grpc_endings: bool,
    /// `Some(None)`: the default OpenAI-style error event.
    pub(crate) sse_endings: Option<Option<EventFn>>,
    /// `Some(None)`: count SSE events with data, unfiltered.
    pub(crate) sse_progress: Option<Option<Filter>>,
    pub(crate) progress: Option<Filter>,
}

impl fmt::Debug for ProtocolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtocolConfig")
            .field("grpc_endings", &self.grpc_endings)
            .field("sse_endings", &self.sse_endings.is_some())
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
        let ending = if self.grpc_endings && grpc::is_grpc(&head.headers) {
            Ending::Grpc
        } else if let (true, Some(event)) = (is_sse, &self.sse_endings) {
            Ending::Sse(event.clone())
        } else {
            Ending::Error
        };
        let sse_progress = self.sse_progress.as_ref().filter(|_| is_sse);
        let sse =
            (is_sse && (self.sse_endings.is_some() || sse_progress.is_some())).then(|| SseWatch {
                scanner: Scanner::new(sse_progress.is_some_and(Option::is_some)),
                hold_back: self.sse_endings.is_some(),
                tail: BytesMut::new(),
                progress: sse_progress.cloned(),
            });
        let progress = self.progress.clone().filter(|_| sse_progress.is_none());
        if matches!(ending, Ending::Error) && sse.is_none() && progress.is_none() {
            return None;
        }
        Some(Box::new(Protocol {
            ending,
            sse,
            progress,
        }))
    }
}

/// What applies to one response.
pub(crate) struct Protocol {
    ending: Ending,
    sse: Option<SseWatch>,
    /// For bodies other than SSE-with-progress: the user's predicate over data frames.
    progress: Option<Filter>,
}

enum Ending {
    Error,
    Grpc,
    Sse(Option<EventFn>),
}

struct SseWatch {
    scanner: Scanner,
    /// Hold back bytes after the last event boundary, so a final event is never spliced
    /// into one the upstream was half-way through.
    hold_back: bool,
    tail: BytesMut,
    /// `Some(filter)` when only (filtered) data events count as progress.
    progress: Option<Option<Filter>>,
}

impl Protocol {
    /// Looks at a frame from upstream: the part to deliver now (`None` when it is all held
    /// back) and whether it counts as progress.
    pub(crate) fn inspect<D: Buf + 'static>(
        &mut self,
        mut frame: Frame<D>,
    ) -> (Option<Frame<D>>, bool) {
        let Some(data) = frame.data_mut() else {
            return (Some(frame), true);
        };
        let Some(sse) = &mut self.sse else {
            let progress = self.progress.as_ref().is_none_or(|p| p(data.chunk()));
            return (Some(frame), progress);
        };
        let Some(bytes) = as_bytes(data) else {
            // SSE over a body whose data is not `Bytes`: passed through, unread.
            return (Some(frame), true);
        };
        let filter = sse.progress.as_ref().and_then(|f| f.as_deref());
        let filter = filter.map(|f| f as &sse::DataFilter<'_>);
        let scanned = sse.scanner.feed(&bytes[..], filter);
        let progress = sse.progress.is_none() || scanned.data_event;
        if !sse.hold_back {
            return (Some(frame), progress);
        }
        let bytes = std::mem::take(bytes);
        let deliver = match scanned.last_boundary {
            None => {
                sse.tail.extend_from_slice(&bytes);
                return (None, progress);
            }
            Some(end) if sse.tail.is_empty() && end == bytes.len() => bytes,
            Some(end) => {
                let mut deliver = std::mem::take(&mut sse.tail);
                deliver.extend_from_slice(&bytes[..end]);
                sse.tail.extend_from_slice(&bytes[end..]);
                deliver.freeze()
            }
        };
        (from_bytes(deliver).map(Frame::data), progress)
    }

    /// At the end of the stream: what was held back (an event the upstream never finished).
    pub(crate) fn take_tail<D: 'static>(&mut self) -> Option<Frame<D>> {
        let sse = self.sse.as_mut().filter(|sse| !sse.tail.is_empty())?;
        from_bytes(std::mem::take(&mut sse.tail).freeze()).map(Frame::data)
    }

    /// Whether the ending adds bytes the upstream never sent (so no exact size holds).
    pub(crate) fn extends_body(&self) -> bool {
        matches!(self.ending, Ending::Sse(_))
    }

    /// The bytes held back, for `size_hint`.
    pub(crate) fn held(&self) -> u64 {
        self.sse.as_ref().map_or(0, |sse| sse.tail.len() as u64)
    }

    /// The last frame of a stream cut at `expired`, or `None` to end it with the error.
    pub(crate) fn ending<D: 'static>(&mut self, expired: &DeadlineExceeded) -> Option<Frame<D>> {
        match &self.ending {
            Ending::Error => None,
            Ending::Grpc => Some(Frame::trailers(grpc::status_trailers(expired))),
            Ending::Sse(event) => {
                if let Some(sse) = &mut self.sse {
                    // What a client sees of a half-sent event: nothing.
                    sse.tail.clear();
                }
                let event = match event {
                    Some(event) => event(expired),
                    None => Bytes::from(sse::openai_error_event(&expired.to_string())),
                };
                from_bytes(event).map(Frame::data)
            }
        }
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
