// EnginePoller: watches the engine of one vllm or sglang pool
// (docs/design.md, "Engines") on a thread of its own, never on the request
// path. Every poll_interval it fetches the engine's Prometheus page
// (metrics_fetcher.h), reads it (engine_metrics.h), judges it
// (engine_tracker.h) and applies the result to the pool's controller: the
// engine's pool as the capacity, its reported use counted when above the
// ledger, and a pause (MEMORY_PRESSURE) for preemption_cooldown after the
// engine preempts. It logs one line per change of state (the engine
// answering or not, a pause starting or ending), not one per scrape, and
// sets the pool's kvgate_engine_* series.
#ifndef KVGATE_PLUGIN_SERVER_ENGINE_POLLER_H_
#define KVGATE_PLUGIN_SERVER_ENGINE_POLLER_H_

#include <memory>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "metrics/metrics.h"
#include "plugin/admission/model_pool.h"
#include "plugin/memory/engine_metrics.h"
#include "plugin/memory/engine_tracker.h"
#include "plugin/memory/metrics_fetcher.h"

namespace kvgate {

class EnginePoller {
 public:
  // `pool` must have a preallocating engine; it and `metrics` are not owned
  // and must outlive the poller. The pool starts on its controller's
  // capacity (the plan figure it was built with). InvalidArgument for a
  // dynamic pool or a metrics_url MetricsFetcher refuses.
  static absl::StatusOr<std::unique_ptr<EnginePoller>> Create(
      ModelPool* pool, KvgateMetrics* metrics);

  // Stops the thread if it runs.
  ~EnginePoller();
  EnginePoller(const EnginePoller&) = delete;
  EnginePoller& operator=(const EnginePoller&) = delete;

  // One scrape, judged and applied. Not thread-safe: call it before Start()
  // or from the poller's thread only.
  void PollOnce();

  // Starts the thread (at most once); Stop stops it and waits for it, a
  // no-op when it does not run.
  void Start();
  void Stop();

  // For tests (before Start or after Stop).
  const EngineTracker& tracker() const { return tracker_; }

 private:
  EnginePoller(ModelPool* pool, KvgateMetrics* metrics,
               std::unique_ptr<MetricsFetcher> fetcher,
               const EngineTracker::Options& tracker);

  // Logs what changed with one scrape.
  void LogChange(const EngineTracker::Change& change);
  // Sets the pool's engine and budget series after one scrape.
  void MetricsUpdate(const EngineTracker::Change& change);
  // Pauses or resumes admission as the tracker says for `now`.
  void ApplyPause(absl::Time now);
  void Run();

  ModelPool* const pool_;
  KvgateMetrics* const metrics_;
  std::unique_ptr<MetricsFetcher> fetcher_;
  EngineMetricsOptions read_;
  EngineTracker tracker_;
  bool paused_ = false;
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_SERVER_ENGINE_POLLER_H_
