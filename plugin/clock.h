// Clock: the source of time for the admission controller.
//
// The controller never reads the wall clock directly; it asks an injected
// `Clock`, so that tests drive queue deadlines and lease TTLs with a
// `FakeClock` and no sleeps.

#ifndef KVGATE_PLUGIN_CLOCK_H_
#define KVGATE_PLUGIN_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace kvgate {

// A source of the current time. Implementations are thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
};

// The process-wide real clock (absl::Now()). Immutable and never destroyed;
// the caller does not own it.
Clock* RealClock();

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

#endif  // KVGATE_PLUGIN_CLOCK_H_
