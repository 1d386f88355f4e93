"""Device memory as the serving loop sees it: an out-of-memory error, and on
CPU an accounting allocator that enforces a limit the way a GPU would.

On a GPU the CUDA caching allocator is the truth: an allocation over what the
device holds raises torch.cuda.OutOfMemoryError, and the peak is
torch.cuda.max_memory_allocated(). A CPU has no such wall, so the loop
allocates every weight, KV-cache and activation tensor through
Ledger.empty(), which reserves the tensor's bytes first (raising
OutOfMemory, whose message says "out of memory" as CUDA's does, when the
limit would be passed) and releases them when the tensor is freed (a
weakref finalizer). Ops write into such tensors with out= or in place, so
what the counter holds is what the loop has alive. Scalars per row (norm
variances, softmax maxima and sums) are counted too; scratch PyTorch may take
inside a kernel (a BLAS packing buffer) is not counted.
"""

import threading
import time
import weakref

import torch


class OutOfMemory(RuntimeError):
    """An allocation over the configured limit (CPU mode's CUDA OOM)."""


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA's OOM, the ledger's, and PyTorch's "out of memory"."""
    cuda_oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if cuda_oom is not None and isinstance(error, cuda_oom):
        return True
    return isinstance(error, (OutOfMemory, RuntimeError)) and (
        "out of memory" in str(error).lower())


class Ledger:
    """Bytes of the tensors the loop has alive, against a limit.

    limit_bytes 0: no limit (counting only). Thread-safe: one lock around
    the counter; requests run on many threads.
    """

    def __init__(self, device: torch.device, limit_bytes: int = 0):
        self.device = device
        self.limit_bytes = limit_bytes
        self._lock = threading.Lock()
        self._in_use = 0
        self._peak = 0
        self._ooms = 0

    def empty(self, shape, dtype) -> torch.Tensor:
        """torch.empty(shape) whose bytes are reserved until it is freed."""
        count = 1
        for n in shape:
            count *= int(n)
        nbytes = count * torch.tensor([], dtype=dtype).element_size()
        self.reserve(nbytes)
        try:
            tensor = torch.empty(shape, dtype=dtype, device=self.device)
        except BaseException:
            self.release(nbytes)
            raise
        weakref.finalize(tensor, self.release, nbytes)
        return tensor

    def reserve(self, nbytes: int):
        with self._lock:
            after = self._in_use + nbytes
            if self.limit_bytes and after > self.limit_bytes:
                self._ooms += 1
                raise OutOfMemory(
                    f"out of memory: tried to allocate {nbytes} bytes with "
                    f"{self._in_use} of the {self.limit_bytes}-byte limit in use")
            self._in_use = after
            self._peak = max(self._peak, after)

    def release(self, nbytes: int):
        with self._lock:
            self._in_use -= nbytes

    def in_use(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return self._in_use

    def peak(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return self._peak


class Sampler:
    """Memory in use every `interval_s`, on a daemon thread: the timeline
    the benchmark plots."""

    def __init__(self, ledger: Ledger, interval_s: float = 0.02):
        self._ledger = ledger
        self._interval_s = interval_s
        self._start = time.time()
        self.samples = []  # (unix seconds, bytes in use)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            self.samples.append((time.time(), self._ledger.in_use()))
            time.sleep(self._interval_s)
