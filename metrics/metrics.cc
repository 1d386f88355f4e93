#include "metrics/metrics.h"

#include <algorithm>
#include <utility>

#include "absl/strings/string_view.h"
#include "prometheus/metric_family.h"

namespace kvgate {
namespace {

// Every rejection reason the controller can give, in enum order after kNone,
// so that static_cast<size_t>(reason) indexes the decision rows below.
constexpr std::array<RejectReason, 7> kRejectReasons = {
    RejectReason::kQueueTimeout, RejectReason::kQueueFull,
    RejectReason::kNeverFits,    RejectReason::kMemoryPressure,
    RejectReason::kShed,         RejectReason::kDraining,
    RejectReason::kCancelled,
};
// Row 0 is ADMITTED/NONE, row i > 0 is REJECTED/kRejectReasons[i - 1].
constexpr size_t kDecisionRows = kRejectReasons.size() + 1;

constexpr std::array<Priority, kNumPriorities> kPriorities = {
    Priority::kCritical, Priority::kStandard, Priority::kSheddable};

std::string Label(absl::string_view value) { return std::string(value); }

double Bytes(uint64_t bytes) { return static_cast<double>(bytes); }

// The name and help text of one metric family.
struct FamilyText {
  const char* name;
  const char* help;
};

// Every family kvgate exports, in registration order.
constexpr FamilyText kBuildInfo = {
    "kvgate_build_info", "Always 1; labels name the running kvgate build."};
constexpr FamilyText kDecisions = {
    "kvgate_admission_decisions_total",
    "Final answers to Admit, by decision, reason and priority."};
constexpr FamilyText kLeaseExpirations = {
    "kvgate_lease_expirations_total",
    "Leases reclaimed because their TTL passed without a Release or Renew."};
constexpr FamilyText kCapacityBytes = {
    "kvgate_budget_capacity_bytes",
    "Bytes the model's controller may reserve for KV cache and activations."};
constexpr FamilyText kWeightsBytes = {
    "kvgate_budget_weights_bytes",
    "Bytes of the model's weights, outside the budget."};
constexpr FamilyText kReservedBytes = {
    "kvgate_budget_reserved_bytes",
    "Bytes reserved by live leases (KV plus the activation reserve)."};
constexpr FamilyText kFreeBytes = {
    "kvgate_budget_free_bytes",
    "Capacity minus what admission counts as taken: the reserved bytes, or "
    "a preallocating engine's reported use when that is higher."};
constexpr FamilyText kActivationReserveBytes = {
    "kvgate_budget_activation_reserve_bytes",
    "Bytes reserved for the activation peak of live leases."};
constexpr FamilyText kActiveLeases = {"kvgate_active_leases",
                                      "Leases currently held."};
constexpr FamilyText kQueueRequests = {
    "kvgate_queue_requests", "Requests waiting in the admission queue."};
constexpr FamilyText kQueueBytes = {"kvgate_queue_bytes",
                                    "Bytes requested by the queued requests."};
constexpr FamilyText kMemoryPressure = {
    "kvgate_memory_pressure",
    "1 while the live memory guard pauses admissions, else 0."};
constexpr FamilyText kDeviceTotalBytes = {
    "kvgate_device_total_bytes", "Device memory as the driver reports it."};
constexpr FamilyText kDeviceFreeBytes = {"kvgate_device_free_bytes",
                                         "Device memory no one has allocated."};
constexpr FamilyText kDeviceUsedBytes = {
    "kvgate_device_used_bytes", "Device memory allocated by any process."};
constexpr FamilyText kMemorySourceErrors = {
    "kvgate_memory_source_errors_total", "Failed reads of the memory source."};
constexpr FamilyText kBudgetUsedRatio = {
    "kvgate_budget_used_ratio",
    "What admission counts as taken (the reserved bytes, or a preallocating "
    "engine's reported use when higher) over the capacity, 0..1."};
constexpr FamilyText kQueuedRequests = {
    "kvgate_queued_requests",
    "Requests waiting in the admission queue, all priorities."};
constexpr FamilyText kEngineUp = {
    "kvgate_engine_up",
    "1 when the last scrape of a vllm or sglang engine's metrics succeeded."};
constexpr FamilyText kEngineUsage = {
    "kvgate_engine_kv_cache_usage_ratio",
    "Fraction of its KV pool the engine reports in use, at the last good "
    "scrape."};
constexpr FamilyText kEngineCapacityTokens = {
    "kvgate_engine_kv_capacity_tokens",
    "The engine's KV pool in tokens, at the last good scrape."};
constexpr FamilyText kEnginePreemptions = {
    "kvgate_engine_preemptions_total",
    "Requests the engine preempted (vLLM) or retracted (SGLang) while "
    "kvgated watched it."};
constexpr FamilyText kEngineScrapeErrors = {
    "kvgate_engine_scrape_errors_total",
    "Scrapes of the engine's metrics that failed or could not be read."};
constexpr FamilyText kQueueWait = {
    "kvgate_queue_wait_seconds",
    "Time requests answered from the queue spent waiting in it."};
constexpr FamilyText kAdmitDuration = {
    "kvgate_admit_duration_seconds",
    "Time from receiving an Admit call to its answer, queueing included."};

// Registers a gauge family named and described by `text`.
prometheus::Family<prometheus::Gauge>& AddGauge(prometheus::Registry& registry,
                                                const FamilyText& text) {
  return prometheus::BuildGauge().Name(text.name).Help(text.help).Register(
      registry);
}

// Registers a counter family named and described by `text`.
prometheus::Family<prometheus::Counter>& AddCounter(
    prometheus::Registry& registry, const FamilyText& text) {
  return prometheus::BuildCounter().Name(text.name).Help(text.help).Register(
      registry);
}

}  // namespace

const std::vector<absl::Duration>& DurationBuckets() {
  static const auto* const kBuckets = new std::vector<absl::Duration>{
      absl::Microseconds(50),   absl::Microseconds(100),
      absl::Microseconds(250),  absl::Microseconds(500),
      absl::Milliseconds(1),    absl::Microseconds(2500),
      absl::Milliseconds(5),    absl::Milliseconds(10),
      absl::Milliseconds(25),   absl::Milliseconds(50),
      absl::Milliseconds(100),  absl::Milliseconds(250),
      absl::Milliseconds(500),  absl::Seconds(1),
      absl::Milliseconds(2500), absl::Seconds(5),
      absl::Seconds(10),        absl::Seconds(30),
  };
  return *kBuckets;
}

// A prometheus::Registry that also renders kvgate's lock-free histograms.
// Registry::Collect is virtual, so the exposer and any serializer that
// collects through the base pointer see them.
class KvgateMetrics::Registry : public prometheus::Registry {
 public:
  DurationHistogramFamily& AddHistogramFamily(std::string name,
                                              std::string help) {
    histograms_.push_back(std::make_unique<DurationHistogramFamily>(
        std::move(name), std::move(help), DurationBuckets()));
    return *histograms_.back();
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<prometheus::MetricFamily> families =
        prometheus::Registry::Collect();
    for (const auto& family : histograms_) {
      families.push_back(family->Collect());
    }
    return families;
  }

