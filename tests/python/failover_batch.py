"""The stuck batch over real sockets, through the gateway: two replicas, one often stuck,
with failover against retries on one upstream. A measurement for BENCHMARKS.md, not a check.

    python failover_batch.py --gateway PATH/TO/stream-deadline-gateway [--batches 10]
                             [--batch-size 100] [--stuck-rate 0.2,0.01] [--seed 7]

`examples/stuck_batch.rs --replicas` scaled down ten times and run for real: two
`upstream.py` replicas answer every stream with `ANSWER` (17 words, 20 ms apart), the first
token after 200 ms, except that each stream is stuck before its first token with the
replica's `--stuck-rate`. The calls (streamed chat completions over `httpx`, read to
`data: [DONE]`) go in batches run concurrently, one batch after another, as the article's
`asyncio.gather` did, through:

- **failover:** one gateway in front of both replicas (`--first-frame 1s --retries 2`): a
  retry goes to the replica the call has not tried, and a replica that fails three
  attempts in a row gets no first attempts for 10 s;
- **retries on one upstream:** one gateway in front of each replica, with the same flags,
  the calls taking turns between them: a retry goes where the first attempt went.

Prints a Markdown table: each variant's total, its batches, the calls that failed (`504`
after three stuck attempts) and the attempts each replica saw.
"""

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True  # no __pycache__ next to the sources
from checks import Servers, free_port, read_listen_address, wait_until_serving  # noqa: E402
from upstream import ANSWER  # noqa: E402

GATEWAY_FLAGS = ["--first-frame", "1s", "--retries", "2", "--total", "30s"]
FIRST_TOKEN_AFTER = "0.2"
BODY = {"model": "answer", "messages": [{"role": "user", "content": "Say hello."}],
        "stream": True}


class Processes(Servers):
    """The replicas and gateways of the runs, each in its own process group (`Servers`'s)."""

    def upstream(self, name: str, stuck_rate: float, seed: int) -> str:
        port = free_port()
        proc = self._spawn(
            [sys.executable, str(HERE / "upstream.py"), str(port), "--every-stream", "answer",
             "--first-token-after", FIRST_TOKEN_AFTER, "--stuck-rate", str(stuck_rate),
             "--seed", str(seed)],
            f"upstream-{name}.log",
        )
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(f"{url}/stats", proc, f"the {name} replica")
        return url

    def front(self, upstreams: list, name: str) -> str:
        argv = [self.gateway_bin, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                *GATEWAY_FLAGS]
        for url in upstreams:
            argv += ["--upstream", url]
        proc = self._spawn(argv, f"gateway-{name}.log", stdout=subprocess.PIPE)
        url, admin = read_listen_address(proc)
        wait_until_serving(f"{admin}/readyz", proc, "the gateway")
        return url


async def call(client: httpx.AsyncClient, origin: str, tag: str) -> bool:
    """One streamed chat completion, read to its end: whether it arrived whole."""
    text = ""
    async with client.stream("POST", f"{origin}/v1/chat/completions", json=BODY,
                             headers={"x-check": tag}) as response:
        if response.status_code != 200:
            await response.aread()
            return False
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                return text == ANSWER
            if line.startswith("data: "):
                chunk = json.loads(line[len("data: "):])
                for choice in chunk.get("choices", []):
                    text += choice.get("delta", {}).get("content") or ""
    return False


async def run(origins: list, batches: int, batch_size: int, variant: str) -> tuple:
    """Batch after batch, each call of a batch at once, call `i` to `origins[i % n]`:
    (total seconds, each batch's seconds, calls that failed)."""
    limits = httpx.Limits(max_connections=batch_size * 2, max_keepalive_connections=batch_size)
    timeout = httpx.Timeout(60.0)
    failed, times = 0, []
    started = time.monotonic()
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        for batch in range(batches):
            batch_started = time.monotonic()
            calls = []
            for i in range(batch_size):
                n = batch * batch_size + i
                calls.append(call(client, origins[n % len(origins)], f"{variant}-{n}"))
            failed += sum(not whole for whole in await asyncio.gather(*calls))
            times.append(time.monotonic() - batch_started)
    return time.monotonic() - started, times, failed


def attempts(upstream: str, variant: str) -> int:
    stats = httpx.get(f"{upstream}/stats", timeout=10).json()
    return sum(1 for r in stats["requests"] if r["tag"].startswith(f"{variant}-"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--stuck-rate", default="0.2,0.01")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rates = [float(rate) for rate in args.stuck_rate.split(",")]
    processes = Processes(args.gateway, gateway_flags=[])
    try:
        rows = []
        for variant in ("retries-on-one-upstream", "failover"):
            # Fresh replicas, seeded alike, for each variant.
            replicas = [processes.upstream(f"{variant}-{i}", rate, args.seed + i)
                        for i, rate in enumerate(rates)]
            if variant == "failover":
                origins = [processes.front(replicas, variant)]
            else:
                origins = [processes.front([r], f"{variant}-{i}") for i, r in enumerate(replicas)]
            total, times, failed = asyncio.run(
                run(origins, args.batches, args.batch_size, variant))
            seen = [attempts(r, variant) for r in replicas]
            rows.append((variant, total, times, failed, seen))
    finally:
        processes.stop()
    print(f"{args.batches} batches of {args.batch_size} calls; replicas stuck at "
          f"{args.stuck_rate}, first token after {FIRST_TOKEN_AFTER} s, gateway "
          f"{' '.join(GATEWAY_FLAGS)}, seed {args.seed}\n")
    print("| variant | total | per batch (s) | failed | attempts per replica |")
    print("|---|---|---|---|---|")
    for variant, total, times, failed, seen in rows:
        batches = " ".join(f"{t:.1f}" for t in times)
        print(f"| {variant} | {total:.1f} s | {batches} | {failed} | "
              f"{', '.join(map(str, seen))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
