//! The flags, each also read from `STREAM_DEADLINE_<FLAG>` (a flag on the command line wins).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tower_stream_deadline::{ReleaseUnpolled, StreamDeadlineLayer};

use crate::duration;
use crate::subscriber::LogFormat;
use crate::upstream_url::{DEFAULT_UPSTREAM, Upstream};

const AFTER_HELP: &str = "\
DURATIONS: a number and a unit (500ms, 45s, 1.5s, 2m, 1h); a bare number is seconds; at most 100y.

STREAMED OR NOT: a request whose JSON body has \"stream\": true gets all three budgets and the
first-frame retries, and its first frame is its first token: keep-alive comments, `event: ping`,
a role-only first chunk and opening events (response.created, message_start, ...) do not
count, and are still passed on. Any other request (no \"stream\": true, a body that is not JSON
or over 1 MiB) has the total budget only: a non-streamed answer comes whole, at its end.

Every flag can also be set from the environment: STREAM_DEADLINE_ and the flag in capitals,
dashes as underscores (STREAM_DEADLINE_UPSTREAM, STREAM_DEADLINE_FIRST_FRAME, ...). A flag
given on the command line wins.

A client may shorten (never lengthen) the budgets of its request with headers in the same
grammar: x-request-timeout (the total, all attempts, from its arrival; `x-request-timeout: 5`
is five seconds), x-first-frame-timeout and x-idle-timeout (of a request that asks for a
stream). Envoy's x-envoy-expected-rq-timeout-ms shortens the total too, and the openai and
anthropic SDKs' x-stainless-read-timeout the silences the gateway allows, so that such a
client gets the gateway's error before its own timer fires (both less a margin: a tenth, at
least 250 ms). A value that cannot be read is ignored and named in that request's log line,
at warn.

The upstream's https:// certificates are checked against the system's roots, or against the
PEM bundle named by SSL_CERT_FILE when it is set. One line per request is logged on stderr
(--log-format); RUST_LOG takes targets and levels
(default: stream_deadline_gateway=info,tower_stream_deadline=error,warn).";

/// A deadline gateway in front of an OpenAI-compatible model server: every streamed answer
/// gets a hard time budget, whichever client reads it.
#[derive(Parser, Clone)]
#[command(name = "stream-deadline-gateway", version, after_help = AFTER_HELP)]
pub struct Flags {
    /// Where to serve HTTP/1.1 and h2c (port 0 picks a free port; the address is printed on stdout).
    #[arg(
        long,
        value_name = "ADDR",
        env = "STREAM_DEADLINE_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// A model server: http:// or https://, with an optional path prefix kept before every path
    /// (`user:password@` in it goes as Basic auth where a request has no Authorization). Give it
    /// several times (the environment variable: a comma-separated list) for several replicas.
    // Read as text and checked in `from_args`: clap would echo a bad value, credentials and all.
    #[arg(long = "upstream", value_name = "URL", env = "STREAM_DEADLINE_UPSTREAM", default_value = DEFAULT_UPSTREAM, hide_env_values = true, value_delimiter = ',')]
    upstream_urls: Vec<String>,

    /// The upstreams, in the order given.
    #[arg(skip)]
    pub upstreams: Vec<Upstream>,

    /// Talk HTTP/2 with prior knowledge to an http:// upstream.
    #[arg(long, env = "STREAM_DEADLINE_H2C")]
    pub h2c: bool,

    /// Budget of the whole response, head and body (the only one for an answer that is not streamed).
    #[arg(long, value_name = "DUR", env = "STREAM_DEADLINE_TOTAL", default_value = "45s", value_parser = duration::parse)]
    pub total: Duration,

    /// Budget until the first token of a streamed answer, or `off` (see STREAMED OR NOT below).
    #[arg(long, value_name = "DUR", env = "STREAM_DEADLINE_FIRST_FRAME", default_value = "10s", value_parser = Budget::parse)]
    pub first_frame: Budget,

    /// Longest wait between two tokens of a streamed answer, or `off`.
    #[arg(long, value_name = "DUR", env = "STREAM_DEADLINE_IDLE", default_value = "5s", value_parser = Budget::parse)]
    pub idle: Budget,

