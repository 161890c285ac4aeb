"""The gateway against the real Python clients (`openai`, `langchain-openai`).

    python checks.py --gateway PATH/TO/stream-deadline-gateway

Starts `upstream.py` (FastAPI/uvicorn, an OpenAI-compatible stand-in) and the gateway in
front of it, each on a free port of 127.0.0.1 in its own process group, then runs the
checks below. Each prints PASS or FAIL; the last line is `N passed, M failed`, and the exit
status is non-zero if anything failed. Both servers are stopped however the run ends.

1. openai SDK, stream=True, through the gateway: tokens, then `openai.APIError` naming the
   deadline at the total budget; the upstream generator is cancelled within 250 ms of it.
2. The case of "That Time Our In-House LLM Kept Babbling for 10 Minutes Straight": LangChain
   `prompt | ChatOpenAI` and `chain.astream()` (a new asyncio task per chunk) through the
   gateway stops at the budget, with no asyncio timeout.
3. Stuck first token: the gateway abandons the stuck attempt at the first-frame budget and
   retries; the client gets the whole answer from the second attempt.
4. Contrast, direct to the upstream: the same chain with `timeout=` on ChatOpenAI does not
   stop; after 3x that timeout it is still streaming, and we stop reading.
5. `x-request-timeout: 1s` from the client shortens the gateway's 2 s budget.
6. A request stuck on every attempt ends, after the gateway's retries, in `504` with an
   OpenAI-shaped JSON error that the SDK reads, and the SDK (default retries) does not retry
   on top: the gateway says `x-should-retry: false`.

Nothing here waits a fixed time for something to happen: readiness and cancellations are
polled in bounded loops, and a watchdog ends the whole run if it ever hangs.
"""

import argparse
import asyncio
import json
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from pathlib import Path

import openai
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True  # no __pycache__ next to the sources
from upstream import ANSWER  # noqa: E402

# The gateway's budgets.
TOTAL = 2.0
FIRST_FRAME = 0.5
IDLE = 1.0
RETRIES = 2
GATEWAY_FLAGS = ["--total", "2s", "--first-frame", "500ms", "--idle", "1s", "--retries", "2"]

# How the gateway's deadline error names that budget.
BUDGET_NAMED = "total budget of 2s"

# How soon after a deadline the upstream's generator must be cancelled.
CANCEL_WITHIN = 0.25
# How long past its budget a stream may take to stop (check 2).
STOP_WITHIN = 2.0
# The client-side timeout of the contrast (check 4), and how long we watch it fail to fire.
CLIENT_TIMEOUT = 1.0
WATCH_FOR = 3 * CLIENT_TIMEOUT
# A guard on every client: the longest silence a stream may have before the check fails.
# It never fires in a passing run (tokens come every 20 ms).
STALL_GUARD = 10.0
# Bounds on the harness itself.
STARTUP_WITHIN = 60.0
WATCHDOG = 180.0

