#!/usr/bin/env python3
"""kvgated under a real Prometheus: every dashboard and alert expression works.

Starts a fake vLLM metrics endpoint (a thread serving a vLLM-shaped /metrics
page), kvgated with two pools of the default preset (the default dynamic one,
and one with engine { kind: "vllm" } reading that endpoint; metrics on a
loopback port chosen by the kernel), a Prometheus server scraping it every
second and evaluating deploy/prometheus/kvgate-rules.yaml, drives `kvgate
demo` against the dynamic pool (admissions, a queued request, rejections) and
one preemption on the fake engine, then
  * runs `promtool check metrics` on a live scrape (must print nothing),
  * checks kvgated read the engine's pool and counted the preemption,
  * resolves the dashboard's variables through Prometheus's label API (a
    multi-value variable selects every value, as Grafana writes (a|b)),
  * queries /api/v1/query with every dashboard expression (variables
    substituted) and every alert expression with its final comparison removed
    (and the other side of a vector comparison): each must be valid and
    return at least one series,
  * checks Prometheus loaded every alert rule and evaluates it without error.
Fails on any invalid expression or empty result. Bounded by --deadline
(default 60 s); the processes it starts are always stopped.

Usage: prometheus_test.py --kvgated=PATH --kvgate=PATH --root=REPO
Python standard library only; needs Debian's `prometheus` (prometheus and
promtool on PATH).
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RATE_INTERVAL = "15s"  # stands for Grafana's $__rate_interval (4 scrapes+)

DYNAMIC_MODEL = "llama-3-8b"     # kvgated's default pool; `kvgate demo` uses it
ENGINE_MODEL = "llama-3-8b-vllm"
ENGINE_BLOCKS, ENGINE_BLOCK_SIZE = 2048, 16


class TestFailure(Exception):
    pass


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()

    def wait_for(self, what, probe, interval=0.2):
        """Calls probe() until it returns a truthy value; fails at the deadline."""
        last = None
        while self.left() > 0:
            try:
                value = probe()
                if value:
                    return value
            except (OSError, urllib.error.URLError, ValueError) as e:
                last = e
            time.sleep(interval)
        raise TestFailure(f"timed out waiting for {what} (last error: {last})")


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Started processes; stop() ends each one (TERM, then KILL)."""

    def __init__(self):
        self.procs = []

    def start(self, name, args, log_path):
        log = open(log_path, "w")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((name, proc, log, log_path))
        return proc

    def stop(self):
        for _, proc, _, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, log, _ in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()

    def dump_logs(self):
        for name, _, _, path in self.procs:
            with open(path) as f:
                tail = f.read()[-3000:]
            print(f"----- {name} log (tail) -----\n{tail}")


def vllm_page(model, num_gpu_blocks, block_size, usage, preemptions):
    """A vLLM /metrics page of the shape tests/testing/fake_engine.cc's
    VllmPage writes (the series kvgated reads, with their HELP and TYPE)."""
    labels = f'engine="0",model_name="{model}"'
    return (
        "# HELP vllm:num_requests_running Number of requests in model "
        "execution batches.\n# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{{{labels}}} 1.0\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be "
        "processed.\n# TYPE vllm:num_requests_waiting gauge\n"
        f"vllm:num_requests_waiting{{{labels}}} 0.0\n"
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent "
        "usage.\n# TYPE vllm:kv_cache_usage_perc gauge\n"
        f"vllm:kv_cache_usage_perc{{{labels}}} {usage!r}\n"
        "# HELP vllm:num_preemptions_total Cumulative number of preemption "
        "from the engine.\n# TYPE vllm:num_preemptions_total counter\n"
        f"vllm:num_preemptions_total{{{labels}}} {preemptions}.0\n"
        "# HELP vllm:num_preemptions_created Cumulative number of preemption "
        "from the engine.\n# TYPE vllm:num_preemptions_created gauge\n"
        f"vllm:num_preemptions_created{{{labels}}} 1.7331e+09\n"
        "# HELP vllm:cache_config_info Information of the LLMEngine "
        "CacheConfig\n# TYPE vllm:cache_config_info gauge\n"
        f'vllm:cache_config_info{{block_size="{block_size}",cache_dtype="auto",'
        'calculate_kv_scales="False",cpu_offload_gb="0",'
        'enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.9",'
        'is_attention_free="False",kv_cache_size_tokens="None",'
        f'num_cpu_blocks="None",num_gpu_blocks="{num_gpu_blocks}",'
        'num_gpu_blocks_override="None",prefix_caching_hash_algo="builtin",'
        'sliding_window="None",swap_space="4",'
        'swap_space_bytes="4294967296"} 1.0\n')


