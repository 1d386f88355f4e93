"""Fixtures: a real kvgated sized for about two requests, and the stand-in
OpenAI server under uvicorn with KvgateMiddleware, over unix sockets.

KVGATED names the kvgated binary (ctest sets it). Missing Python packages or
a missing binary fail the suite; nothing is skipped.
"""

import asyncio
import os
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

from kvgate.client import KvgateClient

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
MODEL = "m"

# The request every test sends: a 400-byte prompt (100 tokens at the default
# 4 bytes per token; 106 as a chat message with its template overhead) and
# 400 new tokens, 512 tokens of KV after 16-token block rounding.
PROMPT = "x" * 400
MAX_TOKENS = 400
CHAT_PROMPT_TOKENS = 106
# kvgated's lease TTL, and how often the gated servers renew.
LEASE_TTL_S = 1
RENEW_INTERVAL_S = 0.2


def completion(**extra):
    return {"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, **extra}


def chat(**extra):
    return {"model": MODEL, "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": PROMPT}], **extra}


def wait_until(predicate, what, timeout=10.0):
    """Polls predicate() until true; fails the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Kvgated:
    """A running kvgated and a way to read its budget from synchronous tests."""

    def __init__(self, binary, workdir, name, memory_bytes):
        self.address = f"unix:{workdir}/{name}.sock"
        config = os.path.join(workdir, f"{name}.textproto")
        with open(config, "w") as f:
            f.write(f'models {{ name: "{MODEL}" preset: "gpt2" '
                    f'gpu_memory_utilization: 1.0 }}\n'
                    f'memory_source {{ static_source {{ memory_bytes: {memory_bytes} }} }}\n'
                    # Room for every test's waiters (the default is one capacity).
                    f'queue {{ max_requests: 8 max_bytes: {10 * memory_bytes} }}\n'
                    # Short, so a response that outlives it shows renewal.
                    f'lease_ttl {{ seconds: {LEASE_TTL_S} }}\n')
        self.log = open(os.path.join(workdir, f"{name}.log"), "w+")
        self.process = subprocess.Popen(
            [binary, f"--config={config}", f"--grpc_address={self.address}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(self._ready, f"kvgated at {self.address}")

    def _ready(self):
        if self.process.poll() is not None:
            self.log.seek(0)
            pytest.fail(f"kvgated exited {self.process.returncode}: {self.log.read()}")
        try:
            self.budget()
            return True
        except Exception:
            return False

    def call(self, method, *args):
        async def go():
            async with KvgateClient(self.address) as client:
                return await getattr(client, method)(*args)
        return asyncio.run(go())

    def budget(self):
        return self.call("budget", MODEL)

    def idle(self):
        b = self.budget()
        return b.reserved_bytes == 0 and b.active_leases == 0 and b.queued_requests == 0

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class StandIn:
    """The stand-in OpenAI server under uvicorn, in its own process."""

    def __init__(self, workdir, name, env):
        self.uds = os.path.join(workdir, f"{name}.http.sock")
        self.log = open(os.path.join(workdir, f"{name}.uvicorn.log"), "w+")
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(
            [TESTS_DIR] + [p for p in sys.path if p])
        full_env.update(env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "stand_in_app:app", "--uds", self.uds,
             "--log-level", "warning", "--no-access-log"],
            cwd=TESTS_DIR, env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)

    def wait_ready(self):
        def ready():
            if self.process.poll() is not None:
                self.log.seek(0)
                pytest.fail(f"uvicorn exited {self.process.returncode}: {self.log.read()}")
            try:
                with httpx.Client(transport=httpx.HTTPTransport(uds=self.uds)) as c:
                    return c.get("http://stand-in/health").status_code == 200
            except httpx.TransportError:
                return False
        wait_until(ready, f"uvicorn on {self.uds}", timeout=20)

    def client(self, timeout=20.0):
        """An async httpx client for this server."""
        return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=self.uds),
                                 base_url="http://stand-in", timeout=timeout)

    def get(self, path):
        with httpx.Client(transport=httpx.HTTPTransport(uds=self.uds),
                          base_url="http://stand-in") as c:
            return c.get(path)

    def post(self, path, body):
        with httpx.Client(transport=httpx.HTTPTransport(uds=self.uds),
                          base_url="http://stand-in", timeout=20) as c:
            return c.post(path, json=body)

    def reset_stats(self):
        self.post("/stats/reset", {})

    def stats(self):
        return self.get("/stats").json()

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="session")
def workdir():
    with tempfile.TemporaryDirectory(prefix="kvgate-py-") as d:
        yield d


@pytest.fixture(scope="session")
def kvgated(workdir):
    binary = os.environ.get("KVGATED")
    if not binary or not os.access(binary, os.X_OK):
        pytest.fail(f"KVGATED must name the kvgated binary, got {binary!r}")
    # A roomy kvgated measures the test request, then one sized for two of
    # them (KV each, one activation reserve) and half a third.
    probe = Kvgated(binary, workdir, "probe", 80 * 10**9)
    try:
        estimate = probe.call("estimate", MODEL, [(CHAT_PROMPT_TOKENS, MAX_TOKENS)])
    finally:
        probe.stop()
    kv, act = estimate.kv_cache_bytes, estimate.activation_bytes
    server = Kvgated(binary, workdir, "kvgated",
                     estimate.weights_bytes + 2 * kv + act + kv // 2)
    capacity = server.budget().capacity_bytes
    assert 2 * kv + act <= capacity < 3 * kv + act, (capacity, kv, act)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def servers(workdir, kvgated):
    """Stand-in servers by name, started together: "gated" (fail closed),
    "short_wait" (0.3 s queue wait), "model_override" (KVGATE_MODEL), "sizing"
    (KVGATE_MAX_MODEL_LEN, KVGATE_DEFAULT_MAX_TOKENS, a trusted token-count
    header), and "fail_open"/"fail_closed" pointing
    at a socket where no kvgated listens."""
    absent = f"unix:{workdir}/absent.sock"
    configs = {
        "gated": {"KVGATE_ADDRESS": kvgated.address, "KVGATE_TIMEOUT_S": "10",
                  "KVGATE_RENEW_INTERVAL_S": str(RENEW_INTERVAL_S)},
        "short_wait": {"KVGATE_ADDRESS": kvgated.address,
                       "KVGATE_MAX_QUEUE_WAIT_S": "0.3",
                       "KVGATE_RENEW_INTERVAL_S": str(RENEW_INTERVAL_S)},
        "model_override": {"KVGATE_ADDRESS": kvgated.address, "KVGATE_MODEL": MODEL,
                           "KVGATE_RENEW_INTERVAL_S": str(RENEW_INTERVAL_S)},
        # Sizes requests itself: gpt2's context, a default written into
        # bodies without a max, and the token-count header trusted.
        "sizing": {"KVGATE_ADDRESS": kvgated.address, "KVGATE_MAX_MODEL_LEN": "1024",
                   "KVGATE_DEFAULT_MAX_TOKENS": "64",
                   "KVGATE_TRUST_TOKEN_COUNT_HEADER": "true",
                   "KVGATE_RENEW_INTERVAL_S": str(RENEW_INTERVAL_S)},
        "fail_open": {"KVGATE_ADDRESS": absent, "KVGATE_FAIL_OPEN": "true",
                      "KVGATE_TIMEOUT_S": "2"},
        "fail_closed": {"KVGATE_ADDRESS": absent, "KVGATE_FAIL_OPEN": "false",
                        "KVGATE_TIMEOUT_S": "2"},
    }
    started = {name: StandIn(workdir, name, env) for name, env in configs.items()}
    try:
        for s in started.values():
            s.wait_ready()
        yield started
    finally:
        for s in started.values():
            s.process.terminate()
        for s in started.values():
            s.stop()


@pytest.fixture
def gated(servers, kvgated):
    server = servers["gated"]
    server.reset_stats()
    yield server
    # Every test leaves kvgated with nothing reserved or queued.
    wait_until(kvgated.idle, "kvgated to be idle after the test")
