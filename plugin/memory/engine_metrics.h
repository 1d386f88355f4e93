// An LLM engine's KV pool, its usage and its preemptions, read from the
// samples of the engine's own Prometheus page (prometheus_text.h).
//
// Pure: samples in, an EngineReading out. kvgated scrapes the page off the
// request path; this layer only interprets it.
//
// Metrics read (series of other names, `_created` siblings of counters,
// histograms and the like are ignored):
//
//   vLLM (PrometheusStatLogger of vLLM's v1 metrics loggers; labels
//   model_name and engine, one engine per data-parallel rank):
//     pool        vllm:cache_config_info{...} (an "info" gauge set to 1;
//                 its value is not read): label kv_cache_size_tokens when it
//                 is an integer, else num_gpu_blocks x block_size (labels
//                 written from CacheConfig.metrics_info(); older servers lack
//                 kv_cache_size_tokens, and any of them may be "None" before
//                 the engine has profiled its memory).
//     usage       vllm:kv_cache_usage_perc, else the deprecated
//                 vllm:gpu_cache_usage_perc (a fraction, 1 = full).
//     preemptions vllm:num_preemptions_total (counter vllm:num_preemptions).
//     running     vllm:num_requests_running.
//     waiting     vllm:num_requests_waiting.
//
//   SGLang (SchedulerMetricsCollector of SGLang's metrics collector; labels
//   model_name, engine_type, tp_rank, pp_rank, moe_ep_rank, dp_rank, ...
//   depending on the version):
//     pool        sglang:max_total_num_tokens.
//     usage       sglang:token_usage (a fraction).
//     preemptions sglang:num_retracted_requests_total (counter).
//     running     sglang:num_running_reqs.
//     waiting     sglang:num_queue_reqs.
//
// Engines: series are grouped by an engine key, the value of label "engine"
// (vLLM) or "dp_rank" (SGLang), "" when the series lacks it. Within one key
// the largest value counts once: SGLang repeats the same figures on every
// tp_rank (and pp_rank), which must not be summed. Across keys pool tokens,
// preemptions, running and waiting are SUMMED (data-parallel engines each
// own a pool); usage is the pool-weighted mean, sum(usage_k * pool_k) /
// sum(pool_k), i.e. used tokens over pool tokens, or the plain mean of the
// keys' usage when some usage key has no pool of its own.
//
// Model filter: with Options::model_name set, a series that has a
// model_name label of another value is ignored; a series without one (e.g.
// vLLM's cache_config_info) is kept.
//
// Errors:
//   * FailedPrecondition naming the metric when the pool metric is missing
//     (after the model filter) or gives no pool (vLLM: no integer
//     kv_cache_size_tokens nor num_gpu_blocks and block_size; a pool of 0).
//   * InvalidArgument naming the metric when a value is NaN or infinite, a
//     count (pool, preemptions, requests) is negative, or a total exceeds
//     2^53 (beyond which a double does not count exactly).
// Usage: a finite value outside [0, 1] is CLAMPED into it (an engine may
// overshoot for a moment; a reading is better than none); NaN or infinite
// usage is an error, as above.
#ifndef KVGATE_PLUGIN_MEMORY_ENGINE_METRICS_H_
#define KVGATE_PLUGIN_MEMORY_ENGINE_METRICS_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "plugin/memory/prometheus_text.h"

namespace kvgate {

enum class EngineKind { kVllm, kSglang };

// "vllm" or "sglang".
absl::string_view EngineKindName(EngineKind kind);

struct EngineMetricsOptions {
  EngineKind kind = EngineKind::kVllm;
  // When not empty, only series whose model_name label (where they have
  // one) equals this are read: the model the engine serves for this pool.
  std::string model_name;
};

// What one page says about the engine (all its data-parallel engines).
struct EngineReading {
  // The KV pool, in tokens; always > 0 in a reading.
  uint64_t pool_tokens = 0;
  // The fraction of the pool in use, in [0, 1]; nullopt when the page has
  // no usage metric.
  std::optional<double> usage;
  // Requests preempted (vLLM) or retracted (SGLang) since the engine
  // started; nullopt when the page lacks the counter.
  std::optional<uint64_t> preemptions;
  // Requests running and waiting; nullopt when the page lacks the gauge.
  std::optional<uint64_t> running_requests;
  std::optional<uint64_t> waiting_requests;
  // How many engine keys (see the file comment) the pool was summed over.
  int engines = 0;
};

// Reads `samples` (one page) as an engine of `options.kind`; see the file
// comment for the metrics, the aggregation and the errors.
absl::StatusOr<EngineReading> ReadEngineMetrics(
    absl::Span<const PrometheusSample> samples,
    const EngineMetricsOptions& options);

// ParsePrometheusText then ReadEngineMetrics.
absl::StatusOr<EngineReading> ReadEnginePage(
    absl::string_view page, const EngineMetricsOptions& options,
    const PrometheusTextOptions& text_options = {});

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_MEMORY_ENGINE_METRICS_H_
