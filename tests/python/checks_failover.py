"""Several upstreams behind the gateway, as the real OpenAI and Anthropic clients see them.

    python checks_failover.py --gateway PATH/TO/stream-deadline-gateway

Starts one `upstream.py` per replica, each on its own port of 127.0.0.1 and each with one
behaviour for every stream (`--every-stream`): healthy, stuck before its first token,
overloaded, slow or fast to its first token, babbling. Each check starts a gateway of its
own in front of some of them, so that each starts with every upstream healthy, then:

1. Two upstreams, one stuck before its first token (`--first-frame 500ms --retries 2`):
   ten `openai` SDK streams, one after the other, all arrive whole; none waits more than
   one first-frame budget for its first token; no request is sent twice to the stuck one;
   after three misses it gets no more first attempts (`stream_deadline_upstream_out` is 1,
   `stream_deadline_upstream_attempts_total` counts its three first-frame deadlines).
2. One upstream refusing connections (nothing listens on its port), `--retries 0`: every
   request is answered whole by the other, its first token within 250 ms.
3. Hedging (`--hedge-after 300ms --retries 1`): one upstream with a 2 s first token, the
   other 50 ms: every first token within 450 ms (the hedge's 300 ms, the fast one's 50 ms,
   100 ms for the clients and servers), and each slow attempt's generator cancelled within
   250 ms of the fast one's first token, never answering. One request at a time, first
   attempts take turns: the fast upstream gets some of them too.
4. An upstream whose first event is an `overloaded` error beside a healthy one
   (`--retries 1`): `openai` chat streams and `anthropic` `messages.stream` all complete on
   the healthy one.
5. The overloaded upstream alone (`--retries 2`): the client gets the upstream's own error
   (`openai.APIError`, `anthropic.APIStatusError`, with its `Overloaded` message) after
   three attempts.
6. `--config` with two models on different upstreams and budgets (800 ms, 1.4 s; the
   flags 2 s): each babbling stream cut at its own budget, each sent only to its own
   upstream, a third model to the flags' upstream; SIGHUP after a change (`model-a` to the
   other upstream, 500 ms) applies it to requests from then on while the stream in flight
   keeps its 800 ms; after a file that does not load, the gateway keeps the last good one.

The gateway of one upstream (`37568a7`) fails every check: 1 to 4 and 6 at its start (it
refuses `--upstream` given twice, `--hedge-after` and `--config`), 5 because it passes the
first `overloaded` event on after one attempt. A gateway whose turn moves on at each hedge
as well as at each first attempt fails 3: every first attempt goes to the slow upstream.
"""

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import anthropic
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True  # no __pycache__ next to the sources
from checks import (  # noqa: E402
    CANCEL_WITHIN,
    Servers,
    expect,
    free_port,
    gateway_argument,
    read_listen_address,
    run_checks,
    tagged,
    wait_until_serving,
)
from checks_endings import (  # noqa: E402
    anthropic_client,
    chat_deltas,
    messages_deltas,
    openai_client,
)
from upstream import ANSWER, OVERLOADED  # noqa: E402

# The replicas: the arguments each `upstream.py` gets after its port.
REPLICAS = {
    "healthy": ["--every-stream", "answer"],
    "stuck": ["--every-stream", "stuck"],
    "overloaded": ["--every-stream", "overloaded"],
    "slow": ["--every-stream", "answer", "--first-token-after", "2"],
    "fast": ["--every-stream", "answer", "--first-token-after", "0.05"],
    "babbler-a": ["--every-stream", "babbler"],
    "babbler-b": ["--every-stream", "babbler"],
    "babbler-flags": ["--every-stream", "babbler"],
}
# The pool's rule (gateway/src/pool.rs): failed attempts in a row that leave an upstream out.
FAILURES_TO_LEAVE_OUT = 3
# How late past a budget the client may see its effect: the clients' and servers' own time.
SLACK = 0.25
# "At once": a refused connection costs no more than this before the answer's first token.
AT_ONCE = 0.25
HEDGE_AFTER = 0.3
FAST_FIRST_TOKEN = 0.05
HEDGED_FIRST_TOKEN_WITHIN = HEDGE_AFTER + FAST_FIRST_TOKEN + 0.1
# How long a reload may take to show in the gateway's log.
RELOAD_WITHIN = 5.0


