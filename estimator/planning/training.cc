#include "estimator/planning/training.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "estimator/dtype.h"
#include "estimator/parameters.h"
#include "estimator/weights.h"

// EstimateTraining adds up, section by section below: weights (the base and
// LoRA adapters), gradients, optimizer state and its step's temporaries,
// activations, their split across GPUs (tensor, pipeline and data
// parallelism, ZeRO), and the two peak moments; GpusToFit searches the
// parallel layouts, and the Compute section is the 6ND pretraining estimate.

namespace kvgate {
namespace {

// --- Calibrated constants (tests/data/calibration/train-peaks.json, H100,
// torch 2.11; docs/calibration/training.md). ---

// Memory the runtime holds besides the model: cuBLAS/cuBLASLt workspaces
// (allocated through PyTorch's caching allocator), the input ids and
// labels, optimizer step counters. Measured as steady_bytes minus weights
// and optimizer state: 69-86 MB over every calibration row.
constexpr uint64_t kRuntimeWorkspaceBytes = 80'000'000;

// fp32 copies of the logits alive at the loss's peak, per token and vocab
// entry: the log-softmax output saved for backward, its incoming gradient
// and the gradient it produces (the 16-bit logits themselves are not held).
constexpr uint64_t kLogitsFp32Copies = 3;

// LoRA adapters are created in fp32 (peft's autocast_adapter_dtype), so
// their weights, gradients and optimizer state are 4-byte.
constexpr uint64_t kAdapterBytes = 4;

constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

// Checked arithmetic with a sticky overflow flag, so a formula reads as one
// expression and the caller checks once.
class Checked {
 public:
  uint64_t Mul(uint64_t a, uint64_t b) {
    uint64_t r = 0;
    if (__builtin_mul_overflow(a, b, &r)) {
      overflow_ = true;
      return kMax;
    }
    return r;
  }
  uint64_t Add(uint64_t a, uint64_t b) {
    uint64_t r = 0;
    if (__builtin_add_overflow(a, b, &r)) {
      overflow_ = true;
      return kMax;
    }
    return r;
  }
  bool overflow() const { return overflow_; }

 private:
  bool overflow_ = false;
};

uint64_t CeilDiv(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

// ---------------------------------------------------------------- Names ---

template <typename E>
struct NamedValue {
  absl::string_view name;
  E value;
};

constexpr std::array<NamedValue<Precision>, 5> kPrecisions = {{
    {"fp32", Precision::kFp32},
    {"bf16", Precision::kBf16},
    {"fp16", Precision::kFp16},
    {"amp-bf16", Precision::kAmpBf16},
    {"amp-fp16", Precision::kAmpFp16},
}};
constexpr std::array<NamedValue<Optimizer>, 4> kOptimizers = {{
    {"adamw", Optimizer::kAdamW},
    {"adamw-8bit", Optimizer::kAdamW8bit},
    {"sgd-momentum", Optimizer::kSgdMomentum},
    {"adafactor", Optimizer::kAdafactor},
}};
constexpr std::array<NamedValue<Recompute>, 3> kRecomputes = {{
    {"none", Recompute::kNone},
    {"selective", Recompute::kSelective},
    {"full", Recompute::kFull},
}};

template <typename E, size_t N>
absl::StatusOr<E> ParseNamed(const std::array<NamedValue<E>, N>& table,
                             absl::string_view what, absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  std::vector<absl::string_view> names;
  for (const auto& row : table) {
    if (row.name == lower) return row.value;
    names.push_back(row.name);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown ", what, " '", name,
                                                 "'; expected ",
                                                 absl::StrJoin(names, ", ")));
}

template <typename E, size_t N>
absl::string_view NameOf(const std::array<NamedValue<E>, N>& table, E value) {
  for (const auto& row : table) {
    if (row.value == value) return row.name;
  }
  return "?";
}

}  // namespace

absl::StatusOr<Precision> ParsePrecision(absl::string_view name) {
  return ParseNamed(kPrecisions, "precision", name);
}
absl::StatusOr<Optimizer> ParseOptimizer(absl::string_view name) {
  return ParseNamed(kOptimizers, "optimizer", name);
}
absl::StatusOr<Recompute> ParseRecompute(absl::string_view name) {
  return ParseNamed(kRecomputes, "recompute mode", name);
}
absl::string_view PrecisionName(Precision p) { return NameOf(kPrecisions, p); }
absl::string_view OptimizerName(Optimizer o) { return NameOf(kOptimizers, o); }
absl::string_view RecomputeName(Recompute r) { return NameOf(kRecomputes, r); }

namespace {

// -------------------------------------------------------------- Options ---

absl::Status Validate(const ModelSpec& spec, const TrainingOptions& o) {
  struct Size {
    const char* name;
    uint64_t value;
  };
  for (const Size& size : {Size{"micro_batch_size", o.micro_batch_size},
                           Size{"sequence_length", o.sequence_length},
                           Size{"data_parallel", o.data_parallel},
                           Size{"tensor_parallel", o.tensor_parallel},
                           Size{"pipeline_parallel", o.pipeline_parallel}}) {
    if (size.value == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(size.name, " must be at least 1"));
    }
  }
  if (o.zero_stage > 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "zero_stage ", o.zero_stage, " is not a ZeRO stage (0, 1, 2 or 3)"));
  }
  if (o.qlora && o.lora_rank == 0) {
    return absl::InvalidArgumentError("qlora needs a lora_rank of at least 1");
  }
  if (o.lora_rank > 0 && o.lora_targets.empty()) {
    return absl::InvalidArgumentError("lora_targets is empty");
  }
  if (o.pipeline_parallel > spec.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline_parallel ", o.pipeline_parallel, " exceeds the ",
                     spec.num_layers, " layers"));
  }
  return absl::OkStatus();
}

