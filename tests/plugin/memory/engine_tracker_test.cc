#include "plugin/memory/engine_tracker.h"

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace kvgate {
namespace {

constexpr uint64_t kBytesPerToken = 131072;  // llama-3-8b, bf16
const absl::Time kStart = absl::FromUnixSeconds(1700000000);

EngineTracker::Options Options() {
  EngineTracker::Options o;
  o.kv_bytes_per_token = kBytesPerToken;
  o.start_capacity_bytes = 1000 * kBytesPerToken;
  o.preemption_cooldown = absl::Seconds(5);
  return o;
}

EngineReading Reading(uint64_t pool_tokens, double usage,
                      uint64_t preemptions) {
  EngineReading r;
  r.pool_tokens = pool_tokens;
  r.usage = usage;
  r.preemptions = preemptions;
  r.engines = 1;
  return r;
}

TEST(EngineTrackerTest, StartFigureUntilTheEngineAnswersThenItsPool) {
  EngineTracker t(Options());
  EXPECT_EQ(t.capacity_bytes(), 1000 * kBytesPerToken);
  EXPECT_FALSE(t.up());
  EXPECT_EQ(t.used_bytes(), 0u);
  const EngineTracker::Change c = t.Observe(Reading(58960, 0.25, 0), kStart);
  EXPECT_TRUE(c.came_up);
  EXPECT_TRUE(c.capacity_changed);
  EXPECT_TRUE(t.up());
  EXPECT_EQ(t.pool_tokens(), 58960u);
  EXPECT_EQ(t.capacity_bytes(), uint64_t{58960} * kBytesPerToken);
  EXPECT_EQ(t.used_bytes(), uint64_t{14740} * kBytesPerToken);  // a quarter
}

TEST(EngineTrackerTest, FailedScrapeKeepsTheCapacityAndDropsTheUsage) {
  EngineTracker t(Options());
  t.Observe(Reading(4096, 0.5, 0), kStart);
  EngineTracker::Change c = t.Observe(
      absl::UnavailableError("GET http://x/metrics: HTTP 500"), kStart);
  EXPECT_TRUE(c.went_down);
  EXPECT_FALSE(t.up());
  EXPECT_EQ(t.capacity_bytes(), 4096 * kBytesPerToken);
  EXPECT_EQ(t.used_bytes(), 0u);  // admit on the ledger alone
  EXPECT_EQ(t.last_error().code(), absl::StatusCode::kUnavailable);
  // A second failure is no new change: one log line per state change.
  c = t.Observe(absl::UnavailableError("again"), kStart);
  EXPECT_FALSE(c.went_down);
  c = t.Observe(Reading(4096, 0.5, 0), kStart);
  EXPECT_TRUE(c.came_up);
  EXPECT_FALSE(c.capacity_changed);
  EXPECT_TRUE(t.last_error().ok());
}

TEST(EngineTrackerTest, FirstScrapeFailingIsADownChange) {
  EngineTracker t(Options());
  const EngineTracker::Change c =
      t.Observe(absl::UnavailableError("refused"), kStart);
  EXPECT_TRUE(c.went_down);
  EXPECT_EQ(t.capacity_bytes(), 1000 * kBytesPerToken);
}

TEST(EngineTrackerTest, PreemptionsPauseForTheCooldownFromTheBaseline) {
  EngineTracker t(Options());
  // 7 preemptions before kvgated watched: the baseline, no pause.
  EXPECT_EQ(t.Observe(Reading(4096, 0.9, 7), kStart).new_preemptions, 0u);
  EXPECT_FALSE(t.Paused(kStart));
  const absl::Time later = kStart + absl::Seconds(1);
  EXPECT_EQ(t.Observe(Reading(4096, 0.9, 9), later).new_preemptions, 2u);
  EXPECT_EQ(t.preemptions_seen(), 2u);
  EXPECT_TRUE(t.Paused(later));
  EXPECT_TRUE(t.Paused(later + absl::Seconds(4.9)));
  EXPECT_FALSE(t.Paused(later + absl::Seconds(5)));
  EXPECT_EQ(t.paused_until(), later + absl::Seconds(5));
  // A further rise extends the pause.
  const absl::Time again = later + absl::Seconds(3);
  t.Observe(Reading(4096, 0.9, 10), again);
  EXPECT_EQ(t.paused_until(), again + absl::Seconds(5));
  EXPECT_EQ(t.preemptions_seen(), 3u);
}

TEST(EngineTrackerTest, CounterThatFallsIsARestartNotAPreemption) {
  EngineTracker t(Options());
  t.Observe(Reading(4096, 0.1, 50), kStart);
  EXPECT_EQ(t.Observe(Reading(4096, 0.1, 0), kStart).new_preemptions, 0u);
  EXPECT_FALSE(t.Paused(kStart));
  EXPECT_EQ(t.Observe(Reading(4096, 0.1, 1), kStart).new_preemptions, 1u);
  EXPECT_EQ(t.preemptions_seen(), 1u);
}

TEST(EngineTrackerTest, NoUsageMetricMeansTheLedgerAlone) {
  EngineTracker t(Options());
  EngineReading r = Reading(4096, 0, 0);
  r.usage.reset();
  r.preemptions.reset();
  t.Observe(r, kStart);
  EXPECT_TRUE(t.up());
  EXPECT_EQ(t.used_bytes(), 0u);
  EXPECT_FALSE(t.usage().has_value());
}

TEST(EngineTrackerTest, FullUsageIsTheWholeCapacityAndAPoolTooLargeIsKept) {
  EngineTracker t(Options());
  t.Observe(Reading(4096, 1.0, 0), kStart);
  EXPECT_EQ(t.used_bytes(), t.capacity_bytes());
  t.Observe(Reading(UINT64_MAX / 2, 0.0, 0), kStart);
  EXPECT_EQ(t.capacity_bytes(), 4096 * kBytesPerToken);
  EXPECT_EQ(t.pool_tokens(), 4096u);
}

}  // namespace
}  // namespace kvgate
