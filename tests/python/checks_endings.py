"""How streams end through the gateway, as the real OpenAI and Anthropic clients read them.

    python checks_endings.py --gateway PATH/TO/stream-deadline-gateway

Starts `upstream.py` (which speaks OpenAI chat completions, OpenAI's Responses API and
Anthropic's Messages API) and the gateway in front of it, as `checks.py` does, with the same
budgets (total 2 s, first frame 500 ms, idle 1 s), then checks, for each of the `openai`
SDK's chat completions stream, its Responses stream (`responses.create(stream=True)`) and
the `anthropic` SDK's `messages.stream`:

- the upstream dies mid-stream (three deltas, half of a fourth, then a cut chunked body):
  the three deltas, then an API error of type `upstream_error`, not a connection error
  (which the SDKs' users retry blindly);
- stalled (three deltas, then silence): the API's own error (`openai.APIError`,
  `anthropic.APIStatusError`) naming the idle budget, at that budget after the last delta;
- babbling (text forever): every delta sent before the deadline, then the API error naming
  the total budget, at that budget;

and that each babbling or stalled upstream generator is cancelled within 250 ms of its
deadline. As the contrast, the dying upstream read directly is a transport error in every
SDK. Last, LangChain's `ChatAnthropic` through the gateway stops at the total budget with
an error.
"""

import sys
import time
from pathlib import Path

import anthropic
import openai
from langchain_anthropic import ChatAnthropic

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True  # no __pycache__ next to the sources
from checks import (  # noqa: E402
    CANCEL_WITHIN,
    GATEWAY_FLAGS,
    IDLE,
    PROMPT,
    astream_until_stopped,
    expect_stopped_at_the_budget,
    STALL_GUARD,
    STOP_WITHIN,
    TOTAL,
    CheckFailed,
    Servers,
    gateway_argument,
    expect,
    poll_stats,
    run_async,
    run_checks,
    tagged,
)
from upstream import STALL_AFTER  # noqa: E402

# How the gateway's errors name the budgets.
TOTAL_NAMED = "total budget of 2s"
IDLE_NAMED = "idle budget of 1s"


# ---------------------------------------------------------------------------------------
# One stream per API: each yields its text deltas, and raises what its SDK raises.
# ---------------------------------------------------------------------------------------


def openai_client(origin: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{origin}/v1",
        api_key="sk-local",
        max_retries=0,
        timeout=STALL_GUARD,
    )


def anthropic_client(origin: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=origin,
        api_key="sk-ant-local",
        max_retries=0,
        timeout=STALL_GUARD,
    )


def chat_deltas(client: openai.OpenAI, model: str, tag: str):
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Tell me everything."}],
        stream=True,
        extra_headers={"x-check": tag},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk.choices[0].delta.content


def responses_deltas(client: openai.OpenAI, model: str, tag: str):
    stream = client.responses.create(
        model=model,
        input="Tell me everything.",
        stream=True,
        extra_headers={"x-check": tag},
    )
    for event in stream:
        if event.type == "response.output_text.delta":
            yield event.delta


def messages_deltas(client: anthropic.Anthropic, model: str, tag: str):
    with client.messages.stream(
        model=model,
        max_tokens=1024,
        messages=[{"role": "user", "content": "Tell me everything."}],
        extra_headers={"x-check": tag},
    ) as stream:
        yield from stream.text_stream


def openai_api_error(err, kind: str, code: str):
    """The ending as the openai SDK raises it: a plain `APIError`, not a transport error."""
    expect(
        type(err) is openai.APIError,
        f"not the gateway's error event: {type(err).__name__}: {err}",
    )
    expect(
        (err.type, err.code) == (kind, code),
        f"type {err.type!r}, code {err.code!r}; expected {kind!r}, {code!r}",
    )
    return err.message


