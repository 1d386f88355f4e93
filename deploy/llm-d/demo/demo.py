"""Multi-pod demonstration: a burst no single pod can hold, retried on 429
the way the gateway's Envoy retry policy does (README here).

    /usr/bin/python3 deploy/llm-d/demo/demo.py \
        --kvgated=build/ci/plugin/server/kvgated --check

1. Starts --pods kvgated processes (static memory source, each sized for a
   few requests of the burst, on unix sockets) and, for each, a stand-in
   engine (engine.py) behind kvgate's ASGI middleware on its own loopback
   HTTP port.
2. Sends --requests chat/completions requests at once, round-robin over the
   pods. A 429 is retried like Envoy's route retry policy
   (retry_on: retriable-status-codes [429], retry_host_predicate
   previous_hosts, rate-limited back-off on Retry-After): the next pod not
   yet tried first; when every pod has refused, wait the Retry-After of the
   last refusal and go round again. Anything else than 200 or 429, a
   transport error, or the per-request deadline ends the request as failed,
   with its reason.
3. Prints one JSON summary and a short table. --check fails (exit 1) unless
   failed == 0 and lost == 0 (every request ended served or failed; every
   served request reached exactly one engine exactly once; every kvgated is
   back to nothing reserved), and at least one request was refused by one
   pod and served by another.

Everything listens on 127.0.0.1 or a unix socket; every child is stopped on
the way out (and gets SIGTERM if this process dies first).
"""

import argparse
import asyncio
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
CLIENT_DIR = os.path.join(REPO, "clients/python")
sys.path.insert(0, CLIENT_DIR)

import httpx  # noqa: E402

from kvgate.client import KvgateClient  # noqa: E402

MODEL = "gpt2"  # kvgated's preset; the stand-in engine runs no model
PROMPT = "x" * 400  # 100 tokens at 4 bytes per token, 106 as one chat message
CHAT_PROMPT_TOKENS = 106


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kvgated", required=True, help="the kvgated binary")
    p.add_argument("--pods", type=int, default=3)
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--pod-requests", type=int, default=6,
                   help="each pod's budget: KV for this many requests of the "
                        "median size, plus one activation reserve")
    p.add_argument("--min-tokens", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=448)
    p.add_argument("--s-per-token", type=float, default=0.004,
                   help="the stand-in engine holds a request this long per token")
    p.add_argument("--queue-wait", type=float, default=0.25,
                   help="KVGATE_MAX_QUEUE_WAIT_S: how long kvgated may queue "
                        "before it refuses")
    p.add_argument("--deadline", type=float, default=90.0,
                   help="a request not served by then fails")
    p.add_argument("--backoff-base", type=float, default=0.05,
                   help="Envoy's retry_back_off base_interval")
    p.add_argument("--backoff-max", type=float, default=0.5,
                   help="Envoy's retry_back_off max_interval")
    p.add_argument("--max-attempts", type=int, default=200,
                   help="Envoy's num_retries + 1")
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--out", help="write the JSON summary to this file too")
    p.add_argument("--check", action="store_true")
    return p.parse_args()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    """Children get SIGTERM if the demo dies without stopping them."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Children:
    """Processes this run started; stopped in reverse order."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.processes = []

    def start(self, name, argv, env=None, cwd=None):
        log = open(os.path.join(self.workdir, f"{name}.log"), "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                             preexec_fn=_die_with_parent)
        self.processes.append((name, p))
        return p

    def log(self, name):
        with open(os.path.join(self.workdir, f"{name}.log")) as f:
            return f.read()

    def stop_all(self):
        for _, p in reversed(self.processes):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in reversed(self.processes):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.processes = []


def wait_for(predicate, what, children, name, timeout_s=30):
    process = dict(children.processes)[name]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}:\n"
                             f"{children.log(name)}")
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 — not up yet
            pass
        time.sleep(0.05)
    raise SystemExit(f"{what} not ready after {timeout_s}s:\n{children.log(name)}")


