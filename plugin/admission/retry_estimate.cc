#include "plugin/admission/retry_estimate.h"

#include <algorithm>
#include <cmath>

namespace kvgate {
namespace {

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

}  // namespace

RetryEstimate::RetryEstimate(const Options& options, absl::Time created_at)
    : options_(options),
      created_at_(created_at),
      rate_at_(created_at),
      mean_hold_(options.assumed_lease_hold) {}

void RetryEstimate::ObserveRelease(uint64_t freed_bytes, absl::Duration held,
                                   absl::Time now) {
  const double window = Seconds(options_.window);
  const double elapsed = std::max(0.0, Seconds(now - rate_at_));
  rate_ = rate_ * std::exp(-elapsed / window) +
          static_cast<double>(freed_bytes) / window;
  rate_at_ = std::max(rate_at_, now);
  held = std::max(held, absl::ZeroDuration());
  // EWMA weight 0.2: recent leases dominate after a handful of releases.
  mean_hold_ = release_seen_ ? mean_hold_ * 0.8 + held * 0.2 : held;
  release_seen_ = true;
}

double RetryEstimate::ReleaseRate(absl::Time now) const {
  if (!release_seen_) return 0;
  // Decayed sum of freed bytes over the window, corrected for having
  // observed for less than a few windows.
  const double window = Seconds(options_.window);
  const double since = std::max(0.0, Seconds(now - rate_at_));
  const double observed = std::max(1.0, Seconds(now - created_at_));
  return rate_ * std::exp(-since / window) / (1 - std::exp(-observed / window));
}

double RetryEstimate::EffectiveRate(absl::Time now) const {
  // The whole budget turning over once per mean lease hold time (observed,
  // or Options::assumed_lease_hold before any release).
  const double turnover = static_cast<double>(options_.capacity_bytes) /
                          std::max(Seconds(mean_hold_), 1e-3);
  const double observed = ReleaseRate(now);
  if (observed < 1.0) return turnover;
  const double idle = std::max(0.0, Seconds(now - rate_at_));
  const double weight = std::exp(-idle / Seconds(options_.window));
  return weight * observed + (1 - weight) * turnover;
}

absl::Duration RetryEstimate::RetryAfter(uint64_t needed_bytes,
                                         uint64_t free_bytes, absl::Time now,
                                         absl::Duration expiry_bound) const {
  if (needed_bytes <= free_bytes) return kMinRetryAfter;
  const uint64_t missing = needed_bytes - free_bytes;
  const double seconds = static_cast<double>(missing) / EffectiveRate(now);
  absl::Duration wait = seconds < Seconds(kMaxRetryAfter)
                            ? absl::Seconds(seconds)
                            : kMaxRetryAfter;
  wait = std::min(wait, std::max(expiry_bound, absl::ZeroDuration()));
  return std::clamp(wait, kMinRetryAfter, kMaxRetryAfter);
}

}  // namespace kvgate