bool IsAmp(Precision p) {
  return p == Precision::kAmpBf16 || p == Precision::kAmpFp16;
}

// Bytes of one element of: weights as stored, activations of the matmuls,
// the residual stream (fp32 under amp: autocast leaves adds and norms fp32).
uint64_t WeightElementBytes(Precision p) {
  return p == Precision::kBf16 || p == Precision::kFp16 ? 2 : 4;
}
uint64_t ComputeElementBytes(Precision p) {
  return p == Precision::kFp32 ? 4 : 2;
}
uint64_t ResidualElementBytes(Precision p) {
  return p == Precision::kFp32 || IsAmp(p) ? 4 : 2;
}

// -------------------------------------------------------------- Weights ---

bool MatchesTarget(const std::string& module, const std::string& target) {
  return module == target || absl::EndsWith(module, absl::StrCat(".", target));
}

// The LoRA adapters of a run: which linear modules carry one, and their
// parameters, r (in + out) per instance.
struct Adapters {
  std::vector<bool> targeted;  // by index in LinearModules(spec)
  uint64_t parameters = 0;
};

// The error for a LoRA target that matches none of `modules`: it lists their
// distinct names.
absl::Status NoModuleMatches(const ModelSpec& spec,
                             const std::vector<LinearModule>& modules,
                             const std::string& target) {
  std::vector<std::string> names;
  for (const LinearModule& m : modules) {
    if (std::find(names.begin(), names.end(), m.name) == names.end()) {
      names.push_back(m.name);
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "LoRA target '", target, "' matches no module of this ", spec.model_type,
      " model; its linear modules are ", absl::StrJoin(names, ", ")));
}

// Marks the modules o.lora_targets name (none without LoRA) and counts their
// adapters' parameters; an error when a target matches no module.
absl::StatusOr<Adapters> CountAdapters(const ModelSpec& spec,
                                       const TrainingOptions& o,
                                       const std::vector<LinearModule>& modules,
                                       Checked& c) {
  Adapters out;
  out.targeted.assign(modules.size(), false);
  if (o.lora_rank == 0) return out;
  for (const std::string& target : o.lora_targets) {
    bool matched = false;
    for (size_t i = 0; i < modules.size(); ++i) {
      if (!MatchesTarget(modules[i].name, target)) continue;
      matched = true;
      if (out.targeted[i]) continue;
      out.targeted[i] = true;
      const LinearModule& m = modules[i];
      out.parameters = c.Add(
          out.parameters,
          c.Mul(c.Mul(o.lora_rank, m.in_features + m.out_features), m.count));
    }
    if (!matched) return NoModuleMatches(spec, modules, target);
  }
  return out;
}

// Weights of the whole model: the base as stored (4-bit NF4 under QLoRA,
// else the precision's weight dtype) and the fp32 adapters.
uint64_t WeightBytes(const ModelSpec& spec, const ParameterCounts& counts,
                     const TrainingOptions& o, uint64_t adapters, Checked& c) {
  uint64_t weights = 0;
  if (o.qlora) {
    Quantization nf4;
    nf4.dtype = DType::kInt4;
    nf4.group_size = 64;
    nf4.scale_bits = 8;  // double-quantized absmax
    nf4.method = "bitsandbytes-nf4";
    weights = TotalWeightBytes(spec, counts, nf4);
  } else {
    weights = c.Mul(counts.total, WeightElementBytes(o.precision));
  }
  return c.Add(weights, c.Mul(adapters, kAdapterBytes));
}

// ------------------------------------------------------------ Gradients ---

