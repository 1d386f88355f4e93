// libFuzzer target: a Hugging Face config.json as an operator would hand it
// to kvgate (`kvgate estimate --config`, a pool's config_path).
//
// Bytes -> ParseModelConfig; for a config that parses, every consumer of the
// spec must neither crash nor hit undefined behaviour: CountParameters,
// KvCacheModel::Create and ServingModel::Create under a few serving options,
// and EstimateBatch on a few batch shapes. An estimate that succeeds must
// add up (total = kv + activations, no wrap-around).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "absl/strings/string_view.h"
#include "estimator/kv_cache.h"
#include "estimator/model_spec.h"
#include "estimator/parameters.h"
#include "estimator/serving.h"

namespace kvgate {
namespace {

void Check(bool condition) {
  if (!condition) std::abort();
}

void ExerciseKvCache(const ModelSpec& spec) {
  for (const uint32_t tp : {1u, 2u, 8u}) {
    KvCacheOptions options;
    options.tensor_parallel = tp;
    absl::StatusOr<KvCacheModel> kv = KvCacheModel::Create(spec, options);
    if (!kv.ok()) continue;
    (void)kv->bytes_per_token();
    (void)kv->SequenceBytes(1);
    (void)kv->SequenceBytes(4096);
  }
}

void ExerciseServing(const ModelSpec& spec) {
  const std::vector<std::vector<SequenceShape>> batches = {
      {{1, 1}},
      {{0, 0}},
      {{512, 128}, {4096, 0}, {17, 4000}},
      {{4294967295u, 4294967295u}},
  };
  for (const AttentionImpl attention :
       {AttentionImpl::kFlash, AttentionImpl::kEager}) {
    ServingOptions options;
    options.attention = attention;
    options.chunked_prefill_tokens =
        attention == AttentionImpl::kEager ? 0 : 512;
    absl::StatusOr<ServingModel> model = ServingModel::Create(spec, options);
    if (!model.ok()) continue;
    (void)model->weights_bytes();
    for (const auto& batch : batches) {
      BatchEstimate estimate;
      if (!model->EstimateBatch(batch, &estimate).ok()) continue;
      Check(estimate.total_bytes ==
            estimate.kv_cache_bytes + estimate.activation_bytes);
      Check(estimate.total_bytes >= estimate.kv_cache_bytes);
    }
  }
}

}  // namespace
}  // namespace kvgate

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<kvgate::ModelSpec> spec = kvgate::ParseModelConfig(text);
  if (!spec.ok()) return 0;
  (void)kvgate::CountParameters(*spec);
  kvgate::ExerciseKvCache(*spec);
  kvgate::ExerciseServing(*spec);
  return 0;
}
