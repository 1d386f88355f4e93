// libFuzzer target: an engine's Prometheus page (prometheus_text.h) and the
// reading kvgated takes from it (engine_metrics.h).
//
// Bytes -> ParsePrometheusText -> ReadEngineMetrics, for vLLM and SGLang,
// with and without a model filter. Nothing may crash; parsing fails only
// with InvalidArgument and a message naming a line or the page; every
// sample parsed has a valid name; a reading is refused only with
// InvalidArgument or FailedPrecondition, and a reading's pool is > 0 and at
// most 2^53, its usage in [0, 1].
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "plugin/memory/engine_metrics.h"
#include "plugin/memory/prometheus_text.h"

namespace kvgate {
namespace {

void Fail(const char* what, absl::string_view bytes) {
  std::fprintf(stderr, "fuzz_engine_metrics: %s; input \"%s\"\n", what,
               absl::CEscape(bytes.substr(0, 4096)).c_str());
  std::abort();
}

void CheckReading(const std::vector<PrometheusSample>& samples,
                  const EngineMetricsOptions& options,
                  absl::string_view bytes) {
  absl::StatusOr<EngineReading> reading = ReadEngineMetrics(samples, options);
  if (!reading.ok()) {
    const absl::StatusCode code = reading.status().code();
    if (code != absl::StatusCode::kInvalidArgument &&
        code != absl::StatusCode::kFailedPrecondition) {
      Fail("reading failed with an unexpected code", bytes);
    }
    if (reading.status().message().empty())
      Fail("error without a reason", bytes);
    return;
  }
  if (reading->pool_tokens == 0 || reading->pool_tokens > (uint64_t{1} << 53)) {
    Fail("pool tokens out of (0, 2^53]", bytes);
  }
  if (reading->engines < 1) Fail("a reading without an engine", bytes);
  if (reading->usage.has_value() &&
      !(*reading->usage >= 0.0 && *reading->usage <= 1.0)) {
    Fail("usage outside [0, 1]", bytes);
  }
}

void CheckPage(absl::string_view bytes) {
  absl::StatusOr<std::vector<PrometheusSample>> samples =
      ParsePrometheusText(bytes);
  if (!samples.ok()) {
    if (samples.status().code() != absl::StatusCode::kInvalidArgument) {
      Fail("parsing failed with an unexpected code", bytes);
    }
    const absl::string_view message = samples.status().message();
    if (!absl::StartsWith(message, "line ") &&
        !absl::StartsWith(message, "page is ")) {
      Fail("parse error names neither a line nor the page", bytes);
    }
    return;
  }
  for (const PrometheusSample& sample : *samples) {
    if (sample.name.empty()) Fail("a sample without a name", bytes);
    for (const auto& [name, value] : sample.labels) {
      if (name.empty()) Fail("a label without a name", bytes);
    }
  }
  for (EngineKind kind : {EngineKind::kVllm, EngineKind::kSglang}) {
    EngineMetricsOptions options;
    options.kind = kind;
    CheckReading(*samples, options, bytes);
    options.model_name = "m";
    CheckReading(*samples, options, bytes);
  }
}

}  // namespace
}  // namespace kvgate

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvgate::CheckPage(
      absl::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
