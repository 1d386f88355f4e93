// A model pool's view of device memory: which of the devices a source read
// are the pool's, how large the pool's tightest device is, and whether the
// pool is under memory pressure after a poll.
//
// Pure functions over DeviceMemory and MemoryGuard::Reading, so that the
// server's start-up (capacity) and its poller (pressure) judge a pool's GPUs
// the same way, and tests can check the rules without a source or a thread.
//
// A pool names its GPUs as configured (ModelPoolSettings::gpus): an entry that
// is an integer ("0", "1") is an NVML device index, anything else a UUID
// ("GPU-...", "MIG-...", or "sim-0" for a static source).
#ifndef KVGATE_PLUGIN_MEMORY_POOL_MEMORY_H_
#define KVGATE_PLUGIN_MEMORY_POOL_MEMORY_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "plugin/memory/memory_guard.h"
#include "plugin/memory/memory_source.h"

namespace kvgate {

// Whether the configured GPU name `gpu` names `device`: by index when `gpu`
// parses as an unsigned integer, by UUID otherwise.
bool GpuNamesDevice(const std::string& gpu, const DeviceMemory& device);

// The devices among `devices` that the entries of `gpus` name, in the order
// of `gpus` (a device named twice appears twice). The pointers point into
// `devices`.
std::vector<const DeviceMemory*> MatchDevices(
    absl::Span<const std::string> gpus,
    const std::vector<DeviceMemory>& devices);

// What CUDA can allocate on the tightest device `gpus` names: the smallest
// total_bytes - reserved_bytes (the driver's reservation is not usable) among
// the matched devices. FailedPrecondition, naming every entry of `gpus` that
// names none of `devices` (and the devices read), when any does not match or
// `gpus` is empty: a pool's capacity must not rest on a device that was not
// read.
absl::StatusOr<uint64_t> PoolDeviceBytes(
    absl::Span<const std::string> gpus,
    const std::vector<DeviceMemory>& devices);

// What JudgePoolMemory needs to know about one pool besides the reading.
struct PoolMemoryInput {
  // True for a live source (nvml), whose free figures are real; false for a
  // static one, whose devices are simulated.
  bool live = false;
  // The pool's GPUs, as configured (see the file comment); the strings must
  // outlive the call.
  absl::Span<const std::string> gpus;
  // Admission pauses while the pool's tightest device has less free memory
  // than this (MemoryGuard::Options::free_margin_bytes).
  uint64_t free_margin_bytes = 0;
  // Static source: the bytes of one simulated device.
  uint64_t static_device_bytes = 0;
  // Static source: what the pool's ledger holds on the device, its weights
  // plus the bytes its controller has reserved.
  uint64_t ledger_used_bytes = 0;
};

// The judgement of one pool after one poll.
struct PoolMemory {
  // Whether the pool's admission must pause.
  bool pressure = false;
  // The free bytes of the pool's tightest device, to publish; nullopt when
  // the read failed, so that the last figure stays.
  std::optional<uint64_t> device_free_bytes;
};

// Judges one pool on `reading`:
//   * live source, read ok: free = the smallest free_bytes among the devices
//     the pool's gpus name (reading.min_free_bytes when they name none);
//     pressure = free < free_margin_bytes.
//   * static source, read ok: free = static_device_bytes - ledger_used_bytes,
//     0 when the ledger holds more; pressure = reading.pressure (false from
//     a guard over a static source).
//   * read failed: pressure = reading.pressure (the guard's fail-open or
//     fail-closed answer); device_free_bytes unset.
PoolMemory JudgePoolMemory(const MemoryGuard::Reading& reading,
                           const PoolMemoryInput& pool);

// What one pool's ledger holds on the devices its gpus name (weights plus
// reserved bytes), for StaticDevicesAfterLedgers.
struct PoolLedgerUse {
  // The pool's GPUs, as configured; the strings must outlive the call.
  absl::Span<const std::string> gpus;
  uint64_t used_bytes = 0;
};

// A static source's simulated devices as the ledgers see them, so that the
// device series (kvgate_device_free_bytes) tell the story JudgePoolMemory
// and GetBudget tell: each device's used_bytes is the sum of used_bytes over
// the pools whose gpus name it (at most total_bytes), free_bytes is
// total_bytes - used_bytes. With one pool per device, a device's free bytes
// equal that pool's device_free_bytes.
std::vector<DeviceMemory> StaticDevicesAfterLedgers(
    const std::vector<DeviceMemory>& devices,
    absl::Span<const PoolLedgerUse> pools);

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_MEMORY_POOL_MEMORY_H_
