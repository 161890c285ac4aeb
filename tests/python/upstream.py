"""A model server stand-in that speaks OpenAI's and Anthropic's APIs, for the gateway checks.

    python upstream.py PORT [CERTFILE KEYFILE] [--every-stream BEHAVIOUR]
                       [--first-token-after SECONDS]

With a certificate (and its key), it serves HTTPS. `--every-stream` gives every streamed
request of every API one of the behaviours below whatever model it names (`answer`,
`babbler`, `stuck`, `overloaded`...): several of these processes then stand for replicas
of one model, one healthy, one stuck, one overloaded. `--first-token-after` makes the first
text delta of every stream of these behaviours that late (a slow prefill) instead of
`TOKEN_EVERY`. `--stuck-rate P` makes each stream of `answer` or `babbler` `stuck` instead
with probability `P` (drawn from a generator seeded by `--seed`): a replica that is often
stuck, for `failover_batch.py`.

`POST /v1/chat/completions` (always streamed, as server-sent events) chooses its behaviour
by model name:

- `babbler`: a role chunk, then one content token every 20 ms, forever.
- `firehose`: like `babbler`, but each token is `FIREHOSE_TOKEN` bytes of text: enough to
  fill a client's socket buffers within a fraction of a second when it stops reading.
- `stuck-once`: the first request of each `x-check` tag sends its headers and then nothing,
  ever; later ones stream `ANSWER` a word every 20 ms and finish with `data: [DONE]`.
- `stuck-always`: headers, then nothing, ever.
- `slow-first-token`: headers, then nothing for `SLOW_FIRST_TOKEN` seconds (a long prompt's
  prefill on a busy server), then `ANSWER` a word every 20 ms and `data: [DONE]`.

`POST /v1/chat/completions`, `POST /v1/responses` (OpenAI's Responses API) and
`POST /v1/messages` (Anthropic's Messages API), streamed in each API's own wire format,
also answer these models:

- `answer`: the API's opening events, `ANSWER` a word every 20 ms, then the API's
  closing events (chat: a `finish_reason: stop` chunk and `data: [DONE]`; Messages:
  `content_block_stop`, `message_delta`, `message_stop`; Responses: `response.completed`).
- `babbler`: the API's opening events, then one text delta every 20 ms, forever.
- `stuck`: headers, then nothing, ever.
- `overloaded`: the API's error event as its first event, then the end of the stream, as
  an overloaded server answers `200` (chat: `data: {"error": {...}}`; Messages:
  `event: error` with an `overloaded_error`; Responses: `event: error`), each with the
  message `OVERLOADED`.
- `stalled`: the opening events and `STALL_AFTER` deltas, then nothing, ever.
- `dying`: the opening events, `STALL_AFTER` deltas and the first half of one more, then
  the server fails the response: uvicorn closes the connection before the last chunk of the
  chunked body, as a crashed or reset upstream does.
- `keep-alive`: only keep-alives, every `KEEP_ALIVE_EVERY`, never a token: what vLLM sends
  while a request waits in its queue or its prefill (`: keep-alive` comments).
- `opening-then-pings`: the opening events, then only keep-alives.
- `tokens-then-pings`: the opening events and `STALL_AFTER` deltas, then only keep-alives.

Keep-alives are SSE comments (`: keep-alive`) in the OpenAI APIs and `event: ping` in
Anthropic's, as each sends them.

`POST /v1/chat/completions` without `"stream": true` answers these models with one JSON
chat completion:

- `late-answer`: the whole `ANSWER`, after `LATE_ANSWER` seconds;
- `never-answers`: nothing, ever.

Every generator that is cancelled (the client went away: `asyncio.CancelledError` or
`GeneratorExit`) is recorded with a wall-clock timestamp. `GET /stats` returns the requests,
cancellations, completions, failures (`dying`), stalls (`stalled`, with the time its last
delta was made) and first tokens (when the first text delta of `answer` or `babbler` was
made) seen so far, each with its `x-check` tag.
"""

import argparse
import asyncio
import itertools
import json
import random
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

