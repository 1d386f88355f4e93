#include "estimator/model_spec.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "estimator/presets.h"
#include "nlohmann/json.hpp"

namespace kvgate {
namespace {

using Json = nlohmann::json;

// How a family lays out sliding-window layers.
enum class SlidingPattern {
  kAllWhenSet,   // every layer, when `sliding_window` is set (Mistral, Phi-3)
  kQwen2,        // only with use_sliding_window: layers >= max_window_layers
  kAlternating,  // even layers slide, odd layers are global (Gemma 2)
  kEveryNth,     // all but every sliding_window_pattern-th layer (Gemma 3)
};

// How a family lays out mixture-of-experts layers.
enum class MoeStyle {
  kNone,
  kMixtral,  // num_local_experts; every layer; experts of intermediate_size
  kQwenMoe,  // num_experts; decoder_sparse_step, mlp_only_layers; shared expert
  kDeepSeek,  // n_routed_experts; first_k_dense_replace, moe_layer_freq
};

// One row per model family: the facts config.json leaves implicit.
struct Family {
  absl::string_view model_type;
  NormKind norm;
  uint32_t norms_per_layer;
  MlpKind mlp;
  ProjectionNaming naming;
  bool default_tie;
  bool qkv_bias;  // family default; `attention_bias`/`bias` override
  bool o_bias;
  bool mlp_bias;
  bool qk_norm;
  bool learned_positions;
  bool latent_attention;
  SlidingPattern sliding;
  MoeStyle moe;
};

// Sources: the Hugging Face transformers modeling files of each family
// (modeling_<family>.py), which define the modules counted here.
constexpr std::array<Family, 18> kFamilies = {{
    // type         norm  n  mlp  naming  tie   qkvb   ob     mlpb  qkn  pos mla
    // sliding moe
    {"llama", NormKind::kRmsNorm, 2, MlpKind::kGated,
     ProjectionNaming::kSeparate, false, false, false, false, false, false,
     false, SlidingPattern::kAllWhenSet, MoeStyle::kNone},
    {"mistral", NormKind::kRmsNorm, 2, MlpKind::kGated,
     ProjectionNaming::kSeparate, false, false, false, false, false, false,
     false, SlidingPattern::kAllWhenSet, MoeStyle::kNone},
    {"mixtral", NormKind::kRmsNorm, 2, MlpKind::kGated,
     ProjectionNaming::kSeparate, false, false, false, false, false, false,
     false, SlidingPattern::kAllWhenSet, MoeStyle::kMixtral},
    {"qwen2", NormKind::kRmsNorm, 2, MlpKind::kGated,
     ProjectionNaming::kSeparate, false, true, false, false, false, false,
     false, SlidingPattern::kQwen2, MoeStyle::kNone},
    {"qwen2_moe", NormKind::kRmsNorm, 2, MlpKind::kGated,
     ProjectionNaming::kSeparate, false, true, false, false, false, false,
     false, SlidingPattern::kQwen2, MoeStyle::kQwenMoe},
    {"qwen3", NormKind::kRmsNorm, 2, MlpKind::kGated,
     ProjectionNaming::kSeparate, false, false, false, false, true, false,
     false, SlidingPattern::kQwen2, MoeStyle::kNone},
    {"qwen3_moe", NormKind::kRmsNorm, 2, MlpKind::kGated,
     ProjectionNaming::kSeparate, false, false, false, false, true, false,
     false, SlidingPattern::kQwen2, MoeStyle::kQwenMoe},
    {"gemma", NormKind::kRmsNorm, 2, MlpKind::kGated,
     ProjectionNaming::kSeparate, true, false, false, false, false, false,
     false, SlidingPattern::kAllWhenSet, MoeStyle::kNone},
    {"gemma2", NormKind::kRmsNorm, 4, MlpKind::kGated,
     ProjectionNaming::kSeparate, true, false, false, false, false, false,
     false, SlidingPattern::kAlternating, MoeStyle::kNone},
    {"gemma3_text", NormKind::kRmsNorm, 4, MlpKind::kGated,
     ProjectionNaming::kSeparate, true, false, false, false, true, false, false,
     SlidingPattern::kEveryNth, MoeStyle::kNone},
    {"gemma3", NormKind::kRmsNorm, 4, MlpKind::kGated,
     ProjectionNaming::kSeparate, true, false, false, false, true, false, false,
     SlidingPattern::kEveryNth, MoeStyle::kNone},
    {"phi3", NormKind::kRmsNorm, 2, MlpKind::kGated,
     ProjectionNaming::kFusedPhi3, false, false, false, false, false, false,
     false, SlidingPattern::kAllWhenSet, MoeStyle::kNone},
    {"falcon", NormKind::kLayerNorm, 2, MlpKind::kPlain,
     ProjectionNaming::kFalcon, true, false, false, false, false, false, false,
     SlidingPattern::kAllWhenSet, MoeStyle::kNone},
    {"gpt2", NormKind::kLayerNorm, 2, MlpKind::kPlain, ProjectionNaming::kGpt2,
     true, true, true, true, false, true, false, SlidingPattern::kAllWhenSet,
     MoeStyle::kNone},
    {"gpt_neox", NormKind::kLayerNorm, 2, MlpKind::kPlain,
     ProjectionNaming::kNeox, false, true, true, true, false, false, false,
     SlidingPattern::kAllWhenSet, MoeStyle::kNone},
    {"deepseek_v2", NormKind::kRmsNorm, 2, MlpKind::kGated,
     ProjectionNaming::kSeparate, false, false, false, false, false, false,
     true, SlidingPattern::kAllWhenSet, MoeStyle::kDeepSeek},
    {"deepseek_v3", NormKind::kRmsNorm, 2, MlpKind::kGated,
     ProjectionNaming::kSeparate, false, false, false, false, false, false,
     true, SlidingPattern::kAllWhenSet, MoeStyle::kDeepSeek},
    // Read for any unknown model_type with the standard fields.
    {"", NormKind::kRmsNorm, 2, MlpKind::kGated, ProjectionNaming::kSeparate,
     false, false, false, false, false, false, false,
     SlidingPattern::kAllWhenSet, MoeStyle::kNone},
}};

// Values a family's Hugging Face config class supplies when config.json
// omits the field. Gemma 3's multimodal checkpoints ship a sparse
// text_config (google/gemma-3-4b-it names only hidden_size,
// intermediate_size, num_hidden_layers, sliding_window); the rest come from
// transformers' Gemma3TextConfig defaults.
struct FieldDefault {
  absl::string_view model_type;
  absl::string_view field;
  uint64_t value;
};
constexpr std::array<FieldDefault, 7> kFieldDefaults = {{
    {"gemma3_text", "vocab_size", 262208},
    {"gemma3_text", "num_attention_heads", 8},
    {"gemma3_text", "num_key_value_heads", 4},
    {"gemma3_text", "head_dim", 256},
    {"gemma3_text", "max_position_embeddings", 131072},
    {"gemma3_text", "sliding_window", 4096},
    {"gemma3_text", "sliding_window_pattern", 6},
}};

const Family& FindFamily(absl::string_view model_type, bool* known) {
  for (const Family& f : kFamilies) {
    if (!f.model_type.empty() && f.model_type == model_type) {
      *known = true;
      return f;
    }
  }
  *known = false;
  return kFamilies.back();
}

// Reads typed fields of one JSON object; a JSON null counts as absent.
class Fields {
 public:
  explicit Fields(const Json& object) : object_(object) {}