def client_call(address, method, *args):
    async def go():
        async with KvgateClient(address) as c:
            return await getattr(c, method)(*args)
    return asyncio.run(go())


def start_kvgated(children, args, workdir, name, memory_bytes):
    address = f"unix:{workdir}/{name}.sock"
    config = os.path.join(workdir, f"{name}.textproto")
    with open(config, "w") as f:
        f.write(f'models {{ name: "{MODEL}" preset: "gpt2" gpu_memory_utilization: 1.0 }}\n'
                f'memory_source {{ static_source {{ memory_bytes: {memory_bytes} }} }}\n'
                # A short queue: a pod that is full says so soon, and the
                # gateway moves the request to another pod.
                f'queue {{ max_requests: 2 max_bytes: {memory_bytes} }}\n')
    children.start(name, [args.kvgated, f"--config={config}",
                          f"--grpc_address={address}"])
    wait_for(lambda: client_call(address, "budget", MODEL) is not None,
             f"kvgated {name}", children, name)
    return address


def start_engine(children, args, name, kvgate_address):
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, CLIENT_DIR,
                                                      env.get("PYTHONPATH")]))
    env.update({"DEMO_POD": name, "DEMO_S_PER_TOKEN": str(args.s_per_token),
                "KVGATE_ADDRESS": kvgate_address,
                "KVGATE_MAX_QUEUE_WAIT_S": str(args.queue_wait),
                "KVGATE_TIMEOUT_S": "10"})
    engine = f"{name}-engine"
    children.start(engine, [sys.executable, "-m", "uvicorn", "engine:app",
                            "--host", "127.0.0.1", "--port", str(port),
                            "--log-level", "warning", "--no-access-log"],
                   env=env, cwd=HERE)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(base + "/health").status_code == 200,
             f"engine {engine}", children, engine)
    return base


def workload(args):
    rng = random.Random(args.seed)
    return [{"id": f"r{i:03d}",
             "body": {"model": MODEL, "max_tokens": rng.randint(args.min_tokens,
                                                                 args.max_tokens),
                      "messages": [{"role": "user", "content": PROMPT}]}}
            for i in range(args.requests)]


async def send(client, pods, request, first, args, t0):
    """One request, retried on 429 as Envoy's policy does."""
    n = len(pods)
    tried = []  # pods that refused this round, in order (previous_hosts)
    refused_by = set()  # every pod that ever refused it
    refusals = 0
    waits = 0
    attempts = 0
    pod = first
    deadline = t0 + args.deadline
    result = {"id": request["id"], "first_pod": first}
    while True:
        attempts += 1
        try:
            r = await client.post(pods[pod] + "/v1/chat/completions", json=request["body"],
                                  headers={"x-demo-request-id": request["id"]},
                                  timeout=max(1.0, deadline - time.monotonic()))
        except httpx.HTTPError as e:
            result.update(outcome="failed", reason=f"transport: {type(e).__name__}")
            break
        if r.status_code == 200:
            result.update(outcome="served", pod=pod,
                          refused_elsewhere=bool(refused_by - {pod}))
            break
        if r.status_code != 429:
            result.update(outcome="failed", reason=f"HTTP {r.status_code}: {r.text[:200]}")
            break
        refusals += 1
        refused_by.add(pod)
        if pod not in tried:
            tried.append(pod)
        if attempts >= args.max_attempts:
            result.update(outcome="failed", reason="retries exhausted")
            break
        untried = [(pod + k) % n for k in range(1, n + 1) if (pod + k) % n not in tried]
        if untried:
            # The next pod, after Envoy's jittered back-off (retry_back_off:
            # base_interval doubling per retry up to max_interval).
            pod = untried[0]
            ceiling = min(args.backoff_max, args.backoff_base * 2 ** (len(tried) - 1))
            await asyncio.sleep(random.uniform(0, ceiling))
            continue
        # Every pod refused: wait the Retry-After, then round again.
        wait = float(r.headers.get("retry-after", "1"))
        result.setdefault("retry_after_s", []).append(wait)
        if time.monotonic() + wait > deadline:
            result.update(outcome="failed", reason="deadline")
            break
        waits += 1
        await asyncio.sleep(wait)
        tried = []
        pod = (pod + 1) % n
    result.update(attempts=attempts, refusals=refusals, retry_after_waits=waits,
                  latency_s=time.monotonic() - t0)
    return result


