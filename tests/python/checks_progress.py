"""What counts as progress through the gateway, as the real OpenAI and Anthropic clients see it.

    python checks_progress.py --gateway PATH/TO/stream-deadline-gateway

Starts `upstream.py` and the gateway in front of it, as `checks.py` does, with
`--total 4s --first-frame 1s --idle 1s --retries 1`, then checks:

1. A non-streamed chat completion (the SDK's default, no `stream=True`) answered after
   1.5 s, longer than the first-frame budget and inside the total: the whole answer, from
   one attempt at the upstream.
2. A non-streamed chat completion that never comes: `504` naming the total budget, at 4 s,
   after one attempt.
3. A streamed chat completion whose upstream sends only `: keep-alive` comments every
   200 ms (vLLM while a request waits in its queue): no first token, so the gateway retries
   it at 1 s and answers `504` naming the first-frame budget at 2 s, after two attempts.
4. Three tokens, then only keep-alives (chat: `: keep-alive` comments; Anthropic Messages:
   `event: ping`): the API error naming the idle budget, 1 s after the last token.
5. The opening events (Responses: `response.created` ... `content_part.added`; Messages:
   `message_start`, `content_block_start`), then only keep-alives: no first token, retried at
   1 s, `504` naming the first-frame budget at 2 s.

A gateway that gives every request the first-frame budget fails 1 and 2 (to that budget a
late answer is a stuck one: cut and retried); one that counts every frame as progress fails
3 to 5 (keep-alives and opening events keep the budgets from firing until the total).
"""

import sys
import time
from pathlib import Path

import anthropic
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True  # no __pycache__ next to the sources
from checks import (  # noqa: E402
    Servers,
    expect,
    gateway_argument,
    poll_stats,
    run_checks,
    tagged,
    upstream_stats,
)
from checks_endings import openai_client, read  # noqa: E402
from upstream import ANSWER, LATE_ANSWER, STALL_AFTER  # noqa: E402

TOTAL = 4.0
FIRST_FRAME = 1.0
IDLE = 1.0
RETRIES = 1
GATEWAY_FLAGS = ["--total", "4s", "--first-frame", "1s", "--idle", "1s", "--retries", "1"]
# How much later than its budget an answer may come: the clients' and the servers' own time.
LATE_WITHIN = 1.0


def expect_between(elapsed: float, low: float, what: str):
    expect(
        low <= elapsed <= low + LATE_WITHIN,
        f"{what} after {elapsed:.3f} s; expected {low:g} s (up to {LATE_WITHIN:g} s later)",
    )


def expect_attempts(servers: Servers, tag: str, attempts: int):
    requests = tagged(upstream_stats(servers), "requests", tag)
    expect(
        len(requests) == attempts,
        f"the upstream saw {len(requests)} requests, not {attempts}",
    )


# ---------------------------------------------------------------------------------------
# Non-streamed requests: the total budget only.
# ---------------------------------------------------------------------------------------


def complete(servers: Servers, model: str, tag: str) -> tuple:
    """One chat completion without `stream=True`, through the gateway: (the completion or
    None, the status error or None, seconds taken)."""
    client = openai_client(servers.gateway_url)
    started = time.monotonic()
    completion, err = None, None
    try:
        completion = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Say hello."}],
            extra_headers={"x-check": tag},
        )
    except openai.APIStatusError as raised:
        err = raised
    return completion, err, time.monotonic() - started


def check_late_unstreamed_answer(servers: Servers) -> str:
    tag = "late-answer"
    completion, err, elapsed = complete(servers, "late-answer", tag)
    expect(err is None, f"{type(err).__name__}: {err}")
    text = completion.choices[0].message.content
    expect(text == ANSWER, f"the answer was {text!r}")
    expect(
        elapsed >= LATE_ANSWER > FIRST_FRAME,
        f"answered in {elapsed:.3f} s: not later than the first-frame budget",
    )
    expect_attempts(servers, tag, 1)
    return (
        f"the whole answer after {elapsed:.3f} s (first-frame budget {FIRST_FRAME:g} s, "
        f"total {TOTAL:g} s), from one attempt"
    )


