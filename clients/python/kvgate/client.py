"""An asyncio client for kvgated's Admission API (kvgate.v1).

    async with KvgateClient("unix:/tmp/kvgate.sock") as kvgate:
        answer = await kvgate.admit("llama-3-8b", [(512, 256)], timeout=30)
        if answer.decision == admission_pb2.ADMITTED:
            try:
                ...  # serve the request
            finally:
                await kvgate.release(answer.lease_id)

Against a kvgated with ``auth`` and TLS configured, pass credentials:

    credentials = Credentials.load(
        token_file="/var/run/secrets/kvgate/token",   # auth.tokens
        tls_ca_file="/etc/kvgate/tls/ca.pem",         # trust kvgated's cert
        tls_cert_file="/etc/kvgate/tls/client.pem",   # mutual TLS, with
        tls_key_file="/etc/kvgate/tls/client.key")    # its key
    KvgateClient("kvgated.example:50051", credentials=credentials)

Calls raise ``grpc.aio.AioRpcError`` for gRPC errors (INVALID_ARGUMENT,
NOT_FOUND, UNAVAILABLE, DEADLINE_EXCEEDED, UNAUTHENTICATED); a REJECTED
decision is a normal answer. A client belongs to the event loop it is first
used on, as grpc.aio channels do.
"""

import dataclasses
import uuid
from typing import Iterable, Optional, Tuple

import grpc
from google.protobuf import duration_pb2

from kvgate.v1 import admission_pb2, admission_pb2_grpc

# Priority names accepted by admit(), as in the proto.
PRIORITIES = {
    "": admission_pb2.PRIORITY_UNSPECIFIED,
    "critical": admission_pb2.CRITICAL,
    "standard": admission_pb2.STANDARD,
    "sheddable": admission_pb2.SHEDDABLE,
}


