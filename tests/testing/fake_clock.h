// FakeClock: a Clock for tests, which moves only when told to.
#ifndef KVGATE_TESTS_TESTING_FAKE_CLOCK_H_
#define KVGATE_TESTS_TESTING_FAKE_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "plugin/admission/clock.h"

namespace kvgate {

// A clock that moves only when told to. Thread-safe.
class FakeClock : public Clock {
 public:
  // Starts at `start`; the default is an arbitrary fixed instant so that test
  // output is reproducible.
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1700000000));

  absl::Time Now() override;
  // Moves the clock forward by `d` (a negative `d` moves it back).
  void Advance(absl::Duration d);
  // Sets the clock to `t`.
  void Set(absl::Time t);

 private:
  absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvgate

#endif  // KVGATE_TESTS_TESTING_FAKE_CLOCK_H_