// Trainable tensors' element size for gradients and optimizer state: the
// adapters' fp32 under LoRA, else the weights'.
uint64_t TrainableElementBytes(const TrainingOptions& o) {
  return o.lora_rank > 0 ? kAdapterBytes : WeightElementBytes(o.precision);
}

// Gradients of the whole model: one per trainable parameter.
uint64_t GradientBytes(uint64_t trainable, const TrainingOptions& o,
                       Checked& c) {
  return c.Mul(trainable, TrainableElementBytes(o));
}

// ------------------------------------------------------------ Optimizer ---

// Optimizer state bytes for `trainable` parameters with state element size
// `s`; Adafactor needs the factored shape (`factored_elements`).
uint64_t OptimizerStateBytes(Optimizer opt, uint64_t trainable, uint64_t s,
                             uint64_t factored_elements, Checked& c) {
  switch (opt) {
    case Optimizer::kAdamW:
      return c.Mul(trainable, 2 * s);
    case Optimizer::kAdamW8bit:
      return c.Mul(trainable, 2);
    case Optimizer::kSgdMomentum:
      return c.Mul(trainable, s);
    case Optimizer::kAdafactor:
      return c.Mul(factored_elements, s);
  }
  return 0;
}

// The shape of the trainable tensors that Adafactor's state and step depend
// on.
struct TrainableShape {
  // Adafactor keeps a row and a column vector per matrix, an entry per
  // vector element.
  uint64_t factored = 0;
  uint64_t largest_tensor = 0;  // elements
};

TrainableShape ShapeOfTrainable(const ModelSpec& spec,
                                const ParameterCounts& counts,
                                const TrainingOptions& o,
                                const std::vector<LinearModule>& modules,
                                const std::vector<bool>& targeted) {
  TrainableShape out;
  if (o.lora_rank > 0) {
    for (size_t i = 0; i < modules.size(); ++i) {
      if (!targeted[i]) continue;
      out.factored +=
          modules[i].count * (o.lora_rank + modules[i].in_features +
                              o.lora_rank + modules[i].out_features);
      out.largest_tensor = std::max(
          out.largest_tensor, o.lora_rank * std::max(modules[i].in_features,
                                                     modules[i].out_features));
    }
  } else {
    for (const LinearModule& m : modules) {
      out.factored += m.count * (m.in_features + m.out_features);
      out.largest_tensor =
          std::max(out.largest_tensor, m.in_features * m.out_features);
    }
    const uint64_t matrices = (counts.lm_head > 0 ? 2 : 1);
    out.factored +=
        matrices * (spec.vocab_size + spec.hidden_size) + counts.other;
    out.largest_tensor =
        std::max(out.largest_tensor, spec.vocab_size * spec.hidden_size);
  }
  return out;
}

// Temporaries of the optimizer step, for `trainable` parameters with state
// element size `s`.
uint64_t OptimizerStepTempBytes(Optimizer opt, uint64_t trainable, uint64_t s,
                                uint64_t largest_tensor, Checked& c) {
  switch (opt) {
    case Optimizer::kAdamW:
      // torch.optim.AdamW (foreach): _foreach_sqrt(exp_avg_sq) allocates
      // one state-dtype copy of every trainable tensor at once.
      return c.Mul(trainable, s);
    case Optimizer::kAdafactor:
      // Parameter by parameter: grad^2 and the update, fp32, of the largest.
      return c.Mul(largest_tensor, 8);
    default:
      // 8-bit Adam updates in its fused kernel; SGD momentum in place.
      return 0;
  }
}

// ---------------------------------------------------------- Activations ---

// Where a linear layer's input comes from, which decides how autograd saves
// it. Norm-fed inputs are cast by autocast once per consumer (autocast does
// not cache activation casts); internal ones are already 16-bit.
enum class InputRole {
  kAttentionIn,
  kAttentionInternal,
  kAttentionOut,
  kMlpIn,
  kMlpOut
};

InputRole RoleOf(const ModelSpec& s, const LinearModule& m) {
  absl::string_view name = m.name;
  if (const size_t dot = name.rfind('.'); dot != absl::string_view::npos) {
    name = name.substr(dot + 1);
  }
  static constexpr absl::string_view kAttnIn[] = {
      "q_proj",          "k_proj", "v_proj",   "qkv_proj",
      "query_key_value", "c_attn", "q_a_proj", "kv_a_proj_with_mqa"};
  for (absl::string_view n : kAttnIn) {
    if (name == n) return InputRole::kAttentionIn;
  }
  if (name == "q_b_proj" || name == "kv_b_proj") {
    return InputRole::kAttentionInternal;
  }
  if (name == "o_proj" || name == "dense") return InputRole::kAttentionOut;
  if (name == "c_proj") {
    // GPT-2 has two: the attention's (in = hidden) and the MLP's.
    return m.in_features == s.num_attention_heads * s.head_dim &&
                   m.in_features != s.intermediate_size
               ? InputRole::kAttentionOut
               : InputRole::kMlpOut;
  }
  if (name == "down_proj" || name == "dense_4h_to_h") return InputRole::kMlpOut;
  return InputRole::kMlpIn;
}