 private:
  // Filled during KvgateMetrics' construction only, before any Collect.
  std::vector<std::unique_ptr<DurationHistogramFamily>> histograms_;
};

// Every series of one model, resolved once. The listener part runs on the
// admit path and only touches these pointers.
struct KvgateMetrics::ModelSeries : public ControllerListener {
  std::array<std::array<prometheus::Counter*, kDecisionRows>, kNumPriorities>
      decisions{};
  DurationHistogram* queue_wait = nullptr;
  prometheus::Counter* lease_expirations = nullptr;

  prometheus::Gauge* capacity = nullptr;
  prometheus::Gauge* weights = nullptr;
  prometheus::Gauge* reserved = nullptr;
  prometheus::Gauge* free = nullptr;
  prometheus::Gauge* activation_reserve = nullptr;
  prometheus::Gauge* active_leases = nullptr;
  std::array<prometheus::Gauge*, kNumPriorities> queued{};
  prometheus::Gauge* queue_bytes = nullptr;
  prometheus::Gauge* memory_pressure = nullptr;
  prometheus::Gauge* used_ratio = nullptr;
  prometheus::Gauge* queued_total = nullptr;

  // Sets kvgate_budget_used_ratio and kvgate_queued_requests. Lock-free.
  void SetUse(uint64_t capacity_bytes, uint64_t used_bytes, uint32_t queued) {
    const double ratio =
        capacity_bytes == 0
            ? 1.0
            : std::min(1.0, static_cast<double>(used_bytes) /
                                static_cast<double>(capacity_bytes));
    used_ratio->Set(ratio);
    queued_total->Set(queued);
  }