  const Json* Find(absl::string_view name) const {
    auto it = object_.find(std::string(name));
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  bool Has(absl::string_view name) const { return Find(name) != nullptr; }

  // First present field among `names`, as a non-negative integer. Floats
  // with an integral value are accepted ("4096.0").
  absl::StatusOr<std::optional<uint64_t>> Uint(
      std::initializer_list<absl::string_view> names) const {
    for (absl::string_view name : names) {
      const Json* v = Find(name);
      if (v == nullptr) continue;
      if (v->is_number_unsigned()) return v->get<uint64_t>();
      if (v->is_number_integer()) {
        const int64_t i = v->get<int64_t>();
        if (i < 0) return Bad(name, "must not be negative");
        return static_cast<uint64_t>(i);
      }
      if (v->is_number_float()) {
        const double d = v->get<double>();
        if (d >= 0 && d < 1.8e19 && std::floor(d) == d) {
          return static_cast<uint64_t>(d);
        }
      }
      return Bad(name, "must be a non-negative integer");
    }
    return std::optional<uint64_t>();
  }

  absl::StatusOr<uint64_t> RequiredUint(
      std::initializer_list<absl::string_view> names) const {
    absl::StatusOr<std::optional<uint64_t>> v = Uint(names);
    if (!v.ok()) return v.status();
    if (!v->has_value() || **v == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config.json: missing required field '", *names.begin(),
          "' (a positive integer", names.size() > 1 ? "; also accepted: " : "",
          names.size() > 1 ? Others(names) : "", ")"));
    }
    return **v;
  }

  uint64_t UintOr(std::initializer_list<absl::string_view> names,
                  uint64_t fallback, absl::Status* error) const {
    absl::StatusOr<std::optional<uint64_t>> v = Uint(names);
    if (!v.ok()) {
      if (error->ok()) *error = v.status();
      return fallback;
    }
    return v->value_or(fallback);
  }

  bool Bool(absl::string_view name, bool fallback) const {
    const Json* v = Find(name);
    if (v == nullptr || !v->is_boolean()) return fallback;
    return v->get<bool>();
  }

