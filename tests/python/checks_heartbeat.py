"""Heartbeats and the budgets a client's headers ask for, with the real SDKs and nginx.

    python checks_heartbeat.py --gateway PATH/TO/stream-deadline-gateway

Starts the upstream, gateways with the flags each check names, and two nginx in front of two
of them (the README's snippet, `gateway/nginx-replicas.conf`, both of its replica addresses
on one gateway, with `proxy_read_timeout 1s` added: nginx's 60 s default, made short enough
to see).

1. nginx (`proxy_read_timeout 1s`) in front of a gateway with `--heartbeat 400ms`, an
   upstream whose first token comes after 3 s: the `openai` SDK gets the whole answer.
2. The same for a LangChain `prompt | ChatOpenAI` chain with `astream()`.
3. The contrast: the same gateway without `--heartbeat` behind the same nginx: nginx's `504`
   after its 1 s, although every budget of the gateway was fine.
4. A stuck upstream behind `--heartbeat 300ms --first-frame 800ms --retries 1`: the head comes
   at 300 ms, both attempts are made behind it, and the SDK raises the deadline's `APIError`
   at 1.6 s.
5. `x-first-frame-timeout: 300ms` retries a stuck-once upstream at 300 ms where the flag says
   5 s; `x-idle-timeout: 300ms` cuts a stalled stream 300 ms after its last token.
6. Longer values than the flags' change nothing: `x-first-frame-timeout: 30s` behind
   `--first-frame 500ms` is retried at 500 ms; `x-idle-timeout: 30s` behind `--idle 1s` is cut
   at 1 s.
7. The `openai` SDK with `timeout=1.5` (so `x-stainless-read-timeout: 1.5`) on a stalled
   stream behind `--idle 10s`: the gateway's `APIError`, not `APITimeoutError`, at 1.25 s
   after the last token; the upstream generator cancelled before 1.5 s of silence; no
   second request from the SDK's retries.
8. The same with the `anthropic` SDK's `messages.stream`.
"""

import sys
import time

import anthropic
import openai

from checks import (
    ANSWER,
    PROMPT,
    STALL_GUARD,
    Servers,
    expect,
    free_port,
    gateway_argument,
    is_deadline_event,
    langchain_llm,
    poll_stats,
    run_async,
    run_checks,
    tagged,
    wait_until_serving,
)
from checks_nginx import address, find_nginx, nginx_conf
from upstream import SLOW_FIRST_TOKEN

# The gateway the header checks (5, 7, 8) go through.
FLAGS = ["--total", "30s", "--first-frame", "5s", "--idle", "10s", "--retries", "1"]
# Behind nginx: a first-frame budget the slow first token fits in, no retry.
FRONTED = ["--total", "10s", "--first-frame", "5s", "--idle", "2s", "--retries", "0"]
HEARTBEAT = 0.4
NGINX_READ_TIMEOUT = "proxy_read_timeout 1s;"
# Check 4's gateway.
STUCK = ["--total", "10s", "--first-frame", "800ms", "--retries", "1", "--heartbeat", "300ms"]
STUCK_HEARTBEAT, STUCK_FIRST_FRAME = 0.3, 0.8
# Check 6's gateway.
SHORT = ["--total", "10s", "--first-frame", "500ms", "--idle", "1s", "--retries", "1"]
# The SDKs' read timeout of checks 7 and 8, and what the gateway keeps of it.
READ_TIMEOUT, SILENCE = 1.5, 1.25
# How late past its time something may come: the error's way through the gateway and the
# SDK, a Python thread's scheduling.
LATE_BY = 0.35


def started_nginx(servers: Servers, gateway_url: str, name: str) -> str:
    """nginx in front of one gateway, with the README's snippet and `proxy_read_timeout 1s`;
    its URL."""
    directory = servers.logs / name
    directory.mkdir()
    listen = f"127.0.0.1:{free_port()}"
    replica = address(gateway_url)
    conf = nginx_conf(directory, replica, replica, listen)
    pass_line = "proxy_pass http://stream_deadline_gateway;"
    expect(conf.count(pass_line) == 1, f"the snippet has no single `{pass_line}`")
    conf = conf.replace(pass_line, f"{pass_line}\n        {NGINX_READ_TIMEOUT}")
    (directory / "nginx.conf").write_text(conf)
    nginx = servers._spawn(
        [find_nginx(), "-p", str(directory), "-c", str(directory / "nginx.conf"), "-e",
         str(directory / "nginx-error.log"), "-g", "daemon off;"],
        f"{name}.log",
    )
    url = f"http://{listen}"
    wait_until_serving(f"{url}/stats", nginx, name)
    return url


