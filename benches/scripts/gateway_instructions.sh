#!/usr/bin/env bash
# Instructions, first-level cache misses and instruction-cache misses the gateway spends per
# short request or per streamed chunk, counted by valgrind's cachegrind: exact where timings
# on a shared machine are not, for telling two builds apart (BENCHMARKS.md, section 10).
#
#   bash benches/scripts/gateway_instructions.sh BINARY short    # GET /short, 20 connections
#   bash benches/scripts/gateway_instructions.sh BINARY stream   # 20 SSE streams, 20 ms apart
#
# short: nginx answers 228 bytes of JSON (with `connection: keep-alive`, as nginx sends it),
# `wrk -t1 -c20` sends GETs through the gateway for SECS seconds (default 10).
# stream: a Python upstream sends an OpenAI chat chunk every 20 ms on each of N streams
# (default 20), requested by `curl -N` as `"stream": true` chat completions for SECS seconds.
# The chunk is 113 bytes with one-word strings, or with CHUNK=vllm 233 bytes as vLLM writes
# one (a 32-character id, `created`, the model's name, `logprobs` and `finish_reason`).
# The counts cover the whole process, start-up included (1.3 million instructions, under 2%
# of either figure). Needs valgrind, nginx, wrk, curl and python3.
set -euo pipefail

binary=${1:?usage: gateway_instructions.sh BINARY short|stream}
workload=${2:-short}
secs=${SECS:-10}
streams=${N:-20}
chunk=${CHUNK:-short}
dir=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
upstream_port=$(free_port)
gateway_port=$(free_port)

wait_for_port() {
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    exit 1
}

case "$workload" in
short)
    body='{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"'$(printf 'a%.0s' $(seq 1 100))'"},"finish_reason":"stop"}]}'
    cat > "$dir/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $dir/nginx.pid; error_log $dir/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$upstream_port; keepalive_requests 1000000;
    location /short { default_type application/json; return 200 '$body'; }
  }
}
EOF
    nginx -c "$dir/nginx.conf" -p "$dir" &
    pids+=($!)
    ;;
stream)
    cat > "$dir/upstream.py" <<'EOF'
import asyncio, sys
EVENTS = {
    "short": b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"token"}}]}\n\n',
    "vllm": b'data: {"id":"chatcmpl-3f9a1c0e7b6d4e2a9c8b7a6f5e4d3c2b","object":"chat.completion.chunk","created":1733300000,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"delta":{"content":" the"},"logprobs":null,"finish_reason":null}]}\n\n',
}
EVENT = EVENTS[sys.argv[2]]
CHUNK = b"%x\r\n" % len(EVENT) + EVENT + b"\r\n"
async def handle(reader, writer):
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            await asyncio.sleep(0.02)
            writer.write(CHUNK)
            await writer.drain()
    except Exception:
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
EOF
    case "$chunk" in
    short | vllm) ;;
    *)
        echo "CHUNK: short or vllm, not $chunk" >&2
        exit 2
        ;;
    esac
    python3 "$dir/upstream.py" "$upstream_port" "$chunk" &
    pids+=($!)
    ;;
*)
    echo "workload: short or stream, not $workload" >&2
    exit 2
    ;;
esac
wait_for_port "$upstream_port"

valgrind --tool=cachegrind --cache-sim=yes --cachegrind-out-file="$dir/out" \
    "$binary" --listen "127.0.0.1:$gateway_port" --upstream "http://127.0.0.1:$upstream_port" \
    --admin-listen off --total 1h --idle 1h --worker-threads 1 > "$dir/gateway.log" 2>&1 &
gateway=$!
pids+=($gateway)
wait_for_port "$gateway_port"

case "$workload" in
short)
    wrk -t1 -c20 -d"${secs}s" "http://127.0.0.1:$gateway_port/short" > "$dir/wrk.txt"
    units=$(awk '/requests in/ { print $1 }' "$dir/wrk.txt")
    unit=request
    ;;
stream)
    curls=()
    for i in $(seq 1 "$streams"); do
        timeout "$secs" curl -sN "http://127.0.0.1:$gateway_port/v1/chat/completions" \
            -H 'content-type: application/json' -d '{"model":"m","stream":true}' \
            > "$dir/stream.$i" &
        curls+=($!)
    done
    # `timeout` ends each stream with status 124: expected.
    wait "${curls[@]}" || true
    units=$(cat "$dir"/stream.* | grep -c '^data:' || true)
    unit=chunk
    ;;
esac

kill -INT "$gateway"
wait "$gateway" || true
python3 - "$dir/out" "$units" "$unit" <<'EOF'
import re, sys
path, units, unit = sys.argv[1], int(sys.argv[2]), sys.argv[3]
text = open(path).read()
events = re.search(r"^events: (.*)$", text, re.M).group(1).split()
totals = dict(zip(events, map(int, re.search(r"^summary: (.*)$", text, re.M).group(1).split())))
d1 = totals["D1mr"] + totals["D1mw"]
print(f"{units} {unit}s; per {unit}: {totals['Ir'] / units:,.0f} instructions, "
      f"{d1 / units:,.1f} D1 misses, {totals['I1mr'] / units:,.1f} I1 misses")
EOF