  std::string String(absl::string_view name) const {
    const Json* v = Find(name);
    if (v == nullptr || !v->is_string()) return "";
    return v->get<std::string>();
  }

 private:
  static absl::Status Bad(absl::string_view name, absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: field '", name, "' ", what));
  }
  static std::string Others(std::initializer_list<absl::string_view> names) {
    std::vector<absl::string_view> rest(names.begin() + 1, names.end());
    return absl::StrJoin(rest, ", ");
  }

  const Json& object_;
};

// Sliding-window layer count for the family's pattern.
absl::Status ReadSlidingWindow(const Fields& f, const Family& family,
                               ModelSpec& spec) {
  absl::Status error;
  const uint64_t window = f.UintOr({"sliding_window"}, 0, &error);
  if (!error.ok()) return error;
  // An explicit per-layer list (newer configs) wins over family patterns.
  if (const Json* types = f.Find("layer_types");
      types != nullptr && types->is_array()) {
    uint64_t sliding = 0;
    for (const Json& t : *types) {
      if (t.is_string() && t.get<std::string>() == "sliding_attention") {
        ++sliding;
      }
    }
    if (sliding > 0 && window > 0) {
      spec.sliding_window = window;
      spec.num_sliding_layers = std::min<uint64_t>(sliding, spec.num_layers);
    }
    return absl::OkStatus();
  }
  if (window == 0) return absl::OkStatus();
  const uint64_t layers = spec.num_layers;
  uint64_t sliding = 0;
  switch (family.sliding) {
    case SlidingPattern::kAllWhenSet:
      sliding = f.Bool("use_sliding_window", true) ? layers : 0;
      break;
    case SlidingPattern::kQwen2: {
      if (!f.Bool("use_sliding_window", false)) break;
      const uint64_t first = f.UintOr({"max_window_layers"}, layers, &error);
      sliding = first < layers ? layers - first : 0;
      break;
    }
    case SlidingPattern::kAlternating:
      sliding = (layers + 1) / 2;  // layers 0, 2, 4, ... slide
      break;
    case SlidingPattern::kEveryNth: {
      const uint64_t n = f.UintOr({"sliding_window_pattern"}, 6, &error);
      sliding = n == 0 ? layers : layers - layers / n;
      break;
    }
  }
  if (!error.ok()) return error;
  if (sliding > 0 && window < spec.max_position_embeddings) {
    spec.sliding_window = window;
    spec.num_sliding_layers = sliding;
  } else if (sliding > 0 && spec.max_position_embeddings == 0) {
    spec.sliding_window = window;
    spec.num_sliding_layers = sliding;
  }
  return absl::OkStatus();
}

// Mixtral-style experts: every layer is sparse, experts default to
// intermediate_size. Also read for unknown families that declare experts.
absl::Status ReadMixtralExperts(const Fields& f, ModelSpec& spec) {
  absl::Status error;
  spec.num_experts = f.UintOr(
      {"num_local_experts", "num_experts", "n_routed_experts"}, 0, &error);
  spec.moe_intermediate_size =
      f.UintOr({"moe_intermediate_size"}, spec.intermediate_size, &error);
  spec.num_moe_layers = spec.num_experts > 0 ? spec.num_layers : 0;
  return error;
}

// Layers that `mlp_only_layers` keeps dense (Qwen MoE), indexed by layer.
std::vector<bool> DenseOnlyLayers(const Fields& f, uint64_t layers) {
  std::vector<bool> dense_only(layers, false);
  if (const Json* only = f.Find("mlp_only_layers");
      only != nullptr && only->is_array()) {
    for (const Json& l : *only) {
      if (l.is_number_integer() && l.get<int64_t>() >= 0 &&
          static_cast<uint64_t>(l.get<int64_t>()) < layers) {
        dense_only[l.get<int64_t>()] = true;
      }
    }
  }
  return dense_only;
}

// Qwen MoE experts: every decoder_sparse_step-th layer not in
// mlp_only_layers is sparse; an optional gated shared expert.
absl::Status ReadQwenExperts(const Fields& f, ModelSpec& spec) {
  absl::Status error;
  const uint64_t layers = spec.num_layers;
  spec.num_experts = f.UintOr({"num_experts"}, 0, &error);
  spec.moe_intermediate_size =
      f.UintOr({"moe_intermediate_size"}, spec.intermediate_size, &error);
  spec.shared_expert_intermediate_size =
      f.UintOr({"shared_expert_intermediate_size"}, 0, &error);
  spec.shared_expert_gate = spec.shared_expert_intermediate_size > 0;
  const uint64_t step = f.UintOr({"decoder_sparse_step"}, 1, &error);
  const std::vector<bool> dense_only = DenseOnlyLayers(f, layers);
  for (uint64_t i = 0; i < layers && spec.num_experts > 0; ++i) {
    if (!dense_only[i] && step > 0 && (i + 1) % step == 0) {
      ++spec.num_moe_layers;
    }
  }
  return error;
}

// DeepSeek experts: layers from first_k_dense_replace on, every
// moe_layer_freq-th, are sparse; n_shared_experts shared experts.
absl::Status ReadDeepSeekExperts(const Fields& f, ModelSpec& spec) {
  absl::Status error;
  spec.num_experts = f.UintOr({"n_routed_experts"}, 0, &error);
  spec.moe_intermediate_size = f.UintOr({"moe_intermediate_size"}, 0, &error);
  spec.shared_expert_intermediate_size =
      f.UintOr({"n_shared_experts"}, 0, &error) * spec.moe_intermediate_size;
  const uint64_t first_dense = f.UintOr({"first_k_dense_replace"}, 0, &error);
  const uint64_t freq = f.UintOr({"moe_layer_freq"}, 1, &error);
  for (uint64_t i = first_dense; i < spec.num_layers && spec.num_experts > 0;
       ++i) {
    if (freq > 0 && i % freq == 0) ++spec.num_moe_layers;
  }
  spec.router_score_bias = f.String("topk_method") == "noaux_tc";
  return error;
}

// Experts per token, and the checks every mixture-of-experts model passes.
absl::Status ReadExpertsPerToken(const Fields& f, ModelSpec& spec) {
  absl::Status error;
  spec.experts_per_token = f.UintOr(
      {"num_experts_per_tok", "top_k", "moe_topk", "num_experts_per_token"}, 0,
      &error);
  if (!error.ok()) return error;
  if (spec.experts_per_token == 0 ||
      spec.experts_per_token > spec.num_experts) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: field 'num_experts_per_tok' must be between 1 and the "
        "number of experts (",
        spec.num_experts, ")"));
  }
  if (spec.moe_intermediate_size == 0) {
    return absl::InvalidArgumentError(
        "config.json: missing required field 'moe_intermediate_size' for a "
        "mixture-of-experts model");
  }
  return absl::OkStatus();
}