TOKEN_EVERY = 0.02
BABBLE = (
    "As a large language model, I would be delighted to elaborate further. "
    "Moreover, it is worth noting that "
).split(" ")
ANSWER = "Hello! Sorry for the wait: here is the whole answer, from the second attempt."
MODELS = ("babbler", "firehose", "stuck-once", "stuck-always", "slow-first-token")
SLOW_FIRST_TOKEN = 3.0
FIREHOSE_TOKEN = 256 * 1024
# The models of every API, and the deltas sent before a `stalled` or `dying` stream stops.
API_MODELS = (
    "answer",
    "babbler",
    "stuck",
    "overloaded",
    "stalled",
    "dying",
    "keep-alive",
    "opening-then-pings",
    "tokens-then-pings",
)
# What an overloaded server says.
OVERLOADED = "Overloaded"
STALL_AFTER = 3
KEEP_ALIVE_EVERY = 0.2
# The models that answer without streaming, and how late `late-answer` does.
UNSTREAMED_MODELS = ("late-answer", "never-answers")
LATE_ANSWER = 1.5

app = FastAPI()
STATS: dict = {
    "requests": [],
    "cancellations": [],
    "completions": [],
    "failures": [],
    "stalls": [],
    "first_tokens": [],
}
# Set from the command line: the behaviour of every stream, and how late its first delta is.
EVERY_STREAM = None
FIRST_TOKEN_AFTER = TOKEN_EVERY
# With `--stuck-rate`: the chance that a stream of `answer` or `babbler` is stuck instead,
# drawn from a generator seeded by `--seed`.
STUCK_RATE = 0.0
DRAWS = random.Random(0)
_stuck_tags: set = set()
_ids = itertools.count(1)


def _chunk(request_id: int, model: str, delta: dict, finish_reason=None) -> bytes:
    chunk = {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        ],
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


def _error(status: int, message: str) -> JSONResponse:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return JSONResponse(status_code=status, content={"error": error})


@app.get("/stats")
async def stats() -> dict:
    return STATS


@app.post("/v1/chat/completions")
async def chat_completions(request: Request):
    body = await request.json()
    model = body.get("model", "")
    if EVERY_STREAM or (model in API_MODELS and model != "babbler"):
        return _api_stream(body, request, "chat")
    if model in UNSTREAMED_MODELS:
        return await _unstreamed(body, request)
    tag = request.headers.get("x-check", "")
    request_id = next(_ids)
    STATS["requests"].append(
        {
            "id": request_id,
            "tag": tag,
            "model": model,
            "at": time.time(),
            "x-request-timeout": request.headers.get("x-request-timeout"),
        }
    )
    if model not in MODELS:
        return _error(404, f"unknown model {model!r}; try one of {', '.join(MODELS)}")
    if not body.get("stream"):
        return _error(400, "this stand-in only streams: set stream=true")
    stuck = model == "stuck-always" or (model == "stuck-once" and tag not in _stuck_tags)
    if model == "stuck-once":
        _stuck_tags.add(tag)
    return StreamingResponse(
        _generate(request_id, tag, model, stuck),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )


def _record(key: str, request_id: int, tag: str, model: str, sent: int, **more):
    STATS[key].append(
        {"id": request_id, "tag": tag, "model": model, "at": time.time(), "chunks": sent, **more}
    )


async def _generate(request_id: int, tag: str, model: str, stuck: bool):
    sent = 0
    try:
        if stuck:
            # Headers have gone out; the first chunk never comes.
            await asyncio.sleep(3600)
        if model == "slow-first-token":
            await asyncio.sleep(SLOW_FIRST_TOKEN)
        yield _chunk(request_id, model, {"role": "assistant", "content": ""})
        sent += 1
        if model in ("babbler", "firehose"):
            for word in itertools.cycle(BABBLE):
                token = word + " "
                if model == "firehose":
                    token *= FIREHOSE_TOKEN // len(token)
                await asyncio.sleep(TOKEN_EVERY)
                yield _chunk(request_id, model, {"content": token})
                sent += 1
        words = ANSWER.split(" ")
        for i, word in enumerate(words):
            await asyncio.sleep(TOKEN_EVERY)
            yield _chunk(request_id, model, {"content": word if i == 0 else " " + word})
            sent += 1
        yield _chunk(request_id, model, {}, finish_reason="stop")
        yield b"data: [DONE]\n\n"
    except (asyncio.CancelledError, GeneratorExit) as stopped:
        _record("cancellations", request_id, tag, model, sent, how=type(stopped).__name__)
        raise
    _record("completions", request_id, tag, model, sent)