// GPT-2 configs train with dropout 0.1 on embeddings, attention and
// residuals (resid_pdrop, attn_pdrop, embd_pdrop); the Llama-style families
// default to none.
bool TrainsWithDropout(const ModelSpec& s) {
  return s.naming == ProjectionNaming::kGpt2;
}

// Everything about one decoder layer's saved activations, per token.
struct LayerActivations {
  uint64_t per_token = 0;        // saved bytes per token (this GPU)
  uint64_t score_bytes = 0;      // bytes per (head x query x key) element
  uint64_t input_per_token = 0;  // the layer input kept under checkpointing
  uint64_t linear_params = 0;    // matmul weights in one layer (this GPU)
};

// Norms, per token, replicated across tensor-parallel ranks (r: residual
// element bytes). RMSNorm (Hugging Face): upcasts its input to fp32 (kept by
// pow) and keeps the normalised tensor in the input dtype for the weight
// multiply: (4 + r) h. LayerNorm's fused kernel keeps its input: r h.
uint64_t NormBytes(const ModelSpec& s, uint64_t r, uint64_t t) {
  const uint64_t h = s.hidden_size;
  const uint64_t per_norm = s.norm_kind == NormKind::kRmsNorm ? 4 + r : r;
  uint64_t replicated = s.norms_per_layer * per_norm * h;
  if (s.qk_norm) {
    replicated +=
        per_norm * (s.num_attention_heads + s.num_kv_heads) * s.head_dim / t;
  }
  return replicated;
}

// The inputs the linear layers of one layer keep, per token.
struct LinearInputs {
  double norm_fed_bytes = 0;   // replicated across tensor-parallel ranks
  double internal_bytes = 0;   // split across them
  uint64_t linear_params = 0;  // matmul weights in one layer (this GPU)
};

// Linear inputs, module by module (instances per layer: MoE experts count
// by the share of a token's path they are on).
LinearInputs CountLinearInputs(const ModelSpec& s, const TrainingOptions& o,
                               const std::vector<bool>& targeted) {
  const Precision p = o.precision;
  const bool amp = IsAmp(p);
  const uint64_t e = ComputeElementBytes(p);
  const uint64_t t = o.tensor_parallel;
  const bool lora = o.lora_rank > 0;
  const std::vector<LinearModule> modules = LinearModules(s);
  LinearInputs out;
  std::array<bool, 5> shared_saved{};
  const double layers =
      static_cast<double>(std::max<uint64_t>(1, s.num_layers));
  for (size_t i = 0; i < modules.size(); ++i) {
    const LinearModule& m = modules[i];
    const InputRole role = RoleOf(s, m);
    const double per_layer = static_cast<double>(m.active_count) / layers;
    out.linear_params += m.in_features * m.out_features *
                         (m.count / std::max<uint64_t>(1, s.num_layers)) / t;
    const bool norm_fed =
        role == InputRole::kAttentionIn || role == InputRole::kMlpIn;
    bool& shared = shared_saved[static_cast<int>(role)];
    double bytes = 0;
    if (!lora) {
      if (amp && norm_fed) {
        bytes = 2.0 * m.in_features * per_layer;  // a cast per consumer
      } else if (!shared) {
        bytes = static_cast<double>(e * m.in_features);  // one shared tensor
        shared = true;
      }
    } else if (targeted[i]) {
      // Frozen base linears keep no input. An adapter keeps its input cast
      // to the adapter dtype (fp32: the fp32 input itself, shared; 16-bit:
      // a cast per adapter; amp: autocast's bf16 cast per adapter) and its
      // rank-wide middle.
      if (p == Precision::kFp32) {
        if (!shared) bytes = 4.0 * m.in_features;
        shared = true;
      } else {
        bytes = (amp ? 2.0 : kAdapterBytes * 1.0) * m.in_features * per_layer;
      }
      bytes += static_cast<double>(kAdapterBytes * o.lora_rank) * per_layer;
    }
    (norm_fed ? out.norm_fed_bytes : out.internal_bytes) += bytes;
  }
  return out;
}

// Attention: rotary q and k, and v, kept by the attention kernel, plus its
// output (flash backward needs it); per token, e bytes an element.
uint64_t AttentionBytes(const ModelSpec& s, uint64_t e) {
  if (s.attention_kind == AttentionKind::kMultiLatent) {
    const uint64_t qk =
        s.num_attention_heads * (s.qk_nope_head_dim + s.qk_rope_head_dim);
    const uint64_t v = s.num_attention_heads * s.v_head_dim;
    return e * (2 * qk + 2 * v);
  }
  const uint64_t q = s.num_attention_heads * s.head_dim;
  const uint64_t kv = s.num_kv_heads * s.head_dim;
  return e * (2 * q + 2 * kv);
}