// Mixture-of-experts layers, in the family's style.
absl::Status ReadMoe(const Fields& f, const Family& family, ModelSpec& spec) {
  absl::Status error;
  switch (family.moe) {
    case MoeStyle::kNone:
      // An unknown family that declares experts is read like Mixtral.
      if (!f.Has("num_local_experts") && !f.Has("num_experts") &&
          !f.Has("n_routed_experts")) {
        return absl::OkStatus();
      }
      [[fallthrough]];
    case MoeStyle::kMixtral:
      error = ReadMixtralExperts(f, spec);
      break;
    case MoeStyle::kQwenMoe:
      error = ReadQwenExperts(f, spec);
      break;
    case MoeStyle::kDeepSeek:
      error = ReadDeepSeekExperts(f, spec);
      break;
  }
  if (!error.ok()) return error;
  if (spec.num_experts > 0) return ReadExpertsPerToken(f, spec);
  return absl::OkStatus();
}

absl::Status ReadLatentAttention(const Fields& f, ModelSpec& spec) {
  absl::Status error;
  spec.attention_kind = AttentionKind::kMultiLatent;
  spec.q_lora_rank = f.UintOr({"q_lora_rank"}, 0, &error);
  spec.kv_lora_rank = f.UintOr({"kv_lora_rank"}, 0, &error);
  spec.qk_nope_head_dim = f.UintOr({"qk_nope_head_dim"}, 0, &error);
  spec.qk_rope_head_dim = f.UintOr({"qk_rope_head_dim"}, 0, &error);
  spec.v_head_dim = f.UintOr({"v_head_dim"}, 0, &error);
  if (!error.ok()) return error;
  for (auto [name, value] :
       {std::pair<const char*, uint64_t>{"kv_lora_rank", spec.kv_lora_rank},
        {"qk_nope_head_dim", spec.qk_nope_head_dim},
        {"qk_rope_head_dim", spec.qk_rope_head_dim},
        {"v_head_dim", spec.v_head_dim}}) {
    if (value == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: missing required field '", name,
                       "' for multi-head latent attention"));
    }
  }
  spec.head_dim = spec.qk_nope_head_dim + spec.qk_rope_head_dim;
  spec.num_kv_heads = spec.num_attention_heads;
  return absl::OkStatus();
}