  void OnBudget(uint64_t capacity_bytes, uint64_t used_bytes,
                uint32_t queued_requests) override {
    SetUse(capacity_bytes, used_bytes, queued_requests);
  }

  void OnDecision(Priority priority, const AdmitOutcome& outcome) override {
    const size_t p = static_cast<size_t>(priority);
    if (p >= kNumPriorities) return;
    size_t row = 0;
    if (!outcome.admitted) {
      row = static_cast<size_t>(outcome.reason);
      if (row == 0 || row >= kDecisionRows) return;  // not a rejection reason
    }
    decisions[p][row]->Increment();
    // Only requests that waited: one admitted or rejected at arrival did not
    // pass through the queue.
    if (outcome.queued_for > absl::ZeroDuration()) {
      queue_wait->Observe(outcome.queued_for);
    }
  }

  void OnLeaseExpired(uint64_t /*bytes*/) override {
    lease_expirations->Increment();
  }
};

struct KvgateMetrics::EngineSeries {
  prometheus::Gauge* up = nullptr;
  prometheus::Gauge* usage = nullptr;
  prometheus::Gauge* capacity_tokens = nullptr;
  prometheus::Counter* preemptions = nullptr;
  prometheus::Counter* scrape_errors = nullptr;
};

struct KvgateMetrics::DeviceSeries {
  prometheus::Gauge* total = nullptr;
  prometheus::Gauge* free = nullptr;
  prometheus::Gauge* used = nullptr;
};

KvgateMetrics::KvgateMetrics(const Options& options)
    : registry_(std::make_shared<Registry>()),
      build_info_(AddGauge(*registry_, kBuildInfo)),
      decisions_(AddCounter(*registry_, kDecisions)),
      lease_expirations_(AddCounter(*registry_, kLeaseExpirations)),
      capacity_bytes_(AddGauge(*registry_, kCapacityBytes)),
      weights_bytes_(AddGauge(*registry_, kWeightsBytes)),
      reserved_bytes_(AddGauge(*registry_, kReservedBytes)),
      free_bytes_(AddGauge(*registry_, kFreeBytes)),
      activation_reserve_bytes_(AddGauge(*registry_, kActivationReserveBytes)),
      active_leases_(AddGauge(*registry_, kActiveLeases)),
      queue_requests_(AddGauge(*registry_, kQueueRequests)),
      queue_bytes_(AddGauge(*registry_, kQueueBytes)),
      memory_pressure_(AddGauge(*registry_, kMemoryPressure)),
      device_total_bytes_(AddGauge(*registry_, kDeviceTotalBytes)),
      device_free_bytes_(AddGauge(*registry_, kDeviceFreeBytes)),
      device_used_bytes_(AddGauge(*registry_, kDeviceUsedBytes)),
      memory_source_errors_(AddCounter(*registry_, kMemorySourceErrors)),
      used_ratio_(AddGauge(*registry_, kBudgetUsedRatio)),
      queued_requests_(AddGauge(*registry_, kQueuedRequests)),
      engine_up_(AddGauge(*registry_, kEngineUp)),
      engine_usage_(AddGauge(*registry_, kEngineUsage)),
      engine_capacity_tokens_(AddGauge(*registry_, kEngineCapacityTokens)),
      engine_preemptions_(AddCounter(*registry_, kEnginePreemptions)),
      engine_scrape_errors_(AddCounter(*registry_, kEngineScrapeErrors)),
      queue_wait_(
          registry_->AddHistogramFamily(kQueueWait.name, kQueueWait.help)),
      admit_duration_(registry_->AddHistogramFamily(kAdmitDuration.name,
                                                    kAdmitDuration.help)),
      admit_duration_all_(admit_duration_.Add({})) {
  build_info_
      .Add({{"version", options.version}, {"revision", options.revision}})
      .Set(1);
  absl::MutexLock lock(&mu_);
  for (const char* source : kKnownMemorySources) {
    source_errors_[source] = &memory_source_errors_.Add({{"source", source}});
  }
}

KvgateMetrics::~KvgateMetrics() = default;

std::shared_ptr<prometheus::Registry> KvgateMetrics::registry() const {
  return registry_;
}

KvgateMetrics::ModelSeries& KvgateMetrics::SeriesForLocked(
    const std::string& model) {
  std::unique_ptr<ModelSeries>& slot = models_[model];
  if (slot != nullptr) return *slot;
  slot = std::make_unique<ModelSeries>();
  ModelSeries& s = *slot;
  for (Priority priority : kPriorities) {
    const size_t p = static_cast<size_t>(priority);
    const std::string priority_name = Label(PriorityName(priority));
    s.decisions[p][0] = &decisions_.Add({{"model", model},
                                         {"decision", "ADMITTED"},
                                         {"reason", "NONE"},
                                         {"priority", priority_name}});
    for (RejectReason reason : kRejectReasons) {
      s.decisions[p][static_cast<size_t>(reason)] =
          &decisions_.Add({{"model", model},
                           {"decision", "REJECTED"},
                           {"reason", Label(RejectReasonName(reason))},
                           {"priority", priority_name}});
    }
    s.queued[p] =
        &queue_requests_.Add({{"model", model}, {"priority", priority_name}});
  }
  const prometheus::Labels by_model = {{"model", model}};
  s.queue_wait = &queue_wait_.Add(by_model);
  s.lease_expirations = &lease_expirations_.Add(by_model);
  s.capacity = &capacity_bytes_.Add(by_model);
  s.weights = &weights_bytes_.Add(by_model);
  s.reserved = &reserved_bytes_.Add(by_model);
  s.free = &free_bytes_.Add(by_model);
  s.activation_reserve = &activation_reserve_bytes_.Add(by_model);
  s.active_leases = &active_leases_.Add(by_model);
  s.queue_bytes = &queue_bytes_.Add(by_model);
  s.memory_pressure = &memory_pressure_.Add(by_model);
  s.used_ratio = &used_ratio_.Add(by_model);
  s.queued_total = &queued_requests_.Add(by_model);
  return s;
}

ControllerListener* KvgateMetrics::ListenerFor(const std::string& model) {
  absl::MutexLock lock(&mu_);
  return &SeriesForLocked(model);
}

void KvgateMetrics::ObserveAdmitDuration(absl::Duration d) {
  admit_duration_all_.Observe(d);
}

void KvgateMetrics::SetBudget(const std::string& model,
                              const BudgetSnapshot& snapshot,
                              uint64_t weights_bytes) {
  absl::MutexLock lock(&mu_);
  ModelSeries& s = SeriesForLocked(model);
  s.capacity->Set(Bytes(snapshot.capacity_bytes));
  s.weights->Set(Bytes(weights_bytes));
  s.reserved->Set(Bytes(snapshot.reserved_bytes));
  s.free->Set(Bytes(snapshot.free_bytes));
  s.activation_reserve->Set(Bytes(snapshot.activation_reserve_bytes));
  s.active_leases->Set(snapshot.active_leases);
  for (size_t p = 0; p < kNumPriorities; ++p) {
    s.queued[p]->Set(snapshot.queued_by_priority[p]);
  }
  s.queue_bytes->Set(Bytes(snapshot.queued_bytes));
  s.memory_pressure->Set(snapshot.memory_pressure ? 1 : 0);
  s.SetUse(snapshot.capacity_bytes,
           snapshot.capacity_bytes -
               std::min(snapshot.capacity_bytes, snapshot.free_bytes),
           snapshot.queued_requests);
}

void KvgateMetrics::SetDevices(const std::vector<DeviceMemory>& devices) {
  absl::MutexLock lock(&mu_);
  for (const DeviceMemory& device : devices) {
    std::unique_ptr<DeviceSeries>& slot = devices_[device.uuid];
    if (slot == nullptr) {
      const prometheus::Labels labels = {{"gpu_uuid", device.uuid}};
      slot = std::make_unique<DeviceSeries>();
      slot->total = &device_total_bytes_.Add(labels);
      slot->free = &device_free_bytes_.Add(labels);
      slot->used = &device_used_bytes_.Add(labels);
    }
    slot->total->Set(Bytes(device.total_bytes));
    slot->free->Set(Bytes(device.free_bytes));
    slot->used->Set(Bytes(device.used_bytes));
  }
}

void KvgateMetrics::IncMemorySourceError(const std::string& source) {
  absl::MutexLock lock(&mu_);
  prometheus::Counter*& counter = source_errors_[source];
  if (counter == nullptr) {
    counter = &memory_source_errors_.Add({{"source", source}});
  }
  counter->Increment();
}

void KvgateMetrics::SetMemoryPressure(const std::string& model,
                                      bool under_pressure) {
  absl::MutexLock lock(&mu_);
  SeriesForLocked(model).memory_pressure->Set(under_pressure ? 1 : 0);
}

}  // namespace kvgate