class Replicas(Servers):
    """One `upstream.py` per replica, and a gateway per check in front of some of them."""

    def __init__(self, gateway_bin: str):
        super().__init__(gateway_bin, gateway_flags=[])
        self.urls: dict = {}
        self.gateways = 0

    def start(self):
        spawned = {}
        for name, args in REPLICAS.items():
            port = free_port()
            self.urls[name] = f"http://127.0.0.1:{port}"
            argv = [sys.executable, str(Path(__file__).resolve().parent / "upstream.py")]
            spawned[name] = self._spawn([*argv, str(port), *args], f"upstream-{name}.log")
        for name, proc in spawned.items():
            wait_until_serving(f"{self.urls[name]}/stats", proc, f"the {name} upstream")
        self.upstream_url = ", ".join(f"{name} {url}" for name, url in self.urls.items())
        self.gateway_url = "one gateway per check"

    def front(self, *flags: str) -> tuple:
        """A gateway with these flags (its upstreams among them): (process, URL, admin URL)."""
        self.gateways += 1
        proc = self._spawn(
            [self.gateway_bin, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
             *flags],
            f"gateway-{self.gateways}.log",
            stdout=subprocess.PIPE,
        )
        url, admin = read_listen_address(proc)
        wait_until_serving(f"{admin}/readyz", proc, "the gateway")
        return proc, url, admin

    def stats(self, name: str) -> dict:
        with urllib.request.urlopen(f"{self.urls[name]}/stats", timeout=5) as response:
            return json.load(response)

    def log(self, name: str) -> str:
        if name != "upstream.log":
            return super().log(name)
        logs = (f"{n}: {super(Replicas, self).log(f'upstream-{n}.log')}" for n in self.urls)
        return "\n".join(logs)


def upstreams(servers: Replicas, *names: str) -> list:
    return [arg for name in names for arg in ("--upstream", servers.urls[name])]


def metrics(admin: str) -> dict:
    """The gateway's metrics: {series with its labels: value}."""
    with urllib.request.urlopen(f"{admin}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            samples[series] = float(value)
    return samples


def attempts(samples: dict, url: str, result: str) -> float:
    return samples.get(
        f'stream_deadline_upstream_attempts_total{{upstream="{url}",result="{result}"}}', 0.0
    )


def out(samples: dict, url: str):
    return samples.get(f'stream_deadline_upstream_out{{upstream="{url}"}}')


@dataclass
class Chat:
    text: str
    finish_reason: str | None
    first_token: float | None  # seconds after the call
    first_token_at: float | None  # wall clock, to compare with the upstreams' records
    took: float


def sdk(origin: str) -> openai.OpenAI:
    """An `openai` client, made before any clock starts, with its chat resource loaded: the
    SDK imports it at first use, which is no time of the gateway's."""
    client = openai_client(origin)
    _ = client.chat.completions
    return client


def chat(client: openai.OpenAI, tag: str, model: str = "answer") -> Chat:
    """One `openai` SDK chat stream, read to its end."""
    started, started_at = time.monotonic(), time.time()
    text, finish_reason, first_token, first_token_at = "", None, None, None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello."}],
        stream=True,
        extra_headers={"x-check": tag},
    )
    for chunk in stream:
        if not chunk.choices:
            continue
        if chunk.choices[0].delta.content:
            if first_token is None:
                first_token = time.monotonic() - started
                first_token_at = started_at + first_token
            text += chunk.choices[0].delta.content
        finish_reason = chunk.choices[0].finish_reason or finish_reason
    return Chat(text, finish_reason, first_token, first_token_at, time.monotonic() - started)


def expect_whole(answer: Chat, tag: str):
    expect(answer.text == ANSWER, f"{tag}: the answer was {answer.text!r}")
    expect(answer.finish_reason == "stop", f"{tag}: finish_reason {answer.finish_reason!r}")


def stream_each(client: openai.OpenAI, tags: list, first_token_within: float) -> dict:
    """Streams one request per tag, one after another, each read whole and its first token
    within `first_token_within` s: {tag: Chat}."""
    answers = {}
    for tag in tags:
        answer = chat(client, tag)
        expect_whole(answer, tag)
        expect(
            answer.first_token <= first_token_within,
            f"{tag}: first token after {answer.first_token:.3f} s "
            f"(allowed {first_token_within:.2f} s)",
        )
        answers[tag] = answer
    return answers


