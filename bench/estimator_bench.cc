// Cost of the per-request estimate the sidecar runs on every Admit: a 1- and
// a 64-sequence batch of the built-in llama-3-8b preset. The target is well
// under a microsecond, with no allocation.
#include <vector>

#include "benchmark/benchmark.h"
#include "estimator/model_spec.h"
#include "estimator/serving.h"

namespace kvgate {
namespace {

ServingModel MakeModel() {
  absl::StatusOr<ModelSpec> spec = LoadPreset("llama-3-8b");
  if (!spec.ok()) std::abort();
  absl::StatusOr<ServingModel> model =
      ServingModel::Create(*std::move(spec), ServingOptions{});
  if (!model.ok()) std::abort();
  return *std::move(model);
}

void BM_EstimateBatch(benchmark::State& state) {
  const ServingModel model = MakeModel();
  std::vector<SequenceShape> batch(static_cast<size_t>(state.range(0)));
  for (size_t i = 0; i < batch.size(); ++i) {
    batch[i] = {100 + 7 * i, 200 + 3 * i};
  }
  BatchEstimate out;
  for (auto _ : state) {
    absl::Status s = model.EstimateBatch(batch, &out);
    benchmark::DoNotOptimize(s);
    benchmark::DoNotOptimize(out);
  }
  state.counters["sequences"] = static_cast<double>(batch.size());
}
BENCHMARK(BM_EstimateBatch)->Arg(1)->Arg(64);

void BM_CreateServingModel(benchmark::State& state) {
  absl::StatusOr<ModelSpec> spec = LoadPreset("llama-3-8b");
  for (auto _ : state) {
    absl::StatusOr<ServingModel> model =
        ServingModel::Create(*spec, ServingOptions{});
    benchmark::DoNotOptimize(model);
  }
}
BENCHMARK(BM_CreateServingModel);

}  // namespace
}  // namespace kvgate

BENCHMARK_MAIN();
