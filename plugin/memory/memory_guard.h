// The live memory guard: pauses admission when a GPU runs short of free
// memory, whatever the controller's ledger says.
//
// The ledger counts only what kvgate itself reserved; the engine's own
// allocator, fragmentation, a CUDA context or another process on the GPU can
// take memory the ledger never sees. kvgated polls the guard on an
// interval and, while it reports pressure, stops admitting (see
// docs/design.md, Admission).
//
// A guard over a source that is not live (static) never reports pressure:
// its free figure is a constant. When the source cannot be read the guard
// fails closed (pressure) unless Options::fail_open is set.
//
// Poll() is thread-safe when the source is.
#ifndef KVGATE_PLUGIN_MEMORY_MEMORY_GUARD_H_
#define KVGATE_PLUGIN_MEMORY_MEMORY_GUARD_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "plugin/memory/memory_source.h"

namespace kvgate {

class MemoryGuard {
 public:
  struct Options {
    // Admission pauses while any watched device has less free memory than
    // this. The default leaves room for an engine's transient allocations
    // (CUDA graphs, sampler buffers) between polls.
    uint64_t free_margin_bytes = 512ull << 20;
    // What to do when the source cannot be read: false (the default) pauses
    // admission, because an unreadable GPU may be a lost one; true keeps
    // admitting on the ledger alone.
    bool fail_open = false;
  };

  // The result of one poll.
  struct Reading {
    // True when the source was read.
    bool ok = false;
    // True when admission must pause: a live source read a device with
    // free_bytes < free_margin_bytes, or the read failed and fail_open is
    // false.
    bool pressure = false;
    // The smallest free_bytes among the devices read (the tightest GPU);
    // 0 when the read failed.
    uint64_t min_free_bytes = 0;
    // What the source reported, in its order; empty when the read failed.
    std::vector<DeviceMemory> devices;
    // Why the read failed; OK when it did not.
    absl::Status error;
  };

  // `source` is not owned and must outlive the guard.
  MemoryGuard(MemorySource* source, Options options);

  // Reads the source once and judges the result.
  Reading Poll();

  const Options& options() const { return options_; }

 private:
  MemorySource* const source_;
  const Options options_;
};

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_MEMORY_MEMORY_GUARD_H_
