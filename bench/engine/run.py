"""Unguarded vs behind kvgate: the same burst against the same serving loop.

    /usr/bin/python3 bench/engine/run.py --mode=cpu --kvgated=build/ci/plugin/server/kvgated \
        --kvgate-cli=build/ci/tools/kvgate --check

1. Starts server.py (no gate), sends the burst, reads its /stats.
2. Starts kvgated for the model (dynamic engine; cpu: the static source sized
   to the loop's limit; gpu: NVML) and server.py --gate pointing at it,
   sends the same burst, retrying 429 after Retry-After.
3. Prints one JSON summary per run, a side-by-side table and the
   throughput ratio; writes summary.json and, with matplotlib, memory.png
   into --out. --check fails (exit 1) unless the unguarded run had at least
   one out-of-memory failure and the gated run completed every request with
   none, within the limit.

Everything listens on 127.0.0.1 (HTTP) or a unix socket (kvgated); every
child is stopped on the way out.
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import driver  # noqa: E402

MODES = {
    # CPU (CI): the plain backend, the tiny config, a limit of the weights
    # plus headroom for a few requests; 24 requests at once.
    "cpu": dict(backend="plain", config=os.path.join(HERE, "configs/tiny-llama.json"),
                model="tiny-llama", requests=24, prompt=(64, 512), output=(16, 48),
                headroom_bytes=4 << 20),
    # GPU: the transformers backend, Llama 3 8B's config in bf16, NVML.
    "gpu": dict(backend="transformers",
                config=os.path.join(HERE, "configs/llama-3-8b/config.json"),
                model="llama-3-8b", requests=128, prompt=(2048, 7936),
                output=(64, 256), headroom_bytes=0),
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, what, process, timeout_s=60):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 — not up yet
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} not ready after {timeout_s}s")


class Children:
    """Processes this run started; stopped in reverse order."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.processes = []

    def start(self, name, argv, env=None):
        log = open(os.path.join(self.workdir, f"{name}.log"), "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env)
        self.processes.append((name, p))
        return p

    def stop(self, process=None):
        for name, p in reversed(self.processes):
            if process is not None and p is not process:
                continue
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.processes = [(n, p) for n, p in self.processes
                          if process is not None and p is not process]


def start_server(children, name, args, mode, limit_bytes, env_extra=None):
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [os.path.join(REPO, "clients/python"),
                      os.path.abspath(args.python_stubs),
                      env.get("PYTHONPATH")]))
    env.update(env_extra or {})
    argv = [sys.executable, os.path.join(HERE, "server.py"),
            f"--backend={mode['backend']}", f"--config={mode['config']}",
            f"--model-name={mode['model']}", f"--port={port}",
            f"--limit-bytes={limit_bytes}", f"--threads={args.threads}"]
    if args.mode == "cpu":
        argv.append("--device=cpu")
    if env_extra:
        argv.append("--gate")
    p = children.start(name, argv, env)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(base + "/health").status_code == 200, name, p,
             timeout_s=600 if args.mode == "gpu" else 60)
    return p, base


def kvgated_config(args, mode, limit_bytes, overhead_bytes):
    model = (f'models {{ name: "{mode["model"]}" config_path: "{mode["config"]}"\n'
             f'  engine {{ kind: "dynamic" }}\n'
             # Requests run their prefills at once on threads: reserve the
             # sum of activation peaks, not the largest.
             f'  activation_sum: true\n'
             # The loop allocates exactly prompt + max tokens of KV: no blocks.
             f'  block_size: 1\n')
    if args.mode == "cpu":
        model += (f'  gpu_memory_utilization: 1.0\n'
                  f'  runtime_overhead_bytes: {overhead_bytes}\n}}\n'
                  f'memory_source {{ static_source {{ memory_bytes: {limit_bytes} }} }}\n')
    else:
        model += (f'  gpu_memory_utilization: {args.gpu_memory_utilization}\n'
                  f'  runtime_overhead_bytes: {overhead_bytes}\n}}\n'
                  'memory_source { nvml {} }\n')
    # Room for the whole burst to wait in the queue.
    return model + ('queue { max_requests: 4096 max_bytes: 1000000000000000 '
                    'max_queue_wait { seconds: 60 } }\n')


async def fetch_stats(base):
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        return (await c.get("/stats")).json()


def run_once(name, base, requests, retry):
    results, t0, wall = asyncio.run(driver.burst(base, requests, retry))
    stats = asyncio.run(fetch_stats(base))
    summary = driver.summarize(name, results, wall, stats)
    print(json.dumps(summary), flush=True)
    timeline = {"t": [t - t0 for t, _ in stats["memory"]],
                "bytes": [b for _, b in stats["memory"]],
                "completions": sorted(r["end_s"] for r in results
                                      if r["status"] == 200)}
    return summary, timeline