namespace kvgate {

KvgateMetrics::EngineSeries& KvgateMetrics::EngineSeriesForLocked(
    const std::string& model) {
  std::unique_ptr<EngineSeries>& slot = engines_[model];
  if (slot != nullptr) return *slot;
  slot = std::make_unique<EngineSeries>();
  const prometheus::Labels by_model = {{"model", model}};
  slot->up = &engine_up_.Add(by_model);
  slot->usage = &engine_usage_.Add(by_model);
  slot->capacity_tokens = &engine_capacity_tokens_.Add(by_model);
  slot->preemptions = &engine_preemptions_.Add(by_model);
  slot->scrape_errors = &engine_scrape_errors_.Add(by_model);
  return *slot;
}

void KvgateMetrics::AddEngine(const std::string& model) {
  absl::MutexLock lock(&mu_);
  EngineSeriesForLocked(model);
}

void KvgateMetrics::RecordEngineScrape(const std::string& model,
                                       const EngineScrape& scrape) {
  absl::MutexLock lock(&mu_);
  EngineSeries& s = EngineSeriesForLocked(model);
  s.up->Set(scrape.up ? 1 : 0);
  if (!scrape.up) s.scrape_errors->Increment();
  if (scrape.usage.has_value()) s.usage->Set(*scrape.usage);
  s.capacity_tokens->Set(static_cast<double>(scrape.capacity_tokens));
  if (scrape.new_preemptions > 0) {
    s.preemptions->Increment(static_cast<double>(scrape.new_preemptions));
  }
}

}  // namespace kvgate
