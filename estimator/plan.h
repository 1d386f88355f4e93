// Serving plan: how much KV cache a model gets on a GPU, and how many
// sequences of the full context length that holds.
//
// The plan sizes the cache the way vLLM does at start-up:
//
//   requested = floor(gpu_memory_bytes * gpu_memory_utilization)
//   kv_cache  = requested - weights - activation peak - non-torch memory
//
// where gpu_memory_bytes is what CUDA can allocate on one GPU (not NVML's
// total: see gpu_catalog.h), weights are the model's bytes on that GPU, the
// activation peak is that of one profiling forward pass over
// max_num_batched_tokens tokens (the dummy batch vLLM runs, with the logits
// of up to max_num_seqs sequences, and the sampler's warm-up on those
// rows), and non-torch memory is what grows
// outside PyTorch's allocator during start-up (cuBLAS workspaces, kernel
// modules, NCCL buffers under tensor parallelism). Like vLLM, the CUDA
// context created before the engine measures its baseline is not charged
// against the budget, and neither is CUDA-graph memory captured after the
// cache is allocated (vLLM < 0.21). The cache is then cut into whole blocks
// of block_size tokens.
//
// A model does not fit when the budget is negative or when the cache cannot
// hold one sequence of max_model_len tokens (vLLM refuses to start then).
#ifndef KVGATE_ESTIMATOR_PLAN_H_
#define KVGATE_ESTIMATOR_PLAN_H_

#include <cstdint>

#include "absl/base/attributes.h"
#include "absl/status/statusor.h"
#include "estimator/model_spec.h"
#include "estimator/serving.h"

namespace kvgate {

struct PlanOptions {
  // Memory of one GPU as CUDA reports its total (GpuSpec::allocatable_bytes).
  uint64_t gpu_memory_bytes = 0;
  // Share of gpu_memory_bytes the engine may use, in (0, 1].
  double gpu_memory_utilization = 0.9;
  // Dtypes, block size and tensor parallelism. serving.max_model_len is
  // ignored: max_model_len below is the context limit of the plan.
  ServingOptions serving;
  // Tokens of the profiling forward pass whose activation peak is reserved
  // (vLLM's max_num_batched_tokens; 8192 is the API server's default on
  // most GPUs in vLLM V1; V0 without chunked prefill profiled
  // max(max_model_len, max_num_batched_tokens)).
  uint64_t max_num_batched_tokens = kVllmMaxNumBatchedTokens;
  // Sequences of the profiling batch: the rows of logits it computes.
  uint64_t max_num_seqs = 256;
  // Context length a request may reach; 0: the config's
  // max_position_embeddings (InvalidArgument when the config has none).
  uint64_t max_model_len = 0;
  // Non-torch memory charged against the budget on each GPU. vLLM's logs
  // show 0.16-0.35 GiB on single GPUs with recent releases and up to
  // 1.79 GiB (3.58 GiB at TP 2) with 0.6.5 on an H100 (vllm-project/vllm
  // PRs #10511, #12126, #14447); 0.5 GiB covers the common case.
  uint64_t non_torch_bytes = uint64_t{512} << 20;
};

struct Plan {
  uint64_t gpu_memory_bytes = 0;
  double gpu_memory_utilization = 0;
  uint32_t tensor_parallel = 1;
  uint64_t max_model_len = 0;
  uint64_t max_num_batched_tokens = 0;
  // floor(gpu_memory_bytes * gpu_memory_utilization).
  uint64_t requested_bytes = 0;
  // Per GPU.
  uint64_t weights_bytes = 0;
  uint64_t activation_bytes = 0;
  uint64_t non_torch_bytes = 0;
  // requested - weights - activation - non-torch ("Available KV cache
  // memory" in vLLM's log).
  uint64_t kv_cache_bytes = 0;
  // KV bytes of one token over all layers on one GPU, and of one block.
  uint64_t kv_cache_bytes_per_token = 0;
  uint64_t kv_cache_block_bytes = 0;
  // Whole blocks that fit in kv_cache_bytes ("# GPU blocks").
  uint64_t kv_cache_blocks = 0;
  // kv_cache_blocks * block_size ("GPU KV cache size: N tokens").
  uint64_t kv_cache_tokens = 0;
  // KV bytes of one sequence of max_model_len tokens, block-rounded.
  uint64_t sequence_kv_bytes = 0;
  // Cache / one full-length sequence, as vLLM prints "Maximum concurrency
  // for N tokens per request: X.XXx".
  double max_concurrency = 0;
  // floor(max_concurrency): sequences of max_model_len tokens held at once.
  uint64_t max_concurrent_sequences = 0;
};

// Plans `spec` on one GPU of `options`. InvalidArgument for a utilization
// outside (0, 1], a zero memory size, zero token or sequence counts, a
// missing max_model_len, or serving options the model cannot take (see
// ServingModel::Create). ResourceExhausted when the model does not fit, with
// the figures: "model does not fit: needs X per GPU (weights W + activations
// A + non-torch N), has Y (U x M)", or the cache holds fewer tokens than one
// sequence of max_model_len, with the longest length that would fit.
ABSL_MUST_USE_RESULT absl::StatusOr<Plan> PlanServing(
    const ModelSpec& spec, const PlanOptions& options);

// The smallest tensor-parallel degree (a power of two up to
// max_tensor_parallel that the model's heads allow) at which PlanServing
// succeeds with `options`, all else equal. NotFound when none does;
// InvalidArgument for inputs PlanServing rejects as such. Non-torch memory
// is kept per GPU; NCCL adds more in practice.
ABSL_MUST_USE_RESULT absl::StatusOr<uint32_t> SmallestFittingTensorParallel(
    const ModelSpec& spec, const PlanOptions& options,
    uint32_t max_tensor_parallel = 64);

}  // namespace kvgate

#endif  // KVGATE_ESTIMATOR_PLAN_H_
