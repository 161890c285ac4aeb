//! The budgets a client asks for in its request's headers, which can only shorten the
//! gateway's own:
//!
//! - `x-request-timeout` (the flags' grammar): the total, for all attempts, from the
//!   request's arrival;
//! - `x-envoy-expected-rq-timeout-ms` (whole milliseconds): Envoy in front says how long its
//!   route timeout leaves; another total, ending [early enough](within) for the gateway's
//!   answer to get through Envoy before Envoy gives up;
//! - `x-first-frame-timeout`, `x-idle-timeout` (the flags' grammar, or `off` for no
//!   change): each attempt's wait for its first token, and the longest silence between
//!   tokens, of a request that asks for a stream;
//! - `x-stainless-read-timeout` (seconds, as the `openai` and `anthropic` SDKs send their
//!   read timeout: `600.0`): the client gives up after that long without a byte. So the
//!   silences the gateway allows end [early enough](within) for the client to get the
//!   gateway's error event (or `504`), and for the upstream to be released, before the
//!   client's own timer fires: the idle budget, and the wait for the first token across all
//!   attempts (unless heartbeats come often enough to keep the client's timer from running
//!   out), or, for a request that does not ask for a stream and so gets its answer
//!   whole, the total.
//!
//! A value that cannot be read is ignored, and named in the request's log line at `warn`.

use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;
use tower_stream_deadline::{Deadline, RequestBudgets};

use crate::log::RequestLog;
use crate::policy::Policy;
use crate::stream_request;

pub const REQUEST_TIMEOUT: &str = "x-request-timeout";
pub const ENVOY_EXPECTED_TIMEOUT: &str = "x-envoy-expected-rq-timeout-ms";
pub const FIRST_FRAME_TIMEOUT: &str = "x-first-frame-timeout";
pub const IDLE_TIMEOUT: &str = "x-idle-timeout";
pub const READ_TIMEOUT: &str = "x-stainless-read-timeout";

/// Every header a client's budgets are read from.
const NAMES: [&str; 5] = [
    REQUEST_TIMEOUT,
    ENVOY_EXPECTED_TIMEOUT,
    FIRST_FRAME_TIMEOUT,
    IDLE_TIMEOUT,
    READ_TIMEOUT,
];

/// The least time kept between the end of a silence the gateway allows and a client's
/// (or Envoy's) timer: the error event's way to the client through a proxy or two, and a
/// busy client's event loop, fit in it.
pub const MIN_MARGIN: Duration = Duration::from_millis(250);

/// How much of a client's timeout the gateway uses: all but a tenth of it, and at least
/// [`MIN_MARGIN`] less (yet at least half of it, for timeouts under half a second).
///
/// The tenth grows with the timeout because so do the client's own lags (a loop busy with
/// other work, a GC pause); `600.0`, the SDKs' default, leaves 540 s, far beyond the
/// default budgets.
pub fn within(timeout: Duration) -> Duration {
    let margin = (timeout / 10).max(MIN_MARGIN).min(timeout / 2);
    timeout - margin
}

/// The budgets of the gateway that a client's headers may shorten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Configured {
    pub total: Duration,
    pub first_frame: Option<Duration>,
    pub idle: Option<Duration>,
    pub retries: usize,
    /// How often heartbeats go to a stream waiting for its first token, if they do.
    pub heartbeat: Option<Duration>,
}

impl Configured {
    /// A policy's budgets.
    pub fn from_policy(policy: &Policy) -> Self {
        Configured {
            total: policy.total,
            first_frame: policy.first_frame.0,
            idle: policy.idle.0,
            retries: policy.retries,
            heartbeat: policy.heartbeat,
        }
    }
}

/// What one request's headers ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientBudgets {
    /// `x-request-timeout` and Envoy's time left, from the request's arrival.
    deadline: Option<Deadline>,
    first_frame: Option<Duration>,
    idle: Option<Duration>,
    /// The longest silence the client's read timeout allows, its margin taken off.
    silence: Option<Duration>,
}

impl ClientBudgets {
    /// Reads the headers of a request that arrived at `arrived`; a value it cannot read is
    /// named in `log`.
    pub fn read(headers: &HeaderMap, arrived: Instant, log: &RequestLog) -> Self {
        let (budgets, ignored) = Self::parse(headers, arrived);
        for why in ignored {
            log.warn(why);
        }
        budgets
    }

