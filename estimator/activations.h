// Transient activation memory of one forward pass (a prefill step).
//
// The peak of a prefill is the largest of three moments, each a sum of
// tensors alive together (weights and the KV cache are not part of it):
//
//  - MLP: the hidden-state copies a PyTorch forward keeps alive through a
//    decoder layer (the embedding output, the layer's input, the residual sum
//    and the normalised input; GPT-2 also keeps its position embeddings),
//    plus the MLP's intermediates (gated: act(gate), up and their product;
//    plain: the up projection and its activation; an activation written as
//    a chain of elementwise ops, such as GPT-2's tanh GELU "gelu_new", holds
//    two more), plus the rotary cos/sin tables. A mixture-of-experts layer
//    holds, while its routed experts run, top_k x (4 x hidden + 3 x
//    moe_intermediate) per token (gathered and expert-sorted inputs, gate/up,
//    the gated product, expert outputs and weighted outputs) plus its routing
//    tensors, after transformers' grouped_mm experts forward.
//  - Attention: the hidden-state copies (one fewer: the residual is the
//    layer's input here), q/k/v, the rotated q/k and the attention output;
//    for eager attention also fp32 copies of q and of the keys broadcast to
//    every query head, and the score matrix at 9 bytes per element (fp32
//    scores and fp32 probabilities alive together, plus about one byte of
//    masking temporaries).
//  - Head: the final hidden states and the logits of the positions that need
//    them, in the logits dtype.
//
// Calibrated against H100 prefill peaks of Hugging Face transformers models
// (docs/calibration/prefill.md), DeepSeek-V2-Lite (MoE) included: within 6%
// on every measured row. One engine step runs at a time, so a server reserves
// the largest peak among active requests, not the sum.
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
  uint64_t mlp_bytes_per_token_ = 0;   // the MLP moment, per token
  uint64_t attn_bytes_per_token_ = 0;  // the attention moment, per token
  uint64_t head_bytes_per_token_ = 0;  // final hidden state per token
  uint64_t logits_bytes_per_token_ = 0;
  uint64_t score_bytes_ = 0;  // bytes per eager score element
  uint64_t heads_per_gpu_ = 0;
};

}  // namespace kvgate

#endif  // KVGATE_ESTIMATOR_ACTIVATIONS_H_
