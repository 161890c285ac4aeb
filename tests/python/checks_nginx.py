"""Two gateway replicas behind nginx, with the real `openai` SDK and LangChain.

    python checks_nginx.py --gateway PATH/TO/stream-deadline-gateway

Starts the upstream, two gateways in front of it, and nginx (Debian's package; `run.sh`
installs it) on 127.0.0.1 as a plain process, with a configuration written into a temporary
directory: the `http { }` part is `gateway/nginx-replicas.conf`, the snippet the gateway's
README shows, with the example addresses replaced by the ports of this run. It has no
`proxy_buffering off`: the gateway's `X-Accel-Buffering: no` on event streams is what keeps
nginx from holding tokens back.

0. The gateway's README (gateway/README.md) shows `gateway/nginx-replicas.conf` as it is.
1. The `openai` SDK through nginx sees each token as it streams (the first within 0.3 s of
   the upstream's receipt of the request, no gap over 0.25 s; the upstream sends one every
   20 ms), then the deadline's `APIError` at the budget, and the upstream generator is
   cancelled. Without the gateway's header, nginx 1.22 passes the stream on in 4 KB bursts,
   about 20 tokens and 0.4 s apart, the first one included.
2. The same for a LangChain `prompt | ChatOpenAI` chain with `astream()`.
3. One replica gets SIGTERM while six streams run through nginx: the streams it had started
   run on to their own budget (the grace is longer) and end with the deadline's error event,
   and it exits 0; eight requests started after the signal are all answered in full by the
   other replica, none fails; every babbling upstream generator is cancelled and every
   answer's generator completes.
"""

import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import openai

from checks import (
    ANSWER,
    PROMPT,
    STALL_GUARD,
    TOTAL,
    Servers,
    expect,
    free_port,
    gateway_argument,
    is_deadline_event,
    langchain_llm,
    poll_stats,
    run_checks,
    stream_chat,
    run_async,
    tagged,
    upstream_stats,
    wait_until_serving,
)

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = ROOT / "gateway" / "nginx-replicas.conf"
README = ROOT / "gateway" / "README.md"
# The example addresses in the snippet, replaced by this run's.
REPLICA_A, REPLICA_B, NGINX = "127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8080"

FLAGS = ["--total", "2s", "--first-frame", "500ms", "--idle", "1s", "--retries", "2",
         "--shutdown-grace", "5s"]
# Tokens leave the upstream every 20 ms: what "as they stream" allows for, the first token
# counted from the upstream's receipt of the request.
FIRST_TOKEN_WITHIN = 0.3
LONGEST_GAP = 0.25
# How late past the budget the deadline's error may reach the client.
ERROR_WITHIN = 0.5
DRAINING_STREAMS = 6
AFTER_SIGNAL = 8
# The draining replica's streams end at their budget; it exits soon after.
EXIT_WITHIN = TOTAL + 2.0


def find_nginx() -> str:
    found = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if not found:
        raise RuntimeError("nginx is not installed (tests/python/run.sh installs it)")
    return found


def nginx_conf(directory: Path, replica_a: str, replica_b: str, listen: str) -> str:
    """The whole configuration: process-level settings with every path inside `directory`,
    around the README's snippet with this run's addresses."""
    snippet = SNIPPET.read_text()
    for example, actual in ((REPLICA_A, replica_a), (REPLICA_B, replica_b), (NGINX, listen)):
        if snippet.count(example) != 1:
            raise RuntimeError(f"{SNIPPET.name} names {example} {snippet.count(example)} times")
        snippet = snippet.replace(example, actual)
    user = pwd.getpwuid(os.getuid()).pw_name
    return f"""\
# Written by checks_nginx.py: a plain process on 127.0.0.1, nothing outside {directory}.
user {user};
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/nginx-error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {directory}/nginx-access.log;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;

{snippet}
}}
"""


class Replicas(Servers):
    """The upstream, replica A (`self.gateway`), replica B, and nginx in front of both;
    `gateway_url` is nginx's, so the clients of checks.py go through it."""

    def start(self):
        super().start()
        self.replica_a = (self.gateway, self.gateway_url, self.gateway_admin)
        self.replica_b = self.start_gateway(self.gateway_flags, log_name="gateway-b.log")
        directory = self.logs / "nginx"
        directory.mkdir()
        conf = directory / "nginx.conf"
        listen = f"127.0.0.1:{free_port()}"
        conf.write_text(nginx_conf(directory, address(self.replica_a[1]),
                                   address(self.replica_b[1]), listen))
        nginx = self._spawn(
            [find_nginx(), "-p", str(directory), "-c", str(conf), "-e",
             str(directory / "nginx-error.log"), "-g", "daemon off;"],
            "nginx.log",
        )
        self.gateway_url = f"http://{listen}"
        wait_until_serving(f"{self.gateway_url}/stats", nginx, "nginx")


