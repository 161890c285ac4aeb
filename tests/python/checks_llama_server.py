"""The gateway in front of a real model server: llama.cpp's `llama-server`.

    python checks_llama_server.py --gateway PATH/TO/stream-deadline-gateway

`llama_server.sh` builds the server and fetches the model (SmolLM2 135M Instruct, 4-bit);
run.sh passes their paths in STREAM_DEADLINE_LLAMA_SERVER and STREAM_DEADLINE_LLAMA_MODEL.
The server runs one slot on 127.0.0.1 with `--ignore-eos` (every answer runs to its
`max_tokens`, whichever API asks), the gateway in front of it with a 3 s total budget.

1. A short answer, not streamed, through the gateway: a 200 with the model's words.
2. An answer that would run to 1,900 tokens, streamed with the `openai` SDK
   through the gateway: tokens, then `openai.APIError` naming the deadline at 3 s; the
   server's slot stops generating within 1 s of it (its `/slots` says so).
3. Contrast, the same answer straight from the server with the SDK's `timeout=1.0` (a
   timeout per read): tokens keep coming, and 4 s in, the slot is still generating.
4. The same long answer through the server's Anthropic Messages API, with the `anthropic`
   SDK's `messages.stream`: text deltas, then `anthropic.APIStatusError` with the gateway's
   `deadline_exceeded` at 3 s; the slot idle within 1 s of it.
"""

import json
import os
import sys
import time
import urllib.request

import anthropic
import openai

from checks import (
    STALL_GUARD,
    Servers,
    expect,
    free_port,
    gateway_argument,
    is_deadline_event,
    run_checks,
    wait_until_serving,
)
from checks_endings import anthropic_api_error

TOTAL = 3.0
FLAGS = ["--total", "3s", "--first-frame", "20s", "--idle", "5s", "--retries", "0"]
# How soon after the deadline the server's slot must be idle again.
IDLE_WITHIN = 1.0
# How long the contrast watches the server generate for a client that asked for 1 s.
WATCH_FOR = 4.0
LONG_ANSWER = {"max_tokens": 1900}
MESSAGES = [{"role": "user", "content": "Count from one to one thousand, in words."}]


class LlamaServers(Servers):
    """`llama-server` as the upstream, instead of the stand-in of `upstream.py`."""

    def __init__(self, gateway_bin: str, server: str, model: str):
        super().__init__(gateway_bin, FLAGS)
        self.server, self.model = server, model

    def start(self):
        port = free_port()
        self.upstream_url = f"http://127.0.0.1:{port}"
        argv = [self.server, "--model", self.model, "--host", "127.0.0.1", "--port", str(port),
                "--ctx-size", "2048", "--parallel", "1", "--threads", "2", "--ignore-eos"]
        upstream = self._spawn(argv, "upstream.log")
        # 503 while the model loads: ready once /health answers 200.
        wait_until_serving(f"{self.upstream_url}/health", upstream, "llama-server")
        self.gateway, self.gateway_url, self.gateway_admin = self.start_gateway(self.gateway_flags)


def slot_busy(servers: Servers) -> bool:
    with urllib.request.urlopen(f"{servers.upstream_url}/slots", timeout=5) as response:
        slots = json.load(response)
    return any(slot.get("is_processing") for slot in slots)


def wait_idle(servers: Servers, within: float) -> float | None:
    """Seconds until the server's slot is idle, polled every 20 ms; None if it is not by
    `within`."""
    started = time.time()
    while time.time() - started < within:
        if not slot_busy(servers):
            return time.time() - started
        time.sleep(0.02)
    return None


def sdk(base_url: str, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, **options)


def check_a_short_answer(servers: Servers) -> str:
    answer = sdk(servers.gateway_url, timeout=STALL_GUARD).chat.completions.create(
        model="smollm2", messages=MESSAGES, max_tokens=16
    )
    content = answer.choices[0].message.content or ""
    expect(content.strip(), f"an empty answer: {answer}")
    expect(answer.usage.completion_tokens > 0, f"no tokens counted: {answer.usage}")
    return f"{answer.usage.completion_tokens} tokens: {content.strip()[:40]!r}"