    fn parse(headers: &HeaderMap, arrived: Instant) -> (Self, Vec<String>) {
        let mut ignored = Vec::new();
        // Most requests carry none of them: one pass over the names tells, where a lookup
        // by a name given as text parses and hashes it, five times.
        let any = headers.keys().any(|name| NAMES.contains(&name.as_str()));
        let mut read = |name: &str, parse: fn(&str) -> Result<Option<Duration>, String>| {
            if !any {
                return None;
            }
            let value = headers.get(name)?;
            let parsed = value
                .to_str()
                .map_err(|_| "not visible ASCII".to_owned())
                .and_then(parse);
            parsed
                .map_err(|why| ignored.push(format!("ignored {name}: {value:?}: {why}")))
                .ok()
                .flatten()
        };
        let total = read(REQUEST_TIMEOUT, |text| {
            crate::duration::parse(text).map(Some)
        });
        let envoy = read(ENVOY_EXPECTED_TIMEOUT, |text| {
            let ms = text.trim().parse::<u64>();
            match ms.map(Duration::from_millis) {
                Ok(left) if left <= crate::duration::MAX => Ok(Some(within(left))),
                Ok(_) => Err(format!("`{text}` is too long: at most 100 years")),
                Err(_) => Err(format!("`{text}` is not a whole number of milliseconds")),
            }
        });
        let first_frame = read(FIRST_FRAME_TIMEOUT, crate::duration::parse_optional);
        let idle = read(IDLE_TIMEOUT, crate::duration::parse_optional);
        let silence = read(READ_TIMEOUT, |text| {
            crate::duration::parse(text).map(|timeout| Some(within(timeout)))
        });
        let deadline = [total, envoy]
            .into_iter()
            .flatten()
            .filter_map(|budget| arrived.checked_add(budget))
            .min()
            .map(Deadline::new);
        let budgets = ClientBudgets {
            deadline,
            first_frame,
            idle,
            silence,
        };
        (budgets, ignored)
    }

    /// The total deadline of all the request's attempts, if the client set one.
    pub fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }

    /// The request's total budget from its arrival: the gateway's `total`, or less.
    pub fn total(&self, total: Duration, arrived: Instant) -> Duration {
        self.deadline.map_or(total, |deadline| {
            deadline.at().saturating_duration_since(arrived).min(total)
        })
    }

    /// The budgets of each attempt of the request, which asks for a stream or not.
    ///
    /// A request that does not ask for a stream keeps the first-frame and idle budgets
    /// off (see [`stream_request`]); its answer comes whole, so the client's read timeout
    /// bounds its total.
    pub fn request_budgets(&self, configured: &Configured, streamed: bool) -> RequestBudgets {
        if !streamed {
            let budgets = stream_request::total_only();
            return match self.silence {
                Some(silence) if silence < configured.total => budgets.total(silence),
                _ => budgets,
            };
        }
        // Heartbeats keep a client's read timer from running out while the first token is
        // awaited, if they come often enough.
        let heartbeats_in_time = configured
            .heartbeat
            .zip(self.silence)
            .is_some_and(|(every, silence)| every <= silence);
        // The wait for a first token is one first-frame budget per attempt: all of them fit
        // in the client's silence.
        let attempts = u32::try_from(configured.retries.saturating_add(1)).unwrap_or(u32::MAX);
        let first_frame_wait = self
            .silence
            .filter(|_| !heartbeats_in_time)
            .map(|silence| silence / attempts);
        let first_frame = shortest([configured.first_frame, self.first_frame, first_frame_wait]);
        let idle = shortest([configured.idle, self.idle, self.silence]);
        let mut budgets = RequestBudgets::new();
        if let Some(first_frame) = first_frame {
            budgets = budgets.first_frame(first_frame);
        }
        if let Some(idle) = idle {
            budgets = budgets.idle(idle);
        }
        budgets
    }
}

