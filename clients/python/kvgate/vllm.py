"""Admission control for vLLM's OpenAI-compatible server, as ASGI middleware.

    KVGATE_ADDRESS=unix:/run/kvgate/kvgate.sock \\
      vllm serve meta-llama/Llama-3.1-8B-Instruct \\
      --middleware kvgate.vllm.KvgateMiddleware

Each POST /v1/completions and /v1/chat/completions asks kvgated for the
memory of its batch (prompt plus max tokens, times n) before it reaches the
app:

- ADMITTED: the request goes on; its lease is released once, when the
  response's last body message is about to be sent, when the client
  disconnects, or when the app returns or raises, whichever comes first.
  Streamed (SSE) responses hold their lease until the stream ends. Long
  responses renew the lease every KVGATE_RENEW_INTERVAL_S.
- While kvgated queues the request the HTTP request waits; a client that
  disconnects meanwhile leaves the queue.
- REJECTED: 429 with Retry-After (QUEUE_TIMEOUT, QUEUE_FULL, SHED), 503 with
  Retry-After (MEMORY_PRESSURE, DRAINING, or kvgated not ready), or 400 for a
  request that can never fit; the body is an OpenAI-style error object.
- kvgated unreachable (a transport failure: no connection, connection
  refused, no connection by the deadline): forwarded without a lease
  (KVGATE_FAIL_OPEN=true) or answered 503 (the default).
- kvgated refuses the middleware (UNAUTHENTICATED, PERMISSION_DENIED) or the
  TLS handshake fails: 500, and any other gRPC error 502, whatever
  KVGATE_FAIL_OPEN says: these are configuration errors that forwarding
  would hide. The real cause is logged and in the error body.
- Bad JSON or fields, or prompt + max tokens over KVGATE_MAX_MODEL_LEN: 400;
  a model kvgated does not serve: 404.
- A request without a max is sized by the engine's rule (kvgate.openai_request);
  with KVGATE_DEFAULT_MAX_TOKENS set, that max_tokens is written into the body
  the app receives, so the engine never runs past the lease.

Other paths, methods and scope types pass through untouched. Settings are in
kvgate.settings. The middleware is pure ASGI (not BaseHTTPMiddleware), so
responses stream through it unbuffered.
"""

import asyncio
import json
import logging
import math
from typing import Optional

import grpc

from kvgate import openai_request
from kvgate.client import PRIORITIES, Credentials, KvgateClient
from kvgate.settings import Settings
from kvgate.v1 import admission_pb2

_log = logging.getLogger("kvgate.vllm")

# The endpoints whose requests reserve KV cache.
GATED_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})

# HTTP answer per rejection reason: (status, OpenAI error type, Retry-After?).
# NEVER_FITS is the caller's to fix (fewer tokens), so retrying cannot help.
_REJECTIONS = {
    "QUEUE_TIMEOUT": (429, "rate_limit_exceeded", True),
    "QUEUE_FULL": (429, "rate_limit_exceeded", True),
    "SHED": (429, "rate_limit_exceeded", True),
    "MEMORY_PRESSURE": (503, "service_unavailable", True),
    "DRAINING": (503, "service_unavailable", True),
    "NEVER_FITS": (400, "invalid_request_error", False),
}
_DEFAULT_REJECTION = (429, "rate_limit_exceeded", True)

# Header on admitted responses: milliseconds the request waited in kvgated.
QUEUED_HEADER = b"x-kvgate-queued-ms"