async def sample_budgets(addresses, peaks, stop):
    """The most each pod's kvgated had reserved, sampled every 20 ms."""
    clients = [KvgateClient(a) for a in addresses]
    try:
        while not stop.is_set():
            for i, c in enumerate(clients):
                b = await c.budget(MODEL)
                peaks[i] = max(peaks[i], b.reserved_bytes / b.capacity_bytes)
            await asyncio.sleep(0.02)
    finally:
        for c in clients:
            await c.close()


async def burst(pods, addresses, requests, args):
    peaks = [0.0] * len(pods)
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_budgets(addresses, peaks, stop))
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits) as client:
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(send(client, pods, r, i % len(pods), args, t0)
              for i, r in enumerate(requests)), return_exceptions=True)
        wall = time.monotonic() - t0
    stop.set()
    await sampler
    return results, wall, peaks


def quantile(values, q):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def main():
    args = parse_args()
    requests = workload(args)
    workdir = tempfile.mkdtemp(prefix="kvgate-multipod-")
    children = Children(workdir)
    try:
        # Size the pods: a roomy kvgated estimates the median request.
        probe = start_kvgated(children, args, workdir, "probe", 80 * 10**9)
        median = (args.min_tokens + args.max_tokens) // 2
        e = client_call(probe, "estimate", MODEL, [(CHAT_PROMPT_TOKENS, median)])
        children.stop_all()
        memory_bytes = (e.weights_bytes + e.activation_bytes
                        + args.pod_requests * e.kv_cache_bytes)

        names = [f"pod-{i}" for i in range(args.pods)]
        addresses = [start_kvgated(children, args, workdir, n, memory_bytes)
                     for n in names]
        pods = [start_engine(children, args, n, a) for n, a in zip(names, addresses)]
        capacity = client_call(addresses[0], "budget", MODEL).capacity_bytes

        results, wall, peaks = asyncio.run(burst(pods, addresses, requests, args))

        # What reached the engines, and kvgated back to idle.
        stats = [httpx.get(p + "/stats").json() for p in pods]
        idle = []
        for a in addresses:
            deadline = time.monotonic() + 5
            while True:
                b = client_call(a, "budget", MODEL)
                done = b.reserved_bytes == 0 and b.active_leases == 0 \
                    and b.queued_requests == 0
                if done or time.monotonic() > deadline:
                    idle.append(done)
                    break
                time.sleep(0.05)
    finally:
        children.stop_all()

    crashed = [r for r in results if isinstance(r, BaseException)]
    results = [r for r in results if not isinstance(r, BaseException)]
    served = [r for r in results if r["outcome"] == "served"]
    failed = [r for r in results if r["outcome"] == "failed"]
    ended = {r["id"] for r in results}
    lost_ids = sorted({r["id"] for r in requests} - ended) + [repr(c) for c in crashed]
    # Served exactly once, by the pod that answered: the engines' own records.
    reached = [i for s in stats for i in s["request_ids"]]
    served_ids = sorted(r["id"] for r in served)
    engines_agree = sorted(reached) == served_ids
    per_pod = []
    for i, s in enumerate(stats):
        per_pod.append({
            "pod": s["pod"],
            "served": sum(1 for r in served if r["pod"] == i),
            "first_choice": sum(1 for r in results if r["first_pod"] == i),
            "max_in_flight": s["max_in_flight"],
            "peak_budget_used_ratio": round(peaks[i], 3),
        })
    kv_median = e.kv_cache_bytes
    waited = [w for r in results for w in r.get("retry_after_s", [])]
    summary = {
        "pods": args.pods,
        "requests": len(requests),
        "served": len(served),
        "failed": len(failed),
        "lost": len(lost_ids),
        "served_first_try": sum(1 for r in served if r["refusals"] == 0),
        "refused_by_one_pod_served_by_another": sum(1 for r in served
                                                    if r["refused_elsewhere"]),
        "of_which_without_retry_after_wait": sum(
            1 for r in served if r["refused_elsewhere"] and r["retry_after_waits"] == 0),
        "served_after_retry_after_wait": sum(1 for r in served
                                             if r["retry_after_waits"] > 0),
        "refusals_429": sum(r["refusals"] for r in results),
        "attempts": sum(r["attempts"] for r in results),
        "retry_after_waited_s": {
            "count": len(waited), "p50": quantile(waited, 0.5),
            "max": max(waited, default=None)},
        "wall_s": round(wall, 3),
        "latency_p50_s": quantile([r["latency_s"] for r in served], 0.5),
        "latency_p99_s": quantile([r["latency_s"] for r in served], 0.99),
        "pod_capacity_bytes": capacity,
        "pod_holds_median_requests": (capacity - e.activation_bytes) // kv_median,
        "burst_kv_over_pod_capacity": round(
            sum(client_kv(r, e, median) for r in requests) / capacity, 2),
        "engines_agree": engines_agree,
        "kvgated_idle_after": all(idle),
        "failed_reasons": sorted({r["reason"] for r in failed}),
        "lost_ids": lost_ids,
        "per_pod": per_pod,
    }
    print(json.dumps(summary), flush=True)
    print(table(summary))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
    if args.check:
        problems = []
        if summary["failed"]:
            problems.append(f"failed = {summary['failed']}: {summary['failed_reasons']}")
        if summary["lost"]:
            problems.append(f"lost = {summary['lost']}: {lost_ids}")
        if not engines_agree:
            problems.append("the engines' records differ from the served requests "
                            "(a request reached no engine, or more than one)")
        if not summary["kvgated_idle_after"]:
            problems.append("a kvgated still holds leases or a queue after the burst")
        if summary["refused_by_one_pod_served_by_another"] == 0:
            problems.append("no request was refused by one pod and served by another")
        if summary["pod_holds_median_requests"] >= len(requests):
            problems.append("one pod could hold the whole burst")
        if problems:
            print("CHECK FAILED: " + "; ".join(problems), file=sys.stderr)
            print(f"logs kept in {workdir}", file=sys.stderr)
            return 1
        print("check passed: failed = 0, lost = 0")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def client_kv(request, estimate, median):
    """A request's KV, scaled from the median's estimate (linear in tokens)."""
    tokens = CHAT_PROMPT_TOKENS + request["body"]["max_tokens"]
    return estimate.kv_cache_bytes * tokens / (CHAT_PROMPT_TOKENS + median)


