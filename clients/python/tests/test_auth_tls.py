"""The client and the middleware against a kvgated with auth or TLS on:
bearer tokens from a file, TLS and mutual TLS from PEM files, the
KVGATE_* settings that name them, and fail-open limited to transport
failures (a refusal by kvgated is never forwarded ungated)."""

import asyncio
import json

import grpc
import pytest

from conftest import MODEL, TOKEN, chat, completion
from kvgate.client import Credentials, KvgateClient
from kvgate.settings import Settings
from kvgate.vllm import KvgateMiddleware


def budget(address, credentials=None, timeout=5.0):
    async def go():
        async with KvgateClient(address, rpc_timeout=timeout,
                                credentials=credentials) as client:
            return await client.budget(MODEL)
    return asyncio.run(go())


def error_of(response):
    return response.json()["error"]


# --- Client: bearer token ------------------------------------------------

def test_client_without_token_is_unauthenticated(auth_kvgated):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        budget(auth_kvgated.address)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_client_sends_the_token_of_token_file(auth_kvgated, token_file):
    credentials = Credentials.load(token_file=token_file)
    assert credentials.token == TOKEN  # the file's newline is not part of it
    assert budget(auth_kvgated.address, credentials).capacity_bytes > 0


def test_settings_read_token_and_tls_files_from_the_environment(token_file, pki):
    settings = Settings.from_env({
        "KVGATE_TOKEN_FILE": token_file, "KVGATE_TLS_CA_FILE": pki["ca"],
        "KVGATE_TLS_CERT_FILE": pki["client"],
        "KVGATE_TLS_KEY_FILE": pki["client_key"],
        "KVGATE_TLS_SERVER_NAME": "localhost"})
    middleware = KvgateMiddleware(app=None, settings=settings)
    credentials = middleware._credentials
    assert credentials.token == TOKEN
    assert credentials.uses_tls
    assert credentials.root_certificates.startswith(b"-----BEGIN CERTIFICATE")
    assert credentials.private_key is not None
    assert credentials.server_name == "localhost"
    assert not Settings.from_env({}).tls


def test_unreadable_token_file_fails_at_start_up_naming_the_variable():
    settings = Settings.from_env({"KVGATE_TOKEN_FILE": "/nonexistent/kvgate.token"})
    with pytest.raises(ValueError, match="KVGATE_TOKEN_FILE.*/nonexistent/kvgate.token"):
        KvgateMiddleware(app=None, settings=settings)


def test_client_certificate_without_its_key_is_refused(pki):
    with pytest.raises(ValueError, match="KVGATE_TLS_KEY_FILE"):
        Settings.from_env({"KVGATE_TLS_CERT_FILE": pki["client"]})
    with pytest.raises(ValueError, match="tls_key_file"):
        Credentials.load(tls_cert_file=pki["client"])


# --- Client: TLS and mutual TLS ------------------------------------------

def test_client_tls_trusts_the_ca_file(tls_kvgated, pki):
    assert budget(tls_kvgated.address,
                  Credentials.load(tls_ca_file=pki["ca"])).capacity_bytes > 0


def test_client_tls_refuses_a_server_its_ca_did_not_sign(tls_kvgated, pki):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        budget(tls_kvgated.address, Credentials.load(tls_ca_file=pki["other_ca"]),
               timeout=2)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_tls_server_name_overrides_the_address_host(tls_kvgated, pki):
    # The certificate names localhost and 127.0.0.1, not this.
    with pytest.raises(grpc.aio.AioRpcError):
        budget(tls_kvgated.address,
               Credentials.load(tls_ca_file=pki["ca"],
                                tls_server_name="wrong.example"), timeout=2)
    assert budget(tls_kvgated.address,
                  Credentials.load(tls_ca_file=pki["ca"],
                                   tls_server_name="localhost")).capacity_bytes > 0


def test_client_mutual_tls_presents_its_certificate(mtls_kvgated, pki):
    credentials = Credentials.load(tls_ca_file=pki["ca"], tls_cert_file=pki["client"],
                                   tls_key_file=pki["client_key"])
    assert budget(mtls_kvgated.address, credentials).capacity_bytes > 0
    with pytest.raises(grpc.aio.AioRpcError):
        budget(mtls_kvgated.address, Credentials.load(tls_ca_file=pki["ca"]),
               timeout=2)


# --- Middleware ------------------------------------------------------------

def test_middleware_sends_the_token_of_kvgate_token_file(servers, auth_kvgated):
    server = servers["token"]
    server.reset_stats()
    r = server.post("/v1/completions", completion())
    assert r.status_code == 200, r.text
    assert "x-kvgate-queued-ms" in r.headers
    assert server.stats()["requests"] == 1
    assert auth_kvgated.budget().active_leases == 0


def test_middleware_speaks_mutual_tls(servers, mtls_kvgated):
    server = servers["mtls"]
    server.reset_stats()
    r = server.post("/v1/chat/completions", chat())
    assert r.status_code == 200, r.text
    assert "x-kvgate-queued-ms" in r.headers
    assert mtls_kvgated.budget().active_leases == 0


def _log_of(server):
    server.log.flush()
    server.log.seek(0)
    return server.log.read()


def test_fail_open_never_forwards_an_unauthenticated_request(servers):
    # KVGATE_FAIL_OPEN=true, but kvgated is up and refuses the middleware:
    # forwarding would serve every request ungated, unnoticed.
    server = servers["fail_open_no_token"]
    server.reset_stats()
    r = server.post("/v1/completions", completion())
    assert r.status_code == 500, r.text
    error = error_of(r)
    assert error["code"] == "kvgate_unauthenticated"
    assert "UNAUTHENTICATED" in error["message"]
    assert "KVGATE_TOKEN_FILE" in error["message"]
    assert server.stats()["requests"] == 0
    log = _log_of(server)
    assert "UNAUTHENTICATED" in log and "refused the middleware" in log


def test_fail_open_never_forwards_after_a_failed_tls_handshake(servers):
    server = servers["fail_open_untrusted"]
    server.reset_stats()
    r = server.post("/v1/chat/completions", chat())
    assert r.status_code == 500, r.text
    assert error_of(r)["code"] == "kvgate_tls_failed"
    assert server.stats()["requests"] == 0
    assert "refused the middleware" in _log_of(server)


def test_fail_open_still_forwards_when_nothing_listens(servers):
    # The transport failure fail-open is for.
    server = servers["fail_open"]
    server.reset_stats()
    r = server.post("/v1/completions", completion())
    assert r.status_code == 200, r.text
    assert json.loads(r.text)
    assert server.stats()["requests"] == 1
