#include "plugin/memory/engine_tracker.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace kvgate {

EngineTracker::EngineTracker(const Options& options)
    : options_(options), capacity_bytes_(options.start_capacity_bytes) {}

uint64_t EngineTracker::used_bytes() const {
  if (!up_ || !usage_.has_value()) return 0;
  const long double used =
      std::ceil(static_cast<long double>(*usage_) * capacity_bytes_);
  if (used <= 0) return 0;
  if (used >= static_cast<long double>(capacity_bytes_)) return capacity_bytes_;
  return static_cast<uint64_t>(used);
}

uint64_t EngineTracker::CountPreemptions(std::optional<uint64_t> counter,
                                         absl::Time now) {
  if (!counter.has_value()) return 0;
  uint64_t added = 0;
  if (last_counter_.has_value() && *counter > *last_counter_) {
    added = *counter - *last_counter_;
    preemptions_seen_ += added;
    paused_until_ = now + options_.preemption_cooldown;
  }
  // The first reading is the baseline; a fall (the engine restarted) is
  // the new one.
  last_counter_ = counter;
  return added;
}

EngineTracker::Change EngineTracker::Observe(
    const absl::StatusOr<EngineReading>& scrape, absl::Time now) {
  Change change;
  const bool first = !scraped_;
  scraped_ = true;
  if (!scrape.ok()) {
    change.went_down = up_ || first;
    up_ = false;
    last_error_ = scrape.status();
    return change;
  }
  change.came_up = !up_;
  up_ = true;
  last_error_ = absl::OkStatus();
  const EngineReading& r = *scrape;
  // A pool too large to count in bytes keeps the last capacity (a reading
  // that big is garbage, not a GPU).
  if (r.pool_tokens > 0 &&
      r.pool_tokens <= std::numeric_limits<uint64_t>::max() /
                           std::max<uint64_t>(options_.kv_bytes_per_token, 1)) {
    const uint64_t capacity = r.pool_tokens * options_.kv_bytes_per_token;
    change.capacity_changed = pool_tokens_ != r.pool_tokens;
    pool_tokens_ = r.pool_tokens;
    capacity_bytes_ = capacity;
  }
  usage_ = r.usage;
  change.new_preemptions = CountPreemptions(r.preemptions, now);
  return change;
}

}  // namespace kvgate
