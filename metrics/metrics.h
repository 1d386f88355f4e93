// KvgateMetrics: every Prometheus metric kvgated exports, owned by one object.
//
// The Server (plugin/server/server.h) builds one KvgateMetrics and hands it
// down: each model pool's Controller gets ListenerFor(model) as its
// ControllerListener, the gRPC service calls ObserveAdmitDuration, and the
// pollers (budget, memory source, memory guard) call SetBudget, SetDevices,
// IncMemorySourceError and SetMemoryPressure. MetricsServer (metrics_server.h)
// serves registry(). There are no global registries.
//
// The hot path takes no lock of its own. Every label combination the admit
// path can touch is resolved when the model's series are created (all
// decision x reason x priority counters, the model's queue-wait histogram),
// so a decision is an array lookup and an atomic add. The histograms are
// DurationHistograms (lock-free; prometheus::Histogram locks a mutex). The
// pollers' setters and ListenerFor take this object's mutex; they never run
// under the controller's lock.
//
// Series (label values are the wire API's names, upper-case):
//   kvgate_build_info{version,revision}                           gauge, 1
//   kvgate_admission_decisions_total{model,decision,reason,priority} counter
//       decision ADMITTED|REJECTED; reason NONE (admitted) or the RejectReason
//       name (QUEUE_TIMEOUT, QUEUE_FULL, NEVER_FITS, MEMORY_PRESSURE, SHED,
//       DRAINING, CANCELLED); priority CRITICAL|STANDARD|SHEDDABLE.
//   kvgate_queue_wait_seconds{model}                              histogram
//       time in the queue of each request answered from the queue
//   kvgate_admit_duration_seconds                                 histogram
//       handling time of an Admit call, queueing included
//   kvgate_lease_expirations_total{model}                         counter
//   kvgate_budget_{capacity,weights,reserved,free,activation_reserve}_bytes
//       {model}                                                   gauges
//   kvgate_active_leases{model}, kvgate_queue_requests{model,priority},
//   kvgate_queue_bytes{model}, kvgate_memory_pressure{model}      gauges
//   kvgate_budget_used_ratio{model}, kvgate_queued_requests{model} gauges
//       the admission view for a router (docs/design.md, "Cluster scale"):
//       max(reserved, engine use) / capacity, and the queue at all
//       priorities; set after every controller call (OnBudget), not only
//       by the pollers
//   kvgate_device_{total,free,used}_bytes{gpu_uuid}               gauges
//   kvgate_memory_source_errors_total{source}                     counter
//   kvgate_engine_up{model}, kvgate_engine_kv_cache_usage_ratio{model},
//   kvgate_engine_kv_capacity_tokens{model}                       gauges
//   kvgate_engine_preemptions_total{model},
//   kvgate_engine_scrape_errors_total{model}                      counters
//       only for the pools of a vllm or sglang engine (docs/design.md,
//       "Engines")
#ifndef KVGATE_METRICS_METRICS_H_
#define KVGATE_METRICS_METRICS_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "metrics/duration_histogram.h"
#include "plugin/admission/controller.h"
#include "plugin/memory/memory_source.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"

namespace kvgate {

// Upper bounds of both duration histograms: 50 µs (a decision that never
// waits) to 30 s (Controller::Options::max_queue_wait's default), about three
// per decade.
const std::vector<absl::Duration>& DurationBuckets();

// The memory source names whose error counters exist from the start, so that
// a rate over them is 0 rather than absent before the first error.
inline constexpr std::array<const char*, 2> kKnownMemorySources = {"static",
                                                                   "nvml"};

// Every metric kvgated exports, in one registry (see the top of this file
// for the series). Setters are thread-safe; the decision path takes no lock.
class KvgateMetrics {
 public:
  struct Options {
    std::string version = "0.1.0";
    std::string revision = "unknown";
  };

  explicit KvgateMetrics(const Options& options);
  ~KvgateMetrics();

  KvgateMetrics(const KvgateMetrics&) = delete;
  KvgateMetrics& operator=(const KvgateMetrics&) = delete;

  // The registry to expose. It also renders the lock-free histograms, so it
  // must be collected through this pointer (Collect is virtual). It stays
  // valid (and its histograms with it) after this object is destroyed.
  std::shared_ptr<prometheus::Registry> registry() const;