PROMPT = ChatPromptTemplate.from_messages(
    [("system", "You are a helpful assistant."), ("human", "{question}")]
)


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Servers:
    """The upstream and the gateway, each in its own process group, logging to files.

    `tls` is `(certfile, keyfile, ca_file)`: the upstream then serves https://localhost and
    the gateway trusts `ca_file` through `SSL_CERT_FILE`."""

    def __init__(self, gateway_bin: str, gateway_flags=GATEWAY_FLAGS, tls=None):
        self.gateway_bin = gateway_bin
        self.gateway_flags = list(gateway_flags)
        self.tls = tls
        self.logs = Path(tempfile.mkdtemp(prefix="stream-deadline-gateway-checks-"))
        self.procs: list[subprocess.Popen] = []
        self.upstream_url = ""
        self.gateway_url = ""
        self.gateway_admin = ""
        self.gateway = None

    def start(self):
        port = free_port()
        argv = [sys.executable, str(HERE / "upstream.py"), str(port)]
        if self.tls:
            argv += [self.tls[0], self.tls[1]]
            self.upstream_url = f"https://localhost:{port}"
        else:
            self.upstream_url = f"http://127.0.0.1:{port}"
        upstream = self._spawn(argv, "upstream.log")
        wait_until_serving(f"{self.upstream_url}/stats", upstream, "the upstream", self.ssl())
        self.gateway, self.gateway_url, self.gateway_admin = self.start_gateway(self.gateway_flags)

    def ssl(self):
        """The client TLS context that trusts the upstream, if it speaks TLS."""
        return ssl.create_default_context(cafile=self.tls[2]) if self.tls else None

    def start_gateway(self, flags, ca_file=None, log_name="gateway.log"):
        """Starts a gateway in front of the upstream: (process, URL, admin URL), once it
        answers on its admin port."""
        env = {}
        if self.tls:
            env["SSL_CERT_FILE"] = ca_file or self.tls[2]
        gateway = self._spawn(
            [
                self.gateway_bin,
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                self.upstream_url,
                "--admin-listen",
                "127.0.0.1:0",
                *flags,
            ],
            log_name,
            stdout=subprocess.PIPE,
            env=env,
        )
        url, admin = read_listen_address(gateway)
        wait_until_serving(f"{admin}/readyz", gateway, "the gateway")
        return gateway, url, admin

    def _spawn(self, argv, log_name, stdout=None, env=None) -> subprocess.Popen:
        log = open(self.logs / log_name, "w")
        proc = subprocess.Popen(
            argv,
            stdout=stdout if stdout is not None else log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.procs.append(proc)
        return proc

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)

    def log(self, name: str) -> str:
        try:
            return (self.logs / name).read_text()
        except OSError:
            return ""


def wait_until_serving(url: str, proc: subprocess.Popen, what: str, context=None):
    deadline = time.monotonic() + STARTUP_WITHIN
    last_error = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as response:
                if response.status == 200:
                    return
        except OSError as err:
            last_error = err
        time.sleep(0.05)  # a poll interval, not a wait for readiness
    raise RuntimeError(f"{what} did not serve {url} within {STARTUP_WITHIN} s: {last_error}")


def read_listen_address(proc: subprocess.Popen) -> tuple:
    """The gateway prints `... admin on http://ADDR`, then `... listening on http://ADDR`,
    on stdout when it is ready: (URL, admin URL)."""
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + STARTUP_WITHIN
    admin = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError("the gateway did not print its address")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            raise RuntimeError(f"the gateway exited with status {proc.wait()} before listening")
        found = re.search(r"admin on (http://\S+)", line)
        if found:
            admin = found.group(1)
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            return found.group(1), admin


def upstream_stats(servers: Servers) -> dict:
    url = f"{servers.upstream_url}/stats"
    with urllib.request.urlopen(url, timeout=5, context=servers.ssl()) as response:
        return json.load(response)


def poll_stats(servers: Servers, ready, within: float):
    """Polls /stats until `ready(stats)` returns something truthy, for at most `within` s."""
    deadline = time.monotonic() + within
    while True:
        stats = upstream_stats(servers)
        found = ready(stats)
        if found or time.monotonic() >= deadline:
            return found, stats
        time.sleep(0.02)


def tagged(stats: dict, key: str, tag: str) -> list:
    return [entry for entry in stats[key] if entry["tag"] == tag]


def run_async(coro):
    """`asyncio.run(coro)`, and asyncio's complaints about async generators it could not
    close at shutdown, returned rather than printed.

    When a LangChain stream is abandoned on purpose (check 4), httpcore's response
    generator is sometimes still suspended when the loop shuts down; asyncio then logs an
    error that has nothing to do with the gateway. It is reported in the check's line.
    """
    complaints: list[str] = []

    async def main():
        def handler(loop, context):
            message = context.get("message", "")
            if "asynchronous generator" in message:
                complaints.append(f"{message}: {context.get('exception')!r}")
            else:
                loop.default_exception_handler(context)

        asyncio.get_running_loop().set_exception_handler(handler)
        return await coro

    return asyncio.run(main()), complaints


