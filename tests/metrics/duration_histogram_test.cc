#include "metrics/duration_histogram.h"

#include <cmath>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/metric_type.h"

namespace kvgate {
namespace {

using ::testing::ElementsAre;

std::vector<uint64_t> CumulativeCounts(const prometheus::ClientMetric& m) {
  std::vector<uint64_t> out;
  for (const auto& b : m.histogram.bucket) out.push_back(b.cumulative_count);
  return out;
}

DurationHistogram ThreeBuckets() {
  return DurationHistogram(
      {absl::Microseconds(50), absl::Milliseconds(1), absl::Seconds(1)});
}

TEST(DurationHistogramTest, EmptyHistogramHasZeroBucketsAndInf) {
  DurationHistogram h = ThreeBuckets();
  prometheus::ClientMetric m = h.Collect({});
  ASSERT_EQ(m.histogram.bucket.size(), 4u);
  EXPECT_DOUBLE_EQ(m.histogram.bucket[0].upper_bound, 50e-6);
  EXPECT_DOUBLE_EQ(m.histogram.bucket[1].upper_bound, 1e-3);
  EXPECT_DOUBLE_EQ(m.histogram.bucket[2].upper_bound, 1.0);
  EXPECT_TRUE(std::isinf(m.histogram.bucket[3].upper_bound));
  EXPECT_THAT(CumulativeCounts(m), ElementsAre(0, 0, 0, 0));
  EXPECT_EQ(m.histogram.sample_count, 0u);
  EXPECT_EQ(m.histogram.sample_sum, 0.0);
}

TEST(DurationHistogramTest, UpperBoundIsInclusive) {
  DurationHistogram h = ThreeBuckets();
  h.Observe(absl::Microseconds(50));
  h.Observe(absl::Microseconds(51));
  h.Observe(absl::Seconds(1));
  h.Observe(absl::Seconds(2));
  prometheus::ClientMetric m = h.Collect({});
  EXPECT_THAT(CumulativeCounts(m), ElementsAre(1, 2, 3, 4));
  EXPECT_EQ(m.histogram.sample_count, 4u);
  EXPECT_DOUBLE_EQ(m.histogram.sample_sum, 50e-6 + 51e-6 + 1 + 2);
}

TEST(DurationHistogramTest, NegativeDurationCountsAsZero) {
  DurationHistogram h = ThreeBuckets();
  h.Observe(-absl::Seconds(3));
  prometheus::ClientMetric m = h.Collect({});
  EXPECT_THAT(CumulativeCounts(m), ElementsAre(1, 1, 1, 1));
  EXPECT_EQ(m.histogram.sample_sum, 0.0);
}

TEST(DurationHistogramTest, CollectCarriesLabels) {
  DurationHistogram h = ThreeBuckets();
  prometheus::ClientMetric m = h.Collect({{"model", "m"}});
  ASSERT_EQ(m.label.size(), 1u);
  EXPECT_EQ(m.label[0].name, "model");
  EXPECT_EQ(m.label[0].value, "m");
}

TEST(DurationHistogramTest, ConcurrentObservationsAreAllCounted) {
  DurationHistogram h = ThreeBuckets();
  constexpr int kThreads = 4;
  constexpr int kPerThread = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&h] {
      for (int i = 0; i < kPerThread; ++i) h.Observe(absl::Microseconds(100));
    });
  }
  // Scrapes during the observations always see a consistent histogram.
  for (int i = 0; i < 100; ++i) {
    prometheus::ClientMetric m = h.Collect({});
    EXPECT_EQ(m.histogram.bucket.back().cumulative_count,
              m.histogram.sample_count);
    EXPECT_EQ(m.histogram.bucket[0].cumulative_count, 0u);
  }
  for (auto& t : threads) t.join();
  prometheus::ClientMetric m = h.Collect({});
  EXPECT_EQ(m.histogram.sample_count, uint64_t{kThreads} * kPerThread);
  EXPECT_THAT(CumulativeCounts(m),
              ElementsAre(0, kThreads * kPerThread, kThreads * kPerThread,
                          kThreads * kPerThread));
  EXPECT_DOUBLE_EQ(m.histogram.sample_sum, kThreads * kPerThread * 100e-6);
}

TEST(DurationHistogramFamilyTest, AddReturnsTheSameHistogramForSameLabels) {
  DurationHistogramFamily family("x_seconds", "help", {absl::Seconds(1)});
  DurationHistogram& a = family.Add({{"model", "a"}});
  DurationHistogram& a2 = family.Add({{"model", "a"}});
  DurationHistogram& b = family.Add({{"model", "b"}});
  EXPECT_EQ(&a, &a2);
  EXPECT_NE(&a, &b);
  a.Observe(absl::Milliseconds(10));
  prometheus::MetricFamily collected = family.Collect();
  EXPECT_EQ(collected.name, "x_seconds");
  EXPECT_EQ(collected.help, "help");
  EXPECT_EQ(collected.type, prometheus::MetricType::Histogram);
  ASSERT_EQ(collected.metric.size(), 2u);
  EXPECT_EQ(collected.metric[0].histogram.sample_count, 1u);
  EXPECT_EQ(collected.metric[1].histogram.sample_count, 0u);
}

}  // namespace
}  // namespace kvgate
