"""A client that stops reading without closing, through the gateway.

    python checks_stalled_reader.py --gateway PATH/TO/stream-deadline-gateway

A proxy polls a response body only while its client's socket takes bytes: a stuck browser
tab, a consumer blocked on its own work or a full TCP window stops the polls. The gateway
still releases the upstream at the deadline (the layer's `release_unpolled`), so the model
server stops generating for nobody.

1. A raw HTTP/1.1 client with a small receive buffer asks for the `firehose` model (256 KiB
   tokens every 20 ms), reads the first 32 KiB, then stops reading and keeps the connection
   open. The upstream generator is cancelled within 250 ms of the 2 s total budget.
"""

import json
import socket
import sys
import time
from urllib.parse import urlsplit

from checks import (
    CANCEL_WITHIN,
    STALL_GUARD,
    Servers,
    expect,
    gateway_argument,
    poll_stats,
    run_checks,
    tagged,
)

TOTAL = 2.0
# Only the total budget: a body left unpolled mid-wait would otherwise be cut at the idle
# budget, and this check is about the deadline a reader cannot postpone.
FLAGS = ["--total", "2s", "--first-frame", "500ms", "--idle", "off", "--retries", "0"]
READ_FIRST = 32 * 1024
RECEIVE_BUFFER = 4096


def check_a_client_that_stops_reading(servers: Servers) -> str:
    tag = "stalled-reader"
    address = urlsplit(servers.gateway_url)
    body = json.dumps({
        "model": "firehose",
        "stream": True,
        "messages": [{"role": "user", "content": "Tell me everything."}],
    }).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {address.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"x-check: {tag}\r\n\r\n"
    ).encode() + body
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        # Set before connecting, so the window the client offers stays small.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        client.settimeout(STALL_GUARD)
        client.connect((address.hostname, address.port))
        started = time.time()
        client.sendall(request)
        received = b""
        while len(received) < READ_FIRST:
            chunk = client.recv(READ_FIRST - len(received))
            expect(chunk, f"the gateway closed the stream after {len(received)} bytes")
            received += chunk
        expect(received.startswith(b"HTTP/1.1 200"), f"not a 200: {received[:60]!r}")
        stopped_reading = time.time() - started
        # From here on the client reads nothing and keeps the connection open.
        cancellations, stats = poll_stats(
            servers, lambda s: tagged(s, "cancellations", tag), within=TOTAL + CANCEL_WITHIN + 2
        )
    expect(len(tagged(stats, "requests", tag)) == 1, "the upstream did not see exactly one request")
    expect(cancellations, "the upstream generator was never cancelled while the client held on")
    late = cancellations[0]["at"] - (started + TOTAL)
    expect(
        -0.005 <= late <= CANCEL_WITHIN,
        f"upstream generator cancelled {late * 1000:+.0f} ms from the deadline "
        f"(allowed: 0 to {CANCEL_WITHIN * 1000:.0f} ms)",
    )
    return (
        f"read {len(received)} bytes, stopped reading at +{stopped_reading:.3f} s; upstream "
        f"generator cancelled ({cancellations[0]['how']}) {late * 1000:.0f} ms after the "
        f"deadline, after {cancellations[0]['chunks']} chunks"
    )


CHECKS = [("a client that stops reading, the upstream released at the deadline",
           check_a_client_that_stops_reading)]


if __name__ == "__main__":
    servers = Servers(gateway_argument(__doc__.splitlines()[0]), gateway_flags=FLAGS)
    sys.exit(run_checks(servers, CHECKS, " ".join(FLAGS)))
