# vLLM's OpenAI server with kvgate's admission middleware
# (clients/python, kvgate.vllm.KvgateMiddleware) installed.
#
#   docker build -f deploy/docker/vllm-middleware.Dockerfile \
#     -t vllm-openai-kvgate:v0.8.5 .
#
# Run from the repository root (the build context). The kvgate package is
# installed offline: its gRPC stubs are checked in and it builds with its
# own backend (clients/python/build_backend.py), so neither protoc, wheel
# nor an index is needed for it. Its runtime needs are grpcio and protobuf:
# vLLM brings protobuf; grpcio is fetched only if the base image lacks it.
#
# The entrypoint is vLLM's own; add the middleware to its arguments and
# point it at kvgated (see clients/python/README.md):
#   docker run --gpus all -v /run/kvgate:/run/kvgate \
#     -e KVGATE_ADDRESS=unix:/run/kvgate/kvgate.sock \
#     vllm-openai-kvgate:v0.8.5 \
#     --model=meta-llama/Meta-Llama-3-8B-Instruct \
#     --middleware=kvgate.vllm.KvgateMiddleware
# Same tag as deploy/kubernetes/overlays/vllm.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.8.5
FROM ${VLLM_IMAGE}

COPY clients/python /opt/kvgate/clients/python
RUN python3 -c "import grpc" 2>/dev/null \
      || python3 -m pip install --no-cache-dir "grpcio>=1.51" \
 && python3 -m pip install --no-cache-dir --no-index --no-deps \
      /opt/kvgate/clients/python \
 && python3 -c "import kvgate.vllm"