  // A listener for one model pool's controller, counting its decisions,
  // queue waits and lease expiries under {model}. Creates every series of the
  // model on first call; later calls return the same listener. Owned by this
  // object and valid for its lifetime.
  ControllerListener* ListenerFor(const std::string& model);

  // kvgate_admit_duration_seconds. Lock-free.
  void ObserveAdmitDuration(absl::Duration d);

  // The model's budget gauges, from a controller snapshot plus the model's
  // weights (which the controller does not know). Called by a poller.
  void SetBudget(const std::string& model, const BudgetSnapshot& snapshot,
                 uint64_t weights_bytes);

  // kvgate_device_{total,free,used}_bytes{gpu_uuid}, one series per device
  // uuid seen. Called by the memory poller.
  void SetDevices(const std::vector<DeviceMemory>& devices);

  // kvgate_memory_source_errors_total{source}: a failed Read of `source`
  // ("static", "nvml", ...).
  void IncMemorySourceError(const std::string& source);

  // kvgate_memory_pressure{model}: 1 while the live memory guard holds the
  // model's admissions, else 0.
  void SetMemoryPressure(const std::string& model, bool under_pressure);

  // Creates the kvgate_engine_* series of a vllm or sglang pool (up 0 until
  // its first scrape), so that they exist before the engine answers.
  void AddEngine(const std::string& model);

  // What one scrape of a pool's engine showed.
  struct EngineScrape {
    // Whether the scrape succeeded; a failure counts a scrape error.
    bool up = false;
    // The usage fraction; unset keeps the last figure.
    std::optional<double> usage;
    // The pool in tokens (the last good figure when the scrape failed).
    uint64_t capacity_tokens = 0;
    // Preemptions counted by this scrape.
    uint64_t new_preemptions = 0;
  };
  // Sets the model's kvgate_engine_* series. Called by the engine poller.
  void RecordEngineScrape(const std::string& model, const EngineScrape& scrape);

 private:
  class Registry;
  struct ModelSeries;
  struct DeviceSeries;
  struct EngineSeries;

  ModelSeries& SeriesForLocked(const std::string& model)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  EngineSeries& EngineSeriesForLocked(const std::string& model)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::shared_ptr<Registry> registry_;

  prometheus::Family<prometheus::Gauge>& build_info_;
  prometheus::Family<prometheus::Counter>& decisions_;
  prometheus::Family<prometheus::Counter>& lease_expirations_;
  prometheus::Family<prometheus::Gauge>& capacity_bytes_;
  prometheus::Family<prometheus::Gauge>& weights_bytes_;
  prometheus::Family<prometheus::Gauge>& reserved_bytes_;
  prometheus::Family<prometheus::Gauge>& free_bytes_;
  prometheus::Family<prometheus::Gauge>& activation_reserve_bytes_;
  prometheus::Family<prometheus::Gauge>& active_leases_;
  prometheus::Family<prometheus::Gauge>& queue_requests_;
  prometheus::Family<prometheus::Gauge>& queue_bytes_;
  prometheus::Family<prometheus::Gauge>& memory_pressure_;
  prometheus::Family<prometheus::Gauge>& device_total_bytes_;
  prometheus::Family<prometheus::Gauge>& device_free_bytes_;
  prometheus::Family<prometheus::Gauge>& device_used_bytes_;
  prometheus::Family<prometheus::Counter>& memory_source_errors_;
  prometheus::Family<prometheus::Gauge>& used_ratio_;
  prometheus::Family<prometheus::Gauge>& queued_requests_;
  prometheus::Family<prometheus::Gauge>& engine_up_;
  prometheus::Family<prometheus::Gauge>& engine_usage_;
  prometheus::Family<prometheus::Gauge>& engine_capacity_tokens_;
  prometheus::Family<prometheus::Counter>& engine_preemptions_;
  prometheus::Family<prometheus::Counter>& engine_scrape_errors_;
  DurationHistogramFamily& queue_wait_;
  DurationHistogramFamily& admit_duration_;
  DurationHistogram& admit_duration_all_;

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<ModelSeries>> models_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<DeviceSeries>> devices_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, prometheus::Counter*> source_errors_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<EngineSeries>> engines_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace kvgate

#endif  // KVGATE_METRICS_METRICS_H_