def anthropic_api_error(err, kind: str, code: str):
    """The ending as the anthropic SDK raises it: `APIStatusError` from an `error` event."""
    expect(
        isinstance(err, anthropic.APIStatusError),
        f"not the gateway's error event: {type(err).__name__}: {err}",
    )
    expect(err.type == kind, f"type {err.type!r}; expected {kind!r}")
    error = err.body.get("error", {}) if isinstance(err.body, dict) else {}
    expect(error.get("code") == code, f"code {error.get('code')!r}; expected {code!r}")
    return error.get("message", "")


# Per API: its client, its stream of text deltas, and how to read the gateway's ending from
# the error its SDK raises.
APIS = {
    "chat": (openai_client, chat_deltas, openai_api_error),
    "responses": (openai_client, responses_deltas, openai_api_error),
    "messages": (anthropic_client, messages_deltas, anthropic_api_error),
}


def read(servers, api: str, model: str, tag: str, origin: str | None = None) -> tuple:
    """Reads one stream (through the gateway, unless `origin` says otherwise) to its end:
    (deltas, the error that ended it or None, when the call started, when it ended)."""
    client_of, deltas_of, _ = APIS[api]
    # Made before the clock starts: building a client (its TLS context) takes a while.
    client = client_of(origin or servers.gateway_url)
    started = time.time()
    deltas, err = 0, None
    try:
        for _ in deltas_of(client, model, tag):
            deltas += 1
            expect(
                time.time() - started < TOTAL + STOP_WITHIN,
                f"still streaming {TOTAL + STOP_WITHIN:.1f} s after the call",
            )
    except CheckFailed:
        raise
    except Exception as raised:  # noqa: BLE001 - whatever ends it, API error or transport
        err = raised
    return deltas, err, started, time.time()


def expect_cancelled_by(servers, tag: str, deadline: float) -> str:
    cancellations, _ = poll_stats(
        servers, lambda s: tagged(s, "cancellations", tag), within=CANCEL_WITHIN + 2
    )
    expect(cancellations, "the upstream generator was never cancelled")
    late = cancellations[0]["at"] - deadline
    expect(
        0 <= late <= CANCEL_WITHIN,
        f"upstream generator cancelled {late * 1000:+.0f} ms from the deadline "
        f"(allowed: 0 to {CANCEL_WITHIN * 1000:.0f} ms)",
    )
    return f"upstream cancelled {late * 1000:.0f} ms after the deadline"


# ---------------------------------------------------------------------------------------
# The checks, each made for one API.
# ---------------------------------------------------------------------------------------


def at_the_budget(model: str, budget: float, named: str):
    """A check that `model`'s stream, through the gateway, raises the API error naming
    `named` once `budget` has passed: counted from the call (the total budget), or from the
    last delta after `STALL_AFTER` of them (the idle budget)."""
    idle = model == "stalled"

    def check_for(api: str):
        def check(servers) -> str:
            tag = f"{api}-{model}"
            deltas, err, started, ended = read(servers, api, model, tag)
            expect(deltas > 0, "no deltas arrived before the deadline")
            expect(not idle or deltas == STALL_AFTER, f"{deltas} deltas, not {STALL_AFTER}")
            expect(err is not None, f"the stream ended without an error after {deltas} deltas")
            message = APIS[api][2](err, "timeout", "deadline_exceeded")
            expect(named in message, f"the error does not name the {named}: {message!r}")
            # When the budget started, at the earliest: before our call, or when the upstream
            # made its last delta. Both come before the gateway's own clock starts, so the
            # error must not come sooner than `budget` after it, and the cancellation's
            # lateness measured from it is never less than the true lateness.
            since = started
            if idle:
                stalls, _ = poll_stats(servers, lambda s: tagged(s, "stalls", tag), within=2)
                expect(stalls, "the upstream never stalled")
                since = stalls[0]["last_delta_at"]
            waited = ended - since
            expect(
                budget <= waited <= budget + STOP_WITHIN,
                f"raised {waited:.3f} s after the {'last delta was made' if idle else 'call'}; "
                f"the budget is {budget} s",
            )
            cancelled = expect_cancelled_by(servers, tag, since + budget)
            return (
                f"{deltas} deltas, then {type(err).__name__} {waited:.3f} s after the "
                f"{'last' if idle else 'call'}: {message!r}; {cancelled}"
            )

        return check

    check_for.__name__ = "stalled" if idle else "babbling"
    return check_for


