// KV-cache bytes of a model: per token, and per sequence in a paged engine.
//
// Per token (standard attention): 2 * layers * kv_heads * head_dim * bytes.
// Multi-latent attention caches one latent per layer:
// layers * (kv_lora_rank + qk_rope_head_dim) * bytes.
// Under tensor parallelism KV heads are split across GPUs, replicated when
// there are fewer heads than GPUs; an MLA latent is replicated on every GPU.
// Sliding-window layers keep at most `sliding_window` tokens. A paged engine
// allocates whole blocks of `block_size` tokens per sequence.
#ifndef KVGATE_ESTIMATOR_KV_CACHE_H_
#define KVGATE_ESTIMATOR_KV_CACHE_H_

#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"
#include "estimator/dtype.h"
#include "estimator/model_spec.h"

namespace kvgate {

struct KvCacheOptions {
  // Unset ("auto"): the weights' 16-bit dtype (bf16 for fp32 or quantized
  // checkpoints, as engines cast them).
  std::optional<DType> dtype;
  uint32_t block_size = 16;
  uint32_t tensor_parallel = 1;
  // Cap sliding-window layers at the window. Off: every layer keeps all
  // tokens (engines that do not free out-of-window blocks).
  bool honor_sliding_window = true;
};

class KvCacheModel {
 public:
  // InvalidArgument: zero block size or TP, KV heads not divisible by TP,
  // 4-bit KV dtype.
  static absl::StatusOr<KvCacheModel> Create(const ModelSpec& spec,
                                             const KvCacheOptions& options);

  DType dtype() const { return dtype_; }
  uint32_t block_size() const { return block_size_; }
  // KV heads held by one GPU (standard attention).
  uint64_t kv_heads_per_gpu() const { return kv_heads_per_gpu_; }

  // Bytes per token of context over all layers on one GPU, with every layer
  // keeping every token (the figure model cards quote).
  uint64_t bytes_per_token() const {
    return layer_bytes_per_token_ * (full_layers_ + sliding_layers_);
  }

  // Bytes one sequence of `tokens` tokens occupies after block rounding and
  // the sliding-window cap. Exact; never overflows for tokens < 2^40.
  uint64_t SequenceBytes(uint64_t tokens) const {
    return layer_bytes_per_token_ *
           (full_layers_ * RoundToBlock(tokens) +
            sliding_layers_ *
                RoundToBlock(tokens < window_ ? tokens : window_));
  }

  uint64_t RoundToBlock(uint64_t tokens) const {
    return (tokens + block_size_ - 1) / block_size_ * block_size_;
  }

 private:
  DType dtype_ = DType::kBFloat16;
  uint32_t block_size_ = 16;
  uint64_t kv_heads_per_gpu_ = 0;
  uint64_t layer_bytes_per_token_ = 0;  // one layer, one token, one GPU
  uint64_t full_layers_ = 0;
  uint64_t sliding_layers_ = 0;
  uint64_t window_ = 0;
};

}  // namespace kvgate

#endif  // KVGATE_ESTIMATOR_KV_CACHE_H_
