// Clock: the source of time for the admission controller.
//
// The controller never reads the wall clock directly; it asks an injected
// `Clock`, so that tests drive queue deadlines and lease TTLs with a fake
// clock (tests/testing/fake_clock.h) and no sleeps.

#ifndef KVGATE_PLUGIN_ADMISSION_CLOCK_H_
#define KVGATE_PLUGIN_ADMISSION_CLOCK_H_

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

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_ADMISSION_CLOCK_H_
