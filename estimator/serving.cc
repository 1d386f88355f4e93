#include "estimator/serving.h"

#include <algorithm>
#include <utility>

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

}  // namespace

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
  w.dtype = options.weight_dtype;
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
  uint64_t shared_prompt = UINT64_MAX;
  if (shared) {
    for (const SequenceShape& s : batch) {
      shared_prompt = std::min(shared_prompt, s.prompt_tokens);
    }
    // Only whole blocks of the prompt are shared; the partial last block is
    // copied for each sample when it starts generating.
    shared_prompt =
        shared_prompt / kv_cache_.block_size() * kv_cache_.block_size();
  }

  uint64_t kv_bytes = 0;
  uint64_t kv_tokens = 0;
  uint64_t prefill_tokens = 0;
  uint64_t score_elements = 0;
  uint64_t longest_prompt = 0;
  const uint64_t heads = activations_.heads_per_gpu();
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceShape& s = batch[i];
    if (s.prompt_tokens == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequences[", i, "].prompt_tokens must be at least 1"));
    }
    uint64_t tokens = 0;
    if (!CheckedAdd(s.prompt_tokens, s.max_new_tokens, &tokens) ||
        tokens >= (uint64_t{1} << 40)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequences[", i, "]: prompt_tokens + max_new_tokens is too large"));
    }
    if (max_model_len_ > 0 && tokens > max_model_len_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequences[", i, "]: prompt_tokens + max_new_tokens = ", tokens,
          " exceeds the model's context length ", max_model_len_));
    }
    uint64_t seq_bytes = kv_cache_.SequenceBytes(tokens);
    uint64_t seq_tokens = kv_cache_.RoundToBlock(tokens);
    uint64_t seq_prefill = s.prompt_tokens;
    if (shared) {
      // The shared prefix is counted once, with the first sequence.
      if (i > 0) {
        seq_bytes -= kv_cache_.SequenceBytes(shared_prompt);
        seq_tokens -= shared_prompt;
        seq_prefill -= shared_prompt;
      }
    }
    if (!CheckedAdd(kv_bytes, seq_bytes, &kv_bytes) ||
        !CheckedAdd(kv_tokens, seq_tokens, &kv_tokens) ||
        !CheckedAdd(prefill_tokens, seq_prefill, &prefill_tokens)) {
      return Overflow("the batch's KV cache");
    }
    longest_prompt = std::max(longest_prompt, s.prompt_tokens);
    // Eager attention materialises heads x query x key scores per sequence.
    const uint64_t p = s.prompt_tokens;
    const uint64_t q =
        options_.chunked_prefill_tokens > 0
            ? std::min<uint64_t>(p, options_.chunked_prefill_tokens)
            : p;
    uint64_t scores = 0;
    if (__builtin_mul_overflow(heads * q, p, &scores) ||
        !CheckedAdd(score_elements, scores, &score_elements)) {
      score_elements = UINT64_MAX;
    }
  }
  const uint64_t chunk = options_.chunked_prefill_tokens;
  const uint64_t step_tokens =
      chunk > 0 ? std::min<uint64_t>(prefill_tokens, chunk) : prefill_tokens;
  const uint64_t logits_tokens = std::min<uint64_t>(batch.size(), step_tokens);

  out->kv_cache_bytes = kv_bytes;
  out->kv_cache_tokens = kv_tokens;
  out->activation_bytes =
      activations_.StepPeakBytes(step_tokens, logits_tokens, score_elements);
  if (!CheckedAdd(out->kv_cache_bytes, out->activation_bytes,
                  &out->total_bytes)) {
    return Overflow("the batch's total");
  }
  return absl::OkStatus();
}

}  // namespace kvgate
