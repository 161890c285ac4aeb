"""An OpenAI-compatible model server stand-in, for the gateway checks.

    python upstream.py PORT [CERTFILE KEYFILE]

With a certificate (and its key), it serves HTTPS.

`POST /v1/chat/completions` (always streamed, as server-sent events) chooses its behaviour
by model name:

- `babbler`: a role chunk, then one content token every 20 ms, forever.
- `stuck-once`: the first request of each `x-check` tag sends its headers and then nothing,
  ever; later ones stream `ANSWER` a word every 20 ms and finish with `data: [DONE]`.
- `stuck-always`: headers, then nothing, ever.

Every generator that is cancelled (the client went away: `asyncio.CancelledError` or
`GeneratorExit`) is recorded with a wall-clock timestamp. `GET /stats` returns the requests,
cancellations and completions seen so far, each with its `x-check` tag.
"""

import asyncio
import itertools
import json
import sys
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
MODELS = ("babbler", "stuck-once", "stuck-always")

app = FastAPI()
STATS: dict = {"requests": [], "cancellations": [], "completions": []}
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


async def _generate(request_id: int, tag: str, model: str, stuck: bool):
    sent = 0
    try:
        if stuck:
            # Headers have gone out; the first chunk never comes.
            await asyncio.sleep(3600)
        yield _chunk(request_id, model, {"role": "assistant", "content": ""})
        sent += 1
        if model == "babbler":
            for word in itertools.cycle(BABBLE):
                await asyncio.sleep(TOKEN_EVERY)
                yield _chunk(request_id, model, {"content": word + " "})
                sent += 1
        words = ANSWER.split(" ")
        for i, word in enumerate(words):
            await asyncio.sleep(TOKEN_EVERY)
            yield _chunk(request_id, model, {"content": word if i == 0 else " " + word})
            sent += 1
        yield _chunk(request_id, model, {}, finish_reason="stop")
        yield b"data: [DONE]\n\n"
    except (asyncio.CancelledError, GeneratorExit) as stopped:
        STATS["cancellations"].append(
            {
                "id": request_id,
                "tag": tag,
                "model": model,
                "at": time.time(),
                "chunks": sent,
                "how": type(stopped).__name__,
            }
        )
        raise
    STATS["completions"].append(
        {"id": request_id, "tag": tag, "model": model, "at": time.time(), "chunks": sent}
    )


if __name__ == "__main__":
    if len(sys.argv) not in (2, 4):
        sys.exit("usage: python upstream.py PORT [CERTFILE KEYFILE]")
    tls = {}
    if len(sys.argv) == 4:
        tls = {"ssl_certfile": sys.argv[2], "ssl_keyfile": sys.argv[3]}
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        http="h11",
        lifespan="off",
        log_level="warning",
        access_log=False,
        **tls,
    )
