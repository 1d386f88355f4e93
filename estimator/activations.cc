#include "estimator/activations.h"

#include <algorithm>
#include <array>
#include <limits>

#include "absl/strings/string_view.h"

namespace kvgate {
namespace {

// Copies of the hidden state a PyTorch decoder forward keeps alive while a
// layer's MLP runs: the embedding output (held by the model's forward), the
// layer's input (held by the caller's loop variable), the residual sum after
// attention, and the normalised MLP input. Measured: Llama-3-8B and
// Qwen2.5-7B peaks are 3 x intermediate + 4 x hidden (+ rotary tables) per
// token to within 0.2% (docs/calibration/prefill.md).
constexpr uint64_t kResidentHiddenCopies = 4;

// Bytes per element of an eager score matrix: PyTorch's math attention
// upcasts bf16 to fp32, so fp32 scores and fp32 probabilities are alive
// together (8 B), plus about one byte of masking temporaries. Fitted on
// falcon-7b prefill peaks (1x512 to 1x8192): 8.96 B.
constexpr uint64_t kEagerScoreBytes = 9;

// Extra intermediates of the MLP width alive while the activation runs, for
// activations Hugging Face writes as chains of elementwise ops (each op a
// new tensor): NewGELU/FastGELU hold 0.5*x and one chain temporary beside
// x and the result; QuickGELU holds the scaled input. Fused activations
// (silu, gelu, gelu_pytorch_tanh, relu) hold none.
struct ActivationTemporaries {
  absl::string_view name;
  uint64_t extra_intermediates;
};
constexpr std::array<ActivationTemporaries, 4> kActivationTemporaries = {{
    {"gelu_new", 2},
    {"gelu_fast", 2},
    {"gelu_accurate", 2},
    {"quick_gelu", 1},
}};

uint64_t ExtraActivationIntermediates(absl::string_view hidden_act) {
  for (const ActivationTemporaries& row : kActivationTemporaries) {
    if (row.name == hidden_act) return row.extra_intermediates;
  }
  return 0;
}

// Bytes per token of a mixture-of-experts layer while its routed experts
// run, beyond the resident hidden copies, after transformers'
// grouped_mm_experts_forward (src/transformers/integrations/moe.py; the
// DeepseekV2Moe forward in models/deepseek_v2/modeling_deepseek_v2.py
// dispatches to it through config._experts_implementation). The measured
// rows fit it and not the eager per-expert loop, whose peak would be a
// quarter of theirs. For S = tokens x top_k routed slots the forward gathers
// hidden_states[token_idx] (S x hidden), sorts that by expert into a second
// copy (S x hidden), runs gate/up as one grouped matmul (S x 2 x moe_inter),
// gates it (S x moe_inter), runs down (S x hidden) and scales by the routing
// weights (S x hidden, in the compute dtype: an fp32 product would put the
// peak 16% above the rows) before un-permuting and summing the slots; every
// one of these is a local of the function, so all are alive when the
// weighted outputs are written: top_k x (4 x hidden + 3 x moe_inter)
// elements per token. Routing adds the fp32 router logits (held by the MoE
// forward), top-k indices (int64) and weights (fp32), and four int64 index
// vectors of S entries (token_idx, perm, inv_perm, sorted expert ids).
// Measured: DeepSeek-V2-Lite prefill peaks within 1.1%
// (docs/calibration/prefill.md). Under TP the gathered hidden-wide tensors
// stay whole and the expert widths are divided.
uint64_t RoutedExpertsBytesPerToken(const ModelSpec& s, uint64_t tp,
                                    uint64_t act) {
  const uint64_t k = s.experts_per_token;
  const uint64_t slots_elements =
      k * (4 * s.hidden_size + 3 * s.moe_intermediate_size / tp);
  const uint64_t routing = 4 * s.num_experts + k * (8 + 4) + 4 * k * 8;
  return slots_elements * act + routing;
}

// Bytes per token of the widest MLP of any layer, beyond the resident hidden
// copies: a dense MLP's `live` intermediates; for MoE layers the routed
// experts (above) or, once they have returned, their combined output beside
// the shared experts' intermediates, whichever is larger.
uint64_t MlpBytesPerToken(const ModelSpec& s, uint64_t tp, uint64_t act,
                          uint64_t live) {
  uint64_t bytes = 0;
  if (s.num_moe_layers > 0) {
    const uint64_t shared =
        (s.hidden_size + live * s.shared_expert_intermediate_size / tp) * act;
    bytes = std::max(RoutedExpertsBytesPerToken(s, tp, act), shared);
  }
  if (s.num_moe_layers < s.num_layers) {
    bytes = std::max(bytes, live * s.intermediate_size / tp * act);
  }
  return bytes;
}

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

