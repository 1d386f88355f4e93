#include "plugin/server/model_pools.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "estimator/plan.h"
#include "plugin/admission/clock.h"
#include "plugin/base/json_log.h"
#include "plugin/memory/nvml_memory_source.h"
#include "plugin/memory/pool_memory.h"
#include "plugin/memory/static_memory_source.h"

namespace kvgate {
namespace {

// NVML options watching every GPU some model names, each once.
NvmlOptions NvmlOptionsFor(const ServerSettings& settings) {
  NvmlOptions nvml;
  nvml.library_path = settings.memory_source.nvml_library;
  for (const ModelPoolSettings& m : settings.models) {
    for (const std::string& gpu : m.gpus) {
      if (std::find(nvml.devices.begin(), nvml.devices.end(), gpu) ==
          nvml.devices.end()) {
        nvml.devices.push_back(gpu);
      }
    }
  }
  return nvml;
}

// The device bytes `pool`'s capacity is computed from.
absl::StatusOr<uint64_t> DeviceBytesFor(const ModelPoolSettings& pool,
                                        const PoolBuildOptions& options) {
  if (options.source->kind != MemorySourceSettings::Kind::kNvml) {
    return options.source->static_device_bytes;
  }
  absl::StatusOr<uint64_t> bytes = PoolDeviceBytes(pool.gpus, *options.devices);
  if (!bytes.ok()) {
    return absl::Status(
        bytes.status().code(),
        absl::StrCat("model ", pool.name, ": ", bytes.status().message()));
  }
  return bytes;
}

// The capacity a pool starts on. A dynamic engine's: the device x
// utilization - weights - overhead (PoolCapacity). A preallocating engine's,
// until it answers: the KV pool `kvgate plan` says it takes on that device
// (its tokens x KV bytes per token); PoolCapacity's figure, with a warning,
// when the plan fails (the engine will tell the real pool).
absl::StatusOr<uint64_t> StartCapacity(const ModelPoolSettings& m,
                                       uint64_t device_bytes) {
  absl::StatusOr<uint64_t> dynamic = PoolCapacity(m, device_bytes);
  if (!dynamic.ok() || !m.engine.preallocates()) return dynamic;
  PlanOptions o;
  o.gpu_memory_bytes = device_bytes;
  o.gpu_memory_utilization = m.gpu_memory_utilization;
  o.serving = m.model.options();
  o.max_model_len = m.model.max_model_len();
  absl::StatusOr<Plan> plan = PlanServing(m.model.spec(), o);
  if (!plan.ok() || plan->kv_cache_tokens == 0) {
    LogWarning("no plan for the engine's pool: starting on the device budget",
               {{"model", m.name},
                {"error", plan.ok() ? "empty pool" : plan.status().ToString()},
                {"capacity_bytes", absl::StrCat(*dynamic)}});
    return dynamic;
  }
  return plan->kv_cache_tokens * m.model.kv_cache_bytes_per_token();
}

// One pool, its controller made from the template in `options`.
absl::StatusOr<std::unique_ptr<ModelPool>> BuildPool(
    ModelPoolSettings m, const PoolBuildOptions& options) {
  absl::StatusOr<uint64_t> device_bytes = DeviceBytesFor(m, options);
  if (!device_bytes.ok()) return device_bytes.status();
  absl::StatusOr<uint64_t> capacity = StartCapacity(m, *device_bytes);
  if (!capacity.ok()) return capacity.status();
  Controller::Options controller_options = options.controller;
  controller_options.capacity_bytes = *capacity;
  controller_options.activation_sum = m.activation_sum;
  controller_options.listener = options.metrics->ListenerFor(m.name);
  if (options.journal != nullptr) {
    controller_options.lease_observer = options.journal->ObserverFor(m.name);
  }
  absl::StatusOr<std::unique_ptr<Controller>> controller =
      Controller::Create(controller_options, RealClock());
  if (!controller.ok()) return controller.status();
  LogInfo("model loaded",
          {{"model", m.name},
           {"engine", EngineSettings::KindName(m.engine.kind)},
           {"model_type", m.model.spec().model_type},
           {"weights_bytes", absl::StrCat(m.model.weights_bytes())},
           {"kv_cache_bytes_per_token",
            absl::StrCat(m.model.kv_cache_bytes_per_token())},
           {"capacity_bytes", absl::StrCat(*capacity)},
           {"device_bytes", absl::StrCat(*device_bytes)}});
  return std::make_unique<ModelPool>(std::move(m), *capacity,
                                     *std::move(controller));
}

}  // namespace

absl::StatusOr<OpenedMemorySource> OpenMemorySource(
    const ServerSettings& settings) {
  OpenedMemorySource opened;
  const MemorySourceSettings& src = settings.memory_source;
  if (src.kind == MemorySourceSettings::Kind::kNvml) {
    absl::StatusOr<std::unique_ptr<MemorySource>> made =
        MakeNvmlMemorySource(NvmlOptionsFor(settings));
    if (!made.ok()) return made.status();
    opened.source = *std::move(made);
  } else {
    uint32_t devices = 1;
    for (const ModelPoolSettings& m : settings.models) {
      devices = std::max(devices, m.model.options().tensor_parallel);
    }
    opened.source = MakeStaticMemorySource(src.static_device_bytes, devices);
  }
  absl::StatusOr<std::vector<DeviceMemory>> first_read = opened.source->Read();
  if (!first_read.ok()) return first_read.status();
  opened.first_read = *std::move(first_read);
  return opened;
}

absl::StatusOr<ModelRegistry> BuildModelRegistry(
    std::vector<ModelPoolSettings> pools, const PoolBuildOptions& options) {
  ModelRegistry registry;
  for (ModelPoolSettings& m : pools) {
    absl::StatusOr<std::unique_ptr<ModelPool>> pool =
        BuildPool(std::move(m), options);
    if (!pool.ok()) return pool.status();
    registry.Add(*std::move(pool));
  }
  return registry;
}

}  // namespace kvgate