async def _unstreamed(body: dict, request: Request):
    """A chat completion answered whole, late or never."""
    model = body.get("model", "")
    tag = request.headers.get("x-check", "")
    request_id = next(_ids)
    STATS["requests"].append(
        {"id": request_id, "tag": tag, "model": model, "api": "chat", "at": time.time()}
    )
    if body.get("stream"):
        return _error(400, f"{model!r} does not stream: leave stream unset")
    try:
        await asyncio.sleep(LATE_ANSWER if model == "late-answer" else 3600)
    except asyncio.CancelledError:
        _record("cancellations", request_id, tag, model, 0, how="CancelledError")
        raise
    _record("completions", request_id, tag, model, 1)
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 17, "total_tokens": 26},
    }


class UpstreamDied(Exception):
    """Raised by a `dying` stream after its headers went out: uvicorn then cuts the body."""


def _sse(event: str | None, data: dict) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


class ChatEvents:
    """OpenAI chat completions: data-only chunks."""

    def __init__(self, request_id: int, model: str):
        self.request_id, self.model = request_id, model

    def opening(self) -> list:
        return [_chunk(self.request_id, self.model, {"role": "assistant", "content": ""})]

    def delta(self, text: str) -> bytes:
        return _chunk(self.request_id, self.model, {"content": text})

    def closing(self) -> list:
        return [_chunk(self.request_id, self.model, {}, finish_reason="stop"), b"data: [DONE]\n\n"]

    def overloaded(self) -> list:
        # vLLM's and OpenAI's shape: a data-only event whose object has a top-level error.
        error = {"message": OVERLOADED, "type": "overloaded_error", "param": None, "code": None}
        return [f"data: {json.dumps({'error': error})}\n\n".encode(), b"data: [DONE]\n\n"]

    def keep_alive(self) -> bytes:
        return b": keep-alive\n\n"


