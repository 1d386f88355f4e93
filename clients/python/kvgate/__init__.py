"""kvgate's Python client.

- ``kvgate.client.KvgateClient``: an asyncio client for kvgated's Admission API.
- ``kvgate.vllm.KvgateMiddleware``: an ASGI middleware that gates vLLM's
  OpenAI-compatible server (``vllm serve ... --middleware
  kvgate.vllm.KvgateMiddleware``).
- ``kvgate.v1``: the gRPC stubs, generated from proto/kvgate/v1/admission.proto
  and checked in (refreshed by clients/python/tools/generate_stubs.py).
"""
