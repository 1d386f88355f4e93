// A memory source of simulated devices with a fixed size.
//
// Used where no GPU can be read (development, CI, load tests) or where the
// operator prefers to state capacity in configuration. Each of the
// `device_count` identical devices reports total = free =
// total_bytes_per_device and nothing used or reserved; IsLive() is false, so no
// memory guard acts on it and the controller's ledger is the only truth about
// what is in use.
#ifndef KVGATE_PLUGIN_MEMORY_STATIC_MEMORY_SOURCE_H_
#define KVGATE_PLUGIN_MEMORY_STATIC_MEMORY_SOURCE_H_

#include <cstdint>
#include <memory>

#include "plugin/memory/memory_source.h"

namespace kvgate {

// Returns a source of `device_count` devices named "sim-0", "sim-1", ...
// each of `total_bytes_per_device` bytes. Configuration is validated by the
// caller; a source built with device_count == 0 fails every Read() with
// FAILED_PRECONDITION rather than report no memory at all.
std::unique_ptr<MemorySource> MakeStaticMemorySource(
    uint64_t total_bytes_per_device, uint32_t device_count = 1);

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_MEMORY_STATIC_MEMORY_SOURCE_H_