fn shortest<const N: usize>(budgets: [Option<Duration>; N]) -> Option<Duration> {
    budgets.into_iter().flatten().min()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Configured = Configured {
        total: Duration::from_secs(45),
        first_frame: Some(Duration::from_secs(10)),
        idle: Some(Duration::from_secs(5)),
        retries: 2,
        heartbeat: None,
    };

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    fn parse(pairs: &[(&str, &str)]) -> (ClientBudgets, Vec<String>) {
        ClientBudgets::parse(&headers(pairs), Instant::now())
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn the_margin_is_a_tenth_at_least_250ms_at_most_half() {
        assert_eq!(within(Duration::from_secs(600)), Duration::from_secs(540));
        assert_eq!(within(Duration::from_secs(10)), Duration::from_secs(9));
        assert_eq!(within(ms(1500)), ms(1250));
        assert_eq!(within(ms(300)), ms(150));
        assert_eq!(within(Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_totals_take_the_earliest_of_the_headers_from_the_arrival() {
        let arrived = Instant::now();
        let (budgets, ignored) = ClientBudgets::parse(
            &headers(&[(REQUEST_TIMEOUT, "20s"), (ENVOY_EXPECTED_TIMEOUT, "15000")]),
            arrived,
        );
        assert!(ignored.is_empty(), "{ignored:?}");
        // Envoy's 15 s less its margin of 1.5 s.
        let at = arrived + ms(13_500);
        assert_eq!(budgets.deadline(), Some(Deadline::new(at)));
        assert_eq!(budgets.total(DEFAULTS.total, arrived), ms(13_500));
        assert_eq!(
            budgets.total(Duration::from_secs(5), arrived),
            Duration::from_secs(5),
            "never longer than the gateway's"
        );
    }

    #[test]
    fn first_frame_and_idle_headers_only_shorten_the_configured_budgets() {
        let (budgets, _) = parse(&[(FIRST_FRAME_TIMEOUT, "300ms"), (IDLE_TIMEOUT, "0.3")]);
        let expected = RequestBudgets::new().first_frame(ms(300)).idle(ms(300));
        assert_eq!(budgets.request_budgets(&DEFAULTS, true), expected);

        let (budgets, ignored) = parse(&[(FIRST_FRAME_TIMEOUT, "1m"), (IDLE_TIMEOUT, "off")]);
        assert!(ignored.is_empty(), "{ignored:?}");
        let configured = RequestBudgets::new()
            .first_frame(Duration::from_secs(10))
            .idle(Duration::from_secs(5));
        assert_eq!(budgets.request_budgets(&DEFAULTS, true), configured);

        // A budget the flags switch off can still be set by a client.
        let off = Configured {
            first_frame: None,
            idle: None,
            ..DEFAULTS
        };
        let (budgets, _) = parse(&[(IDLE_TIMEOUT, "2s")]);
        let expected = RequestBudgets::new().idle(Duration::from_secs(2));
        assert_eq!(budgets.request_budgets(&off, true), expected);
    }

    #[test]
    fn a_request_that_does_not_ask_for_a_stream_keeps_first_frame_and_idle_off() {
        let (budgets, _) = parse(&[(FIRST_FRAME_TIMEOUT, "300ms"), (IDLE_TIMEOUT, "300ms")]);
        assert_eq!(
            budgets.request_budgets(&DEFAULTS, false),
            stream_request::total_only()
        );
        // Its answer comes whole: the client's read timeout bounds the wait for all of it.
        let (budgets, _) = parse(&[(READ_TIMEOUT, "1.5")]);
        assert_eq!(
            budgets.request_budgets(&DEFAULTS, false),
            stream_request::total_only().total(ms(1250))
        );
    }

    #[test]
    fn the_sdks_default_read_timeout_changes_nothing_under_the_default_budgets() {
        let (budgets, ignored) = parse(&[(READ_TIMEOUT, "600.0")]);
        assert!(ignored.is_empty(), "{ignored:?}");
        let (none, _) = parse(&[]);
        for streamed in [true, false] {
            assert_eq!(
                budgets.request_budgets(&DEFAULTS, streamed),
                none.request_budgets(&DEFAULTS, streamed),
                "streamed: {streamed}"
            );
        }
    }

    #[test]
    fn a_short_read_timeout_bounds_the_silences_before_the_clients_timer() {
        let (budgets, _) = parse(&[(READ_TIMEOUT, "1.5")]);
        // Three attempts of 1.25 s / 3 fit before the client's timer; the idle budget too.
        let expected = RequestBudgets::new()
            .first_frame(ms(1250) / 3)
            .idle(ms(1250));
        assert_eq!(budgets.request_budgets(&DEFAULTS, true), expected);

        // Heartbeats often enough keep its timer alive before the first token; not after.
        let heartbeats = Configured {
            heartbeat: Some(ms(400)),
            ..DEFAULTS
        };
        let expected = RequestBudgets::new()
            .first_frame(Duration::from_secs(10))
            .idle(ms(1250));
        assert_eq!(budgets.request_budgets(&heartbeats, true), expected);
        let rare = Configured {
            heartbeat: Some(Duration::from_secs(2)),
            ..DEFAULTS
        };
        assert_eq!(
            budgets.request_budgets(&rare, true),
            budgets.request_budgets(&DEFAULTS, true)
        );
    }

    #[test]
    fn unreadable_values_are_ignored_and_named() {
        let (budgets, ignored) = parse(&[
            (REQUEST_TIMEOUT, "soonish"),
            (ENVOY_EXPECTED_TIMEOUT, "1.5"),
            (FIRST_FRAME_TIMEOUT, "-1s"),
            (IDLE_TIMEOUT, "101y"),
            (READ_TIMEOUT, "None"),
        ]);
        assert_eq!(budgets, ClientBudgets::default());
        assert_eq!(ignored.len(), 5, "{ignored:?}");
        assert!(ignored[0].starts_with("ignored x-request-timeout: \"soonish\": "));
        assert!(ignored[1].contains("not a whole number of milliseconds"));
        let mut huge = HeaderMap::new();
        huge.insert(
            ENVOY_EXPECTED_TIMEOUT,
            http::HeaderValue::from_static("18446744073709551615"),
        );
        huge.insert(
            READ_TIMEOUT,
            http::HeaderValue::from_bytes(b"\xff").unwrap(),
        );
        let (budgets, ignored) = ClientBudgets::parse(&huge, Instant::now());
        assert_eq!(budgets, ClientBudgets::default());
        assert!(ignored[0].contains("too long"), "{ignored:?}");
        assert!(ignored[1].contains("not visible ASCII"), "{ignored:?}");
    }
}