babbling = at_the_budget("babbler", TOTAL, TOTAL_NAMED)
stalled = at_the_budget("stalled", IDLE, IDLE_NAMED)


def dying(api: str):
    def check(servers) -> str:
        tag = f"{api}-dying"
        deltas, err, started, ended = read(servers, api, "dying", tag)
        expect(err is not None, "the stream ended without an error: the answer looks complete")
        message = APIS[api][2](err, "upstream_error", "upstream_failed")
        expect(
            deltas == STALL_AFTER,
            f"{deltas} deltas arrived; every whole one ({STALL_AFTER}) and not the half expected",
        )
        failures, _ = poll_stats(servers, lambda s: tagged(s, "failures", tag), within=2)
        expect(failures, "the upstream did not fail the stream")
        return (
            f"{deltas} deltas, then {type(err).__name__} at +{ended - started:.3f} s: "
            f"{message!r}"
        )

    return check


def check_direct_dying_is_a_connection_error(servers) -> str:
    """Contrast: the same dying upstream, read directly, is a transport error in every SDK."""
    seen = []
    for api in APIS:
        _, err, _, _ = read(servers, api, "dying", f"{api}-direct", servers.upstream_url)
        expect(err is not None, f"{api}: the stream ended without an error")
        sdk_api_error = openai.APIStatusError if api != "messages" else anthropic.APIStatusError
        expect(
            not isinstance(err, sdk_api_error) and type(err) is not openai.APIError,
            f"{api}: an API error without the gateway: {type(err).__name__}: {err}",
        )
        seen.append(f"{api}: {type(err).__module__}.{type(err).__name__}")
    return "; ".join(seen)


def check_langchain_chat_anthropic(servers) -> str:
    """LangChain `prompt | ChatAnthropic`, `astream()`, through the gateway."""
    tag = "langchain-anthropic"

    async def run():
        llm = ChatAnthropic(
            model="babbler",
            base_url=servers.gateway_url,
            api_key="sk-ant-local",
            max_retries=0,
            streaming=True,
            default_request_timeout=STALL_GUARD,
            default_headers={"x-check": tag},
        )
        return await astream_until_stopped(PROMPT | llm, anthropic.AnthropicError)

    (chunks, err, elapsed), complaints = run_async(run())
    message = anthropic_api_error(err, "timeout", "deadline_exceeded")
    expect(TOTAL_NAMED in message, f"the error does not name the total budget: {message!r}")
    expect_stopped_at_the_budget(servers, tag, elapsed)
    note = f" (asyncio: {complaints})" if complaints else ""
    return (
        f"{chunks} chunks over {elapsed:.3f} s (budget {TOTAL} s), then "
        f"{type(err).__name__}: {message!r}; upstream generator cancelled{note}"
    )


NAMES = {
    "chat": "openai chat completions",
    "responses": "openai responses.create(stream=True)",
    "messages": "anthropic messages.stream",
}
CHECKS = [
    (f"{NAMES[api]}, {how.__name__}", how(api))
    # The short checks first: an SDK's first use of an API (its imports) takes a while, which
    # would count against the gateway in the timed checks.
    for how in (dying, stalled, babbling)
    for api in NAMES
] + [
    ("contrast: dying, read directly", check_direct_dying_is_a_connection_error),
    ("LangChain ChatAnthropic astream()", check_langchain_chat_anthropic),
]


if __name__ == "__main__":
    servers = Servers(gateway_argument(__doc__.splitlines()[0]))
    sys.exit(run_checks(servers, CHECKS, " ".join(GATEWAY_FLAGS)))