class Fronted(Servers):
    """The upstream, the header checks' gateway, and nginx in front of a gateway with
    heartbeats (`with_heartbeat`) and of one without (`without_heartbeat`)."""

    def start(self):
        super().start()
        heartbeat_flags = FRONTED + ["--heartbeat", f"{HEARTBEAT * 1000:.0f}ms"]
        _, heartbeat, _ = self.start_gateway(heartbeat_flags, log_name="gateway-heartbeat.log")
        _, plain, _ = self.start_gateway(FRONTED, log_name="gateway-plain.log")
        self.with_heartbeat = started_nginx(self, heartbeat, "nginx-heartbeat")
        self.without_heartbeat = started_nginx(self, plain, "nginx-plain")


def sdk(origin: str, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{origin}/v1", api_key="sk-local",
                         **{"max_retries": 0, "timeout": STALL_GUARD, **options})


def chat(client: openai.OpenAI, model: str, tag: str, headers=None) -> tuple:
    """Streams `model`: (text, the error that ended it or None, seconds until the head,
    seconds until the end)."""
    text, err, head = "", None, None
    started = time.monotonic()
    try:
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Go on."}], stream=True,
            extra_headers={"x-check": tag, **(headers or {})},
        )
        head = time.monotonic() - started
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
    except Exception as raised:  # noqa: BLE001 - reported by the check
        err = raised
    return text, err, head, time.monotonic() - started


def requests_of(servers: Servers, tag: str, count: int) -> list:
    """The upstream's requests tagged `tag`, once there are `count` of them."""
    found, stats = poll_stats(servers, lambda s: len(tagged(s, "requests", tag)) >= count, 2)
    requests = tagged(stats, "requests", tag)
    expect(len(requests) == count, f"the upstream saw {len(requests)} requests, not {count}")
    return requests


def cancelled_after_last_token(servers: Servers, tag: str) -> float:
    """How long after its last delta the `stalled` generator tagged `tag` was cancelled."""
    cancelled, stats = poll_stats(servers, lambda s: tagged(s, "cancellations", tag), 3)
    expect(cancelled, f"{tag}: the upstream generator was never cancelled")
    stalls = tagged(stats, "stalls", tag)
    expect(len(stalls) == 1, f"{tag}: {len(stalls)} stalls")
    return cancelled[0]["at"] - stalls[0]["last_delta_at"]


def check_openai_through_nginx(servers: Fronted) -> str:
    """1. openai SDK through nginx (1 s read timeout), first token after 3 s: whole answer."""
    text, err, head, took = chat(sdk(servers.with_heartbeat), "slow-first-token", "nginx-hb-openai")
    expect(err is None, f"{type(err).__name__}: {err}")
    expect(text == ANSWER, f"not the whole answer: {text!r}")
    expect(took >= SLOW_FIRST_TOKEN, f"answered after {took:.3f} s, before the first token?")
    expect(head < 1.0, f"the head came after {head:.3f} s, after nginx's read timeout")
    return f"head at +{head:.3f} s, the whole answer ({len(text)} characters) at +{took:.3f} s"


def check_langchain_through_nginx(servers: Fronted) -> str:
    """2. A LangChain chain through nginx, first token after 3 s: whole answer."""
    tag = "nginx-hb-langchain"

    async def run():
        llm = langchain_llm(servers.with_heartbeat, "slow-first-token", tag)
        started, text = time.monotonic(), ""
        async for chunk in (PROMPT | llm).astream({"question": "Go on."}):
            text += chunk.content
        return text, time.monotonic() - started

    (text, took), _ = run_async(run())
    expect(text == ANSWER, f"not the whole answer: {text!r}")
    requests_of(servers, tag, 1)
    return f"the whole answer at +{took:.3f} s"


