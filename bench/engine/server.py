"""A naive OpenAI-compatible serving loop: one thread per request, each with
its own KV cache, no memory accounting of its own.

    /usr/bin/python3 bench/engine/server.py --backend=plain \
        --config=bench/engine/configs/tiny-llama.json --limit-bytes=6000000 --port=8000

POST /v1/completions and /v1/chat/completions (stream or not), GET /stats
(peak memory, the memory timeline, each request's outcome), GET /health.
An out-of-memory error (CUDA's, or on CPU the ledger's limit) answers 500
with an error of type "out_of_memory"; the server goes on. With --gate the
app is wrapped in kvgate's KvgateMiddleware, configured by KVGATE_* variables
(clients/python/kvgate/settings.py).

Prompt tokens are counted without a tokenizer, as kvgate's sizer estimates
them (so the benchmark measures admission, not a token-count error): token
ids count one each, text ceil(UTF-8 bytes / 4), a chat request its roles and
contents ceil(bytes / 4) plus 5 per message.
"""

import argparse
import asyncio
import json
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory import Ledger, Sampler, is_out_of_memory  # noqa: E402

BYTES_PER_TOKEN = 4
CHAT_TOKENS_PER_MESSAGE = 5


def prompt_tokens(chat: bool, body: dict) -> int:
    def text(s):
        return len(s.encode("utf-8")) if isinstance(s, str) else 0
    if chat:
        messages = body["messages"]
        size = sum(text(m.get("role")) + text(m.get("content")) for m in messages)
        return max(1, math.ceil(size / BYTES_PER_TOKEN)
                   + CHAT_TOKENS_PER_MESSAGE * len(messages))
    prompt = body["prompt"]
    if isinstance(prompt, list):
        return max(1, len(prompt))
    return max(1, math.ceil(text(prompt) / BYTES_PER_TOKEN))


class Engine:
    """Runs requests on threads and records what happened to each."""

    def __init__(self, backend, ledger: Ledger, model_name: str):
        self.backend = backend
        self.ledger = ledger
        self.model_name = model_name
        self.static_bytes = ledger.in_use()
        self.sampler = Sampler(ledger)
        self.pool = ThreadPoolExecutor(max_workers=512)
        self.outcomes = []
        self._lock = threading.Lock()
        self._seed = 0

    def run(self, prompt, max_new, emit):
        """Thread body: emits ("started",), ("token", t)..., then ("done",)
        or ("error", status, type, message). Holds no exception past return
        (a traceback would keep the KV cache alive)."""
        with self._lock:
            self._seed += 1
            seed = self._seed
        start = time.time()
        outcome = {"prompt_tokens": prompt, "max_new_tokens": max_new,
                   "start": start}
        produced = 0
        request = self.backend.new_request(prompt, max_new, seed)
        error = None
        try:
            token = request.prefill()
            emit(("started",))
            while True:
                emit(("token", token))
                produced += 1
                if produced >= max_new:
                    break
                token = request.decode_one(token)
        except Exception as e:  # noqa: BLE001 — every failure is an outcome
            oom = is_out_of_memory(e)
            error = ("out_of_memory" if oom else "internal_error", str(e))
        finally:
            request.close()
            del request
        outcome.update(end=time.time(), output_tokens=produced,
                       status="oom" if error and error[0] == "out_of_memory"
                       else ("error" if error else "ok"))
        with self._lock:
            self.outcomes.append(outcome)
        if error:
            emit(("error", 500, error[0],
                  ("out of memory: " if error[0] == "out_of_memory" else "")
                  + error[1]))
        else:
            emit(("done",))

    def stats(self):
        with self._lock:
            outcomes = list(self.outcomes)
        return {"peak_bytes": self.ledger.peak(),
                "in_use_bytes": self.ledger.in_use(),
                "static_bytes": self.static_bytes,
                "limit_bytes": self.ledger.limit_bytes,
                "device": str(self.ledger.device),
                "memory": self.sampler.samples[:],
                "requests": outcomes}


def error_body(status, kind, message):
    return {"error": {"message": message, "type": kind, "code": status}}


def build_app(engine: Engine) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {"ok": True}

    @app.get("/stats")
    async def stats():
        return engine.stats()

    async def generate(request: Request, chat: bool):
        try:
            body = json.loads(await request.body())
            prompt = prompt_tokens(chat, body)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            return JSONResponse(error_body(400, "invalid_request_error", str(e)), 400)
        max_new = body.get("max_completion_tokens") or body.get("max_tokens")
        if not max_new:
            max_new = engine.backend.max_positions - prompt if chat else 16
        if prompt + max_new > engine.backend.max_positions:
            return JSONResponse(error_body(
                400, "invalid_request_error",
                f"{prompt + max_new} tokens exceed the model's "
                f"{engine.backend.max_positions}"), 400)
        loop = asyncio.get_running_loop()
        events = asyncio.Queue()

        def emit(event):
            loop.call_soon_threadsafe(events.put_nowait, event)

        loop.run_in_executor(engine.pool, engine.run, prompt, max_new, emit)
        first = await events.get()
        if first[0] == "error":
            return JSONResponse(error_body(first[1], first[2], first[3]), first[1])
        ident = f"cmpl-{id(events):x}"
        if body.get("stream"):
            return StreamingResponse(_sse(events, ident, chat, body["model"]),
                                     media_type="text/event-stream")
        tokens = []
        while True:
            event = await events.get()
            if event[0] == "token":
                tokens.append(event[1])
            elif event[0] == "error":
                return JSONResponse(error_body(event[1], event[2], event[3]),
                                    event[1])
            else:
                break
        text = "".join(f" t{t}" for t in tokens)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                   "finish_reason": "length"} if chat else
                  {"index": 0, "text": text, "finish_reason": "length"})
        return {"id": ident, "object": "chat.completion" if chat else
                "text_completion", "model": body["model"], "choices": [choice],
                "usage": {"prompt_tokens": prompt, "completion_tokens": len(tokens),
                          "total_tokens": prompt + len(tokens)}}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    return app


async def _sse(events, ident, chat, model):
    while True:
        event = await events.get()
        if event[0] == "token":
            piece = f" t{event[1]}"
            delta = ({"index": 0, "delta": {"content": piece}} if chat
                     else {"index": 0, "text": piece})
            chunk = {"id": ident, "model": model, "choices": [delta],
                     "object": "chat.completion.chunk" if chat
                     else "text_completion"}
            yield f"data: {json.dumps(chunk)}\n\n"
        elif event[0] == "error":
            yield f"data: {json.dumps(error_body(event[1], event[2], event[3]))}\n\n"
            return
        else:
            yield "data: [DONE]\n\n"
            return


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["plain", "transformers"], default="plain")
    p.add_argument("--config", required=True, help="a Llama config.json")
    p.add_argument("--model-name", default="tiny-llama")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--limit-bytes", type=int, default=0,
                   help="CPU mode: the memory limit the ledger enforces (0: none)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--gate", action="store_true",
                   help="wrap the app in kvgate.vllm.KvgateMiddleware (KVGATE_* env)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ledger = Ledger(device, args.limit_bytes if device.type == "cpu" else 0)
    if args.backend == "plain":
        from backends import PlainBackend
        backend = PlainBackend(args.config, ledger, args.seed)
    else:
        from backends import TransformersBackend
        backend = TransformersBackend(args.config, device, torch.bfloat16, args.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    app = build_app(Engine(backend, ledger, args.model_name))
    if args.gate:
        from kvgate.vllm import KvgateMiddleware
        app = KvgateMiddleware(app)
    import uvicorn
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
