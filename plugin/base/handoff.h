// Happens-before marks for ThreadSanitizer where gRPC hands an object from
// one thread to another.
//
// Debian's gRPC is not built with ThreadSanitizer: when it runs a reactor's
// OnDone on its executor after the handler returned the reactor on another
// thread, the order is real but made of atomics TSan cannot see, so every
// member of the reactor would be reported as racing. kvgate marks each such
// hand-off itself: HandOff(obj) on the giving side, before the call into
// gRPC that passes `obj` on (returning a reactor, Finish, StartRead,
// StartWrite, an async client call), and HandOffReceived(obj) first thing in
// each callback gRPC runs for `obj`. They claim only the order gRPC's
// callback API guarantees (docs/sanitizers.md) and compile to nothing
// outside a TSan build.
#ifndef KVGATE_PLUGIN_BASE_HANDOFF_H_
#define KVGATE_PLUGIN_BASE_HANDOFF_H_

#include "absl/base/config.h"

#ifdef ABSL_HAVE_THREAD_SANITIZER
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace kvgate {

// What this thread did so far happens before what follows a later
// HandOffReceived(obj) on any thread.
inline void HandOff(const void* obj) {
#ifdef ABSL_HAVE_THREAD_SANITIZER
  __tsan_release(const_cast<void*>(obj));
#else
  (void)obj;
#endif
}

// See HandOff.
inline void HandOffReceived(const void* obj) {
#ifdef ABSL_HAVE_THREAD_SANITIZER
  __tsan_acquire(const_cast<void*>(obj));
#else
  (void)obj;
#endif
}

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_BASE_HANDOFF_H_