    /// Retries of a streamed request stuck before its first token (only request bodies up to 1 MiB are replayed).
    #[arg(
        long,
        value_name = "N",
        env = "STREAM_DEADLINE_RETRIES",
        default_value_t = 2
    )]
    pub retries: usize,

    /// When a streamed request's first token is this late, start another attempt at another
    /// upstream while the first goes on (the first to send a token wins); hedges count against
    /// --retries. `off` by default.
    #[arg(long, value_name = "DUR", env = "STREAM_DEADLINE_HEDGE_AFTER", default_value = "off", value_parser = Budget::parse)]
    pub hedge_after: Budget,

    /// A TOML file with a policy per model (`[models."NAME"]`: upstreams, total, first_frame,
    /// idle, retries, hedge_after), chosen by the `model` of the request's JSON body; read again
    /// on SIGHUP.
    #[arg(long, value_name = "FILE", env = "STREAM_DEADLINE_CONFIG")]
    pub config: Option<std::path::PathBuf>,

    /// Where to serve /metrics, /healthz and /readyz, or `off`.
    #[arg(long, value_name = "ADDR", env = "STREAM_DEADLINE_ADMIN_LISTEN", default_value = "127.0.0.1:9464", value_parser = AdminListen::parse)]
    pub admin_listen: AdminListen,

    /// On SIGTERM or SIGINT, how long responses in flight may still run (a second signal ends it).
    #[arg(long, value_name = "DUR", env = "STREAM_DEADLINE_SHUTDOWN_GRACE", default_value = "30s", value_parser = duration::parse)]
    pub shutdown_grace: Duration,

    /// The most connections open to each http:// upstream (HTTP/1.1); a request beyond waits for
    /// one to be free, within its budgets. Unlimited by default.
    #[arg(long, value_name = "N", env = "STREAM_DEADLINE_UPSTREAM_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub upstream_connections: Option<u32>,

    /// Client connections served at once; more wait in the listen queue.
    #[arg(long, value_name = "N", env = "STREAM_DEADLINE_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Length of the listen queue (the kernel caps it at net.core.somaxconn).
    #[arg(
        long,
        value_name = "N",
        env = "STREAM_DEADLINE_BACKLOG",
        default_value_t = 4096
    )]
    pub backlog: u32,

    /// Threads serving connections; one thread serves them in the order they become ready. One
    /// per core this process may run on by default.
    #[arg(long, value_name = "N", env = "STREAM_DEADLINE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// How long a connection may wait for its next request head, from the accept and from the end
    /// of each response (HTTP/2: for a new stream); a connection that sends none in time is closed.
    #[arg(long, value_name = "DUR", env = "STREAM_DEADLINE_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = duration::parse)]
    pub header_read_timeout: Duration,

    /// Longest wait for the next piece of a request body (answered 408 when nothing was sent yet).
    #[arg(long, value_name = "DUR", env = "STREAM_DEADLINE_REQUEST_BODY_IDLE", default_value = "30s", value_parser = duration::parse)]
    pub request_body_idle: Duration,

    /// How log lines are written: `text`, or `json` (one object per line).
    #[arg(
        long,
        value_name = "FORMAT",
        env = "STREAM_DEADLINE_LOG_FORMAT",
        default_value = "text",
        value_enum
    )]
    pub log_format: LogFormat,

    /// For a request that asks for a stream and has no answer yet after DUR: send the response
    /// head and an SSE comment, one more every DUR until the answer comes (`off`: never).
    #[arg(long, value_name = "DUR", env = "STREAM_DEADLINE_HEARTBEAT", default_value = "off", value_parser = parse_heartbeat)]
    pub heartbeat: Budget,
}

/// A heartbeat interval: a duration above zero, or `off`.
fn parse_heartbeat(text: &str) -> Result<Budget, String> {
    match duration::parse_optional(text)? {
        Some(every) if every.is_zero() => Err(format!(
            "`{text}`: a heartbeat needs an interval above zero (or off)"
        )),
        every => Ok(Budget(every)),
    }
}

impl Flags {
    /// The flags of this process; exits with clap's usage error (status 2) on a bad one.
    pub fn from_args() -> Flags {
        Flags::try_from_iter(std::env::args_os()).unwrap_or_else(|err| err.exit())
    }

    /// The flags in `args` (the program name first).
    pub fn try_from_iter<I, T>(args: I) -> Result<Flags, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut flags = Flags::try_parse_from(args)?;
        let invalid = |why: String| {
            <Flags as clap::CommandFactory>::command()
                .error(clap::error::ErrorKind::ValueValidation, why)
        };
        flags.upstreams = flags
            .upstream_urls
            .iter()
            .map(|url| Upstream::parse(url).map_err(|why| invalid(format!("--upstream {why}"))))
            .collect::<Result<_, _>>()?;
        if flags.upstreams.is_empty() {
            return Err(invalid("--upstream needs a URL".to_owned()));
        }
        if flags.config.is_some() {
            // A file that does not load is a usage error at start; on SIGHUP it is logged.
            crate::policy::Policies::load(&flags, &crate::pool::Members::default())
                .map_err(|why| invalid(format!("--config {why}")))?;
        }
        Ok(flags)
    }

    /// The deadline layer these flags describe (see [`deadline_layer`]).
    pub fn layer(&self) -> StreamDeadlineLayer<ReleaseUnpolled> {
        deadline_layer(self.total, self.first_frame, self.idle)
    }

    /// The upstreams, as shown (never with their credentials).
    pub fn shown_upstreams(&self) -> String {
        let shown: Vec<String> = self.upstreams.iter().map(ToString::to_string).collect();
        shown.join(",")
    }

    /// Whether any upstream is reached over https://.
    pub fn any_https(&self) -> bool {
        self.upstreams.iter().any(|upstream| upstream.https)
    }
}

