// Proves, in the `tsan` build, that ThreadSanitizer sees kvgate's locking
// through Debian's absl::Mutex (tsan_absl_sync.cc) without going blind:
//
//   tsan_race_check locked    two threads update a counter under an
//                             absl::Mutex, hand data over through a CondVar
//                             and a Notification: must run clean;
//   tsan_race_check unguarded one of the two threads skips the lock: TSan
//                             must report a data race (ctest checks the
//                             report's text).
//
// Without the annotations, `locked` is reported as a race on the counter.
#include <cstdio>
#include <cstring>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

namespace {

struct Counter {
  absl::Mutex mu;
  long value ABSL_GUARDED_BY(mu) = 0;
};

void AddLocked(Counter& counter) {
  for (int i = 0; i < 1000; ++i) {
    absl::MutexLock lock(&counter.mu);
    ++counter.value;
  }
}

void AddUnguarded(Counter& counter) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  for (int i = 0; i < 1000; ++i) ++counter.value;
}

// A value published under a mutex and waited for with a CondVar, then one
// published before Notify(): both reads must be ordered after the writes.
int HandOver() {
  absl::Mutex mu;
  absl::CondVar ready_cv;
  bool ready = false;
  int payload = 0;
  int plain = 0;
  absl::Notification notified;
  std::thread producer([&] {
    {
      absl::MutexLock lock(&mu);
      payload = 42;
      ready = true;
      ready_cv.Signal();
    }
    plain = 7;
    notified.Notify();
  });
  {
    absl::MutexLock lock(&mu);
    while (!ready) ready_cv.Wait(&mu);
  }
  const int got = payload;
  notified.WaitForNotification();
  const int got_plain = plain;
  producer.join();
  return got + got_plain;
}

}  // namespace

int main(int argc, char** argv) {
  const bool unguarded = argc > 1 && std::strcmp(argv[1], "unguarded") == 0;
  Counter counter;
  std::thread a([&] { AddLocked(counter); });
  std::thread b(
      [&] { unguarded ? AddUnguarded(counter) : AddLocked(counter); });
  a.join();
  b.join();
  const int handed = HandOver();
  absl::MutexLock lock(&counter.mu);
  std::printf("counter=%ld handed=%d\n", counter.value, handed);
  return handed == 49 ? 0 : 1;
}
