//! One log line per request, written when the request is over, and the metrics it adds to.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Uri};
use tower_stream_deadline::Outcome;

use crate::metrics::{Finished, Metrics};
use crate::pool::InFlight;
use crate::request_line::RequestLine;

/// The target of the gateway's own `tracing` events.
pub const TARGET: &str = "stream_deadline_gateway";

/// What one request did. Logged and counted once, when dropped: after the handler has
/// answered and the response body (which holds the outcome callback) has ended or been
/// dropped.
pub struct RequestLog {
    method: Method,
    path: String,
    started: Instant,
    metrics: Arc<Metrics>,
    status: AtomicU16,
    attempts: AtomicU32,
    forwarded: AtomicBool,
    /// The client went away mid-request: whatever the upstream attempt reported, the request
    /// ends as `dropped`.
    client_left: AtomicBool,
    /// The outcome of the last attempt, and when its first frame came, counted from the
    /// request's arrival (so across retries: what the client waited for its first token).
    last: Mutex<Option<(Outcome, Option<Duration>)>>,
    note: Mutex<Option<String>>,
    /// Something the caller sent that was ignored: the line goes out at warn.
    warning: Mutex<Option<String>>,
    /// The `model` the request body names, when it was read.
    model: Mutex<Option<String>>,
    request_id: HeaderValue,
    /// The upstream's own `x-request-id`, when it answered with another one.
    upstream_request_id: Mutex<Option<HeaderValue>>,
    /// Each attempt's upstream, in one list (a request's one allocation for them, where
    /// most requests make one attempt).
    tried: Mutex<Vec<Tried>>,
}

/// An attempt's upstream.
struct Tried {
    /// Its index in the request's pool.
    index: usize,
    /// Its URL as shown.
    shown: Arc<str>,
    /// What lasts as long as the attempt's response: the count of requests in flight on
    /// the upstream.
    held: Option<InFlight>,
}

impl RequestLog {
    pub fn new(
        method: &Method,
        uri: &Uri,
        request_id: &HeaderValue,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.started();
        RequestLog {
            method: method.clone(),
            path: uri.path().to_owned(),
            started: Instant::now(),
            metrics,
            status: AtomicU16::new(0),
            attempts: AtomicU32::new(0),
            forwarded: AtomicBool::new(false),
            client_left: AtomicBool::new(false),
            last: Mutex::new(None),
            note: Mutex::new(None),
            warning: Mutex::new(None),
            model: Mutex::new(None),
            request_id: request_id.clone(),
            upstream_request_id: Mutex::new(None),
            tried: Mutex::new(Vec::new()),
        }
    }

    /// The request goes to the upstream: it will end with an outcome.
    pub fn forwarding(&self) {
        self.forwarded.store(true, Ordering::Relaxed);
    }

    /// The client went away before the request was over (its body broke off).
    pub fn client_left(&self) {
        self.client_left.store(true, Ordering::Relaxed);
    }

