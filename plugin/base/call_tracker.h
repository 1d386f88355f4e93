// Counts the calls a service still holds (reactors whose OnDone has not
// finished), so that kvgated can wait for them at shutdown before it
// destroys what they use (controllers, metrics). grpc::Server::Wait returns
// once the server is shut down, but a reactor's last callbacks may still be
// running on gRPC's executor then.
#ifndef KVGATE_PLUGIN_BASE_CALL_TRACKER_H_
#define KVGATE_PLUGIN_BASE_CALL_TRACKER_H_

#include <cstdint>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace kvgate {

class CallTracker {
 public:
  // A call starts being held.
  void Begin() {
    absl::MutexLock lock(&mu_);
    ++live_;
  }
  // A held call is done: its owner touches nothing shared after this.
  void End() {
    absl::MutexLock lock(&mu_);
    --live_;
  }
  // Waits until no call is held; false if some still are after `timeout`.
  bool WaitIdle(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto idle = [this]()
                    ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return live_ == 0; };
    return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
  }

 private:
  absl::Mutex mu_;
  int64_t live_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_BASE_CALL_TRACKER_H_
