"""The gateway's graceful shutdown, with the real `openai` SDK.

    python checks_shutdown.py --gateway PATH/TO/stream-deadline-gateway

1. 20 `openai` SDK streams in flight and one that is about to finish; SIGTERM with a 1 s
   grace: `/readyz` turns 503 at once, the finishing stream ends normally inside the grace,
   the 20 others each end with `openai.APIError` (the gateway's shutdown event, not an
   `APIConnectionError`), the gateway exits 0 within 2 s, and every babbling upstream
   generator is cancelled.
"""

import sys
import threading
import time
import urllib.error
import urllib.request

import openai

from checks import (
    ANSWER,
    STALL_GUARD,
    Servers,
    expect,
    gateway_argument,
    poll_stats,
    run_checks,
    stream_chat,
    tagged,
)

STREAMS = 20
GRACE = 1.0
EXIT_WITHIN = 2.0
FLAGS = ["--total", "30s", "--first-frame", "500ms", "--shutdown-grace", "1s"]


def client(servers: Servers) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{servers.gateway_url}/v1", api_key="sk-local",
                         max_retries=0, timeout=STALL_GUARD)


def stream(servers: Servers, model: str, tag: str, first_token: threading.Event, result: dict):
    stream_chat(client(servers), model, tag, first_token, result)


def readyz(admin: str) -> int:
    try:
        with urllib.request.urlopen(f"{admin}/readyz", timeout=1) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def check_shutdown(servers: Servers) -> str:
    # The short stream's tag is served at once after its first (stuck, retried) request.
    warm = {}
    stream(servers, "stuck-once", "grace-short", threading.Event(), warm)
    expect(warm["err"] is None and warm["text"] == ANSWER, f"warm-up failed: {warm}")

    runs = []
    for i in range(STREAMS):
        runs.append(("babbler", f"shutdown-{i}", threading.Event(), {}))
    runs.append(("stuck-once", "grace-short", threading.Event(), {}))
    threads = [threading.Thread(target=stream, args=(servers, *run), daemon=True)
               for run in runs]
    for thread in threads:
        thread.start()
    for _, tag, started, _ in runs:
        expect(started.wait(STALL_GUARD), f"{tag} never started")

    admin = servers.gateway_admin
    expect(readyz(admin) == 200, "not ready before the signal")
    servers.gateway.terminate()
    signalled = time.monotonic()
    while readyz(admin) != 503:
        expect(time.monotonic() - signalled < GRACE, "/readyz did not turn 503 within the grace")
        time.sleep(0.01)  # a poll interval

    for thread in threads:
        thread.join(STALL_GUARD)
    try:
        status = servers.gateway.wait(timeout=max(0.0, signalled + EXIT_WITHIN - time.monotonic()))
    except Exception:  # noqa: BLE001
        raise AssertionError(f"the gateway was still running {EXIT_WITHIN} s after SIGTERM")
    exited = time.monotonic() - signalled
    expect(status == 0, f"the gateway exited with status {status}")

    short = runs[-1][3]
    expect(short["err"] is None and short["text"] == ANSWER,
           f"the stream that ends inside the grace did not end normally: {short}")
    for _, tag, _, result in runs[:-1]:
        err = result["err"]
        expect(type(err) is openai.APIError,
               f"{tag}: {type(err).__name__}: {err} (an APIError from the shutdown event expected)")
        expect("shutting down" in err.message, f"{tag}: {err.message!r}")
    tags = {tag for _, tag, _, _ in runs[:-1]}
    cancelled, _ = poll_stats(
        servers,
        lambda s: {c["tag"] for c in s["cancellations"]} >= tags,
        within=2,
    )
    expect(cancelled, "not every babbling upstream generator was cancelled")
    completions = tagged(poll_stats(servers, lambda s: True, within=0)[1], "completions",
                         "grace-short")
    expect(len(completions) == 2, f"the short stream's upstream did not complete: {completions}")
    return (f"{STREAMS} APIErrors ({runs[0][3]['err'].message!r}), the short stream complete, "
            f"exit 0 after {exited:.3f} s, every babbler cancelled")


def main() -> int:
    servers = Servers(gateway_argument(__doc__.splitlines()[0]), gateway_flags=FLAGS)
    checks = [("1 SIGTERM with 20 streams in flight and a 1 s grace", check_shutdown)]
    return run_checks(servers, checks, " ".join(FLAGS))


if __name__ == "__main__":
    sys.exit(main())