// MLP intermediates of width w (dense layers and MoE layers averaged), per
// token, e bytes an element.
double MlpBytes(const ModelSpec& s, uint64_t e, bool amp) {
  double w = 0;
  if (s.num_layers > 0) {
    const uint64_t dense_layers = s.num_layers - s.num_moe_layers;
    w = (static_cast<double>(dense_layers) * s.intermediate_size +
         static_cast<double>(s.num_moe_layers) *
             (s.experts_per_token * s.moe_intermediate_size +
              s.shared_expert_intermediate_size)) /
        s.num_layers;
  }
  if (s.mlp_kind == MlpKind::kGated) {
    return 3.0 * e * w;  // gate output, activated gate, up output
  }
  if (s.hidden_act == "gelu_new") {
    // GPT-2's NewGELUActivation is a chain of Python ops, each keeping an
    // input: x, tanh(...), 1 + tanh(...), 0.5 x. Under autocast pow runs in
    // fp32 and promotes the chain to fp32 except 0.5 x.
    return amp ? 14.0 * w : 4.0 * e * w;
  }
  return 1.0 * e * w;  // a fused activation keeps its input
}

// Attention scores per element.
uint64_t ScoreBytes(const ModelSpec& s, const TrainingOptions& o) {
  const Precision p = o.precision;
  const uint64_t e = ComputeElementBytes(p);
  const bool gqa = s.num_kv_heads < s.num_attention_heads;
  if (o.recompute == Recompute::kSelective) return 0;
  if (!o.flash_attention) {
    // Eager: fp32 softmax output, its cast back, and with dropout the mask
    // and the dropped-out copy (Korthikanti's 5 bytes in 16-bit).
    return 4 + (e < 4 ? e : 0) + (TrainsWithDropout(s) ? 1 + e : 0);
  }
  if (p == Precision::kFp32 && gqa) {
    // PyTorch SDPA has no fused fp32 kernel for grouped-query attention
    // (flash needs 16-bit; memory-efficient lacks enable_gqa), so it falls
    // back to the math path, which keeps the fp32 softmax: measured as
    // exactly 4 a s^2 b per layer on Qwen2.5-0.5B.
    return 4;
  }
  return 0;
}

LayerActivations CountLayer(const ModelSpec& s, const TrainingOptions& o,
                            const std::vector<bool>& targeted) {
  const Precision p = o.precision;
  const uint64_t e = ComputeElementBytes(p);
  const uint64_t r = ResidualElementBytes(p);
  const uint64_t t = o.tensor_parallel;
  const uint64_t h = s.hidden_size;
  LayerActivations out;

  uint64_t replicated = NormBytes(s, r, t);
  const LinearInputs linear = CountLinearInputs(s, o, targeted);
  out.linear_params = linear.linear_params;
  const uint64_t attn = AttentionBytes(s, e);
  const double mlp = MlpBytes(s, e, IsAmp(p));
  const double split = linear.internal_bytes + static_cast<double>(attn) + mlp;
  if (TrainsWithDropout(s)) {
    replicated += 2 * h;  // two residual dropout masks, 1 B each
  }

  out.per_token =
      replicated +
      static_cast<uint64_t>(std::ceil(linear.norm_fed_bytes + split / t));
  out.input_per_token = r * h;
  out.score_bytes = ScoreBytes(s, o);
  return out;
}

// Autocast's 16-bit weight copies are kept by autograd until backward:
// every matmul weight, the lm_head (or tied embedding) included. Under
// full recompute only the lm_head's and one layer's are alive.
uint64_t AutocastWeightCopyBytes(const ModelSpec& spec,
                                 const TrainingOptions& o,
                                 uint64_t layer_linear_params,
                                 uint64_t layers_per_stage, Checked& c) {
  const uint64_t lm = spec.vocab_size * spec.hidden_size / o.tensor_parallel;
  // QLoRA's 4-bit base weights are dequantized per op and not saved for
  // backward (bitsandbytes keeps the packed weights), so only the lm_head
  // is cast and kept.
  const uint64_t layers_linear =
      o.qlora ? 0
      : o.recompute == Recompute::kFull
          ? layer_linear_params
          : c.Mul(layer_linear_params, layers_per_stage);
  return c.Mul(c.Add(lm, layers_linear), 2);
}

