"""Slow and silent clients alongside normal traffic, through the gateway.

    python checks_slow_clients.py --gateway PATH/TO/stream-deadline-gateway

A client that connects and sends nothing, an HTTP/2 client that sends only its preface, a
request head sent a byte at a time, a request body sent a byte at a time: each holds one of
`--max-connections`. The gateway closes them by its limits (`--header-read-timeout` from the
accept, the request's total budget for a body), and the `openai` SDK's requests keep their
latency meanwhile.

1. Baseline: 20 `openai` SDK streams one after another, each timed to its first token.
2. The same streams (20, and more until the last slow client is closed) while 40 silent TCP connections, 5 HTTP/2 connections that send only
   a preface and SETTINGS, one head sent a byte every 100 ms and one body sent a byte every
   100 ms are open: every silent connection and the slow head are closed between 1 s and 2 s
   of their accept, the slow body is answered `408` between 2 s and 3 s, and no stream's
   first token takes more than twice the baseline's slowest plus 50 ms.

Only 127.0.0.1; the whole run lasts a few seconds and is bounded by the checks' watchdog.
"""

import selectors
import socket
import statistics
import sys
import threading
import time
from urllib.parse import urlsplit

import openai

from checks import Servers, expect, gateway_argument, run_checks

HEAD_TIMEOUT = 1.0
TOTAL = 2.0
FLAGS = [
    "--header-read-timeout", "1s", "--total", "2s", "--request-body-idle", "30s",
    "--first-frame", "500ms", "--idle", "1s", "--retries", "0", "--max-connections", "64",
]
# How late after its limit the gateway may close a connection.
CLOSE_WITHIN = 1.0
STREAMS = 20
SILENT = 40
H2_ONLY_PREFACE = 5
TRICKLE_EVERY = 0.1
# The HTTP/2 connection preface, then an empty SETTINGS frame.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def first_token_latencies(servers: Servers, tag: str, also_while=lambda: False) -> list:
    """`STREAMS` streams from the `babbler` model, one after another, and more for as long as
    `also_while()` holds: the seconds each took from the request to its first token."""
    sdk = openai.OpenAI(base_url=f"{servers.gateway_url}/v1", api_key="sk-test", max_retries=0,
                        timeout=10.0)
    latencies = []
    while len(latencies) < STREAMS or also_while():
        started = time.perf_counter()
        stream = sdk.chat.completions.create(
            model="babbler", stream=True, extra_headers={"x-check": tag},
            messages=[{"role": "user", "content": "Say something."}],
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        latencies.append(time.perf_counter() - started)
        stream.close()
    sdk.close()
    return latencies


def connect(servers: Servers) -> socket.socket:
    address = urlsplit(servers.gateway_url)
    client = socket.create_connection((address.hostname, address.port), timeout=10)
    client.setblocking(False)
    return client


def connected(servers: Servers) -> tuple:
    """A new connection, and the time just before it was made."""
    started = time.monotonic()
    return connect(servers), started


def watch_until_closed(clients: list, within: float) -> list:
    """Reads and discards what the gateway sends on `clients` until it closes each: the
    seconds each stayed open after `started` (None for one still open after `within`)."""
    closed = [None] * len(clients)
    with selectors.DefaultSelector() as selector:
        for n, (client, _) in enumerate(clients):
            selector.register(client, selectors.EVENT_READ, n)
        deadline = time.monotonic() + within
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=deadline - time.monotonic()):
                client, started = clients[key.data]
                try:
                    data = client.recv(65536)
                except (ConnectionResetError, BlockingIOError) as err:
                    data = b"" if isinstance(err, ConnectionResetError) else None
                if data == b"":
                    closed[key.data] = time.monotonic() - started
                    selector.unregister(client)
    return closed


def trickle(client: socket.socket, head: bytes, stop: threading.Event) -> None:
    """Sends `head`, then a byte every `TRICKLE_EVERY` until the gateway stops taking them."""
    client.setblocking(True)
    try:
        client.sendall(head)
        while not stop.wait(TRICKLE_EVERY):
            client.sendall(b"a")
    except OSError:
        pass


