#include "plugin/admission/retry_estimate.h"

#include <cstdint>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace kvgate {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1000);

RetryEstimate::Options Opts(uint64_t capacity = 1000) {
  RetryEstimate::Options options;
  options.capacity_bytes = capacity;
  options.window = absl::Seconds(10);
  options.assumed_lease_hold = absl::Seconds(5);
  return options;
}

// An estimate that has seen `bytes` freed every `period` for 100 s.
RetryEstimate Steady(uint64_t bytes, absl::Duration period) {
  RetryEstimate estimate(Opts(), kT0);
  for (absl::Time t = kT0 + period; t <= kT0 + absl::Seconds(100);
       t += period) {
    estimate.ObserveRelease(bytes, absl::Seconds(1), t);
  }
  return estimate;
}

TEST(RetryEstimateTest, Bounds) {
  EXPECT_EQ(RetryEstimate::kMinRetryAfter, absl::Milliseconds(50));
  EXPECT_EQ(RetryEstimate::kMaxRetryAfter, absl::Seconds(60));
}

TEST(RetryEstimateTest, BeforeAnyReleaseTheCapacityTurnsOverPerAssumedHold) {
  RetryEstimate estimate(Opts(1000), kT0);
  EXPECT_EQ(estimate.ReleaseRate(kT0 + absl::Seconds(3)), 0);
  EXPECT_EQ(estimate.mean_hold(), absl::Seconds(5));
  // 500 bytes missing at 1000 bytes / 5 s.
  EXPECT_EQ(estimate.RetryAfter(700, 200, kT0), absl::Milliseconds(2500));
}

TEST(RetryEstimateTest, ClampedToMinAndMax) {
  RetryEstimate estimate(Opts(1000), kT0);
  EXPECT_EQ(estimate.RetryAfter(100, 100, kT0), RetryEstimate::kMinRetryAfter);
  EXPECT_EQ(estimate.RetryAfter(0, 0, kT0), RetryEstimate::kMinRetryAfter);
  EXPECT_EQ(estimate.RetryAfter(1, 0, kT0),  // 5 ms
            RetryEstimate::kMinRetryAfter);
  EXPECT_EQ(estimate.RetryAfter(1000000, 0, kT0),  // 5000 s
            RetryEstimate::kMaxRetryAfter);
  EXPECT_EQ(estimate.RetryAfter(UINT64_MAX, 0, kT0),
            RetryEstimate::kMaxRetryAfter);
}

TEST(RetryEstimateTest, ReleaseRateTracksSteadyReleases) {
  const RetryEstimate estimate = Steady(100, absl::Seconds(1));
  // 100 bytes/s, sampled just after a release (a little above the mean).
  const double rate = estimate.ReleaseRate(kT0 + absl::Seconds(100));
  EXPECT_GT(rate, 95);
  EXPECT_LT(rate, 110);
  // It decays once releases stop.
  EXPECT_LT(estimate.ReleaseRate(kT0 + absl::Seconds(120)), rate / 5);
}

TEST(RetryEstimateTest, ShorterWithAFasterReleaseRate) {
  const RetryEstimate slow = Steady(100, absl::Seconds(2));
  const RetryEstimate fast = Steady(100, absl::Milliseconds(500));
  const absl::Time now = kT0 + absl::Seconds(100);
  EXPECT_GT(fast.ReleaseRate(now), 3 * slow.ReleaseRate(now));
  const absl::Duration slow_wait = slow.RetryAfter(600, 100, now);
  const absl::Duration fast_wait = fast.RetryAfter(600, 100, now);
  EXPECT_LT(fast_wait, slow_wait);
  // 500 bytes at about 50 and 200 bytes/s.
  EXPECT_NEAR(absl::ToDoubleSeconds(slow_wait), 9, 0.5);
  EXPECT_NEAR(absl::ToDoubleSeconds(fast_wait), 2.5, 0.3);
  // More missing bytes, longer wait.
  EXPECT_GT(fast.RetryAfter(1100, 100, now), fast_wait);
}

TEST(RetryEstimateTest, MeanHoldIsAnEwmaOfObservedHolds) {
  RetryEstimate estimate(Opts(), kT0);
  estimate.ObserveRelease(0, absl::Seconds(10), kT0);
  EXPECT_EQ(estimate.mean_hold(), absl::Seconds(10));  // first replaces
  estimate.ObserveRelease(0, absl::ZeroDuration(), kT0);
  EXPECT_NEAR(absl::ToDoubleSeconds(estimate.mean_hold()), 8, 1e-6);
  estimate.ObserveRelease(0, -absl::Seconds(5), kT0);  // clock went back
  EXPECT_NEAR(absl::ToDoubleSeconds(estimate.mean_hold()), 6.4, 1e-6);
  // Freeing nothing gives no usable rate: it falls back to the mean hold.
  // 640 bytes missing at 1000 bytes / 6.4 s.
  EXPECT_NEAR(absl::ToDoubleSeconds(estimate.RetryAfter(640, 0, kT0)), 4.096,
              1e-6);
}

constexpr uint64_t kGiB = uint64_t{1} << 30;

// One small release, then 45 s of quiet: the stale rate (100 MiB over a
// 10 s window, decayed by e^-4.5) must not dominate. Its weight decays with
// the idle time, giving way to the budget's turnover per mean hold (1 s
// here): 2 GiB of a 10 GiB budget are about 0.2 s away, not 60 s.
TEST(RetryEstimateTest, StaleRateAfterAQuietSpellDoesNotDominate) {
  RetryEstimate estimate(Opts(10 * kGiB), kT0);
  estimate.ObserveRelease(100 << 20, absl::Seconds(1), kT0 + absl::Seconds(1));
  const absl::Time quiet = kT0 + absl::Seconds(46);
  EXPECT_GT(estimate.ReleaseRate(quiet), 1.0);  // a usable, but stale, rate
  const absl::Duration wait = estimate.RetryAfter(2 * kGiB, 0, quiet);
  EXPECT_LT(wait, absl::Seconds(1));
  EXPECT_GE(wait, RetryEstimate::kMinRetryAfter);
  // Right after the release the observed rate still counts in full.
  EXPECT_GT(estimate.RetryAfter(2 * kGiB, 0, kT0 + absl::Seconds(1)),
            absl::Seconds(1));
}

// The bytes are free once enough leases expire by TTL, whatever the rate
// says; the bound is clamped like any answer.
TEST(RetryEstimateTest, BoundedByTheLeasesRemainingLifetimes) {
  RetryEstimate estimate(Opts(1000), kT0);
  ASSERT_EQ(estimate.RetryAfter(1000000, 0, kT0),
            RetryEstimate::kMaxRetryAfter);
  EXPECT_EQ(estimate.RetryAfter(1000000, 0, kT0, absl::Seconds(3)),
            absl::Seconds(3));
  EXPECT_EQ(estimate.RetryAfter(1000000, 0, kT0, absl::ZeroDuration()),
            RetryEstimate::kMinRetryAfter);
  EXPECT_EQ(estimate.RetryAfter(700, 200, kT0, absl::Seconds(30)),
            absl::Milliseconds(2500));  // the rate's answer is shorter
}

}  // namespace
}  // namespace kvgate
