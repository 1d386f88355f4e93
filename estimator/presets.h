// Model configs compiled into the binary (from estimator/presets/*.json, by
// the build), so that kvgated and kvgate work without any file.
#ifndef KVGATE_ESTIMATOR_PRESETS_H_
#define KVGATE_ESTIMATOR_PRESETS_H_

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace kvgate {

struct PresetConfig {
  absl::string_view name;         // file name without .json
  absl::string_view config_json;  // the config.json text
};

// All built-in presets, sorted by name. Defined in the generated
// presets_data.cc.
absl::Span<const PresetConfig> BuiltinPresets();

}  // namespace kvgate

#endif  // KVGATE_ESTIMATOR_PRESETS_H_