// The activations of this GPU's layers at its peak, per micro-batch shape.
struct StageShape {
  uint64_t tokens = 0;            // micro_batch_size x sequence_length
  uint64_t full_layer = 0;        // one layer's saved bytes, scores included
  uint64_t input_per_token = 0;   // one layer's input (full recompute)
  uint64_t layers_per_stage = 0;  // layers on this pipeline stage
  uint64_t head_per_token = 0;    // the final norm and the lm_head input
};

// Activation bytes of this GPU at the forward-backward peak, given the
// logits (`est->logits_bytes`) and autocast copies already counted on `est`.
// Under 1F1B pipelining the first stage holds `pipeline_parallel`
// micro-batches in flight; the last holds one, and the logits.
uint64_t StageActivationBytes(const TrainingOptions& o, const StageShape& st,
                              const TrainingEstimate& est, Checked& c) {
  const uint64_t in_flight = o.pipeline_parallel;
  uint64_t kept_layers = 0;  // saved by the layers on this GPU
  uint64_t moment = 0;       // what the peak moment adds on top
  if (o.recompute == Recompute::kFull) {
    kept_layers =
        c.Mul(c.Mul(c.Mul(st.tokens, st.input_per_token), st.layers_per_stage),
              in_flight);
    // Backward recomputes one layer at a time, after the loss's peak.
    moment = std::max(est.logits_bytes, st.full_layer);
  } else {
    const uint64_t stage0 =
        c.Mul(c.Mul(st.full_layer, st.layers_per_stage), in_flight);
    const uint64_t last =
        c.Add(c.Mul(st.full_layer, st.layers_per_stage), est.logits_bytes);
    kept_layers = o.pipeline_parallel > 1
                      ? std::max(stage0, last)
                      : c.Mul(st.full_layer, st.layers_per_stage);
    moment = o.pipeline_parallel > 1 && stage0 > last ? 0 : est.logits_bytes;
  }
  if (o.pipeline_parallel > 1 && o.recompute != Recompute::kFull) {
    return c.Add(c.Add(kept_layers, c.Mul(st.tokens, st.head_per_token)),
                 est.autocast_weight_copy_bytes);
  }
  return c.Add(
      c.Add(c.Add(kept_layers, moment), c.Mul(st.tokens, st.head_per_token)),
      est.autocast_weight_copy_bytes);
}

// Sets est's activation_bytes and what it includes (logits_bytes,
// autocast_weight_copy_bytes), and paper_activation_bytes beside it.
void EstimateActivations(const ModelSpec& spec, const TrainingOptions& o,
                         const std::vector<bool>& targeted, Checked& c,
                         TrainingEstimate* est) {
  const Precision p = o.precision;
  const uint64_t b = o.micro_batch_size;
  const uint64_t seq = o.sequence_length;
  const uint64_t h = spec.hidden_size;
  const LayerActivations layer = CountLayer(spec, o, targeted);
  const uint64_t heads = CeilDiv(spec.num_attention_heads, o.tensor_parallel);
  StageShape st;
  st.tokens = c.Mul(b, seq);
  const uint64_t scores =
      c.Mul(c.Mul(c.Mul(heads, c.Mul(seq, seq)), b), layer.score_bytes);
  st.full_layer = c.Add(c.Mul(st.tokens, layer.per_token), scores);
  st.input_per_token = layer.input_per_token;
  st.layers_per_stage = CeilDiv(spec.num_layers, o.pipeline_parallel);
  const uint64_t r = ResidualElementBytes(p);
  // Final norm and the lm_head input.
  st.head_per_token = (spec.norm_kind == NormKind::kRmsNorm ? 4 + r : r) * h +
                      (o.lora_rank > 0 ? 0 : ComputeElementBytes(p) * h);
  est->logits_bytes =
      c.Mul(c.Mul(st.tokens, CeilDiv(spec.vocab_size, o.tensor_parallel)),
            4 * kLogitsFp32Copies);
  if (IsAmp(p)) {
    est->autocast_weight_copy_bytes = AutocastWeightCopyBytes(
        spec, o, layer.linear_params, st.layers_per_stage, c);
  }
  est->activation_bytes = StageActivationBytes(o, st, *est, c);
  if (TrainsWithDropout(spec)) {
    est->activation_bytes = c.Add(est->activation_bytes, c.Mul(st.tokens, h));
  }
  est->paper_activation_bytes = c.Mul(
      KorthikantiLayerBytes(seq, b, h, spec.num_attention_heads,
                            o.tensor_parallel, o.recompute, o.flash_attention),
      spec.num_layers);
}

}  // namespace