def check_a_long_answer_is_cut_and_the_server_stops(servers: Servers) -> str:
    client = sdk(servers.gateway_url, timeout=STALL_GUARD)
    tokens, error = 0, None
    started = time.time()
    stream = client.chat.completions.create(
        model="smollm2", messages=MESSAGES, stream=True, **LONG_ANSWER
    )
    with stream:
        try:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    tokens += 1
        except openai.APIError as err:
            error = err
    ended = time.time() - started
    expect(error is not None, f"the stream ended without an error after {tokens} tokens")
    expect(is_deadline_event(error), f"not the gateway's deadline event: {error!r}")
    expect(tokens > 0, "no token came before the deadline")
    expect(TOTAL - 0.05 <= ended <= TOTAL + 0.5, f"cut after {ended:.3f} s, not at {TOTAL} s")
    idle = wait_idle(servers, IDLE_WITHIN)
    expect(idle is not None, f"llama-server still generating {IDLE_WITHIN} s after the cut")
    return f"{tokens} tokens, cut at {ended:.3f} s; the slot idle {idle * 1000:.0f} ms later"


def check_direct_with_a_read_timeout_goes_on(servers: Servers) -> str:
    client = sdk(servers.upstream_url, timeout=1.0)
    tokens = 0
    started = time.time()
    stream = client.chat.completions.create(
        model="smollm2", messages=MESSAGES, stream=True, **LONG_ANSWER
    )
    with stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                tokens += 1
            if time.time() - started >= WATCH_FOR:
                break
        watched = time.time() - started
        expect(watched >= WATCH_FOR, f"the stream ended by itself after {watched:.3f} s")
        expect(slot_busy(servers), "the slot stopped on its own")
    # Closed by us: the server stops too, leaving it as the next check expects.
    idle = wait_idle(servers, IDLE_WITHIN)
    expect(idle is not None, "llama-server went on after the client closed")
    return (
        f"{tokens} tokens in {watched:.1f} s with timeout=1.0, still generating; "
        f"idle {idle * 1000:.0f} ms after we closed"
    )


def check_the_messages_api_is_cut_and_the_server_stops(servers: Servers) -> str:
    client = anthropic.Anthropic(
        base_url=servers.gateway_url, api_key="unused", max_retries=0, timeout=STALL_GUARD
    )
    deltas, error = 0, None
    started = time.time()
    try:
        with client.messages.stream(
            model="smollm2", messages=MESSAGES, **LONG_ANSWER
        ) as stream:
            for _ in stream.text_stream:
                deltas += 1
    except anthropic.APIError as err:
        error = err
    ended = time.time() - started
    expect(error is not None, f"the stream ended without an error after {deltas} deltas")
    message = anthropic_api_error(error, "timeout", "deadline_exceeded")
    expect(deltas > 0, "no text came before the deadline")
    expect(TOTAL - 0.05 <= ended <= TOTAL + 0.5, f"cut after {ended:.3f} s, not at {TOTAL} s")
    idle = wait_idle(servers, IDLE_WITHIN)
    expect(idle is not None, f"llama-server still generating {IDLE_WITHIN} s after the cut")
    return (
        f"{deltas} deltas, APIStatusError at {ended:.3f} s ({message[:40]!r}...); "
        f"the slot idle {idle * 1000:.0f} ms later"
    )


CHECKS = [
    ("1 a short answer, not streamed", check_a_short_answer),
    ("2 a long answer, cut at the total budget: llama-server stops",
     check_a_long_answer_is_cut_and_the_server_stops),
    ("3 contrast, direct with timeout=1.0: llama-server goes on",
     check_direct_with_a_read_timeout_goes_on),
    ("4 anthropic messages.stream, cut at the total budget: llama-server stops",
     check_the_messages_api_is_cut_and_the_server_stops),
]


def main() -> int:
    gateway = gateway_argument(__doc__.splitlines()[0])
    server = os.environ.get("STREAM_DEADLINE_LLAMA_SERVER", "")
    model = os.environ.get("STREAM_DEADLINE_LLAMA_MODEL", "")
    if not (os.access(server, os.X_OK) and os.path.isfile(model)):
        print("FAIL startup: set STREAM_DEADLINE_LLAMA_SERVER and STREAM_DEADLINE_LLAMA_MODEL "
              "(tests/python/llama_server.sh prints both)")
        print("\n0 passed, 1 failed")
        return 1
    return run_checks(LlamaServers(gateway, server, model), CHECKS, " ".join(FLAGS))


if __name__ == "__main__":
    sys.exit(main())
