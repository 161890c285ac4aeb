//! Budgets carried in headers: `grpc-timeout` and one plain duration header, parsed from the
//! request and written onto the request passed inward.
//!
//! Values come from the network, so parsing is strict and total: anything but a well-formed
//! value is `None`, and the caller ignores it (with a `tracing` event). A header can only
//! shorten a budget, never lengthen it, so a client cannot buy more server time.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The gRPC request header that carries a timeout.
pub(crate) const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// At most this many digits, as the gRPC wire format says (`TimeoutValue`).
const GRPC_MAX_DIGITS: usize = 8;
const GRPC_MAX_VALUE: u64 = 99_999_999;

/// Which timeout headers a layer reads from requests and writes onto the requests it passes
/// inward. Everything is off by default.
#[derive(Clone, Debug, Default)]
pub(crate) struct HeaderRules {
    pub(crate) read_grpc: bool,
    pub(crate) read_plain: Option<HeaderName>,
    pub(crate) forward_grpc: bool,
    pub(crate) forward_plain: Option<HeaderName>,
    pub(crate) forward_margin: Duration,
}

impl HeaderRules {
    /// The shortest budget the request's headers ask for; bad values are ignored, with an
    /// event.
    pub(crate) fn read(&self, headers: &HeaderMap) -> Option<Duration> {
        let grpc_timeout = GRPC_TIMEOUT;
        let grpc = self.read_grpc.then_some((Format::Grpc, &grpc_timeout));
        let plain = self.read_plain.as_ref().map(|name| (Format::Plain, name));
        [grpc, plain]
            .into_iter()
            .flatten()
            .filter_map(|(format, name)| match format.read(headers, name) {
                Ok(budget) => budget,
                Err(why) => {
                    tracing::debug!(
                        target: "tower_stream_deadline",
                        header = %name,
                        ?why,
                        "ignored a timeout header"
                    );
                    None
                }
            })
            .min()
    }

    /// Writes the `remaining` budget, less the margin, onto a request passed inward,
    /// replacing what the headers said.
    pub(crate) fn forward(&self, headers: &mut HeaderMap, remaining: Duration) {
        let remaining = remaining.saturating_sub(self.forward_margin);
        if self.forward_grpc {
            headers.insert(GRPC_TIMEOUT, Format::Grpc.encode(remaining));
        }
        if let Some(name) = &self.forward_plain {
            headers.insert(name.clone(), Format::Plain.encode(remaining));
        }
    }

    pub(crate) fn forwards(&self) -> bool {
        self.forward_grpc || self.forward_plain.is_some()
    }

    pub(crate) fn reads(&self) -> bool {
        self.read_grpc || self.read_plain.is_some()
    }
}

/// Where a timeout header is found and how its value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// `grpc-timeout`: 1 to 8 ASCII digits and a unit of `H M S m u n`.
    Grpc,
    /// A plain duration: ASCII digits, then `ms`, `s`, `m` or `h`; bare digits are milliseconds.
    Plain,
}

/// Why a header was ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ignored {
    Repeated,
    Malformed,
}

impl Format {
    /// Parses one header value.
    pub(crate) fn parse(self, value: &[u8]) -> Option<Duration> {
        match self {
            Format::Grpc => parse_grpc(value),
            Format::Plain => parse_plain(value),
        }
    }

    /// Writes `remaining`, rounded down so it never promises more time than there is.
    pub(crate) fn encode(self, remaining: Duration) -> HeaderValue {
        let text = match self {
            Format::Grpc => encode_grpc(remaining),
            Format::Plain => format!("{}ms", remaining.as_millis()),
        };
        HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("0"))
    }

    /// The budget in `headers[name]`, if there is exactly one well-formed value.
    pub(crate) fn read(
        self,
        headers: &HeaderMap,
        name: &HeaderName,
    ) -> Result<Option<Duration>, Ignored> {
        let mut values = headers.get_all(name).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(Ignored::Repeated);
        }
        self.parse(value.as_bytes())
            .map(Some)
            .ok_or(Ignored::Malformed)
    }
}