uint64_t KorthikantiLayerBytes(uint64_t s, uint64_t b, uint64_t h, uint64_t a,
                               uint64_t t, Recompute recompute, bool flash) {
  Checked c;
  const uint64_t sbh = c.Mul(c.Mul(s, b), h);
  if (t == 0) t = 1;
  uint64_t bytes = 0;
  if (recompute == Recompute::kFull) {
    bytes = c.Mul(sbh, 2);
  } else {
    // sbh (10 + 24/t): layer norms, dropout masks and the replicated inputs
    // (10), and the tensor-parallel attention and MLP tensors (24 / t).
    bytes = c.Add(c.Mul(sbh, 10), c.Mul(sbh, 24) / t);
    if (recompute == Recompute::kNone && !flash) {
      // 5 a s^2 b / t: QK^T (2), softmax (2) and its dropout mask (1).
      bytes = c.Add(bytes, c.Mul(c.Mul(c.Mul(5, a), c.Mul(s, s)), b) / t);
    }
  }
  return c.overflow() ? kMax : bytes;
}

namespace {

// --------------------------------------------------- Parallelism / ZeRO ---

// Model states of the whole model, before any split.
struct ModelStates {
  uint64_t weights = 0;
  uint64_t gradients = 0;
  uint64_t optimizer = 0;
  uint64_t step_temp = 0;  // the optimizer step's temporaries
};

// Splits the model states across tensor x pipeline ranks, then across the
// data-parallel ranks for what the ZeRO stage shards (1: optimizer state,
// 2: + gradients, 3: + weights), into est's per-GPU figures.
void ShardModelStates(const TrainingOptions& o, const ModelStates& states,
                      TrainingEstimate* est) {
  const uint64_t model_split = o.tensor_parallel * o.pipeline_parallel;
  const uint64_t dp = o.data_parallel;
  auto shard = [&](uint64_t bytes, bool by_zero) {
    uint64_t b = CeilDiv(bytes, model_split);
    return by_zero ? CeilDiv(b, dp) : b;
  };
  est->weights_bytes = shard(states.weights, o.zero_stage >= 3);
  est->gradients_bytes = shard(states.gradients, o.zero_stage >= 2);
  est->optimizer_bytes = shard(states.optimizer, o.zero_stage >= 1);
  est->optimizer_step_temp_bytes = shard(states.step_temp, o.zero_stage >= 1);
}

// ---------------------------------------------------------------- Peaks ---

// The two moments, and the larger as the total.
void SetPeaks(TrainingEstimate* est, Checked& c) {
  est->forward_backward_peak_bytes =
      c.Add(c.Add(c.Add(est->weights_bytes, est->optimizer_bytes),
                  est->activation_bytes),
            kRuntimeWorkspaceBytes);
  est->optimizer_step_peak_bytes =
      c.Add(c.Add(c.Add(c.Add(est->weights_bytes, est->gradients_bytes),
                        est->optimizer_bytes),
                  est->optimizer_step_temp_bytes),
            kRuntimeWorkspaceBytes);
  if (est->optimizer_step_peak_bytes > est->forward_backward_peak_bytes) {
    est->total_bytes = est->optimizer_step_peak_bytes;
    est->peak = "optimizer-step";
  } else {
    est->total_bytes = est->forward_backward_peak_bytes;
    est->peak = "forward-backward";
  }
}

// What the estimate leaves out or assumes, as notes.
void AddNotes(const ModelSpec& spec, const TrainingOptions& o,
              TrainingEstimate* est) {
  if (IsAmp(o.precision)) {
    est->notes.push_back(
        "amp: the fp32 weights are the master copy; autocast's 16-bit weight "
        "copies are counted in activation_bytes");
  }
  if (o.zero_stage > 0 && o.data_parallel == 1) {
    est->notes.push_back(
        "ZeRO shards across data_parallel GPUs; with one it "
        "changes nothing");
  }
  if (o.zero_stage >= 3) {
    est->notes.push_back(
        "ZeRO-3 also gathers one layer's full weights at a "
        "time (not counted)");
  }
  if (spec.attention_kind == AttentionKind::kMultiLatent) {
    est->notes.push_back("MLA latents are not counted among activations");
  }
  est->notes.push_back(
      "gradients are freed after each step (zero_grad(set_to_none=True)); "
      "with gradient accumulation they persist through the next forward");
}

}  // namespace

// ----------------------------------------------------- EstimateTraining ---