// Weight quantization from `quantization_config`, for the methods whose
// storage layout is documented: GPTQ and AWQ (packed ints, fp16 scales,
// packed zero points per group), bitsandbytes (NF4 blocks of 64 with an
// absmax each; int8 with a scale per row), fp8 (per-tensor or 128x128 block
// scales) and MXFP4 (blocks of 32 with an 8-bit shared exponent).
void ReadQuantization(const Fields& f, ModelSpec& spec) {
  const Json* qc = f.Find("quantization_config");
  if (qc == nullptr || !qc->is_object()) return;
  const Fields q(*qc);
  const std::string method = absl::AsciiStrToLower(q.String("quant_method"));
  absl::Status ignored;
  Quantization out;
  if (method == "gptq" || method == "awq") {
    const uint64_t bits = q.UintOr({"bits", "w_bit"}, 4, &ignored);
    const uint64_t group =
        q.UintOr({"group_size", "q_group_size"}, 128, &ignored);
    out.dtype = bits <= 4 ? DType::kInt4 : DType::kInt8;
    out.group_size = static_cast<uint32_t>(group);
    out.scale_bits = 16;
    out.zero_point_bits = static_cast<uint32_t>(bits);
    out.method = method == "gptq" ? "gptq" : "awq";
    // group_size -1 (or 0) means one group per output channel.
    if (const Json* g = q.Find("group_size");
        g != nullptr && g->is_number_integer() && g->get<int64_t>() <= 0) {
      out.group_size = 0;
    }
  } else if (method == "bitsandbytes") {
    if (q.Bool("load_in_4bit", false)) {
      out.dtype = DType::kInt4;
      out.group_size = 64;
      // Double quantization stores the absmax in 8 bits (plus a small
      // second-level table); without it the absmax is fp32.
      out.scale_bits = q.Bool("bnb_4bit_use_double_quant", false) ? 8 : 32;
      out.method = "bitsandbytes-nf4";
    } else {
      out.dtype = DType::kInt8;
      out.method = "bitsandbytes-int8";
    }
  } else if (method == "fp8" || method == "fbgemm_fp8") {
    out.dtype = DType::kFp8;
    if (const Json* block = q.Find("weight_block_size");
        block != nullptr && block->is_array() && block->size() == 2 &&
        (*block)[0].is_number_unsigned() && (*block)[1].is_number_unsigned()) {
      out.group_size = static_cast<uint32_t>((*block)[0].get<uint64_t>() *
                                             (*block)[1].get<uint64_t>());
      out.scale_bits = 32;
    }
    out.method = "fp8";
  } else if (method == "mxfp4") {
    out.dtype = DType::kInt4;
    out.group_size = 32;
    out.scale_bits = 8;
    out.method = "mxfp4";
  } else {
    spec.notes.push_back(absl::StrCat(
        "quantization_config.quant_method '", method,
        "' is not modelled; weights counted at their torch_dtype"));
    return;
  }
  spec.quantization = out;
}

// The object holding the language model: `text_config` for multimodal
// wrappers (Gemma 3, Llava, ...), else `root`; notes the unwrapping in spec.
const Json& LanguageModelObject(const Json& root, ModelSpec& spec) {
  if (auto it = root.find("text_config");
      it != root.end() && it->is_object() && !root.contains("hidden_size")) {
    spec.notes.push_back(
        "read the language model from text_config; vision or audio towers "
        "are not counted");
    return *it;
  }
  return root;
}

// `object` with its family's defaults (kFieldDefaults) filled in for omitted
// fields, built in *storage; `object` itself when the family has none.
const Json& WithFieldDefaults(const Json& object, Json* storage) {
  const std::string type = object.is_object() &&
                                   object.contains("model_type") &&
                                   object["model_type"].is_string()
                               ? object["model_type"].get<std::string>()
                               : "";
  for (const FieldDefault& d : kFieldDefaults) {
    if (d.model_type != type) continue;
    const std::string field(d.field);
    if (storage->is_null()) *storage = object;
    if (!storage->contains(field) || (*storage)[field].is_null()) {
      (*storage)[field] = d.value;
    }
  }
  return storage->is_null() ? object : *storage;
}

// model_type and architecture, and the family row they select.
const Family& ReadFamily(const Fields& f, const Fields& top, ModelSpec& spec) {
  spec.model_type = f.String("model_type");
  if (spec.model_type.empty()) spec.model_type = top.String("model_type");
  if (const Json* arch = top.Find("architectures");
      arch != nullptr && arch->is_array() && !arch->empty() &&
      (*arch)[0].is_string()) {
    spec.architecture = (*arch)[0].get<std::string>();
  }
  bool known = false;
  const Family& family = FindFamily(spec.model_type, &known);
  spec.known_family = known;
  if (!known) {
    spec.notes.push_back(absl::StrCat(
        "model_type '", spec.model_type,
        "' is not a known family; read as a Llama-like decoder (RMSNorm, "
        "gated MLP, separate q/k/v/o projections)"));
  }
  return family;
}