def check_without_heartbeat(servers: Fronted) -> str:
    """3. Without --heartbeat, the same nginx answers 504 after its 1 s."""
    text, err, _, took = chat(sdk(servers.without_heartbeat), "slow-first-token", "nginx-plain")
    expect(isinstance(err, openai.InternalServerError) and err.status_code == 504,
           f"{type(err).__name__}: {err} (nginx's 504 expected)")
    expect("nginx" in err.response.text, f"not nginx's 504: {err.response.text!r}")
    expect(1.0 <= took < 1.0 + LATE_BY, f"the 504 came after {took:.3f} s")
    return f"nginx's 504 at +{took:.3f} s, {len(text)} characters"


def check_stuck_behind_heartbeats(servers: Fronted) -> str:
    """4. Stuck upstream, --heartbeat 300ms --first-frame 800ms --retries 1."""
    _, url, _ = servers.start_gateway(STUCK, log_name="gateway-stuck.log")
    tag = "hb-stuck"
    text, err, head, took = chat(sdk(url), "stuck-always", tag)
    expect(head is not None, f"no head: {type(err).__name__}: {err}")
    expect(STUCK_HEARTBEAT <= head < STUCK_FIRST_FRAME,
           f"the head came at +{head:.3f} s, not at the heartbeat")
    expect(is_deadline_event(err), f"not the deadline's error: {type(err).__name__}: {err}")
    expect("(2 attempts)" in err.message, err.message)
    ends = 2 * STUCK_FIRST_FRAME
    expect(ends <= took < ends + LATE_BY, f"the error came at +{took:.3f} s, not at {ends} s")
    first, second = requests_of(servers, tag, 2)
    retried = second["at"] - first["at"]
    expect(STUCK_FIRST_FRAME - 0.02 <= retried < STUCK_FIRST_FRAME + LATE_BY,
           f"retried {retried:.3f} s after the first attempt")
    return (f"head at +{head:.3f} s, second attempt {retried:.3f} s after the first, "
            f"APIError at +{took:.3f} s: {err.message!r}")


def check_shorter_headers(servers: Fronted) -> str:
    """5. x-first-frame-timeout: 300ms retries at 300 ms; x-idle-timeout: 300ms cuts at 300 ms."""
    tag = "first-frame-header"
    text, err, _, _ = chat(sdk(servers.gateway_url), "stuck-once", tag,
                           {"x-first-frame-timeout": "300ms"})
    expect(err is None and text == ANSWER, f"{type(err).__name__}: {err}; {text!r}")
    first, second = requests_of(servers, tag, 2)
    retried = second["at"] - first["at"]
    expect(0.3 - 0.02 <= retried < 0.3 + LATE_BY, f"retried after {retried:.3f} s")

    tag = "idle-header"
    _, err, _, _ = chat(sdk(servers.gateway_url), "stalled", tag, {"x-idle-timeout": "300ms"})
    expect(is_deadline_event(err), f"not the deadline's error: {type(err).__name__}: {err}")
    expect("idle budget of 300ms" in err.message, err.message)
    cut = cancelled_after_last_token(servers, tag)
    expect(0.3 <= cut < 0.3 + LATE_BY, f"cut {cut:.3f} s after the last token")
    return (f"retried after {retried:.3f} s (flag: 5 s); stalled stream cut {cut:.3f} s "
            "after its last token (flag: 10 s)")


def check_longer_headers(servers: Fronted) -> str:
    """6. Longer values than the flags' change nothing."""
    _, url, _ = servers.start_gateway(SHORT, log_name="gateway-short.log")
    tag = "longer-first-frame"
    text, err, _, _ = chat(sdk(url), "stuck-once", tag, {"x-first-frame-timeout": "30s"})
    expect(err is None and text == ANSWER, f"{type(err).__name__}: {err}; {text!r}")
    first, second = requests_of(servers, tag, 2)
    retried = second["at"] - first["at"]
    expect(0.5 - 0.02 <= retried < 0.5 + LATE_BY, f"retried after {retried:.3f} s")

    tag = "longer-idle"
    _, err, _, _ = chat(sdk(url), "stalled", tag, {"x-idle-timeout": "30s"})
    expect(is_deadline_event(err) and "idle budget of 1s" in err.message,
           f"{type(err).__name__}: {err}")
    cut = cancelled_after_last_token(servers, tag)
    expect(1.0 <= cut < 1.0 + LATE_BY, f"cut {cut:.3f} s after the last token")
    return (f"retried after {retried:.3f} s, cut {cut:.3f} s after the last token: "
            "the flags' budgets")


