// The memory of the GPUs kvgate admits work onto, as a source reports it.
//
// A MemorySource is how kvgated learns how large its devices are and, for a
// live source, how much memory is free on them right now. Two sources exist:
//
//   * static (static_memory_source.h): simulated devices of a fixed size; it
//     never sees real allocations, so the controller's ledger is the only
//     truth about what is in use.
//   * nvml (nvml_memory_source.h): the NVIDIA driver's own figures, read
//     through NVML; free memory includes what other processes (the inference
//     engine, a second tenant) really hold.
//
// Sources are polled (see memory_guard.h), never called on the admit path.
#ifndef KVGATE_PLUGIN_MEMORY_MEMORY_SOURCE_H_
#define KVGATE_PLUGIN_MEMORY_MEMORY_SOURCE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvgate {

// One device's memory at the moment of a read, in bytes.
struct DeviceMemory {
  // Stable identity: "GPU-..." (or "MIG-...") from NVML, "sim-<index>" for a
  // static source. Used as the `gpu_uuid` metric label.
  std::string uuid;
  // The driver's device index (NVML ordering, which may differ from
  // CUDA_VISIBLE_DEVICES ordering), or the simulated device's position.
  uint32_t index = 0;
  // Physical memory of the device as the driver reports it, driver-reserved
  // memory included.
  uint64_t total_bytes = 0;
  // Memory no one has allocated.
  uint64_t free_bytes = 0;
  // Memory allocated. When reserved_bytes is known (NVML v2) this excludes it;
  // otherwise the driver's reservation is counted here.
  uint64_t used_bytes = 0;
  // Memory the driver or firmware sets aside (NVML v2); 0 when unknown.
  uint64_t reserved_bytes = 0;
};

// Interface to whatever reports device memory. Implementations are
// thread-safe.
class MemorySource {
 public:
  virtual ~MemorySource() = default;

  // A short name for logs and flags: "static" or "nvml".
  virtual absl::string_view Name() const = 0;

  // True when free_bytes reflects real allocations on the device (so a memory
  // guard may act on it); false when it is a simulated constant.
  virtual bool IsLive() const = 0;

  // Returns the current memory of each watched device, in the configured
  // order. Fails (naming the device and the cause) when any device cannot be
  // read; no partial result is returned.
  virtual absl::StatusOr<std::vector<DeviceMemory>> Read() = 0;
};

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_MEMORY_MEMORY_SOURCE_H_
