"""An asyncio client for kvgated's Admission API (kvgate.v1).

    async with KvgateClient("unix:/tmp/kvgate.sock") as kvgate:
        answer = await kvgate.admit("llama-3-8b", [(512, 256)], timeout=30)
        if answer.decision == admission_pb2.ADMITTED:
            try:
                ...  # serve the request
            finally:
                await kvgate.release(answer.lease_id)

Calls raise ``grpc.aio.AioRpcError`` for gRPC errors (INVALID_ARGUMENT,
NOT_FOUND, UNAVAILABLE, DEADLINE_EXCEEDED); a REJECTED decision is a normal
answer. A client belongs to the event loop it is first used on, as grpc.aio
channels do.
"""

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


class KvgateClient:
    """A channel to kvgated and one method per RPC.

    ``address`` is "unix:/path" or "host:port". ``rpc_timeout`` bounds the
    calls that never queue (release, renew, budget, estimate).
    """

    def __init__(self, address: str, rpc_timeout: float = 5.0):
        self.address = address
        self.rpc_timeout = rpc_timeout
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = admission_pb2_grpc.AdmissionStub(self._channel)

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
        return await self._stub.Admit(request, timeout=timeout)

    async def release(self, lease_id: str) -> int:
        """Frees a lease; returns the bytes freed (0 if already free)."""
        answer = await self._stub.Release(
            admission_pb2.ReleaseRequest(lease_id=lease_id),
            timeout=self.rpc_timeout)
        return answer.released_bytes

    async def renew(self, lease_id: str) -> float:
        """Extends a live lease; returns its remaining life in seconds."""
        answer = await self._stub.Renew(
            admission_pb2.RenewRequest(lease_id=lease_id),
            timeout=self.rpc_timeout)
        return answer.ttl.ToNanoseconds() / 1e9

    async def budget(self, model: str) -> admission_pb2.Budget:
        """The model pool's budget now."""
        return await self._stub.GetBudget(
            admission_pb2.GetBudgetRequest(model=model), timeout=self.rpc_timeout)

    async def estimate(self, model: str, sequences: Iterable[Tuple[int, int]]
                       ) -> admission_pb2.EstimateResponse:
        """The bytes a batch would need, reserving nothing."""
        return await self._stub.Estimate(
            admission_pb2.EstimateRequest(model=model,
                                          sequences=sequences_of(sequences)),
            timeout=self.rpc_timeout)
