"""Fixtures: a real kvgated sized for about two requests, and the stand-in
OpenAI server under uvicorn with KvgateMiddleware, over unix sockets; and
kvgated with auth (a bearer token) or TLS / mutual TLS on TCP, with
certificates made by the `openssl` command.

KVGATED names the kvgated binary (ctest sets it). Missing Python packages or
a missing binary fail the suite; nothing is skipped.
"""

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

from kvgate.client import Credentials, KvgateClient

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

    def __init__(self, binary, workdir, name, memory_bytes, extra_config="",
                 address=None, credentials=None):
        """``extra_config``: more ServerConfig text (auth, tls); ``address``:
        default a unix socket in workdir; ``credentials``: what this
        fixture's own calls present (kvgate.client.Credentials)."""
        self.address = address or f"unix:{workdir}/{name}.sock"
        self.credentials = credentials
        config = os.path.join(workdir, f"{name}.textproto")
        with open(config, "w") as f:
            f.write(f'models {{ name: "{MODEL}" preset: "gpt2" '
                    f'gpu_memory_utilization: 1.0 }}\n'
                    f'memory_source {{ static_source {{ memory_bytes: {memory_bytes} }} }}\n'
                    # Room for every test's waiters (the default is one capacity).
                    f'queue {{ max_requests: 8 max_bytes: {10 * memory_bytes} }}\n'
                    # Short, so a response that outlives it shows renewal.
                    f'lease_ttl {{ seconds: {LEASE_TTL_S} }}\n' + extra_config)
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
            async with KvgateClient(self.address,
                                    credentials=self.credentials) as client:
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


# The bearer token of the auth kvgated's only identity.
TOKEN = "tok-middleware-7f3a21"


def free_tcp_address():
    """127.0.0.1:<a port free now>."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _openssl(workdir, *args):
    subprocess.run(["openssl", *args], cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)


@pytest.fixture(scope="session")
def pki(workdir):
    """PEM paths: "ca", a server certificate for localhost and 127.0.0.1
    signed by it ("server", "server_key"), a client it signed ("client",
    "client_key", CN client-a), and "other_ca" that signed nothing here."""
    d = os.path.join(workdir, "pki")
    os.makedirs(d)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other_ca"):
        _openssl(d, "req", "-x509", *key, "-days", "2", "-subj", f"/CN={ca}",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    leaves = {"server": "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                        "extendedKeyUsage=serverAuth\n",
              "client-a": "extendedKeyUsage=clientAuth\n"}
    for name, ext in leaves.items():
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(ext)
        _openssl(d, "req", *key, "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr")
        _openssl(d, "x509", "-req", "-days", "2", "-in", f"{name}.csr",
                 "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-extfile", f"{name}.ext")
    path = lambda name: os.path.join(d, name)  # noqa: E731
    return {"ca": path("ca.pem"), "other_ca": path("other_ca.pem"),
            "server": path("server.pem"), "server_key": path("server.key"),
            "client": path("client-a.pem"), "client_key": path("client-a.key")}


@pytest.fixture(scope="session")
def token_file(workdir):
    path = os.path.join(workdir, "kvgate.token")
    with open(path, "w") as f:
        f.write(TOKEN + "\n")  # as `echo` writes it
    return path


@pytest.fixture(scope="session")
def kvgated_binary():
    binary = os.environ.get("KVGATED")
    if not binary or not os.access(binary, os.X_OK):
        pytest.fail(f"KVGATED must name the kvgated binary, got {binary!r}")
    return binary


@pytest.fixture(scope="session")
def auth_kvgated(workdir, kvgated_binary, token_file):
    """kvgated on a unix socket whose Admission calls need TOKEN."""
    server = Kvgated(kvgated_binary, workdir, "auth", 80 * 10**9,
                     extra_config=f'auth {{ tokens {{ token_file: "{token_file}" '
                                  f'tenant: "middleware" }} }}\n',
                     credentials=Credentials.load(token_file=token_file))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_kvgated(workdir, kvgated_binary, pki):
    """kvgated on TCP with TLS (no client certificate asked)."""
    server = Kvgated(kvgated_binary, workdir, "tls", 80 * 10**9,
                     extra_config=f'tls {{ cert_file: "{pki["server"]}" '
                                  f'key_file: "{pki["server_key"]}" }}\n',
                     address=free_tcp_address(),
                     credentials=Credentials.load(tls_ca_file=pki["ca"]))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mtls_kvgated(workdir, kvgated_binary, pki):
    """kvgated on TCP with mutual TLS, the client certificate its identity."""
    server = Kvgated(kvgated_binary, workdir, "mtls", 80 * 10**9,
                     extra_config=f'tls {{ cert_file: "{pki["server"]}" '
                                  f'key_file: "{pki["server_key"]}" '
                                  f'client_ca_file: "{pki["ca"]}" '
                                  f'require_client_cert: true }}\n'
                                  f'auth {{ certificates {{ name: "client-a" '
                                  f'tenant: "middleware" }} }}\n',
                     address=free_tcp_address(),
                     credentials=Credentials.load(
                         tls_ca_file=pki["ca"], tls_cert_file=pki["client"],
                         tls_key_file=pki["client_key"]))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kvgated(workdir, kvgated_binary):
    binary = kvgated_binary
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
def servers(workdir, kvgated, auth_kvgated, tls_kvgated, mtls_kvgated, pki,
            token_file):
    """Stand-in servers by name, started together: "gated" (fail closed),
    "short_wait" (0.3 s queue wait), "model_override" (KVGATE_MODEL), "sizing"
    (KVGATE_MAX_MODEL_LEN, KVGATE_DEFAULT_MAX_TOKENS, a trusted token-count
    header), "fail_open"/"fail_closed" pointing at a socket where no kvgated
    listens, "token" (KVGATE_TOKEN_FILE, to the auth kvgated), "mtls" (client
    certificate, to the mutual TLS kvgated), and, failing open, two that
    kvgated refuses: "fail_open_no_token" (no token for the auth kvgated) and
    "fail_open_untrusted" (a CA that did not sign the TLS kvgated's
    certificate)."""
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
        "token": {"KVGATE_ADDRESS": auth_kvgated.address,
                  "KVGATE_TOKEN_FILE": token_file},
        "mtls": {"KVGATE_ADDRESS": mtls_kvgated.address,
                 "KVGATE_TLS_CA_FILE": pki["ca"],
                 "KVGATE_TLS_CERT_FILE": pki["client"],
                 "KVGATE_TLS_KEY_FILE": pki["client_key"]},
        "fail_open_no_token": {"KVGATE_ADDRESS": auth_kvgated.address,
                               "KVGATE_FAIL_OPEN": "true", "KVGATE_TIMEOUT_S": "2"},
        "fail_open_untrusted": {"KVGATE_ADDRESS": tls_kvgated.address,
                                "KVGATE_FAIL_OPEN": "true", "KVGATE_TIMEOUT_S": "2",
                                "KVGATE_TLS_CA_FILE": pki["other_ca"]},
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