def check_stuck_unstreamed_answer(servers: Servers) -> str:
    tag = "never-answers"
    _, err, elapsed = complete(servers, "never-answers", tag)
    expect(err is not None, "the call succeeded")
    expect(err.status_code == 504, f"status {err.status_code}, not 504: {err.message}")
    expect(
        err.code == "deadline_exceeded" and "total budget of 4s" in err.message,
        f"not the total budget's error: {err.message!r}",
    )
    expect_between(elapsed, TOTAL, "answered")
    expect_attempts(servers, tag, 1)
    return f"{type(err).__name__} {err.status_code} after {elapsed:.3f} s: {err.message!r}"


# ---------------------------------------------------------------------------------------
# Streamed requests: keep-alives and opening events are not a first token.
# ---------------------------------------------------------------------------------------


def retried_at_the_first_frame(api: str, model: str):
    """No first token: two attempts of a second each, then the `504` that names the
    first-frame budget."""

    def check(servers: Servers) -> str:
        tag = f"{api}-{model}"
        deltas, err, started, ended = read(servers, api, model, tag)
        elapsed = ended - started
        expect(deltas == 0, f"{deltas} text deltas arrived")
        status_error = anthropic.APIStatusError if api == "messages" else openai.APIStatusError
        expect(
            isinstance(err, status_error),
            f"not the gateway's 504: {type(err).__name__}: {err}",
        )
        expect(err.status_code == 504, f"status {err.status_code}, not 504: {err}")
        expect("first-frame budget of 1s" in str(err), f"not the first-frame budget: {err}")
        attempts = RETRIES + 1
        expect_between(elapsed, attempts * FIRST_FRAME, "answered")
        cancelled, stats = poll_stats(
            servers, lambda s: len(tagged(s, "cancellations", tag)) == attempts, within=2
        )
        expect_attempts(servers, tag, attempts)
        expect(cancelled, "not every attempt was released")
        return (
            f"{type(err).__name__} {err.status_code} after {elapsed:.3f} s, "
            f"{attempts} attempts, each released"
        )

    return check


def cut_at_the_idle_budget(api: str):
    """Three tokens, then only keep-alives: the API error naming the idle budget, one
    budget after the last token."""

    def check(servers: Servers) -> str:
        tag = f"{api}-tokens-then-pings"
        deltas, err, _, ended = read(servers, api, "tokens-then-pings", tag)
        expect(deltas == STALL_AFTER, f"{deltas} deltas, not {STALL_AFTER}")
        expect(err is not None, "the stream ended without an error")
        expect(
            "idle budget of 1s" in str(err),
            f"not the idle budget's error: {type(err).__name__}: {err}",
        )
        stalls, _ = poll_stats(servers, lambda s: tagged(s, "stalls", tag), within=2)
        expect(stalls, "the upstream never stopped sending tokens")
        waited = ended - stalls[0]["last_delta_at"]
        expect_between(waited, IDLE, "raised")
        return f"{deltas} deltas, then {type(err).__name__} {waited:.3f} s after the last: {err}"

    return check


CHECKS = [
    ("1 not streamed, answered after the first-frame budget", check_late_unstreamed_answer),
    ("2 not streamed, never answered: 504 at the total budget", check_stuck_unstreamed_answer),
    ("3 chat, only `: keep-alive`: retried, 504", retried_at_the_first_frame("chat", "keep-alive")),
    ("4 chat, tokens then `: keep-alive`: idle budget", cut_at_the_idle_budget("chat")),
    ("4 anthropic messages, tokens then `event: ping`: idle budget",
     cut_at_the_idle_budget("messages")),
    ("5 openai responses, opening events then keep-alives: retried, 504",
     retried_at_the_first_frame("responses", "opening-then-pings")),
    ("5 anthropic messages, opening events then pings: retried, 504",
     retried_at_the_first_frame("messages", "opening-then-pings")),
]


if __name__ == "__main__":
    servers = Servers(gateway_argument(__doc__.splitlines()[0]), GATEWAY_FLAGS)
    sys.exit(run_checks(servers, CHECKS, " ".join(GATEWAY_FLAGS)))
