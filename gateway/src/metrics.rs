//! The gateway's Prometheus metrics, under fixed names that dashboards can rely on.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::http1_pool::Usage;

/// Model latencies: from a cached token (10 ms) to a long report (10 min).
const BUCKETS: [f64; 16] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// How a forwarded request's response ends: the crate's `Ending`, as a label.
const ENDINGS: [&str; 6] = [
    "completed",
    "deadline_total",
    "deadline_first_frame",
    "deadline_idle",
    "upstream_error",
    "dropped",
];

/// The `model` label of a request whose model has no policy of its own (or names none): the
/// label takes only configured names, so that clients cannot grow the series.
pub const OTHER_MODEL: &str = "other";

/// How an attempt at one upstream ended, as `stream_deadline_upstream_attempts_total` labels
/// it.
const ATTEMPT_RESULTS: [&str; 8] = [
    "answered",
    "deadline_first_frame",
    "error_event",
    "refused",
    "status_5xx",
    "upstream_error",
    "deadline_total",
    "cancelled",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndingLabel {
    /// `completed`, `deadline_total`, `deadline_first_frame`, `deadline_idle`,
    /// `upstream_error` or `dropped`.
    ending: String,
    /// A model with a policy of its own, or `other`.
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabel {
    /// The upstream's URL, without credentials.
    upstream: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabel {
    upstream: String,
    /// `idle` or `busy`.
    state: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<EndingLabel, Counter>,
    /// The counters of each model with a policy of their own (the values of the `model`
    /// label), by ending in the order of `ENDINGS`: found once per load, not per request.
    models: RwLock<HashMap<String, [Counter; ENDINGS.len()]>>,
    /// The same for `OTHER_MODEL`.
    other_model: [Counter; ENDINGS.len()],
    attempts: Counter,
    upstream_attempts: Family<AttemptLabel, Counter>,
    /// The counters of each upstream, by result in the order of `ATTEMPT_RESULTS`.
    upstreams: RwLock<HashMap<String, [Counter; ATTEMPT_RESULTS.len()]>>,
    upstream_out: Family<UpstreamLabel, Gauge>,
    upstream_connections: Family<ConnectionLabel, Gauge>,
    upstream_connection_waits: Family<UpstreamLabel, Gauge>,
    time_to_first_frame: Histogram,
    longest_idle: Histogram,
    response_duration: Histogram,
    in_flight: Gauge,
}

/// What one request did, as the metrics count it.
pub struct Finished<'a> {
    pub ending: &'a str,
    /// The model the request named, if it did.
    pub model: Option<&'a str>,
    pub attempts: u32,
    pub time_to_first_frame: Option<Duration>,
    pub longest_idle: Option<Duration>,
    pub duration: Duration,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<EndingLabel, Counter>::default();
        registry.register(
            "stream_deadline_requests",
            "Requests forwarded, by how their response ended and the model's policy",
            requests.clone(),
        );
        let upstream_attempts = Family::<AttemptLabel, Counter>::default();
        registry.register(
            "stream_deadline_upstream_attempts",
            "Attempts at each upstream, by how they ended (answered: the first frame came)",
            upstream_attempts.clone(),
        );
        let upstream_out = Family::<UpstreamLabel, Gauge>::default();
        registry.register(
            "stream_deadline_upstream_out",
            "1 while an upstream is left out of first attempts for failing, else 0",
            upstream_out.clone(),
        );
        let upstream_connections = Family::<ConnectionLabel, Gauge>::default();
        registry.register(
            "stream_deadline_upstream_connections",
            "The gateway's connections to each http:// upstream: idle (kept alive) or busy",
            upstream_connections.clone(),
        );
        let upstream_connection_waits = Family::<UpstreamLabel, Gauge>::default();
        registry.register(
            "stream_deadline_upstream_connection_waits",
            "Requests waiting for a connection to an upstream at --upstream-connections",
            upstream_connection_waits.clone(),
        );
        let attempts = Counter::default();
        registry.register(
            "stream_deadline_attempts",
            "Upstream attempts, retries included",
            attempts.clone(),
        );
        let histogram = || Histogram::new(BUCKETS);
        let time_to_first_frame = histogram();
        registry.register(
            "stream_deadline_time_to_first_frame_seconds",
            "What the client waited for the first body frame, across retries",
            time_to_first_frame.clone(),
        );
        let longest_idle = histogram();
        registry.register(
            "stream_deadline_longest_idle_seconds",
            "The longest wait between two frames of a response",
            longest_idle.clone(),
        );
        let response_duration = histogram();
        registry.register(
            "stream_deadline_response_duration_seconds",
            "From the request's arrival to the end of its response",
            response_duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "stream_deadline_in_flight",
            "Requests whose response has not ended yet",
            in_flight.clone(),
        );
        let metrics = Metrics {
            registry,
            models: RwLock::new(HashMap::new()),
            other_model: counters(&requests, ENDINGS, |ending| EndingLabel {
                ending: ending.to_owned(),
                model: OTHER_MODEL.to_owned(),
            }),
            requests,
            attempts,
            upstream_attempts,
            upstreams: RwLock::new(HashMap::new()),
            upstream_out,
            upstream_connections,
            upstream_connection_waits,
            time_to_first_frame,
            longest_idle,
            response_duration,
            in_flight,
        };
        metrics.set_models(std::iter::empty());
        metrics
    }

    /// The models with a policy of their own (at start and at each reload): each gets its
    /// own series, every ending at zero from the start so that rates and alerts see them.
    pub fn set_models<'a>(&self, models: impl Iterator<Item = &'a str>) {
        let known = models
            .map(|model| {
                let counters = counters(&self.requests, ENDINGS, |ending| EndingLabel {
                    ending: ending.to_owned(),
                    model: model.to_owned(),
                });
                (model.to_owned(), counters)
            })
            .collect();
        *self.models.write().unwrap_or_else(PoisonError::into_inner) = known;
    }

    /// An upstream the gateway may send to: its series from the start, at zero.
    pub fn upstream(&self, upstream: &str) {
        let counters = counters(&self.upstream_attempts, ATTEMPT_RESULTS, |result| {
            AttemptLabel {
                upstream: upstream.to_owned(),
                result: result.to_owned(),
            }
        });
        self.upstreams
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(upstream.to_owned(), counters);
        let _ = self.upstream_out.get_or_create(&UpstreamLabel {
            upstream: upstream.to_owned(),
        });
    }

    /// One attempt at `upstream` ended with `result` (one of `ATTEMPT_RESULTS`).
    pub fn upstream_attempt(&self, upstream: &str, result: &str) {
        let known = self
            .upstreams
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let index = ATTEMPT_RESULTS.iter().position(|known| *known == result);
        match (known.get(upstream), index) {
            (Some(counters), Some(index)) => counters[index].inc(),
            _ => self
                .upstream_attempts
                .get_or_create(&AttemptLabel {
                    upstream: upstream.to_owned(),
                    result: result.to_owned(),
                })
                .inc(),
        };
    }

    /// Whether `upstream` is left out of first attempts now.
    pub fn upstream_out(&self, upstream: &str, out: bool) {
        self.upstream_out
            .get_or_create(&UpstreamLabel {
                upstream: upstream.to_owned(),
            })
            .set(i64::from(out));
    }

    /// What the gateway's connections to `upstream` are doing now.
    pub fn upstream_connections(&self, upstream: &str, usage: Usage) {
        for (state, count) in [("idle", usage.idle), ("busy", usage.busy)] {
            let label = ConnectionLabel {
                upstream: upstream.to_owned(),
                state: state.to_owned(),
            };
            self.upstream_connections
                .get_or_create(&label)
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let label = UpstreamLabel {
            upstream: upstream.to_owned(),
        };
        self.upstream_connection_waits
            .get_or_create(&label)
            .set(i64::try_from(usage.waiting).unwrap_or(i64::MAX));
    }

    pub fn started(&self) {
        self.in_flight.inc();
    }

    pub fn finished(&self, request: Finished<'_>) {
        self.in_flight.dec();
        let known = self.models.read().unwrap_or_else(PoisonError::into_inner);
        let counters = request
            .model
            .and_then(|model| known.get(model))
            .unwrap_or(&self.other_model);
        match ENDINGS.iter().position(|ending| *ending == request.ending) {
            Some(index) => counters[index].inc(),
            None => {
                let model = request.model.filter(|model| known.contains_key(*model));
                self.requests
                    .get_or_create(&EndingLabel {
                        ending: request.ending.to_owned(),
                        model: model.unwrap_or(OTHER_MODEL).to_owned(),
                    })
                    .inc()
            }
        };
        self.attempts.inc_by(u64::from(request.attempts));
        if let Some(first_frame) = request.time_to_first_frame {
            self.time_to_first_frame.observe(first_frame.as_secs_f64());
        }
        if let Some(idle) = request.longest_idle {
            self.longest_idle.observe(idle.as_secs_f64());
        }
        self.response_duration
            .observe(request.duration.as_secs_f64());
    }

    /// A request answered by the gateway itself (a bad URI, a stalled request body): it
    /// leaves the in-flight count without an ending.
    pub fn not_forwarded(&self) {
        self.in_flight.dec();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The counters of `family` for each of `values` (their series made now, at zero), in order.
fn counters<L, const N: usize>(
    family: &Family<L, Counter>,
    values: [&str; N],
    label: impl Fn(&str) -> L,
) -> [Counter; N]
where
    L: Clone + std::hash::Hash + Eq,
{
    values.map(|value| family.get_or_create(&label(value)).clone())
}
