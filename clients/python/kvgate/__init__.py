"""kvgate's Python client.

- ``kvgate.client.KvgateClient``: an asyncio client for kvgated's Admission API.
- ``kvgate.vllm.KvgateMiddleware``: an ASGI middleware that gates vLLM's
  OpenAI-compatible server (``vllm serve ... --middleware
  kvgate.vllm.KvgateMiddleware``).
- ``kvgate.v1``: the gRPC stubs, generated from proto/kvgate/v1/admission.proto
  when the package is built (CMake target ``kvgate_python`` or ``pip install``).
"""

import pkgutil

# In a source checkout the generated kvgate/v1 lives in the build tree, not
# next to this file: look for "kvgate" directories all along sys.path.
__path__ = pkgutil.extend_path(__path__, __name__)
