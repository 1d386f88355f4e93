#include "plugin/memory/static_memory_source.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvgate {
namespace {

class StaticMemorySource final : public MemorySource {
 public:
  StaticMemorySource(uint64_t total_bytes_per_device, uint32_t device_count) {
    devices_.reserve(device_count);
    for (uint32_t i = 0; i < device_count; ++i) {
      DeviceMemory device;
      device.uuid = absl::StrCat("sim-", i);
      device.index = i;
      device.total_bytes = total_bytes_per_device;
      device.free_bytes = total_bytes_per_device;
      devices_.push_back(std::move(device));
    }
  }

  absl::string_view Name() const override { return "static"; }
  bool IsLive() const override { return false; }

  absl::StatusOr<std::vector<DeviceMemory>> Read() override {
    if (devices_.empty()) {
      return absl::FailedPreconditionError(
          "static memory source has no devices; configure at least one");
    }
    return devices_;  // Immutable after construction: safe to copy unlocked.
  }

 private:
  std::vector<DeviceMemory> devices_;
};

}  // namespace

std::unique_ptr<MemorySource> MakeStaticMemorySource(
    uint64_t total_bytes_per_device, uint32_t device_count) {
  return std::make_unique<StaticMemorySource>(total_bytes_per_device,
                                              device_count);
}

}  // namespace kvgate
