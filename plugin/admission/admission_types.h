// The small types shared by the controller (plugin/admission/controller.h)
// and its parts: the lease ledger (lease_ledger.h) and the fair queue
// (fair_queue.h). They are part of the controller's public API; include
// controller.h to use them, or this header where the controller itself is not
// needed.

#ifndef KVGATE_PLUGIN_ADMISSION_ADMISSION_TYPES_H_
#define KVGATE_PLUGIN_ADMISSION_ADMISSION_TYPES_H_

#include <cstdint>
#include <limits>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace kvgate {

enum class Priority { kCritical = 0, kStandard = 1, kSheddable = 2 };
inline constexpr int kNumPriorities = 3;

// "CRITICAL", "STANDARD", "SHEDDABLE"; "" for a value outside the enum.
absl::string_view PriorityName(Priority priority);

enum class RejectReason {
  kNone,
  kQueueTimeout,
  kQueueFull,
  kNeverFits,
  kMemoryPressure,
  kShed,
  kDraining,
  kCancelled
};

// "", "QUEUE_TIMEOUT", "QUEUE_FULL", "NEVER_FITS", "MEMORY_PRESSURE", "SHED",
// "DRAINING", "CANCELLED" (the machine-readable `reason` of the wire API).
absl::string_view RejectReasonName(RejectReason reason);

// What a request needs, in bytes.
struct AdmitCost {
  uint64_t kv_bytes = 0;          // held for the lease's whole life
  uint64_t activation_bytes = 0;  // transient peak of a forward pass
};

struct AdmitTicket {
  std::string request_id;  // non-empty; a retry with the same id is idempotent
  std::string tenant;      // "" = "default"
  Priority priority = Priority::kStandard;
  AdmitCost cost;
  // Latest time to be answered; the controller also caps the wait in the
  // queue at Options::max_queue_wait.
  absl::Time deadline = absl::InfiniteFuture();
};

struct AdmitOutcome {
  bool admitted = false;
  std::string lease_id;
  RejectReason reason = RejectReason::kNone;
  uint64_t reserved_bytes = 0;  // kv + this lease's activation bytes
  // When rejected: a computed estimate of when retrying may succeed, in
  // [50ms, 60s]; zero for NEVER_FITS and CANCELLED (retrying does not help).
  absl::Duration retry_after;
  absl::Duration queued_for;  // time spent in the queue (zero if never queued)
  std::string message;        // human detail
};

using AdmitCallback = absl::AnyInvocable<void(AdmitOutcome) &&>;

// A lease as a LeaseObserver sees it granted, and as RestoreLease takes it
// back after a restart.
struct LeaseRecord {
  std::string lease_id;
  std::string request_id;
  AdmitCost cost;
  absl::Time expires_at;  // on the controller's clock
};

// How a lease left the ledger.
enum class LeaseEnd { kReleased, kExpired };

// Optional hook on the ledger, for a durable record of live leases (the lease
// journal, plugin/journal/lease_journal.h). Unlike ControllerListener,
// OnGranted, OnRenewed and OnEnded run UNDER the controller's lock, in the
// order the ledger changed, so that a lease's end is never recorded before its
// grant nor a renewal after its end. They must be quick (a buffered append, no
// fsync) and must not call into the controller. Commit runs after the lock is
// released, on the thread of the call that changed the ledger, before that
// call's answers go out: where records are made durable.
class LeaseObserver {
 public:
  virtual ~LeaseObserver() = default;
  virtual void OnGranted(const LeaseRecord& lease) = 0;
  virtual void OnRenewed(absl::string_view lease_id, absl::Time expires_at) = 0;
  virtual void OnEnded(absl::string_view lease_id, LeaseEnd end) = 0;
  virtual void Commit() {}
};

namespace admission_internal {

// a + b into *sum; false (and *sum unspecified) when it overflows uint64.
inline bool CheckedAdd(uint64_t a, uint64_t b, uint64_t* sum) {
  return !__builtin_add_overflow(a, b, sum);
}

// a + b, or UINT64_MAX when that overflows.
inline uint64_t SaturatingAdd(uint64_t a, uint64_t b) {
  uint64_t sum;
  return CheckedAdd(a, b, &sum) ? sum : std::numeric_limits<uint64_t>::max();
}

}  // namespace admission_internal
}  // namespace kvgate

#endif  // KVGATE_PLUGIN_ADMISSION_ADMISSION_TYPES_H_