def expect_each_once(servers: Replicas, name: str, key: str, tags: list):
    seen = by_tag(servers.stats(name), key)
    counts = {tag: len(seen.get(tag, [])) for tag in tags}
    expect(all(n == 1 for n in counts.values()), f"{key} at the {name} upstream: {counts}")


def by_tag(stats: dict, key: str) -> dict:
    """{tag: [records]} of `stats[key]`."""
    found: dict = {}
    for entry in stats[key]:
        found.setdefault(entry["tag"], []).append(entry)
    return found


def poll(servers: Replicas, name: str, ready, within: float = CANCEL_WITHIN + 2):
    """Polls an upstream's /stats until `ready(stats)`, for at most `within` s."""
    deadline = time.monotonic() + within
    while True:
        stats = servers.stats(name)
        if ready(stats) or time.monotonic() >= deadline:
            return stats
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------

STUCK_FIRST_FRAME = 0.5
STUCK_STREAMS = 10


def check_stuck_upstream(servers: Replicas) -> str:
    """1. One of two upstreams stuck: every stream whole within one first-frame budget."""
    _, url, admin = servers.front(
        *upstreams(servers, "stuck", "healthy"), "--first-frame", "500ms", "--retries", "2"
    )
    client = sdk(url)
    tags = [f"stuck-{i}" for i in range(STUCK_STREAMS)]
    # None waits more than one first-frame budget.
    answers = stream_each(client, tags, STUCK_FIRST_FRAME + SLACK).values()
    stuck = poll(
        servers, "stuck",
        lambda s: len(by_tag(s, "cancellations").keys() & set(tags)) >= FAILURES_TO_LEAVE_OUT,
    )
    tried = {tag: n for tag, n in ((t, len(r)) for t, r in by_tag(stuck, "requests").items())
             if tag in tags}
    expect(all(n == 1 for n in tried.values()), f"a request tried twice on the stuck one: {tried}")
    expect(
        len(tried) == FAILURES_TO_LEAVE_OUT,
        f"the stuck upstream got {len(tried)} first attempts, not {FAILURES_TO_LEAVE_OUT}",
    )
    released = by_tag(stuck, "cancellations").keys() & set(tags)
    expect(released == tried.keys(), f"stuck attempts not released: {tried.keys() - released}")
    expect_each_once(servers, "healthy", "requests", tags)
    samples = metrics(admin)
    stuck_url, healthy_url = servers.urls["stuck"], servers.urls["healthy"]
    expect(out(samples, stuck_url) == 1, f"stuck upstream out: {out(samples, stuck_url)}")
    expect(out(samples, healthy_url) == 0, f"healthy upstream out: {out(samples, healthy_url)}")
    missed = attempts(samples, stuck_url, "deadline_first_frame")
    answered = attempts(samples, healthy_url, "answered")
    expect(missed == FAILURES_TO_LEAVE_OUT, f"{missed:g} first-frame deadlines at the stuck one")
    expect(answered == STUCK_STREAMS, f"{answered:g} answers from the healthy one")
    retried = [a.first_token for a in answers if a.first_token >= STUCK_FIRST_FRAME]
    direct = [a.first_token for a in answers if a.first_token < STUCK_FIRST_FRAME]
    return (
        f"{STUCK_STREAMS} streams whole; first tokens: {len(retried)} retried at "
        f"{min(retried):.3f}-{max(retried):.3f} s, {len(direct)} at {min(direct):.3f}-"
        f"{max(direct):.3f} s; the stuck upstream saw {len(tried)} requests, each once and "
        f"released, then was out (out=1, deadline_first_frame={missed:g}, "
        f"healthy answered={answered:g})"
    )


REFUSED_STREAMS = 6


