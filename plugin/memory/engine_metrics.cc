#include "plugin/memory/engine_metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "plugin/memory/prometheus_text.h"

namespace kvgate {
namespace {

// 2^53: the largest count a double holds exactly.
constexpr double kMaxCount = 9007199254740992.0;

// The names one engine kind exposes (see the header for their sources).
struct MetricNames {
  absl::string_view pool;
  absl::string_view usage;
  absl::string_view usage_fallback;  // "" when none
  absl::string_view preemptions;
  absl::string_view running;
  absl::string_view waiting;
  // The label that tells data-parallel engines apart.
  absl::string_view engine_label;
};

const MetricNames& NamesFor(EngineKind kind) {
  static const MetricNames kVllm = {"vllm:cache_config_info",
                                    "vllm:kv_cache_usage_perc",
                                    "vllm:gpu_cache_usage_perc",
                                    "vllm:num_preemptions_total",
                                    "vllm:num_requests_running",
                                    "vllm:num_requests_waiting",
                                    "engine"};
  static const MetricNames kSglang = {"sglang:max_total_num_tokens",
                                      "sglang:token_usage",
                                      "",
                                      "sglang:num_retracted_requests_total",
                                      "sglang:num_running_reqs",
                                      "sglang:num_queue_reqs",
                                      "dp_rank"};
  return kind == EngineKind::kVllm ? kVllm : kSglang;
}

// Engine key -> value.
using ByEngine = std::map<std::string, double>;

bool PassesModelFilter(const PrometheusSample& sample,
                       const EngineMetricsOptions& options) {
  if (options.model_name.empty()) return true;
  const std::string* model = sample.FindLabel("model_name");
  return model == nullptr || *model == options.model_name;
}

std::string EngineKey(const PrometheusSample& sample, absl::string_view label) {
  const std::string* key = sample.FindLabel(label);
  return key == nullptr ? std::string() : *key;
}

// Keeps the larger of `value` and what `by_engine` holds for `key`.
void KeepMax(ByEngine* by_engine, const std::string& key, double value) {
  const auto [it, inserted] = by_engine->emplace(key, value);
  if (!inserted) it->second = std::max(it->second, value);
}

std::string ModelSuffix(const EngineMetricsOptions& options) {
  if (options.model_name.empty()) return "";
  return absl::StrCat(" for model_name \"", options.model_name, "\"");
}

// Per engine key, the largest value among the series named `name` that pass
// the model filter. InvalidArgument for a NaN or infinite value.
absl::StatusOr<ByEngine> CollectByEngine(
    absl::Span<const PrometheusSample> samples, absl::string_view name,
    const EngineMetricsOptions& options) {
  const absl::string_view engine_label = NamesFor(options.kind).engine_label;
  ByEngine by_engine;
  for (const PrometheusSample& sample : samples) {
    if (sample.name != name || !PassesModelFilter(sample, options)) continue;
    if (!std::isfinite(sample.value)) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " is ", sample.value));
    }
    KeepMax(&by_engine, EngineKey(sample, engine_label), sample.value);
  }
  return by_engine;
}

// The sum of the counts in `by_engine`; nullopt when it is empty.
absl::StatusOr<std::optional<uint64_t>> SumCount(const ByEngine& by_engine,
                                                 absl::string_view name) {
  if (by_engine.empty()) return std::optional<uint64_t>();
  double sum = 0;
  for (const auto& [key, value] : by_engine) {
    if (value < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " is negative (", value, ")"));
    }
    sum += value;
  }
  if (sum > kMaxCount) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " totals ", sum, ", over 2^53"));
  }
  return std::optional<uint64_t>(static_cast<uint64_t>(sum));
}

// The pool of one vllm:cache_config_info series: kv_cache_size_tokens when
// it is an integer, else num_gpu_blocks x block_size.
absl::StatusOr<double> VllmSeriesPool(const PrometheusSample& sample) {
  uint64_t tokens = 0;
  const std::string* size = sample.FindLabel("kv_cache_size_tokens");
  if (size != nullptr && absl::SimpleAtoi(*size, &tokens)) {
    return static_cast<double>(tokens);
  }
  uint64_t blocks = 0;
  uint64_t block_size = 0;
  const std::string* blocks_label = sample.FindLabel("num_gpu_blocks");
  const std::string* block_size_label = sample.FindLabel("block_size");
  if (blocks_label == nullptr || block_size_label == nullptr ||
      !absl::SimpleAtoi(*blocks_label, &blocks) ||
      !absl::SimpleAtoi(*block_size_label, &block_size)) {
    return absl::FailedPreconditionError(
        "vllm:cache_config_info has neither an integer kv_cache_size_tokens "
        "nor integer num_gpu_blocks and block_size labels (has the engine "
        "profiled its memory?)");
  }
  if (block_size != 0 &&
      blocks > static_cast<uint64_t>(kMaxCount) / block_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("vllm:cache_config_info: num_gpu_blocks ", blocks,
                     " x block_size ", block_size, " is over 2^53"));
  }
  return static_cast<double>(blocks * block_size);
}

