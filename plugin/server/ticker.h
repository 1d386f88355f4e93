// The server's one background thread: each controller's Tick every few
// milliseconds (queue deadlines, lease expiry) and a poll of the memory
// source on its interval, which sets each pool's memory pressure and free
// device bytes (plugin/memory/pool_memory.h) and the metrics. A vllm or
// sglang pool's pressure is its EnginePoller's (engine_poller.h), not the
// device's.
#ifndef KVGATE_PLUGIN_SERVER_TICKER_H_
#define KVGATE_PLUGIN_SERVER_TICKER_H_

#include <thread>

#include "absl/synchronization/notification.h"
#include "metrics/metrics.h"
#include "plugin/admission/model_pool.h"
#include "plugin/memory/memory_guard.h"
#include "plugin/server/config.h"

namespace kvgate {

// Runs each controller's Tick every 5 ms and polls the memory source every
// source->poll_interval, on one thread for the whole server. Logs once when
// the source starts failing and once when it recovers, and each change of a
// pool's memory pressure.
class Ticker {
 public:
  // Every pointer is not owned and must outlive the ticker.
  Ticker(const ModelRegistry* registry, MemoryGuard* guard,
         const MemorySourceSettings* source, KvgateMetrics* metrics);
  // Stops the thread if it runs.
  ~Ticker();

  Ticker(const Ticker&) = delete;
  Ticker& operator=(const Ticker&) = delete;

  // Starts the thread. At most once.
  void Start();
  // Stops the thread and waits for it; a no-op when it does not run.
  void Stop();

  // One poll of the memory source; also called once before serving. Not
  // thread-safe: call it before Start() or from the ticker's thread only.
  void Poll();

 private:
  void Run();
  // Logs a failed read (once until it recovers) and counts it.
  void NoteReadOutcome(const MemoryGuard::Reading& reading);
  // Judges `pool` on `reading` and publishes the result.
  void UpdatePool(ModelPool& pool, const MemoryGuard::Reading& reading);

  const ModelRegistry* const registry_;
  MemoryGuard* const guard_;
  const MemorySourceSettings* const source_;
  KvgateMetrics* const metrics_;
  absl::Notification stop_;
  std::thread thread_;
  bool last_error_ = false;
};

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_SERVER_TICKER_H_