def address(url: str) -> str:
    return url.removeprefix("http://")


def metric(admin: str, name: str, labels: str = "") -> float:
    with urllib.request.urlopen(f"{admin}/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def client(servers: Servers) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{servers.gateway_url}/v1", api_key="sk-local",
                         max_retries=0, timeout=STALL_GUARD)


def received_at(servers: Servers, tag: str) -> float:
    """When the upstream got the one request tagged `tag` (wall clock)."""
    requests = tagged(upstream_stats(servers), "requests", tag)
    expect(len(requests) == 1, f"the upstream saw {len(requests)} requests, not 1")
    return requests[0]["at"]


def as_they_stream(arrivals: list, received: float) -> str:
    """Checks the wall-clock arrival times of a stream's tokens, the upstream having got the
    request at `received`; a short description."""
    expect(arrivals, "no tokens arrived")
    first = arrivals[0] - received
    gap = max((b - a for a, b in zip(arrivals, arrivals[1:])), default=0.0)
    expect(first < FIRST_TOKEN_WITHIN,
           f"the first token arrived {first:.3f} s after the upstream got the request: "
           "nginx held it back")
    expect(gap < LONGEST_GAP,
           f"{len(arrivals)} tokens with a {gap * 1000:.0f} ms gap between two: nginx "
           "passed them on in bursts")
    return f"{len(arrivals)} tokens, the first at +{first * 1000:.0f} ms, gaps at most {gap * 1000:.0f} ms"


def at_the_budget(err, elapsed: float) -> None:
    """`elapsed`: from the upstream's receipt of the request to the error (the gateway's
    budget started a little earlier, when the gateway got it)."""
    expect(err is not None, "the stream ended without an error")
    expect(is_deadline_event(err), f"not the gateway's deadline error: {type(err).__name__}: {err}")
    expect(TOTAL - 0.05 <= elapsed < TOTAL + ERROR_WITHIN,
           f"the deadline's error came at +{elapsed:.3f} s, not at the {TOTAL:g} s budget")


def upstream_cancelled(servers: Servers, tag: str) -> None:
    cancelled, _ = poll_stats(servers, lambda s: tagged(s, "cancellations", tag), within=2)
    expect(cancelled, f"{tag}: the upstream generator was never cancelled")


def check_readme_shows_the_snippet(servers: Servers) -> str:
    """0. The gateway's README shows the nginx snippet these checks load."""
    readme = README.read_text()
    expect(SNIPPET.read_text().strip() in readme,
           f"gateway/README.md does not show {SNIPPET.name} as it is")
    return f"gateway/README.md shows {SNIPPET.name}"


def check_openai_sdk_through_nginx(servers: Servers) -> str:
    """1. openai SDK through nginx: tokens as they stream, the deadline's error at the budget."""
    tag = "nginx-openai"
    arrivals, err = [], None
    try:
        for chunk in client(servers).chat.completions.create(
            model="babbler",
            messages=[{"role": "user", "content": "Tell me everything."}],
            stream=True,
            extra_headers={"x-check": tag},
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.time())
    except openai.APIError as raised:
        err = raised
    received = received_at(servers, tag)
    elapsed = time.time() - received
    streamed = as_they_stream(arrivals, received)
    at_the_budget(err, elapsed)
    upstream_cancelled(servers, tag)
    return f"{streamed}; APIError at +{elapsed:.3f} s: {err.message!r}"


def check_langchain_through_nginx(servers: Servers) -> str:
    """2. LangChain chain.astream() through nginx: the same."""
    tag = "nginx-langchain"

    async def run():
        llm = langchain_llm(servers.gateway_url, "babbler", tag)
        arrivals, err = [], None
        try:
            async for chunk in (PROMPT | llm).astream({"question": "Tell me everything."}):
                if chunk.content:
                    arrivals.append(time.time())
        except openai.APIError as raised:
            err = raised
        return arrivals, err, time.time()

    (arrivals, err, ended), _ = run_async(run())
    received = received_at(servers, tag)
    elapsed = ended - received
    streamed = as_they_stream(arrivals, received)
    at_the_budget(err, elapsed)
    upstream_cancelled(servers, tag)
    return f"{streamed}; APIError at +{elapsed:.3f} s"


def stream(servers: Servers, model: str, tag: str, first_token: threading.Event, result: dict):
    stream_chat(client(servers), model, tag, first_token, result)


