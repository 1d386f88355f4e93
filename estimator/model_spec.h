// ModelSpec: the memory-relevant architecture of a transformer model, read
// from a Hugging Face `config.json`.
//
// Every quantity the estimator needs (parameter counts, KV-cache bytes per
// token, activation shapes) is derived from these fields, never looked up
// from a table of known models. Family differences (norm type, biases, fused
// projections, tied embeddings, MLA, MoE layouts, sliding-window patterns) are
// rows of a family table in model_spec.cc; an unknown `model_type` with the
// standard fields is read as a Llama-like decoder and says so in `notes`.
#ifndef KVGATE_ESTIMATOR_MODEL_SPEC_H_
#define KVGATE_ESTIMATOR_MODEL_SPEC_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "estimator/dtype.h"

namespace kvgate {

// How keys and values are cached.
enum class AttentionKind {
  // Per-head keys and values: MHA, GQA and MQA (num_kv_heads 1..heads).
  kStandard,
  // DeepSeek multi-head latent attention: one compressed latent of
  // kv_lora_rank plus a shared rotary key of qk_rope_head_dim per token.
  kMultiLatent,
};

enum class NormKind {
  kRmsNorm,    // a weight vector
  kLayerNorm,  // a weight and a bias vector
};

enum class MlpKind {
  kGated,  // gate and up projections to intermediate, down back (SwiGLU, GeGLU)
  kPlain,  // up to intermediate, down back (GELU MLP of GPT-2, Falcon, NeoX)
};

// How a family fuses or names its projections, for LoRA targets and display.
enum class ProjectionNaming {
  kSeparate,   // q_proj k_proj v_proj o_proj gate_proj up_proj down_proj
  kFusedPhi3,  // qkv_proj o_proj gate_up_proj down_proj
  kFalcon,     // query_key_value dense dense_h_to_4h dense_4h_to_h
  kGpt2,       // c_attn c_proj c_fc c_proj
  kNeox,       // query_key_value dense dense_h_to_4h dense_4h_to_h
};

struct ModelSpec {
  std::string model_type;    // config's model_type ("llama", ...)
  std::string architecture;  // first of `architectures`, if any
  bool known_family = false;

  uint64_t hidden_size = 0;
  uint64_t num_layers = 0;
  uint64_t vocab_size = 0;
  // Context length the model supports (0 when the config does not say).
  uint64_t max_position_embeddings = 0;

  // Attention.
  AttentionKind attention_kind = AttentionKind::kStandard;
  uint64_t num_attention_heads = 0;
  uint64_t num_kv_heads = 0;  // after MQA/GQA resolution
  uint64_t head_dim = 0;      // per-head q/k/v width (standard attention)
  bool qkv_bias = false;
  bool o_bias = false;
  bool qk_norm = false;  // per-head RMSNorm on q and k (Qwen3, Gemma3)

  // Multi-head latent attention (AttentionKind::kMultiLatent).
  uint64_t q_lora_rank = 0;  // 0: q_proj is a plain projection
  uint64_t kv_lora_rank = 0;
  uint64_t qk_nope_head_dim = 0;
  uint64_t qk_rope_head_dim = 0;
  uint64_t v_head_dim = 0;

  // Feed-forward.
  MlpKind mlp_kind = MlpKind::kGated;
  uint64_t intermediate_size = 0;  // dense layers
  bool mlp_bias = false;
  // MLP activation as the config names it (hidden_act, hidden_activation or
  // activation_function: "silu", "gelu_new", ...); empty when not given.
  // It shapes activation memory, not parameters.
  std::string hidden_act;

  // Mixture of experts (num_experts == 0: dense model).
  uint64_t num_experts = 0;
  uint64_t experts_per_token = 0;
  uint64_t moe_intermediate_size = 0;  // per routed expert
  uint64_t num_moe_layers = 0;         // layers whose MLP is MoE
  // Shared experts, always active, as one MLP of this width (0: none).
  uint64_t shared_expert_intermediate_size = 0;
  bool shared_expert_gate = false;  // sigmoid gate hidden->1 (Qwen2-MoE)
  bool router_score_bias = false;   // per-expert bias (DeepSeek-V3 noaux_tc)

  // Norms and embeddings.
  NormKind norm_kind = NormKind::kRmsNorm;
  uint32_t norms_per_layer = 2;
  bool tie_word_embeddings = false;
  uint64_t learned_position_embeddings = 0;  // rows of a position table
  ProjectionNaming naming = ProjectionNaming::kSeparate;

  // Sliding-window attention: num_sliding_layers of num_layers keep at most
  // sliding_window tokens of KV. 0 layers: full attention everywhere.
  uint64_t sliding_window = 0;
  uint64_t num_sliding_layers = 0;

  // Storage dtype the checkpoint declares (torch_dtype / dtype).
  DType torch_dtype = DType::kBFloat16;
  // Weight quantization from quantization_config, if any.
  std::optional<Quantization> quantization;

  // What the parser assumed or ignored, for the user to read.
  std::vector<std::string> notes;
};

// Parses the text of a config.json. Unknown fields are ignored. A missing
// essential field (hidden size, layers, heads, vocabulary) is InvalidArgument
// naming the field, and so is a size no real model comes near (hidden_size
// 4e9); malformed JSON is InvalidArgument with its position.
// Multimodal configs with a nested `text_config` are read from it.
absl::StatusOr<ModelSpec> ParseModelConfig(absl::string_view json_text);

// Reads and parses a config.json file, or the config.json of a directory (a
// Hugging Face snapshot: models--org--name/snapshots/<revision>/). NotFound
// when the file is missing.
absl::StatusOr<ModelSpec> LoadModelConfig(const std::string& path);

// Built-in presets: config.json texts embedded in the binary, so kvgated runs
// without any file. Names: "llama-3-8b", "llama-2-7b", "mistral-7b",
// "mixtral-8x7b", "qwen2.5-7b", "qwen2.5-0.5b", "gemma-2-9b", "phi-3-mini",
// "falcon-7b", "gpt2", "deepseek-v2-lite".
absl::StatusOr<ModelSpec> LoadPreset(absl::string_view name);
std::vector<std::string> PresetNames();

// Loads `name_or_path` as a preset when it names one, else as a file or a
// snapshot directory (LoadModelConfig). A bare name that is neither is
// NotFound suggesting the nearest preset ("did you mean 'llama-3-8b'?"), as
// LoadPreset does for an unknown preset.
absl::StatusOr<ModelSpec> LoadModel(const std::string& name_or_path);

}  // namespace kvgate

#endif  // KVGATE_ESTIMATOR_MODEL_SPEC_H_