class KvgateMiddleware:
    """ASGI middleware that holds each generation request until kvgated admits it.

    ``settings`` defaults to Settings.from_env(); vLLM passes only ``app``.
    """

    def __init__(self, app, settings: Optional[Settings] = None):
        self.app = app
        self.settings = settings if settings is not None else Settings.from_env()
        s = self.settings
        # Read now, so that a missing token or certificate fails at start-up.
        self._credentials = Credentials.load(
            token_file=s.token_file, tls=s.tls, tls_ca_file=s.tls_ca_file,
            tls_cert_file=s.tls_cert_file, tls_key_file=s.tls_key_file,
            tls_server_name=s.tls_server_name)
        self._client: Optional[KvgateClient] = None
        self._client_loop = None

    def _kvgate(self) -> KvgateClient:
        # grpc.aio channels belong to one event loop.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = KvgateClient(self.settings.address,
                                        credentials=self._credentials)
            self._client_loop = loop
        return self._client

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await self.app(scope, self._closing_on_shutdown(receive), send)
            return
        if (scope["type"] != "http" or scope.get("method") != "POST"
                or scope.get("path", "").rstrip("/") not in GATED_PATHS):
            await self.app(scope, receive, send)
            return

        body = await _read_body(receive)
        if body is None:
            return  # the client left before sending its request
        try:
            shape, tenant, priority = self._shape(scope, body)
        except openai_request.BadRequest as e:
            await send_error(send, 400, str(e), "invalid_request_error",
                             "invalid_request", param=e.param)
            return
        except openai_request.SizingError as e:
            _log.error("kvgate: %s", e)
            await send_error(send, 500, f"kvgate: {e}", "api_error", "internal")
            return
        if shape.written_max_tokens is not None:
            body = openai_request.with_max_tokens(body, shape.written_max_tokens)
            scope = _with_content_length(scope, len(body))
        request = _Replay(body, receive)

        answer = await self._admit(shape, tenant, priority, request)
        if isinstance(answer, _Aborted):
            return
        if isinstance(answer, grpc.aio.AioRpcError):
            await self._on_rpc_error(answer, scope, request, send)
            return
        if answer.decision != admission_pb2.ADMITTED:
            await _send_rejection(send, answer)
            return
        await self._serve(scope, request, send, answer)

    def _shape(self, scope, body):
        """(Shape, tenant, priority) of a request; raises BadRequest."""
        headers = _headers(scope)
        s = self.settings
        counted = headers.get(s.token_count_header)
        prompt_tokens = None
        if s.trust_token_count_header and counted:
            prompt_tokens = openai_request.parse_token_count(
                counted, s.token_count_header)
        shape = openai_request.parse(
            scope["path"], body, bytes_per_token=s.bytes_per_token,
            max_model_len=s.max_model_len,
            default_max_tokens=s.default_max_tokens, prompt_tokens=prompt_tokens)
        priority = headers.get(s.priority_header, "").strip().lower()
        if priority not in PRIORITIES:
            raise openai_request.BadRequest(
                f"header {s.priority_header} must be critical, standard or "
                f"sheddable, got {priority!r}")
        return shape, headers.get(s.tenant_header, ""), priority

    async def _admit(self, shape, tenant, priority, request):
        """kvgated's answer, an AioRpcError, or _Aborted if the client left.

        Watches the connection while the call waits in kvgated's queue, and
        cancels the call (leaving the queue) when the client disconnects.
        """
        s = self.settings
        client = self._kvgate()
        admit = asyncio.ensure_future(client.admit(
            s.model or shape.model, shape.sequences, timeout=s.timeout_s,
            tenant=tenant, priority=priority, max_queue_wait=s.queue_wait_s))
        watch = asyncio.ensure_future(request.receive_next())
        try:
            await asyncio.wait({admit, watch}, return_when=asyncio.FIRST_COMPLETED)
            if watch.done() and not watch.cancelled():
                message = watch.result()
                if message["type"] == "http.disconnect":
                    admit.cancel()
                    await _release_if_admitted(client, admit)
                    return _Aborted()
                request.hold(message)
            try:
                return await admit
            except grpc.aio.AioRpcError as e:
                return e
        except BaseException:
            admit.cancel()
            await _release_if_admitted(client, admit)
            raise
        finally:
            if not watch.done():
                watch.cancel()

    async def _on_rpc_error(self, error, scope, request, send):
        code = error.code()
        detail = error.details() or code.name
        address = self.settings.address
        if code == grpc.StatusCode.NOT_FOUND:
            await send_error(send, 404, f"kvgate: {detail}", "invalid_request_error",
                             "model_not_found", param="model")
        elif code == grpc.StatusCode.INVALID_ARGUMENT:
            await send_error(send, 400, f"kvgate: {detail}", "invalid_request_error",
                             "invalid_request")
        elif code == grpc.StatusCode.UNAVAILABLE and _is_not_ready(detail):
            await send_error(send, 503, f"kvgate is not ready: {detail}",
                             "service_unavailable", "not_ready", retry_after=1)
        elif code in _REFUSALS or _is_tls_failure(code, detail):
            # Never forwarded: kvgated is there and refuses us, which only a
            # configuration change fixes.
            what, fix, error_code = _REFUSALS.get(code, _TLS_REFUSAL)
            _log.error("kvgated at %s refused the middleware (%s: %s); %s; "
                       "answering 500", address, code.name, detail, fix)
            await send_error(send, 500, f"kvgate: {what} ({code.name}: {detail}); "
                             f"{fix}", "api_error", error_code)
        elif _is_transport_failure(code, detail, self._kvgate()):
            if self.settings.fail_open:
                _log.warning("kvgated at %s unreachable (%s: %s); forwarding "
                             "without admission", address, code.name, detail)
                await self.app(scope, request.receive, send)
            else:
                _log.warning("kvgated at %s unreachable (%s: %s); answering 503",
                             address, code.name, detail)
                await send_error(send, 503, f"kvgate is unavailable ({code.name})",
                                 "service_unavailable", "kvgate_unavailable",
                                 retry_after=1)
        else:
            _log.error("kvgated at %s answered %s: %s; answering 502", address,
                       code.name, detail)
            await send_error(send, 502, f"kvgate: kvgated answered {code.name}: "
                             f"{detail}", "api_error", "kvgate_error")

    async def _serve(self, scope, request, send, answer):
        lease = _Lease(self._kvgate(), answer.lease_id, self.settings.renew_interval_s)
        queued_ms = str(answer.queued_for.ToMilliseconds()).encode()

        async def receive():
            message = await request.receive()
            if message["type"] == "http.disconnect":
                await lease.release()
            return message

        async def send_through(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [
                    (QUEUED_HEADER, queued_ms)]
            elif (message["type"] == "http.response.body"
                  and not message.get("more_body", False)):
                # Generation is over: free the memory before the client sees
                # the end, so a follow-up request finds it free.
                await lease.release()
            await send(message)

        try:
            await self.app(scope, receive, send_through)
        finally:
            await lease.release()

    def _closing_on_shutdown(self, receive):
        async def wrapped():
            message = await receive()
            if message["type"] == "lifespan.shutdown" and self._client is not None:
                client, self._client = self._client, None
                await client.close()
            return message
        return wrapped


class _Aborted:
    """The client disconnected before admission."""


class _Replay:
    """The ASGI receive the app sees: the body read already, then the server's."""

    def __init__(self, body: bytes, receive):
        self._pending = [{"type": "http.request", "body": body, "more_body": False}]
        self._receive = receive

    def hold(self, message):
        self._pending.append(message)

    async def receive_next(self):
        return await self._receive()

    async def receive(self):
        if self._pending:
            return self._pending.pop(0)
        return await self._receive()


class _Lease:
    """An admitted lease: renewed while it lives, released exactly once."""

    def __init__(self, client: KvgateClient, lease_id: str, renew_interval_s: float):
        self._client = client
        self.lease_id = lease_id
        self._released: Optional[asyncio.Future] = None
        self._renewer = asyncio.ensure_future(self._renew_every(renew_interval_s))

    async def _renew_every(self, interval):
        while True:
            await asyncio.sleep(interval)
            try:
                await self._client.renew(self.lease_id)
            except grpc.aio.AioRpcError as e:
                _log.warning("kvgate: renewing lease %s failed: %s", self.lease_id,
                             e.details())
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    return

    async def release(self):
        if self._released is None:
            self._renewer.cancel()
            self._released = asyncio.ensure_future(self._release())
        # Shielded: a cancelled request still frees its memory.
        await asyncio.shield(self._released)

    async def _release(self):
        try:
            await self._client.release(self.lease_id)
        except grpc.aio.AioRpcError as e:
            # The lease expires on its own after its TTL.
            _log.warning("kvgate: releasing lease %s failed: %s", self.lease_id,
                         e.details())


async def _release_if_admitted(client, admit):
    try:
        answer = await admit
    except (asyncio.CancelledError, grpc.aio.AioRpcError):
        return
    if answer.decision == admission_pb2.ADMITTED:
        await _Lease(client, answer.lease_id, 3600).release()


async def _read_body(receive) -> Optional[bytes]:
    """The whole request body, or None if the client disconnected."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)


def _with_content_length(scope, length):
    """`scope` for a rewritten body: content-length set to `length`."""
    headers = [(k, v) for k, v in scope.get("headers", [])
               if k.lower() != b"content-length"]
    headers.append((b"content-length", str(length).encode()))
    return {**scope, "headers": headers}


def _headers(scope):
    return {k.decode("latin-1").lower(): v.decode("latin-1")
            for k, v in scope.get("headers", [])}


# kvgated's refusals of the middleware itself: (what, how to fix, error code).
_REFUSALS = {
    grpc.StatusCode.UNAUTHENTICATED: (
        "kvgated refused the middleware's credentials",
        "set KVGATE_TOKEN_FILE to a token of kvgated's auth.tokens (or a client "
        "certificate with KVGATE_TLS_CERT_FILE and KVGATE_TLS_KEY_FILE)",
        "kvgate_unauthenticated"),
    grpc.StatusCode.PERMISSION_DENIED: (
        "kvgated denied the middleware",
        "check the identity kvgated's auth gives KVGATE_TOKEN_FILE's token",
        "kvgate_permission_denied"),
}
_TLS_REFUSAL = (
    "the TLS handshake with kvgated failed",
    "check KVGATE_TLS_CA_FILE, KVGATE_TLS_CERT_FILE, KVGATE_TLS_KEY_FILE and "
    "KVGATE_TLS_SERVER_NAME against kvgated's tls block",
    "kvgate_tls_failed")


def _is_tls_failure(code, detail: str) -> bool:
    # gRPC reports a failed handshake as UNAVAILABLE, like a refused
    # connection, with the handshake's error in the details ("Ssl handshake
    # failed: ... CERTIFICATE_VERIFY_FAILED").
    lowered = detail.lower()
    return code == grpc.StatusCode.UNAVAILABLE and (
        "handshake" in lowered or "certificate" in lowered)


def _is_transport_failure(code, detail: str, client: KvgateClient) -> bool:
    """Whether kvgated could not be reached at all: UNAVAILABLE (no
    connection, connection refused, connection lost), or DEADLINE_EXCEEDED
    while the channel has no connection. A deadline that passes on a live
    connection is kvgated's answer (or its silence), not a transport failure."""
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return not client.connected()
    return False


def _is_not_ready(detail: str) -> bool:
    # kvgated's own UNAVAILABLE ("kvgated is not ready"), as opposed to
    # gRPC's transport failures ("failed to connect to all addresses").
    return detail.startswith("kvgated is not ready")


async def _send_rejection(send, answer):
    status, error_type, retry = _REJECTIONS.get(answer.reason, _DEFAULT_REJECTION)
    retry_after = None
    if retry:
        retry_after = max(1, math.ceil(answer.retry_after.ToNanoseconds() / 1e9))
    message = f"kvgate: {answer.reason}"
    if answer.message:
        message += f": {answer.message}"
    await send_error(send, status, message, error_type, answer.reason.lower(),
                     retry_after=retry_after)


async def send_error(send, status: int, message: str, error_type: str, code: str,
                     param: Optional[str] = None, retry_after: Optional[int] = None):
    """Sends an OpenAI-style JSON error response."""
    body = json.dumps({"error": {"message": message, "type": error_type,
                                 "param": param, "code": code}}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