class FakeVllm:
    """A vLLM metrics endpoint on a loopback port: a thread serving
    vllm_page() at /metrics; preempt() raises its preemption counter."""

    def __init__(self, model, num_gpu_blocks, block_size, usage=0.05):
        self.lock = threading.Lock()
        self.page_args = [model, num_gpu_blocks, block_size, usage, 0]
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                with fake.lock:
                    body = vllm_page(*fake.page_args).encode()
                self.send_response(200)
                self.send_header("Content-Type",
                                 "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # no line per scrape on stderr
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)
        self.thread.start()

    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/metrics"

    def preempt(self):
        with self.lock:
            self.page_args[4] += 1

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def kvgated_config(engine_url):
    """kvgated's config: the default dynamic pool (what the embedded default
    serves) and a vllm pool of the same preset reading engine_url."""
    return (f'models {{ name: "{DYNAMIC_MODEL}" preset: "llama-3-8b" }}\n'
            f'models {{\n  name: "{ENGINE_MODEL}" preset: "llama-3-8b"\n'
            f'  engine {{\n    kind: "vllm"\n'
            f'    metrics_url: {json.dumps(engine_url)}\n'
            '    poll_interval { nanos: 100000000 }\n'
            '    preemption_cooldown { seconds: 1 }\n  }\n}\n')


class Prometheus:
    def __init__(self, base):
        self.base = base

    def api(self, path, **params):
        url = f"{self.base}/api/v1/{path}?" + urllib.parse.urlencode(
            params, doseq=True)
        try:
            body = http_get(url)
        except urllib.error.HTTPError as e:  # 400/422 carry the error JSON
            body = e.read().decode()
        reply = json.loads(body)
        if reply.get("status") != "success":
            raise TestFailure(f"{path} {params}: {reply.get('errorType')}: "
                              f"{reply.get('error')}")
        return reply["data"]

    def query(self, expr):
        return self.api("query", query=expr)["result"]


def alert_rules(rules_path):
    """(alert name, expression) for each rule of the plain rules file, whose
    expressions are block scalars (`expr: |`)."""
    rules, name, lines, indent = [], None, None, None
    for line in open(rules_path).read().splitlines() + ["<end>"]:
        if lines is not None:
            if line.strip() and (indent is None or
                                 len(line) - len(line.lstrip()) >= indent):
                indent = indent or len(line) - len(line.lstrip())
                lines.append(line.strip())
                continue
            rules.append((name, lines))
            lines, indent = None, None
        m = re.match(r"\s*- alert:\s*(\w+)", line)
        if m:
            name = m.group(1)
        if re.match(r"\s*expr:\s*\|\s*$", line):
            lines = []
    return rules


def comparison_sides(expr_lines):
    """Splits `A\\n  <op> B` into the vector expressions to check: A, and B
    unless it is a number."""
    m = re.match(r"(==|!=|>=|<=|>|<)\s*(?:bool\s+)?(.*)$", expr_lines[-1])
    if not m:
        raise TestFailure(f"expression does not end in a comparison line: "
                          f"{expr_lines}")
    left = " ".join(expr_lines[:-1])
    right = m.group(2)
    try:
        float(right)
        return [left]
    except ValueError:
        return [left, right]


def regex_literal(value):
    """`value` as a regular expression inside a PromQL string, the way
    Grafana interpolates a variable used with =~."""
    return re.escape(value).replace("\\", "\\\\")