def check_refusing_upstream(servers: Replicas) -> str:
    """2. One upstream refuses connections: every request answered at once by the other."""
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    _, url, admin = servers.front(
        "--upstream", refused, *upstreams(servers, "healthy"), "--first-frame", "1s",
        "--retries", "0",
    )
    client = sdk(url)
    tags = [f"refused-{i}" for i in range(REFUSED_STREAMS)]
    firsts = [a.first_token for a in stream_each(client, tags, AT_ONCE).values()]
    expect_each_once(servers, "healthy", "requests", tags)
    samples = metrics(admin)
    refusals = attempts(samples, refused, "refused")
    # Sequential requests take turns: the refusing one is first for the first three, then out.
    expect(refusals == FAILURES_TO_LEAVE_OUT, f"{refusals:g} refused attempts")
    expect(out(samples, refused) == 1, f"refusing upstream out: {out(samples, refused)}")
    return (
        f"{REFUSED_STREAMS} streams whole with --retries 0, first tokens "
        f"{min(firsts):.3f}-{max(firsts):.3f} s; {refusals:g} refused connections moved on at "
        "once, then the refusing upstream was out"
    )


HEDGED_STREAMS = 6


def check_hedging(servers: Replicas) -> str:
    """3. Hedging: every first token within ~0.4 s; the slow attempt cancelled at once."""
    _, url, admin = servers.front(
        *upstreams(servers, "slow", "fast"), "--hedge-after", "300ms", "--retries", "1",
        "--first-frame", "5s",
    )
    client = sdk(url)
    tags = [f"hedge-{i}" for i in range(HEDGED_STREAMS)]
    answers = stream_each(client, tags, HEDGED_FIRST_TOKEN_WITHIN)
    firsts = {tag: answer.first_token for tag, answer in answers.items()}
    slow_tags = set(by_tag(servers.stats("slow"), "requests")) & set(tags)
    expect(slow_tags, "the slow upstream got no first attempt")
    # One request at a time, both idle: first attempts take turns, whatever the hedges.
    expect(
        len(slow_tags) < len(tags),
        f"the slow upstream got the first attempt of all {len(tags)} requests, the fast one none",
    )
    slow = poll(servers, "slow", lambda s: slow_tags <= set(by_tag(s, "cancellations")))
    cancelled = by_tag(slow, "cancellations")
    expect(slow_tags <= set(cancelled), f"never cancelled: {slow_tags - set(cancelled)}")
    expect(not set(by_tag(slow, "completions")) & set(tags), "a slow attempt answered")
    expect(not set(by_tag(slow, "first_tokens")) & set(tags), "a slow attempt sent a token")
    fast_firsts = by_tag(servers.stats("fast"), "first_tokens")
    lags = []
    for tag in sorted(slow_tags):
        expect(len(cancelled[tag]) == 1 and len(fast_firsts.get(tag, [])) == 1,
               f"{tag}: not one slow attempt and one fast first token")
        lag = cancelled[tag][0]["at"] - fast_firsts[tag][0]["at"]
        expect(
            0 <= lag <= CANCEL_WITHIN,
            f"{tag}: slow generator cancelled {lag * 1000:+.0f} ms from the fast first token "
            f"(allowed: 0 to {CANCEL_WITHIN * 1000:.0f} ms)",
        )
        lags.append(lag)
    hedged = [firsts[tag] for tag in sorted(slow_tags)]
    cancels = attempts(metrics(admin), servers.urls["slow"], "cancelled")
    expect(cancels == len(slow_tags), f"{cancels:g} cancelled attempts counted at the slow one")
    return (
        f"{HEDGED_STREAMS} streams whole, first tokens {min(firsts.values()):.3f}-"
        f"{max(firsts.values()):.3f} s ({len(hedged)} first attempts at the slow one, hedged: "
        f"{min(hedged):.3f}-{max(hedged):.3f} s); each slow generator cancelled "
        f"{min(lags) * 1000:.0f}-{max(lags) * 1000:.0f} ms after the fast first token, none "
        "answered"
    )


OVERLOADED_STREAMS = 4