// The required sizes (hidden, layers, heads, vocabulary) and the context
// length.
absl::Status ReadDimensions(const Fields& f, ModelSpec& spec) {
  absl::StatusOr<uint64_t> hidden =
      f.RequiredUint({"hidden_size", "n_embd", "d_model", "dim"});
  if (!hidden.ok()) return hidden.status();
  absl::StatusOr<uint64_t> layers = f.RequiredUint(
      {"num_hidden_layers", "n_layer", "num_layers", "n_layers"});
  if (!layers.ok()) return layers.status();
  absl::StatusOr<uint64_t> heads =
      f.RequiredUint({"num_attention_heads", "n_head", "num_heads", "n_heads"});
  if (!heads.ok()) return heads.status();
  absl::StatusOr<uint64_t> vocab = f.RequiredUint({"vocab_size"});
  if (!vocab.ok()) return vocab.status();
  spec.hidden_size = *hidden;
  spec.num_layers = *layers;
  spec.num_attention_heads = *heads;
  spec.vocab_size = *vocab;

  absl::Status error;
  spec.max_position_embeddings =
      f.UintOr({"max_position_embeddings", "n_positions", "max_seq_len",
                "seq_length", "max_sequence_length"},
               0, &error);
  return error;
}

// KV heads and head size, latent attention when present, and the check
// that the KV heads divide the query heads.
absl::Status ReadAttentionHeads(const Fields& f, const Family& family,
                                ModelSpec& spec) {
  absl::Status error;
  // Falcon's `multi_query: true` means one KV head whatever num_kv_heads
  // says, unless the new decoder architecture is on.
  if (family.model_type == "falcon" &&
      !f.Bool("new_decoder_architecture", false)) {
    spec.num_kv_heads =
        f.Bool("multi_query", true) ? 1 : spec.num_attention_heads;
  } else {
    spec.num_kv_heads = f.UintOr({"num_key_value_heads", "num_kv_heads",
                                  "n_head_kv", "multi_query_group_num"},
                                 spec.num_attention_heads, &error);
  }
  spec.head_dim = f.UintOr({"head_dim", "attention_head_dim"}, 0, &error);
  if (!error.ok()) return error;
  if (spec.head_dim == 0) {
    if (spec.hidden_size % spec.num_attention_heads != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: hidden_size ", spec.hidden_size,
                       " is not divisible by num_attention_heads ",
                       spec.num_attention_heads, " and no head_dim is given"));
    }
    spec.head_dim = spec.hidden_size / spec.num_attention_heads;
  }
  if (family.latent_attention || f.Has("kv_lora_rank")) {
    if (absl::Status s = ReadLatentAttention(f, spec); !s.ok()) return s;
  }
  if (spec.num_kv_heads == 0 || spec.num_kv_heads > spec.num_attention_heads ||
      spec.num_attention_heads % spec.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: num_key_value_heads ", spec.num_kv_heads,
        " must divide num_attention_heads ", spec.num_attention_heads));
  }
  return absl::OkStatus();
}

// Biases and q/k norms: `attention_bias` (Llama, Qwen3, NeoX), `bias`
// (Falcon) and `mlp_bias` override the family's defaults.
void ReadBiases(const Fields& f, const Family& family, ModelSpec& spec) {
  spec.qkv_bias = family.qkv_bias;
  spec.o_bias = family.o_bias;
  spec.mlp_bias = family.mlp_bias;
  if (f.Has("attention_bias")) {
    spec.qkv_bias = spec.o_bias = f.Bool("attention_bias", false);
  }
  if (family.model_type == "falcon") {
    spec.qkv_bias = spec.o_bias = spec.mlp_bias = f.Bool("bias", false);
  }
  if (f.Has("mlp_bias")) spec.mlp_bias = f.Bool("mlp_bias", false);
  spec.qk_norm = family.qk_norm;
}

// Feed-forward kind, width and activation. GPT-2's n_inner and Falcon's
// default are 4 x hidden.
absl::Status ReadFeedForward(const Fields& f, const Family& family,
                             ModelSpec& spec) {
  absl::Status error;
  spec.mlp_kind = family.mlp;
  spec.intermediate_size =
      f.UintOr({"intermediate_size", "n_inner", "ffn_hidden_size", "ffn_dim"},
               0, &error);
  if (!error.ok()) return error;
  if (spec.intermediate_size == 0) {
    if (family.mlp == MlpKind::kPlain) {
      spec.intermediate_size = 4 * spec.hidden_size;
    } else {
      return absl::InvalidArgumentError(
          "config.json: missing required field 'intermediate_size' (a "
          "positive integer; also accepted: n_inner, ffn_hidden_size)");
    }
  }
  spec.hidden_act = f.String("hidden_act");
  if (spec.hidden_act.empty()) spec.hidden_act = f.String("hidden_activation");
  if (spec.hidden_act.empty()) {
    spec.hidden_act = f.String("activation_function");
  }
  return absl::OkStatus();
}