def _duration(seconds: float):
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def sequences_of(pairs: Iterable[Tuple[int, int]]):
    """Sequence messages from (prompt_tokens, max_new_tokens) pairs."""
    return [admission_pb2.Sequence(prompt_tokens=p, max_new_tokens=m)
            for p, m in pairs]


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{what}: cannot read {path!r}: {e.strerror}") from None


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What the client presents to kvgated: a bearer token and TLS material.

    kvgated's ``auth.tokens`` expect ``authorization: Bearer <token>``
    metadata on every call; its ``tls`` block a TLS channel, and with
    ``client_ca_file`` a client certificate (mutual TLS). Build it with
    load(), which reads the files once.
    """

    token: Optional[str] = None
    # TLS when True; implied by any of the PEM fields.
    tls: bool = False
    # PEM CA bundle that kvgated's certificate must chain to; None: the
    # system's roots.
    root_certificates: Optional[bytes] = None
    # PEM client certificate (chain) and its key, for mutual TLS.
    certificate_chain: Optional[bytes] = None
    private_key: Optional[bytes] = None
    # The name kvgated's certificate must carry, when the address's host is
    # not it (e.g. an IP address).
    server_name: Optional[str] = None

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls or self.root_certificates or self.certificate_chain)

    @classmethod
    def load(cls, *, token_file: Optional[str] = None, tls: bool = False,
             tls_ca_file: Optional[str] = None, tls_cert_file: Optional[str] = None,
             tls_key_file: Optional[str] = None,
             tls_server_name: Optional[str] = None) -> "Credentials":
        """Reads the files; ValueError naming the setting (and its KVGATE_*
        variable) for a file that cannot be read, an empty token, or a
        certificate without its key or the reverse."""
        token = None
        if token_file:
            # Surrounding whitespace is not part of the token, as kvgated
            # reads its own token files (`echo` adds a newline).
            token = _read(token_file, "token_file (KVGATE_TOKEN_FILE)").decode(
                "utf-8", "replace").strip()
            if not token:
                raise ValueError(
                    f"token_file (KVGATE_TOKEN_FILE): {token_file!r} is empty")
        if bool(tls_cert_file) != bool(tls_key_file):
            raise ValueError("tls_cert_file (KVGATE_TLS_CERT_FILE) and tls_key_file "
                             "(KVGATE_TLS_KEY_FILE) go together (mutual TLS)")
        return cls(
            token=token, tls=tls,
            root_certificates=(_read(tls_ca_file, "tls_ca_file (KVGATE_TLS_CA_FILE)")
                               if tls_ca_file else None),
            certificate_chain=(_read(tls_cert_file,
                                     "tls_cert_file (KVGATE_TLS_CERT_FILE)")
                               if tls_cert_file else None),
            private_key=(_read(tls_key_file, "tls_key_file (KVGATE_TLS_KEY_FILE)")
                         if tls_key_file else None),
            server_name=tls_server_name or None)

    def metadata(self):
        """The metadata sent with every call (None without a token)."""
        if not self.token:
            return None
        return (("authorization", f"Bearer {self.token}"),)

    def channel(self, address: str) -> grpc.aio.Channel:
        """A new grpc.aio channel to ``address`` with these credentials."""
        if not self.uses_tls:
            return grpc.aio.insecure_channel(address)
        options = []
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.aio.secure_channel(
            address,
            grpc.ssl_channel_credentials(
                root_certificates=self.root_certificates,
                private_key=self.private_key,
                certificate_chain=self.certificate_chain),
            options=options)


class KvgateClient:
    """A channel to kvgated and one method per RPC.

    ``address`` is "unix:/path" or "host:port". ``rpc_timeout`` bounds the
    calls that never queue (release, renew, budget, estimate).
    ``credentials`` (Credentials.load) gives the bearer token and TLS; None
    is a plaintext channel without a token.
    """

    def __init__(self, address: str, rpc_timeout: float = 5.0, *,
                 credentials: Optional[Credentials] = None):
        self.address = address
        self.rpc_timeout = rpc_timeout
        self.credentials = credentials or Credentials()
        self._metadata = self.credentials.metadata()
        self._channel = self.credentials.channel(address)
        self._stub = admission_pb2_grpc.AdmissionStub(self._channel)

    def connected(self) -> bool:
        """Whether the channel has a live connection to kvgated now."""
        return (self._channel.get_state(try_to_connect=False)
                == grpc.ChannelConnectivity.READY)

    async def __aenter__(self) -> "KvgateClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def admit(self, model: str, sequences: Iterable[Tuple[int, int]], *,
                    timeout: float, tenant: str = "", priority: str = "",
                    max_queue_wait: Optional[float] = None,
                    request_id: Optional[str] = None) -> admission_pb2.AdmitResponse:
        """Asks for memory for a batch; may wait in kvgated's queue.

        ``sequences`` holds (prompt_tokens, max_new_tokens) pairs. ``timeout``
        is the gRPC deadline in seconds; ``max_queue_wait`` (seconds) lets
        kvgated answer QUEUE_TIMEOUT before it. ``priority`` is one of
        PRIORITIES' names; KeyError otherwise.
        """
        request = admission_pb2.AdmitRequest(
            request_id=request_id or uuid.uuid4().hex,
            model=model,
            tenant=tenant,
            priority=PRIORITIES[priority.lower()],
            sequences=sequences_of(sequences))
        if max_queue_wait is not None and max_queue_wait > 0:
            request.max_queue_wait.CopyFrom(_duration(max_queue_wait))
        return await self._stub.Admit(request, timeout=timeout,
                                     metadata=self._metadata)

    async def release(self, lease_id: str) -> int:
        """Frees a lease; returns the bytes freed (0 if already free)."""
        answer = await self._stub.Release(
            admission_pb2.ReleaseRequest(lease_id=lease_id),
            timeout=self.rpc_timeout, metadata=self._metadata)
        return answer.released_bytes

    async def renew(self, lease_id: str) -> float:
        """Extends a live lease; returns its remaining life in seconds."""
        answer = await self._stub.Renew(
            admission_pb2.RenewRequest(lease_id=lease_id),
            timeout=self.rpc_timeout, metadata=self._metadata)
        return answer.ttl.ToNanoseconds() / 1e9

    async def budget(self, model: str) -> admission_pb2.Budget:
        """The model pool's budget now."""
        return await self._stub.GetBudget(
            admission_pb2.GetBudgetRequest(model=model), timeout=self.rpc_timeout,
            metadata=self._metadata)

    async def estimate(self, model: str, sequences: Iterable[Tuple[int, int]]
                       ) -> admission_pb2.EstimateResponse:
        """The bytes a batch would need, reserving nothing."""
        return await self._stub.Estimate(
            admission_pb2.EstimateRequest(model=model,
                                          sequences=sequences_of(sequences)),
            timeout=self.rpc_timeout, metadata=self._metadata)
