"""The burst driver: one seeded workload, every request sent at once.

Workload (seeded, the same for both runs): N requests; prompt tokens uniform
in [prompt_min, prompt_max], output tokens uniform in [output_min,
output_max]; a quarter are chat requests (text sized to the token count as
the server counts it), the rest legacy completions with token ids; every
other request streams. A 429 or 503 with Retry-After is retried after it (so
every request completes behind the gate); a 500 is a failure (out of memory
when its error type says so).
"""

import asyncio
import json
import random
import time

import httpx


def workload(seed, n, prompt_range, output_range, model):
    rng = random.Random(seed)
    requests = []
    for i in range(n):
        prompt = rng.randint(*prompt_range)
        output = rng.randint(*output_range)
        stream = i % 2 == 1
        if i % 4 == 3 and prompt > 10:
            # ceil((len("user") + bytes) / 4) + 5 == prompt
            content = "x" * (4 * (prompt - 5) - len("user"))
            body = {"model": model, "max_tokens": output, "stream": stream,
                    "messages": [{"role": "user", "content": content}]}
            path = "/v1/chat/completions"
        else:
            body = {"model": model, "max_tokens": output, "stream": stream,
                    "prompt": [rng.randrange(1000) for _ in range(prompt)]}
            path = "/v1/completions"
        requests.append((path, body))
    return requests


async def _one(client, path, body, t0, retry):
    start = time.time()
    rejected = 0
    while True:
        status, tokens, error = await _send(client, path, body)
        if status in (429, 503) and retry:
            rejected += 1
            await asyncio.sleep(float(error or 1))
            continue
        end = time.time()
        return {"status": status, "output_tokens": tokens, "error": None
                if status == 200 else error, "rejected": rejected,
                "latency_s": end - start, "end_s": end - t0}


async def _send(client, path, body):
    """(HTTP status, output tokens, Retry-After or error type)."""
    if not body.get("stream"):
        r = await client.post(path, json=body)
        if r.status_code in (429, 503):
            return r.status_code, 0, r.headers.get("retry-after", "1")
        if r.status_code != 200:
            return r.status_code, 0, _error_type(r.text)
        return 200, r.json()["usage"]["completion_tokens"], None
    async with client.stream("POST", path, json=body) as r:
        if r.status_code in (429, 503):
            await r.aread()
            return r.status_code, 0, r.headers.get("retry-after", "1")
        if r.status_code != 200:
            return r.status_code, 0, _error_type((await r.aread()).decode())
        tokens = 0
        async for line in r.aiter_lines():
            line = line.strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:  # failed mid-stream
                return 500, tokens, chunk["error"].get("type")
            tokens += 1
        return 200, tokens, None


def _error_type(text):
    try:
        return json.loads(text)["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return text[:200]


async def burst(base_url, requests, retry, timeout_s=300.0):
    """Sends every request at once; returns (per-request results, t0, wall_s)."""
    limits = httpx.Limits(max_connections=len(requests) + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s,
                                 limits=limits) as client:
        t0 = time.time()
        results = await asyncio.gather(
            *(_one(client, p, b, t0, retry) for p, b in requests))
        return results, t0, time.time() - t0


def summarize(name, results, wall_s, stats):
    ok = [r for r in results if r["status"] == 200]
    latencies = sorted(r["latency_s"] for r in ok)
    tokens = sum(r["output_tokens"] for r in ok)

    def pct(q):
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    return {
        "run": name, "requests": len(results), "completed": len(ok),
        "failed_oom": sum(r["status"] == 500 and r["error"] == "out_of_memory"
                          for r in results),
        "failed_other": sum(r["status"] != 200 and r["error"] != "out_of_memory"
                            for r in results),
        "rejected_429": sum(r["rejected"] for r in results),
        "retried_requests": sum(r["rejected"] > 0 for r in results),
        "output_tokens": tokens, "wall_s": round(wall_s, 3),
        "output_tokens_per_s": round(tokens / wall_s, 1) if wall_s else 0.0,
        "latency_p50_s": round(pct(0.50), 3) if latencies else None,
        "latency_p99_s": round(pct(0.99), 3) if latencies else None,
        "peak_memory_bytes": stats["peak_bytes"],
        "limit_bytes": stats["limit_bytes"],
        "static_bytes": stats["static_bytes"],
    }
