"""One pod's stand-in engine for the multi-pod demonstration (README here).

An OpenAI-style app wired to kvgate as vLLM wires it (app.add_middleware
with KvgateMiddleware, configured by KVGATE_* variables). It holds each
request for DEMO_S_PER_TOKEN seconds per token of max_tokens, so the lease
kvgated granted stays held as long as an engine would decode, then answers
with the pod's name. GET /stats: what reached the engine (the request ids
the driver sent in x-demo-request-id, the most in flight at once).

    DEMO_POD=pod-0 DEMO_S_PER_TOKEN=0.004 KVGATE_ADDRESS=unix:/tmp/k.sock \
        python3 -m uvicorn engine:app --host 127.0.0.1 --port 8000
"""

import asyncio
import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from kvgate.vllm import KvgateMiddleware

POD = os.environ.get("DEMO_POD", "pod")
S_PER_TOKEN = float(os.environ.get("DEMO_S_PER_TOKEN", "0.004"))

app = FastAPI()
app.add_middleware(KvgateMiddleware)

_stats = {"pod": POD, "served": 0, "in_flight": 0, "max_in_flight": 0,
          "request_ids": []}


@app.get("/health")
async def health():
    return {"ok": True}


@app.get("/stats")
async def stats():
    return _stats


async def _serve(request: Request, kind: str):
    body = await request.json()
    tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)
    _stats["in_flight"] += 1
    _stats["max_in_flight"] = max(_stats["max_in_flight"], _stats["in_flight"])
    try:
        await asyncio.sleep(tokens * S_PER_TOKEN)
    finally:
        _stats["in_flight"] -= 1
    _stats["served"] += 1
    _stats["request_ids"].append(request.headers.get("x-demo-request-id", ""))
    return JSONResponse({"object": kind, "model": body.get("model"), "pod": POD,
                         "choices": [{"index": 0, "text": "ok"}],
                         "usage": {"completion_tokens": tokens}})


@app.post("/v1/completions")
async def completions(request: Request):
    return await _serve(request, "text_completion")


@app.post("/v1/chat/completions")
async def chat(request: Request):
    return await _serve(request, "chat.completion")