/// The gateway's deadline layer with these budgets: SSE endings for deadlines and upstream
/// failures, a first event that is an error failing the attempt (so it is retried), the
/// upstream released at the deadline even while a client stops reading, and only tokens
/// counted as progress (not keep-alives nor opening events).
pub fn deadline_layer(
    total: Duration,
    first_frame: Budget,
    idle: Budget,
) -> StreamDeadlineLayer<ReleaseUnpolled> {
    let mut layer = StreamDeadlineLayer::new(total)
        .sse_endings()
        .sse_upstream_errors()
        .sse_first_event_errors()
        .llm_progress()
        .release_unpolled();
    if let Some(first_frame) = first_frame.0 {
        layer = layer.first_frame(first_frame);
    }
    if let Some(idle) = idle.0 {
        layer = layer.idle(idle);
    }
    layer
}

/// A budget that may be `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget(pub Option<Duration>);

impl Budget {
    fn parse(text: &str) -> Result<Budget, String> {
        duration::parse_optional(text).map(Budget)
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(budget) => write!(f, "{budget:?}"),
            None => f.write_str("off"),
        }
    }
}

/// The admin listener's address, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminListen(pub Option<SocketAddr>);

impl AdminListen {
    fn parse(text: &str) -> Result<AdminListen, String> {
        match text.trim() {
            "off" | "none" => Ok(AdminListen(None)),
            text => text
                .parse()
                .map(|addr| AdminListen(Some(addr)))
                .map_err(|err| {
                    format!("`{text}`: {err} (an address such as 127.0.0.1:9464, or off)")
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_keep_their_names_and_defaults() {
        let flags = Flags::try_from_iter(["gw"]).unwrap();
        assert_eq!(flags.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(flags.upstreams.len(), 1);
        assert_eq!(flags.upstreams[0].to_string(), "http://127.0.0.1:8000");
        assert_eq!(flags.total, Duration::from_secs(45));
        assert_eq!(flags.first_frame, Budget(Some(Duration::from_secs(10))));
        assert_eq!(flags.idle, Budget(Some(Duration::from_secs(5))));
        assert_eq!(flags.retries, 2);
        assert_eq!(flags.hedge_after, Budget(None));
        assert_eq!(
            flags.admin_listen,
            AdminListen(Some("127.0.0.1:9464".parse().unwrap()))
        );

        let args = "gw --listen 127.0.0.1:0 --upstream=http://10.0.0.1:8000/base/ --total 2s \
                    --first-frame 500ms --idle off --retries 1 --h2c --admin-listen off";
        let flags = Flags::try_from_iter(args.split_whitespace()).unwrap();
        assert_eq!(flags.listen.port(), 0);
        assert_eq!(flags.total, Duration::from_secs(2));
        assert_eq!(flags.first_frame, Budget(Some(Duration::from_millis(500))));
        assert_eq!(flags.idle, Budget(None));
        assert_eq!((flags.retries, flags.h2c), (1, true));
        assert_eq!(flags.admin_listen, AdminListen(None));
        assert_eq!(flags.heartbeat, Budget(None));
        let heartbeats = Flags::try_from_iter(["gw", "--heartbeat", "400ms"]).unwrap();
        assert_eq!(
            heartbeats.heartbeat,
            Budget(Some(Duration::from_millis(400)))
        );
        assert!(Flags::try_from_iter(["gw", "--heartbeat", "0s"]).is_err());
        let threads = |n: &str| Flags::try_from_iter(["gw", "--worker-threads", n]);
        assert_eq!(threads("1").unwrap().worker_threads, Some(1));
        for refused in ["0", "1025", "-1", "many"] {
            assert!(threads(refused).is_err(), "--worker-threads {refused}");
        }
        let uri = flags.upstreams[0].uri_for(&"/v1/models?x=1".parse().unwrap());
        assert_eq!(uri.unwrap(), "http://10.0.0.1:8000/base/v1/models?x=1");
        assert!(Flags::try_from_iter(["gw", "--bogus"]).is_err());
        assert!(Flags::try_from_iter(["gw", "--upstream", "ftp://x"]).is_err());
    }
}