fn parse_grpc(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.len() > GRPC_MAX_DIGITS {
        return None;
    }
    let n = parse_digits(digits)?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

fn parse_plain(value: &[u8]) -> Option<Duration> {
    let split = value
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let n = parse_digits(digits)?;
    match unit {
        b"" | b"ms" => Some(Duration::from_millis(n)),
        b"s" => Some(Duration::from_secs(n)),
        b"m" => n.checked_mul(60).map(Duration::from_secs),
        b"h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// 1 or more ASCII digits, no sign, no space, fitting in a `u64`.
fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// The finest unit whose value fits in 8 digits, rounded down.
fn encode_grpc(remaining: Duration) -> String {
    let nanos = remaining.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (per, unit) in units {
        let value = nanos / per;
        if value <= u128::from(GRPC_MAX_VALUE) {
            return format!("{value}{unit}");
        }
    }
    format!("{GRPC_MAX_VALUE}H")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grpc_timeout_reads_every_unit_at_eight_digits() {
        let max = 99_999_999;
        assert_eq!(
            parse_grpc(b"99999999H"),
            Some(Duration::from_secs(max * 3600))
        );
        assert_eq!(
            parse_grpc(b"99999999M"),
            Some(Duration::from_secs(max * 60))
        );
        assert_eq!(parse_grpc(b"99999999S"), Some(Duration::from_secs(max)));
        assert_eq!(parse_grpc(b"99999999m"), Some(Duration::from_millis(max)));
        assert_eq!(parse_grpc(b"99999999u"), Some(Duration::from_micros(max)));
        assert_eq!(parse_grpc(b"99999999n"), Some(Duration::from_nanos(max)));
        assert_eq!(parse_grpc(b"0S"), Some(Duration::ZERO));
        assert_eq!(parse_grpc(b"00000001m"), Some(Duration::from_millis(1)));
    }

    #[test]
    fn grpc_timeout_rejects_what_the_wire_format_does_not_allow() {
        for bad in [
            &b""[..],
            b"S",
            b"100000000S", // nine digits
            b"+5S",
            b"-5S",
            b" 5S",
            b"5 S",
            b"5s",
            b"5",
            b"5SS",
            b"1.5S",
            "５S".as_bytes(),
            b"18446744073709551616n",
        ] {
            assert_eq!(parse_grpc(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn plain_durations_read_units_and_bare_milliseconds() {
        assert_eq!(parse_plain(b"45s"), Some(Duration::from_secs(45)));
        assert_eq!(parse_plain(b"500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_plain(b"1500"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_plain(b"2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_plain(b"1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_plain(b"0"), Some(Duration::ZERO));
        for bad in [
            &b""[..],
            b"s",
            b"-1s",
            b"+1s",
            b"1.5s",
            b"1 s",
            b"1S",
            b"1sec",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_plain(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        // The product overflows u64 seconds: ignored, not wrapped.
        assert_eq!(parse_plain(b"18446744073709551615h"), None);
    }

    #[test]
    fn grpc_timeout_is_written_in_the_finest_unit_that_fits_rounded_down() {
        let enc = |d| encode_grpc(d);
        assert_eq!(enc(Duration::ZERO), "0n");
        assert_eq!(enc(Duration::from_nanos(99_999_999)), "99999999n");
        assert_eq!(enc(Duration::from_nanos(100_000_000)), "100000u");
        assert_eq!(enc(Duration::from_nanos(1_999_999_999)), "1999999u");
        assert_eq!(enc(Duration::from_secs(45)), "45000000u");
        assert_eq!(enc(Duration::from_secs(100)), "100000m");
        assert_eq!(enc(Duration::from_secs(100_000)), "100000S");
        assert_eq!(enc(Duration::from_secs(100_000_000)), "1666666M");
        assert_eq!(enc(Duration::MAX), "99999999H");
    }

    #[test]
    fn the_shortest_well_formed_header_wins_and_bad_ones_are_ignored() {
        let rules = HeaderRules {
            read_grpc: true,
            read_plain: Some(HeaderName::from_static("x-timeout")),
            ..HeaderRules::default()
        };
        let mut headers = HeaderMap::new();
        assert_eq!(rules.read(&headers), None);
        headers.insert(GRPC_TIMEOUT, HeaderValue::from_static("5S"));
        headers.insert("x-timeout", HeaderValue::from_static("2s"));
        assert_eq!(rules.read(&headers), Some(Duration::from_secs(2)));
        headers.insert("x-timeout", HeaderValue::from_static("soon"));
        assert_eq!(rules.read(&headers), Some(Duration::from_secs(5)));
        headers.insert(GRPC_TIMEOUT, HeaderValue::from_bytes(b"5\xffS").unwrap());
        assert_eq!(rules.read(&headers), None);
    }

    #[test]
    fn forwarding_writes_the_remaining_budget_less_the_margin() {
        let rules = HeaderRules {
            forward_grpc: true,
            forward_plain: Some(HeaderName::from_static("x-timeout")),
            forward_margin: Duration::from_millis(100),
            ..HeaderRules::default()
        };
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_TIMEOUT, HeaderValue::from_static("1H"));
        rules.forward(&mut headers, Duration::from_millis(1_600));
        assert_eq!(headers[GRPC_TIMEOUT], "1500000u");
        assert_eq!(headers["x-timeout"], "1500ms");
        rules.forward(&mut headers, Duration::from_millis(50));
        assert_eq!(headers[GRPC_TIMEOUT], "0n");
    }

    #[test]
    fn repeated_headers_are_ignored_and_missing_ones_are_none() {
        let mut headers = HeaderMap::new();
        assert_eq!(Format::Grpc.read(&headers, &GRPC_TIMEOUT), Ok(None));
        headers.append(GRPC_TIMEOUT, HeaderValue::from_static("1S"));
        assert_eq!(
            Format::Grpc.read(&headers, &GRPC_TIMEOUT),
            Ok(Some(Duration::from_secs(1)))
        );
        headers.append(GRPC_TIMEOUT, HeaderValue::from_static("2S"));
        assert_eq!(
            Format::Grpc.read(&headers, &GRPC_TIMEOUT),
            Err(Ignored::Repeated)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..24)) {
            let _ = parse_grpc(&bytes);
            let _ = parse_plain(&bytes);
        }

        #[test]
        fn encoding_rounds_down_and_parses_back(nanos in any::<u64>()) {
            let remaining = Duration::from_nanos(nanos);
            let value = Format::Grpc.encode(remaining);
            let parsed = parse_grpc(value.as_bytes()).expect("we write what we read");
            prop_assert!(parsed <= remaining);
            prop_assert!(value.len() <= GRPC_MAX_DIGITS + 1);

            let plain = Format::Plain.encode(remaining);
            let parsed = parse_plain(plain.as_bytes()).expect("we write what we read");
            prop_assert!(parsed <= remaining && remaining - parsed < Duration::from_millis(1));
        }

        #[test]
        fn well_formed_grpc_values_parse_exactly(n in 0u64..=99_999_999, unit in prop::sample::select(vec!['H', 'M', 'S', 'm', 'u', 'n'])) {
            let parsed = parse_grpc(format!("{n}{unit}").as_bytes()).unwrap();
            let per_unit = match unit { 'H' => 3_600_000_000_000u128, 'M' => 60_000_000_000, 'S' => 1_000_000_000, 'm' => 1_000_000, 'u' => 1_000, _ => 1 };
            prop_assert_eq!(parsed.as_nanos(), u128::from(n) * per_unit);
        }
    }
}
