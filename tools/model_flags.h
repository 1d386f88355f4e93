// Flags that every estimator command shares (--config, --dtype, ...) and
// their translation into estimator options.
#ifndef KVGATE_TOOLS_MODEL_FLAGS_H_
#define KVGATE_TOOLS_MODEL_FLAGS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "estimator/model_spec.h"
#include "estimator/serving.h"
#include "tools/cli_flags.h"

namespace kvgate {

struct ModelFlags {
  std::string config;  // path to config.json or a preset name
  std::string dtype;   // empty: the config's
  std::string kv_cache_dtype = "auto";
  uint64_t tensor_parallel = 1;
  uint64_t block_size = 16;
  std::string attention = "flash";
  uint64_t chunked_prefill_tokens = kVllmMaxNumBatchedTokens;
  bool json = false;

  // Registers the flags above on `flags`.
  void Register(FlagSet& flags);
  // Loads the model named by --config. InvalidArgument when it is missing.
  absl::StatusOr<ModelSpec> LoadSpec() const;
  // Serving options from the flags, checked (zero sizes, unknown names).
  absl::StatusOr<ServingOptions> ToServingOptions() const;
};

// Checks that a size flag is at least 1 and at most `max`.
absl::Status CheckRange(absl::string_view flag, uint64_t value, uint64_t min,
                        uint64_t max);

}  // namespace kvgate

#endif  // KVGATE_TOOLS_MODEL_FLAGS_H_
