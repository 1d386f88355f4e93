// One-line JSON log records on stderr, for kvgated's operational events
// (start-up, configuration, memory-source failures, drain). Never called on
// the admit path.
//
//   LogInfo("listening", {{"address", "unix:/tmp/kvgate.sock"}});
//   -> {"ts":"2026-11-23T11:50:10.123Z","level":"info","msg":"listening",
//       "address":"unix:/tmp/kvgate.sock"}
#ifndef KVGATE_PLUGIN_BASE_JSON_LOG_H_
#define KVGATE_PLUGIN_BASE_JSON_LOG_H_

#include <initializer_list>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"

namespace kvgate {

using LogFields =
    std::initializer_list<std::pair<absl::string_view, std::string>>;

// Writes one record with a single write(2), so concurrent records do not
// interleave.
void LogJson(absl::string_view level, absl::string_view message,
             LogFields fields = {});

inline void LogInfo(absl::string_view message, LogFields fields = {}) {
  LogJson("info", message, fields);
}
inline void LogWarning(absl::string_view message, LogFields fields = {}) {
  LogJson("warning", message, fields);
}
inline void LogError(absl::string_view message, LogFields fields = {}) {
  LogJson("error", message, fields);
}

// `text` as a JSON string literal, quotes included.
std::string JsonQuote(absl::string_view text);

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_BASE_JSON_LOG_H_
