// ThreadSanitizer annotations for Debian's prebuilt absl::Mutex, CondVar and
// Notification. Compiled into every executable of the `tsan` preset only
// (cmake/warnings.cmake adds it when KVGATE_SANITIZE is "thread").
//
// Why: Debian's libabsl_synchronization is compiled without -fsanitize=thread,
// so its lock and unlock (a futex and atomics in uninstrumented code) create
// no happens-before edge that ThreadSanitizer can see, and every field that
// kvgate guards with an absl::Mutex would be reported as a race. gRPC's own
// gpr_mu/grpc_core::Mutex are absl::Mutex too, so gRPC's hand-offs would be
// invisible as well.
//
// How: this file defines the exported absl::Mutex/CondVar/Notification
// member functions with their exact (mangled) names. An executable's
// definition comes first in the dynamic linker's lookup, so every caller —
// kvgate's code, gRPC's libgpr/libgrpc and libabsl_synchronization's own
// internal calls, which all go through the PLT — reaches these wrappers. Each
// wrapper calls the real function, found with dlsym(RTLD_NEXT), unchanged,
// and tells ThreadSanitizer what it did with the same __tsan_mutex_*
// annotations that Abseil itself emits when it is built with ThreadSanitizer
// (absl/base/internal/tsan_mutex_interface.h). Nothing else changes: the
// mutex is still Debian's, with its size, layout and behaviour, so no type
// crosses an ABI boundary with a different definition.
//
// Why it is sound: the annotations describe only what the real primitive
// guarantees (a lock acquires what the previous unlock released; a reader
// lock is a shared acquisition, so two readers that write are still a race;
// a notification's waiter acquires what Notify released). Accesses in kvgate's
// code are all instrumented and checked as usual; a field touched without the
// lock is reported (tests/sanitizers/tsan_race_check.cc shows it).
//
// Limits: an absl::Condition evaluated inside Await/LockWhen runs inside an
// ignore region (as it does between __tsan_mutex_pre_*/post_*), so its reads
// are not checked; Notification::HasBeenNotified() is inline and reads an
// atomic that uninstrumented code wrote, so code that trusts it alone (and
// never waits) gets no edge. kvgate uses neither to publish data.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/base/options.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

#if !defined(__SANITIZE_THREAD__) && defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define __SANITIZE_THREAD__ 1
#endif
#endif
#ifndef __SANITIZE_THREAD__
#error "tsan_absl_sync.cc belongs in -fsanitize=thread builds only"
#endif

namespace {

#define KVGATE_STR2(x) #x
#define KVGATE_STR(x) KVGATE_STR2(x)

// The real function behind a mangled absl name. `nested` is "N" or "NK"
// (const member); `rest` is the mangling after "absl::<inline namespace>::",
// whose substitutions (S_ = absl, S0_ = its inline namespace) do not depend
// on the namespace's name.
void* Real(const char* nested, const char* rest) {
  const std::string ns = KVGATE_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  const std::string name = std::string("_Z") + nested + "4absl" +
                           std::to_string(ns.size()) + ns + rest;
  void* fn = dlsym(RTLD_NEXT, name.c_str());
  if (fn == nullptr) {
    std::fprintf(stderr, "tsan_absl_sync: no symbol %s in the Abseil library\n",
                 name.c_str());
    std::abort();
  }
  return fn;
}

template <typename Fn>
Fn RealAs(const char* nested, const char* rest) {
  return reinterpret_cast<Fn>(Real(nested, rest));
}

// Debian's functions call each other through the PLT, so through these
// wrappers (CondVar::WaitWithTimeout calls WaitWithDeadline, Notification
// uses its own Mutex): only the outermost call on a thread annotates, the
// nested ones only forward.
thread_local int tls_depth = 0;

// Whether `caller` is code of this executable (kvgate's, instrumented)
// rather than of a shared library such as libgrpc. gRPC is not instrumented
// and hands its objects between threads through atomics TSan cannot see, so
// annotating gRPC's own mutexes makes TSan report gRPC's internal lifetimes
// (a mutex created on one thread, destroyed on another). gRPC's locking is
// left as opaque as the rest of gRPC (TSAN_OPTIONS has
// ignore_noninstrumented_modules=1); kvgate's locks are annotated.
bool CalledFromExecutable(const void* caller) {
  static const void* const executable_base = [] {
    Dl_info self;
    return dladdr(reinterpret_cast<const void*>(&CalledFromExecutable),
                  &self) != 0
               ? self.dli_fbase
               : nullptr;
  }();
  Dl_info info;
  return dladdr(caller, &info) != 0 && info.dli_fbase == executable_base;
}

class Nesting {
 public:
  explicit Nesting(const void* caller)
      : outer_(tls_depth++ == 0 && CalledFromExecutable(caller)) {}
  ~Nesting() { --tls_depth; }
  Nesting(const Nesting&) = delete;
  Nesting& operator=(const Nesting&) = delete;
  bool outer() const { return outer_; }