def check_overloaded_beside_healthy(servers: Replicas) -> str:
    """4. An overloaded first event: openai chat and anthropic messages complete elsewhere."""
    _, url, admin = servers.front(
        *upstreams(servers, "overloaded", "healthy"), "--retries", "1", "--first-frame", "1s"
    )
    client = sdk(url)
    messages_client = anthropic_client(url)
    tags = []
    for i in range(OVERLOADED_STREAMS):
        tag = f"overloaded-chat-{i}"
        expect_whole(chat(client, tag), tag)
        tags.append(tag)
    for i in range(OVERLOADED_STREAMS):
        tag = f"overloaded-messages-{i}"
        text = "".join(messages_deltas(messages_client, "answer", tag))
        expect(text == ANSWER, f"{tag}: the answer was {text!r}")
        tags.append(tag)
    overloaded = by_tag(servers.stats("overloaded"), "requests")
    tried = [tag for tag in tags if tag in overloaded]
    expect(tried, "the overloaded upstream got no attempt")
    expect(all(len(overloaded[tag]) == 1 for tag in tried), "a request tried twice there")
    expect_each_once(servers, "healthy", "completions", tags)
    errors = attempts(metrics(admin), servers.urls["overloaded"], "error_event")
    expect(errors == len(tried), f"{errors:g} error_event attempts counted, {len(tried)} made")
    return (
        f"{OVERLOADED_STREAMS} openai chat streams and {OVERLOADED_STREAMS} anthropic "
        f"messages.stream whole from the healthy upstream; {len(tried)} of them had their first "
        f"attempt answered `overloaded` (error_event={errors:g})"
    )


def check_overloaded_alone(servers: Replicas) -> str:
    """5. Alone: the upstream's own error reaches the client after retries + 1 attempts."""
    retries = 2
    _, url, _ = servers.front(
        *upstreams(servers, "overloaded"), "--retries", str(retries), "--first-frame", "1s"
    )
    client = sdk(url)
    try:
        chat(client, "alone-chat")
    except openai.APIError as raised:
        chat_err = raised
    else:
        chat_err = None
    expect(type(chat_err) is openai.APIError, f"openai: {type(chat_err).__name__}: {chat_err}")
    expect(chat_err.message == OVERLOADED, f"openai's message: {chat_err.message!r}")
    expect(chat_err.type == "overloaded_error", f"openai's error type: {chat_err.type!r}")
    try:
        "".join(messages_deltas(anthropic_client(url), "answer", "alone-messages"))
    except anthropic.APIStatusError as raised:
        messages_err = raised
    else:
        messages_err = None
    expect(messages_err is not None, "anthropic's stream ended without an error")
    body = messages_err.body if isinstance(messages_err.body, dict) else {}
    expect(
        body.get("error", {}).get("type") == "overloaded_error"
        and OVERLOADED in messages_err.message,
        f"anthropic's error does not carry the upstream's: {messages_err.message!r}",
    )
    requests = by_tag(servers.stats("overloaded"), "requests")
    counts = {tag: len(requests.get(tag, [])) for tag in ("alone-chat", "alone-messages")}
    expect(all(n == retries + 1 for n in counts.values()), f"attempts: {counts}, not {retries + 1}")
    return (
        f"after {retries + 1} attempts each: openai.APIError({chat_err.message!r}, "
        f"type={chat_err.type!r}); anthropic {type(messages_err).__name__}: "
        f"{messages_err.message!r}"
    )


def babble(client: openai.OpenAI, model: str, tag: str) -> tuple:
    """An `openai` SDK stream of a babbling upstream, to the error that ends it:
    (content tokens, the APIError, seconds taken)."""
    started = time.monotonic()
    tokens, err = 0, None
    try:
        for _ in chat_deltas(client, model, tag):
            tokens += 1
            expect(time.monotonic() - started < 10, f"{tag}: still streaming after 10 s")
    except openai.APIError as raised:
        err = raised
    return tokens, err, time.monotonic() - started


def expect_cut(result: tuple, budget: float, named: str, tag: str) -> float:
    tokens, err, took = result
    expect(tokens > 0, f"{tag}: no tokens")
    expect(type(err) is openai.APIError and err.code == "deadline_exceeded",
           f"{tag}: not the gateway's deadline error: {type(err).__name__}: {err}")
    expect(f"total budget of {named}" in err.message, f"{tag}: {err.message!r}: another budget")
    expect(budget <= took <= budget + SLACK, f"{tag}: cut after {took:.3f} s, budget {budget} s")
    return took


def models_file(a_upstream: str, a_total: str, b_upstream: str) -> str:
    return (
        f'[models."model-a"]\nupstreams = ["{a_upstream}"]\ntotal = "{a_total}"\n\n'
        f'[models."model-b"]\nupstreams = ["{b_upstream}"]\ntotal = "1400ms"\n'
    )


def wait_for_log(servers: Replicas, log_name: str, text: str, count: int = 1):
    deadline = time.monotonic() + RELOAD_WITHIN
    while servers.log(log_name).count(text) < count:
        expect(time.monotonic() < deadline, f"no {text!r} in the gateway's log")
        time.sleep(0.02)


