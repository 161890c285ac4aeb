//! The gateway's Prometheus metrics, under fixed names that dashboards can rely on.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndingLabel {
    /// `completed`, `deadline_total`, `deadline_first_frame`, `deadline_idle`,
    /// `upstream_error` or `dropped`.
    ending: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<EndingLabel, Counter>,
    attempts: Counter,
    time_to_first_frame: Histogram,
    longest_idle: Histogram,
    response_duration: Histogram,
    in_flight: Gauge,
}

/// What one request did, as the metrics count it.
pub struct Finished<'a> {
    pub ending: &'a str,
    pub attempts: u32,
    pub time_to_first_frame: Option<Duration>,
    pub longest_idle: Option<Duration>,
    pub duration: Duration,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<EndingLabel, Counter>::default();
        // Every ending from the start, at zero, so that rates and alerts see each series.
        for ending in ENDINGS {
            let _ = requests.get_or_create(&EndingLabel {
                ending: ending.to_owned(),
            });
        }
        registry.register(
            "stream_deadline_requests",
            "Requests forwarded, by how their response ended",
            requests.clone(),
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
        Metrics {
            registry,
            requests,
            attempts,
            time_to_first_frame,
            longest_idle,
            response_duration,
            in_flight,
        }
    }

    pub fn started(&self) {
        self.in_flight.inc();
    }

    pub fn finished(&self, request: Finished<'_>) {
        self.in_flight.dec();
        self.requests
            .get_or_create(&EndingLabel {
                ending: request.ending.to_owned(),
            })
            .inc();
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
