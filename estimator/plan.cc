#include "estimator/plan.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvgate {
namespace {

constexpr uint64_t kMaxTokens = uint64_t{1} << 40;

std::string GiBText(uint64_t bytes) {
  return absl::StrFormat("%.2f GiB", static_cast<double>(bytes) / (1 << 30));
}

uint64_t SaturatingAdd(uint64_t a, uint64_t b) {
  uint64_t sum = 0;
  return __builtin_add_overflow(a, b, &sum)
             ? std::numeric_limits<uint64_t>::max()
             : sum;
}

uint64_t SaturatingMul(uint64_t a, uint64_t b) {
  uint64_t product = 0;
  return __builtin_mul_overflow(a, b, &product)
             ? std::numeric_limits<uint64_t>::max()
             : product;
}

absl::Status CheckOptions(const PlanOptions& o) {
  if (!(o.gpu_memory_utilization > 0 && o.gpu_memory_utilization <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("gpu_memory_utilization must be in (0, 1], got ",
                     o.gpu_memory_utilization));
  }
  if (o.gpu_memory_bytes == 0) {
    return absl::InvalidArgumentError("gpu_memory_bytes must be at least 1");
  }
  if (o.max_num_batched_tokens == 0 || o.max_num_batched_tokens > kMaxTokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_num_batched_tokens must be in [1, 2^40], got ",
                     o.max_num_batched_tokens));
  }
  if (o.max_num_seqs == 0 || o.max_num_seqs > kMaxTokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_num_seqs must be in [1, 2^40], got ", o.max_num_seqs));
  }
  if (o.max_model_len > kMaxTokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_model_len must be at most 2^40, got ", o.max_model_len));
  }
  return absl::OkStatus();
}

// fp32 [rows, vocab] tensors alive at once when the engine's sampler warms
// up on the profiling batch (top-p/top-k on): logits, the scaled copy, sorted
// values and their int64 indices (2), softmax, cumulative sum, probabilities,
// log-probabilities. Consistent with vLLM's 1.26 GiB activation peak for
// Llama-3-8B (256 rows x 128,256 vocab) at both TP 1 and TP 2
// (vllm-project/vllm#10511), which no per-layer peak explains: a layer's
// intermediates halve under TP 2, the sampler's full-vocabulary rows do not.
constexpr uint64_t kSamplerRowCopies = 9;

// Activation peak of the profiling pass: max_num_batched_tokens tokens split
// over up to max_num_seqs sequences, one row of logits per sequence, then
// the sampler over those rows.
uint64_t ProfilingActivationBytes(const ModelSpec& spec,
                                  const ServingModel& model,
                                  const PlanOptions& o) {
  const uint64_t tokens = o.max_num_batched_tokens;
  const uint64_t seqs = std::min(o.max_num_seqs, tokens);
  const uint64_t per_seq = (tokens + seqs - 1) / seqs;
  const uint64_t scores =
      SaturatingMul(SaturatingMul(model.activations().heads_per_gpu(), seqs),
                    SaturatingMul(per_seq, per_seq));
  const uint64_t forward =
      model.activations().StepPeakBytes(tokens, seqs, scores);
  // The final hidden states (bf16) stay alive while the sampler runs.
  const uint64_t sampler =
      SaturatingAdd(SaturatingMul(SaturatingMul(tokens, spec.hidden_size), 2),
                    SaturatingMul(SaturatingMul(seqs, spec.vocab_size),
                                  4 * kSamplerRowCopies));
  return std::max(forward, sampler);
}

