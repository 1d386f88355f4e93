// A parser of the Prometheus text exposition format, version 0.0.4: the
// page an LLM engine (vLLM, SGLang) serves on /metrics.
//
// Pure: bytes in, samples out; no I/O, no state. kvgated reads an engine's
// page off the request path and turns its samples into an EngineReading
// (engine_metrics.h).
//
// What is accepted, line by line (LF or CRLF endings; the last line may lack
// one):
//   * blank lines (nothing but blanks and tabs);
//   * comments: a line whose first non-blank character is '#'. `# HELP` and
//     `# TYPE` lines are comments like any other: their content is not
//     checked, because nothing here depends on a metric's type;
//   * samples: `name[{labels}] value [timestamp]`, tokens separated by blanks
//     or tabs, where
//       - name matches [a-zA-Z_:][a-zA-Z0-9_:]*;
//       - labels are `label="value"` pairs separated by commas, an optional
//         trailing comma and `{}` allowed, blanks allowed around the tokens;
//         a label name matches [a-zA-Z_][a-zA-Z0-9_]* and may appear once;
//         a value is any bytes between double quotes in which `\\`, `\"` and
//         `\n` are the only escapes (any other backslash is an error);
//       - value is a decimal or scientific floating-point number (an optional
//         sign, e.g. 1.5e+09, -3, .5), or NaN, +Inf, -Inf or Inf; one whose
//         magnitude a double cannot hold is an error;
//       - timestamp, when present, is an integer of milliseconds (int64).
//
// Strictness: one malformed line fails the whole page (the page is then
// "malformed" and none of its samples is returned). An engine writes its
// page in one go, so a bad line means a truncated or foreign page, whose
// other lines are not to be trusted either. Errors are InvalidArgument and
// name the 1-based line number and what is wrong.
//
// Bounds: a page over Options::max_page_bytes or a line over
// Options::max_line_bytes is rejected before (or while) it is parsed, so
// the work and memory per page stay bounded whatever the engine serves.
#ifndef KVGATE_PLUGIN_MEMORY_PROMETHEUS_TEXT_H_
#define KVGATE_PLUGIN_MEMORY_PROMETHEUS_TEXT_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvgate {

// One sample line of a page.
struct PrometheusSample {
  // The metric name as written, suffix included (e.g.
  // "vllm:num_preemptions_total", "x_bucket").
  std::string name;
  // Label name -> unescaped label value, ordered by name.
  std::map<std::string, std::string> labels;
  // The sample's value; may be NaN or infinite.
  double value = 0;
  // The optional timestamp, in milliseconds since the epoch.
  std::optional<int64_t> timestamp_ms;

  // The value of label `label_name`, or nullptr when the sample lacks it.
  const std::string* FindLabel(absl::string_view label_name) const;
};

struct PrometheusTextOptions {
  // Pages larger than this are rejected without being parsed.
  size_t max_page_bytes = size_t{4} << 20;
  // Lines longer than this (line end excluded) are rejected. Real pages'
  // longest lines (vLLM's cache_config_info) are well under 1 KiB.
  size_t max_line_bytes = size_t{64} << 10;
};

// Parses `page`, returning its samples in page order. InvalidArgument when
// the page is over a bound or any line is malformed (see the file comment).
absl::StatusOr<std::vector<PrometheusSample>> ParsePrometheusText(
    absl::string_view page, const PrometheusTextOptions& options = {});

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_MEMORY_PROMETHEUS_TEXT_H_
