#include "estimator/activations.h"

#include <algorithm>
#include <limits>

namespace kvgate {
namespace {

uint64_t SaturatingMul(uint64_t a, uint64_t b) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) {
    return std::numeric_limits<uint64_t>::max();
  }
  return a * b;
}

uint64_t SaturatingAdd(uint64_t a, uint64_t b) {
  return b > std::numeric_limits<uint64_t>::max() - a
             ? std::numeric_limits<uint64_t>::max()
             : a + b;
}

}  // namespace

ActivationModel::ActivationModel(const ModelSpec& s,
                                 const ActivationOptions& options)
    : options_(options) {
  const uint64_t tp = std::max<uint32_t>(1, options.tensor_parallel);
  const uint64_t act = std::max<uint32_t>(1, DTypeBits(options.dtype) / 8);
  const uint64_t h = s.hidden_size;
  heads_per_gpu_ = std::max<uint64_t>(1, s.num_attention_heads / tp);

  // Attention: q, k, v and the attention output of one token on one GPU.
  uint64_t attn = 0;
  if (s.attention_kind == AttentionKind::kMultiLatent) {
    attn = heads_per_gpu_ * (2 * (s.qk_nope_head_dim + s.qk_rope_head_dim) +
                             2 * s.v_head_dim);
  } else {
    const uint64_t kv = std::max<uint64_t>(1, s.num_kv_heads / tp);
    attn = (2 * heads_per_gpu_ + 2 * kv) * s.head_dim;
  }
  // MLP: a gated MLP holds the activated gate, the up projection and their
  // product at once (3 x width); a plain MLP its input and activation
  // (2 x width). MoE tokens visit experts_per_token experts.
  const uint64_t mlp_factor = s.mlp_kind == MlpKind::kGated ? 3 : 2;
  uint64_t mlp = 0;
  if (s.num_moe_layers > 0) {
    mlp = mlp_factor * (s.experts_per_token * s.moe_intermediate_size +
                        s.shared_expert_intermediate_size) /
          tp;
  }
  if (s.num_moe_layers < s.num_layers) {
    mlp = std::max(mlp, mlp_factor * s.intermediate_size / tp);
  }
  // Residual stream, normed input, and the sublayer's output alongside the
  // larger of the two sublayers' intermediates.
  layer_bytes_per_token_ = (4 * h + std::max(attn, mlp)) * act;
  head_bytes_per_token_ = 2 * h * act;
  logits_bytes_per_token_ =
      s.vocab_size / tp * std::max<uint32_t>(1, options.logits_bytes);
  score_bytes_ = act + 4;  // scores in the compute dtype plus fp32 softmax
}

uint64_t ActivationModel::StepPeakBytes(uint64_t step_tokens,
                                        uint64_t logits_tokens,
                                        uint64_t score_elements) const {
  uint64_t layer = SaturatingMul(step_tokens, layer_bytes_per_token_);
  if (options_.attention == AttentionImpl::kEager) {
    layer = SaturatingAdd(layer, SaturatingMul(score_elements, score_bytes_));
  }
  const uint64_t head =
      SaturatingAdd(SaturatingMul(step_tokens, head_bytes_per_token_),
                    SaturatingMul(logits_tokens, logits_bytes_per_token_));
  return std::max(layer, head);
}

}  // namespace kvgate