def refuses_connections(url: str) -> bool:
    host, port = address(url).rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def served(admin: str) -> float:
    """The requests a replica forwarded and streamed to their last event."""
    # No model of these requests has a policy of its own: they are counted as `other`. The
    # openai SDK closes its connection as soon as it reads `data: [DONE]`, and nginx then
    # closes its own to the replica: when the chunked body's last chunk leaves the upstream
    # after that event (a write of its own), the replica sees the client leave first and
    # counts the answer as `dropped`, although the client read all of it.
    return sum(metric(admin, "stream_deadline_requests_total", f'ending="{ending}",model="other"')
               for ending in ("completed", "dropped"))


def check_sigterm_one_replica(servers: Replicas) -> str:
    """3. SIGTERM to one replica while streams run: drain there, the rest served by the other."""
    gateway_a, url_a, admin_a = servers.replica_a
    _, _, admin_b = servers.replica_b
    # The answers' tag is served at once after its first (stuck, retried) request.
    warm = {}
    stream(servers, "stuck-once", "after-signal", threading.Event(), warm)
    expect(warm["err"] is None and warm["text"] == ANSWER, f"warm-up failed: {warm}")

    draining = [(f"draining-{i}", threading.Event(), {}) for i in range(DRAINING_STREAMS)]
    threads = [threading.Thread(target=stream, args=(servers, "babbler", tag, first, result),
                                daemon=True) for tag, first, result in draining]
    for thread in threads:
        thread.start()
    for tag, first, _ in draining:
        expect(first.wait(STALL_GUARD), f"{tag} never started")
    on_a = metric(admin_a, "stream_deadline_in_flight")
    expect(on_a >= 1, "nginx sent none of the streams to the replica about to stop")
    served_before = served(admin_b)

    gateway_a.terminate()
    signalled = time.monotonic()
    while not refuses_connections(url_a):
        expect(time.monotonic() - signalled < 1.0, "the stopping replica still accepts after 1 s")
        time.sleep(0.005)  # a poll interval
    expect(gateway_a.poll() is None, "the stopping replica exited with streams in flight")

    answers = [threading.Event() for _ in range(AFTER_SIGNAL)]
    results = [{} for _ in range(AFTER_SIGNAL)]
    later = [threading.Thread(target=stream,
                              args=(servers, "stuck-once", "after-signal", answers[i], results[i]),
                              daemon=True) for i in range(AFTER_SIGNAL)]
    for thread in later:
        thread.start()
    for thread in threads + later:
        thread.join(STALL_GUARD)

    try:
        status = gateway_a.wait(timeout=max(0.0, signalled + EXIT_WITHIN - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the stopping replica was still running {EXIT_WITHIN} s after SIGTERM")
    expect(status == 0, f"the stopping replica exited with status {status}")
    for i, result in enumerate(results):
        expect(result["err"] is None and result["text"] == ANSWER,
               f"request {i} started after the signal: {result['err']!r}, {result['text']!r}")
    for tag, _, result in draining:
        err = result["err"]
        expect(is_deadline_event(err),
               f"{tag}: {type(err).__name__}: {err} (the deadline's error event expected)")
        expect(TOTAL <= result["took"] < TOTAL + ERROR_WITHIN,
               f"{tag} ended after {result['took']:.3f} s, not at its budget")
    served_b, _ = poll_stats(servers, lambda s: served(admin_b) - served_before >= AFTER_SIGNAL,
                             within=2)
    expect(served_b and served(admin_b) - served_before == AFTER_SIGNAL,
           f"the other replica answered {served(admin_b) - served_before:g} requests, "
           f"not the {AFTER_SIGNAL} started after the signal")
    tags = {tag for tag, _, _ in draining}
    cancelled, stats = poll_stats(
        servers, lambda s: {c["tag"] for c in s["cancellations"]} >= tags, within=2)
    expect(cancelled, "not every babbling upstream generator was cancelled")
    answered = tagged(stats, "completions", "after-signal")
    expect(len(answered) == AFTER_SIGNAL + 1,
           f"{len(answered)} answer generators completed, not {AFTER_SIGNAL + 1}")
    return (f"{on_a:g} of {DRAINING_STREAMS} streams on the stopping replica, all ended by their "
            f"budget, exit 0 after {time.monotonic() - signalled:.3f} s at most; "
            f"{AFTER_SIGNAL} later requests all answered by the other replica; every babbler "
            "cancelled")


def main() -> int:
    servers = Replicas(gateway_argument(__doc__.splitlines()[0]), gateway_flags=FLAGS)
    checks = [
        ("0 the gateway's README shows the tested nginx snippet", check_readme_shows_the_snippet),
        ("1 openai SDK through nginx: tokens as they stream, error at the budget",
         check_openai_sdk_through_nginx),
        ("2 LangChain astream() through nginx: the same", check_langchain_through_nginx),
        ("3 SIGTERM to one replica while streams run", check_sigterm_one_replica),
    ]
    return run_checks(servers, checks, "two replicas behind nginx, " + " ".join(FLAGS))


if __name__ == "__main__":
    sys.exit(main())