// vLLM's pool per engine key, from the labels of vllm:cache_config_info.
absl::StatusOr<ByEngine> VllmPools(absl::Span<const PrometheusSample> samples,
                                   const EngineMetricsOptions& options) {
  const MetricNames& names = NamesFor(options.kind);
  ByEngine pools;
  for (const PrometheusSample& sample : samples) {
    if (sample.name != names.pool || !PassesModelFilter(sample, options)) {
      continue;
    }
    absl::StatusOr<double> pool = VllmSeriesPool(sample);
    if (!pool.ok()) return pool.status();
    KeepMax(&pools, EngineKey(sample, names.engine_label), *pool);
  }
  return pools;
}

// The usage of `usages` (clamped into [0, 1]) weighted by `pools`, or
// their plain mean when some usage key has no pool; nullopt when empty.
std::optional<double> MeanUsage(const ByEngine& usages, const ByEngine& pools) {
  if (usages.empty()) return std::nullopt;
  double weighted = 0;
  double weights = 0;
  double plain = 0;
  bool all_weighted = true;
  for (const auto& [key, raw] : usages) {
    const double usage = std::clamp(raw, 0.0, 1.0);
    plain += usage;
    const auto pool = pools.find(key);
    if (pool == pools.end()) {
      all_weighted = false;
      continue;
    }
    weighted += usage * pool->second;
    weights += pool->second;
  }
  const double mean = all_weighted && weights > 0
                          ? weighted / weights
                          : plain / static_cast<double>(usages.size());
  return std::clamp(mean, 0.0, 1.0);
}

// Sets `*out` to the summed count of metric `name` (unset when absent).
absl::Status ReadCount(absl::Span<const PrometheusSample> samples,
                       absl::string_view name,
                       const EngineMetricsOptions& options,
                       std::optional<uint64_t>* out) {
  absl::StatusOr<ByEngine> by_engine = CollectByEngine(samples, name, options);
  if (!by_engine.ok()) return by_engine.status();
  absl::StatusOr<std::optional<uint64_t>> sum = SumCount(*by_engine, name);
  if (!sum.ok()) return sum.status();
  *out = *sum;
  return absl::OkStatus();
}

// The pool per engine key, and their sum into `reading`.
absl::StatusOr<ByEngine> ReadPool(absl::Span<const PrometheusSample> samples,
                                  const EngineMetricsOptions& options,
                                  EngineReading* reading) {
  const absl::string_view name = NamesFor(options.kind).pool;
  absl::StatusOr<ByEngine> pools =
      options.kind == EngineKind::kVllm
          ? VllmPools(samples, options)
          : CollectByEngine(samples, name, options);
  if (!pools.ok()) return pools.status();
  if (pools->empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the page has no ", name, " series", ModelSuffix(options)));
  }
  absl::StatusOr<std::optional<uint64_t>> total = SumCount(*pools, name);
  if (!total.ok()) return total.status();
  if (**total == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(name, " reports a pool of 0 tokens"));
  }
  reading->pool_tokens = **total;
  reading->engines = static_cast<int>(pools->size());
  return pools;
}

}  // namespace

absl::string_view EngineKindName(EngineKind kind) {
  return kind == EngineKind::kVllm ? "vllm" : "sglang";
}

absl::StatusOr<EngineReading> ReadEngineMetrics(
    absl::Span<const PrometheusSample> samples,
    const EngineMetricsOptions& options) {
  const MetricNames& names = NamesFor(options.kind);
  EngineReading reading;
  absl::StatusOr<ByEngine> pools = ReadPool(samples, options, &reading);
  if (!pools.ok()) return pools.status();

  absl::StatusOr<ByEngine> usages =
      CollectByEngine(samples, names.usage, options);
  if (usages.ok() && usages->empty() && !names.usage_fallback.empty()) {
    usages = CollectByEngine(samples, names.usage_fallback, options);
  }
  if (!usages.ok()) return usages.status();
  reading.usage = MeanUsage(*usages, *pools);

  absl::Status status =
      ReadCount(samples, names.preemptions, options, &reading.preemptions);
  if (status.ok()) {
    status =
        ReadCount(samples, names.running, options, &reading.running_requests);
  }
  if (status.ok()) {
    status =
        ReadCount(samples, names.waiting, options, &reading.waiting_requests);
  }
  if (!status.ok()) return status;
  return reading;
}

absl::StatusOr<EngineReading> ReadEnginePage(
    absl::string_view page, const EngineMetricsOptions& options,
    const PrometheusTextOptions& text_options) {
  absl::StatusOr<std::vector<PrometheusSample>> samples =
      ParsePrometheusText(page, text_options);
  if (!samples.ok()) return samples.status();
  return ReadEngineMetrics(*samples, options);
}

}  // namespace kvgate