def stream_chat(sdk: openai.OpenAI, model: str, tag: str, first_token: threading.Event,
                result: dict):
    """Streams `model` with `sdk`, setting `first_token` at the first content token (or at the
    end); fills `result` with the text, the error that ended it (if any) and how long the
    call took. Made to run on a thread per stream."""
    text, err = "", None
    called = time.monotonic()
    try:
        for chunk in sdk.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Go on."}],
            stream=True,
            extra_headers={"x-check": tag},
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
                first_token.set()
    except Exception as raised:  # noqa: BLE001 - reported by the check
        err = raised
    first_token.set()
    result.update(text=text, err=err, took=time.monotonic() - called)


def langchain_llm(origin: str, model: str, tag: str) -> ChatOpenAI:
    """LangChain's `ChatOpenAI` streaming `model` from `origin` (a gateway, or nginx in front
    of one), with no retries of its own and `STALL_GUARD` as its read timeout."""
    return ChatOpenAI(model=model, base_url=f"{origin}/v1", api_key="sk-local", streaming=True,
                      max_retries=0, use_responses_api=False, timeout=STALL_GUARD,
                      default_headers={"x-check": tag})


def is_deadline_event(err) -> bool:
    """The gateway's SSE ending, as the SDK raises it: a plain APIError, not a transport one."""
    return (
        type(err) is openai.APIError
        and err.code == "deadline_exceeded"
        and err.type == "timeout"
        and "deadline" in err.message
    )


# ---------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------


