#include "plugin/memory/pool_memory.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kvgate {
namespace {

// "0=GPU-aaaa, 1=GPU-bbbb", for error messages.
std::string DescribeDevices(const std::vector<DeviceMemory>& devices) {
  if (devices.empty()) return "none";
  return absl::StrJoin(devices, ", ",
                       [](std::string* out, const DeviceMemory& d) {
                         absl::StrAppend(out, d.index, "=", d.uuid);
                       });
}

}  // namespace

bool GpuNamesDevice(const std::string& gpu, const DeviceMemory& device) {
  uint32_t index = 0;
  if (absl::SimpleAtoi(gpu, &index)) return device.index == index;
  return device.uuid == gpu;
}

std::vector<const DeviceMemory*> MatchDevices(
    absl::Span<const std::string> gpus,
    const std::vector<DeviceMemory>& devices) {
  std::vector<const DeviceMemory*> out;
  for (const std::string& gpu : gpus) {
    for (const DeviceMemory& d : devices) {
      if (GpuNamesDevice(gpu, d)) out.push_back(&d);
    }
  }
  return out;
}

absl::StatusOr<uint64_t> PoolDeviceBytes(
    absl::Span<const std::string> gpus,
    const std::vector<DeviceMemory>& devices) {
  if (gpus.empty()) {
    return absl::FailedPreconditionError("no gpus given for the pool");
  }
  std::vector<std::string> missing;
  uint64_t bytes = UINT64_MAX;
  for (const std::string& gpu : gpus) {
    bool found = false;
    for (const DeviceMemory& d : devices) {
      if (!GpuNamesDevice(gpu, d)) continue;
      found = true;
      // What CUDA can allocate: the driver's reservation is not usable.
      const uint64_t usable = d.total_bytes > d.reserved_bytes
                                  ? d.total_bytes - d.reserved_bytes
                                  : 0;
      bytes = std::min(bytes, usable);
    }
    if (!found) missing.push_back(absl::StrCat("\"", gpu, "\""));
  }
  if (!missing.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "gpus ", absl::StrJoin(missing, ", "),
        " name none of the devices read (", DescribeDevices(devices), ")"));
  }
  return bytes;
}

PoolMemory JudgePoolMemory(const MemoryGuard::Reading& reading,
                           const PoolMemoryInput& pool) {
  PoolMemory out;
  out.pressure = reading.pressure;
  if (!reading.ok) return out;
  if (pool.live) {
    uint64_t min_free = UINT64_MAX;
    for (const DeviceMemory* d : MatchDevices(pool.gpus, reading.devices)) {
      min_free = std::min(min_free, d->free_bytes);
    }
    if (min_free == UINT64_MAX) min_free = reading.min_free_bytes;
    out.pressure = min_free < pool.free_margin_bytes;
    out.device_free_bytes = min_free;
  } else {
    // Simulated device: what the ledger leaves of it.
    const uint64_t total = pool.static_device_bytes;
    const uint64_t used = pool.ledger_used_bytes;
    out.device_free_bytes = total > used ? total - used : 0;
  }
  return out;
}

std::vector<DeviceMemory> StaticDevicesAfterLedgers(
    const std::vector<DeviceMemory>& devices,
    absl::Span<const PoolLedgerUse> pools) {
  std::vector<DeviceMemory> out = devices;
  for (DeviceMemory& device : out) {
    uint64_t used = 0;
    for (const PoolLedgerUse& pool : pools) {
      for (const std::string& gpu : pool.gpus) {
        if (!GpuNamesDevice(gpu, device)) continue;
        used = std::min(device.total_bytes,
                        used + std::min(device.total_bytes, pool.used_bytes));
        break;  // a pool's ledger counts once per device
      }
    }
    device.used_bytes = used;
    device.free_bytes = device.total_bytes - used;
  }
  return out;
}

}  // namespace kvgate