def dashboard_queries(dashboard_path, prom):
    """Every target expression of the dashboard with its variables set to
    values found through the variables' own label_values() queries."""
    dashboard = json.load(open(dashboard_path))
    values = {}
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["definition"])
        if not m:
            raise TestFailure(f"variable {var['name']}: unexpected query "
                              f"{var['definition']}")
        selector = m.group(1)
        for name, value in values.items():
            selector = selector.replace(f"${name}", value)
        found = prom.api(f"label/{m.group(2)}/values", **{"match[]": selector})
        if not found:
            raise TestFailure(f"variable {var['name']}: {var['definition']} "
                              f"has no values")
        if var.get("multi") and len(found) > 1:
            values[var["name"]] = "(" + "|".join(
                regex_literal(v) for v in found) + ")"
        else:
            values[var["name"]] = regex_literal(found[0])
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            for name, value in values.items():
                expr = expr.replace(f"${name}", value)
            if "$" in expr:
                raise TestFailure(f"unsubstituted variable in {expr}")
            exprs.append((panel["title"], expr))
    return values, exprs


def check_engine(prom, engine, deadline):
    """kvgated read the fake engine's pool, and counts a preemption."""
    def engine_read():
        up = prom.query(f'kvgate_engine_up{{model="{ENGINE_MODEL}"}} == 1')
        tokens = prom.query(
            f'kvgate_engine_kv_capacity_tokens{{model="{ENGINE_MODEL}"}}')
        return up and tokens and float(tokens[0]["value"][1]) == float(
            ENGINE_BLOCKS * ENGINE_BLOCK_SIZE)

    deadline.wait_for("kvgated to read the engine's pool", engine_read)
    engine.preempt()

    def preemption_counted():
        result = prom.query(
            f'kvgate_engine_preemptions_total{{model="{ENGINE_MODEL}"}}')
        return result and float(result[0]["value"][1]) >= 1

    deadline.wait_for("the engine's preemption in Prometheus",
                      preemption_counted)
    # The device-memory alerts leave engine pools out by this join.
    dynamic = prom.query("kvgate_budget_free_bytes unless on "
                         "(job, instance, model) kvgate_engine_up")
    if [s["metric"].get("model") for s in dynamic] != [DYNAMIC_MODEL]:
        raise TestFailure(f"unless on (model) kvgate_engine_up kept "
                          f"{[s['metric'] for s in dynamic]}")
    print(f"engine pool {ENGINE_BLOCKS * ENGINE_BLOCK_SIZE} tokens read, "
          "preemption counted")