def table(s):
    lines = [f"{s['requests']} requests at once over {s['pods']} pods "
             f"(each holds about {s['pod_holds_median_requests']} requests): "
             f"{s['wall_s']:.2f} s",
             "| | served | first try | refused by one pod, served by another "
             "(of which at once) | after a Retry-After wait | failed | lost |",
             "|---|---:|---:|---:|---:|---:|---:|",
             f"| burst | {s['served']} | {s['served_first_try']} | "
             f"{s['refused_by_one_pod_served_by_another']} "
             f"({s['of_which_without_retry_after_wait']}) | "
             f"{s['served_after_retry_after_wait']} | {s['failed']} | {s['lost']} |",
             "",
             "| pod | first choice for | served | most in flight | peak budget used |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {p['pod']} | {p['first_choice']} | {p['served']} | "
              f"{p['max_in_flight']} | {p['peak_budget_used_ratio']:.2f} |"
              for p in s["per_pod"]]
    ra = s["retry_after_waited_s"]
    lines.append(f"429 answers: {s['refusals_429']}, attempts: {s['attempts']}, "
                 f"Retry-After waits: {ra['count']} (p50 {ra['p50']} s, max {ra['max']} s), "
                 f"latency p50 {s['latency_p50_s']} s, p99 {s['latency_p99_s']} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
