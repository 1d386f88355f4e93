// ModelPool: one served model — its estimator, its admission controller and
// the live state of the GPUs it runs on. ModelRegistry: the pools by name.
#ifndef KVGATE_PLUGIN_MODEL_POOL_H_
#define KVGATE_PLUGIN_MODEL_POOL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "estimator/serving.h"
#include "plugin/config.h"
#include "plugin/controller.h"

namespace kvgate {

class ModelPool {
 public:
  ModelPool(ModelPoolSettings settings, uint64_t capacity_bytes,
            std::unique_ptr<Controller> controller)
      : settings_(std::move(settings)),
        capacity_bytes_(capacity_bytes),
        controller_(std::move(controller)) {}

  const std::string& name() const { return settings_.name; }
  const ModelPoolSettings& settings() const { return settings_; }
  const ServingModel& model() const { return settings_.model; }
  Controller& controller() const { return *controller_; }
  uint64_t capacity_bytes() const { return capacity_bytes_; }

  // Free memory of the tightest GPU of this pool as last polled (for a
  // static source: the simulated device minus the ledger).
  uint64_t device_free_bytes() const {
    return device_free_bytes_.load(std::memory_order_relaxed);
  }
  void set_device_free_bytes(uint64_t bytes) {
    device_free_bytes_.store(bytes, std::memory_order_relaxed);
  }

 private:
  ModelPoolSettings settings_;
  uint64_t capacity_bytes_;
  std::unique_ptr<Controller> controller_;
  std::atomic<uint64_t> device_free_bytes_{0};
};

class ModelRegistry {
 public:
  void Add(std::unique_ptr<ModelPool> pool) {
    pools_.push_back(std::move(pool));
  }
  // nullptr when no pool has that name.
  ModelPool* Find(absl::string_view name) const {
    for (const auto& pool : pools_) {
      if (pool->name() == name) return pool.get();
    }
    return nullptr;
  }
  const std::vector<std::unique_ptr<ModelPool>>& pools() const {
    return pools_;
  }

 private:
  std::vector<std::unique_ptr<ModelPool>> pools_;
};

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_MODEL_POOL_H_