// Norms per layer, projection naming, tied and learned-position embeddings.
// The caller reports a bad num_ln_in_parallel_attn only after the MoE,
// sliding-window and dtype fields, as ParseObject always has.
absl::Status ReadLayout(const Fields& f, const Fields& top,
                        const Family& family, ModelSpec& spec) {
  absl::Status error;
  spec.norm_kind = family.norm;
  spec.norms_per_layer = family.norms_per_layer;
  if (family.model_type == "falcon") {
    // Falcon: the new architecture has num_ln_in_parallel_attn norms (2 by
    // default); the old one, one norm with parallel attention, else two.
    if (f.Bool("new_decoder_architecture", false)) {
      spec.norms_per_layer = static_cast<uint32_t>(
          f.UintOr({"num_ln_in_parallel_attn"}, 2, &error));
    } else {
      spec.norms_per_layer = f.Bool("parallel_attn", true) ? 1 : 2;
    }
  }
  spec.naming = family.naming;
  spec.tie_word_embeddings =
      f.Bool("tie_word_embeddings",
             top.Bool("tie_word_embeddings", family.default_tie));
  if (family.learned_positions) {
    spec.learned_position_embeddings = spec.max_position_embeddings;
  }
  return error;
}

// The weights' torch_dtype; bf16, with a note, when absent or unknown.
void ReadDtype(const Fields& f, const Fields& top, ModelSpec& spec) {
  std::string dtype = f.String("torch_dtype");
  if (dtype.empty()) dtype = f.String("dtype");
  if (dtype.empty()) dtype = top.String("torch_dtype");
  if (dtype.empty()) {
    spec.torch_dtype = DType::kBFloat16;
    spec.notes.push_back("no torch_dtype in the config; assumed bf16");
  } else if (absl::StatusOr<DType> d = ParseDType(dtype); d.ok()) {
    spec.torch_dtype = *d;
  } else {
    spec.torch_dtype = DType::kBFloat16;
    spec.notes.push_back(
        absl::StrCat("torch_dtype '", dtype, "' not recognised; assumed bf16"));
  }
}

// Sizes no real checkpoint comes near: a config beyond them is a typo or a
// corrupted file, and its figures would overflow or mislead. The largest
// published dense models stay far below (PaLM-540B: hidden 18432,
// intermediate 73728, 118 layers; Llama-3.1-405B: 126 layers; Gemma: 256k
// vocabulary; DeepSeek-V3: 256 routed experts).
struct PlausibleSize {
  const char* field;
  uint64_t ModelSpec::*member;
  uint64_t max;
};
constexpr PlausibleSize kPlausibleSizes[] = {
    {"hidden_size", &ModelSpec::hidden_size, uint64_t{1} << 17},
    {"num_hidden_layers", &ModelSpec::num_layers, uint64_t{1} << 12},
    {"num_attention_heads", &ModelSpec::num_attention_heads, uint64_t{1} << 14},
    {"num_key_value_heads", &ModelSpec::num_kv_heads, uint64_t{1} << 14},
    {"head_dim", &ModelSpec::head_dim, uint64_t{1} << 14},
    {"vocab_size", &ModelSpec::vocab_size, uint64_t{1} << 23},
    {"intermediate_size", &ModelSpec::intermediate_size, uint64_t{1} << 20},
    {"moe_intermediate_size", &ModelSpec::moe_intermediate_size,
     uint64_t{1} << 20},
    {"num_experts", &ModelSpec::num_experts, uint64_t{1} << 16},
};

