// DurationHistogram: a Prometheus histogram of durations whose Observe takes
// no lock.
//
// prometheus::Histogram guards each observation with a mutex. kvgate observes
// durations on the admit path (the time an Admit took, the time a request
// waited in the queue), where the controller's own mutex must remain the only
// lock. A DurationHistogram keeps one atomic counter per bucket and an atomic
// sum in nanoseconds, so an observation is a bucket search and two relaxed
// atomic adds.
//
// A scrape reads the buckets one by one while observations go on. The
// exported count is the sum of the bucket counts it read, so the cumulative
// buckets, `_count` and the `+Inf` bucket always agree; `_sum` may lag or lead
// them by the observations in flight, which Prometheus tolerates.
//
// DurationHistogramFamily groups the histograms of one metric name (one per
// label set) and renders them as a prometheus::MetricFamily in seconds.
#ifndef KVGATE_METRICS_DURATION_HISTOGRAM_H_
#define KVGATE_METRICS_DURATION_HISTOGRAM_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/client_metric.h"
#include "prometheus/labels.h"
#include "prometheus/metric_family.h"

namespace kvgate {

class DurationHistogram {
 public:
  // `upper_bounds` must be strictly increasing and positive; an implicit
  // +Inf bucket follows the last one.
  explicit DurationHistogram(std::vector<absl::Duration> upper_bounds);

  DurationHistogram(const DurationHistogram&) = delete;
  DurationHistogram& operator=(const DurationHistogram&) = delete;

  // Counts `d` in the first bucket whose upper bound is >= d (Prometheus `le`
  // semantics). A negative duration counts as zero. Lock-free; thread-safe.
  void Observe(absl::Duration d);

  // A snapshot in Prometheus form: cumulative buckets ending with +Inf, the
  // count and the sum in seconds, labelled with `labels`.
  prometheus::ClientMetric Collect(const prometheus::Labels& labels) const;

 private:
  const std::vector<int64_t> bounds_ns_;
  // Non-cumulative counts; the last one is the +Inf bucket.
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<uint64_t> sum_ns_{0};
};

class DurationHistogramFamily {
 public:
  DurationHistogramFamily(std::string name, std::string help,
                          std::vector<absl::Duration> upper_bounds);

  // The histogram for `labels`, created on first use. The reference stays
  // valid for the family's lifetime; resolve it once, then observe without
  // any lock. Takes the family's mutex (not for the hot path).
  DurationHistogram& Add(const prometheus::Labels& labels);

  // Every histogram of the family, in the order they were added.
  prometheus::MetricFamily Collect() const;

 private:
  const std::string name_;
  const std::string help_;
  const std::vector<absl::Duration> upper_bounds_;
  mutable absl::Mutex mu_;
  std::vector<std::pair<prometheus::Labels, std::unique_ptr<DurationHistogram>>>
      histograms_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvgate

#endif  // KVGATE_METRICS_DURATION_HISTOGRAM_H_
