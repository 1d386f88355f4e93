#include "estimator/parameters.h"

#include <utility>

namespace kvgate {
namespace {

void Add(std::vector<LinearModule>& out, std::string name, uint64_t in,
         uint64_t out_features, bool bias, uint64_t count,
         uint64_t active_count, bool routed = false) {
  if (count == 0) return;
  out.push_back(
      {std::move(name), in, out_features, bias, count, active_count, routed});
}

void AddAttention(const ModelSpec& s, std::vector<LinearModule>& out) {
  const uint64_t h = s.hidden_size;
  const uint64_t l = s.num_layers;
  if (s.attention_kind == AttentionKind::kMultiLatent) {
    const uint64_t q_width =
        s.num_attention_heads * (s.qk_nope_head_dim + s.qk_rope_head_dim);
    if (s.q_lora_rank == 0) {
      Add(out, "q_proj", h, q_width, false, l, l);
    } else {
      Add(out, "q_a_proj", h, s.q_lora_rank, s.qkv_bias, l, l);
      Add(out, "q_b_proj", s.q_lora_rank, q_width, false, l, l);
    }
    Add(out, "kv_a_proj_with_mqa", h, s.kv_lora_rank + s.qk_rope_head_dim,
        s.qkv_bias, l, l);
    Add(out, "kv_b_proj", s.kv_lora_rank,
        s.num_attention_heads * (s.qk_nope_head_dim + s.v_head_dim), false, l,
        l);
    Add(out, "o_proj", s.num_attention_heads * s.v_head_dim, h, s.o_bias, l, l);
    return;
  }
  const uint64_t q = s.num_attention_heads * s.head_dim;
  const uint64_t kv = s.num_kv_heads * s.head_dim;
  switch (s.naming) {
    case ProjectionNaming::kSeparate:
      Add(out, "q_proj", h, q, s.qkv_bias, l, l);
      Add(out, "k_proj", h, kv, s.qkv_bias, l, l);
      Add(out, "v_proj", h, kv, s.qkv_bias, l, l);
      Add(out, "o_proj", q, h, s.o_bias, l, l);
      break;
    case ProjectionNaming::kFusedPhi3:
      Add(out, "qkv_proj", h, q + 2 * kv, s.qkv_bias, l, l);
      Add(out, "o_proj", q, h, s.o_bias, l, l);
      break;
    case ProjectionNaming::kFalcon:
    case ProjectionNaming::kNeox:
      Add(out, "query_key_value", h, q + 2 * kv, s.qkv_bias, l, l);
      Add(out, "dense", q, h, s.o_bias, l, l);
      break;
    case ProjectionNaming::kGpt2:
      Add(out, "c_attn", h, q + 2 * kv, s.qkv_bias, l, l);
      Add(out, "c_proj", q, h, s.o_bias, l, l);
      break;
  }
}

// One gated or plain MLP of width `width`, `count` instances of which
// `active` are on a token's path.
void AddMlp(const ModelSpec& s, std::vector<LinearModule>& out,
            const std::string& prefix, uint64_t width, uint64_t count,
            uint64_t active, bool routed) {
  const uint64_t h = s.hidden_size;
  const bool b = s.mlp_bias;
  if (s.mlp_kind == MlpKind::kGated) {
    if (s.naming == ProjectionNaming::kFusedPhi3) {
      Add(out, prefix + "gate_up_proj", h, 2 * width, b, count, active, routed);
    } else {
      Add(out, prefix + "gate_proj", h, width, b, count, active, routed);
      Add(out, prefix + "up_proj", h, width, b, count, active, routed);
    }
    Add(out, prefix + "down_proj", width, h, b, count, active, routed);
    return;
  }
  switch (s.naming) {
    case ProjectionNaming::kGpt2:
      Add(out, prefix + "c_fc", h, width, b, count, active, routed);
      Add(out, prefix + "c_proj", width, h, b, count, active, routed);
      break;
    default:
      Add(out, prefix + "dense_h_to_4h", h, width, b, count, active, routed);
      Add(out, prefix + "dense_4h_to_h", width, h, b, count, active, routed);
      break;
  }
}

}  // namespace

std::vector<LinearModule> LinearModules(const ModelSpec& s) {
  std::vector<LinearModule> out;
  AddAttention(s, out);
  const uint64_t dense_layers = s.num_layers - s.num_moe_layers;
  AddMlp(s, out, "", s.intermediate_size, dense_layers, dense_layers, false);
  if (s.num_moe_layers > 0) {
    AddMlp(s, out, "experts.", s.moe_intermediate_size,
           s.num_moe_layers * s.num_experts,
           s.num_moe_layers * s.experts_per_token, /*routed=*/true);
    AddMlp(s, out, "shared_experts.", s.shared_expert_intermediate_size,
           s.shared_expert_intermediate_size > 0 ? s.num_moe_layers : 0,
           s.num_moe_layers, false);
  }
  return out;
}

ParameterCounts CountParameters(const ModelSpec& s) {
  ParameterCounts c;
  const uint64_t h = s.hidden_size;
  c.embedding = s.vocab_size * h + s.learned_position_embeddings * h;
  c.lm_head = s.tie_word_embeddings ? 0 : s.vocab_size * h;

  uint64_t biases = 0;
  uint64_t biases_active = 0;
  for (const LinearModule& m : LinearModules(s)) {
    c.linear += m.in_features * m.out_features * m.count;
    c.linear_active += m.in_features * m.out_features * m.active_count;
    if (m.bias) {
      biases += m.out_features * m.count;
      biases_active += m.out_features * m.active_count;
    }
  }

  // Norms: a LayerNorm has a weight and a bias, an RMSNorm a weight.
  const uint64_t per_norm = s.norm_kind == NormKind::kLayerNorm ? 2 : 1;
  uint64_t norms = (s.num_layers * s.norms_per_layer + 1) * h * per_norm;
  if (s.qk_norm) norms += s.num_layers * 2 * s.head_dim;
  if (s.attention_kind == AttentionKind::kMultiLatent) {
    norms += s.num_layers * (s.kv_lora_rank + s.q_lora_rank);
  }
  // Routers: a hidden -> experts projection per MoE layer, plus the
  // per-expert score bias and the shared expert's sigmoid gate.
  uint64_t routing = s.num_moe_layers * s.num_experts * h;
  if (s.router_score_bias) routing += s.num_moe_layers * s.num_experts;
  if (s.shared_expert_gate) routing += s.num_moe_layers * h;

  c.other = norms + routing + biases;
  const uint64_t other_active = norms + routing + biases_active;
  c.total = c.embedding + c.lm_head + c.linear + c.other;
  c.active = c.embedding + c.lm_head + c.linear_active + other_active;
  return c;
}

}  // namespace kvgate
