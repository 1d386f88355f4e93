// Start-up of the served models: the memory source opened and read once,
// then one ModelPool per configured model, its capacity taken from the
// tightest device it runs on.
#ifndef KVGATE_PLUGIN_SERVER_MODEL_POOLS_H_
#define KVGATE_PLUGIN_SERVER_MODEL_POOLS_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "metrics/metrics.h"
#include "plugin/admission/controller.h"
#include "plugin/admission/model_pool.h"
#include "plugin/journal/lease_journal.h"
#include "plugin/memory/memory_source.h"
#include "plugin/server/config.h"

namespace kvgate {

// A memory source and its first read.
struct OpenedMemorySource {
  std::unique_ptr<MemorySource> source;
  std::vector<DeviceMemory> first_read;
};

// Opens the source `settings.memory_source` configures: NVML watching every
// GPU some model names, or static devices of static_device_bytes, as many as
// the widest tensor_parallel; then reads it once. The errors of
// MakeNvmlMemorySource and of the first Read().
absl::StatusOr<OpenedMemorySource> OpenMemorySource(
    const ServerSettings& settings);

// What every pool is built with. The pointers are not owned; `source`,
// `devices` and `metrics` are required and `metrics` and `journal` must
// outlive the pools.
struct PoolBuildOptions {
  const MemorySourceSettings* source = nullptr;
  // The source's first read: a pool on NVML gets its capacity from the
  // tightest device its gpus name (PoolDeviceBytes); a pool on the static
  // source from source->static_device_bytes.
  const std::vector<DeviceMemory>* devices = nullptr;
  // Template for each pool's controller; capacity, activation_sum, listener
  // and lease observer are set per pool.
  Controller::Options controller;
  KvgateMetrics* metrics = nullptr;
  // When set, each controller journals its leases here.
  LeaseJournal* journal = nullptr;
};

// One pool per entry of `pools`, in order, each logged as "model loaded".
// FailedPrecondition when a model's weights do not fit its device or its
// gpus name no device read (the message names the model); the errors of
// Controller::Create.
absl::StatusOr<ModelRegistry> BuildModelRegistry(
    std::vector<ModelPoolSettings> pools, const PoolBuildOptions& options);

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_SERVER_MODEL_POOLS_H_