// One plan at the tensor-parallel degree of options.serving.
absl::StatusOr<Plan> PlanOnce(const ModelSpec& spec, const PlanOptions& o) {
  if (absl::Status s = CheckOptions(o); !s.ok()) return s;
  const uint64_t max_model_len =
      o.max_model_len > 0 ? o.max_model_len : spec.max_position_embeddings;
  if (max_model_len == 0) {
    return absl::InvalidArgumentError(
        "max_model_len is required: the config has no "
        "max_position_embeddings");
  }
  if (max_model_len > kMaxTokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_model_len must be at most 2^40, got ", max_model_len));
  }
  ServingOptions serving = o.serving;
  serving.max_model_len = max_model_len;
  absl::StatusOr<ServingModel> model = ServingModel::Create(spec, serving);
  if (!model.ok()) return model.status();

  Plan plan;
  plan.gpu_memory_bytes = o.gpu_memory_bytes;
  plan.gpu_memory_utilization = o.gpu_memory_utilization;
  plan.tensor_parallel = serving.tensor_parallel;
  plan.max_model_len = max_model_len;
  plan.max_num_batched_tokens = o.max_num_batched_tokens;
  // long double holds any uint64_t below 2^64 exactly (64-bit mantissa).
  plan.requested_bytes = static_cast<uint64_t>(
      std::floor(static_cast<long double>(o.gpu_memory_bytes) *
                 static_cast<long double>(o.gpu_memory_utilization)));
  plan.weights_bytes = model->weights_bytes();
  plan.activation_bytes = ProfilingActivationBytes(spec, *model, o);
  plan.non_torch_bytes = o.non_torch_bytes;
  const uint64_t needs =
      SaturatingAdd(SaturatingAdd(plan.weights_bytes, plan.activation_bytes),
                    plan.non_torch_bytes);
  if (needs > plan.requested_bytes) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "model does not fit: needs %s per GPU (weights %s + activations %s + "
        "non-torch %s) before any KV cache, has %s (%g x %s) at tensor "
        "parallel %d",
        GiBText(needs), GiBText(plan.weights_bytes),
        GiBText(plan.activation_bytes), GiBText(plan.non_torch_bytes),
        GiBText(plan.requested_bytes), o.gpu_memory_utilization,
        GiBText(o.gpu_memory_bytes), plan.tensor_parallel));
  }
  const KvCacheModel& kv = model->kv_cache();
  plan.kv_cache_bytes = plan.requested_bytes - needs;
  plan.kv_cache_bytes_per_token = kv.bytes_per_token();
  plan.kv_cache_block_bytes = kv.bytes_per_token() * kv.block_size();
  plan.kv_cache_blocks = plan.kv_cache_block_bytes == 0
                             ? 0
                             : plan.kv_cache_bytes / plan.kv_cache_block_bytes;
  plan.kv_cache_tokens = plan.kv_cache_blocks * kv.block_size();
  plan.sequence_kv_bytes = kv.SequenceBytes(max_model_len);
  const uint64_t usable = plan.kv_cache_blocks * plan.kv_cache_block_bytes;
  plan.max_concurrency = plan.sequence_kv_bytes == 0
                             ? 0
                             : static_cast<double>(usable) /
                                   static_cast<double>(plan.sequence_kv_bytes);
  plan.max_concurrent_sequences =
      plan.sequence_kv_bytes == 0 ? 0 : usable / plan.sequence_kv_bytes;
  if (plan.max_concurrent_sequences == 0) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "model does not fit: one sequence of max_model_len %d tokens needs "
        "%s of KV cache per GPU, has %s (%d tokens) after weights %s, "
        "activations %s and non-torch %s of %s (%g x %s); lower "
        "max_model_len to at most %d",
        max_model_len, GiBText(plan.sequence_kv_bytes),
        GiBText(plan.kv_cache_bytes), plan.kv_cache_tokens,
        GiBText(plan.weights_bytes), GiBText(plan.activation_bytes),
        GiBText(plan.non_torch_bytes), GiBText(plan.requested_bytes),
        o.gpu_memory_utilization, GiBText(o.gpu_memory_bytes),
        plan.kv_cache_tokens));
  }
  return plan;
}

// Smallest fitting power-of-two degree in (from, max]; NotFound if none.
absl::StatusOr<uint32_t> SmallestFittingFrom(const ModelSpec& spec,
                                             const PlanOptions& options,
                                             uint32_t from, uint32_t max) {
  for (uint64_t tp = 1; tp <= max; tp *= 2) {
    if (tp <= from) continue;
    PlanOptions o = options;
    o.serving.tensor_parallel = static_cast<uint32_t>(tp);
    absl::StatusOr<Plan> plan = PlanOnce(spec, o);
    if (plan.ok()) return static_cast<uint32_t>(tp);
  }
  return absl::NotFoundError(absl::StrCat(
      "the model does not fit at any tensor-parallel degree up to ", max));
}

}  // namespace

absl::StatusOr<Plan> PlanServing(const ModelSpec& spec,
                                 const PlanOptions& options) {
  absl::StatusOr<Plan> plan = PlanOnce(spec, options);
  if (plan.ok() || !absl::IsResourceExhausted(plan.status())) return plan;
  absl::StatusOr<uint32_t> tp =
      SmallestFittingFrom(spec, options, options.serving.tensor_parallel, 64);
  return absl::ResourceExhaustedError(
      absl::StrCat(plan.status().message(), "; ",
                   tp.ok() ? absl::StrCat("it fits with tensor parallel ", *tp,
                                          " (", *tp, " GPUs)")
                           : std::string(tp.status().message())));
}

absl::StatusOr<uint32_t> SmallestFittingTensorParallel(
    const ModelSpec& spec, const PlanOptions& options,
    uint32_t max_tensor_parallel) {
  // Inputs wrong at any degree (checked at 1, which every model allows)
  // are InvalidArgument rather than "does not fit".
  PlanOptions single = options;
  single.serving.tensor_parallel = 1;
  absl::StatusOr<Plan> plan = PlanOnce(spec, single);
  if (!plan.ok() && !absl::IsResourceExhausted(plan.status())) {
    return plan.status();
  }
  return SmallestFittingFrom(spec, options, 0, max_tensor_parallel);
}

}  // namespace kvgate
