// ModelPool: one served model — its estimator, its admission controller and
// the live state of the GPUs it runs on. ModelRegistry: the pools by name.
#ifndef KVGATE_PLUGIN_ADMISSION_MODEL_POOL_H_
#define KVGATE_PLUGIN_ADMISSION_MODEL_POOL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "estimator/serving.h"
#include "plugin/admission/controller.h"

namespace kvgate {

// The model server a pool admits for (docs/design.md, "Engines").
struct EngineSettings {
  enum class Kind {
    // Allocates KV and activations per request: the budget is the device
    // minus weights, and a lease reserves KV plus the activation reserve.
    kDynamic,
    // Take their KV pool at start-up: the budget is that pool, read from
    // the engine's metrics, and a lease reserves block-rounded KV only.
    kVllm,
    kSglang,
  };
  Kind kind = Kind::kDynamic;
  // The engine's Prometheus endpoint (vllm, sglang).
  std::string metrics_url;
  absl::Duration poll_interval = absl::Milliseconds(200);
  absl::Duration preemption_cooldown = absl::Seconds(5);

  // Whether the engine preallocates its KV pool (vllm, sglang).
  bool preallocates() const { return kind != Kind::kDynamic; }
  // "dynamic", "vllm" or "sglang".
  static const char* KindName(Kind kind);
};

// One model pool, resolved: the estimator's model and the pool's budget
// parameters.
struct ModelPoolSettings {
  std::string name;
  ServingModel model;
  // GPUs for the nvml source, by index or UUID.
  std::vector<std::string> gpus;
  double gpu_memory_utilization = 0.9;
  uint64_t runtime_overhead_bytes = 0;
  bool activation_sum = false;
  EngineSettings engine;
};

// The bytes a pool may reserve on a device of `device_bytes`:
// device_bytes * utilization - weights - runtime overhead.
// FailedPrecondition when the weights alone do not fit.
absl::StatusOr<uint64_t> PoolCapacity(const ModelPoolSettings& pool,
                                      uint64_t device_bytes);

// One served model: its settings and estimator, its controller, its
// capacity, and the free memory of its tightest GPU as last polled. The
// controller is thread-safe; device_free_bytes is an atomic.
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

  // What a lease reserves for a batch the estimator sized at `kv_bytes` of
  // KV cache and `activation_bytes` of activation peak: both for a dynamic
  // engine; the (block-rounded) KV only for a preallocating one, which set
  // its activation peak aside before taking its pool.
  AdmitCost LeaseCost(uint64_t kv_bytes, uint64_t activation_bytes) const {
    return {kv_bytes,
            settings_.engine.preallocates() ? uint64_t{0} : activation_bytes};
  }

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

// The pools by model name. Filled before serving, then read-only: lookups
// need no lock.
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
  // "'a', 'b'": the served model names, for an error about an unknown one.
  std::string QuotedNames() const {
    std::string out;
    for (const auto& pool : pools_) {
      absl::StrAppend(&out, out.empty() ? "" : ", ", "'", pool->name(), "'");
    }
    return out;
  }

 private:
  std::vector<std::unique_ptr<ModelPool>> pools_;
};

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_ADMISSION_MODEL_POOL_H_