 private:
  const bool outer_;
};

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

using MutexFn = void (*)(Mutex*);
using MutexTryFn = bool (*)(Mutex*);
using ConditionFn = void (*)(Mutex*, const Condition&);
using ConditionTimeoutFn = bool (*)(Mutex*, const Condition&, Duration);
using ConditionDeadlineFn = bool (*)(Mutex*, const Condition&, Time);

Mutex::~Mutex() {
  static const auto real = RealAs<MutexFn>("N", "5MutexD2Ev");
  Nesting nest(__builtin_return_address(0));
  // Reports a mutex destroyed while held, and forgets its clock so that a
  // new mutex at the same address starts clean.
  if (nest.outer()) __tsan_mutex_destroy(this, 0);
  real(this);
}

void Mutex::Lock() {
  static const auto real = RealAs<MutexFn>("N", "5Mutex4LockEv");
  Nesting nest(__builtin_return_address(0));
  if (nest.outer()) __tsan_mutex_pre_lock(this, 0);
  real(this);
  if (nest.outer()) __tsan_mutex_post_lock(this, 0, 0);
}

void Mutex::ReaderLock() {
  static const auto real = RealAs<MutexFn>("N", "5Mutex10ReaderLockEv");
  Nesting nest(__builtin_return_address(0));
  if (nest.outer()) __tsan_mutex_pre_lock(this, __tsan_mutex_read_lock);
  real(this);
  if (nest.outer()) __tsan_mutex_post_lock(this, __tsan_mutex_read_lock, 0);
}

bool Mutex::TryLock() {
  static const auto real = RealAs<MutexTryFn>("N", "5Mutex7TryLockEv");
  Nesting nest(__builtin_return_address(0));
  if (nest.outer()) __tsan_mutex_pre_lock(this, __tsan_mutex_try_lock);
  const bool locked = real(this);
  if (nest.outer())
    __tsan_mutex_post_lock(
        this,
        __tsan_mutex_try_lock | (locked ? 0 : __tsan_mutex_try_lock_failed), 0);
  return locked;
}

bool Mutex::ReaderTryLock() {
  static const auto real = RealAs<MutexTryFn>("N", "5Mutex13ReaderTryLockEv");
  Nesting nest(__builtin_return_address(0));
  const unsigned flags = __tsan_mutex_read_lock | __tsan_mutex_try_lock;
  if (nest.outer()) __tsan_mutex_pre_lock(this, flags);
  const bool locked = real(this);
  if (nest.outer())
    __tsan_mutex_post_lock(
        this, flags | (locked ? 0 : __tsan_mutex_try_lock_failed), 0);
  return locked;
}

void Mutex::Unlock() {
  static const auto real = RealAs<MutexFn>("N", "5Mutex6UnlockEv");
  Nesting nest(__builtin_return_address(0));
  // pre_unlock releases; the real unlock (which may evaluate waiters'
  // conditions) runs inside the ignore region that post_unlock ends.
  if (nest.outer()) __tsan_mutex_pre_unlock(this, 0);
  real(this);
  if (nest.outer()) __tsan_mutex_post_unlock(this, 0);
}

void Mutex::ReaderUnlock() {
  static const auto real = RealAs<MutexFn>("N", "5Mutex12ReaderUnlockEv");
  Nesting nest(__builtin_return_address(0));
  if (nest.outer()) __tsan_mutex_pre_unlock(this, __tsan_mutex_read_lock);
  real(this);
  if (nest.outer()) __tsan_mutex_post_unlock(this, __tsan_mutex_read_lock);
}

// LockWhen*: an acquisition that may wait; the condition runs with the lock
// held (inside the ignore region).
void Mutex::LockWhen(const Condition& cond) {
  static const auto real =
      RealAs<ConditionFn>("N", "5Mutex8LockWhenERKNS0_9ConditionE");
  Nesting nest(__builtin_return_address(0));
  if (nest.outer()) __tsan_mutex_pre_lock(this, 0);
  real(this, cond);
  if (nest.outer()) __tsan_mutex_post_lock(this, 0, 0);
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  static const auto real =
      RealAs<ConditionFn>("N", "5Mutex14ReaderLockWhenERKNS0_9ConditionE");
  Nesting nest(__builtin_return_address(0));
  if (nest.outer()) __tsan_mutex_pre_lock(this, __tsan_mutex_read_lock);
  real(this, cond);
  if (nest.outer()) __tsan_mutex_post_lock(this, __tsan_mutex_read_lock, 0);
}

// Whether or not the condition became true in time, the mutex is held on
// return (Abseil's contract), so each is a plain acquisition.
bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real = RealAs<ConditionTimeoutFn>(
      "N", "5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  Nesting nest(__builtin_return_address(0));
  if (nest.outer()) __tsan_mutex_pre_lock(this, 0);
  const bool met = real(this, cond, timeout);
  if (nest.outer()) __tsan_mutex_post_lock(this, 0, 0);
  return met;
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  static const auto real = RealAs<ConditionDeadlineFn>(
      "N", "5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  Nesting nest(__builtin_return_address(0));
  if (nest.outer()) __tsan_mutex_pre_lock(this, 0);
  const bool met = real(this, cond, deadline);
  if (nest.outer()) __tsan_mutex_post_lock(this, 0, 0);
  return met;
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real = RealAs<ConditionTimeoutFn>(
      "N", "5Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  Nesting nest(__builtin_return_address(0));
  if (nest.outer()) __tsan_mutex_pre_lock(this, __tsan_mutex_read_lock);
  const bool met = real(this, cond, timeout);
  if (nest.outer()) __tsan_mutex_post_lock(this, __tsan_mutex_read_lock, 0);
  return met;
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, Time deadline) {
  static const auto real = RealAs<ConditionDeadlineFn>(
      "N", "5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  Nesting nest(__builtin_return_address(0));
  if (nest.outer()) __tsan_mutex_pre_lock(this, __tsan_mutex_read_lock);
  const bool met = real(this, cond, deadline);
  if (nest.outer()) __tsan_mutex_post_lock(this, __tsan_mutex_read_lock, 0);
  return met;
}

// Await*: called with the mutex held (exclusively); releases it while it
// waits and holds it again on return. Modelled as an unlock then a lock.
namespace {
template <typename Wait>
auto AwaitAnnotated(Mutex* mu, bool annotate, Wait wait) {
  if (annotate) __tsan_mutex_pre_unlock(mu, 0);
  auto result = wait();
  if (annotate) __tsan_mutex_post_unlock(mu, 0);
  if (annotate) __tsan_mutex_pre_lock(mu, 0);
  if (annotate) __tsan_mutex_post_lock(mu, 0, 0);
  return result;
}
}  // namespace

void Mutex::Await(const Condition& cond) {
  static const auto real =
      RealAs<ConditionFn>("N", "5Mutex5AwaitERKNS0_9ConditionE");
  Nesting nest(__builtin_return_address(0));
  AwaitAnnotated(this, nest.outer(), [&] {
    real(this, cond);
    return 0;
  });
}

bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real = RealAs<ConditionTimeoutFn>(
      "N", "5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  Nesting nest(__builtin_return_address(0));
  return AwaitAnnotated(this, nest.outer(),
                        [&] { return real(this, cond, timeout); });
}

bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  static const auto real = RealAs<ConditionDeadlineFn>(
      "N", "5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  Nesting nest(__builtin_return_address(0));
  return AwaitAnnotated(this, nest.outer(),
                        [&] { return real(this, cond, deadline); });
}

// CondVar::Wait*: `mu` is held exclusively on entry and on return.
void CondVar::Wait(Mutex* mu) {
  static const auto real =
      RealAs<void (*)(CondVar*, Mutex*)>("N", "7CondVar4WaitEPNS0_5MutexE");
  Nesting nest(__builtin_return_address(0));
  AwaitAnnotated(mu, nest.outer(), [&] {
    real(this, mu);
    return 0;
  });
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  static const auto real = RealAs<bool (*)(CondVar*, Mutex*, Duration)>(
      "N", "7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  Nesting nest(__builtin_return_address(0));
  return AwaitAnnotated(mu, nest.outer(),
                        [&] { return real(this, mu, timeout); });
}

bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  static const auto real = RealAs<bool (*)(CondVar*, Mutex*, Time)>(
      "N", "7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  Nesting nest(__builtin_return_address(0));
  return AwaitAnnotated(mu, nest.outer(),
                        [&] { return real(this, mu, deadline); });
}

// Notification: what happened before Notify() happens before a wait that
// returns true. (Its internal mutex is annotated too, through the wrappers
// above; this edge is on the Notification itself so it does not depend on
// how the library waits.)
void Notification::Notify() {
  static const auto real =
      RealAs<void (*)(Notification*)>("N", "12Notification6NotifyEv");
  Nesting nest(__builtin_return_address(0));
  if (nest.outer()) __tsan_release(this);
  real(this);
}

void Notification::WaitForNotification() const {
  static const auto real = RealAs<void (*)(const Notification*)>(
      "NK", "12Notification19WaitForNotificationEv");
  Nesting nest(__builtin_return_address(0));
  real(this);
  if (nest.outer()) __tsan_acquire(const_cast<Notification*>(this));
}

bool Notification::WaitForNotificationWithTimeout(Duration timeout) const {
  static const auto real = RealAs<bool (*)(const Notification*, Duration)>(
      "NK", "12Notification30WaitForNotificationWithTimeoutENS0_8DurationE");
  Nesting nest(__builtin_return_address(0));
  const bool notified = real(this, timeout);
  if (notified && nest.outer()) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

bool Notification::WaitForNotificationWithDeadline(Time deadline) const {
  static const auto real = RealAs<bool (*)(const Notification*, Time)>(
      "NK", "12Notification31WaitForNotificationWithDeadlineENS0_4TimeE");
  Nesting nest(__builtin_return_address(0));
  const bool notified = real(this, deadline);
  if (notified && nest.outer()) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

ABSL_NAMESPACE_END
}  // namespace absl
