#include "plugin/admission/clock.h"

#include "absl/time/clock.h"

namespace kvgate {
namespace {

class SystemClock final : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
};

}  // namespace

Clock* RealClock() {
  // Stateless, so sharing one instance process-wide is not mutable state.
  static SystemClock* const clock = new SystemClock();
  return clock;
}

}  // namespace kvgate