    /// Called once per attempt, from the deadline layer, as it ends.
    pub fn record(&self, outcome: &Outcome) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        // The outcome's times count from the attempt's `call`, which was `total_time` ago.
        let first_frame = outcome.time_to_first_frame.and_then(|first_frame| {
            let call = Instant::now().checked_sub(outcome.total_time)?;
            Some((call + first_frame).saturating_duration_since(self.started))
        });
        if let Ok(mut last) = self.last.lock() {
            *last = Some((outcome.clone(), first_frame));
        }
    }

    pub fn status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }

    pub fn note(&self, note: String) {
        if let Ok(mut slot) = self.note.lock() {
            *slot = Some(note);
        }
    }

    /// Adds to the warnings of the line.
    pub fn warn(&self, warning: String) {
        if let Ok(mut slot) = self.warning.lock() {
            match slot.as_mut() {
                Some(warnings) => {
                    warnings.push_str("; ");
                    warnings.push_str(&warning);
                }
                None => *slot = Some(warning),
            }
        }
    }

    pub fn model(&self, model: String) {
        if let Ok(mut slot) = self.model.lock() {
            *slot = Some(model);
        }
    }

    /// An attempt goes to the upstream at `index` of the request's pool, shown as `shown`.
    pub fn trying(&self, index: usize, shown: Arc<str>) {
        if let Ok(mut tried) = self.tried.lock() {
            tried.push(Tried {
                index,
                shown,
                held: None,
            });
        }
    }

    /// The pool indices of the upstreams this request has tried, in order.
    pub fn tried(&self) -> Vec<usize> {
        self.tried
            .lock()
            .map(|tried| tried.iter().map(|tried| tried.index).collect())
            .unwrap_or_default()
    }

    /// Keeps `in_flight`, the count of the last attempt's upstream (see [`Self::trying`]),
    /// until the request is over.
    pub fn hold(&self, in_flight: InFlight) {
        if let Ok(mut tried) = self.tried.lock() {
            if let Some(last) = tried.last_mut() {
                last.held = Some(in_flight);
            }
        }
    }

    pub fn upstream_request_id(&self, id: &HeaderValue) {
        if let Ok(mut slot) = self.upstream_request_id.lock() {
            *slot = Some(id.clone());
        }
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let last = self.last.get_mut().ok().and_then(|last| last.take());
        let note = self.note.get_mut().ok().and_then(|note| note.take());
        let warning = self.warning.get_mut().ok().and_then(|w| w.take());
        let model = self.model.get_mut().ok().and_then(|model| model.take());
        let upstream_request_id = self
            .upstream_request_id
            .get_mut()
            .ok()
            .and_then(|id| id.take());
        // Visible ASCII (a client's id that is not was replaced); an upstream's id that is not
        // is written with its other bytes escaped.
        let request_id = self.request_id.as_bytes();
        let request_id = std::str::from_utf8(request_id)
            .map(Cow::Borrowed)
            .unwrap_or_else(|_| String::from_utf8_lossy(request_id));
        let upstream_request_id = upstream_request_id
            .as_ref()
            .map(|id| id.as_bytes().escape_ascii().to_string());
        let elapsed = self.started.elapsed();
        let attempts = *self.attempts.get_mut();
        let tried = self.tried.get_mut().map(std::mem::take).unwrap_or_default();
        let upstreams: Option<Cow<'_, str>> = match tried.as_slice() {
            [] => None,
            [one] => Some(Cow::Borrowed(&one.shown)),
            several => {
                let shown: Vec<&str> = several.iter().map(|tried| &*tried.shown).collect();
                Some(Cow::Owned(shown.join(",")))
            }
        };
        // The crate's name for the ending, as the metrics label it; a client that left
        // mid-body dropped the request, whatever the attempt reported.
        let client_left = *self.client_left.get_mut();
        let (ending, first_frame, frames, bytes) = match &last {
            Some(_) if client_left => (Cow::Borrowed("dropped"), None, 0, 0),
            Some((o, first_frame)) => {
                let ending = match o.ending.as_str() {
                    dashed if dashed.contains('-') => Cow::Owned(dashed.replace('-', "_")),
                    plain => Cow::Borrowed(plain),
                };
                (ending, *first_frame, o.frames, o.bytes)
            }
            // Forwarded, yet no attempt reported: the caller left before the first call.
            None if *self.forwarded.get_mut() => (Cow::Borrowed("dropped"), None, 0, 0),
            None => (Cow::Borrowed("not_sent"), None, 0, 0),
        };
        let ending = &*ending;
        if *self.forwarded.get_mut() {
            self.metrics.finished(Finished {
                ending,
                model: model.as_deref(),
                attempts,
                time_to_first_frame: first_frame,
                longest_idle: last.as_ref().and_then(|(o, _)| o.longest_idle),
                duration: elapsed,
            });
        } else {
            self.metrics.not_forwarded();
        }
        // No status: the client went away before the response was ready.
        let status = Some(*self.status.get_mut()).filter(|status| *status != 0);
        let notes = [warning.as_deref(), note.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
        let note = Some(notes).filter(|notes| !notes.is_empty());
        RequestLine {
            warn: warning.is_some(),
            method: self.method.as_str(),
            path: &self.path,
            status,
            model: model.as_deref(),
            attempts,
            first_frame_ms: first_frame.map(ms),
            frames,
            bytes,
            ending,
            elapsed_ms: ms(elapsed),
            request_id: &request_id,
            upstreams: upstreams.as_deref(),
            upstream_request_id: upstream_request_id.as_deref(),
            note: note.as_deref(),
        }
        .write();
    }
}

/// Milliseconds, to a tenth.
fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 10_000.0).round() / 10.0
}
