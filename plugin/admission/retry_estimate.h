// RetryEstimate: how long a rejected request should wait before it retries.
//
// The controller (plugin/admission/controller.h) tells every request it
// rejects for lack of room when to try again. The estimate is the bytes that
// must be freed before the request fits, divided by the rate at which leases
// release bytes:
//
//   retry_after = (bytes needed - free bytes) / release rate
//
// clamped to [kMinRetryAfter, kMaxRetryAfter]. The release rate is an
// exponentially decayed sum of the bytes freed, over Options::window, corrected
// for an estimator that has observed for less than a few windows. Until a
// usable rate exists (no release yet, or under a byte per second), it assumes
// that the whole capacity turns over once per mean lease hold time: an EWMA of
// observed hold times, or Options::assumed_lease_hold before any release.
//
// A rate measured before a quiet spell says little about what comes next (one
// small release, then 45 s of idle, gave retry_after 60 s to a request that
// had waited 52 ms): the observed rate's weight decays with the time since
// the last release, exp(-idle / window), giving way to the turnover rate
// above. The caller may also bound the answer by what the live leases'
// remaining lifetimes explain (LeaseLedger::TimeUntilExpiriesFree): the
// bytes are free once enough leases expire by TTL, whatever the rate.

#ifndef KVGATE_PLUGIN_ADMISSION_RETRY_ESTIMATE_H_
#define KVGATE_PLUGIN_ADMISSION_RETRY_ESTIMATE_H_

#include <cstdint>

#include "absl/time/time.h"

namespace kvgate {

// The release-rate estimate behind retry_after.
//
// Invariants: the decayed rate is >= 0 and is as of the latest release
// observed (releases observed out of order do not move it back); the mean
// hold time is >= 0.
//
// Not thread-safe: the controller calls it under its mutex.
class RetryEstimate {
 public:
  // Bounds of every computed retry_after.
  static constexpr absl::Duration kMinRetryAfter = absl::Milliseconds(50);
  static constexpr absl::Duration kMaxRetryAfter = absl::Seconds(60);

  struct Options {
    uint64_t capacity_bytes = 0;  // the budget that turns over (> 0)
    // Time constant of the exponentially weighted release rate (> 0).
    absl::Duration window = absl::Seconds(10);
    // Mean lease hold time assumed until one has been observed (> 0).
    absl::Duration assumed_lease_hold = absl::Seconds(5);
  };

  // `created_at` is when observation starts (the controller's creation).
  RetryEstimate(const Options& options, absl::Time created_at);

  // A lease that was held for `held` freed `freed_bytes` of reservation at
  // `now` (with the max-activation ledger that can be less than its own
  // bytes, or zero).
  void ObserveRelease(uint64_t freed_bytes, absl::Duration held,
                      absl::Time now);

  // How long until `needed_bytes` are likely to be free, given `free_bytes`
  // free now: kMinRetryAfter when they already are, else needed - free over
  // the effective rate (EffectiveRate), at most `expiry_bound` (the time
  // until enough live leases expire by TTL; infinite: no bound), clamped to
  // [kMinRetryAfter, kMaxRetryAfter].
  absl::Duration RetryAfter(
      uint64_t needed_bytes, uint64_t free_bytes, absl::Time now,
      absl::Duration expiry_bound = absl::InfiniteDuration()) const;

  // The rate RetryAfter divides by, in bytes per second: the observed
  // release rate weighted by exp(-idle / window), idle being the time since
  // the last release, and the turnover rate (capacity / mean hold) for the
  // rest; the turnover rate alone while no usable rate was observed.
  double EffectiveRate(absl::Time now) const;

  // The observed release rate at `now`, in bytes per second, corrected for a
  // short observation; 0 before the first release.
  double ReleaseRate(absl::Time now) const;

  // EWMA of how long leases were held (Options::assumed_lease_hold until the
  // first release).
  absl::Duration mean_hold() const { return mean_hold_; }

 private:
  const Options options_;
  const absl::Time created_at_;
  // Exponentially decayed sum of freed bytes, divided by the window, as of
  // rate_at_.
  double rate_ = 0;
  absl::Time rate_at_;
  bool release_seen_ = false;
  absl::Duration mean_hold_;
};

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_ADMISSION_RETRY_ESTIMATE_H_