// InvalidArgument naming the first size of `spec` beyond kPlausibleSizes.
absl::Status CheckPlausibleSizes(const ModelSpec& spec) {
  for (const PlausibleSize& row : kPlausibleSizes) {
    const uint64_t value = spec.*row.member;
    if (value > row.max) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config.json: ", row.field, " ", value,
          " is not a plausible model size (at most ", row.max, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelSpec> ParseObject(const Json& root) {
  ModelSpec spec;
  Json with_defaults;
  const Fields f(
      WithFieldDefaults(LanguageModelObject(root, spec), &with_defaults));
  const Fields top(root);
  const Family& family = ReadFamily(f, top, spec);
  if (absl::Status s = ReadDimensions(f, spec); !s.ok()) return s;
  // Checked before anything derived from the sizes, then with all of them.
  if (absl::Status s = CheckPlausibleSizes(spec); !s.ok()) return s;
  if (absl::Status s = ReadAttentionHeads(f, family, spec); !s.ok()) return s;
  ReadBiases(f, family, spec);
  if (absl::Status s = ReadFeedForward(f, family, spec); !s.ok()) return s;
  const absl::Status layout_error = ReadLayout(f, top, family, spec);
  if (absl::Status s = ReadMoe(f, family, spec); !s.ok()) return s;
  if (absl::Status s = CheckPlausibleSizes(spec); !s.ok()) return s;
  if (absl::Status s = ReadSlidingWindow(f, family, spec); !s.ok()) return s;
  ReadDtype(f, top, spec);
  ReadQuantization(top.Has("quantization_config") ? top : f, spec);
  if (!layout_error.ok()) return layout_error;
  return spec;
}

}  // namespace

absl::StatusOr<ModelSpec> ParseModelConfig(absl::string_view json_text) {
  Json root = Json::parse(json_text.begin(), json_text.end(),
                          /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    // Re-parse with a SAX sink that only records the error position.
    struct Locator : nlohmann::json_sax<Json> {
      size_t position = 0;
      std::string what;
      bool null() override { return true; }
      bool boolean(bool) override { return true; }
      bool number_integer(number_integer_t) override { return true; }
      bool number_unsigned(number_unsigned_t) override { return true; }
      bool number_float(number_float_t, const string_t&) override {
        return true;
      }
      bool string(string_t&) override { return true; }
      bool binary(binary_t&) override { return true; }
      bool start_object(std::size_t) override { return true; }
      bool key(string_t&) override { return true; }
      bool end_object() override { return true; }
      bool start_array(std::size_t) override { return true; }
      bool end_array() override { return true; }
      bool parse_error(std::size_t pos, const std::string&,
                       const nlohmann::detail::exception& e) override {
        position = pos;
        what = e.what();
        return false;
      }
    } locator;
    Json::sax_parse(json_text.begin(), json_text.end(), &locator,
                    nlohmann::detail::input_format_t::json, /*strict=*/true);
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json is not valid JSON (byte ", locator.position, ")"));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        "config.json must hold a JSON object at the top level");
  }
  return ParseObject(root);
}

absl::StatusOr<ModelSpec> LoadModelConfig(const std::string& given) {
  // A Hugging Face snapshot directory: its config.json.
  std::error_code error;
  const std::string path =
      std::filesystem::is_directory(given, error)
          ? (std::filesystem::path(given) / "config.json").string()
          : given;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot read model config '", path, "'"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat("error reading '", path, "'"));
  }
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(text.str());
  if (!spec.ok()) {
    return absl::Status(spec.status().code(),
                        absl::StrCat(path, ": ", spec.status().message()));
  }
  return spec;
}

namespace {

// Levenshtein distance between `a` and `b`, ignoring case.
size_t EditDistance(absl::string_view a, absl::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      const bool same =
          absl::ascii_tolower(a[i - 1]) == absl::ascii_tolower(b[j - 1]);
      row[j] =
          std::min({row[j] + 1, row[j - 1] + 1, diagonal + (same ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// "; did you mean 'P'?" for the preset P nearest `name` by edit distance,
// when it is within a third of the longer name; "" otherwise.
std::string DidYouMean(absl::string_view name) {
  std::string best;
  size_t best_distance = SIZE_MAX;
  for (const std::string& preset : PresetNames()) {
    const size_t d = EditDistance(name, preset);
    if (d < best_distance) {
      best_distance = d;
      best = preset;
    }
  }
  const size_t longer = std::max(name.size(), best.size());
  if (best.empty() || best_distance * 3 > longer) return "";
  return absl::StrCat(" (did you mean '", best, "'?)");
}

}  // namespace

absl::StatusOr<ModelSpec> LoadPreset(absl::string_view name) {
  for (const PresetConfig& preset : BuiltinPresets()) {
    if (preset.name == name) return ParseModelConfig(preset.config_json);
  }
  return absl::NotFoundError(
      absl::StrCat("unknown preset '", name, "'", DidYouMean(name),
                   "; presets: ", absl::StrJoin(PresetNames(), ", ")));
}

std::vector<std::string> PresetNames() {
  std::vector<std::string> names;
  for (const PresetConfig& preset : BuiltinPresets()) {
    names.emplace_back(preset.name);
  }
  return names;
}

absl::StatusOr<ModelSpec> LoadModel(const std::string& name_or_path) {
  for (const PresetConfig& preset : BuiltinPresets()) {
    if (preset.name == name_or_path) return LoadPreset(name_or_path);
  }
  absl::StatusOr<ModelSpec> spec = LoadModelConfig(name_or_path);
  // A bare name that is no file: most likely a mistyped preset.
  if (absl::IsNotFound(spec.status()) &&
      name_or_path.find('/') == std::string::npos &&
      !absl::EndsWith(name_or_path, ".json")) {
    return absl::NotFoundError(absl::StrCat(
        "'", name_or_path, "' is neither a preset nor a config.json file",
        DidYouMean(name_or_path),
        "; presets: ", absl::StrJoin(PresetNames(), ", ")));
  }
  return spec;
}

}  // namespace kvgate
