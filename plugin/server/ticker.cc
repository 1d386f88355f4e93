#include "plugin/server/ticker.h"

#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "plugin/base/json_log.h"
#include "plugin/memory/pool_memory.h"

namespace kvgate {

Ticker::Ticker(const ModelRegistry* registry, MemoryGuard* guard,
               const MemorySourceSettings* source, KvgateMetrics* metrics)
    : registry_(registry), guard_(guard), source_(source), metrics_(metrics) {}

Ticker::~Ticker() { Stop(); }

void Ticker::Start() {
  thread_ = std::thread([this] { Run(); });
}

void Ticker::Stop() {
  if (!thread_.joinable()) return;
  stop_.Notify();
  thread_.join();
}

void Ticker::Poll() {
  const MemoryGuard::Reading r = guard_->Poll();
  NoteReadOutcome(r);
  for (const auto& pool : registry_->pools()) UpdatePool(*pool, r);
  if (source_->kind == MemorySourceSettings::Kind::kNvml) {
    metrics_->SetDevices(r.devices);
    return;
  }
  // Simulated devices hold what the ledgers hold, as GetBudget says
  // (JudgePoolMemory), not an always-empty device.
  std::vector<PoolLedgerUse> ledgers;
  for (const auto& pool : registry_->pools()) {
    ledgers.push_back({pool->settings().gpus,
                       pool->model().weights_bytes() +
                           pool->controller().Snapshot().reserved_bytes});
  }
  metrics_->SetDevices(StaticDevicesAfterLedgers(r.devices, ledgers));
}

void Ticker::NoteReadOutcome(const MemoryGuard::Reading& r) {
  if (r.ok) {
    if (last_error_) {
      LogInfo("memory source recovered");
      last_error_ = false;
    }
    return;
  }
  metrics_->IncMemorySourceError(
      source_->kind == MemorySourceSettings::Kind::kNvml ? "nvml" : "static");
  if (!last_error_) {
    LogError("memory source read failed",
             {{"error", r.error.ToString()},
              {"action", guard_->options().fail_open
                             ? "admitting on the ledger (fail_open)"
                             : "admission paused (fail closed)"}});
  }
  last_error_ = true;
}

void Ticker::UpdatePool(ModelPool& pool, const MemoryGuard::Reading& r) {
  const BudgetSnapshot s = pool.controller().Snapshot();
  PoolMemoryInput input;
  input.live = source_->kind == MemorySourceSettings::Kind::kNvml;
  input.gpus = pool.settings().gpus;
  input.free_margin_bytes = guard_->options().free_margin_bytes;
  input.static_device_bytes = source_->static_device_bytes;
  input.ledger_used_bytes = pool.model().weights_bytes() + s.reserved_bytes;
  const PoolMemory judged = JudgePoolMemory(r, input);
  if (judged.device_free_bytes.has_value()) {
    pool.set_device_free_bytes(*judged.device_free_bytes);
  }
  // A preallocating engine took its pool at start-up: device memory is not
  // the signal, and its poller owns the pause (engine_poller.h).
  if (pool.settings().engine.preallocates()) {
    metrics_->SetBudget(pool.name(), s, pool.model().weights_bytes());
    return;
  }
  const bool pressure = judged.pressure;
  if (pressure != s.memory_pressure) {
    (pressure ? LogWarning : LogInfo)(pressure
                                          ? "memory pressure: admission paused"
                                          : "memory pressure cleared",
                                      {{"model", pool.name()}});
    pool.controller().SetMemoryPressure(pressure);
  }
  metrics_->SetMemoryPressure(pool.name(), pressure);
  metrics_->SetBudget(pool.name(), pool.controller().Snapshot(),
                      pool.model().weights_bytes());
}

void Ticker::Run() {
  absl::Time next_poll = absl::Now() + source_->poll_interval;
  while (!stop_.WaitForNotificationWithTimeout(absl::Milliseconds(5))) {
    for (const auto& pool : registry_->pools()) pool->controller().Tick();
    if (absl::Now() >= next_poll) {
      Poll();
      next_poll = absl::Now() + source_->poll_interval;
    }
  }
}

}  // namespace kvgate
