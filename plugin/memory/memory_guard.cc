#include "plugin/memory/memory_guard.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace kvgate {

MemoryGuard::MemoryGuard(MemorySource* source, Options options)
    : source_(source), options_(options) {}

MemoryGuard::Reading MemoryGuard::Poll() {
  Reading reading;
  absl::StatusOr<std::vector<DeviceMemory>> devices = source_->Read();
  if (devices.ok() && devices->empty()) {
    devices = absl::FailedPreconditionError(
        absl::StrCat(source_->Name(), " memory source reported no devices"));
  }
  if (!devices.ok()) {
    reading.error = devices.status();
    reading.pressure = !options_.fail_open;
    return reading;
  }
  reading.ok = true;
  reading.devices = *std::move(devices);
  reading.min_free_bytes = std::numeric_limits<uint64_t>::max();
  for (const DeviceMemory& device : reading.devices) {
    reading.min_free_bytes =
        std::min(reading.min_free_bytes, device.free_bytes);
  }
  reading.pressure =
      source_->IsLive() && reading.min_free_bytes < options_.free_margin_bytes;
  return reading;
}

}  // namespace kvgate