def stream_babble(servers: Servers, headers: dict) -> tuple:
    """Streams the babbler through the gateway with the openai SDK, counting content tokens
    until the stream ends: (tokens, the APIError that ended it or None, start time)."""
    client = openai.OpenAI(
        base_url=f"{servers.gateway_url}/v1",
        api_key="sk-local",
        max_retries=0,
        timeout=STALL_GUARD,
    )
    started = time.time()
    tokens, err = 0, None
    try:
        stream = client.chat.completions.create(
            model="babbler",
            messages=[{"role": "user", "content": "Tell me everything."}],
            stream=True,
            extra_headers=headers,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                tokens += 1
            expect(
                time.time() - started < TOTAL + STOP_WITHIN,
                f"still streaming {TOTAL + STOP_WITHIN:.1f} s after the call",
            )
    except openai.APIError as raised:
        err = raised
    return tokens, err, started


def check_openai_sdk_stream(servers: Servers) -> str:
    """1. openai SDK, stream=True: tokens, then APIError at the budget; upstream cancelled."""
    tag = "openai-sdk"
    tokens, err, started = stream_babble(servers, {"x-check": tag})
    ended = time.time()
    deadline = started + TOTAL

    expect(tokens > 0, "no tokens arrived before the deadline")
    expect(err is not None, f"the stream ended without an error after {tokens} tokens")
    expect(is_deadline_event(err), f"not the gateway's deadline error: {type(err).__name__}: {err}")
    expect(BUDGET_NAMED in err.message, f"the error does not name the {TOTAL:g} s budget")
    cancellations, stats = poll_stats(
        servers, lambda s: tagged(s, "cancellations", tag), within=CANCEL_WITHIN + 2
    )
    expect(len(tagged(stats, "requests", tag)) == 1, "the upstream did not see exactly one request")
    expect(cancellations, "the upstream generator was never cancelled")
    late = cancellations[0]["at"] - deadline
    expect(
        -0.005 <= late <= CANCEL_WITHIN,
        f"upstream generator cancelled {late * 1000:+.0f} ms from the deadline "
        f"(allowed: 0 to {CANCEL_WITHIN * 1000:.0f} ms)",
    )
    return (
        f"{tokens} tokens, then {type(err).__name__} at +{ended - started:.3f} s: "
        f"{err.message!r}; upstream generator cancelled "
        f"({cancellations[0]['how']}) {late * 1000:.0f} ms after the deadline"
    )


def check_langchain_astream(servers: Servers) -> str:
    """2. The babbling-LLM case: prompt | ChatOpenAI, chain.astream(), stops at the budget."""
    tag = "langchain"

    async def run():
        llm = ChatOpenAI(
            model="babbler",
            base_url=f"{servers.gateway_url}/v1",
            api_key="sk-local",
            streaming=True,
            max_retries=0,
            use_responses_api=False,
            timeout=STALL_GUARD,  # per read: what the write-up had; it never fires here
            default_headers={"x-check": tag},
        )
        return await astream_until_stopped(PROMPT | llm, openai.APIError)

    (chunks, err, elapsed), complaints = run_async(run())
    expect(is_deadline_event(err), f"not the gateway's deadline error: {type(err).__name__}: {err}")
    expect(BUDGET_NAMED in err.message, f"the error does not name the {TOTAL:g} s budget")
    expect_stopped_at_the_budget(servers, tag, elapsed)
    note = f" (asyncio: {complaints})" if complaints else ""
    return (
        f"{chunks} chunks over {elapsed:.3f} s (budget {TOTAL} s), then "
        f"{type(err).__name__}: {err.message!r}; upstream generator cancelled{note}"
    )


async def astream_until_stopped(chain, error_type) -> tuple:
    """Reads `chain.astream()` (a new asyncio task per chunk) with no asyncio timeout: only
    the gateway's budget stops it. Returns (content chunks, the `error_type` error that ended
    it, seconds taken); fails the check if it ends without an error or runs on past
    TOTAL + STOP_WITHIN (then we stop reading)."""
    started = time.monotonic()
    chunks, err = 0, None
    try:
        async for chunk in chain.astream({"question": "Tell me everything."}):
            if chunk.content:
                chunks += 1
            expect(
                time.monotonic() - started <= TOTAL + STOP_WITHIN,
                f"still streaming {TOTAL + STOP_WITHIN:.1f} s after the call",
            )
    except error_type as raised:
        err = raised
    expect(chunks > 0, "no chunks arrived before the deadline")
    expect(err is not None, "the stream ended without an error")
    return chunks, err, time.monotonic() - started


def expect_stopped_at_the_budget(servers: Servers, tag: str, elapsed: float):
    """The stream stopped at the total budget, and the upstream's generator was cancelled."""
    expect(
        TOTAL - 0.005 <= elapsed <= TOTAL + STOP_WITHIN,
        f"stopped after {elapsed:.3f} s; the budget is {TOTAL} s",
    )
    cancellations, _ = poll_stats(
        servers, lambda s: tagged(s, "cancellations", tag), within=CANCEL_WITHIN + 2
    )
    expect(cancellations, "the upstream generator was never cancelled")


def check_stuck_first_token(servers: Servers) -> str:
    """3. Stuck before the first token: abandoned at 500 ms, retried, answered in full."""
    tag = "stuck-once"
    client = openai.OpenAI(
        base_url=f"{servers.gateway_url}/v1",
        api_key="sk-local",
        max_retries=0,  # the gateway retries, not the SDK
        timeout=STALL_GUARD,
    )
    started = time.time()
    stream = client.chat.completions.create(
        model="stuck-once",
        messages=[{"role": "user", "content": "Say hello."}],
        stream=True,
        extra_headers={"x-check": tag},
    )
    text, finish_reason = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish_reason = chunk.choices[0].finish_reason or finish_reason
    elapsed = time.time() - started

    expect(text == ANSWER, f"the answer was {text!r}")
    expect(finish_reason == "stop", f"finish_reason was {finish_reason!r}")
    expect(elapsed >= FIRST_FRAME, f"answered in {elapsed:.3f} s, before the first-frame budget")
    stats = upstream_stats(servers)
    requests = tagged(stats, "requests", tag)
    completions = tagged(stats, "completions", tag)
    cancellations, _ = poll_stats(
        servers, lambda s: tagged(s, "cancellations", tag), within=CANCEL_WITHIN + 2
    )
    expect(len(requests) == 2, f"the upstream saw {len(requests)} requests, not 2")
    expect(
        [c["id"] for c in completions] == [requests[1]["id"]],
        "the answer did not come from the second attempt",
    )
    expect(
        [c["id"] for c in cancellations] == [requests[0]["id"]],
        "the stuck first attempt was not released",
    )
    return (
        f"{text!r} (finish_reason=stop) in {elapsed:.3f} s; upstream saw 2 requests: "
        "the first released at the first-frame budget, the second answered"
    )


def check_direct_does_not_stop(servers: Servers) -> str:
    """4. Contrast: direct to the upstream, ChatOpenAI(timeout=1) never stops the stream."""
    tag = "direct"

    async def run():
        llm = ChatOpenAI(
            model="babbler",
            base_url=f"{servers.upstream_url}/v1",
            api_key="sk-local",
            streaming=True,
            max_retries=0,
            use_responses_api=False,
            timeout=CLIENT_TIMEOUT,
            default_headers={"x-check": tag},
        )
        stream = (PROMPT | llm).astream({"question": "Tell me everything."})
        started = time.monotonic()
        chunks, last_chunk_at = 0, None
        try:
            async for chunk in stream:
                if chunk.content:
                    chunks += 1
                    last_chunk_at = time.monotonic() - started
                if time.monotonic() - started >= WATCH_FOR:
                    break  # bounded: we stop reading; nothing else would have
        finally:
            await stream.aclose()
        return chunks, last_chunk_at, time.monotonic() - started

    (chunks, last_chunk_at, watched), complaints = run_async(run())
    expect(chunks > 0, "no chunks arrived")
    expect(
        last_chunk_at is not None and last_chunk_at >= WATCH_FOR - 0.5,
        f"the stream had stopped by itself (last chunk at {last_chunk_at} s)",
    )
    stopped, _ = poll_stats(servers, lambda s: tagged(s, "cancellations", tag), within=2)
    after = "; the upstream stopped once we closed the stream" if stopped else ""
    if complaints:
        after += f" (httpcore left {len(complaints)} abandoned stream generator(s) running)"
    return (
        f"timeout={CLIENT_TIMEOUT:g} s, yet still streaming after {watched:.3f} s "
        f"({chunks} chunks, the last at +{last_chunk_at:.3f} s){after}"
    )


def check_timeout_header(servers: Servers) -> str:
    """5. A client's x-request-timeout shortens the total budget for its request."""
    tag = "header"
    tokens, err, started = stream_babble(servers, {"x-check": tag, "x-request-timeout": "1s"})
    elapsed = time.time() - started
    expect(tokens > 0, "no tokens arrived before the deadline")
    expect(is_deadline_event(err), f"not the gateway's deadline error: {type(err).__name__}: {err}")
    expect(
        1.0 <= elapsed < TOTAL - 0.5,
        f"stopped after {elapsed:.3f} s: not at the header's 1 s",
    )
    return f"stopped at +{elapsed:.3f} s instead of {TOTAL} s: {err.message!r}"


def check_stuck_every_attempt(servers: Servers) -> str:
    """6. Stuck on every attempt: 504 with an OpenAI-shaped error after the retries."""
    tag = "stuck-always"
    client = openai.OpenAI(
        base_url=f"{servers.gateway_url}/v1",
        api_key="sk-local",
        # The SDK's default max_retries (2): the gateway's `x-should-retry: false` stops it.
        timeout=STALL_GUARD,
    )
    started = time.time()
    err = None
    try:
        client.chat.completions.create(
            model="stuck-always",
            messages=[{"role": "user", "content": "Say hello."}],
            stream=True,
            extra_headers={"x-check": tag},
        )
    except openai.APIStatusError as raised:
        err = raised
    elapsed = time.time() - started
    expect(err is not None, "the call succeeded")
    expect(err.status_code == 504, f"status {err.status_code}, not 504")
    expect(
        err.type == "timeout" and err.code == "deadline_exceeded" and "first-frame" in err.message,
        f"not an OpenAI-shaped first-frame deadline error: {err.body!r}",
    )
    attempts = RETRIES + 1
    expect(
        attempts * FIRST_FRAME <= elapsed < attempts * FIRST_FRAME + 1.0,
        f"answered after {elapsed:.3f} s; {attempts} attempts of {FIRST_FRAME} s expected",
    )
    cancellations, stats = poll_stats(
        servers, lambda s: len(tagged(s, "cancellations", tag)) == attempts, within=2
    )
    requests = tagged(stats, "requests", tag)
    expect(
        len(requests) == attempts,
        f"the upstream saw {len(requests)} requests, not the gateway's {attempts}",
    )
    expect(cancellations, "not every stuck attempt was released")
    return (
        f"{type(err).__name__} {err.status_code} after {elapsed:.3f} s, not retried by the SDK "
        f"(upstream saw {attempts} requests, all released): {err.message!r}"
    )


CHECKS = [
    ("1 openai SDK stream=True through the gateway", check_openai_sdk_stream),
    ("2 LangChain chain.astream() through the gateway", check_langchain_astream),
    ("3 stuck first token, retried by the gateway", check_stuck_first_token),
    ("4 contrast: direct, ChatOpenAI(timeout=1) does not stop", check_direct_does_not_stop),
    ("5 x-request-timeout: 1s shortens the budget", check_timeout_header),
    ("6 stuck on every attempt: 504 after the gateway's retries", check_stuck_every_attempt),
]


def run_checks(servers: Servers, checks: list, banner: str) -> int:
    """Starts `servers`, runs `checks` (name, function of the servers), prints PASS/FAIL
    for each and the gateway's log, and stops the servers however the run ends."""
    results = {"passed": 0, "failed": 0}
    # Terminated from outside (a CI timeout): unwind, so that `finally` stops the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def watchdog():
        print(f"FAIL watchdog: the checks ran longer than {WATCHDOG:.0f} s", flush=True)
        servers.stop()
        print(f"{results['passed']} passed, {results['failed'] + 1} failed", flush=True)
        os._exit(1)

    timer = threading.Timer(WATCHDOG, watchdog)
    timer.daemon = True
    timer.start()
    try:
        try:
            servers.start()
        except Exception as err:  # noqa: BLE001
            print(f"FAIL startup: {err}")
            results["failed"] += 1
        else:
            print(f"upstream {servers.upstream_url}, gateway {servers.gateway_url} ({banner})",
                  flush=True)
            for name, check in checks:
                try:
                    detail = check(servers)
                except CheckFailed as failed:
                    results["failed"] += 1
                    print(f"FAIL {name}: {failed}", flush=True)
                except Exception:  # noqa: BLE001
                    results["failed"] += 1
                    print(f"FAIL {name}: raised\n{traceback.format_exc()}", flush=True)
                else:
                    results["passed"] += 1
                    print(f"PASS {name}: {detail}", flush=True)
    finally:
        timer.cancel()
        servers.stop()
    for log in sorted(servers.logs.glob("gateway*.log")):
        print(f"\n{log.name} (one line per request):")
        print("\n".join("  " + line for line in log.read_text().strip().splitlines()))
    if results["failed"]:
        print("\nupstream log:")
        print(servers.log("upstream.log").strip() or "  (empty)")
    print(f"\n{results['passed']} passed, {results['failed']} failed")
    # Everything worth keeping from the logs was printed above.
    shutil.rmtree(servers.logs, ignore_errors=True)
    return 1 if results["failed"] else 0


def gateway_argument(description: str) -> str:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--gateway", required=True, help="path to the built stream-deadline-gateway")
    return parser.parse_args().gateway


def main() -> int:
    servers = Servers(gateway_argument(__doc__.splitlines()[0]))
    return run_checks(servers, CHECKS, " ".join(GATEWAY_FLAGS))


if __name__ == "__main__":
    sys.exit(main())