absl::StatusOr<TrainingEstimate> EstimateTraining(const ModelSpec& spec,
                                                  const TrainingOptions& in) {
  if (absl::Status st = Validate(spec, in); !st.ok()) return st;
  TrainingOptions o = in;
  if (o.gradient_checkpointing) o.recompute = Recompute::kFull;
  Checked c;
  TrainingEstimate est;

  // Weights: the base, and LoRA adapters r (in + out) per instance.
  const ParameterCounts counts = CountParameters(spec);
  const std::vector<LinearModule> modules = LinearModules(spec);
  absl::StatusOr<Adapters> adapters = CountAdapters(spec, o, modules, c);
  if (!adapters.ok()) return adapters.status();
  est.parameters = c.Add(counts.total, adapters->parameters);
  est.trainable_parameters =
      o.lora_rank > 0 ? adapters->parameters : counts.total;
  const uint64_t trainable = est.trainable_parameters;
  ModelStates states;
  states.weights = WeightBytes(spec, counts, o, adapters->parameters, c);

  // Gradients, optimizer state and the step's temporaries.
  states.gradients = GradientBytes(trainable, o, c);
  const uint64_t s = TrainableElementBytes(o);
  const TrainableShape shape =
      ShapeOfTrainable(spec, counts, o, modules, adapters->targeted);
  states.optimizer =
      OptimizerStateBytes(o.optimizer, trainable, s, shape.factored, c);
  states.step_temp = OptimizerStepTempBytes(o.optimizer, trainable, s,
                                            shape.largest_tensor, c);

  // Per GPU: parallelism and ZeRO, then this GPU's activations.
  ShardModelStates(o, states, &est);
  est.runtime_workspace_bytes = kRuntimeWorkspaceBytes;
  EstimateActivations(spec, o, adapters->targeted, c, &est);

  SetPeaks(&est, c);
  if (c.overflow()) {
    return absl::InvalidArgumentError(
        "the training estimate overflows 64-bit arithmetic; check the sizes");
  }
  AddNotes(spec, o, &est);
  return est;
}

// ---------------------------------------------------------- GPUs to fit ---

absl::StatusOr<GpuPlan> GpusToFit(const ModelSpec& spec,
                                  const TrainingOptions& options,
                                  uint64_t gpu_memory_bytes) {
  if (gpu_memory_bytes == 0) {
    return absl::InvalidArgumentError("GPU memory must be positive");
  }
  constexpr uint64_t kMaxGpus = 65536;
  std::optional<GpuPlan> best;
  for (uint64_t tp : {1, 2, 4, 8}) {
    if (spec.num_attention_heads % tp != 0) continue;
    auto estimate = [&](uint64_t dp) -> absl::StatusOr<TrainingEstimate> {
      TrainingOptions o = options;
      o.tensor_parallel = tp;
      o.pipeline_parallel = 1;
      o.data_parallel = dp;
      o.zero_stage = dp > 1 ? 3 : options.zero_stage;
      return EstimateTraining(spec, o);
    };
    // The per-GPU peak falls as dp grows; find the smallest dp that fits.
    absl::StatusOr<TrainingEstimate> at_max = estimate(kMaxGpus / tp);
    if (!at_max.ok()) return at_max.status();
    if (at_max->total_bytes > gpu_memory_bytes) continue;
    uint64_t lo = 1;
    uint64_t hi = kMaxGpus / tp;
    while (lo < hi) {
      const uint64_t mid = lo + (hi - lo) / 2;
      absl::StatusOr<TrainingEstimate> e = estimate(mid);
      if (!e.ok()) return e.status();
      if (e->total_bytes <= gpu_memory_bytes) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    if (!best.has_value() || tp * lo < best->gpus) {
      absl::StatusOr<TrainingEstimate> e = estimate(lo);
      if (!e.ok()) return e.status();
      best = GpuPlan{tp * lo, tp, lo, lo > 1 ? 3u : options.zero_stage,
                     *std::move(e)};
    }
  }
  if (!best.has_value()) {
    return absl::ResourceExhaustedError(
        "the step does not fit even sharded across 65,536 GPUs: activations "
        "alone exceed the GPU; lower the micro-batch or sequence, or turn on "
        "gradient checkpointing");
  }
  return *std::move(best);
}

// -------------------------------------------------------------- Compute ---

absl::StatusOr<ComputeEstimate> EstimatePretrainingCompute(
    uint64_t active_parameters, uint64_t tokens, double gpu_peak_tflops,
    double mfu) {
  if (tokens == 0 || active_parameters == 0) {
    return absl::InvalidArgumentError("tokens and parameters must be positive");
  }
  if (!(gpu_peak_tflops > 0)) {
    return absl::InvalidArgumentError(
        "the GPU's peak TFLOP/s must be positive");
  }
  if (!(mfu > 0 && mfu <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("mfu ", mfu, " is outside (0, 1]"));
  }
  ComputeEstimate out;
  out.mfu = mfu;
  out.flops = 6.0 * static_cast<double>(active_parameters) *
              static_cast<double>(tokens);
  constexpr double kSecondsPerDay = 86400;
  out.petaflop_s_days = out.flops / (1e15 * kSecondsPerDay);
  out.gpu_days = out.flops / (gpu_peak_tflops * 1e12 * mfu * kSecondsPerDay);
  return out;
}

}  // namespace kvgate