class ResponsesEvents:
    """OpenAI Responses API: named events, each data object naming its own type."""

    def __init__(self, request_id: int, model: str):
        self.request_id, self.model, self.seq = request_id, model, 0
        self.item = f"msg_{request_id}"

    def _event(self, kind: str, **fields) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return _sse(kind, data)

    def _response(self, status: str, output: list) -> dict:
        return {
            "id": f"resp_{self.request_id}",
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }

    def _item(self, status: str, content: list) -> dict:
        return {
            "id": self.item,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def opening(self) -> list:
        response = self._response("in_progress", [])
        item = self._item("in_progress", [])
        return [
            self._event("response.created", response=response),
            self._event("response.in_progress", response=response),
            self._event("response.output_item.added", output_index=0, item=item),
            self._event(
                "response.content_part.added",
                item_id=self.item,
                output_index=0,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": []},
            ),
        ]

    def delta(self, text: str) -> bytes:
        return self._event(
            "response.output_text.delta",
            item_id=self.item,
            output_index=0,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def closing(self) -> list:
        part = {"type": "output_text", "text": ANSWER, "annotations": []}
        item = self._item("completed", [part])
        where = {"item_id": self.item, "output_index": 0, "content_index": 0}
        return [
            self._event("response.output_text.done", **where, text=ANSWER, logprobs=[]),
            self._event("response.content_part.done", **where, part=part),
            self._event("response.output_item.done", output_index=0, item=item),
            self._event("response.completed", response=self._response("completed", [item])),
        ]

    def overloaded(self) -> list:
        return [self._event("error", code="server_error", message=OVERLOADED, param=None)]

    def keep_alive(self) -> bytes:
        return b": keep-alive\n\n"


class MessagesEvents:
    """Anthropic Messages API: named events, with pings."""

    def __init__(self, request_id: int, model: str):
        self.request_id, self.model = request_id, model

    def opening(self) -> list:
        message = {
            "id": f"msg_{self.request_id}",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 1},
        }
        return [
            _sse("message_start", {"type": "message_start", "message": message}),
            _sse(
                "content_block_start",
                {"type": "content_block_start", "index": 0,
                 "content_block": {"type": "text", "text": ""}},
            ),
            _sse("ping", {"type": "ping"}),
        ]

    def delta(self, text: str) -> bytes:
        return _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": text}},
        )

    def closing(self) -> list:
        return [
            _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _sse(
                "message_delta",
                {"type": "message_delta",
                 "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                 "usage": {"output_tokens": len(ANSWER.split(" "))}},
            ),
            _sse("message_stop", {"type": "message_stop"}),
        ]

    def overloaded(self) -> list:
        error = {"type": "overloaded_error", "message": OVERLOADED}
        return [_sse("error", {"type": "error", "error": error})]

    def keep_alive(self) -> bytes:
        return _sse("ping", {"type": "ping"})


APIS = {"chat": ChatEvents, "responses": ResponsesEvents, "messages": MessagesEvents}


def _api_stream(body: dict, request: Request, api: str):
    model = body.get("model", "")
    behaviour = EVERY_STREAM or model
    tag = request.headers.get("x-check", "")
    request_id = next(_ids)
    STATS["requests"].append(
        {"id": request_id, "tag": tag, "model": model, "api": api, "at": time.time()}
    )
    if behaviour not in API_MODELS:
        return _error(404, f"unknown model {model!r}; try one of {', '.join(API_MODELS)}")
    if not body.get("stream"):
        return _error(400, "this stand-in only streams: set stream=true")
    return StreamingResponse(
        _generate_api(APIS[api](request_id, model), request_id, tag, model, behaviour),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )


@app.post("/v1/responses")
async def responses(request: Request):
    return _api_stream(await request.json(), request, "responses")


@app.post("/v1/messages")
async def messages(request: Request):
    return _api_stream(await request.json(), request, "messages")


async def _generate_api(events, request_id: int, tag: str, model: str, behaviour: str):
    sent, last_delta_at = 0, None

    async def delta(text: str) -> bytes:
        nonlocal sent, last_delta_at
        await asyncio.sleep(FIRST_TOKEN_AFTER if sent == 0 else TOKEN_EVERY)
        # Taken before the delta goes out: no one downstream can have it earlier.
        last_delta_at = time.time()
        if sent == 0:
            _record("first_tokens", request_id, tag, model, sent)
        sent += 1
        return events.delta(text)

    if behaviour in ("answer", "babbler") and DRAWS.random() < STUCK_RATE:
        behaviour = "stuck"
    try:
        if behaviour == "stuck":
            # Headers have gone out; nothing else ever comes.
            await asyncio.sleep(3600)
        if behaviour == "overloaded":
            for event in events.overloaded():
                yield event
            _record("failures", request_id, tag, model, sent)
            return
        if behaviour != "keep-alive":
            for event in events.opening():
                yield event
        if behaviour == "answer":
            for i, word in enumerate(ANSWER.split(" ")):
                yield await delta(word if i == 0 else " " + word)
            for event in events.closing():
                yield event
            _record("completions", request_id, tag, model, sent)
            return
        for word in itertools.cycle(BABBLE):
            if behaviour in ("keep-alive", "opening-then-pings"):
                break
            if behaviour != "babbler" and sent == STALL_AFTER:
                break
            yield await delta(word + " ")
        if behaviour == "dying":
            half = events.delta("half")
            yield half[: len(half) // 2]
            _record("failures", request_id, tag, model, sent)
            raise UpstreamDied(f"{model} gave up after {sent} deltas")
        # `stalled` and the keep-alive models: the client or the gateway has to give up.
        _record("stalls", request_id, tag, model, sent, last_delta_at=last_delta_at)
        if behaviour == "stalled":
            await asyncio.sleep(3600)
        while True:
            await asyncio.sleep(KEEP_ALIVE_EVERY)
            yield events.keep_alive()
    except (asyncio.CancelledError, GeneratorExit) as stopped:
        _record("cancellations", request_id, tag, model, sent, how=type(stopped).__name__)
        raise


def main():
    parser = argparse.ArgumentParser(description="A model server stand-in for the gateway checks.")
    parser.add_argument("port", type=int)
    parser.add_argument("tls", nargs="*", metavar="CERTFILE KEYFILE")
    parser.add_argument("--every-stream", choices=API_MODELS, metavar="BEHAVIOUR")
    parser.add_argument("--first-token-after", type=float, metavar="SECONDS", default=TOKEN_EVERY)
    parser.add_argument("--stuck-rate", type=float, metavar="P", default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if len(args.tls) not in (0, 2):
        parser.error("give both CERTFILE and KEYFILE, or neither")
    global EVERY_STREAM, FIRST_TOKEN_AFTER, STUCK_RATE
    EVERY_STREAM, FIRST_TOKEN_AFTER = args.every_stream, args.first_token_after
    STUCK_RATE = args.stuck_rate
    DRAWS.seed(args.seed)
    tls = {}
    if args.tls:
        tls = {"ssl_certfile": args.tls[0], "ssl_keyfile": args.tls[1]}
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        http="h11",
        lifespan="off",
        log_level="warning",
        access_log=False,
        **tls,
    )


if __name__ == "__main__":
    main()
