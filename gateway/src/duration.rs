//! The one duration grammar of the gateway, shared by its flags and the `x-request-timeout`
//! header: humantime's (`500ms`, `45s`, `1.5s`, `2m`, `1h 30m`), where a bare number is a
//! number of seconds (`5` is `5s`, `0.5` is `500ms`), as in most timeout headers.

use std::time::Duration;

/// The longest duration taken: 100 years (of 365.25 days, as humantime counts them). Longer ones are refused, because deadlines are
/// instants of the monotonic clock (and of hyper's timers), which cannot count that far.
pub const MAX: Duration = Duration::from_secs(100 * 31_557_600);

/// Parses `text` (surrounding spaces ignored); at most [`MAX`].
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bare = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let parsed = if bare {
        humantime::parse_duration(&format!("{text}s"))
    } else {
        humantime::parse_duration(text)
    };
    match parsed {
        Ok(duration) if duration <= MAX => Ok(duration),
        Ok(_) => Err(format!("`{text}` is too long: at most 100 years")),
        Err(err) => Err(format!(
            "`{text}` is not a duration ({err}); try 500ms, 45s, 1.5s, 2m"
        )),
    }
}

/// A budget that may be switched off with `off` (or `none`).
pub fn parse_optional(text: &str) -> Result<Option<Duration>, String> {
    match text.trim() {
        "off" | "none" => Ok(None),
        text => parse(text).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_fractions_and_bare_seconds_parse() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse(" 5 "), Ok(Duration::from_secs(5)));
        assert_eq!(parse("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_optional("off"), Ok(None));
    }

    #[test]
    fn malformed_and_huge_values_are_errors_not_panics() {
        for bad in [
            "",
            "s",
            "5d x",
            "-1s",
            "1..5s",
            "abc",
            ".",
            "99999999999999999999999s",
            "500000000000y",
            "101y",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(parse("100y"), Ok(MAX));
    }
}
