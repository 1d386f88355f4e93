// ServingModel: a model as a serving engine holds it, with every per-model
// constant computed once, and the per-request estimate the admission sidecar
// calls on every Admit.
//
// EstimateBatch is O(number of sequences) and allocates nothing.
#ifndef KVGATE_ESTIMATOR_SERVING_H_
#define KVGATE_ESTIMATOR_SERVING_H_

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "estimator/activations.h"
#include "estimator/kv_cache.h"
#include "estimator/model_spec.h"
#include "estimator/parameters.h"
#include "estimator/weights.h"

namespace kvgate {

// Tokens per prefill step when a caller serves "like vLLM": the default of
// vLLM's --max-num-batched-tokens for the OpenAI API server on most GPUs
// (vLLM V1 always chunks prefill). kvgated's model pools and the CLI's
// --chunked-prefill-tokens default to it; ServingOptions keeps 0 (off) so a
// bare estimate sizes the whole prompt in one step.
inline constexpr uint32_t kVllmMaxNumBatchedTokens = 8192;

// The weight dtype an engine serves `spec` in when no dtype is given:
// vLLM's dtype=auto rule serves an fp32 checkpoint in 16 bits (bf16 where
// the GPU supports it, else fp16: same bytes), anything else as declared.
// Quantized checkpoints keep their quantization (nullopt: the config's).
std::optional<DType> ServedWeightDType(const ModelSpec& spec);

struct ServingOptions {
  // Unset: from the config, with fp32 checkpoints served in bf16 (see
  // ServedWeightDType).
  std::optional<DType> weight_dtype;
  std::optional<DType> kv_cache_dtype;  // unset: "auto"
  uint32_t block_size = 16;
  uint32_t tensor_parallel = 1;
  AttentionImpl attention = AttentionImpl::kFlash;
  uint32_t chunked_prefill_tokens = 0;
  // The n sequences of one batch are samples of one prompt and share its KV
  // blocks (prompt counted once, each sample its own generated tokens).
  bool share_prompt_prefix = false;
  bool honor_sliding_window = true;
  uint32_t logits_bytes = 4;
  // Context limit; 0: the config's max_position_embeddings (no limit when
  // the config has none).
  uint64_t max_model_len = 0;
};

// One sequence of a request batch.
struct SequenceShape {
  uint64_t prompt_tokens = 0;
  uint64_t max_new_tokens = 0;
};

struct BatchEstimate {
  uint64_t kv_cache_tokens = 0;  // block-rounded token slots (all layers)
  uint64_t kv_cache_bytes = 0;
  uint64_t activation_bytes = 0;
  uint64_t total_bytes = 0;  // kv_cache_bytes + activation_bytes
};

class ServingModel {
 public:
  // InvalidArgument for inconsistent options (see KvCacheModel::Create).
  static absl::StatusOr<ServingModel> Create(ModelSpec spec,
                                             const ServingOptions& options);

  const ModelSpec& spec() const { return spec_; }
  const ServingOptions& options() const { return options_; }
  const ParameterCounts& parameters() const { return parameters_; }
  const KvCacheModel& kv_cache() const { return kv_cache_; }
  const ActivationModel& activations() const { return activations_; }
  const Quantization& quantization() const { return quantization_; }
  // Weights on one GPU.
  uint64_t weights_bytes() const { return weights_bytes_; }
  uint64_t kv_cache_bytes_per_token() const {
    return kv_cache_.bytes_per_token();
  }
  // Longest prompt + max_new_tokens a sequence may have (0: unlimited).
  uint64_t max_model_len() const { return max_model_len_; }

  // Bytes a request batch needs. InvalidArgument naming the field for an
  // empty batch, a zero prompt, a sequence longer than max_model_len, or
  // sizes whose sums overflow 64 bits.
  absl::Status EstimateBatch(absl::Span<const SequenceShape> batch,
                             BatchEstimate* out) const;

 private:
  ServingModel(ModelSpec spec, const ServingOptions& options,
               KvCacheModel kv_cache);

  ModelSpec spec_;
  ServingOptions options_;
  ParameterCounts parameters_;
  Quantization quantization_;
  KvCacheModel kv_cache_;
  ActivationModel activations_;
  uint64_t weights_bytes_ = 0;
  uint64_t max_model_len_ = 0;
};

}  // namespace kvgate

#endif  // KVGATE_ESTIMATOR_SERVING_H_