def answer_of(client: socket.socket, within: float) -> tuple:
    """What the gateway sends on `client` until it closes it, and when that was."""
    client.settimeout(within)
    answer = b""
    try:
        while chunk := client.recv(65536):
            answer += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return answer, time.monotonic()


def check_slow_clients_alongside_normal_traffic(servers: Servers) -> str:
    baseline = first_token_latencies(servers, "slow-clients-baseline")

    # Each clock starts before the connect: the gateway's starts at its accept, which may
    # come before `connect` returns here.
    silent = []
    for _ in range(SILENT):
        silent.append(connected(servers))
    for _ in range(H2_ONLY_PREFACE):
        client, started = connected(servers)
        client.sendall(H2_PREFACE)
        silent.append((client, started))
    stop = threading.Event()
    slow_head, head_started = connected(servers)
    threading.Thread(target=trickle, daemon=True, args=(
        slow_head, b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\nx-pad: ", stop,
    )).start()
    slow_body, body_started = connected(servers)
    threading.Thread(target=trickle, daemon=True, args=(
        slow_body,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json"
        b"\r\ncontent-length: 100000\r\n\r\n",
        stop,
    )).start()
    results = {}
    watchers = [
        threading.Thread(target=lambda: results.update(
            silent=watch_until_closed(silent, HEAD_TIMEOUT + CLOSE_WITHIN + 5))),
        threading.Thread(target=lambda: results.update(
            head=answer_of(slow_head, HEAD_TIMEOUT + CLOSE_WITHIN + 5))),
        threading.Thread(target=lambda: results.update(
            body=answer_of(slow_body, TOTAL + CLOSE_WITHIN + 5))),
    ]
    for watcher in watchers:
        watcher.start()
    during = first_token_latencies(
        servers, "slow-clients-during", lambda: any(w.is_alive() for w in watchers))
    for watcher in watchers:
        watcher.join()
    stop.set()
    for client, _ in silent:
        client.close()
    slow_head.close()
    slow_body.close()

    closed = results["silent"]
    still_open = [n for n, after in enumerate(closed) if after is None]
    expect(not still_open, f"connections {still_open} of the silent ones were never closed")
    expect(
        all(HEAD_TIMEOUT <= after <= HEAD_TIMEOUT + CLOSE_WITHIN for after in closed),
        f"silent connections closed after {min(closed):.3f} to {max(closed):.3f} s "
        f"(allowed: {HEAD_TIMEOUT} to {HEAD_TIMEOUT + CLOSE_WITHIN} s)",
    )
    _, head_closed = results["head"]
    head_after = head_closed - head_started
    expect(
        HEAD_TIMEOUT <= head_after <= HEAD_TIMEOUT + CLOSE_WITHIN,
        f"the slow head was closed after {head_after:.3f} s",
    )
    body_answer, body_closed = results["body"]
    body_after = body_closed - body_started
    expect(body_answer.startswith(b"HTTP/1.1 408"), f"the slow body got {body_answer[:80]!r}")
    expect(
        TOTAL <= body_after <= TOTAL + CLOSE_WITHIN,
        f"the slow body was answered after {body_after:.3f} s",
    )
    allowed = 2 * max(baseline) + 0.05
    expect(
        max(during) <= allowed,
        f"first tokens took up to {max(during) * 1000:.0f} ms among the slow clients "
        f"(allowed {allowed * 1000:.0f} ms; baseline up to {max(baseline) * 1000:.0f} ms)",
    )
    return (
        f"{len(closed)} silent connections closed after {min(closed):.3f} to "
        f"{max(closed):.3f} s, the slow head after {head_after:.3f} s, the slow body answered "
        f"408 after {body_after:.3f} s; first token median {statistics.median(during) * 1000:.1f}"
        f" ms, max {max(during) * 1000:.1f} ms among them (baseline median "
        f"{statistics.median(baseline) * 1000:.1f} ms, max {max(baseline) * 1000:.1f} ms)"
    )


CHECKS = [("slow and silent clients alongside normal traffic",
           check_slow_clients_alongside_normal_traffic)]


if __name__ == "__main__":
    servers = Servers(gateway_argument(__doc__.splitlines()[0]), gateway_flags=FLAGS)
    sys.exit(run_checks(servers, CHECKS, " ".join(FLAGS)))