  // Hidden-state copies (replicated on every GPU under TP). A learned
  // position table adds its lookup, which the model's forward keeps.
  const uint64_t copies =
      kResidentHiddenCopies + (s.learned_position_embeddings > 0 ? 1 : 0);
  // Rotary cos and sin tables, one row per position (counted per token: an
  // upper bound for batches, where positions are shared).
  uint64_t rotary = 0;
  if (s.learned_position_embeddings == 0) {
    rotary = 2 * (s.attention_kind == AttentionKind::kMultiLatent
                      ? s.qk_rope_head_dim
                      : s.head_dim);
  }

  // Attention widths of one token on one GPU: q, k, v.
  uint64_t q = 0;
  uint64_t kv = 0;
  if (s.attention_kind == AttentionKind::kMultiLatent) {
    q = heads_per_gpu_ * (s.qk_nope_head_dim + s.qk_rope_head_dim);
    // Decompressed keys (nope + rope) and values differ in width: average.
    kv = heads_per_gpu_ *
         (s.qk_nope_head_dim + s.qk_rope_head_dim + s.v_head_dim) / 2;
  } else {
    q = heads_per_gpu_ * s.head_dim;
    kv = std::max<uint64_t>(1, s.num_kv_heads / tp) * s.head_dim;
  }
  // Projections, rotated q and k, and the attention output; eager attention
  // adds fp32 copies (2 units each) of q and of the keys broadcast to every
  // query head.
  uint64_t attn = 3 * (q + kv);
  if (options.attention == AttentionImpl::kEager) attn += 4 * q;

  // MLP intermediates: gated holds act(gate), up and their product (3);
  // plain the up projection and its activation (2); chained activations
  // more. MoE layers: see MlpBytesPerToken.
  const uint64_t extra = ExtraActivationIntermediates(s.hidden_act);
  const uint64_t live = s.mlp_kind == MlpKind::kGated
                            ? std::max<uint64_t>(3, 2 + extra)
                            : 2 + extra;

  mlp_bytes_per_token_ =
      (copies * h + rotary) * act + MlpBytesPerToken(s, tp, act, live);
  attn_bytes_per_token_ = ((copies - 1) * h + attn + rotary) * act;
  head_bytes_per_token_ = h * act;
  logits_bytes_per_token_ =
      s.vocab_size / tp * std::max<uint32_t>(1, options.logits_bytes);
  score_bytes_ = kEagerScoreBytes;
}

uint64_t ActivationModel::StepPeakBytes(uint64_t step_tokens,
                                        uint64_t logits_tokens,
                                        uint64_t score_elements) const {
  const uint64_t mlp = SaturatingMul(step_tokens, mlp_bytes_per_token_);
  uint64_t attn = SaturatingMul(step_tokens, attn_bytes_per_token_);
  if (options_.attention == AttentionImpl::kEager) {
    attn = SaturatingAdd(attn, SaturatingMul(score_elements, score_bytes_));
  }
  const uint64_t head =
      SaturatingAdd(SaturatingMul(step_tokens, head_bytes_per_token_),
                    SaturatingMul(logits_tokens, logits_bytes_per_token_));
  return std::max({mlp, attn, head});
}

}  // namespace kvgate
