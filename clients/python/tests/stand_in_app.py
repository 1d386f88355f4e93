"""A stand-in for vLLM's OpenAI server, wired to kvgate as vLLM wires it.

vLLM's api_server calls app.add_middleware(cls) for a --middleware class;
this app does the same, so KvgateMiddleware reads its settings from the
environment. Test knobs travel in the request body, which the middleware
ignores: "hold_s" (seconds before answering), "chunks" and "chunk_delay_s"
(for streams), "fail_after" (raise after that many stream chunks).
Completions answer with what arrived ("received": max_tokens and whether
content-length matches the body). GET /stats reports the requests that reached the app and the most that ran
at once; POST /stats/reset clears them.
"""

import asyncio
import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from kvgate.vllm import KvgateMiddleware

app = FastAPI()
app.add_middleware(KvgateMiddleware)

_stats = {"requests": 0, "in_flight": 0, "max_in_flight": 0}


class _Running:
    def __enter__(self):
        _stats["requests"] += 1
        _stats["in_flight"] += 1
        _stats["max_in_flight"] = max(_stats["max_in_flight"], _stats["in_flight"])

    def __exit__(self, *exc):
        _stats["in_flight"] -= 1


@app.get("/health")
async def health():
    return {"ok": True}


@app.get("/stats")
async def stats():
    return _stats


@app.post("/stats/reset")
async def reset():
    _stats.update(requests=0, in_flight=0, max_in_flight=0)
    return _stats


@app.post("/v1/completions")
async def completions(request: Request):
    raw = await request.body()
    body = json.loads(raw)
    with _Running():
        await asyncio.sleep(float(body.get("hold_s", 0)))
    # What arrived, for tests of the middleware's body rewrite.
    received = {"max_tokens": body.get("max_tokens"),
                "content_length_matches": (
                    request.headers.get("content-length") == str(len(raw)))}
    return JSONResponse({"object": "text_completion", "model": body["model"],
                         "choices": [{"index": 0, "text": "ok"}],
                         "received": received})


@app.post("/v1/chat/completions")
async def chat(request: Request):
    body = await request.json()
    if not body.get("stream"):
        with _Running():
            await asyncio.sleep(float(body.get("hold_s", 0)))
        return JSONResponse({"object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}}]})

    chunks = int(body.get("chunks", 3))
    delay = float(body.get("chunk_delay_s", 0.05))
    fail_after = body.get("fail_after")

    async def events():
        with _Running():
            for i in range(chunks):
                if fail_after is not None and i == fail_after:
                    raise RuntimeError("stand-in engine failed mid-stream")
                chunk = {"object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(delay)
            yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
