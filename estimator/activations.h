// Transient activation memory of one forward pass (a prefill step).
//
// The peak of a prefill is the larger of two moments: inside a decoder layer
// (residual stream, attention inputs and outputs, the MLP's intermediate
// tensors, and for eager attention the batch x heads x seq^2 score matrix),
// and at the head (final hidden states and the logits of the positions that
// need them, in the logits dtype). Weights and the KV cache are not part of
// it. One engine step runs at a time, so a server reserves the largest peak
// among active requests, not the sum.
#ifndef KVGATE_ESTIMATOR_ACTIVATIONS_H_
#define KVGATE_ESTIMATOR_ACTIVATIONS_H_

#include <cstdint>

#include "estimator/dtype.h"
#include "estimator/model_spec.h"

namespace kvgate {

enum class AttentionImpl {
  kFlash,  // fused kernels (FlashAttention, SDPA): no score matrix
  kEager,  // materialises softmax(QK^T) per head
};

struct ActivationOptions {
  AttentionImpl attention = AttentionImpl::kFlash;
  // Compute dtype of activations.
  DType dtype = DType::kBFloat16;
  // Bytes per logit element: 4 (fp32, engines upcast for sampling) or 2.
  uint32_t logits_bytes = 4;
  // Tokens per prefill step (0: the whole batch in one step).
  uint32_t chunked_prefill_tokens = 0;
  uint32_t tensor_parallel = 1;
};

class ActivationModel {
 public:
  ActivationModel(const ModelSpec& spec, const ActivationOptions& options);

  // Peak transient bytes of one forward step over `step_tokens` tokens of
  // which `logits_tokens` need logits; `score_elements` is the sum over
  // sequences of heads * query_len * key_len for eager attention (ignored
  // for flash). Saturates at UINT64_MAX instead of overflowing.
  uint64_t StepPeakBytes(uint64_t step_tokens, uint64_t logits_tokens,
                         uint64_t score_elements) const;

  const ActivationOptions& options() const { return options_; }
  uint64_t heads_per_gpu() const { return heads_per_gpu_; }

 private:
  ActivationOptions options_;
  uint64_t layer_bytes_per_token_ = 0;  // decoder-layer peak per token
  uint64_t head_bytes_per_token_ = 0;   // final hidden state per token
  uint64_t logits_bytes_per_token_ = 0;
  uint64_t score_bytes_ = 0;  // bytes per score element
  uint64_t heads_per_gpu_ = 0;
};

}  // namespace kvgate

#endif  // KVGATE_ESTIMATOR_ACTIVATIONS_H_
