#include "metrics/duration_histogram.h"

#include <algorithm>
#include <limits>

#include "prometheus/metric_type.h"

namespace kvgate {
namespace {

std::vector<int64_t> ToNanoseconds(const std::vector<absl::Duration>& bounds) {
  std::vector<int64_t> out;
  out.reserve(bounds.size());
  for (absl::Duration d : bounds) out.push_back(absl::ToInt64Nanoseconds(d));
  return out;
}

}  // namespace

DurationHistogram::DurationHistogram(std::vector<absl::Duration> upper_bounds)
    : bounds_ns_(ToNanoseconds(upper_bounds)),
      counts_(new std::atomic<uint64_t>[bounds_ns_.size() + 1]) {
  for (size_t i = 0; i <= bounds_ns_.size(); ++i) {
    counts_[i].store(0, std::memory_order_relaxed);
  }
}

void DurationHistogram::Observe(absl::Duration d) {
  const int64_t ns = std::max<int64_t>(0, absl::ToInt64Nanoseconds(d));
  const size_t bucket =
      std::lower_bound(bounds_ns_.begin(), bounds_ns_.end(), ns) -
      bounds_ns_.begin();
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(static_cast<uint64_t>(ns), std::memory_order_relaxed);
}

prometheus::ClientMetric DurationHistogram::Collect(
    const prometheus::Labels& labels) const {
  prometheus::ClientMetric metric;
  for (const auto& [name, value] : labels) {
    metric.label.push_back({name, value});
  }
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_ns_.size(); ++i) {
    cumulative += counts_[i].load(std::memory_order_relaxed);
    const double upper = i < bounds_ns_.size()
                             ? static_cast<double>(bounds_ns_[i]) * 1e-9
                             : std::numeric_limits<double>::infinity();
    metric.histogram.bucket.push_back({cumulative, upper});
  }
  metric.histogram.sample_count = cumulative;
  metric.histogram.sample_sum =
      static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) * 1e-9;
  return metric;
}

DurationHistogramFamily::DurationHistogramFamily(
    std::string name, std::string help,
    std::vector<absl::Duration> upper_bounds)
    : name_(std::move(name)),
      help_(std::move(help)),
      upper_bounds_(std::move(upper_bounds)) {}

DurationHistogram& DurationHistogramFamily::Add(
    const prometheus::Labels& labels) {
  absl::MutexLock lock(&mu_);
  for (auto& [existing, histogram] : histograms_) {
    if (existing == labels) return *histogram;
  }
  histograms_.emplace_back(labels,
                           std::make_unique<DurationHistogram>(upper_bounds_));
  return *histograms_.back().second;
}

prometheus::MetricFamily DurationHistogramFamily::Collect() const {
  prometheus::MetricFamily family;
  family.name = name_;
  family.help = help_;
  family.type = prometheus::MetricType::Histogram;
  absl::MutexLock lock(&mu_);
  family.metric.reserve(histograms_.size());
  for (const auto& [labels, histogram] : histograms_) {
    family.metric.push_back(histogram->Collect(labels));
  }
  return family;
}

}  // namespace kvgate