def check_openai_read_timeout(servers: Fronted) -> str:
    """7. openai SDK, timeout=1.5, stalled stream behind --idle 10s: the gateway's APIError."""
    tag = "openai-read-timeout"
    # The SDK's default retries: a timeout of its own would send the request again.
    client = openai.OpenAI(base_url=f"{servers.gateway_url}/v1", api_key="sk-local",
                           timeout=READ_TIMEOUT)
    _, err, _, _ = chat(client, "stalled", tag)
    expect(not isinstance(err, openai.APITimeoutError), f"the SDK's own timeout: {err!r}")
    expect(is_deadline_event(err), f"not the deadline's error: {type(err).__name__}: {err}")
    expect(f"idle budget of {SILENCE}s" in err.message, err.message)
    cut = cancelled_after_last_token(servers, tag)
    expect(SILENCE <= cut < READ_TIMEOUT, f"cut {cut:.3f} s after the last token")
    requests_of(servers, tag, 1)
    return (f"APIError {err.message!r}; upstream cancelled {cut:.3f} s after its last "
            "token; one request")


def check_anthropic_read_timeout(servers: Fronted) -> str:
    """8. anthropic SDK, timeout=1.5, stalled stream behind --idle 10s: the gateway's error."""
    tag = "anthropic-read-timeout"
    client = anthropic.Anthropic(base_url=servers.gateway_url, api_key="sk-ant-local",
                                 timeout=READ_TIMEOUT)
    err = None
    try:
        with client.messages.stream(
            model="stalled", max_tokens=1024, messages=[{"role": "user", "content": "Go on."}],
            extra_headers={"x-check": tag},
        ) as stream:
            for _ in stream.text_stream:
                pass
    except Exception as raised:  # noqa: BLE001 - reported by the check
        err = raised
    expect(not isinstance(err, anthropic.APITimeoutError), f"the SDK's own timeout: {err!r}")
    expect(isinstance(err, anthropic.APIStatusError) and err.type == "timeout",
           f"not the gateway's error event: {type(err).__name__}: {err}")
    message = err.body.get("error", {}).get("message", "") if isinstance(err.body, dict) else ""
    expect(f"idle budget of {SILENCE}s" in message, message)
    cut = cancelled_after_last_token(servers, tag)
    expect(SILENCE <= cut < READ_TIMEOUT, f"cut {cut:.3f} s after the last token")
    requests_of(servers, tag, 1)
    return f"{type(err).__name__} {message!r}; upstream cancelled {cut:.3f} s after its last token"


def main() -> int:
    servers = Fronted(gateway_argument(__doc__.splitlines()[0]), gateway_flags=FLAGS)
    checks = [
        ("1 openai SDK through nginx (1 s) with --heartbeat 400ms: the whole answer",
         check_openai_through_nginx),
        ("2 LangChain astream() through nginx with --heartbeat: the whole answer",
         check_langchain_through_nginx),
        ("3 without --heartbeat: nginx's 504", check_without_heartbeat),
        ("4 stuck upstream behind heartbeats: head, two attempts, the deadline's APIError",
         check_stuck_behind_heartbeats),
        ("5 x-first-frame-timeout and x-idle-timeout shorten the flags", check_shorter_headers),
        ("6 longer header values change nothing", check_longer_headers),
        ("7 openai SDK timeout=1.5: the gateway's APIError first", check_openai_read_timeout),
        ("8 anthropic SDK timeout=1.5: the gateway's error first", check_anthropic_read_timeout),
    ]
    return run_checks(servers, checks, " ".join(FLAGS))


if __name__ == "__main__":
    sys.exit(main())
