// EngineTracker: what a preallocating engine's scrapes mean for admission
// (docs/design.md, "Engines"), one scrape at a time.
//
// Pure: each scrape's result (an EngineReading or the error that stopped it)
// and the time go in; the budget to admit on, whether admission must pause,
// and what changed (for one log line per change) come out. The poller that
// fetches the page and applies the result lives with the server.
//
// The rules:
//   * capacity_bytes = pool tokens x KV bytes per token, from the last good
//     reading; before the first one, the start-up figure (the `kvgate plan`
//     figure the pool was built with). A failed scrape keeps the last good
//     capacity.
//   * used_bytes = usage x capacity from the last good reading, counted by
//     admission when above its ledger; 0 while the engine does not answer
//     (admission then runs on the ledger alone).
//   * The preemption counter: the first reading is the baseline (what the
//     engine preempted before kvgated watched it does not pause anything);
//     a rise pauses admission until now + preemption_cooldown (a later rise
//     extends it); a fall means the engine restarted, and becomes the new
//     baseline.
//
// Not thread-safe: one poller owns it.
#ifndef KVGATE_PLUGIN_MEMORY_ENGINE_TRACKER_H_
#define KVGATE_PLUGIN_MEMORY_ENGINE_TRACKER_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "plugin/memory/engine_metrics.h"

namespace kvgate {

class EngineTracker {
 public:
  struct Options {
    // KV bytes of one token on one GPU (ServingModel::
    // kv_cache_bytes_per_token); > 0.
    uint64_t kv_bytes_per_token = 0;
    // The capacity until the engine first answers; > 0.
    uint64_t start_capacity_bytes = 0;
    absl::Duration preemption_cooldown = absl::Seconds(5);
  };

  // What one scrape changed, for the poller's log lines and metrics.
  struct Change {
    // The engine answered after not answering (or for the first time).
    bool came_up = false;
    // The engine stopped answering (or never did, on the first scrape).
    bool went_down = false;
    // Preemptions counted by this scrape (0 on the baseline).
    uint64_t new_preemptions = 0;
    // The pool changed size (the first reading included).
    bool capacity_changed = false;
  };

  explicit EngineTracker(const Options& options);

  // Takes one scrape's result at `now`.
  Change Observe(const absl::StatusOr<EngineReading>& scrape, absl::Time now);

  // The budget to admit on: the last good pool (or the start figure).
  uint64_t capacity_bytes() const { return capacity_bytes_; }
  // The pool in tokens from the last good reading; 0 before one.
  uint64_t pool_tokens() const { return pool_tokens_; }
  // What the engine has in use, usage x capacity; 0 while it is down or
  // reports no usage.
  uint64_t used_bytes() const;
  // The last good usage fraction; nullopt before one or without the metric.
  std::optional<double> usage() const { return usage_; }
  // Whether the last scrape succeeded.
  bool up() const { return up_; }
  // The last scrape's error; OK when it succeeded.
  const absl::Status& last_error() const { return last_error_; }
  // Preemptions seen since kvgated started watching (a counter).
  uint64_t preemptions_seen() const { return preemptions_seen_; }
  // Whether admission must pause at `now`, and until when.
  bool Paused(absl::Time now) const { return now < paused_until_; }
  absl::Time paused_until() const { return paused_until_; }

 private:
  // Counts a preemption counter reading against the baseline.
  uint64_t CountPreemptions(std::optional<uint64_t> counter, absl::Time now);

  const Options options_;
  uint64_t capacity_bytes_;
  uint64_t pool_tokens_ = 0;
  std::optional<double> usage_;
  bool up_ = false;
  bool scraped_ = false;
  absl::Status last_error_;
  std::optional<uint64_t> last_counter_;
  uint64_t preemptions_seen_ = 0;
  absl::Time paused_until_ = absl::InfinitePast();
};

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_MEMORY_ENGINE_TRACKER_H_