def estimate_weights(args, mode):
    out = subprocess.run([args.kvgate_cli, "estimate", f"--config={mode['config']}",
                          "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["weights_bytes"]


def table(unguarded, gated):
    rows = [("completed", "completed"), ("failed with OOM", "failed_oom"),
            ("failed, other", "failed_other"),
            ("rejected with 429 (retried)", "rejected_429"),
            ("output tokens/s", "output_tokens_per_s"),
            ("latency p50 (s)", "latency_p50_s"), ("latency p99 (s)", "latency_p99_s"),
            ("peak memory (MiB)", "peak_memory_bytes"),
            ("memory limit (MiB)", "limit_bytes"), ("wall (s)", "wall_s")]

    def cell(s, key):
        v = s[key]
        if key.endswith("_bytes"):
            return "-" if not v else f"{v / 2**20:.2f}"
        return "-" if v is None else str(v)
    lines = ["| | unguarded | behind kvgate |", "|---|---:|---:|"]
    lines += [f"| {label} | {cell(unguarded, k)} | {cell(gated, k)} |"
              for label, k in rows]
    ratio = (gated["output_tokens_per_s"] / unguarded["output_tokens_per_s"]
             if unguarded["output_tokens_per_s"] else float("nan"))
    lines.append(f"| throughput gated / unguarded | | {ratio:.2f} |")
    return "\n".join(lines), ratio


def plot(path, timelines, limit_bytes):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed (python3-matplotlib)")
        return
    fig, memory = plt.subplots(figsize=(9, 4.5))
    done = memory.twinx()
    for (name, tl), color in zip(timelines.items(), ("tab:red", "tab:blue")):
        memory.plot(tl["t"], [b / 2**20 for b in tl["bytes"]], color=color,
                    label=f"{name}: memory")
        c = tl["completions"]
        done.step(c, range(1, len(c) + 1), where="post", color=color,
                  linestyle="--", label=f"{name}: completed")
    if limit_bytes:
        memory.axhline(limit_bytes / 2**20, color="black", linewidth=0.8,
                       label="limit")
    memory.set_xlabel("seconds since the burst")
    memory.set_ylabel("memory in use (MiB)")
    done.set_ylabel("requests completed")
    lines = memory.get_legend_handles_labels()
    more = done.get_legend_handles_labels()
    memory.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left",
                  fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main():
    p = argparse.ArgumentParser(description="unguarded vs behind kvgate")
    p.add_argument("--mode", choices=list(MODES), default="cpu")
    p.add_argument("--kvgated", required=True)
    p.add_argument("--kvgate-cli", help="kvgate CLI (cpu mode: weights estimate)")
    p.add_argument("--python-stubs", default=os.path.join(REPO, "build/ci/python"),
                   help="folder with the generated kvgate/v1 stubs")
    p.add_argument("--requests", type=int)
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.92)
    p.add_argument("--gpu-overhead-bytes", type=int, default=3 << 30,
                   help="gpu: CUDA context and allocator slack kvgated sets aside")
    p.add_argument("--out", default=None, help="folder for summary.json, memory.png")
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    mode = MODES[args.mode]
    n = args.requests or mode["requests"]
    requests = driver.workload(args.seed, n, mode["prompt"], mode["output"],
                               mode["model"])
    print(f"workload: {n} requests at once, seed {args.seed}, prompt tokens "
          f"uniform {mode['prompt']}, output tokens uniform {mode['output']}",
          flush=True)
    started = time.time()
    out = args.out or tempfile.mkdtemp(prefix="kvgate-engine-")
    workdir = os.path.join(out, "logs")  # the children's logs
    os.makedirs(workdir, exist_ok=True)
    sockets = tempfile.mkdtemp(prefix="kvgate-engine-")  # short unix paths
    children = Children(workdir)
    try:
        limit = overhead = 0
        if args.mode == "cpu":
            # The limit: the loop's weights and tables plus headroom. kvgated
            # gets the same figure; its estimate of the weights lacks the
            # rotary tables, which go in as runtime overhead.
            probe, base = start_server(children, "probe", args, mode, 0)
            static = asyncio.run(fetch_stats(base))["static_bytes"]
            children.stop(probe)
            limit = static + mode["headroom_bytes"]
            overhead = max(0, static - estimate_weights(args, mode))
        else:
            overhead = args.gpu_overhead_bytes

        server, base = start_server(children, "unguarded", args, mode, limit)
        unguarded, tl_unguarded = run_once("unguarded", base, requests, retry=False)
        children.stop(server)

        config = os.path.join(workdir, "kvgated.textproto")
        with open(config, "w") as f:
            f.write(kvgated_config(args, mode, limit, overhead))
        address = f"unix:{sockets}/kvgated.sock"
        kvgated = children.start("kvgated", [args.kvgated, f"--config={config}",
                                             f"--grpc_address={address}"])
        wait_for(lambda: os.path.exists(address[5:]), "kvgated", kvgated)
        env = {"KVGATE_ADDRESS": address, "KVGATE_MODEL": mode["model"],
               "KVGATE_TIMEOUT_S": "60"}
        server, base = start_server(children, "gated", args, mode, limit, env)
        gated, tl_gated = run_once("gated", base, requests, retry=True)
    finally:
        children.stop()
        shutil.rmtree(sockets, ignore_errors=True)

    text, ratio = table(unguarded, gated)
    print(text)
    elapsed = time.time() - started
    print(f"runtime: {elapsed:.1f}s; logs in {workdir}")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"unguarded": unguarded, "gated": gated, "ratio": ratio,
                   "runtime_s": elapsed}, f, indent=1)
    plot(os.path.join(out, "memory.png"),
         {"unguarded": tl_unguarded, "gated": tl_gated}, limit)
    if args.check:
        problems = []
        if unguarded["failed_oom"] < 1:
            problems.append("the unguarded run had no out-of-memory failure")
        if gated["failed_oom"] or gated["completed"] != n:
            problems.append(f"gated: {gated['completed']}/{n} completed, "
                            f"{gated['failed_oom']} out of memory")
        if limit and gated["peak_memory_bytes"] > limit:
            problems.append("gated peak over the limit")
        for problem in problems:
            print(f"CHECK FAILED: {problem}")
        sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
