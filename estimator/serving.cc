#include "estimator/serving.h"

#include <algorithm>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/strings/str_cat.h"

namespace kvgate {
namespace {

bool CheckedAdd(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_add_overflow(a, b, out);
}

absl::Status Overflow(absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("sequences: ", what, " overflows 64-bit arithmetic"));
}

// Running sums over a batch's sequences.
struct BatchSums {
  uint64_t kv_bytes = 0;
  uint64_t kv_tokens = 0;
  uint64_t prefill_tokens = 0;
  uint64_t score_elements = 0;
};

// Prompt tokens every sequence of `batch` shares, rounded down to whole
// blocks: the partial last block is copied for each sample when it starts
// generating.
uint64_t SharedPromptTokens(absl::Span<const SequenceShape> batch,
                            uint64_t block_size) {
  uint64_t shortest = UINT64_MAX;
  for (const SequenceShape& s : batch) {
    shortest = std::min(shortest, s.prompt_tokens);
  }
  return shortest / block_size * block_size;
}

// Checks sequences[i] and sets *tokens to its prompt_tokens + max_new_tokens.
// Always inlined: out of line (returning the Status through memory) it made
// bench/estimator_bench's EstimateBatch about 28% slower.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline absl::Status SequenceTokens(
    size_t i, const SequenceShape& s, uint64_t max_model_len,
    uint64_t* tokens) {
  if (s.prompt_tokens == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequences[", i, "].prompt_tokens must be at least 1"));
  }
  if (!CheckedAdd(s.prompt_tokens, s.max_new_tokens, tokens) ||
      *tokens >= (uint64_t{1} << 40)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequences[", i, "]: prompt_tokens + max_new_tokens is too large"));
  }
  if (max_model_len > 0 && *tokens > max_model_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequences[", i, "]: prompt_tokens + max_new_tokens = ", *tokens,
        " exceeds the model's context length ", max_model_len));
  }
  return absl::OkStatus();
}

// Adds one sequence's KV cache, KV tokens and prefill tokens to *sums, less
// the shared prompt prefix when `drop_shared`; false on overflow.
bool AddSequence(const KvCacheModel& kv_cache, uint64_t prompt_tokens,
                 uint64_t tokens, bool drop_shared, uint64_t shared_prompt,
                 BatchSums* sums) {
  uint64_t seq_bytes = kv_cache.SequenceBytes(tokens);
  uint64_t seq_tokens = kv_cache.RoundToBlock(tokens);
  uint64_t seq_prefill = prompt_tokens;
  if (drop_shared) {
    seq_bytes -= kv_cache.SequenceBytes(shared_prompt);
    seq_tokens -= shared_prompt;
    seq_prefill -= shared_prompt;
  }
  return CheckedAdd(sums->kv_bytes, seq_bytes, &sums->kv_bytes) &&
         CheckedAdd(sums->kv_tokens, seq_tokens, &sums->kv_tokens) &&
         CheckedAdd(sums->prefill_tokens, seq_prefill, &sums->prefill_tokens);
}

// Adds the heads x query x key scores eager attention materialises for one
// prompt (query = the prefill chunk, when set) to *total, saturating at
// UINT64_MAX.
void AddScoreElements(uint64_t heads, uint64_t prompt_tokens, uint64_t chunk,
                      uint64_t* total) {
  const uint64_t p = prompt_tokens;
  const uint64_t q = chunk > 0 ? std::min<uint64_t>(p, chunk) : p;
  uint64_t scores = 0;
  if (__builtin_mul_overflow(heads * q, p, &scores) ||
      !CheckedAdd(*total, scores, total)) {
    *total = UINT64_MAX;
  }
}

}  // namespace

std::optional<DType> ServedWeightDType(const ModelSpec& spec) {
  if (spec.quantization.has_value()) return std::nullopt;
  if (spec.torch_dtype == DType::kFloat32) return DType::kBFloat16;
  return std::nullopt;
}

ServingModel::ServingModel(ModelSpec spec, const ServingOptions& options,
                           KvCacheModel kv_cache)
    : spec_(std::move(spec)),
      options_(options),
      parameters_(CountParameters(spec_)),
      kv_cache_(kv_cache),
      activations_(spec_, ActivationOptions{
                              options.attention,
                              DType::kBFloat16,
                              options.logits_bytes,
                              options.chunked_prefill_tokens,
                              options.tensor_parallel,
                          }) {}

absl::StatusOr<ServingModel> ServingModel::Create(
    ModelSpec spec, const ServingOptions& options) {
  KvCacheOptions kv;
  kv.dtype = options.kv_cache_dtype;
  kv.block_size = options.block_size;
  kv.tensor_parallel = options.tensor_parallel;
  kv.honor_sliding_window = options.honor_sliding_window;
  absl::StatusOr<KvCacheModel> kv_model = KvCacheModel::Create(spec, kv);
  if (!kv_model.ok()) return kv_model.status();

  ServingModel model(std::move(spec), options, *kv_model);
  WeightOptions w;
  w.dtype = options.weight_dtype.has_value() ? options.weight_dtype
                                             : ServedWeightDType(model.spec_);
  w.tensor_parallel = options.tensor_parallel;
  model.quantization_ = EffectiveQuantization(model.spec_, w);
  absl::StatusOr<uint64_t> weights =
      WeightBytesPerGpu(model.spec_, model.parameters_, w);
  if (!weights.ok()) return weights.status();
  model.weights_bytes_ = *weights;
  model.max_model_len_ = options.max_model_len > 0
                             ? options.max_model_len
                             : model.spec_.max_position_embeddings;
  return model;
}

absl::Status ServingModel::EstimateBatch(absl::Span<const SequenceShape> batch,
                                         BatchEstimate* out) const {
  if (batch.empty()) {
    return absl::InvalidArgumentError("sequences: at least one is required");
  }
  const bool shared = options_.share_prompt_prefix && batch.size() > 1;
  const uint64_t shared_prompt =
      shared ? SharedPromptTokens(batch, kv_cache_.block_size()) : UINT64_MAX;
  const uint64_t chunk = options_.chunked_prefill_tokens;
  const uint64_t heads = activations_.heads_per_gpu();
  BatchSums sums;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceShape& s = batch[i];
    uint64_t tokens = 0;
    if (absl::Status status = SequenceTokens(i, s, max_model_len_, &tokens);
        !status.ok()) {
      return status;
    }
    // The shared prefix is counted once, with the first sequence.
    if (!AddSequence(kv_cache_, s.prompt_tokens, tokens, shared && i > 0,
                     shared_prompt, &sums)) {
      return Overflow("the batch's KV cache");
    }
    AddScoreElements(heads, s.prompt_tokens, chunk, &sums.score_elements);
  }
  const uint64_t step_tokens =
      chunk > 0 ? std::min<uint64_t>(sums.prefill_tokens, chunk)
                : sums.prefill_tokens;
  const uint64_t logits_tokens = std::min<uint64_t>(batch.size(), step_tokens);

  out->kv_cache_bytes = sums.kv_bytes;
  out->kv_cache_tokens = sums.kv_tokens;
  out->activation_bytes = activations_.StepPeakBytes(step_tokens, logits_tokens,
                                                     sums.score_elements);
  if (!CheckedAdd(out->kv_cache_bytes, out->activation_bytes,
                  &out->total_bytes)) {
    return Overflow("the batch's total");
  }
  return absl::OkStatus();
}

}  // namespace kvgate