def check_policies(servers: Replicas) -> str:
    """6. --config: each model cut at its own budget on its own upstreams; SIGHUP."""
    a, b, flags = (servers.urls[n] for n in ("babbler-a", "babbler-b", "babbler-flags"))
    config = servers.logs / "models.toml"
    config.write_text(models_file(a, "800ms", b))
    proc, url, admin = servers.front(
        "--upstream", flags, "--total", "2s", "--config", str(config)
    )
    log_name = f"gateway-{servers.gateways}.log"
    client = sdk(url)
    cuts = [
        expect_cut(babble(client, "model-a", "policy-a"), 0.8, "800ms", "model-a"),
        expect_cut(babble(client, "model-b", "policy-b"), 1.4, "1.4s", "model-b"),
        expect_cut(babble(client, "model-c", "policy-c"), 2.0, "2s", "model-c (the flags)"),
    ]
    seen = {name: by_tag(servers.stats(name), "requests")
            for name in ("babbler-a", "babbler-b", "babbler-flags")}
    expect(
        {name: sorted(r["model"] for rs in by.values() for r in rs) for name, by in seen.items()}
        == {"babbler-a": ["model-a"], "babbler-b": ["model-b"], "babbler-flags": ["model-c"]},
        f"requests not on their models' upstreams: {seen}",
    )

    # A change while a model-a stream is in flight: it keeps its 800 ms; the next gets 500 ms
    # on the other upstream.
    in_flight: dict = {}
    thread = threading.Thread(
        target=lambda: in_flight.update(result=babble(sdk(url), "model-a", "policy-a-in-flight"))
    )
    thread.start()
    poll(servers, "babbler-a", lambda s: tagged(s, "first_tokens", "policy-a-in-flight"), 5)
    config.write_text(models_file(b, "500ms", b))
    proc.send_signal(signal.SIGHUP)
    wait_for_log(servers, log_name, "--config reloaded")
    thread.join(timeout=10)
    expect("result" in in_flight, "the stream in flight did not end")
    kept = expect_cut(in_flight["result"], 0.8, "800ms", "model-a in flight across the reload")
    changed = expect_cut(babble(client, "model-a", "policy-a-changed"), 0.5, "500ms", "model-a")
    expect(tagged(servers.stats("babbler-b"), "requests", "policy-a-changed"),
           "model-a after the reload did not go to its new upstream")

    # A file that does not load: named in the log, and the last good one stays in force.
    config.write_text('[models."model-a"]\ntotal = "soon"\n')
    proc.send_signal(signal.SIGHUP)
    wait_for_log(servers, log_name, "--config not reloaded")
    still = expect_cut(babble(client, "model-a", "policy-a-kept"), 0.5, "500ms", "model-a")
    expect(tagged(servers.stats("babbler-b"), "requests", "policy-a-kept"),
           "model-a after a bad file did not stay on its upstream")
    return (
        f"cut at {cuts[0]:.3f} s (model-a, 800ms), {cuts[1]:.3f} s (model-b, 1.4s), "
        f"{cuts[2]:.3f} s (other model, the flags' 2s), each on its own upstream only; after "
        f"SIGHUP the stream in flight kept its budget ({kept:.3f} s) and model-a was cut at "
        f"{changed:.3f} s on its new upstream; after a bad file, still {still:.3f} s there"
    )


CHECKS = [
    ("1 one of two upstreams stuck: openai streams whole, the stuck one left out",
     check_stuck_upstream),
    ("2 one upstream refusing: answered at once by the other", check_refusing_upstream),
    ("3 hedging: first tokens by the fast upstream, slow attempts cancelled", check_hedging),
    ("4 overloaded first event: openai chat and anthropic messages complete on the other",
     check_overloaded_beside_healthy),
    ("5 overloaded alone: the upstream's error after retries + 1 attempts",
     check_overloaded_alone),
    ("6 --config: a policy per model, SIGHUP, a bad file ignored", check_policies),
]


def main() -> int:
    servers = Replicas(gateway_argument(__doc__.splitlines()[0]))
    return run_checks(servers, CHECKS, f"{len(REPLICAS)} upstreams")


if __name__ == "__main__":
    sys.exit(main())
