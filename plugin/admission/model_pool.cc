#include "plugin/admission/model_pool.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "estimator/byte_size.h"

namespace kvgate {

const char* EngineSettings::KindName(Kind kind) {
  switch (kind) {
    case EngineSettings::Kind::kVllm:
      return "vllm";
    case EngineSettings::Kind::kSglang:
      return "sglang";
    case EngineSettings::Kind::kDynamic:
      break;
  }
  return "dynamic";
}

absl::StatusOr<uint64_t> PoolCapacity(const ModelPoolSettings& pool,
                                      uint64_t device_bytes) {
  const uint64_t usable = static_cast<uint64_t>(std::floor(
      static_cast<double>(device_bytes) * pool.gpu_memory_utilization));
  const uint64_t fixed =
      pool.model.weights_bytes() + pool.runtime_overhead_bytes;
  if (fixed >= usable) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model '", pool.name, "' does not fit: weights ",
        ByteSize(pool.model.weights_bytes()), " + overhead ",
        ByteSize(pool.runtime_overhead_bytes), " >= ", ByteSize(usable),
        " usable (", ByteSize(device_bytes), " x ", pool.gpu_memory_utilization,
        ")"));
  }
  return usable - fixed;
}

}  // namespace kvgate