def run(args, tmp, procs, deadline, engine):
    sock = os.path.join(tmp, "kvgate.sock")
    config_path = os.path.join(tmp, "kvgated.txtpb")
    with open(config_path, "w") as f:
        f.write(kvgated_config(engine.url()))
    kvgated = procs.start(
        "kvgated", [args.kvgated, f"--config={config_path}",
                    f"--grpc_address=unix:{sock}",
                    "--metrics_address=127.0.0.1:0"],
        os.path.join(tmp, "kvgated.log"))

    def metrics_address():
        if kvgated.poll() is not None:
            raise TestFailure(f"kvgated exited with {kvgated.returncode}")
        with open(os.path.join(tmp, "kvgated.log")) as f:
            for line in f:
                if '"metrics listening"' in line:
                    return json.loads(line)["address"]
        return None

    target = deadline.wait_for("kvgated's metrics address", metrics_address)
    deadline.wait_for("kvgated's socket", lambda: os.path.exists(sock))
    print(f"kvgated metrics on {target}")

    # Prometheus: 1 s scrapes and rule evaluations, storage in tmp.
    rules = os.path.join(args.root, "deploy/prometheus/kvgate-rules.yaml")
    config = os.path.join(tmp, "prometheus.yml")
    with open(config, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                f"rule_files:\n  - {json.dumps(rules)}\n"
                "scrape_configs:\n  - job_name: kvgate\n"
                f"    static_configs:\n      - targets: [{json.dumps(target)}]\n")
    port = free_port()
    prometheus = procs.start(
        "prometheus",
        [shutil.which("prometheus"), f"--config.file={config}",
         f"--storage.tsdb.path={os.path.join(tmp, 'data')}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        os.path.join(tmp, "prometheus.log"))
    prom = Prometheus(f"http://127.0.0.1:{port}")

    def ready():
        if prometheus.poll() is not None:
            raise TestFailure(f"prometheus exited with {prometheus.returncode}")
        return "Ready" in http_get(f"{prom.base}/-/ready")

    deadline.wait_for("prometheus ready", ready)

    # Load: admissions, a queued request, QUEUE_TIMEOUT and NEVER_FITS.
    demo = subprocess.run(
        [args.kvgate, "demo", f"--address=unix:{sock}",
         f"--model={DYNAMIC_MODEL}"], capture_output=True,
        text=True, timeout=max(1, deadline.left()))
    print(demo.stdout + demo.stderr)
    if demo.returncode != 0:
        raise TestFailure(f"kvgate demo exited {demo.returncode}")
    for needed in ("ADMITTED", "REJECTED", "queued"):
        if needed not in demo.stdout:
            raise TestFailure(f"the demo load did not produce {needed}")

    # promtool check metrics on a live scrape.
    scrape = http_get(f"http://{target}/metrics")
    lint = subprocess.run([shutil.which("promtool"), "check", "metrics"],
                          input=scrape, capture_output=True, text=True,
                          timeout=30)
    if lint.returncode != 0 or lint.stdout.strip() or lint.stderr.strip():
        raise TestFailure(f"promtool check metrics (exit {lint.returncode}):\n"
                          f"{lint.stdout}{lint.stderr}")
    print(f"promtool check metrics: clean ({len(scrape.splitlines())} lines)")

    # Wait until Prometheus holds the load's counts and a few samples since.
    def scraped_load():
        result = prom.query('sum(kvgate_admission_decisions_total'
                            '{job="kvgate", decision="REJECTED"})')
        return result and float(result[0]["value"][1]) >= 3

    deadline.wait_for("Prometheus to scrape the load", scraped_load)
    check_engine(prom, engine, deadline)
    time.sleep(3)  # rate() over 15 s wants samples on both sides of the load

    failures = []
    values, exprs = dashboard_queries(
        os.path.join(args.root, "deploy/grafana/kvgate.json"), prom)
    print(f"dashboard variables: {values}")
    checks = [(f"dashboard {title!r}", e) for title, e in exprs]
    rule_list = alert_rules(rules)
    for name, lines in rule_list:
        try:
            prom.query(" ".join(lines))  # the whole rule must be valid
        except TestFailure as e:
            failures.append(f"alert {name}: {e}")
        checks += [(f"alert {name}", side) for side in comparison_sides(lines)]
    for what, expr in checks:
        try:
            result = prom.query(expr)
        except TestFailure as e:
            failures.append(f"{what}: invalid: {e}")
            continue
        if not result:
            failures.append(f"{what}: no series: {expr}")
        else:
            print(f"ok  {what}: {len(result)} series")

    # The server loaded every rule and evaluates it without error.
    groups = prom.api("rules")["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    for name, _ in rule_list:
        rule = loaded.get(name)
        if rule is None:
            failures.append(f"alert {name}: not loaded by Prometheus")
        elif rule.get("health") not in ("ok", "unknown"):
            failures.append(f"alert {name}: health {rule.get('health')}: "
                            f"{rule.get('lastError')}")
    if len(rule_list) < 7:
        failures.append(f"parsed only {len(rule_list)} alert rules")
    if failures:
        raise TestFailure("\n  ".join([f"{len(failures)} failures:"] +
                                      failures))
    print(f"PASS: {len(exprs)} dashboard and {len(checks) - len(exprs)} "
          f"alert expressions return series; {len(rule_list)} rules loaded")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kvgated", required=True)
    parser.add_argument("--kvgate", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--deadline", type=float, default=60)
    args = parser.parse_args()
    args.root = os.path.abspath(args.root)  # rule_files resolve from tmp
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            print(f"FAIL: {tool} not found: install Debian's `prometheus` "
                  "package (scripts/install-deps.sh)")
            return 1
    deadline = Deadline(args.deadline)
    procs = Processes()
    tmp = tempfile.mkdtemp(prefix="kvgate-prometheus-test-")
    engine = FakeVllm(ENGINE_MODEL, ENGINE_BLOCKS, ENGINE_BLOCK_SIZE)
    try:
        run(args, tmp, procs, deadline, engine)
        return 0
    except (TestFailure, subprocess.TimeoutExpired) as e:
        print(f"FAIL: {e}")
        procs.stop()
        procs.dump_logs()
        return 1
    finally:
        procs.stop()
        engine.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
